"""Rollups and raw rows agree: random clicks written by the sink's own statements (clicks,
lander click-throughs that move clicks to another offer, cost updates) and conversions
written by the conversion writer (every status, status changes, refunds, payouts awaiting
a rate), then every report that a rollup answers, in several time zones across a DST
change and on both conversion time bases, compared with the same report computed from
the raw rows."""

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
from multidict import MultiDict

from tests.conftest import usd_conversion
from tracker.domain.click import CLICK_COLUMNS
from tracker.sink.clicks import INSERT_CLICKS, STORE_LANDER_CLICKS
from tracker.store.conversions import ConversionWriter
from tracker.store.costs import set_slice_cost
from tracker.store.partitions import ensure_for_click_batch
from tracker.store.reports import block_rows, report_path, zone_blocks
from tracker.store.rollups import (
    add_rollup_zone,
    fold_conversion_changes,
    rolled_up_zones,
    sync_rollup_zones,
)
from tracker.web.reports import parse_report_query

START = datetime(2026, 3, 27, tzinfo=UTC)  # across Europe's change to summer time (29 March)
HOURS = 96
# Rolled up while the data is written, rolled up only afterwards (a backfill), and not.
ZONES_BEFORE = ("America/New_York", "Europe/Berlin")
ZONES_AFTER = ("Asia/Kolkata",)
ZONES = ("UTC", *ZONES_BEFORE, *ZONES_AFTER, "Asia/Tokyo")
GROUPINGS = (
    "campaign,day",
    "offer,traffic_source,day",
    "offer,lander,hour",
    "campaign,lander,week",
    "affiliate_network,weekday",
    "campaign,month",
    "lander",
    "campaign,offer,country",
    "country,day",
    "affiliate_network,country,month",
)
FILTERS = (
    {},
    {"filter[country]": "US"},
    {"exclude[country]": "DE"},
    {"filter[offer]": "1", "exclude[lander]": "1"},
)


def record(rng: random.Random, n: int, ids: dict[str, list[int]]) -> dict[str, object]:
    created = START + timedelta(seconds=rng.randrange(HOURS * 3600))
    values: dict[str, object] = dict.fromkeys(name for name, _ in CLICK_COLUMNS)
    is_bot = rng.random() < 0.1
    values.update(
        click_id=f"r{n:06d}",
        created_ms=int(created.timestamp() * 1000),
        campaign_id=rng.choice(ids["campaigns"]),
        offer_id=rng.choice(ids["offers"]),
        traffic_source_id=rng.choice(ids["sources"]),
        cost=rng.choice((None, "0.0042", "0.01", "0.125")),
        sub1=f"z{rng.randrange(20)}",
        country=rng.choice(("US", "DE", "IN", None)),
        is_bot=is_bot,
        is_unique=None if rng.random() < 0.1 else rng.random() < 0.6,
        lander_id=rng.choice((None, *ids["landers"])),
    )
    return values


async def test_rollups_agree_with_raw_rows_on_random_data(api, pool):
    try:
        await sync_rollup_zones(pool, ("UTC", *ZONES_BEFORE))
        await agree_on_random_data(api, pool)
    finally:
        await sync_rollup_zones(pool, ("UTC",))


