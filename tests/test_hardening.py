"""Slow bodies, addresses over their failure limit, rates that would overflow, and
configuration changes made while Redis is away."""

import asyncio
from decimal import Decimal

from aiohttp.test_utils import TestClient

from tests.conftest import start_client
from tests.test_postback import make_click
from tracker.devstack import free_port
from tracker.store import keys
from tracker.web.app import create_app
from tracker.web.appkeys import CONFIG, POSTBACK_GUARD, REDIS


async def slow_body(port: int, path: str, headers: bytes = b"") -> tuple[int, bytes]:
    """Send a request head announcing 100 bytes of body, then only 10 of them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 100\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + headers
        + b"\r\nclickid=ab"
    )
    await writer.drain()
    # The answer comes before the server gives up on the rest of the body, so read
    # just the answer rather than wait for the connection to close.
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    return int(head.split(b" ", 2)[1]), body


async def test_a_slowly_sent_body_is_cut_off_with_a_408(settings):
    settings = settings.model_copy(update={"body_read_timeout": 0.5})
    client = await start_client(create_app(settings), settings)
    try:
        status, body = await slow_body(client.server.port, "/postback")
        assert status == 408 and b"request body not received within 0.5 s" in body
        status, body = await slow_body(
            client.server.port,
            "/api/traffic-sources",
            b"Authorization: Bearer " + settings.api_key.get_secret_value().encode() + b"\r\n",
        )
        assert status == 408
    finally:
        await client.close()


async def test_an_address_over_its_limit_is_refused_before_any_work(client, api, pool):
    setup = await api.setup_campaign()
    await api.call(
        "PATCH", f"/api/affiliate-networks/{setup['network']['id']}", json={"require_token": False}
    )
    click_id = await make_click(client, setup["campaign"])
    guard = client.app[POSTBACK_GUARD]
    guard.limiter.limit = 3
    guard.limiter.clock = lambda: 1_000_000.0 * 60 + 1  # one fixed minute
    statuses = []
    for i in range(4):
        resp = await client.get("/postback", params={"clickid": f"junk{i}"})
        statuses.append(resp.status)
    assert statuses == [404, 404, 404, 429]
    # A good postback from the same address is not even looked at now...
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "t1"})
    assert resp.status == 429
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    # ...unless it carries a network's token: networks are never throttled.
    token = setup["network"]["postback_token"]
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "t1", "token": token})
    assert resp.status == 200
    # The minute ends: the address is heard again.
    guard.limiter.clock = lambda: 1_000_001.0 * 60 + 1
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "t2"})
    assert (resp.status, (await resp.json())["result"]) == (200, "created")


async def test_a_network_allowlisted_address_is_never_limited(client, api):
    setup = await api.setup_campaign()
    await api.call(
        "PATCH",
        f"/api/affiliate-networks/{setup['network']['id']}",
        json={"require_token": False, "ip_allowlist": ["127.0.0.0/8"]},
    )
    guard = client.app[POSTBACK_GUARD]
    guard.limiter.limit = 2
    statuses = set()
    for i in range(6):
        resp = await client.get("/postback", params={"clickid": f"unknown{i}"})
        statuses.add(resp.status)
    assert statuses == {404}


async def test_a_rate_that_would_overflow_leaves_conversions_waiting(client, api, pool):
    setup = await api.setup_campaign(payout=None)
    click_id = await make_click(client, setup["campaign"])
    params = {
        "clickid": click_id,
        "payout": "99999999",
        "currency": "EUR",
        "token": setup["network"]["postback_token"],
    }
    resp = await client.get("/postback", params=params)
    assert (await resp.json())["result"] == "created"
    body = await api.create(
        "/api/currency-rates",
        {"currency": "EUR", "rate": "1000000", "valid_from": "2020-01-01"},
    )
    assert body["converted"] == 0
    row = await pool.fetchrow("SELECT payout, original_payout FROM conversions")
    assert row["payout"] is None and row["original_payout"] == Decimal("99999999")


async def test_a_config_change_while_redis_is_away_is_kept_and_announced(
    client: TestClient, api, redis
):
    source = await api.create("/api/traffic-sources", {"name": "Before"})
    version = await redis.get(keys.CONFIG_VERSION)
    app_redis = client.app[REDIS]
    port = app_redis.connection_pool.connection_kwargs["port"]
    app_redis.connection_pool.connection_kwargs["port"] = free_port()
    await app_redis.connection_pool.disconnect()
    try:
        body = await api.call(
            "PATCH", f"/api/traffic-sources/{source['id']}", json={"name": "During"}
        )
        assert body["name"] == "During"  # committed and answered, not a 503
    finally:
        app_redis.connection_pool.connection_kwargs["port"] = port
        await app_redis.connection_pool.disconnect()
    # Once Redis answers, the watcher bumps the version so other processes reload.
    for _ in range(100):
        if await redis.get(keys.CONFIG_VERSION) != version:
            break
        await asyncio.sleep(0.05)
    assert int(await redis.get(keys.CONFIG_VERSION)) == int(version) + 1
    assert client.app[CONFIG].snapshot is not None
