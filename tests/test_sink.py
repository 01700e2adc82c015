"""The sink: idempotent batches, abandoned entries claimed, stream trimmed, bad entries kept."""

import asyncio
import time

import orjson

from tests.conftest import wait_for_sink
from tracker.sink.clicks import ClickSink
from tracker.store import keys


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
