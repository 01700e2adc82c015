"""The group-commit batcher with an in-memory flush: no servers."""

import asyncio

import pytest

from tracker.store.batching import BatchClosedError, Batcher, BatchTimeoutError


async def test_concurrent_items_share_a_flush_and_get_their_own_results():
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int | BaseException]:
        batches.append(items)
        await gate.wait()
        return [ValueError(i) if i == 3 else i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(flush, max_batch=100, name="t")
    batcher.start()
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    gate.set()
    assert await first == 0
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert [r if isinstance(r, int) else "err" for r in results] == [10, 20, "err", 40, 50]
    assert batches == [[0], [1, 2, 3, 4, 5]]
    await batcher.close()


async def test_a_failing_flush_fails_only_its_batch():
    async def flush(items: list[str]) -> list[str | BaseException]:
        if "bad" in items:
            raise RuntimeError("boom")
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_batch=1, name="t")
    batcher.start()
    results = await asyncio.gather(
        batcher.submit("a"), batcher.submit("bad"), batcher.submit("b"), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], RuntimeError)
    await batcher.close()


async def test_max_batch_and_close():
    sizes: list[int] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        sizes.append(len(items))
        return list(items)

    batcher: Batcher[int, int] = Batcher(flush, max_batch=3, name="t")
    batcher.start()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(7))) == list(range(7))
    assert max(sizes) <= 3 and sum(sizes) == 7
    await batcher.close()
    with pytest.raises(BatchClosedError):
        await batcher.submit(1)


async def test_each_item_times_out_on_its_own_deadline_never_before():
    gate = asyncio.Event()

    async def flush(items: list[str]) -> list[str | BaseException]:
        await gate.wait()
        return items

    batcher: Batcher[str, str] = Batcher(flush, max_batch=100, name="t")
    batcher.start()
    loop = asyncio.get_running_loop()
    timed_out: dict[str, float] = {}

    async def submit(item: str, max_wait: float | None) -> str:
        start = loop.time()
        try:
            return await batcher.submit(item, max_wait)
        except BatchTimeoutError:
            timed_out[item] = loop.time() - start
            raise

    first = asyncio.create_task(submit("first", 0.2))  # its flush hangs until the gate opens
    await asyncio.sleep(0.1)
    second = asyncio.create_task(submit("second", 0.5))  # queued behind it
    patient = asyncio.create_task(submit("patient", None))
    with pytest.raises(BatchTimeoutError):
        await first
    assert not second.done()  # due four tenths of a second after the first
    with pytest.raises(BatchTimeoutError):
        await second
    assert timed_out["first"] >= 0.2 and timed_out["second"] >= 0.5
    gate.set()
    assert await patient == "patient"
    await batcher.close()


async def test_a_flush_answering_the_wrong_count_fails_its_batch_only():
    async def flush(items: list[int]) -> list[int | BaseException]:
        return items[:-1] if 13 in items else items

    batcher: Batcher[int, int] = Batcher(flush, max_batch=1, name="t")
    batcher.start()
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        await batcher.submit(13)
    assert await batcher.submit(7) == 7
    await batcher.close()


async def test_several_flushes_in_flight_at_once():
    started: list[list[int]] = []
    both = asyncio.Event()

    async def flush(items: list[int]) -> list[int | BaseException]:
        started.append(items)
        if len(started) == 2:
            both.set()
        await both.wait()
        return items

    batcher: Batcher[int, int] = Batcher(flush, max_batch=1, name="t", max_in_flight=2)
    batcher.start()
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 5) == [1, 2]
    assert sorted(started) == [[1], [2]]
    await batcher.close()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_batch_that_breaks_oddly_fails_alone_and_the_batcher_serves_on(in_flight: int):
    """A hook that raises, a flush that returns no list or is cancelled from within: the
    batch's callers get an error (none waits for ever), later items are written."""
    broken: dict[str, int] = {"hook": 0}

    async def flush(items: list[str]) -> list[str | BaseException]:
        if "none" in items:
            return None  # type: ignore[return-value]
        if "cancel" in items:
            raise asyncio.CancelledError
        return items

    def hook(size: int) -> None:
        if broken["hook"]:
            broken["hook"] -= 1
            raise ValueError("hook")

    batcher: Batcher[str, str] = Batcher(flush, max_batch=1, max_in_flight=in_flight, name="t")
    batcher.on_batch = hook
    batcher.start()
    for bad in ("none", "cancel"):
        with pytest.raises(Exception):  # noqa: B017 - any error, but an answer
            await asyncio.wait_for(batcher.submit(bad), 5)
        assert await asyncio.wait_for(batcher.submit("ok"), 5) == "ok"
    broken["hook"] = 1
    with pytest.raises(ValueError, match="hook"):
        await asyncio.wait_for(batcher.submit("x"), 5)
    assert await asyncio.wait_for(batcher.submit("ok"), 5) == "ok"
    await asyncio.wait_for(batcher.close(), 5)
