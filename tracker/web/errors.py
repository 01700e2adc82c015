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

# The metrics' name of requests no route takes.
UNMATCHED = "unmatched"


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


class JsonErrors:
    """Every failure answered as JSON: client errors as 4xx, anything else as a logged
    500; every request timed for the metrics, by route.

    Applied to each route's handler when the app is built (`wrap`) rather than as
    middleware: aiohttp runs an app's middleware chain, plus a layer of its own per
    app, for every route of every app as soon as any app has middleware, and the click
    route, which answers its own failures (`respond`), must run none of it."""

    def __init__(self, max_url_length: int, metrics: Metrics) -> None:
        self.max_url_length = max_url_length
        self.metrics = metrics
        self._outage = Throttled(log)

    def too_long(self, request: web.Request) -> web.Response | None:
        """The 414 for a request URL over the limit, or None."""
        if len(request.raw_path) > self.max_url_length:
            return json_response(
                {"error": f"request URL longer than {self.max_url_length} bytes"}, status=414
            )
        return None

    def respond(self, request: web.Request, exc: Exception) -> web.StreamResponse:
        """The answer to `exc`, raised while handling `request`. An HTTPException below
        400 (a redirect) is raised again, for aiohttp to send."""
        if isinstance(exc, ApiError):
            return exc.response()
        if isinstance(exc, ValidationError):
            return invalid(exc).response()
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise exc
            return json_response({"error": exc.reason}, exc.status)
        if isinstance(exc, asyncpg.DataError | ArgumentError):
            # A value the database refuses (out of range, bad encoding) is the client's;
            # asyncpg's own argument errors subclass InterfaceError, so this comes first.
            log.warning("value refused on %s %s: %r", request.method, request.path, exc)
            return json_response({"error": "a value is out of range or malformed"}, 400)
        if isinstance(exc, STORAGE_UNAVAILABLE):
            # Networks and browsers retry on 5xx; say so rather than fail silently.
            self._outage.warning(
                "storage unavailable on %s %s: %r", request.method, request.path, exc
            )
            return json_response({"error": "storage unavailable, retry later"}, 503)
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        request_id = request[REQUEST_TAG]()
        return json_response({"error": "internal error", "request_id": request_id}, 500)

    def timer(self, request: web.Request, route: str | None) -> Callable[[float], None]:
        """Where the request's duration goes; `route` None: the route it matched."""
        if route is None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
        method = request.method if request.method in _METHODS else "other"
        return self.metrics.route_timer(route, method)

    def wrap(self, handler: Handler, route: str | None = None) -> Handler:
        """`handler` answering its failures as JSON, its requests tagged and timed (under
        `route`, by default the route it matched)."""

        async def answered(request: web.Request) -> web.StreamResponse:
            # Every line logged while handling the request carries its id.
            tag = request[REQUEST_TAG] = RequestTag(request)
            token = REQUEST_ID.set(tag)
            started = time.perf_counter()
            try:
                refusal = self.too_long(request)
                if refusal is not None:
                    return refusal
                return await handler(request)
            except Exception as exc:
                return self.respond(request, exc)
            finally:
                REQUEST_ID.reset(token)
                self.timer(request, route)(time.perf_counter() - started)

        return answered


def error_middleware(max_url_length: int, metrics: Metrics) -> Callable[..., Any]:
    """`JsonErrors` as a middleware, for an app of a single purpose (tests, tools)."""
    errors = JsonErrors(max_url_length, metrics)

    @web.middleware
    async def answer_errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await errors.wrap(handler)(request)

    return answer_errors_as_json
