"""Group commit: callers that arrive while a write is in flight share the next one."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("tracker.batching")

# Writes a batch; returns, in order, each item's result or the exception for that item alone.
FlushFn = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class BatchClosedError(RuntimeError):
    """The batcher is not running: it was never started, or it is closing."""


class BatchQueueFullError(RuntimeError):
    """The queue already holds `max_pending` items: refused at once rather than queued."""


class BatchTimeoutError(TimeoutError):
    """The caller's item was not written within the time it was willing to wait."""


# Items' deadlines are kept in ticks of this many seconds, one timer per tick for all
# the items due in it: an item times out at most a tick after its `max_wait`.
TIMEOUT_TICKS_PER_SECOND = 100


class Batcher(Generic[T, R]):
    """Queues items and writes them with one `flush` call per batch.

    At most `max_in_flight` flushes run at a time, so under load each flush
    carries every item that arrived while the slots were busy: one round trip
    serves many callers, and each caller still gets back its own result or its
    own error.
    """

    def __init__(
        self,
        flush: FlushFn[T, R],
        max_batch: int,
        name: str,
        max_in_flight: int = 1,
        max_pending: int = 20000,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._max_pending = max_pending
        # True from the first failed batch until the next good one: one log line per outage.
        self.failing = False
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.name = name
        self._max_in_flight = max_in_flight
        # The queue: items and their callers' futures, in parallel lists.
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        # Futures by the tick they time out in (see `submit`).
        self._deadlines: dict[int, list[asyncio.Future[R]]] = {}
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0
        # Told each batch's size (the metrics' histogram), when set.
        self.on_batch: Callable[[int], None] | None = None

    @property
    def pending(self) -> int:
        """Items queued for the next batches."""
        return len(self._items)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def close(self) -> None:
        """Stop taking items, write everything already queued, then return."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, item: T, max_wait: float | None = None) -> R:
        """The item's result once its batch is written.

        Raises `BatchQueueFullError` at once when the queue is full, and
        `BatchTimeoutError` after `max_wait` seconds (the item may still be written).
        """
        if self._task is None or self._closing:
            raise BatchClosedError(f"{self.name} is not running")
        if len(self._items) >= self._max_pending:
            raise BatchQueueFullError(f"{self.name}: {len(self._items)} items already queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        self._wakeup.set()
        if max_wait is not None:
            # Not a timer per item (and its cancel): one per tick, for the items due in it.
            tick = int((loop.time() + max_wait) * TIMEOUT_TICKS_PER_SECOND) + 1
            due = self._deadlines.get(tick)
            if due is None:
                due = self._deadlines[tick] = []
                loop.call_at(tick / TIMEOUT_TICKS_PER_SECOND, self._expire, tick)
            due.append(future)
        return await future

    def _expire(self, tick: int) -> None:
        for future in self._deadlines.pop(tick):
            if not future.done():
                future.set_exception(BatchTimeoutError(f"{self.name}: no answer in time"))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._items:
                if self._max_in_flight == 1:
                    # One write at a time: written here, no task per batch. Items that
                    # arrive meanwhile make the next batch.
                    items, futures = self._cut()
                    await self._write(items, futures)
                    continue
                # Waiting for a free slot is what lets the next batch grow.
                await self._slots.acquire()
                task = asyncio.create_task(self._write_in_slot(*self._cut()))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if self._closing:
                if self._in_flight:
                    await asyncio.gather(*self._in_flight)
                if not self._items:
                    return

    def _cut(self) -> tuple[list[T], list["asyncio.Future[R]"]]:
        """The next batch, off the queue."""
        size = self._max_batch
        if len(self._items) <= size:
            items, self._items = self._items, []
            futures, self._futures = self._futures, []
            return items, futures
        items = self._items[:size]
        futures = self._futures[:size]
        del self._items[:size], self._futures[:size]
        return items, futures

    async def _write_in_slot(self, items: list[T], futures: list["asyncio.Future[R]"]) -> None:
        try:
            await self._write(items, futures)
        finally:
            self._slots.release()

    async def _write(self, items: list[T], futures: list["asyncio.Future[R]"]) -> None:
        """Write a batch and answer its callers, whatever goes wrong: a hook that raises, a
        flush that returns no list or is cancelled from within. Only a cancellation of the
        batcher itself goes on up; anything else fails this batch alone, and the batcher
        keeps serving (its callers may have no deadline of their own)."""
        try:
            await self._answer(items, futures)
        except BaseException as exc:
            task = asyncio.current_task()
            stopping = task is not None and task.cancelling() > 0
            # The batcher itself is stopping (or the process is exiting): no batch goes on.
            fatal = stopping or not isinstance(exc, Exception | asyncio.CancelledError)
            if fatal:
                error: BaseException = BatchClosedError(f"{self.name}: batch abandoned")
            else:
                error = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            if fatal:
                raise
            log.error("%s: a batch failed: %r", self.name, exc)

    async def _answer(self, items: list[T], futures: list["asyncio.Future[R]"]) -> None:
        self.batches += 1
        self.items += len(items)
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            results = await self._flush(items)
        except Exception as exc:
            if not self.failing:
                self.failing = True
                log.warning("%s: writes failing (%r); quiet until they work", self.name, exc)
            results = [exc] * len(items)
        else:
            if self.failing:
                self.failing = False
                log.info("%s: writes working again", self.name)
        if len(results) != len(items):  # a flush that broke its word: an error for each
            error = RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
            results = [error] * len(items)
        for future, result in zip(futures, results, strict=True):
            if future.done():  # the caller went away, or its time ran out
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class BatchedService:
    """Base for services whose writes or reads go through one `Batcher`."""

    batcher: Batcher[Any, Any]

    async def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        await self.batcher.close()
