"""JSON responses and the middleware that turns every failure into one."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from asyncpg.exceptions._base import DataError as ArgumentError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.domain.money import format_money
from tracker.domain.validation import field_errors
from tracker.logs import REQUEST_ID, Throttled
from tracker.metrics import Metrics
from tracker.store.batching import BatchQueueFullError
from tracker.store.db import POSTGRES_UNAVAILABLE
from tracker.web.access import REQUEST_TAG, RequestTag
from tracker.web.appkeys import SETTINGS

log = logging.getLogger("tracker.web")

STORAGE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *POSTGRES_UNAVAILABLE,
    RedisConnectionError,
    RedisTimeoutError,
    BatchQueueFullError,
)

# Methods timed by name; any other (a client may send any token) is "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_money(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    raise TypeError


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=_default),
        status=status,
        content_type="application/json",
    )


async def read_body(request: web.Request) -> bytes:
    """The request body, if it arrives within the body-read timeout (a slowly
    trickled body would otherwise hold a connection and a handler open). A body
    the server cannot decode (a broken gzip or deflate stream, a malformed chunk)
    is the client's error."""
    timeout = request.config_dict[SETTINGS].body_read_timeout
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"request body not received within {timeout:g} s") from None
    except RequestPayloadError as exc:
        reason = str(getattr(exc.__cause__, "message", exc))
        raise ApiError(400, f"request body could not be read: {reason[:200]}") from None


class ApiError(Exception):
    """A client error answered as `{"error": ..., "details": [...]}`."""

    def __init__(self, status: int, error: str, details: list[Any] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error}
        if self.details is not None:
            body["details"] = self.details
        return json_response(body, self.status)


def invalid(exc: ValidationError, what: str = "invalid request") -> ApiError:
    return ApiError(400, what, list(field_errors(exc)))


def error_middleware(max_url_length: int, metrics: Metrics) -> Callable[..., Any]:
    """Answer every failure as JSON: client errors as 4xx, anything else as a logged 500;
    time every request for the metrics, by route."""
    outage = Throttled(log)

    @web.middleware
    async def answer_errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Every line logged while handling the request carries its id.
        tag = request[REQUEST_TAG] = RequestTag(request)
        token = REQUEST_ID.set(tag)
        started = time.perf_counter()
        try:
            return await answer(request, handler)
        finally:
            REQUEST_ID.reset(token)
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            metrics.route_timer(route, method)(time.perf_counter() - started)

    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        if len(request.raw_path) > max_url_length:
            return json_response(
                {"error": f"request URL longer than {max_url_length} bytes"}, status=414
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except ValidationError as exc:
            return invalid(exc).response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return json_response({"error": exc.reason}, exc.status)
        except (asyncpg.DataError, ArgumentError) as exc:
            # A value the database refuses (out of range, bad encoding) is the client's;
            # asyncpg's own argument errors subclass InterfaceError, so this comes first.
            log.warning("value refused on %s %s: %r", request.method, request.path, exc)
            return json_response({"error": "a value is out of range or malformed"}, 400)
        except STORAGE_UNAVAILABLE as exc:
            # Networks and browsers retry on 5xx; say so rather than fail silently.
            outage.warning("storage unavailable on %s %s: %r", request.method, request.path, exc)
            return json_response({"error": "storage unavailable, retry later"}, 503)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            request_id = request[REQUEST_TAG]()
            return json_response({"error": "internal error", "request_id": request_id}, 500)

    return answer_errors_as_json
