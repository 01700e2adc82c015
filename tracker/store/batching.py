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
    pass


class Batcher(Generic[T, R]):
    """Queues items and writes them with one `flush` call per batch.

    At most `max_in_flight` flushes run at a time, so under load each flush
    carries every item that arrived while the slots were busy: one round trip
    serves many callers, and each caller still gets back its own result or its
    own error.
    """

    def __init__(
        self, flush: FlushFn[T, R], max_batch: int, name: str, max_in_flight: int = 1
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stop taking items, write everything already queued, then return."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, item: T) -> R:
        if self._task is None or self._closing:
            raise BatchClosedError(f"{self._name} is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return await future

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
        try:
            results = await self._flush([item for item, _ in batch])
        except Exception as exc:
            log.warning("%s: batch of %d failed: %r", self._name, len(batch), exc)
            results = [exc] * len(batch)
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
