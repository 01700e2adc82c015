"""What the sink needs to process postbacks again: orphans once their click is stored,
and postbacks queued while Postgres was unavailable. One set per sink process."""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from tracker.postbacks import PostbackProcessor
from tracker.settings import Settings
from tracker.store.clicks import click_reader_for
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter
from tracker.store.postback_log import PostbackLog


@dataclass(frozen=True, slots=True)
class PostbackServices:
    processor: PostbackProcessor
    log: PostbackLog


@contextlib.asynccontextmanager
async def postback_services(
    pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> AsyncIterator[PostbackServices]:
    """A postback processor with its own configuration cache, click reader and
    conversion writer, and a postback log writer; all closed on exit."""
    config = ConfigCache(pool, redis, settings.config_refresh_seconds)
    reader = click_reader_for(redis, pool, settings)
    # Two updates at a time: the sink's pool is small, and its clicks and sender share it.
    writer = ConversionWriter(pool, max_pending=settings.batch_max_pending, max_updates=2)
    postback_log = PostbackLog(pool, max_pending=settings.batch_max_pending)
    async with contextlib.AsyncExitStack() as running:
        for service in (config, reader, writer, postback_log):
            await service.start()
            running.push_async_callback(service.close)
        yield PostbackServices(PostbackProcessor(config, reader, writer, pool), postback_log)
