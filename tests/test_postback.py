"""Postbacks: matching, idempotency, tokens, fallback to Postgres, bad input."""

import asyncio
from decimal import Decimal
from urllib.parse import urlsplit

from tests.conftest import wait_for_sink
from tracker.store import keys


async def make_click(client, campaign, **params):
    resp = await client.get(
        urlsplit(campaign["click_url"]).path, params=params, allow_redirects=False
    )
    assert resp.status == 302
    return resp.headers["Location"].split("cid=")[1]


async def test_conversion_is_joined_with_click(client, api, pool):
    setup = await api.setup_campaign(payout="3.00")
    click_id = await make_click(client, setup["campaign"], external_id="e1", sub3="s3")
    resp = await client.post(
        "/postback",
        data={
            "clickid": click_id,
            "payout": "1.2345",
            "currency": "eur",
            "txid": "T-1",
            "status": "Approved",
            "event": "sale",
            "token": setup["network"]["postback_token"],
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["result"] == "created"
    row = await pool.fetchrow("SELECT * FROM conversions WHERE id = $1", body["conversion_id"])
    assert row["click_id"] == click_id
    assert row["campaign_id"] == setup["campaign"]["id"]
    assert row["offer_id"] == setup["offer"]["id"]
    assert row["traffic_source_id"] == setup["source"]["id"]
    assert (row["external_id"], row["sub3"]) == ("e1", "s3")
    # No EUR rate is set: the original amount is kept, the report amount waits for a rate.
    assert (row["original_payout"], row["original_currency"]) == (Decimal("1.2345"), "EUR")
    assert row["payout"] is None
    assert (row["currency"], row["status"], row["txid"], row["event"]) == (
        "USD",
        "approved",
        "T-1",
        "sale",
    )
    assert row["click_time"] <= row["created_at"]
    assert row["params"]["payout"] == "1.2345"
    assert "token" not in row["params"]


async def test_json_body_keeps_numbers_exact(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    resp = await client.post(
        "/postback",
        data=f'{{"clickid": "{click_id}", "payout": 0.1, "token": '
        f'"{setup["network"]["postback_token"]}"}}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    assert await pool.fetchval("SELECT payout FROM conversions") == Decimal("0.1")


async def test_token_is_required(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    for params, reason in (
        ({"clickid": click_id}, "missing token"),
        ({"clickid": click_id, "token": "wrong"}, "wrong token"),
    ):
        resp = await client.get("/postback", params=params)
        assert resp.status == 403
        assert (await resp.json())["error"] == f"forbidden: {reason}"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    assert (
        await pool.fetchval("SELECT count(*) FROM postback_log WHERE result = 'rejected-auth'") == 2
    )


async def test_concurrent_duplicates_make_one_conversion(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    params = {"clickid": click_id, "payout": "5", "token": setup["network"]["postback_token"]}

    async def send():
        resp = await client.get("/postback", params=params)
        assert resp.status == 200
        return await resp.json()

    results = await asyncio.gather(*(send() for _ in range(50)))
    assert sorted(r["result"] for r in results) == ["created"] + ["duplicate"] * 49
    assert len({r["conversion_id"] for r in results}) == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


async def test_falls_back_to_postgres_when_redis_key_is_gone(client, api, redis, pool, sink):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"], external_id="from-pg", sub2="x")
    await wait_for_sink(sink)
    assert await redis.delete(keys.click_key(click_id)) == 1
    resp = await client.get(
        "/postback",
        params={"clickid": click_id, "payout": "2", "token": setup["network"]["postback_token"]},
    )
    assert resp.status == 200, await resp.text()
    row = await pool.fetchrow("SELECT * FROM conversions")
    assert (row["click_id"], row["external_id"], row["sub2"]) == (click_id, "from-pg", "x")
    assert row["campaign_id"] == setup["campaign"]["id"]


async def test_unknown_click_is_kept(client, api, pool):
    await api.setup_campaign()
    resp = await client.get("/postback", params={"clickid": "nosuchclick", "payout": "9.99"})
    assert resp.status == 404
    assert (await resp.json())["error"] == "unknown click id"
    row = await pool.fetchrow("SELECT * FROM postback_log")
    assert (row["click_id"], row["result"]) == ("nosuchclick", "unmatched")
    assert row["params"] == {"clickid": "nosuchclick", "payout": "9.99"}


async def test_bad_input_gets_json_4xx(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    token = setup["network"]["postback_token"]
    cases = [
        ({"payout": "1"}, 400, "clickid"),
        ({"clickid": click_id, "payout": "abc", "token": token}, 400, "payout"),
        ({"clickid": click_id, "currency": "EURO", "token": token}, 400, "currency"),
        ({"clickid": click_id, "payout": "1e999", "token": token}, 400, "payout"),
    ]
    for params, status, field in cases:
        resp = await client.get("/postback", params=params)
        assert resp.status == status
        body = await resp.json()
        assert body["error"] == "invalid postback"
        assert [d["field"] for d in body["details"]] == [field]
    resp = await client.get("/postback?clickid=" + "x" * 30_000)
    assert resp.status == 414
    assert "error" in await resp.json()
    resp = await client.post(
        "/postback", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"] == "request body is not valid JSON"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    # Invalid postbacks are kept for inspection, not dropped.
    assert (
        await pool.fetchval("SELECT count(*) FROM postback_log WHERE result = 'invalid'")
        == len(cases) + 1
    )  # and the unreadable JSON body


async def test_empty_values_count_as_absent(client, api, pool):
    setup = await api.setup_campaign(payout="7.50")
    click_id = await make_click(client, setup["campaign"])
    resp = await client.get(
        "/postback",
        params={
            "clickid": click_id,
            "payout": "",
            "currency": "",
            "token": setup["network"]["postback_token"],
        },
    )
    assert resp.status == 200
    row = await pool.fetchrow("SELECT payout, currency FROM conversions")
    assert (row["payout"], row["currency"]) == (Decimal("7.50"), "USD")


async def test_storage_outage_is_queued_or_a_json_503(client, api):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    from tracker.devstack import free_port
    from tracker.web.appkeys import PG_POOL, REDIS

    client.server.app[PG_POOL].terminate()
    params = {"clickid": click_id, "token": setup["network"]["postback_token"]}
    resp = await client.get("/postback", params=params)
    assert resp.status == 200
    assert (await resp.json())["result"] == "queued"
    # Redis gone as well: nowhere to keep it, so the network must retry.
    redis = client.server.app[REDIS]
    redis.connection_pool.connection_kwargs["port"] = free_port()
    await redis.connection_pool.disconnect()
    redis.connection_pool.reset()
    resp = await client.get("/postback", params=params)
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "storage unavailable, retry later"
    assert len(body["receipt_id"]) == 24
