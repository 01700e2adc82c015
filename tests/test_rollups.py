"""Per-zone rollups: the zones setting, and a zone added while clicks are being written
(its backfill and the writers that wait for it) leaves rollups equal to the raw rows."""

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from pydantic import ValidationError

from tests.test_report_agreement import record
from tracker.settings import Settings
from tracker.sink.clicks import INSERT_CLICKS, ClickSink
from tracker.store.partitions import ensure_for_click_batch, ensure_partitions
from tracker.store.rollups import add_rollup_zone, rolled_up_zones, sync_rollup_zones

ZONE = "Asia/Tokyo"
# The click rollup of a zone as the raw clicks give it.
RAW_DAILY = """
SELECT (created_at AT TIME ZONE $1::text)::date AS day, campaign_id, offer_id, traffic_source_id,
       lander_id, count(*) FILTER (WHERE NOT is_bot) AS clicks,
       count(*) FILTER (WHERE is_bot) AS bot_clicks, coalesce(sum(cost), 0) AS cost
FROM clicks GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5 NULLS FIRST
"""
ROLLED_DAILY = """
SELECT day, campaign_id, offer_id, traffic_source_id, lander_id, clicks, bot_clicks, cost
FROM click_daily WHERE zone = $1 AND clicks + bot_clicks > 0
ORDER BY 1, 2, 3, 4, 5 NULLS FIRST
"""
RAW_GEO = """
SELECT (created_at AT TIME ZONE $1::text)::date AS day, campaign_id, country, count(*) AS n
FROM clicks GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 NULLS FIRST
"""
ROLLED_GEO = """
SELECT day, campaign_id, country, sum(clicks + bot_clicks) AS n FROM click_daily_geo
WHERE zone = $1 GROUP BY 1, 2, 3 HAVING sum(clicks + bot_clicks) > 0
ORDER BY 1, 2, 3 NULLS FIRST
"""

# The weekly (or monthly) blocks: $2 is the grain.
RAW_BLOCK_GEO = """
SELECT date_trunc($2::text, created_at AT TIME ZONE $1::text)::date AS block, campaign_id,
       country, count(*) AS n, coalesce(sum(cost), 0) AS cost
FROM clicks GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 NULLS FIRST
"""
ROLLED_BLOCK_GEO = """
SELECT day, campaign_id, country, sum(clicks + bot_clicks) AS n, sum(cost) AS cost
FROM {table}
WHERE zone = $1 AND $2::text IS NOT NULL GROUP BY 1, 2, 3 HAVING sum(clicks + bot_clicks) > 0
ORDER BY 1, 2, 3 NULLS FIRST
"""


def test_rollup_zones_default_to_utc_and_the_report_zone():
    assert Settings(report_timezone="Europe/Berlin").rollup_zone_names() == [
        "UTC",
        "Europe/Berlin",
    ]
    assert Settings().rollup_zone_names() == ["UTC"]
    named = Settings(rollup_zones=" Asia/Tokyo, UTC,America/New_York ")
    assert named.rollup_zone_names() == ["UTC", "America/New_York", "Asia/Tokyo"]
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        Settings(rollup_zones="UTC,Mars/Olympus")


def batch(rng: random.Random, start: int, n: int) -> str:
    ids = {"campaigns": [1, 2, 3], "offers": [1, 2], "sources": [1], "landers": [1, 2]}
    return orjson.dumps([record(rng, i, ids) for i in range(start, start + n)]).decode()


