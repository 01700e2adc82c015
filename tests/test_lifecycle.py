"""Status changes, duplicate policies, refunds and currencies, as networks send them."""

import asyncio
import itertools
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.test_postback import make_click
from tracker.domain.lifecycle import ALLOWED, STATUSES, refund_key


async def prepared(client, api, network: dict | None = None, **campaign_changes):
    setup = await api.setup_campaign(payout="10.00")
    if network:
        await api.call("PATCH", f"/api/affiliate-networks/{setup['network']['id']}", json=network)
    if campaign_changes:
        await api.call("PATCH", f"/api/campaigns/{setup['campaign']['id']}", json=campaign_changes)
    click_id = await make_click(client, setup["campaign"])
    token = setup["network"]["postback_token"]

    async def send(expect=200, **params):
        resp = await client.get("/postback", params={"clickid": click_id, "token": token, **params})
        body = await resp.json()
        assert resp.status == expect, body
        return body.get("result")

    return setup, click_id, send


async def report_totals(api):
    today = datetime.now(UTC).date().isoformat()
    return (await api.call("GET", f"/api/reports?from={today}&to={today}"))["totals"]


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("incoming", STATUSES)
async def test_each_transition(client, api, pool, current, incoming):
    _, _, send = await prepared(client, api)
    assert await send(status=current, txid="t") == "created"
    expected = "updated" if incoming in ALLOWED[current] else "duplicate"
    assert await send(status=incoming, txid="t") == expected
    final = incoming if expected == "updated" else current
    assert await pool.fetchval("SELECT status FROM conversions") == final
    history = await pool.fetch("SELECT old_status, new_status FROM conversion_history ORDER BY id")
    steps = [(None, current)] + ([(current, incoming)] if expected == "updated" else [])
    assert [(h["old_status"], h["new_status"]) for h in history] == steps


async def test_network_status_map_and_refund_synonym(client, api, pool):
    network = {
        "status_map": {"1": "approved", "2": "rejected", "Confirmed": "approved", "0": "lead"}
    }
    _, _, send = await prepared(client, api, network)
    assert await send(status="0", txid="a") == "created"
    assert await pool.fetchval("SELECT status FROM conversions") == "lead"
    assert await send(status="CONFIRMED", txid="a") == "updated"
    assert await send(status="refund", txid="a") == "updated"
    assert await pool.fetchval("SELECT status FROM conversions") == "chargeback"
    body = await send(expect=400, status="weird", txid="a")
    assert body == "invalid"


async def test_report_counts_only_approved_revenue(client, api, pool):
    setup = await api.setup_campaign(payout="10.00")
    token = setup["network"]["postback_token"]
    statuses = ["approved", "approved", "lead", "pending", "rejected", "chargeback"]
    for status in statuses:
        click_id = await make_click(client, setup["campaign"])
        resp = await client.get(
            "/postback", params={"clickid": click_id, "status": status, "token": token}
        )
        assert resp.status == 200
    totals = await report_totals(api)
    assert (totals["conversions"], totals["revenue"]) == (2, "20.00")
    assert (totals["leads"], totals["pending"]) == (1, 1)


async def test_duplicate_policies(client, api, pool):
    _, _, send = await prepared(client, api)  # txid (the default)
    assert [await send(txid=t) for t in ("a", "a", "b", "")] == [
        "created",
        "duplicate",
        "created",
        "created",
    ]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 3

    await pool.execute("TRUNCATE conversions, conversion_history CASCADE")
    _, _, send = await prepared(client, api, {"duplicate_policy": "ignore"})
    assert [await send(txid=t) for t in ("a", "b", "")] == ["created", "duplicate", "duplicate"]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1

    await pool.execute("TRUNCATE conversions, conversion_history CASCADE")
    _, _, send = await prepared(client, api, {"duplicate_policy": "accept"})
    assert [await send(txid="a") for _ in range(3)] == ["created"] * 3
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 3


async def test_upsells_add_revenue_on_one_click(client, api, pool):
    _, _click_id, send = await prepared(client, api)
    assert await send(txid="order", payout="30") == "created"
    assert await send(txid="upsell", payout="12.5") == "created"
    totals = await report_totals(api)
    assert (totals["conversions"], totals["revenue"]) == (2, "42.50")


