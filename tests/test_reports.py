"""Reports: grouping, filters, exact sums, and refused queries."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from tracker.store.partitions import ensure_partitions
from tracker.store.rollups import rebuild_rollup_zone, rolled_up_zones


async def mirror_click_rollups(pool):
    """Tests that write `click_rollups` rows by hand (no raw clicks): the same rows in the
    UTC per-zone rollups, which UTC reports read."""
    for table, day in (
        ("click_daily", "day"),
        ("click_daily_geo", "day"),
        ("click_weekly_geo", "date_trunc('week', day)::date"),
        ("click_monthly_geo", "date_trunc('month', day)::date"),
    ):
        await pool.execute(f"DELETE FROM {table} WHERE zone = 'UTC'")
        await pool.execute(
            f"INSERT INTO {table} (zone, day, campaign_id, offer_id, traffic_source_id, clicks,"
            " bot_clicks, unique_clicks, lp_views, lp_clicks, cost)"
            f" SELECT 'UTC', {day}, campaign_id, offer_id, traffic_source_id, sum(clicks),"
            " sum(bot_clicks), sum(unique_clicks), sum(lp_views), sum(lp_clicks), sum(cost)"
            " FROM click_rollups GROUP BY 1, 2, 3, 4, 5"
        )


async def rebuild_rollups(pool):
    """Tests that write raw clicks by hand: the per-zone rollups the sink would write."""
    for zone in await rolled_up_zones(pool):
        await rebuild_rollup_zone(pool, zone)


async def insert_facts(pool):
    """Two campaigns over two days, written straight into the tables reports read."""
    rollups = [
        (date(2026, 3, 1), 1, 10, 100, 100, Decimal("5.00")),
        (date(2026, 3, 2), 1, 10, 100, 50, Decimal("2.50")),
        (date(2026, 3, 2), 2, 20, 100, 10, Decimal("0")),
    ]
    await pool.executemany(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks, cost) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        rollups,
    )
    await mirror_click_rollups(pool)
    conversions = [
        ("k1", 1, 10, datetime(2026, 3, 1, 23, 59, tzinfo=UTC), Decimal("1.10"), "approved"),
        ("k2", 1, 10, datetime(2026, 3, 2, 0, 0, tzinfo=UTC), Decimal("2.205"), "approved"),
        ("k3", 1, 10, datetime(2026, 3, 2, 1, 0, tzinfo=UTC), Decimal("100"), "rejected"),
        ("k4", 2, 20, datetime(2026, 3, 2, 2, 0, tzinfo=UTC), Decimal("0.01"), "approved"),
        ("k5", 2, 20, datetime(2026, 3, 3, 0, 0, tzinfo=UTC), Decimal("50"), "approved"),
    ]
    await ensure_partitions(pool, "conversions", [c[3] for c in conversions])
    await pool.executemany(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, created_at, payout, currency, original_payout, original_currency, status,"
        " params) VALUES ($1, '', $2, $3, 100, $4, $4, $5, 'USD', $5, 'USD', $6, '{}')",
        conversions,
    )


async def test_group_by_campaign_and_day(api, pool):
    await insert_facts(pool)
    report = await api.call(
        "GET", "/api/reports?from=2026-03-01&to=2026-03-02&group_by=campaign,day"
    )
    rows = [
        (r["campaign_id"], r["day"], r["clicks"], r["conversions"], r["revenue"], r["cost"])
        for r in report["rows"]
    ]
    assert rows == [
        (1, "2026-03-01", 100, 1, "1.10", "5.00"),
        (1, "2026-03-02", 50, 1, "2.205", "2.50"),
        (2, "2026-03-02", 10, 1, "0.01", "0.00"),
    ]
    totals = report["totals"]
    assert (totals["clicks"], totals["conversions"]) == (160, 3)
    assert (totals["revenue"], totals["cost"], totals["profit"]) == ("3.315", "7.50", "-4.185")
    assert totals["roi"] == "-55.80"
    assert report["rows"][2]["roi"] is None  # no cost, no ROI


async def test_group_by_offer_and_source_with_filter(api, pool):
    await insert_facts(pool)
    report = await api.call(
        "GET",
        "/api/reports?from=2026-03-01&to=2026-03-03&group_by=offer,traffic_source&campaign_id=2",
    )
    [row] = report["rows"]
    assert (row["offer_id"], row["traffic_source_id"]) == (20, 100)
    assert (row["clicks"], row["conversions"], row["revenue"]) == (10, 2, "50.01")
    assert row["cr"] == "20.00" and row["epc"] == "5.0010" and row["cpa"] == "0.0000"


async def test_bad_queries_are_refused(api):
    for query, field in [
        ("to=2026-01-01", "from"),
        ("from=2026-13-01&to=2026-01-01", "from"),
        ("from=2026-01-01&to=2026-01-01&group_by=planet", "group_by"),
        ("from=2026-01-01&to=2026-01-01&campaign_id=x", "campaign_id"),
        ("from=2026-01-01&to=2026-01-01&bogus=1", "bogus"),
    ]:
        body = await api.call("GET", f"/api/reports?{query}", expect=400)
        assert field in [d["field"] for d in body["details"]], (query, body)
    far = (date(2026, 1, 1) + timedelta(days=400)).isoformat()
    await api.call("GET", f"/api/reports?from=2026-01-01&to={far}", expect=400)
    await api.call("GET", "/api/reports?from=2026-01-02&to=2026-01-01", expect=400)


async def test_bot_unique_and_lander_counters_in_rows_and_totals(api, pool):
    rollups = [
        (date(2026, 3, 1), 1, 10, 80, 20, 60, 50, 30, Decimal("5.00")),
        (date(2026, 3, 1), 2, 20, 10, 0, 10, 0, 0, Decimal("1.00")),
        (date(2026, 3, 2), 1, 10, 5, 7, 5, 4, 1, Decimal("0.60")),
    ]
    await pool.executemany(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks,"
        " bot_clicks, unique_clicks, lp_views, lp_clicks, cost)"
        " VALUES ($1, $2, $3, 100, $4, $5, $6, $7, $8, $9)",
        rollups,
    )
    await mirror_click_rollups(pool)
    report = await api.call("GET", "/api/reports?from=2026-03-01&to=2026-03-02")
    counters = ("clicks", "bots", "unique_clicks", "lp_views", "lp_clicks")
    rows = [(r["campaign_id"], *(r[c] for c in counters), r["cpc"]) for r in report["rows"]]
    # Bots are counted apart, never as clicks; their cost is in the cost.
    assert rows == [(1, 85, 27, 65, 54, 31, "0.0659"), (2, 10, 0, 10, 0, 0, "0.1000")]
    totals = report["totals"]
    assert tuple(totals[c] for c in counters) == (95, 27, 75, 54, 31)
    assert totals["cost"] == "6.60"
    # A group with conversions and no clicks has zero counters, not nulls.
    await ensure_partitions(pool, "conversions", [datetime(2026, 3, 3, tzinfo=UTC)])
    await pool.execute(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, created_at, payout, currency, original_payout, original_currency, status,"
        " params) VALUES ('k', '', 1, 10, 100, $1, $1, 1, 'USD', 1, 'USD', 'approved', '{}')",
        datetime(2026, 3, 3, tzinfo=UTC),
    )
    only_conversions = await api.call("GET", "/api/reports?from=2026-03-03&to=2026-03-03")
    [row] = only_conversions["rows"]
    assert (row["conversions"], *(row[c] for c in counters)) == (1, 0, 0, 0, 0, 0)
    empty = await api.call("GET", "/api/reports?from=2026-04-01&to=2026-04-01")
    assert empty["rows"] == [] and tuple(empty["totals"][c] for c in counters) == (0,) * 5
