"""The API key check: a bearer key, with too many failures from one address refused."""

from aiohttp import web

from tracker.domain.auth import bearer_key_matches
from tracker.web.access import request_address
from tracker.web.appkeys import AUTH_FAILURES, REDIS, SETTINGS
from tracker.web.errors import Handler, json_response


async def api_key_refusal(request: web.Request) -> web.Response | None:
    """None when the request carries the API key; else the answer: 401, or 429 for an
    address with too many recent failures, until its window ends."""
    address = request_address(request) or "unknown"
    failures = request.config_dict[AUTH_FAILURES]
    redis = request.config_dict[REDIS]
    retry_after = await failures.retry_after(redis, address)
    if retry_after is not None:
        response = json_response(
            {"error": "too many failed authentications from this address, retry later"},
            status=429,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    expected = request.config_dict[SETTINGS].api_key
    header = request.headers.get("Authorization", "")
    if expected is None or not bearer_key_matches(header, expected.get_secret_value()):
        await failures.record(redis, address)
        return json_response({"error": "missing or wrong API key"}, status=401)
    return None


def api_key_required(handler: Handler) -> Handler:
    """`handler` behind the API key: every route of the API is registered so (a check in
    the route, not middleware, so that the click path never pays for it)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        refusal = await api_key_refusal(request)
        return refusal if refusal is not None else await handler(request)

    return checked
