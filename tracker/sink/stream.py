"""Reading a Redis stream with a consumer group: the loop every sink consumer shares.

Each consumer first takes back its own pending entries (a restart under the same
name), then new ones; every `housekeeping_seconds` it claims the entries of
consumers that died. Entries are acknowledged by `handle` once their effect is
committed, so a crash only means they are handled again. While Redis or Postgres
is away the loop backs off, with one warning per outage rather than one a second.
"""

import asyncio
import contextlib
import logging
import os
import socket
from abc import ABC, abstractmethod
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tracker.store.health import streams_backlog

log = logging.getLogger("tracker.sink")

Entry = tuple[bytes, dict[bytes, bytes] | None]
MAX_BACKOFF_SECONDS = 5.0


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamConsumer(ABC):
    """A consumer of `stream` (or of each of `streams`) in `group`; subclasses say how
    to `handle` entries.

    Each stream is read by a loop of its own (on a Redis Cluster the streams are in
    different slots, so one XREADGROUP cannot block on all), with one blocking
    connection per stream; entries are handled one batch at a time per process.
    """

    stream: str
    group: str
    what: str  # what the entries are, for the log

    def __init__(
        self,
        redis: Redis,
        consumer: str | None = None,
        batch_size: int = 2000,
        block_ms: int = 500,
        claim_idle_ms: int = 30000,
        housekeeping_seconds: float = 2.0,
    ) -> None:
        self.redis = redis
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.housekeeping_seconds = housekeeping_seconds
        self._stopping = asyncio.Event()
        self._handling = asyncio.Lock()

    @property
    def streams(self) -> list[str]:
        """The streams read, each in `group`."""
        return [self.stream]

    @abstractmethod
    async def handle(self, stream: str, entries: list[Entry]) -> None:
        """Apply `entries`, read from `stream` (one of `streams`), and acknowledge those
        whose effect is committed."""

    async def _handle(self, stream: str, entries: list[Entry]) -> None:
        async with self._handling:
            await self.handle(stream, entries)

    async def housekeep(self) -> None:
        await self.claim_abandoned()

    def stop(self) -> None:
        """Finish the batch in hand, then return from `run`."""
        self._stopping.set()

    async def ensure_group(self, stream: str | None = None) -> None:
        try:
            # From id 0, so entries added before the first consumer ever ran are not skipped.
            await self.redis.xgroup_create(stream or self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Read every stream, and housekeep, until `stop`."""
        await asyncio.gather(*(self._read(stream) for stream in self.streams), self._housekeeping())

    async def _housekeeping(self) -> None:
        failing = False
        while not self._stopping.is_set():
            try:
                await self.housekeep()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    log.warning("%s housekeeping failed (%r); retrying", self.what, exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.housekeeping_seconds)

    async def _read(self, stream: str) -> None:
        next_id = "0"
        group_ready = False
        failures = 0
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    await self.ensure_group(stream)
                    group_ready = True
                reply: Any = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {stream: next_id},
                    count=self.batch_size,
                    block=None if next_id == "0" else self.block_ms,
                )
                entries: list[Entry] = reply[0][1] if reply else []
                if entries:
                    await self._handle(stream, entries)
                if failures:
                    log.info("%s consumer working again after %d failures", self.what, failures)
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
                    log.warning(
                        "%s consumer stalled (%r); retrying with backoff until it works",
                        self.what,
                        exc,
                    )
                failures += 1
                next_id = "0"
                delay = min(0.1 * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def claim_abandoned(self) -> None:
        """Take over entries another consumer read but never acknowledged."""
        for stream in self.streams:
            await self._claim_abandoned(stream)

    async def _claim_abandoned(self, stream: str) -> None:
        start = "0-0"
        while True:
            try:
                reply: Any = await self.redis.xautoclaim(
                    stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.claim_idle_ms,
                    start_id=start,
                    count=self.batch_size,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return  # its reading loop creates the group
                raise
            start, claimed = reply[0], reply[1]
            if claimed:
                log.info("claimed %d abandoned %s", len(claimed), self.what)
                await self._handle(stream, claimed)
            if start in (b"0-0", "0-0") or not claimed:
                return

    async def backlog(self) -> int:
        """Entries not yet handled: pending plus never delivered."""
        return await streams_backlog(self.redis, self.streams, self.group)