async def agree_on_random_data(api, pool):
    rng = random.Random(20260329)
    network = await api.create("/api/affiliate-networks", {"name": "N"})
    other = await api.create("/api/affiliate-networks", {"name": "M"})
    offers = []
    for i in range(4):
        body = {"name": f"O{i}", "url": "https://o.example/?c={clickid}"}
        body["affiliate_network_id"] = (network if i % 2 else other)["id"]
        offers.append((await api.create("/api/offers", body))["id"])
    landers = [
        (await api.create("/api/landers", {"name": f"L{i}", "url": "https://l.example/"}))["id"]
        for i in range(2)
    ]
    sources = [
        (await api.create("/api/traffic-sources", {"name": f"S{i}"}))["id"] for i in range(2)
    ]
    campaigns = []
    for i in range(3):
        body = {"name": f"C{i}", "traffic_source_id": sources[i % 2],
                "offers": [{"offer_id": offers[i], "weight": 1}]}  # fmt: skip
        campaigns.append((await api.create("/api/campaigns", body))["id"])
    ids = {"campaigns": campaigns, "offers": offers, "sources": sources, "landers": landers}
    records = [record(rng, n, ids) for n in range(3000)]
    for at in range(0, len(records), 500):
        batch = orjson.dumps(records[at : at + 500]).decode()
        await ensure_for_click_batch(pool, batch)
        await pool.execute(INSERT_CLICKS, batch)
    # Click-throughs from landers, a third of them to another offer: counts move.
    through = []
    for values in rng.sample([r for r in records if r["lander_id"] is not None], 400):
        moved = {
            **values,
            "offer_id": rng.choice(offers),
            "lp_ms": int(values["created_ms"]) + 9000,
        }
        through.append(moved)
        values["offer_id"] = moved["offer_id"]  # conversions carry the offer reached
    await pool.execute(STORE_LANDER_CLICKS, orjson.dumps(through).decode())
    # Costs set after the fact over part of the range, replacing what the clicks carried.
    for campaign_id, cost, slice_filter in zip(
        campaigns,
        (Decimal("12.345678"), Decimal("0.000007"), Decimal("3.5")),
        ({}, {}, {"country": "us"}),
        strict=True,
    ):
        await set_slice_cost(
            pool,
            campaign_id,
            START + timedelta(hours=5),
            START + timedelta(hours=50),
            cost,
            slice_filter,
        )
    assert await pool.fetchval("SELECT count(*) FROM clicks") == 3000
    await convert_some(api, pool, rng, records, campaigns)
    zones = await rolled_up_zones(pool)
    assert zones == {"UTC", *ZONES_BEFORE, *ZONES_AFTER}

    # A day more on each side: every click is inside the range in every zone.
    first_day = START.date() - timedelta(days=1)
    last_day = (START + timedelta(hours=HOURS)).date() + timedelta(days=1)
    compared = 0
    paths: set[str] = set()
    for tz in ZONES:
        for grouping in GROUPINGS:
            for filters in FILTERS:
                for basis in ("click", "postback"):
                    base = {
                        "from": str(first_day),
                        "to": str(last_day),
                        "tz": tz,
                        "group_by": grouping,
                        "conversion_time": basis,
                        **filters,
                    }
                    spec = parse_report_query(MultiDict(base), "UTC", 366)
                    path = report_path(spec, zones)
                    paths.add(path)
                    if tz == "Asia/Tokyo" or "hour" in grouping:
                        assert not path.startswith(("click_daily", "conversion_daily")), path
                    rolled = await api.call("GET", "/api/reports", params=base)
                    # A filter on a fact no rollup carries: the same report from raw rows.
                    raw = await api.call(
                        "GET", "/api/reports", params={**base, "exclude[sub1]": "-"}
                    )
                    where = (tz, grouping, filters, basis, path)
                    assert rolled["rows"] == raw["rows"], where
                    assert rolled["totals"] == raw["totals"], where
                    if not filters:
                        assert rolled["totals"]["clicks"] + rolled["totals"]["bots"] == 3000
                        assert rolled["totals"]["conversions"] > 0
                    compared += len(rolled["rows"])
    assert compared > 2000
    await compare_long_ranges(api, pool, zones)
    # Folded, the rollups alone give the same reports.
    assert await fold_conversion_changes(pool) > 0
    assert await pool.fetchval("SELECT count(*) FROM conversion_changes") == 0
    for tz in ("UTC", "America/New_York", "Asia/Kolkata"):
        for grouping in ("campaign,day", "campaign,offer,country"):
            for basis in ("click", "postback"):
                base = {"from": str(first_day), "to": str(last_day), "tz": tz,
                        "group_by": grouping, "conversion_time": basis}  # fmt: skip
                rolled = await api.call("GET", "/api/reports", params=base)
                raw = await api.call("GET", "/api/reports", params={**base, "exclude[sub1]": "-"})
                assert rolled["rows"] == raw["rows"], (tz, grouping, basis)
                assert rolled["totals"] == raw["totals"], (tz, grouping, basis)
                assert rolled["totals"]["conversions"] > 0
    await compare_long_ranges(api, pool, zones)
    assert {"click_daily+conversion_daily", "click_daily_geo+conversion_daily_geo"} <= paths
    # Part of a local day: not the daily rollups.
    spec = parse_report_query(
        MultiDict({"from": "2026-03-28T06:00:00", "to": "2026-03-29", "tz": "Europe/Berlin"}),
        "UTC",
        366,
    )
    assert not report_path(spec, zones).startswith("click_daily")


# Ranges of weeks around the data, with days added at their ends or taken away from
# whole weeks (Tuesday to Thursday, Monday to Sunday, Saturday to Monday).
LONG_RANGES = (
    ("2026-03-17", "2026-04-09"),
    ("2026-03-23", "2026-04-05"),
    ("2026-03-21", "2026-04-06"),
)
# Ranges that read March as a month block: March, the days around it, March without its
# first two days (taken away from the month), and February to April.
MONTH_RANGES = (
    ("2026-03-01", "2026-03-31"),
    ("2026-02-27", "2026-04-02"),
    ("2026-03-03", "2026-03-31"),
    ("2026-02-01", "2026-04-30"),
)


