"""`tracker serve | sink | sender | migrate | seed-demo | dev`."""

import argparse
import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web

from tracker.logs import setup_logging
from tracker.settings import Settings

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("tracker.cli")


def serve(settings: Settings, reuse_port: bool = False) -> None:
    from tracker.web.app import create_app, handler_args

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        reuse_port=reuse_port,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
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
    return run_processes([command] * workers, StopSignal(), restart=True)


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


async def _run_sink(settings: Settings) -> None:
    from tracker.postbacks import OrphanMatcher
    from tracker.sink.clicks import ClickSink
    from tracker.sink.housekeeping import housekeeping
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
            async with housekeeping(pool, matcher, settings):
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


async def _seed_demo(settings: Settings) -> None:
    from tracker.demo import seed_demo

    demo = await seed_demo(settings.database_url, settings.redis_url)
    base = settings.base_url()
    print(f"click URL:    {base}/c/{demo.campaign_key}?external_id=demo&sub1=banner1")
    print(
        f"postback URL: {base}/postback?clickid={{clickid}}&payout=2.50&txid={{txid}}"
        f"&token={demo.postback_token}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the web app")
    serve_cmd.add_argument("--host")
    serve_cmd.add_argument("--port", type=int)
    serve_cmd.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve_cmd.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser(
        "sink", help="move clicks into Postgres; apply postbacks queued during an outage"
    )
    commands.add_parser("sender", help="send conversions to traffic sources (the sink does it too)")
    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser("seed-demo", help="create the demo campaign (idempotent)")
    commands.add_parser("dev", help="start local Redis and Postgres, the app and the sink")
    args = parser.parse_args(argv)

    setup_logging()
    settings = Settings()
    if args.command == "serve":
        if args.host:
            settings.http_host = args.host
        if args.port:
            settings.http_port = args.port
        if args.workers > 1:
            sys.exit(supervise_workers(settings, args.workers))
        serve(settings, reuse_port=args.reuse_port)
    elif args.command == "sink":
        uvloop.run(_run_sink(settings))
    elif args.command == "sender":
        uvloop.run(_run_sender(settings))
    elif args.command == "migrate":
        from tracker.store.db import migrate

        applied = asyncio.run(migrate(settings.database_url))
        print(
            f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
        )
        from tracker.store.rollups import sync_zones_from_settings

        print(asyncio.run(sync_zones_from_settings(settings)))
    elif args.command == "seed-demo":
        asyncio.run(_seed_demo(settings))
    elif args.command == "dev":
        from tracker.dev import run_dev

        sys.exit(run_dev())


if __name__ == "__main__":
    main()
