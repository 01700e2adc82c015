"""Every cost model in a report: click costs from the rollups, cpa and revshare booked from
approved conversions, exact to the last decimal place."""

from datetime import UTC, date, datetime
from decimal import Decimal, localcontext

from tests.conftest import wait_for_sink
from tests.test_postback import make_click
from tests.test_reports import mirror_click_rollups
from tracker.store.partitions import ensure_partitions
from tracker.web.appkeys import CONFIG


async def set_cost_model(pool, campaign_id: int, model: str, value: str) -> None:
    """cpm, cpa and revshare straight in the table, which has allowed them since 0009;
    the same as a PATCH through the API once its schema accepts them."""
    await pool.execute(
        "UPDATE campaigns SET cost_model = $2, cost_value = $3 WHERE id = $1",
        campaign_id,
        model,
        Decimal(value),
    )


def converter(client, setup):
    async def convert(click_id: str, **params: str) -> str:
        token = setup["network"]["postback_token"]
        resp = await client.get("/postback", params={"clickid": click_id, "token": token, **params})
        body = await resp.json()
        assert resp.status == 200, body
        return body["result"]

    return convert


async def test_every_cost_model_in_one_report(client, api, pool, sink):
    none = await api.setup_campaign(payout="3.00")
    cpc = await api.setup_campaign(cost_model="cpc", cost_value="0.35")
    auto = await api.setup_campaign(cost_model="auto")
    cpm = await api.setup_campaign()
    cpa = await api.setup_campaign(payout="10.00")
    revshare = await api.setup_campaign(payout="10.00")
    await set_cost_model(pool, cpm["campaign"]["id"], "cpm", "2.50")
    await set_cost_model(pool, cpa["campaign"]["id"], "cpa", "2.50")
    await set_cost_model(pool, revshare["campaign"]["id"], "revshare", "33.333333")
    await client.app[CONFIG].changed()

    none_click = await make_click(client, none["campaign"])
    await make_click(client, none["campaign"])
    await converter(client, none)(none_click, txid="n1")
    for _ in range(3):
        await make_click(client, cpc["campaign"])
    for reported in ("0.125", "0.2", "abc"):  # a malformed cost is no cost
        await make_click(client, auto["campaign"], cost=reported)
    for _ in range(4):
        await make_click(client, cpm["campaign"])

    convert = converter(client, cpa)
    cpa_click = await make_click(client, cpa["campaign"])
    assert await convert(cpa_click, txid="a") == "created"
    assert await convert(cpa_click, txid="b") == "created"
    assert await convert(cpa_click, txid="b", status="chargeback", payout="4") == "updated"
    assert await convert(cpa_click, txid="c") == "created"
    assert await convert(cpa_click, txid="c", status="chargeback", payout="10") == "updated"
    assert await convert(cpa_click, txid="d", status="rejected") == "created"
    assert await convert(cpa_click, txid="e", status="pending") == "created"

    convert = converter(client, revshare)
    rev_click = await make_click(client, revshare["campaign"])
    assert await convert(rev_click, txid="a") == "created"
    assert await convert(rev_click, txid="b", payout="1.2345") == "created"
    assert await convert(rev_click, txid="b", status="chargeback", payout="0.5") == "updated"
    assert await convert(rev_click, txid="c") == "created"
    assert await convert(rev_click, txid="c", status="chargeback", payout="10") == "updated"
    assert await convert(rev_click, txid="d", status="rejected", payout="7") == "created"
    await wait_for_sink(sink)

    today = datetime.now(UTC).date().isoformat()
    report = await api.call("GET", f"/api/reports?from={today}&to={today}")
    rows = {
        r["campaign_id"]: (r["clicks"], r["conversions"], r["revenue"], r["cost"])
        for r in report["rows"]
    }
    # Revshare: 33.333333 % of what was kept, 10 + (1.2345 - 0.5), to the last place.
    with localcontext(prec=50):
        rev_cost = Decimal("33.333333") * Decimal("0.01") * Decimal("10.7345")
    assert rev_cost == Decimal("3.578166630885")
    expected = {
        none["campaign"]["id"]: (2, 1, "3.00", "0.00"),
        cpc["campaign"]["id"]: (3, 0, "0.00", "1.05"),
        auto["campaign"]["id"]: (3, 0, "0.00", "0.325"),
        # cpa: two conversions are still approved (one partly refunded); 2 x 2.50.
        cpa["campaign"]["id"]: (1, 2, "16.00", "5.00"),
        revshare["campaign"]["id"]: (1, 2, "10.7345", "3.578166630885"),
    }
    cpm_id = cpm["campaign"]["id"]
    for campaign_id, row in expected.items():
        assert rows[campaign_id] == row, campaign_id
    totals = report["totals"]
    cpm_click_costs = await pool.fetch(
        "SELECT cost FROM clicks WHERE campaign_id = $1", cpm["campaign"]["id"]
    )
    assert [row["cost"] for row in cpm_click_costs] == [Decimal("0.0025")] * 4
    assert rows[cpm_id] == (4, 0, "0.00", "0.01")
    assert totals["cost"] == "9.963166630885"  # 1.05 + 0.325 + 0.01 + 5 + 3.578166630885
    assert (totals["clicks"], totals["conversions"], totals["revenue"]) == (14, 5, "29.7345")


