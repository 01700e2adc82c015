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
from redis.exceptions import ResponseError

from tracker.domain.dialects import DialectConflict, canonical_params
from tracker.postbacks import FAILED, Outcome, PostbackProcessor
from tracker.settings import Settings
from tracker.sink.clicks import default_consumer_name
from tracker.store import keys
from tracker.store.clicks import ClickReader
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter
from tracker.store.db import POSTGRES_UNAVAILABLE
from tracker.store.postback_log import Inbound, PostbackLog, load_inbound

log = logging.getLogger("tracker.sink.postbacks")

Entry = tuple[bytes, dict[bytes, bytes] | None]
MAX_BACKOFF_SECONDS = 5.0


class PostgresUnavailable(Exception):
    pass


def _click_of(inbound: Inbound) -> str:
    try:
        return canonical_params(inbound.params).get("clickid", "")
    except DialectConflict:
        return ""


class PostbackQueueSink:
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
        self.redis = redis
        self.processor = processor
        self.postback_log = postback_log
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.housekeeping_seconds = housekeeping_seconds
        self.applied = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(
                keys.POSTBACK_STREAM, keys.POSTBACK_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        await self.ensure_group()
        next_id = "0"  # our own pending entries first, then new ones
        last_housekeeping = 0.0
        backoff = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                if loop.time() - last_housekeeping > self.housekeeping_seconds:
                    last_housekeeping = loop.time()
                    await self.claim_abandoned()
                block = None if next_id == "0" else self.block_ms
                reply: Any = await self.redis.xreadgroup(
                    keys.POSTBACK_GROUP,
                    self.consumer,
                    {keys.POSTBACK_STREAM: next_id},
                    count=self.batch_size,
                    block=block,
                )
                entries: list[Entry] = reply[0][1] if reply else []
                if next_id == "0" and not entries:
                    next_id = ">"
                    continue
                if entries:
                    await self.apply(entries)
                if backoff:
                    log.info("Postgres is back: applying queued postbacks again")
                    backoff = 0.0
            except asyncio.CancelledError:
                raise
            except PostgresUnavailable as exc:
                if not backoff:
                    log.warning("Postgres unavailable (%s); queued postbacks wait", exc)
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2 or 0.25)
                next_id = "0"
                await self._sleep(backoff)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.ensure_group()
                    continue
                log.exception("postback queue step failed; retrying")
                next_id = "0"
                await self._sleep(0.5)
            except Exception:
                log.exception("postback queue step failed; retrying")
                next_id = "0"
                await self._sleep(0.5)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

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
            log.exception("queued postback %s failed", inbound.receipt_id)
            outcome = Outcome(FAILED, 500, reason=f"failed when applied from the queue: {exc!r}")
        if outcome.logged:
            return
        try:
            await self.postback_log.append(inbound, outcome)
        except POSTGRES_UNAVAILABLE as exc:
            raise PostgresUnavailable(repr(exc)) from exc

    async def claim_abandoned(self) -> None:
        """Take over entries another consumer read but never acknowledged."""
        start = "0-0"
        while True:
            reply: Any = await self.redis.xautoclaim(
                keys.POSTBACK_STREAM,
                keys.POSTBACK_GROUP,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=self.batch_size,
            )
            start, claimed = reply[0], reply[1]
            if claimed:
                log.info("claimed %d abandoned queued postbacks", len(claimed))
                await self.apply(claimed)
            if start in (b"0-0", "0-0") or not claimed:
                return

    async def backlog(self) -> int:
        """Queued postbacks not yet applied: pending plus never delivered."""
        with contextlib.suppress(ResponseError):
            for group in await self.redis.xinfo_groups(keys.POSTBACK_STREAM):
                if group["name"] in (keys.POSTBACK_GROUP, keys.POSTBACK_GROUP.encode()):
                    return int(group["pending"]) + int(group.get("lag") or 0)
        return int(await self.redis.xlen(keys.POSTBACK_STREAM))


@contextlib.asynccontextmanager
async def postback_queue_sink(
    pool: asyncpg.Pool, redis: Redis, settings: Settings, **options: Any
) -> AsyncIterator[PostbackQueueSink]:
    """A queue consumer with its own configuration cache, click reader, writer and log."""
    config = ConfigCache(pool, redis, settings.config_refresh_seconds)
    reader = ClickReader(redis, pool)
    writer = ConversionWriter(pool)
    postback_log = PostbackLog(pool)
    async with contextlib.AsyncExitStack() as services:
        for service in (config, reader, writer, postback_log):
            await service.start()
            services.push_async_callback(service.close)
        processor = PostbackProcessor(config, reader, writer, redis)
        options.setdefault("block_ms", settings.sink_block_ms)
        options.setdefault("claim_idle_ms", settings.sink_claim_idle_ms)
        yield PostbackQueueSink(redis, processor, postback_log, **options)
