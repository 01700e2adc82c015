"""Applies the postbacks the web app queued in Redis while Postgres was unavailable.

Entries are read with a consumer group and applied with the same processor the
web app uses, judged at their original receipt time. Entries for one click are
applied one after another in arrival order; different clicks in parallel. An
entry is acknowledged only once applied and logged, so a crash applies it again:
the receipt id makes that a no-op (same dedupe key under every duplicate policy,
one log row per receipt). While Postgres stays unavailable the consumer backs
off, with one warning per outage.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from redis.asyncio import Redis

from tracker.domain.dialects import DialectConflict, canonical_params
from tracker.postbacks import FAILED, Outcome, PostbackProcessor
from tracker.settings import Settings
from tracker.sink.services import PostbackServices, postback_services
from tracker.sink.stream import Entry, Read, StreamConsumer
from tracker.store import keys
from tracker.store.db import POSTGRES_UNAVAILABLE
from tracker.store.postback_log import Inbound, PostbackLog, load_inbound

log = logging.getLogger("tracker.sink.postbacks")


class PostgresUnavailable(Exception):
    """Postgres went away while queued postbacks were applied; the rest wait."""


def _click_of(inbound: Inbound) -> str:
    try:
        return canonical_params(inbound.params).get("clickid", "")
    except DialectConflict:
        return ""


class PostbackQueueSink(StreamConsumer):
    stream = keys.POSTBACK_STREAM
    group = keys.POSTBACK_GROUP
    what = "queued postbacks"

    def __init__(
        self,
        redis: Redis,
        processor: PostbackProcessor,
        postback_log: PostbackLog,
        consumer: str | None = None,
        batch_size: int = 500,
        block_ms: int = 500,
        claim_idle_ms: int = 30000,
        housekeeping_seconds: float = 2.0,
    ) -> None:
        super().__init__(redis, consumer, batch_size, block_ms, claim_idle_ms, housekeeping_seconds)
        self.processor = processor
        self.postback_log = postback_log
        self.applied = 0

    async def handle_reads(self, reads: list[Read]) -> None:
        for _, entries in reads:
            await self.apply(entries)

    async def apply(self, entries: list[Entry]) -> None:
        """Apply entries (in order per click), acknowledging each one applied.
        Raises PostgresUnavailable, after acknowledging what was done, if Postgres
        went away; the rest stays pending."""
        by_click: dict[str, list[tuple[bytes, Inbound | None]]] = defaultdict(list)
        done: list[bytes] = []
        for entry_id, fields in entries:
            try:
                inbound = load_inbound(fields[b"d"]) if fields else None
            except Exception:
                log.exception("queued postback %s unreadable; dropped", entry_id)
                inbound = None
            if inbound is None:
                done.append(entry_id)
            else:
                by_click[_click_of(inbound)].append((entry_id, inbound))
        results = await asyncio.gather(
            *(self._apply_in_order(group, done) for group in by_click.values()),
            return_exceptions=True,
        )
        if done:
            # Only this group reads the stream: an applied entry is of no further use.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(keys.POSTBACK_STREAM, keys.POSTBACK_GROUP, *done)
                pipe.xdel(keys.POSTBACK_STREAM, *done)
                await pipe.execute()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _apply_in_order(
        self, group: list[tuple[bytes, Inbound | None]], done: list[bytes]
    ) -> None:
        for entry_id, inbound in group:
            assert inbound is not None
            await self._apply_one(inbound)
            done.append(entry_id)
            self.applied += 1

    async def _apply_one(self, inbound: Inbound) -> None:
        try:
            outcome = await self.processor.process(inbound)
        except POSTGRES_UNAVAILABLE as exc:
            raise PostgresUnavailable(repr(exc)) from exc
        except Exception as exc:
            # Not a matter of waiting: keep it in the log, with why, rather than retry forever.
            log.exception(
                "queued postback %s failed",
                inbound.receipt_id,
                extra={"receipt_id": inbound.receipt_id},
            )
            outcome = Outcome(FAILED, 500, reason=f"failed when applied from the queue: {exc!r}")
        if outcome.logged:
            return
        try:
            await self.postback_log.append(inbound, outcome)
        except POSTGRES_UNAVAILABLE as exc:
            raise PostgresUnavailable(repr(exc)) from exc


@contextlib.asynccontextmanager
async def postback_queue_sink(
    pool: asyncpg.Pool, redis: Redis, settings: Settings, **options: Any
) -> AsyncIterator[PostbackQueueSink]:
    """A queue consumer with postback services of its own."""
    async with postback_services(pool, redis, settings) as services:
        yield queue_sink_for(redis, services, settings, **options)


def queue_sink_for(
    redis: Redis, services: PostbackServices, settings: Settings, **options: Any
) -> PostbackQueueSink:
    options.setdefault("block_ms", settings.sink_block_ms)
    options.setdefault("claim_idle_ms", settings.sink_claim_idle_ms)
    return PostbackQueueSink(redis, services.processor, services.log, **options)
