"""POST /api/costs: a slice's cost spread over its clicks, adding up exactly in reports."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from tests.conftest import wait_for_sink
from tests.test_postback import make_click
from tests.test_reports import rebuild_rollups
from tracker.store.costs import FILTER_COLUMNS
from tracker.store.partitions import ensure_partitions
from tracker.web.costs import CostFilter

DAY1 = datetime(2026, 3, 1, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY1 + timedelta(hours=hours)


async def insert_clicks(pool, campaign_id: int, clicks: list[dict]) -> None:
    """Clicks written straight into Postgres, then the rollups rebuilt from them, as the
    sink keeps them: `clicks` counts humans, `cost` covers every click."""
    offer_id, source_id = 1, 1
    await ensure_partitions(pool, "clicks", [c["at"] for c in clicks])
    await pool.executemany(
        "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id, traffic_source_id,"
        " cost, sub1, country, is_bot) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            (
                c["id"],
                c["at"],
                campaign_id,
                c.get("offer_id", offer_id),
                source_id,
                c.get("cost"),
                c.get("sub1"),
                c.get("country"),
                c.get("bot", False),
            )
            for c in clicks
        ],
    )
    await pool.execute("DELETE FROM click_rollups WHERE campaign_id = $1", campaign_id)
    await pool.execute(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks,"
        " bot_clicks, cost)"
        " SELECT (created_at AT TIME ZONE 'UTC')::date, campaign_id, offer_id, traffic_source_id,"
        " count(*) FILTER (WHERE NOT is_bot), count(*) FILTER (WHERE is_bot),"
        " coalesce(sum(cost), 0)"
        " FROM clicks WHERE campaign_id = $1 GROUP BY 1, 2, 3, 4",
        campaign_id,
    )
    await rebuild_rollups(pool)


async def click_costs(pool) -> dict[str, Decimal | None]:
    rows = await pool.fetch("SELECT click_id, cost FROM clicks ORDER BY created_at, click_id")
    return {r["click_id"]: r["cost"] for r in rows}


async def rollup_costs(pool) -> dict[tuple[date, int], Decimal]:
    rows = await pool.fetch("SELECT day, offer_id, cost FROM click_rollups ORDER BY 1, 2")
    return {(r["day"], r["offer_id"]): r["cost"] for r in rows}


async def report_cost(api, start: str, end: str, group_by: str = "campaign") -> dict:
    return await api.call("GET", f"/api/reports?from={start}&to={end}&group_by={group_by}")


def body(campaign_id: int, start: datetime, end: datetime, cost: str, **filters) -> dict:
    out = {
        "campaign_id": campaign_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "cost": cost,
    }
    if filters:
        out["filter"] = filters
    return out


async def test_ten_over_three_clicks_through_the_click_path(client, api, pool, sink):
    setup = await api.setup_campaign(cost_model="cpc", cost_value="0.50")
    for _ in range(3):
        await make_click(client, setup["campaign"])
    await wait_for_sink(sink)
    now = datetime.now(UTC)
    campaign_id = setup["campaign"]["id"]
    result = await api.call(
        "POST",
        "/api/costs",
        expect=201,
        json={
            "campaign_id": campaign_id,
            "from": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "to": (now + timedelta(hours=1)).isoformat(),
            "cost": "10.00",
        },
    )
    assert result["cost"] == "10.00" and result["clicks"] == 3 and result["filter"] == {}
    assert result["campaign_id"] == campaign_id and result["cost_update_id"] == 1
    # The remainder micro-unit goes to the earliest click.
    assert list((await click_costs(pool)).values()) == [
        Decimal("3.333334"),
        Decimal("3.333333"),
        Decimal("3.333333"),
    ]
    today = now.date().isoformat()
    totals = (await report_cost(api, today, today))["totals"]
    assert (totals["clicks"], totals["cost"], totals["cpc"]) == (3, "10.00", "3.3333")
    update = await pool.fetchrow("SELECT * FROM cost_updates")
    assert (update["campaign_id"], update["cost"], update["clicks"]) == (
        campaign_id,
        Decimal("10"),
        3,
    )


async def test_a_cent_over_seven_clicks(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": f"k{i}", "at": at(i)} for i in range(7)])
    result = await api.call(
        "POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(24), "0.01")
    )
    assert result["clicks"] == 7
    # 10000 micro-units: 1428 each, and the 4 left over to the 4 earliest clicks.
    costs = list((await click_costs(pool)).values())
    assert costs == [Decimal("0.001429")] * 4 + [Decimal("0.001428")] * 3
    assert sum(costs) == Decimal("0.01")
    report = await report_cost(api, "2026-03-01", "2026-03-01")
    assert report["totals"]["cost"] == "0.01"


async def test_equal_times_are_ordered_by_click_id(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": i, "at": at(1)} for i in ("c", "a", "b")])
    await api.call(
        "POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(2), "0.000002")
    )
    assert await click_costs(pool) == {
        "a": Decimal("0.000001"),
        "b": Decimal("0.000001"),
        "c": Decimal("0"),
    }


async def test_filter_by_sub1_and_by_country(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    clicks = [
        {"id": "a", "at": at(1), "sub1": "x", "country": "DE", "cost": Decimal("0.10")},
        {"id": "b", "at": at(2), "sub1": "x", "country": "FR", "cost": Decimal("0.10")},
        {"id": "c", "at": at(3), "sub1": "X", "country": "DE", "cost": Decimal("0.10")},
        {"id": "d", "at": at(4), "sub1": None, "country": "de", "cost": None},
    ]
    await insert_clicks(pool, campaign_id, clicks)
    # Sub ids are compared exactly: "X" is another placement.
    by_sub = await api.call(
        "POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(24), "1", sub1="x")
    )
    assert (by_sub["clicks"], by_sub["filter"]) == (2, {"sub1": "x"})
    assert await click_costs(pool) == {
        "a": Decimal("0.5"),
        "b": Decimal("0.5"),
        "c": Decimal("0.10"),
        "d": None,
    }
    # Visitor facts are compared without regard to case.
    by_country = await api.call(
        "POST",
        "/api/costs",
        expect=201,
        json=body(campaign_id, at(0), at(24), "0.90", country="De"),
    )
    assert by_country["clicks"] == 3
    assert await click_costs(pool) == {
        "a": Decimal("0.3"),
        "b": Decimal("0.5"),
        "c": Decimal("0.3"),
        "d": Decimal("0.3"),
    }
    both = await api.call(
        "POST",
        "/api/costs",
        expect=201,
        json=body(campaign_id, at(0), at(24), "2", sub1="x", country="DE"),
    )
    assert both["clicks"] == 1 and (await click_costs(pool))["a"] == Decimal("2")
    assert (await report_cost(api, "2026-03-01", "2026-03-01"))["totals"]["cost"] == "3.10"
    await api.call(
        "POST", "/api/costs", expect=400, json=body(campaign_id, at(0), at(24), "1", country="IT")
    )


async def test_filter_by_offer(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(
        pool,
        campaign_id,
        [{"id": "a", "at": at(1), "offer_id": 1}, {"id": "b", "at": at(1), "offer_id": 2}],
    )
    await api.call(
        "POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(2), "1", offer_id=2)
    )
    assert await click_costs(pool) == {"a": None, "b": Decimal("1")}
    assert await rollup_costs(pool) == {
        (date(2026, 3, 1), 1): Decimal("0"),
        (date(2026, 3, 1), 2): Decimal("1"),
    }


async def test_a_second_update_of_the_slice_replaces_the_first(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": f"k{i}", "at": at(i)} for i in range(3)])
    for cost in ("10", "4.5"):
        await api.call(
            "POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(24), cost)
        )
    assert list((await click_costs(pool)).values()) == [Decimal("1.5")] * 3
    assert (await report_cost(api, "2026-03-01", "2026-03-01"))["totals"]["cost"] == "4.50"
    assert await pool.fetchval("SELECT count(*) FROM cost_updates") == 2


async def test_an_update_over_part_of_a_day_moves_only_that_part(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    half = Decimal("0.50")
    clicks = [
        {"id": "a", "at": at(10), "cost": half},
        {"id": "b", "at": at(14), "cost": half, "bot": True},  # paid for, counted apart
        {"id": "c", "at": at(20), "cost": half},
        {"id": "d", "at": at(27), "cost": half},
        {"id": "e", "at": at(30), "cost": half},  # the range's end is excluded
        {"id": "f", "at": at(33), "cost": half},
    ]
    await insert_clicks(pool, campaign_id, clicks)
    # 14:00 on day 1 up to 06:00 on day 2, written with an offset: 12:00 to 06:00 UTC.
    start = datetime.fromisoformat("2026-03-01T14:00:00+02:00")
    result = await api.call(
        "POST", "/api/costs", expect=201, json=body(campaign_id, start, at(30), "3.00")
    )
    assert result["clicks"] == 3 and result["from"] == "2026-03-01T12:00:00+00:00"
    assert await rollup_costs(pool) == {
        (date(2026, 3, 1), 1): Decimal("2.50"),  # a kept 0.50; b and c cost 1 each now
        (date(2026, 3, 2), 1): Decimal("2.00"),  # d costs 1; e and f kept 0.50
    }
    report = await report_cost(api, "2026-03-01", "2026-03-02", "day")
    assert [(r["day"], r["clicks"], r["bots"], r["cost"]) for r in report["rows"]] == [
        ("2026-03-01", 2, 1, "2.50"),
        ("2026-03-02", 3, 0, "2.00"),
    ]
    assert report["totals"]["cost"] == "4.50"


async def test_overlapping_updates_at_once_lose_no_money(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(
        pool, campaign_id, [{"id": f"k{i:03}", "at": at(i * 0.25)} for i in range(200)]
    )
    windows = [(0, 30), (10, 40), (20, 50), (5, 45)] * 3
    await asyncio.gather(
        *(
            api.call(
                "POST",
                "/api/costs",
                expect=201,
                json=body(campaign_id, at(a), at(b), f"{n + 1}.000001"),
            )
            for n, (a, b) in enumerate(windows)
        )
    )
    per_day = await pool.fetch(
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, sum(cost) AS cost FROM clicks"
        " GROUP BY 1 ORDER BY 1"
    )
    assert {r["day"]: r["cost"] for r in per_day} == {
        day: cost for (day, _), cost in (await rollup_costs(pool)).items()
    }
    # The update that committed last owns its whole slice, to the micro-unit.
    last = await pool.fetchrow("SELECT * FROM cost_updates ORDER BY id DESC LIMIT 1")
    in_last = await pool.fetchval(
        "SELECT sum(cost) FROM clicks WHERE created_at >= $1 AND created_at < $2",
        last["starts_at"],
        last["ends_at"],
    )
    assert in_last == last["cost"]


async def test_an_archived_campaign_takes_a_cost(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": "a", "at": at(1)}])
    await api.call("DELETE", f"/api/campaigns/{campaign_id}")
    await api.call("POST", "/api/costs", expect=201, json=body(campaign_id, at(0), at(2), "1"))


GOOD = {"campaign_id": 1, "from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"campaign_id": None}, "campaign_id"),
        ({"campaign_id": "1"}, "campaign_id"),
        ({"campaign_id": 0}, "campaign_id"),
        ({"campaign_id": 2**63}, "campaign_id"),
        ({"campaign_id": 99}, "campaign_id"),  # no such campaign
        ({"from": None}, "from"),
        ({"from": "2026-03-01T00:00:00"}, "from"),  # no offset
        ({"from": "2026-03-01"}, "from"),
        ({"from": 1772323200}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"from": "0001-01-01T00:00:00+05:00"}, "from"),  # before year 1 in UTC
        ({"to": "9999-12-31T23:00:00-05:00"}, "to"),
        ({"to": "2026-03-01T00:00:00Z"}, "body"),  # empty range
        ({"to": "2026-02-28T00:00:00Z"}, "body"),
        ({"to": "2027-03-03T00:00:00Z"}, "body"),  # more than 366 days
        ({"cost": None}, "cost"),
        ({"cost": "-1"}, "cost"),
        ({"cost": "0.0000001"}, "cost"),
        ({"cost": 1.5}, "cost"),
        ({"cost": "1e3"}, "cost"),
        ({"cost": "1000000000000"}, "cost"),
        ({"filter": {"bogus": "x"}}, "filter.bogus"),
        ({"filter": {"sub11": "x"}}, "filter.sub11"),
        ({"filter": {"sub1": None}}, "filter"),
        ({"filter": {"sub1": ""}}, "filter.sub1"),
        ({"filter": {"sub1": 5}}, "filter.sub1"),
        ({"filter": {"offer_id": "2"}}, "filter.offer_id"),
        ({"filter": ["sub1"]}, "filter"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_bodies_are_refused(api, pool, changes, field):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": "a", "at": at(1)}])
    request = {**GOOD, "cost": "1"}
    for name, value in changes.items():
        if value is None:
            request.pop(name)
        else:
            request[name] = value
    answer = await api.call("POST", "/api/costs", expect=400, json=request)
    assert field in [d["field"] for d in answer["details"]], answer
    assert await pool.fetchval("SELECT count(*) FROM cost_updates") == 0
    assert (await click_costs(pool))["a"] is None


async def test_a_slice_without_clicks_is_refused(api, pool):
    campaign_id = (await api.setup_campaign())["campaign"]["id"]
    await insert_clicks(pool, campaign_id, [{"id": "a", "at": at(1)}])
    answer = await api.call(
        "POST", "/api/costs", expect=400, json=body(campaign_id, at(1.5), at(24), "1")
    )
    assert "no stored clicks" in answer["error"]
    # The end is excluded: a click exactly at `to` is not in the slice.
    await api.call("POST", "/api/costs", expect=400, json=body(campaign_id, at(0), at(1), "1"))
    assert await pool.fetchval("SELECT count(*) FROM cost_updates") == 0


async def test_not_json_and_no_key(client, api):
    for data in (b"", b"[]", b"{", b'{"a": 1, "a": 2}'):
        await api.call("POST", "/api/costs", expect=400, data=data)
    resp = await client.post("/api/costs", json={**GOOD, "cost": "1"})
    assert resp.status == 401


def test_every_filter_key_has_a_column():
    assert set(CostFilter.model_fields) == set(FILTER_COLUMNS)
