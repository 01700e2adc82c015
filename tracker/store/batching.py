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


def _expire(future: "asyncio.Future[Any]", name: str) -> None:
    if not future.done():
        future.set_exception(BatchTimeoutError(f"{name}: no answer in time"))


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
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
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
        return len(self._pending)

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
        if len(self._pending) >= self._max_pending:
            raise BatchQueueFullError(f"{self.name}: {len(self._pending)} items already queued")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        if max_wait is None:
            return await future
        # A timer handle rather than wait_for: no extra task per item on the hot path.
        timer = loop.call_later(max_wait, _expire, future, self.name)
        try:
            return await future
        finally:
            timer.cancel()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                # Waiting for a free slot is what lets the next batch grow.
                await self._slots.acquire()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                task = asyncio.create_task(self._write(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if self._closing:
                if self._in_flight:
                    await asyncio.gather(*self._in_flight)
                if not self._pending:
                    return

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            if not self.failing:
                self.failing = True
                log.warning("%s: writes failing (%r); quiet until they work", self.name, exc)
            results = [exc] * len(batch)
        else:
            if self.failing:
                self.failing = False
                log.info("%s: writes working again", self.name)
        finally:
            self._slots.release()
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller went away
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
