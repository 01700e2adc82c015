"""Postback URLs in the dialects of the trackers media buyers move from."""

from decimal import Decimal

import pytest

from tests.test_postback import make_click


@pytest.mark.parametrize(
    ("style", "query"),
    [
        ("voluum", "cid={c}&payout=2.10&txid=v1&et=sale"),
        ("binom", "cnv_id={c}&payout=2.10&cnv_status=approved&cnv_currency=USD&txid=b1"),
        ("keitaro", "subid={c}&payout=2.10&status=sale&tid=k1"),
        ("redtrack", "click_id={c}&sum=2.10&type=deposit&transaction_id=r1"),
        ("bemob", "cid={c}&payout=2.10&txid=m1"),
        ("prosper202", "subid={c}&amount=2.10"),
        ("funnelflux", "hit={c}&revenue=2.10&order_id=f1"),
        ("plain sid/rev/tx", "sid={c}&rev=2.10&tx=p1&ct=lead2"),
    ],
)
async def test_each_dialect_converts(client, api, pool, style, query):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    token = setup["network"]["postback_token"]
    resp = await client.get(f"/postback?{query.format(c=click_id)}&token={token}")
    assert resp.status == 200, (style, await resp.text())
    assert (await resp.json())["result"] == "created"
    row = await pool.fetchrow("SELECT click_id, payout, status FROM conversions")
    assert (row["click_id"], row["payout"], row["status"]) == (
        click_id,
        Decimal("2.10"),
        "approved",
    )


async def test_event_aliases_are_kept(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    token = setup["network"]["postback_token"]
    resp = await client.get(f"/postback?click_id={click_id}&type=deposit&token={token}")
    assert resp.status == 200
    assert await pool.fetchval("SELECT event FROM conversions") == "deposit"


async def test_conflicting_aliases_are_refused(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    token = setup["network"]["postback_token"]
    resp = await client.get(f"/postback?clickid={click_id}&cid=other&token={token}")
    assert resp.status == 400
    body = await resp.json()
    assert "clickid" in body["error"] and "cid" in body["error"]
    assert {d["field"] for d in body["details"]} == {"clickid", "cid"}
    # The same value under two names is no conflict.
    resp = await client.get(f"/postback?clickid={click_id}&cid={click_id}&token={token}")
    assert resp.status == 200
    resp = await client.get(f"/postback?clickid={click_id}&payout=1&amount=2&token={token}")
    assert resp.status == 400
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


async def test_network_returns_a_copy_ready_url(api):
    network = await api.create("/api/affiliate-networks", {"name": "N"})
    got = await api.call("GET", f"/api/affiliate-networks/{network['id']}")
    assert got["postback_url"].startswith("http://tracker.test/postback?clickid={clickid}")
    assert got["postback_url"].endswith(f"token={network['postback_token']}")
