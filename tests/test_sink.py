"""The sink: idempotent batches, abandoned entries claimed, stream trimmed, bad entries kept."""

import asyncio
import time
from datetime import timedelta

import orjson

from tests.conftest import drain, wait_for_sink
from tracker.domain.clickid import click_time, new_click_id
from tracker.sink.clicks import ClickSink
from tracker.sink.stream import StreamConsumer
from tracker.store import keys
from tracker.store.postback_log import unmatched_query


def record(click_id: str, cost: str | None = "0.10", **extra):
    return orjson.dumps(
        {
            "click_id": click_id,
            "created_ms": int(time.time() * 1000),
            "campaign_id": 1,
            "offer_id": 2,
            "traffic_source_id": 3,
            "cost": cost,
            "sub1": "s",
            **extra,
        }
    )


async def test_batches_are_idempotent(redis, pool):
    sink = ClickSink(redis, pool, consumer="a")
    await sink.ensure_group()
    for i in range(5):
        await redis.xadd(keys.CLICK_STREAM, {b"d": record(f"c{i}")})
    entries = (await redis.xreadgroup(keys.SINK_GROUP, "a", {keys.CLICK_STREAM: ">"}))[0][1]
    await sink.store(entries)
    await sink.store(entries)  # redelivery after a crash between commit and ack
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 5
    rollup = await pool.fetchrow("SELECT clicks, cost FROM click_rollups")
    assert (rollup["clicks"], str(rollup["cost"])) == (5, "0.500000")


async def test_abandoned_entries_are_claimed_and_stream_trimmed(redis, pool):
    dead = ClickSink(redis, pool, consumer="dead")
    await dead.ensure_group()
    for i in range(3):
        await redis.xadd(keys.CLICK_STREAM, {b"d": record(f"d{i}")})
    # The dead consumer reads the entries and never acknowledges them.
    await redis.xreadgroup(keys.SINK_GROUP, "dead", {keys.CLICK_STREAM: ">"})
    live = ClickSink(
        redis, pool, consumer="live", block_ms=20, claim_idle_ms=100, housekeeping_seconds=0.05
    )
    task = asyncio.create_task(live.run())
    try:
        await asyncio.sleep(0.2)
        await wait_for_sink(live)
        assert await pool.fetchval("SELECT count(*) FROM clicks") == 3
        for _ in range(50):
            if await redis.xlen(keys.CLICK_STREAM) <= 1:
                break
            await asyncio.sleep(0.05)
        # Everything acknowledged is trimmed (the last delivered entry may stay).
        assert await redis.xlen(keys.CLICK_STREAM) <= 1
    finally:
        live.stop()
        await asyncio.wait_for(task, 5)


