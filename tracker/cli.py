"""The `tracker` command: the processes (`serve`, `sink`, `sender`, `migrate`, `maintain`,
`seed-demo`, `dev`) and the commands that talk to a running tracker's API."""

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvloop
from aiohttp import web

from tracker import remote
from tracker.logs import setup_logging
from tracker.settings import Settings

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("tracker.cli")


def run_web(settings: Settings, reuse_port: bool = False) -> None:
    from tracker.web.access import JsonAccessLogger, access_logger
    from tracker.web.app import create_app, handler_args

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        reuse_port=reuse_port,
        access_log=access_logger() if settings.access_log else None,
        access_log_class=JsonAccessLogger,
        **handler_args(settings),
        print=None,
        loop=loop,
        shutdown_timeout=settings.shutdown_timeout,
    )


def supervise_workers(settings: Settings, workers: int) -> int:
    """Run `workers` serve processes sharing the port (SO_REUSEPORT); restart any that die.

    SIGTERM or SIGINT is passed on to every worker, each of which stops
    accepting, finishes its requests and pending click writes, and exits.
    """
    from tracker.processes import StopSignal, run_processes

    command = [
        sys.executable, "-m", "tracker", "serve", "--reuse-port",
        "--host", settings.http_host, "--port", str(settings.http_port),
    ]  # fmt: skip
    log.info("starting %d workers on port %d", workers, settings.http_port)
    base = settings.metrics_port
    commands = [
        command + (["--metrics-port", str(base + i)] if base else []) for i in range(workers)
    ]
    return run_processes(commands, StopSignal(), restart=True)


