"""The web application: click redirect, postback, admin API and reports."""

import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web

from tracker.postbacks import PostbackProcessor
from tracker.settings import Settings
from tracker.store.clicks import ClickReader, ClickWriter
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter
from tracker.store.db import create_pool
from tracker.store.postback_log import PostbackLog
from tracker.store.redis import create_redis
from tracker.web.appkeys import (
    CLICK_READER,
    CLICK_WRITER,
    CONFIG,
    CONVERSION_WRITER,
    PG_POOL,
    POSTBACK_LOG,
    POSTBACKS,
    REDIS,
    SETTINGS,
    TRUSTED_PROXIES,
)
from tracker.web.errors import Handler, error_middleware, json_response
from tracker.web.routes import setup_routes


@web.middleware
async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-key check for the API sub-application (the click path never pays for it)."""
    expected = request.config_dict[SETTINGS].api_key
    given = request.headers.get("Authorization", "")
    if (
        expected is None
        or not given.startswith("Bearer ")
        or not hmac.compare_digest(given[7:].encode(), expected.get_secret_value().encode())
    ):
        return json_response({"error": "missing or wrong API key"}, status=401)
    return await handler(request)


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PG_POOL] = await create_pool(
        settings.database_url, settings.db_pool_min, settings.db_pool_max, settings.pg_timeout
    )
    yield
    await app[PG_POOL].close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = create_redis(app[SETTINGS].redis_url)
    yield
    await app[REDIS].aclose()


class Service(Protocol):
    def start(self) -> Awaitable[None]: ...
    def close(self) -> Awaitable[None]: ...


S = TypeVar("S", bound=Service)


def running(
    key: web.AppKey[S], make: Callable[[web.Application], S]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that starts a service, shares it under `key`, and closes it."""

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        service = make(app)
        await service.start()
        app[key] = service
        yield
        await service.close()

    return service_ctx


async def make_postback_processor(app: web.Application) -> None:
    app[POSTBACKS] = PostbackProcessor(
        app[CONFIG], app[CLICK_READER], app[CONVERSION_WRITER], app[REDIS]
    )


def handler_args(settings: Settings) -> dict[str, Any]:
    """Server options: URL lines may exceed our limit so that we, not the parser, answer 414."""
    return {"max_line_size": settings.max_request_line * 4}


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    app = web.Application(
        middlewares=[error_middleware(settings.max_request_line)],
        client_max_size=256 * 1024,
    )
    app[SETTINGS] = settings
    app[TRUSTED_PROXIES] = tuple(
        ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies
    )
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            redis_ctx,
            running(
                CONFIG,
                lambda app: ConfigCache(
                    app[PG_POOL], app[REDIS], app[SETTINGS].config_refresh_seconds
                ),
            ),
            running(CLICK_WRITER, lambda app: ClickWriter(app[REDIS])),
            running(CLICK_READER, lambda app: ClickReader(app[REDIS], app[PG_POOL])),
            running(CONVERSION_WRITER, lambda app: ConversionWriter(app[PG_POOL])),
            running(POSTBACK_LOG, lambda app: PostbackLog(app[PG_POOL])),
        ]
    )
    api = web.Application(middlewares=[require_api_key])
    app.on_startup.append(make_postback_processor)
    setup_routes(app, api)
    app.add_subapp("/api", api)
    return app
