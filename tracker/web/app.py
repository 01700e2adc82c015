"""The web application: click redirect, postback, admin API and reports."""

import gc
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from tracker.domain.addresses import AddressRanges
from tracker.facts.visitors import VisitorFacts
from tracker.logs import Throttled
from tracker.metrics import Metrics, serving_metrics
from tracker.postbacks import PostbackProcessor
from tracker.settings import Settings
from tracker.store.auth_failures import AuthFailures
from tracker.store.clicks import click_reader_for, click_writer_for
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter
from tracker.store.db import create_pool
from tracker.store.postback_log import PostbackLog
from tracker.store.ratelimit import PostbackGuard
from tracker.store.redis import redis_for
from tracker.store.replica import ReportSource, open_replica_pool
from tracker.web.apikey import api_key_required
from tracker.web.appkeys import (
    AUTH_FAILURES,
    CLICK_READER,
    CLICK_WRITER,
    CONFIG,
    CONVERSION_WRITER,
    COOKIE_ATTRIBUTES,
    ERRORS,
    METRICS,
    PG_POOL,
    POSTBACK_GUARD,
    POSTBACK_LOG,
    POSTBACKS,
    REDIS,
    REPORT_SOURCE,
    SETTINGS,
    TRUSTED_PROXIES,
    VISITOR_FACTS,
)
from tracker.web.click import click, click_services, cookie_attributes
from tracker.web.errors import Handler, JsonErrors
from tracker.web.routes import answer_per_route, setup_routes
from tracker.web.ui import create_ui_app, session


async def postgres_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PG_POOL] = await create_pool(
        settings.database_url, settings.db_pool_min, settings.db_pool_max, settings.pg_timeout
    )
    yield
    await app[PG_POOL].close()


async def reports_db_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reports replica's pool when TRACKER_REPORTS_DATABASE_URL is set; else reports
    share the primary's pool."""
    settings = app[SETTINGS]
    if not settings.reports_database_url:
        app[REPORT_SOURCE] = ReportSource(app[PG_POOL], "primary")
        yield
        return
    pool = await open_replica_pool(
        settings.reports_database_url, settings.db_pool_max, settings.pg_timeout
    )
    app[REPORT_SOURCE] = ReportSource(pool, "replica")
    app[METRICS].pools["reports"] = pool
    yield
    await pool.close()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    app[REDIS] = redis_for(app[SETTINGS])
    yield
    await app[REDIS].aclose()


async def metrics_port_ctx(app: web.Application) -> AsyncIterator[None]:
    """This process's metrics on a port of its own, when one is set."""
    settings = app[SETTINGS]
    async with serving_metrics(
        app[METRICS], app[REDIS], settings.metrics_host, settings.metrics_port
    ):
        yield


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
        app[CONFIG], app[CLICK_READER], app[CONVERSION_WRITER], app[PG_POOL]
    )


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs each malformed request (a bad request line, header, chunk or body
    encoding) as an error with a traceback. That is the client's fault and anyone can
    send it: it becomes one warning per interval, without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._throttled = Throttled(logging.getLogger("tracker.web"))

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | RequestPayloadError):
            return True
        reason = getattr(exc.__cause__, "message", None) or getattr(exc, "message", exc)
        first_line = str(reason).strip().partition("\n")[0]
        self._throttled.warning("malformed request refused: %s", first_line[:200])
        return False


def server_logger() -> logging.Logger:
    """The logger aiohttp's connection handler reports to, with malformed requests quieted."""
    logger = logging.getLogger("tracker.web.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
    return logger


def handler_args(settings: Settings) -> dict[str, Any]:
    """Server options. URL lines may exceed our limit so that we, not the parser, answer 414.

    aiohttp closes a connection whose next request head is still incomplete when the
    keep-alive timer, started on connecting and after each response, runs out: that
    timer is the header-read timeout, so a client trickling a request head is cut off.
    """
    return {
        "max_line_size": settings.max_request_line * 4,
        "keepalive_timeout": settings.header_read_timeout,
        "logger": server_logger(),
    }


async def watch_services(app: web.Application) -> None:
    """Show the writers' batches and queues, the pool and the spool in the metrics."""
    metrics = app[METRICS]
    writer = app[CLICK_WRITER]
    metrics.watch_batchers(
        service.batcher
        for service in (writer, app[CLICK_READER], app[CONVERSION_WRITER], app[POSTBACK_LOG])
    )
    metrics.pools["web"] = app[PG_POOL]
    counts = metrics.counts
    counts["tracker_clicks_spooled"] = (
        "Clicks written to the local spool while Redis was unavailable",
        None,
        lambda: writer.spooled,
    )
    counts["tracker_clicks_replayed"] = (
        "Spooled clicks replayed into Redis",
        None,
        lambda: writer.replayed,
    )


async def freeze_startup_objects(app: web.Application) -> None:
    """Keep what startup loaded (the GeoIP tables, parsers' regexes, the configuration)
    out of the garbage collector's full passes: over the GeoIP tables one takes ~30 ms,
    a pause a click would wait through. Runs after every other startup step."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings()
    metrics = Metrics(settings.metrics_enabled, settings.redis_shards)
    # No middleware anywhere: each route answers its errors itself (answer_per_route).
    app = web.Application(client_max_size=256 * 1024)
    errors = JsonErrors(settings.max_request_line, metrics)
    app[ERRORS] = errors
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[TRUSTED_PROXIES] = AddressRanges(
        ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies
    )
    app[VISITOR_FACTS] = VisitorFacts(settings)
    app[COOKIE_ATTRIBUTES] = cookie_attributes(settings)
    app.cleanup_ctx.extend(
        [
            postgres_ctx,
            reports_db_ctx,
            redis_ctx,
            metrics_port_ctx,
            running(
                CONFIG,
                lambda app: ConfigCache(
                    app[PG_POOL], app[REDIS], app[SETTINGS].config_refresh_seconds
                ),
            ),
            running(CLICK_WRITER, lambda app: click_writer_for(app[REDIS], app[SETTINGS])),
            running(
                CLICK_READER, lambda app: click_reader_for(app[REDIS], app[PG_POOL], app[SETTINGS])
            ),
            running(
                CONVERSION_WRITER,
                lambda app: ConversionWriter(
                    app[PG_POOL], max_pending=app[SETTINGS].batch_max_pending
                ),
            ),
            running(
                POSTBACK_LOG,
                lambda app: PostbackLog(app[PG_POOL], max_pending=app[SETTINGS].batch_max_pending),
            ),
            running(POSTBACK_GUARD, lambda app: PostbackGuard(app[REDIS], app[SETTINGS])),
        ]
    )
    app[AUTH_FAILURES] = AuthFailures(
        settings.admin_auth_max_failures, settings.admin_auth_window_seconds
    )
    api = web.Application()
    app.on_startup.append(make_postback_processor)
    app.on_startup.append(watch_services)
    app.on_startup.append(click_services)
    app.on_startup.append(freeze_startup_objects)
    setup_routes(app, api)
    answer_per_route(app, errors.wrap, bare=(click,))

    def behind_key(handler: Handler, route: str | None) -> Handler:
        return errors.wrap(api_key_required(handler), route)

    answer_per_route(api, behind_key, mounted=True)
    app.add_subapp("/api", api)
    ui = create_ui_app()
    # The dashboard's middlewares (session, CSRF, HTML errors) run in its routes.
    answer_per_route(ui, errors.wrap, session.ui_middlewares(), mounted=True)
    app.add_subapp("/ui", ui)
    return app