async def _pool_when_reachable(settings: Settings) -> "asyncpg.Pool":
    """The sink's pool, waiting with backoff for Postgres rather than exiting: a sink
    started during an outage (or by a supervisor) simply begins once it is back."""
    from tracker.store.db import POSTGRES_UNAVAILABLE, create_pool

    delay = 0.5
    while True:
        try:
            return await create_pool(settings.database_url, 1, 4, settings.pg_timeout)
        except POSTGRES_UNAVAILABLE as exc:
            if delay == 0.5:
                log.warning("Postgres unreachable (%r); the sink waits for it", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


# Seconds a stopping process gives the tasks still running to end once cancelled.
STRAGGLER_SECONDS = 5.0


async def _until_done(main: Coroutine[Any, Any, None]) -> None:
    """Run `main`; then cancel whatever tasks it left and give them a few seconds. A task
    that outlives that (one that lost its cancellation) is logged with where it waits, and
    left behind: everything the process owes is committed or acknowledged before `main`
    returns, so a stop must not hang on it."""
    await main
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, pending = await asyncio.wait(left, timeout=STRAGGLER_SECONDS)
    for task in pending:
        frames = task.get_stack(limit=3)
        where = " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
        log.error("task %s did not stop when cancelled (%s); exiting without it", task, where)
    if pending:
        logging.shutdown()
        os._exit(0)


async def _run_sink(settings: Settings) -> None:
    from tracker.postbacks import OrphanMatcher
    from tracker.sink.clicks import ClickSink
    from tracker.sink.housekeeping import housekeeping
    from tracker.sink.metrics import serving_sink_metrics
    from tracker.sink.postbacks import queue_sink_for
    from tracker.sink.sender import DeliverySender
    from tracker.sink.services import postback_services
    from tracker.store.redis import redis_for

    pool = await _pool_when_reachable(settings)
    redis = redis_for(settings, blocking_ms=settings.sink_block_ms)
    try:
        # One set of postback services for both re-processing paths: orphans whose click
        # was just stored (and the periodic sweep), and postbacks queued during an outage.
        async with postback_services(pool, redis, settings) as services:
            matcher = OrphanMatcher(pool, services.processor)
            queue = queue_sink_for(redis, services, settings)
            sink = ClickSink(
                redis,
                pool,
                batch_size=settings.sink_batch_size,
                block_ms=settings.sink_block_ms,
                claim_idle_ms=settings.sink_claim_idle_ms,
                on_stored=matcher.rematch,
                shards=settings.redis_shards,
                linger_ms=settings.sink_linger_ms,
            )
            sender = DeliverySender(pool, settings, name=sink.consumer)
            loop = asyncio.get_running_loop()

            def stop() -> None:
                sink.stop()
                queue.stop()
                sender.stop()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            log.info("sink %s started", sink.consumer)
            async with (
                housekeeping(pool, matcher, settings),
                serving_sink_metrics(settings, redis, pool, sink, queue, sender),
            ):
                await asyncio.gather(sink.run(), queue.run(), sender.run())
    finally:
        await redis.aclose()
        await pool.close()
    log.info(
        "sink %s stopped after storing %d clicks, applying %d queued postbacks "
        "and delivering %d conversions",
        sink.consumer,
        sink.stored,
        queue.applied,
        sender.delivered,
    )


async def _run_sender(settings: Settings) -> None:
    from tracker.sink.sender import DeliverySender

    pool = await _pool_when_reachable(settings)
    sender = DeliverySender(pool, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sender.stop)
    log.info("sender started")
    try:
        await sender.run()
    finally:
        await pool.close()
    log.info("sender stopped after %d attempts, %d delivered", sender.sent, sender.delivered)


async def _maintain(settings: Settings) -> None:
    from datetime import UTC, datetime

    from tracker.store.db import create_pool
    from tracker.store.retention import maintain

    pool = await create_pool(settings.database_url, 1, 2, settings.pg_timeout)
    try:
        done = await maintain(pool, settings, datetime.now(UTC))
    finally:
        await pool.close()
    for line in done.lines():
        print(line)


async def _seed_demo(settings: Settings) -> None:
    from tracker.demo import seed_demo as make_demo

    demo = await make_demo(settings.database_url, settings.redis_url)
    base = settings.base_url()
    print(f"click URL:    {base}/c/{demo.campaign_key}?external_id=demo&sub1=banner1")
    print(
        f"postback URL: {base}/postback?clickid={{clickid}}&payout=2.50&txid={{txid}}"
        f"&token={demo.postback_token}"
    )


app = typer.Typer(
    name="tracker",
    help="A server-to-server postback conversion tracker: its processes, and a client of its API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
remote.register(app)


def _settings() -> Settings:
    settings = Settings()
    setup_logging(settings.log_level, secrets=settings.secrets())
    return settings


@app.command(rich_help_panel="Processes")
def serve(
    host: Annotated[str | None, typer.Option(help="listen address (TRACKER_HTTP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (TRACKER_HTTP_PORT)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes sharing the port")] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
    metrics_port: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the web app: click redirect, postback, pixel, admin API and reports."""
    settings = _settings()
    if host:
        settings.http_host = host
    if port:
        settings.http_port = port
    if metrics_port:
        settings.metrics_port = metrics_port
    if workers > 1:
        raise typer.Exit(supervise_workers(settings, workers))
    run_web(settings, reuse_port=reuse_port)


@app.command(rich_help_panel="Processes")
def sink() -> None:
    """Move clicks into Postgres, apply postbacks queued during an outage, send conversions
    to traffic sources, and keep partitions and retention."""
    uvloop.run(_until_done(_run_sink(_settings())))


@app.command(rich_help_panel="Processes")
def sender() -> None:
    """Only send conversions to traffic sources (the sink does it too)."""
    uvloop.run(_until_done(_run_sender(_settings())))


@app.command(rich_help_panel="Processes")
def migrate() -> None:
    """Apply the database migrations (safe to run from several hosts at once)."""
    from tracker.store.db import migrate as apply_migrations
    from tracker.store.rollups import sync_zones_from_settings

    settings = _settings()
    applied = asyncio.run(apply_migrations(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    print(asyncio.run(sync_zones_from_settings(settings)))


@app.command(rich_help_panel="Processes")
def maintain() -> None:
    """Create partitions ahead and drop what retention says is old (the sink does it every
    TRACKER_MAINTAIN_SECONDS)."""
    asyncio.run(_maintain(_settings()))


@app.command("seed-demo", rich_help_panel="Processes")
def seed_demo() -> None:
    """Create the demo campaign (idempotent) and print its URLs."""
    asyncio.run(_seed_demo(_settings()))


@app.command(rich_help_panel="Processes")
def dev() -> None:
    """Start local Redis and Postgres, the app and the sink, for trying the tracker out."""
    from tracker.dev import run_dev

    raise typer.Exit(run_dev())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
