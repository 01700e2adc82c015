"""Postback authentication per network: token (query or path), IP allowlist, HMAC signature."""

import asyncio
import time
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from yarl import URL

from tests.conftest import store_clicks_late, wait_for_sink
from tests.test_lifecycle import prepared
from tests.test_postback import make_click
from tracker.devstack import free_port
from tracker.domain.auth import signature_for
from tracker.store import keys
from tracker.web.appkeys import REDIS

SECRET = "s3cret-signing-key-0123456789"


async def test_token_in_the_path(client, api, pool):
    setup, click_id, _ = await prepared(client, api)
    token = setup["network"]["postback_token"]
    resp = await client.get(f"/postback/{token}", params={"clickid": click_id})
    assert resp.status == 200
    resp = await client.get("/postback/wrong", params={"clickid": click_id, "txid": "2"})
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden: wrong token"


async def test_ip_allowlist(client, api, pool):
    network = {"require_token": False, "ip_allowlist": ["10.0.0.0/8", "2001:db8::/32"]}
    _, click_id, _send = await prepared(client, api, network)
    resp = await client.get("/postback", params={"clickid": click_id})
    assert resp.status == 403
    assert (await resp.json())["error"] == (
        "forbidden: address 127.0.0.1 is not on the network's allowlist"
    )
    # A forwarded address counts only from a trusted proxy, and this app trusts none.
    resp = await client.get(
        "/postback", params={"clickid": click_id}, headers={"X-Forwarded-For": "10.1.2.3"}
    )
    assert resp.status == 403
    await api.call(
        "PATCH",
        f"/api/affiliate-networks/{(await pool.fetchval('SELECT id FROM affiliate_networks'))}",
        json={"ip_allowlist": ["127.0.0.0/30"]},
    )
    resp = await client.get("/postback", params={"clickid": click_id})
    assert resp.status == 200
    await api.call(
        "PATCH",
        f"/api/affiliate-networks/{(await pool.fetchval('SELECT id FROM affiliate_networks'))}",
        expect=400,
        json={"ip_allowlist": ["not-an-ip"]},
    )


async def test_hmac_signature(client, api, pool):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = urlencode({"clickid": click_id, "payout": "3", "txid": "s1"})

    async def get(query, signature, timestamp):
        headers = {"X-Signature": signature, "X-Timestamp": timestamp}
        resp = await client.get(f"/postback?{query}", headers=headers)
        return resp.status, (await resp.json()).get("error")

    now = str(int(time.time()))
    good = signature_for(SECRET, now, query)
    assert await get(query, "sha256=" + "0" * 64, now) == (403, "forbidden: bad signature")
    assert await get(query.replace("payout=3", "payout=4"), good, now) == (
        403,
        "forbidden: bad signature",
    )
    old = str(int(time.time()) - 301)
    assert await get(query, signature_for(SECRET, old, query), old) == (
        403,
        "forbidden: signature timestamp outside the 5-minute window",
    )
    resp = await client.get(f"/postback?{query}")
    assert resp.status == 403
    assert await get(query, good, now) == (200, None)
    assert await get(query, good, now) == (403, "forbidden: signature already used")
    # POST: the signature covers the raw body.
    body = urlencode({"clickid": click_id, "payout": "5", "txid": "s2"})
    headers = {
        "X-Signature": signature_for(SECRET, now, body),
        "X-Timestamp": now,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    resp = await client.post("/postback", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 2
    assert (
        await pool.fetchval("SELECT count(*) FROM postback_log WHERE result = 'rejected-auth'") == 5
    )


async def test_all_checks_together(client, api, pool):
    network = {"signing_secret": SECRET, "ip_allowlist": ["127.0.0.1"]}
    setup, click_id, _ = await prepared(client, api, network)
    query = urlencode({"clickid": click_id, "token": setup["network"]["postback_token"]})
    now = str(int(time.time()))
    headers = {"X-Signature": signature_for(SECRET, now, query), "X-Timestamp": now}
    resp = await client.get(f"/postback?{query}", headers=headers)
    assert resp.status == 200


async def test_orphan_postback_is_matched_when_its_click_arrives(
    client, api, pool, redis, sink, settings
):
    setup = await api.setup_campaign(payout="4.00")
    token = setup["network"]["postback_token"]
    sink.stop()  # hold the click back, as a slow node would
    await asyncio.sleep(0.2)
    click_id = await make_click(client, setup["campaign"])
    assert await redis.delete(keys.click_key(click_id)) == 1
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "o", "token": token})
    assert resp.status == 404
    assert await pool.fetchval("SELECT result FROM postback_log") == "unmatched"
    # A wrong-token orphan stays refused when its click arrives.
    await client.get("/postback", params={"clickid": click_id, "txid": "bad", "token": "x"})

    await store_clicks_late(redis, pool, settings)
    rows = await pool.fetch("SELECT result, reason, rematched_at FROM postback_log ORDER BY id")
    assert [r["result"] for r in rows] == ["created", "rejected-auth"]
    assert rows[0]["rematched_at"] is not None
    conversion = await pool.fetchrow("SELECT click_id, payout, txid FROM conversions")
    assert (conversion["click_id"], conversion["txid"]) == (click_id, "o")