async def test_a_zone_added_while_clicks_are_written_is_whole(pool):
    rng = random.Random(7)
    batches = [batch(rng, start, 300) for start in (0, 300, 600)]
    for records in batches:
        await ensure_for_click_batch(pool, records)
    await pool.execute(INSERT_CLICKS, batches[0])
    try:
        async with pool.acquire() as writer:
            # A sink batch in flight (not committed) when the zone is added ...
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute(INSERT_CLICKS, batches[1])
            adding = asyncio.create_task(add_rollup_zone(pool, ZONE))
            await asyncio.sleep(0.3)
            assert not adding.done()  # it waits for the batch in flight
            # ... and one that starts meanwhile: it waits for the zone to be added.
            later = asyncio.create_task(pool.execute(INSERT_CLICKS, batches[2]))
            await asyncio.sleep(0.3)
            assert not later.done()
            await transaction.commit()
        await asyncio.wait_for(adding, 20)
        await asyncio.wait_for(later, 20)
        assert ZONE in await rolled_up_zones(pool)
        assert await pool.fetchval("SELECT count(*) FROM clicks") == 900
        raw = [tuple(r) for r in await pool.fetch(RAW_DAILY, ZONE)]
        rolled = [tuple(r) for r in await pool.fetch(ROLLED_DAILY, ZONE)]
        assert rolled == raw and len(raw) > 20
        raw = [tuple(r) for r in await pool.fetch(RAW_GEO, ZONE)]
        rolled = [tuple(r) for r in await pool.fetch(ROLLED_GEO, ZONE)]
        assert rolled == raw and len(raw) > 20
        for grain, table in (("week", "click_weekly_geo"), ("month", "click_monthly_geo")):
            raw = [tuple(r) for r in await pool.fetch(RAW_BLOCK_GEO, ZONE, grain)]
            rolled = [
                tuple(r)
                for r in await pool.fetch(ROLLED_BLOCK_GEO.format(table=table), ZONE, grain)
            ]
            assert rolled == raw and len(raw) > 5, grain
        print("zone added mid-write: its daily, weekly and monthly rollups agree with the clicks")
    finally:
        await sync_rollup_zones(pool, ("UTC",))
    assert ZONE not in await rolled_up_zones(pool)
    assert not await pool.fetchval("SELECT count(*) FROM click_daily WHERE zone = $1", ZONE)


async def test_the_sink_folds_conversion_changes_into_the_rollups(redis, pool):
    await ensure_partitions(pool, "conversions", [datetime(2026, 3, 1, 12, tzinfo=UTC)])
    await pool.execute(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, payout, currency, original_payout, original_currency, status, params,"
        " country) VALUES ('k1', '', 1, 2, 3, '2026-03-01 12:00Z', 2.5, 'USD', 2.5, 'USD',"
        " 'approved', '{}', 'DE')"
    )
    assert await pool.fetchval("SELECT count(*) FROM conversion_changes") == 1
    sink = ClickSink(redis, pool, consumer="folder", block_ms=20, housekeeping_seconds=0.05)
    task = asyncio.create_task(sink.run())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while await pool.fetchval("SELECT count(*) FROM conversion_changes"):
            assert asyncio.get_running_loop().time() < deadline, "changes not folded"
            await asyncio.sleep(0.05)
    finally:
        sink.stop()
        await task
    rows = await pool.fetch(
        "SELECT basis, day, conversions, revenue FROM conversion_daily_geo"
        " WHERE zone = 'UTC' AND country = 'DE' ORDER BY basis"
    )
    today = await pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    assert [tuple(r) for r in rows] == [
        ("click", date(2026, 3, 1), 1, Decimal("2.500000")),
        ("postback", today, 1, Decimal("2.500000")),
    ]
    weeks = await pool.fetch(
        "SELECT basis, day, conversions, revenue FROM conversion_weekly_geo"
        " WHERE zone = 'UTC' AND country = 'DE' ORDER BY basis"
    )
    monday = today - timedelta(days=today.weekday())
    assert [tuple(r) for r in weeks] == [
        ("click", date(2026, 2, 23), 1, Decimal("2.500000")),
        ("postback", monday, 1, Decimal("2.500000")),
    ]
    months = await pool.fetch(
        "SELECT basis, day, conversions, revenue FROM conversion_monthly_geo"
        " WHERE zone = 'UTC' AND country = 'DE' ORDER BY basis"
    )
    assert [tuple(r) for r in months] == [
        ("click", date(2026, 3, 1), 1, Decimal("2.500000")),
        ("postback", today.replace(day=1), 1, Decimal("2.500000")),
    ]