async def test_booked_costs_fall_on_the_conversion_day_offer_and_source(api, pool):
    setup = await api.setup_campaign()
    campaign_id = setup["campaign"]["id"]
    await set_cost_model(pool, campaign_id, "cpa", "1.25")
    await pool.execute(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks, cost)"
        " VALUES ('2026-03-01', $1, 7, 100, 5, 0.5)",
        campaign_id,
    )
    await mirror_click_rollups(pool)
    conversions = [
        ("k1", 7, datetime(2026, 3, 1, 23, 0, tzinfo=UTC), "approved"),
        ("k2", 7, datetime(2026, 3, 2, 1, 0, tzinfo=UTC), "approved"),
        ("k3", 8, datetime(2026, 3, 2, 2, 0, tzinfo=UTC), "approved"),
        ("k4", 8, datetime(2026, 3, 2, 3, 0, tzinfo=UTC), "lead"),
    ]
    await ensure_partitions(pool, "conversions", [datetime(2026, 3, 1, tzinfo=UTC)])
    await pool.executemany(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, created_at, payout, currency, original_payout, original_currency, status,"
        " params) VALUES ($1, '', $2, $3, 100, '2026-03-01', $4, 2, 'USD', 2, 'USD', $5, '{}')",
        [(k, campaign_id, offer, at, status) for k, offer, at, status in conversions],
    )
    by_arrival = "&conversion_time=postback"
    report = await api.call(
        "GET",
        "/api/reports?from=2026-03-01&to=2026-03-02&group_by=day,offer,traffic_source" + by_arrival,
    )
    rows = [(r["day"], r["offer_id"], r["clicks"], r["cost"]) for r in report["rows"]]
    assert rows == [
        ("2026-03-01", 7, 5, "1.75"),  # 0.50 of clicks + one conversion
        ("2026-03-02", 7, 0, "1.25"),
        ("2026-03-02", 8, 0, "1.25"),
    ]
    assert report["totals"]["cost"] == "4.25" and report["totals"]["cpa"] == "1.4167"
    # Outside the range, nothing is booked.
    late = await api.call("GET", "/api/reports?from=2026-03-02&to=2026-03-02" + by_arrival)
    assert late["totals"]["cost"] == "2.50"
    # Dated by their clicks (the default), all three fall on the clicks' day.
    report = await api.call("GET", "/api/reports?from=2026-03-01&to=2026-03-02&group_by=day,offer")
    rows = [(r["day"], r["offer_id"], r["clicks"], r["cost"]) for r in report["rows"]]
    assert rows == [("2026-03-01", 7, 5, "3.00"), ("2026-03-01", 8, 0, "1.25")]


async def test_a_payout_awaiting_its_rate_books_no_revshare_yet(api, pool):
    setup = await api.setup_campaign()
    campaign_id = setup["campaign"]["id"]
    await set_cost_model(pool, campaign_id, "revshare", "50")
    await ensure_partitions(pool, "conversions", [datetime(2026, 3, 1, tzinfo=UTC)])
    await pool.executemany(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, created_at, payout, currency, original_payout, original_currency, status,"
        " params) VALUES ($1, '', $2, 1, 1, '2026-03-01', '2026-03-01', $3, 'USD', 9, 'XYZ',"
        " 'approved', '{}')",
        [("k1", campaign_id, Decimal("3")), ("k2", campaign_id, None)],
    )
    totals = (await api.call("GET", "/api/reports?from=2026-03-01&to=2026-03-01"))["totals"]
    assert (totals["conversions"], totals["unconverted"], totals["cost"]) == (2, 1, "1.50")


async def test_sums_beyond_28_digits_stay_exact(api, pool):
    rows = [
        (date(2026, 3, 1), 1, Decimal("123456789012.12345678901234")),
        (date(2026, 3, 2), 1, Decimal("987654321098.00000000000001")),
    ]
    await pool.executemany(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks, cost)"
        " VALUES ($1, $2, 1, 1, 1, $3)",
        rows,
    )
    await mirror_click_rollups(pool)
    report = await api.call("GET", "/api/reports?from=2026-03-01&to=2026-03-02&group_by=day")
    assert report["totals"]["cost"] == "1111111110110.12345678901235"
    assert report["totals"]["profit"] == "-1111111110110.12345678901235"
