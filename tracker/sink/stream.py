"""Reading a Redis stream with a consumer group: the loop every sink consumer shares.

Each consumer first takes back its own pending entries (a restart under the same
name), then new ones; every `housekeeping_seconds` it claims the entries of
consumers that died. Entries are acknowledged by `handle` once their effect is
committed, so a crash only means they are handled again. While Redis or Postgres
is away the loop backs off, with one warning per outage rather than one a second.

On one Redis a single XREADGROUP reads every stream; on a Redis Cluster (streams in
different slots) each stream has a reading loop of its own, and what the loops read
while a batch was being handled is handled together next. After a batch that was not
full the loop waits `linger_ms` before reading again, so that a busy consumer handles
fewer, bigger batches: each batch costs a commit and its fixed share of work
whatever its size.
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
from tracker.store.redis import is_cluster

log = logging.getLogger("tracker.sink")

Entry = tuple[bytes, dict[bytes, bytes] | None]
# Entries read from one stream.
Read = tuple[str, list[Entry]]
MAX_BACKOFF_SECONDS = 5.0


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Waiting:
    """Reads handed to `_handle`, and how their handling ended once it has."""

    __slots__ = ("error", "handled", "reads")

    def __init__(self, reads: list[Read]) -> None:
        self.reads = reads
        self.handled = False
        self.error: BaseException | None = None


class StreamConsumer(ABC):
    """A consumer of `stream` (or of each of `streams`) in `group`; subclasses say how
    to `handle` entries.

    Entries are handled one batch at a time per process: reads that arrive while a
    batch is in hand wait, and are then handled together (`handle_reads`).
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
        linger_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.consumer = consumer or default_consumer_name()
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.housekeeping_seconds = housekeeping_seconds
        self.linger_ms = linger_ms
        self._stopping = asyncio.Event()
        self._handling = asyncio.Lock()
        self._waiting: list[_Waiting] = []

    @property
    def streams(self) -> list[str]:
        """The streams read, each in `group`."""
        return [self.stream]

    @abstractmethod
    async def handle_reads(self, reads: list[Read]) -> None:
        """Apply entries read together from one or more of `streams` (stream, entries),
        and acknowledge those whose effect is committed."""

    async def _handle(self, reads: list[Read]) -> None:
        """Handle `reads` with every read waiting beside it, one batch at a time; raise
        what handling them raised."""
        mine = _Waiting(reads)
        self._waiting.append(mine)
        try:
            async with self._handling:
                if not mine.handled:
                    batch, self._waiting = self._waiting, []
                    error: BaseException | None = None
                    try:
                        await self.handle_reads([read for w in batch for read in w.reads])
                    except BaseException as exc:
                        error = exc
                        raise
                    finally:
                        if isinstance(error, asyncio.CancelledError):
                            # Not the others' cancellation: theirs is a batch to read again.
                            error = RuntimeError(f"handling {self.what} was cancelled")
                        for w in batch:
                            w.handled, w.error = True, error
        except asyncio.CancelledError:
            if mine in self._waiting:
                self._waiting.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error

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
        if is_cluster(self.redis):
            # Keys of different slots cannot share a call: one blocking read per stream.
            loops = [self._read([stream]) for stream in self.streams]
        else:
            loops = [self._read(self.streams)]
        await asyncio.gather(*loops, self._housekeeping())

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
            await self._pause(self.housekeeping_seconds)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if `stop` is called."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _read(self, streams: list[str]) -> None:
        """Read `streams` in one call at a time: first this consumer's own pending entries
        (id 0, per stream until it has none), then new ones (id >)."""
        loop = asyncio.get_running_loop()
        ids = dict.fromkeys(streams, "0")
        group_ready = False
        failures = 0
        while not self._stopping.is_set():
            try:
                if not group_ready:
                    for stream in streams:
                        await self.ensure_group(stream)
                    group_ready = True
                history = "0" in ids.values()
                reply: Any = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    ids,  # type: ignore[arg-type]
                    count=self.batch_size,
                    block=None if history else self.block_ms,
                )
                read_at = loop.time()
                reads: list[Read] = []
                full = False
                for name, entries in reply or ():
                    stream = name.decode() if isinstance(name, bytes) else name
                    if entries:
                        reads.append((stream, entries))
                        full = full or len(entries) >= self.batch_size
                    elif ids.get(stream) == "0":
                        ids[stream] = ">"  # its own pending entries are all handled
                if reads:
                    await self._handle(reads)
                if failures:
                    log.info("%s consumer working again after %d failures", self.what, failures)
                    failures = 0
                if reads and not full and not history and self.linger_ms:
                    # Let entries gather for the next batch, unless this one left some behind.
                    await self._pause(read_at + self.linger_ms / 1000 - loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    group_ready = False  # a stream was deleted; recreate the group
                    continue
                if not failures:
                    log.warning(
                        "%s consumer stalled (%r); retrying with backoff until it works",
                        self.what,
                        exc,
                    )
                failures += 1
                ids = dict.fromkeys(streams, "0")
                await self._pause(min(0.1 * 2 ** min(failures, 6), MAX_BACKOFF_SECONDS))

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
                await self._handle([(stream, claimed)])
            if start in (b"0-0", "0-0") or not claimed:
                return

    async def backlog(self) -> int:
        """Entries not yet handled: pending plus never delivered."""
        return await streams_backlog(self.redis, self.streams, self.group)
