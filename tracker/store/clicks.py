"""Click records: group-committed writes to Redis, reads from Redis or Postgres."""

import logging
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from tracker.store import keys
from tracker.store.batching import Batcher

log = logging.getLogger("tracker.clicks")

SELECT_CLICK = """
SELECT click_id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
       campaign_id, offer_id, traffic_source_id, external_id, cost::text AS cost,
       sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10
FROM clicks WHERE click_id = $1
"""

# (click id, JSON record, TTL in seconds)
ClickWrite = tuple[str, bytes, int]


class ClickWriteError(Exception):
    """The click could not be stored; the visitor must not be redirected as if it were."""


class ClickWriter:
    """Stores click records with group commit.

    Clicks that arrive while a pipeline is in flight go out together in the
    next single pipeline (SET with TTL plus XADD to the sink stream, per click).
    Each caller resumes only when its own two commands have succeeded.
    """

    def __init__(self, redis: Redis, max_batch: int = 1000) -> None:
        self._redis = redis
        self.batcher: Batcher[ClickWrite, None] = Batcher(self._flush, max_batch, "click-writer")

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def write(self, click_id: str, record: bytes, ttl_seconds: int) -> None:
        """Store one click; return once it is in Redis and on the stream."""
        try:
            await self.batcher.submit((click_id, record, ttl_seconds))
        except ClickWriteError:
            raise
        except Exception as exc:
            raise ClickWriteError(repr(exc)) from exc

    async def _flush(self, batch: list[ClickWrite]) -> list[BaseException | None]:
        pipe = self._redis.pipeline(transaction=False)
        for click_id, record, ttl in batch:
            pipe.set(keys.click_key(click_id), record, ex=ttl)
            pipe.xadd(keys.CLICK_STREAM, {b"d": record})
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            log.warning("click pipeline failed for %d clicks: %r", len(batch), exc)
            return [ClickWriteError(repr(exc))] * len(batch)
        results: list[BaseException | None] = []
        for i in range(len(batch)):
            stored, queued = replies[2 * i], replies[2 * i + 1]
            if isinstance(stored, Exception) or isinstance(queued, Exception):
                error = stored if isinstance(stored, Exception) else queued
                results.append(ClickWriteError(repr(error)))
            else:
                results.append(None)
        return results


async def fetch_click(redis: Redis, pool: asyncpg.Pool, click_id: str) -> dict[str, Any] | None:
    """The click record from Redis, or from Postgres once the Redis key is gone."""
    raw = await redis.get(keys.click_key(click_id))
    if raw is not None:
        record: dict[str, Any] = orjson.loads(raw)
        return record
    row = await pool.fetchrow(SELECT_CLICK, click_id)
    return dict(row) if row is not None else None
