"""Click records: group-committed writes to Redis, reads from Redis or Postgres."""

from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from tracker.store import keys
from tracker.store.batching import BatchedService, Batcher

SELECT_CLICK = """
SELECT click_id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
       campaign_id, offer_id, traffic_source_id, external_id, cost::text AS cost,
       sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10
FROM clicks WHERE click_id = $1
"""

# KEYS: the stream, then one key per click; ARGV: TTL and record per click.
STORE_CLICKS_SCRIPT = """
local stream = KEYS[1]
for i = 2, #KEYS do
    local record = ARGV[2 * i - 2]
    redis.call('SET', KEYS[i], record, 'EX', ARGV[2 * i - 3])
    redis.call('XADD', stream, '*', 'd', record)
end
return #KEYS - 1
"""

# (click id, JSON record, TTL in seconds)
ClickWrite = tuple[str, bytes, int]


class ClickWriteError(Exception):
    """The click could not be stored; the visitor must not be redirected as if it were."""


class ClickWriter(BatchedService):
    """Stores click records with group commit.

    Clicks that arrive while a write is in flight go out together in the next
    one: a single script call that, per click, sets the record with its TTL and
    appends it to the sink stream. One command per batch instead of two per
    click is what keeps the client library's per-command cost off the click path.
    Each caller resumes only when the script has returned.
    """

    def __init__(self, redis: Redis, max_batch: int = 1000, max_in_flight: int = 1) -> None:
        self._store_batch = redis.register_script(STORE_CLICKS_SCRIPT)
        self.batcher: Batcher[ClickWrite, None] = Batcher(
            self._flush, max_batch, "click-writer", max_in_flight
        )

    async def write(self, click_id: str, record: bytes, ttl_seconds: int) -> None:
        """Store one click; return once it is in Redis and on the stream."""
        try:
            await self.batcher.submit((click_id, record, ttl_seconds))
        except Exception as exc:  # the batch failed, or the writer is closed
            raise ClickWriteError(repr(exc)) from exc

    async def _flush(self, batch: list[ClickWrite]) -> list[BaseException | None]:
        click_keys = [keys.CLICK_STREAM]
        args: list[bytes | int] = []
        for click_id, record, ttl in batch:
            click_keys.append(keys.click_key(click_id))
            args.append(ttl)
            args.append(record)
        await self._store_batch(keys=click_keys, args=args)
        return [None] * len(batch)


class ClickReader(BatchedService):
    """Reads click records for concurrent postbacks with one MGET per batch."""

    def __init__(self, redis: Redis, pool: asyncpg.Pool, max_batch: int = 500) -> None:
        self._redis = redis
        self._pool = pool
        self.batcher: Batcher[str, bytes | None] = Batcher(self._flush, max_batch, "click-reader")

    async def _flush(self, click_keys: list[str]) -> list[bytes | BaseException | None]:
        values: list[Any] = await self._redis.mget(click_keys)
        return values

    async def fetch(self, click_id: str) -> dict[str, Any] | None:
        """The click record from Redis, or from Postgres once the Redis key is gone."""
        raw = await self.batcher.submit(keys.click_key(click_id))
        if raw is not None:
            record: dict[str, Any] = orjson.loads(raw)
            return record
        row = await self._pool.fetchrow(SELECT_CLICK, click_id)
        return dict(row) if row is not None else None
