"""Moves clicks from the Redis stream into Postgres.

Entries are read with a consumer group, written in one statement per batch
(idempotent on click id, with the daily rollups in the same transaction), and
acknowledged only after the commit. Entries left pending by a consumer that
died are claimed after `claim_idle_ms`; acknowledged entries are trimmed.
"""

import logging
import re
from collections.abc import Awaitable, Callable

import asyncpg
from redis.asyncio import Redis

from tracker.sink.stream import Entry, StreamConsumer
from tracker.store import keys

log = logging.getLogger("tracker.sink")

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

# Called with the ids of clicks just stored, before their entries are acknowledged.
StoredHook = Callable[[list[str]], Awaitable[None]]


_CLICK_ID = re.compile(rb'"click_id":"([^"]+)"')


def _id_key(stream_id: bytes) -> tuple[int, int]:
    ms, _, seq = stream_id.partition(b"-")
    return int(ms), int(seq or 0)


class ClickSink(StreamConsumer):
    stream = keys.CLICK_STREAM
    group = keys.SINK_GROUP
    what = "click entries"

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
        super().__init__(redis, consumer, batch_size, block_ms, claim_idle_ms, housekeeping_seconds)
        self.pool = pool
        self.on_stored = on_stored
        self.stored = 0

    async def housekeep(self) -> None:
        await self.claim_abandoned()
        await self.trim()

    async def handle(self, entries: list[Entry]) -> None:
        await self.store(entries)

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
