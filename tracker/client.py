"""A small client of the tracker's HTTP API, for the command line."""

import asyncio
from typing import Any

import aiohttp
import orjson

# Seconds a command waits for the tracker; a report may take up to its own timeout.
REQUEST_TIMEOUT = 60.0


class ApiError(Exception):
    """The API answered with an error, or could not be reached; `str()` is one line."""


def _one_line(status: int, body: Any) -> str:
    if not isinstance(body, dict):
        return f"HTTP {status}"
    message = str(body.get("error") or f"HTTP {status}")
    details = body.get("details")
    if isinstance(details, list) and details:
        parts = []
        for detail in details[:5]:
            if isinstance(detail, dict):
                field = detail.get("field") or detail.get("loc") or ""
                parts.append(f"{field}: {detail.get('message') or detail.get('msg')}".strip(": "))
        if parts:
            message += " (" + "; ".join(parts) + ")"
    return f"{message} [HTTP {status}]"


class Client:
    """Calls to one tracker at `url` with `api_key`, inside `async with`."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Client":
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            connector=aiohttp.TCPConnector(force_close=True),  # a command makes a few calls
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            # Let the closed connections' transports finish closing before the command's
            # event loop ends, or their sockets are left for the garbage collector.
            await asyncio.sleep(0)

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """The JSON answer, or the text of a non-JSON one (a CSV report)."""
        assert self._session is not None, "use `async with Client(...)`"
        body = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            async with self._session.request(
                method, self.url + path, params=params, data=body, headers=headers
            ) as resp:
                raw = await resp.read()
                is_json = resp.content_type == "application/json"
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        decoded: Any = orjson.loads(raw) if is_json and raw else raw.decode(errors="replace")
        if status >= 400:
            raise ApiError(_one_line(status, decoded))
        return decoded

    async def get(self, path: str, **params: str) -> Any:
        return await self.call("GET", path, params=params or None)

    async def all_items(self, path: str, **params: str) -> list[dict[str, Any]]:
        """Every item of a paged list."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await self.get(path, **params, limit="500", offset=str(offset))
            items.extend(page["items"])
            if len(page["items"]) < 500:
                return items
            offset += 500