async def test_forwarded_address_from_a_trusted_proxy(settings, api, pool):
    from tests.conftest import start_client
    from tracker.web.app import create_app

    trusting = settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    proxied = await start_client(create_app(trusting), trusting)
    try:
        setup = await api.setup_campaign()
        await api.call(
            "PATCH",
            f"/api/affiliate-networks/{setup['network']['id']}",
            json={"require_token": False, "ip_allowlist": ["203.0.113.0/24"]},
        )
        click_id = await make_click(api.client, setup["campaign"])
        await asyncio.sleep(0.5)  # let the second app see the new network settings
        headers = {"X-Forwarded-For": "203.0.113.7"}
        resp = await proxied.get("/postback", params={"clickid": click_id}, headers=headers)
        assert resp.status == 200, await resp.text()
        headers = {"X-Forwarded-For": "198.51.100.7"}
        resp = await proxied.get("/postback", params={"clickid": click_id}, headers=headers)
        assert resp.status == 403
        assert (
            await pool.fetchval("SELECT client_ip FROM postback_log ORDER BY id DESC LIMIT 1")
            == "198.51.100.7"
        )
    finally:
        await proxied.close()


async def _signed_get(client, query, signature, timestamp):
    """GET /postback with `query` on the wire exactly as given (no client re-encoding)."""
    url = URL(f"{client.make_url('/postback')}?{query}", encoded=True)
    headers = {"X-Signature": signature, "X-Timestamp": timestamp}
    resp = await client.session.get(url, headers=headers)
    return resp.status, (await resp.json()).get("error")


async def test_a_signature_is_used_once_however_it_is_spelt(client, api, pool, redis):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = urlencode({"clickid": click_id, "payout": "3", "txid": "r1"})
    now = str(int(time.time()))
    good = signature_for(SECRET, now, query)
    digest = good.removeprefix("sha256=")
    assert await _signed_get(client, query, "SHA256=" + digest.upper(), now) == (200, None)
    for spelling in (good, digest, digest.upper(), "Sha256=" + digest):
        assert await _signed_get(client, query, spelling, now) == (
            403,
            "forbidden: signature already used",
        ), spelling
    holders = await pool.fetch("SELECT signature FROM postback_signatures")
    assert [row["signature"] for row in holders] == [good]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


