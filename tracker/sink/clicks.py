"""Moves clicks from the Redis stream into Postgres.

Entries are read with a consumer group, written in one statement per batch
(idempotent on click id, with the daily rollups in the same transaction), and
acknowledged only after the commit. Entries left pending by a consumer that
died are claimed after `claim_idle_ms`; acknowledged entries are trimmed.
"""

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tracker.store import keys

log = logging.getLogger("tracker.sink")

MAX_BACKOFF_SECONDS = 5.0

_CLICK_COLUMNS = """
    click_id text, created_ms bigint, campaign_id bigint, offer_id bigint,
    traffic_source_id bigint, external_id text, cost numeric,
    sub1 text, sub2 text, sub3 text, sub4 text, sub5 text,
    sub6 text, sub7 text, sub8 text, sub9 text, sub10 text,
    params jsonb, ip text, user_agent text, referrer text
"""
INSERT_CLICKS = f"""
WITH batch AS (
    SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS r({_CLICK_COLUMNS})
), inserted AS (
    INSERT INTO clicks (
        click_id, created_at, campaign_id, offer_id, traffic_source_id, external_id, cost,
        sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10,
        params, ip, user_agent, referrer
    )
    SELECT click_id, to_timestamp(created_ms / 1000.0), campaign_id, offer_id,
           traffic_source_id, external_id, cost,
           sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10,
           params, ip, user_agent, referrer
    FROM batch
    ON CONFLICT (click_id) DO NOTHING
    RETURNING created_at, campaign_id, offer_id, traffic_source_id, cost
)
INSERT INTO click_rollups AS r (day, campaign_id, offer_id, traffic_source_id, clicks, cost)
SELECT (created_at AT TIME ZONE 'UTC')::date, campaign_id, offer_id, traffic_source_id,
       count(*), coalesce(sum(cost), 0)
FROM inserted
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
ON CONFLICT (day, campaign_id, offer_id, traffic_source_id) DO UPDATE
SET clicks = r.clicks + EXCLUDED.clicks, cost = r.cost + EXCLUDED.cost
"""
INSERT_DEAD_LETTER = """
INSERT INTO click_dead_letters (stream_id, payload, error) VALUES ($1, $2, $3)
"""

Entry = tuple[bytes, dict[bytes, bytes] | None]
# Called with the ids of clicks just stored, before their entries are acknowledged.
StoredHook = Callable[[list[str]], Awaitable[None]]


_CLICK_ID = re.compile(rb'"click_id":"([^"]+)"')


def _id_key(stream_id: bytes) -> tuple[int, int]:
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ClickSink:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        consumer: str | None = None,
        batch_size: int = 2000,
        block_ms: int = 500,
        claim_idle_ms: int = 30000,
        housekeeping_seconds: float = 2.0,
        on_stored: StoredHook | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.housekeeping_seconds = housekeeping_seconds
        self.on_stored = on_stored
        self.stored = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    async def ensure_group(self) -> None:
        try:
            # From id 0, so clicks queued before the first sink ever ran are not skipped.
            await self.redis.xgroup_create(
                keys.CLICK_STREAM, keys.SINK_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        # Our own pending entries first (a restart under the same name), then new ones.
        next_id = "0"
        last_housekeeping = 0.0
        group_ready = False
        failures = 0
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                if time.monotonic() - last_housekeeping > self.housekeeping_seconds:
                    last_housekeeping = time.monotonic()
                    await self.claim_abandoned()
                    await self.trim()
                block = None if next_id == "0" else self.block_ms
                reply: Any = await self.redis.xreadgroup(
                    keys.SINK_GROUP,
                    self.consumer,
                    {keys.CLICK_STREAM: next_id},
                    count=self.batch_size,
                    block=block,
                )
                entries: list[Entry] = reply[0][1] if reply else []
                if entries:
                    await self.store(entries)
                if failures:
                    log.info("sink working again after %d failed attempts", failures)
                    failures = 0
                if next_id == "0" and not entries:
                    next_id = ">"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    group_ready = False  # the stream was deleted; recreate the group
                    continue
                if not failures:
                    log.warning("sink stalled (%r); retrying with backoff until it works", exc)
                failures += 1
                next_id = "0"
                # Exponential backoff while Redis or Postgres is down, at most 5 s.
                delay = min(0.1 * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def store(self, entries: list[Entry]) -> None:
        """Write entries to Postgres, then acknowledge them."""
        ids = [entry_id for entry_id, _ in entries]
        payloads = [(entry_id, fields[b"d"]) for entry_id, fields in entries if fields]
        if payloads:
            body = b"[" + b",".join(p for _, p in payloads) + b"]"
            try:
                await self.pool.execute(INSERT_CLICKS, body.decode())
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
                await self._store_one_by_one(payloads)
            if self.on_stored is not None:
                click_ids = [m[1].decode() for _, p in payloads if (m := _CLICK_ID.search(p))]
                await self.on_stored(click_ids)
        await self.redis.xack(keys.CLICK_STREAM, keys.SINK_GROUP, *ids)
        self.stored += len(payloads)

    async def _store_one_by_one(self, payloads: list[tuple[bytes, bytes]]) -> None:
        """A batch was refused: store what is good, and keep the rest as dead letters."""
        for entry_id, payload in payloads:
            try:
                await self.pool.execute(INSERT_CLICKS, (b"[" + payload + b"]").decode())
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                log.error("click entry %s refused by Postgres: %s", entry_id, exc)
                await self.pool.execute(
                    INSERT_DEAD_LETTER,
                    entry_id.decode(),
                    payload.decode(errors="replace"),
                    str(exc),
                )

    async def claim_abandoned(self) -> None:
        """Take over entries another consumer read but never acknowledged."""
        start = "0-0"
        while True:
            reply: Any = await self.redis.xautoclaim(
                keys.CLICK_STREAM,
                keys.SINK_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.batch_size,
            )
            start, claimed = reply[0], reply[1]
            if claimed:
                log.info("claimed %d abandoned click entries", len(claimed))
                await self.store(claimed)
            if start in (b"0-0", "0-0") or not claimed:
                return

    async def trim(self) -> None:
        """Drop entries every consumer has acknowledged."""
        groups = await self.redis.xinfo_groups(keys.CLICK_STREAM)
        if len(groups) != 1:
            return  # another reader group may still need the entries
        last_delivered: bytes = groups[0]["last-delivered-id"]
        pending = await self.redis.xpending(keys.CLICK_STREAM, keys.SINK_GROUP)
        threshold = last_delivered
        if pending["pending"]:
            oldest: bytes = pending["min"]
            if _id_key(oldest) < _id_key(threshold):
                threshold = oldest
        await self.redis.xtrim(keys.CLICK_STREAM, minid=threshold, approximate=False)

    async def backlog(self) -> int:
        """Entries not yet stored: pending plus never delivered."""
        groups = await self.redis.xinfo_groups(keys.CLICK_STREAM)
        for group in groups:
            if group["name"] in (keys.SINK_GROUP, keys.SINK_GROUP.encode()):
                lag = group.get("lag") or 0
                return int(group["pending"]) + int(lag)
        return 0
