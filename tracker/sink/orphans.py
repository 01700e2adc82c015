"""What the sink needs to turn orphan postbacks into conversions."""

import asyncio
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
    await config.reload()
    watcher = asyncio.create_task(config.watch())
    reader = ClickReader(redis, pool)
    writer = ConversionWriter(pool)
    reader.start()
    writer.start()
    try:
        yield OrphanMatcher(pool, PostbackProcessor(config, reader, writer, redis))
    finally:
        await writer.close()
        await reader.close()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