async def compare_long_ranges(api, pool, zones):
    """Reports over weeks and months with no time dimension read the weekly and monthly
    blocks: the same rows and totals as the raw rows give."""
    grain_rows = await block_rows(pool)
    months = 0
    cases = [
        (tz, first, last, filters)
        for tz in ("UTC", "Europe/Berlin", "Asia/Kolkata")
        for first, last in LONG_RANGES
        for filters in FILTERS
    ] + [
        (tz, first, last, filters)
        for tz in ("UTC", "Asia/Kolkata")
        for first, last in MONTH_RANGES
        for filters in FILTERS[:3]
    ]
    for tz, first, last, filters in cases:
        for basis in ("click", "postback"):
            base = {"from": first, "to": last, "tz": tz, "conversion_time": basis,
                    "group_by": "campaign,offer,country", **filters}  # fmt: skip
            spec = parse_report_query(MultiDict(base), "UTC", 366)
            blocks = zone_blocks(spec, "click_daily_geo", grain_rows)
            assert blocks is not None
            if (first, last) in MONTH_RANGES:
                assert ("month", date(2026, 3, 1), 1) in blocks, (first, last, blocks)
                months += 1
            if not any("lander" in name for name in filters):  # no geo rollup has it
                assert report_path(spec, zones) == "click_daily_geo+conversion_daily_geo"
            rolled = await api.call("GET", "/api/reports", params=base)
            raw = await api.call("GET", "/api/reports", params={**base, "exclude[sub1]": "-"})
            assert rolled["rows"] == raw["rows"], (tz, first, filters, basis)
            assert rolled["totals"] == raw["totals"], (tz, first, filters, basis)
            if not filters:
                assert rolled["totals"]["clicks"] + rolled["totals"]["bots"] == 3000
    assert months == 2 * len(MONTH_RANGES) * 3 * 2


def postback(values, txid, status, payout, parent=None):
    click = {**values, "params": {}, "ip": None, "user_agent": None}
    click["created_at"] = datetime.fromtimestamp(int(values["created_ms"]) / 1000, UTC)
    return usd_conversion(click, txid, Decimal(payout), status, parent)


async def convert_some(api, pool, rng, records, campaigns):
    """Conversions through the conversion writer: created in every status, then approved,
    rejected, charged back and partly refunded, as postbacks would; costs booked by cpa
    and revshare."""
    await api.call("PATCH", f"/api/campaigns/{campaigns[0]}",
                   json={"cost_model": "cpa", "cost_value": "1.25"})  # fmt: skip
    await api.call("PATCH", f"/api/campaigns/{campaigns[1]}",
                   json={"cost_model": "revshare", "cost_value": "30"})  # fmt: skip
    writer = ConversionWriter(pool)
    await writer.start()
    try:
        converting = rng.sample(records, 300)
        statuses = ("approved", "approved", "lead", "pending", "rejected")
        for i, values in enumerate(converting):
            payout = f"{rng.randrange(1, 5000) / 100:.2f}"
            await writer.record(postback(values, f"t{i}", statuses[i % 5], payout))
        # What the sink folds into the rollups meanwhile; the changes below stay recorded.
        assert await fold_conversion_changes(pool) >= 300
        # A zone listed after the data is stored: its rollups are backfilled.
        for zone in ZONES_AFTER:
            await add_rollup_zone(pool, zone)
        for i, values in enumerate(converting[:120]):
            change = ("approved", "rejected", "chargeback")[i % 3]
            await writer.record(postback(values, f"t{i}", change, "7.50"))
        for i, values in enumerate(converting[:60]):  # partial refunds by parent txid
            await writer.record(postback(values, f"refund{i}", "approved", "-1.10", f"t{i}"))
    finally:
        await writer.close()
    assert await pool.fetchval("SELECT count(*) FROM conversions") >= 300
    # Even a change no postback makes (an exchange rate arriving later, say) keeps them equal,
    # and so does a conversion deleted.
    await pool.execute("UPDATE conversions SET payout = NULL WHERE id % 17 = 0")
    # Arrivals up to two days after the click (they arrived now): another local day.
    await pool.execute(
        "UPDATE conversions SET created_at = click_time + (id % 49) * interval '1 hour'"
    )
    doomed = "SELECT id FROM conversions WHERE id % 23 = 0"
    for table in ("conversion_history", "postback_log"):
        await pool.execute(f"DELETE FROM {table} WHERE conversion_id IN ({doomed})")
    await pool.execute(f"DELETE FROM conversions WHERE id IN ({doomed})")
