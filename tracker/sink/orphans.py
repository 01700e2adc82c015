"""What the sink needs to turn orphan postbacks into conversions."""

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from redis.asyncio import Redis

from tracker.postbacks import OrphanMatcher, PostbackProcessor
from tracker.settings import Settings
from tracker.store.clicks import ClickReader
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter


@contextlib.asynccontextmanager
async def orphan_matcher(
    pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> AsyncIterator[OrphanMatcher]:
    """An orphan matcher with its own configuration cache, click reader and writer."""
    config = ConfigCache(pool, redis, settings.config_refresh_seconds)
    reader = ClickReader(redis, pool)
    writer = ConversionWriter(pool)
    async with contextlib.AsyncExitStack() as services:
        for service in (config, reader, writer):
            await service.start()
            services.push_async_callback(service.close)
        yield OrphanMatcher(pool, PostbackProcessor(config, reader, writer, redis))
