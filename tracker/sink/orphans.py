"""What the sink needs to turn orphan postbacks into conversions."""

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from redis.asyncio import Redis

from tracker.postbacks import OrphanMatcher
from tracker.settings import Settings
from tracker.sink.services import postback_services


@contextlib.asynccontextmanager
async def orphan_matcher(
    pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> AsyncIterator[OrphanMatcher]:
    """An orphan matcher with postback services of its own."""
    async with postback_services(pool, redis, settings) as services:
        yield OrphanMatcher(pool, services.processor)
