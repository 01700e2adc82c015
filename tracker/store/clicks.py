"""Click records: group-committed writes to Redis, reads from Redis or Postgres."""

import asyncio
import logging
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from tracker.store import keys

log = logging.getLogger("tracker.clicks")

SELECT_CLICK = """
SELECT click_id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
       campaign_id, offer_id, traffic_source_id, external_id, cost::text AS cost,
       sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10
FROM clicks WHERE click_id = $1
"""


class ClickWriteError(Exception):
    """The click could not be stored; the visitor must not be redirected as if it were."""


class ClickWriter:
    """Stores click records with group commit.

    Clicks that arrive while a pipeline is in flight wait together and go out in
    the next single pipeline (SET with TTL plus XADD to the sink stream, per click).
    Each caller resumes only when its own two commands have succeeded.
    """

    def __init__(self, redis: Redis, max_batch: int = 1000) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[tuple[str, bytes, int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="click-writer")

    async def close(self) -> None:
        """Write what is still queued, then stop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            await self._flush(self._take())

    async def write(self, click_id: str, record: bytes, ttl_seconds: int) -> None:
        """Store one click; return once it is in Redis and on the stream."""
        if self._task is None:
            raise ClickWriteError("click writer is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((click_id, record, ttl_seconds, future))
        self._wakeup.set()
        await future

    def _take(self) -> list[tuple[str, bytes, int, asyncio.Future[None]]]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                await self._flush(self._take())

    async def _flush(self, batch: list[tuple[str, bytes, int, asyncio.Future[None]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for click_id, record, ttl, _ in batch:
            pipe.set(keys.click_key(click_id), record, ex=ttl)
            pipe.xadd(keys.CLICK_STREAM, {b"d": record})
        try:
            results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(ClickWriteError("click writer stopped"))
            raise
        except Exception as exc:
            log.warning("click pipeline failed for %d clicks: %r", len(batch), exc)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(ClickWriteError(str(exc)))
            return
        for i, (*_, future) in enumerate(batch):
            if future.done():
                continue
            stored, queued = results[2 * i], results[2 * i + 1]
            if isinstance(stored, Exception) or isinstance(queued, Exception):
                error = stored if isinstance(stored, Exception) else queued
                future.set_exception(ClickWriteError(repr(error)))
            else:
                future.set_result(None)


async def fetch_click(redis: Redis, pool: asyncpg.Pool, click_id: str) -> dict[str, Any] | None:
    """The click record from Redis, or from Postgres once the Redis key is gone."""
    raw = await redis.get(keys.click_key(click_id))
    if raw is not None:
        record: dict[str, Any] = orjson.loads(raw)
        return record
    row = await pool.fetchrow(SELECT_CLICK, click_id)
    return dict(row) if row is not None else None