@pytest.mark.parametrize(
    "signature",
    [
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        "sha256=" + "g" * 64,
        "sha1=" + "0" * 64,
        "sha256= " + "0" * 64,
        "sha256=" + "0" * 32 + " " + "0" * 32,
        "sha256=" + "\uff10" * 64,  # full-width digits
        "sha256=" + "0" * 64 + ",sha256=" + "0" * 64,
    ],
)
async def test_non_canonical_signature_headers_are_refused(client, api, signature):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = urlencode({"clickid": click_id})
    now = str(int(time.time()))
    headers = {"X-Signature": signature.encode("utf-8").decode("latin-1"), "X-Timestamp": now}
    resp = await client.get(f"/postback?{query}", headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden: X-Signature is not sha256=<64 hex digits>"


@pytest.mark.parametrize("stamp", ["+{now}", "-{now}", " {now}x", "{now}.0", "1e9", "0" * 13])
async def test_timestamps_must_be_plain_digits(client, api, stamp):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = urlencode({"clickid": click_id})
    timestamp = stamp.format(now=int(time.time()))
    status, error = await _signed_get(
        client, query, signature_for(SECRET, timestamp, query), timestamp
    )
    assert (status, error) == (
        403,
        "forbidden: X-Timestamp is not a Unix time in seconds (ASCII digits only)",
    )


@pytest.mark.parametrize(
    ("encoded_payout", "encoded_sub", "payout", "sub"),
    [
        ("1%2E5", "a%20b", "1.5", "a b"),
        ("2.25", "a+b", "2.25", "a b"),
        ("3", "x%2By%26z%3D", "3", "x+y&z="),
    ],
)
async def test_a_get_is_signed_over_the_query_string_as_sent(
    client, api, pool, encoded_payout, encoded_sub, payout, sub
):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = f"clickid={click_id}&payout={encoded_payout}&txid=enc&sub={encoded_sub}"
    now = str(int(time.time()))
    assert await _signed_get(client, query, signature_for(SECRET, now, query), now) == (200, None)
    row = await pool.fetchrow("SELECT original_payout, params FROM conversions")
    assert row["original_payout"] == Decimal(payout)
    assert row["params"]["sub"] == sub
    # Signing the decoded form instead does not verify.
    decoded = f"clickid={click_id}&payout={payout}&txid=enc2&sub={sub}"
    assert await _signed_get(
        client,
        query.replace("txid=enc", "txid=enc2"),
        signature_for(SECRET, now, decoded),
        now,
    ) == (403, "forbidden: bad signature")


async def test_a_signed_post_ignores_its_query_string(client, api, pool):
    network = {"signing_secret": SECRET}
    setup, click_id, _ = await prepared(client, api, network)
    token = setup["network"]["postback_token"]
    body = urlencode({"clickid": click_id, "payout": "5", "txid": "p1"})
    now = str(int(time.time()))
    headers = {
        "X-Signature": signature_for(SECRET, now, body),
        "X-Timestamp": now,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    # The query tries to raise the payout, add a status and a parent; only `token` counts.
    query = urlencode({"payout": "5000", "status": "rejected", "token": token, "currency": "EUR"})
    resp = await client.post(f"/postback?{query}", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    row = await pool.fetchrow("SELECT original_payout, original_currency, status FROM conversions")
    assert (row["original_payout"], row["original_currency"]) == (Decimal("5"), "USD")
    assert row["status"] != "rejected"
    # The token is still read from the query: without it the network's token check fails.
    body2 = urlencode({"clickid": click_id, "payout": "6", "txid": "p2"})
    headers["X-Signature"] = signature_for(SECRET, now, body2)
    resp = await client.post("/postback?payout=9", data=body2, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden: missing token"


async def test_a_signed_post_without_body_is_signed_over_its_query(client, api, pool):
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    query = f"clickid={click_id}&payout=4%2E5&txid=nb"
    now = str(int(time.time()))
    url = URL(f"{client.make_url('/postback')}?{query}", encoded=True)
    headers = {"X-Signature": signature_for(SECRET, now, query), "X-Timestamp": now}
    resp = await client.session.post(url, headers=headers)
    assert resp.status == 200, await resp.text()
    assert await pool.fetchval("SELECT original_payout FROM conversions") == Decimal("4.5")


@pytest.mark.faults
async def test_signed_postbacks_need_no_redis(client, api, pool, sink):
    """With Redis unreachable, a signed postback still matches its click through Postgres
    and is recorded once; a replay of it is still refused."""
    network = {"require_token": False, "signing_secret": SECRET}
    _, click_id, _ = await prepared(client, api, network)
    await wait_for_sink(sink)
    app_redis = client.app[REDIS]
    port = app_redis.connection_pool.connection_kwargs["port"]
    app_redis.connection_pool.connection_kwargs["port"] = free_port()
    await app_redis.connection_pool.disconnect()
    try:
        query = urlencode({"clickid": click_id, "payout": "3", "txid": "no-redis"})
        now = str(int(time.time()))
        signature = signature_for(SECRET, now, query)
        assert await _signed_get(client, query, signature, now) == (200, None)
        assert await _signed_get(client, query, signature, now) == (
            403,
            "forbidden: signature already used",
        )
    finally:
        app_redis.connection_pool.connection_kwargs["port"] = port
        await app_redis.connection_pool.disconnect()
    assert await pool.fetchval("SELECT count(*) FROM conversions WHERE txid = 'no-redis'") == 1
