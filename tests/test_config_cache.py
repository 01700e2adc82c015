"""The configuration cache's watcher stops when the cache is closed."""

import asyncio
import random

from redis.asyncio import Redis

from tracker.store.config import ConfigCache


async def test_the_watcher_is_gone_once_closed(pool, settings):
    """Closed at any point of its poll (a Redis read, a reload from Postgres), the watcher
    is done when close() returns. It used to go on polling now and then (its cancellation
    ended in another error, which the poll loop forgave), and so opened a Redis connection
    after the client was closed, which nobody closed: a socket for the garbage collector
    to find in some later test."""
    redis = Redis.from_url(settings.redis_url)
    rng = random.Random(7)
    left_running = 0
    try:
        for _ in range(25):
            cache = ConfigCache(pool, redis, refresh_seconds=0.0005)
            await cache.start()
            watcher = cache._watcher
            assert watcher is not None
            await asyncio.sleep(rng.uniform(0, 0.01))
            await cache.close()
            if not watcher.done():
                left_running += 1
                watcher.cancel()
    finally:
        await redis.aclose()
    assert left_running == 0