async def test_bad_entry_goes_to_dead_letters_and_the_rest_is_stored(redis, pool, sink):
    await redis.xadd(keys.CLICK_STREAM, {b"d": record("good1")})
    await redis.xadd(keys.CLICK_STREAM, {b"d": record("bad", created_ms="yesterday")})
    await redis.xadd(keys.CLICK_STREAM, {b"d": record("good2")})
    await wait_for_sink(sink)
    ids = {r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")}
    assert ids == {"good1", "good2"}
    dead = await pool.fetchrow("SELECT payload, error FROM click_dead_letters")
    assert b'"bad"' in dead["payload"].encode()


async def test_text_and_params_are_stored_as_the_record_has_them(redis, pool, sink):
    odd = 'q"uote \\back\\slash /slash \u2028 \t tab 日本 😀 \u00e9'
    params = {"k": odd, "nested": {"n": [1, "2", None, True]}, "num": "0.0042", "e": ""}
    await redis.xadd(
        keys.CLICK_STREAM,
        {b"d": record("odd", sub1=odd, user_agent=odd, referrer=None, params=params)},
    )
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT sub1, user_agent, referrer, params FROM clicks")
    assert (row["sub1"], row["user_agent"], row["referrer"]) == (odd, odd, None)
    assert row["params"] == params


async def test_clicks_reach_postgres(client, api, pool, sink):
    setup = await api.setup_campaign()
    path = "/c/" + setup["campaign"]["key"]
    for _ in range(20):
        assert (await client.get(path, allow_redirects=False)).status == 302
    # Speed is the benchmark's business; here, only that every click arrives.
    await wait_for_sink(sink)
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 20


async def test_huge_costs_cannot_overflow_the_rollup_or_dead_letter_clicks(redis, pool, sink):
    # Each cost is the largest a click can carry; their sum is far beyond numeric(20, 6).
    for i in range(150):
        await redis.xadd(keys.CLICK_STREAM, {b"d": record(f"big{i}", cost="999999999999.999999")})
    await wait_for_sink(sink)
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 150
    assert await pool.fetchval("SELECT count(*) FROM click_dead_letters") == 0
    rollup = await pool.fetchrow("SELECT clicks, cost FROM click_rollups")
    assert rollup["clicks"] == 150
    assert str(rollup["cost"]) == "149999999999999.999850"


class RecordingSink(ClickSink):
    """A sink that notes the streams and sizes of each batch it stores."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[list[tuple[str, int]]] = []

    async def store_reads(self, reads):
        self.batches.append([(stream, len(entries)) for stream, entries in reads])
        await super().store_reads(reads)


async def test_every_stream_is_read_and_stored_in_one_batch(redis, pool):
    streams = [keys.click_stream(n) for n in (0, 3, 5, 7)] + [keys.CLICK_STREAM]
    for i, stream in enumerate(streams):
        for j in range(3):
            await redis.xadd(stream, {b"d": record(f"s{i}c{j}")})
    sink = RecordingSink(redis, pool, consumer="one", block_ms=50)
    await drain(sink)
    # One XREADGROUP over every stream, one INSERT for all it returned, acked per stream.
    assert sink.batches == [[(stream, 3) for stream in streams]]
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 15
    assert await pool.fetchval("SELECT sum(clicks) FROM click_rollups") == 15
    for stream in streams:
        pending = await redis.xpending(stream, keys.SINK_GROUP)
        assert pending["pending"] == 0


async def test_own_pending_entries_of_every_stream_are_stored_after_a_restart(redis, pool):
    streams = [keys.click_stream(1), keys.click_stream(6)]
    first = ClickSink(redis, pool, consumer="same")
    for stream in streams:
        await first.ensure_group(stream)
        for j in range(2):
            await redis.xadd(stream, {b"d": record(f"{stream[-3:-1]}p{j}")})
    # Read under the sink's name and never acknowledged: it died before storing them.
    await redis.xreadgroup(keys.SINK_GROUP, "same", dict.fromkeys(streams, ">"))
    await redis.xadd(streams[0], {b"d": record("new")})
    # Claiming is not what stores them here: the restarted sink reads its own pending first.
    again = RecordingSink(redis, pool, consumer="same", block_ms=50, claim_idle_ms=3_600_000)
    await drain(again)
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 5
    assert again.batches[0] == [(streams[0], 2), (streams[1], 2)]


class GatedConsumer(StreamConsumer):
    """Handles reads only when let through; notes the streams of each batch."""

    stream = "unused"
    group = "unused"
    what = "test entries"

    def __init__(self, redis):
        super().__init__(redis)
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_from = 0  # the first batch refused, counting from 1; 0: none

    async def handle(self, stream, entries):
        raise AssertionError("handle_reads is what the loops call")

    async def handle_reads(self, reads):
        self.batches.append([stream for stream, _ in reads])
        self.started.set()
        await self.gate.wait()
        if self.fail_from and len(self.batches) >= self.fail_from:
            raise RuntimeError("batch refused")


async def test_reads_waiting_beside_a_batch_are_handled_together_in_the_next(redis):
    consumer = GatedConsumer(redis)
    entry = (b"1-0", {b"d": b"{}"})
    first = asyncio.create_task(consumer._handle([("a", [entry])]))
    await consumer.started.wait()
    # Two reading loops (a cluster's streams) come back while the first batch is in hand.
    second = asyncio.create_task(consumer._handle([("b", [entry])]))
    third = asyncio.create_task(consumer._handle([("c", [entry]), ("d", [entry])]))
    await asyncio.sleep(0.05)
    consumer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second, third), 5)
    assert consumer.batches == [["a"], ["b", "c", "d"]]


async def test_a_refused_batch_fails_every_read_in_it_and_no_other(redis):
    consumer = GatedConsumer(redis)
    consumer.fail_from = 2
    entry = (b"1-0", {b"d": b"{}"})
    first = asyncio.create_task(consumer._handle([("a", [entry])]))
    await consumer.started.wait()
    second = asyncio.create_task(consumer._handle([("b", [entry])]))
    third = asyncio.create_task(consumer._handle([("c", [entry])]))
    await asyncio.sleep(0.05)
    consumer.gate.set()
    await asyncio.wait_for(first, 5)
    results = await asyncio.wait_for(asyncio.gather(second, third, return_exceptions=True), 5)
    assert consumer.batches == [["a"], ["b", "c"]]
    # Neither loop may take its entries as handled (it would go on to newer ones).
    assert [str(r) for r in results] == ["batch refused", "batch refused"]


async def test_full_batches_are_read_again_at_once_despite_the_linger(redis, pool):
    for i in range(12):
        await redis.xadd(keys.click_stream(2), {b"d": record(f"f{i}")})
    # A linger far beyond the test's timeout: only batches that were full may skip it.
    sink = RecordingSink(redis, pool, consumer="busy", batch_size=5, block_ms=50, linger_ms=60_000)
    task = asyncio.create_task(sink.run())
    try:
        await wait_for_sink(sink)
        assert [sum(n for _, n in batch) for batch in sink.batches] == [5, 5, 2]
    finally:
        sink.stop()
        # Stopping ends the linger at once.
        await asyncio.wait_for(task, 5)
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 12


async def test_after_a_batch_that_was_not_full_entries_gather_for_the_linger(redis, pool):
    stream = keys.click_stream(4)
    sink = RecordingSink(redis, pool, consumer="idle", block_ms=50, linger_ms=60_000)
    task = asyncio.create_task(sink.run())
    try:
        await redis.xadd(stream, {b"d": record("first")})
        await wait_for_sink(sink)  # an idle sink stores a lone click at once
        for i in range(3):
            await redis.xadd(stream, {b"d": record(f"later{i}")})
        await asyncio.sleep(0.5)
        assert await sink.backlog() == 3  # held for the next batch
    finally:
        sink.stop()
        await asyncio.wait_for(task, 5)
    assert sink.batches == [[(stream, 1)]]
    again = RecordingSink(redis, pool, consumer="idle", block_ms=50)
    await drain(again)
    assert again.batches == [[(stream, 3)]]
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 4


def test_a_batchs_orphans_are_looked_up_from_a_day_before_its_oldest_click():
    # The sink hands every stored click id to the orphan lookup: ids in any order, some
    # not click ids (a replayed record may carry any text).
    oldest = new_click_id(1_700_000_000_000)
    ids = [new_click_id(1_700_000_900_000), "not-a-click-id", oldest, new_click_id()]
    found = unmatched_query(ids)
    assert found is not None
    _, (looked_up, since) = found
    assert sorted(looked_up) == sorted(i for i in ids if i != "not-a-click-id")
    assert since == click_time(oldest) - timedelta(days=1)
    assert unmatched_query(["not-a-click-id"]) is None