async def test_partial_refunds(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o1", payout="100.00") == "created"
    assert await send(txid="o1", status="chargeback", payout="30.25") == "updated"
    assert await send(txid="o1", status="chargeback", payout="30.25") == "duplicate"  # a retry
    assert await pool.fetchval("SELECT status FROM conversions") == "approved"
    assert (await report_totals(api))["revenue"] == "69.75"
    # A refund as a new txid with a negative payout, linked to its parent.
    assert await send(txid="r2", parent_txid="o1", payout="-9.7501") == "updated"
    assert await send(txid="r2", parent_txid="o1", payout="-9.7501") == "duplicate"
    assert (await report_totals(api))["revenue"] == "59.9999"
    assert await send(expect=404, txid="r3", parent_txid="nope", payout="-1") == "invalid"
    # Refunding what is left is a full chargeback.
    assert await send(txid="o1", status="chargeback") == "updated"
    totals = await report_totals(api)
    assert (totals["conversions"], totals["revenue"]) == (0, "0.00")
    refunds = await pool.fetch("SELECT refund FROM conversion_history WHERE refund > 0")
    assert sorted(r["refund"] for r in refunds) == [Decimal("9.7501"), Decimal("30.25")]


async def test_payout_precision(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="a", payout="1.2345") == "created"
    assert await send(expect=400, txid="b", payout="1.23456") == "invalid"


async def test_currency_conversion(client, api, pool):
    _, _, send = await prepared(client, api, report_currency="EUR")
    today = datetime.now(UTC).date().isoformat()
    await api.call(
        "POST",
        "/api/currency-rates",
        expect=201,
        json={"currency": "EUR", "rate": "1.25", "valid_from": "2020-01-01"},
    )
    assert await send(txid="a", payout="10.00", currency="USD") == "created"
    row = await pool.fetchrow("SELECT * FROM conversions")
    assert (row["original_payout"], row["original_currency"]) == (Decimal("10.00"), "USD")
    assert (row["payout"], row["currency"]) == (Decimal("8.000000"), "EUR")
    # No GBP rate yet: stored, counted as unconverted, converted once the rate arrives.
    assert await send(txid="b", payout="5.00", currency="GBP") == "created"
    assert (await report_totals(api))["unconverted"] == 1
    body = await api.call(
        "POST",
        "/api/currency-rates",
        expect=201,
        json={"currency": "GBP", "rate": "1.50", "valid_from": today},
    )
    assert body["converted"] == 1
    totals = await report_totals(api)
    assert (totals["revenue"], totals["unconverted"]) == ("14.00", 0)  # 8 + 5 * 1.5 / 1.25
    rates = await api.call("GET", "/api/currency-rates")
    assert [(r["currency"], r["rate"]) for r in rates["items"]] == [("EUR", "1.25"), ("GBP", "1.5")]


async def test_identical_postbacks_and_updates_at_once(client, api, pool):
    _, _click_id, send = await prepared(client, api)
    sends = [send(txid="x", status="lead", payout="5") for _ in range(100)]
    sends += [send(txid="x", status="approved", payout="7") for _ in range(100)]
    results = await asyncio.gather(*sends)
    assert results.count("created") == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    row = await pool.fetchrow("SELECT id, status, payout FROM conversions")
    assert row["status"] == "approved"
    assert row["payout"] == Decimal("7")
    history = await pool.fetch(
        "SELECT old_status, new_status FROM conversion_history "
        "WHERE conversion_id = $1 ORDER BY id",
        row["id"],
    )
    assert history[0]["old_status"] is None
    for before, after in itertools.pairwise(history):
        assert after["old_status"] == before["new_status"]  # no gaps
    assert history[-1]["new_status"] == "approved"
    assert results.count("updated") == len(history) - 1


async def test_postback_log_lists_every_result(client, api, pool):
    setup, click_id, send = await prepared(client, api)
    await send(txid="a")
    await send(txid="a")
    await client.get("/postback", params={"clickid": "missing"})
    await client.get("/postback", params={"clickid": click_id, "token": "bad"})
    await client.get("/postback", params={"clickid": click_id, "payout": "x"})
    log = await api.call("GET", "/api/postbacks")
    results = [item["result"] for item in log["items"]]
    assert results == ["invalid", "rejected-auth", "unmatched", "duplicate", "created"]
    assert log["items"][1]["reason"] == "forbidden: wrong token"
    assert log["items"][1]["params"]["token"] == "***"
    network_id = setup["network"]["id"]
    only = await api.call("GET", f"/api/postbacks?network_id={network_id}&result=created")
    assert [item["result"] for item in only["items"]] == ["created"]
    await api.call("GET", "/api/postbacks?result=created&limit=0", expect=400)


@pytest.mark.parametrize(
    ("params", "own_txid", "amount", "txid", "key"),
    [
        ({}, None, Decimal("5"), "o1", "amount:USD:5:o1"),
        ({}, None, Decimal("5.0"), "o1", "amount:USD:5:o1"),
        ({}, None, Decimal("-5.00"), "o1", "amount:USD:5:o1"),
        ({}, None, Decimal("500"), "o1", "amount:USD:500:o1"),
        ({}, None, Decimal("0.50"), "o1", "amount:USD:0.5:o1"),
        ({}, "r9", Decimal("5"), "o1", "txid:r9"),
        ({"refund_id": " a1 "}, "r9", Decimal("5"), "o1", "id:a1"),
        ({"refundid": "a2"}, None, Decimal("5"), "o1", "id:a2"),
        ({"refund_txid": "a3"}, None, Decimal("5"), "o1", "id:a3"),
        ({"chargeback_id": "a4"}, None, Decimal("5"), "o1", "id:a4"),
        ({"refund_id": ""}, None, Decimal("5"), "o1", "amount:USD:5:o1"),
    ],
)
def test_refund_key(params, own_txid, amount, txid, key):
    assert refund_key(params, own_txid, amount, "USD", txid) == key
