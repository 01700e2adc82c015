"""Refund identity: a retried refund counts once, two genuine refunds twice, never more
than was paid; status updates keep payout and currency together."""

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

from tests.test_lifecycle import prepared, report_totals


async def refunds(pool):
    rows = await pool.fetch("SELECT refund_key, refund FROM conversion_history WHERE refund > 0")
    return sorted((r["refund_key"], r["refund"]) for r in rows)


async def test_equal_amounts_spelled_differently_are_one_refund(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o1", payout="100") == "created"
    assert await send(txid="o1", status="chargeback", payout="5") == "updated"
    assert await send(txid="o1", status="chargeback", payout="5.0") == "duplicate"
    assert await send(txid="o1", status="chargeback", payout="5.00") == "duplicate"
    assert await send(txid="o1", status="refund", amount="5.000") == "duplicate"
    assert await pool.fetchval("SELECT refunded FROM conversions") == Decimal("5")
    assert (await report_totals(api))["revenue"] == "95.00"


async def test_refund_ids_make_equal_amounts_distinct(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o1", payout="100") == "created"
    assert await send(txid="o1", status="chargeback", payout="5", refund_id="r1") == "updated"
    assert await send(txid="o1", status="chargeback", payout="5.0", refund_id="r2") == "updated"
    assert await send(txid="o1", status="chargeback", payout="5", refund_id="r1") == "duplicate"
    # An alias, and the same id sent as a refund by parent txid: still r2.
    assert await send(txid="o1", status="chargeback", payout="5", refundid="r2") == "duplicate"
    assert await send(txid="x", parent_txid="o1", payout="-5", refund_id="r2") == "duplicate"
    assert await refunds(pool) == [("id:r1", Decimal("5")), ("id:r2", Decimal("5"))]
    assert (await report_totals(api))["revenue"] == "90.00"


async def test_parent_txid_refunds_keyed_on_their_own_txid(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o1", payout="100") == "created"
    assert await send(txid="r1", parent_txid="o1", payout="-5") == "updated"
    assert await send(txid="r1", parent_txid="o1", payout="-5.00") == "duplicate"
    assert await send(txid="r2", parent_txid="o1", payout="-5") == "updated"
    # Without a txid of its own: the normalised amount on the parent's txid.
    assert await send(parent_txid="o1", payout="-7.5") == "updated"
    assert await send(parent_txid="o1", payout="-7.50") == "duplicate"
    assert await refunds(pool) == [
        ("amount:USD:7.5:o1", Decimal("7.5")),
        ("txid:r1", Decimal("5")),
        ("txid:r2", Decimal("5")),
    ]


async def test_refunds_never_exceed_the_payout(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o1", payout="100") == "created"
    results = await asyncio.gather(
        *(send(txid="o1", status="chargeback", payout="30", refund_id=f"r{i}") for i in range(10))
    )
    row = await pool.fetchrow("SELECT status, payout, refunded FROM conversions")
    # Three partial refunds of 30; the fourth takes what is left: a full chargeback.
    assert (row["status"], row["refunded"]) == ("chargeback", Decimal("90"))
    assert row["refunded"] <= row["payout"]
    assert results.count("updated") == 4
    assert (await report_totals(api))["revenue"] == "0.00"


async def set_rate(api, currency, rate):
    await api.call(
        "POST",
        "/api/currency-rates",
        expect=201,
        json={"currency": currency, "rate": rate, "valid_from": "2020-01-01"},
    )


async def conversion(pool):
    return tuple(
        await pool.fetchrow(
            "SELECT status, payout, currency, original_payout, original_currency FROM conversions"
        )
    )


async def test_status_update_with_payout_changes_all_three(client, api, pool):
    _, _, send = await prepared(client, api)
    await set_rate(api, "EUR", "1.25")
    assert await send(txid="o", status="lead", payout="4", currency="EUR") == "created"
    assert await conversion(pool) == ("lead", Decimal("5"), "USD", Decimal("4"), "EUR")
    # No payout: all three kept.
    assert await send(txid="o", status="pending") == "updated"
    assert await conversion(pool) == ("pending", Decimal("5"), "USD", Decimal("4"), "EUR")
    # A payout without a currency is in the offer's currency.
    assert await send(txid="o", status="approved", payout="8") == "updated"
    assert await conversion(pool) == ("approved", Decimal("8"), "USD", Decimal("8"), "USD")
    history = await pool.fetch("SELECT payout FROM conversion_history ORDER BY id")
    assert [h["payout"] for h in history] == [Decimal("5"), Decimal("5"), Decimal("8")]


async def test_status_update_with_payout_in_another_currency(client, api, pool):
    _, _, send = await prepared(client, api)
    await set_rate(api, "EUR", "1.25")
    assert await send(txid="o", status="pending", payout="3") == "created"
    assert await send(txid="o", status="approved", payout="8", currency="EUR") == "updated"
    assert await conversion(pool) == ("approved", Decimal("10"), "USD", Decimal("8"), "EUR")
    assert (await report_totals(api))["revenue"] == "10.00"


async def test_status_update_without_a_rate_waits_for_one(client, api, pool):
    _, _, send = await prepared(client, api)
    assert await send(txid="o", status="pending", payout="3") == "created"
    assert await send(txid="o", status="approved", payout="8", currency="GBP") == "updated"
    # Not the stale 3 USD: unconverted until a GBP rate exists.
    assert await conversion(pool) == ("approved", None, "USD", Decimal("8"), "GBP")
    totals = await report_totals(api)
    assert (totals["revenue"], totals["unconverted"]) == ("0.00", 1)
    today = datetime.now(UTC).date().isoformat()
    body = await api.call(
        "POST",
        "/api/currency-rates",
        expect=201,
        json={"currency": "GBP", "rate": "1.5", "valid_from": today},
    )
    assert body["converted"] == 1
    assert await conversion(pool) == ("approved", Decimal("12"), "USD", Decimal("8"), "GBP")


async def test_partial_refund_in_a_currency_without_a_rate(client, api, pool):
    _, _, send = await prepared(client, api)
    await set_rate(api, "EUR", "1.25")
    assert await send(txid="o", payout="40", currency="EUR") == "created"
    await pool.execute("DELETE FROM currency_rates")
    await api.call("PATCH", "/api/traffic-sources/1", json={"name": "reload"})
    # The rate is gone: a quarter of the original is a quarter of the converted payout.
    assert await send(txid="o", status="chargeback", payout="10", currency="EUR") == "updated"
    row = await pool.fetchrow("SELECT status, refunded FROM conversions")
    assert (row["status"], row["refunded"]) == ("approved", Decimal("12.5"))
