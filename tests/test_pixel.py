"""The conversion pixel: `/px.gif` and `/px.js`, through the postback pipeline."""

import asyncio
import struct
from decimal import Decimal

from tests.test_lifecycle import prepared
from tests.test_postback import make_click
from tests.test_postback_queue import drained
from tracker.postbacks import PIXEL_CANNOT_REFUND, PIXEL_NOT_ALLOWED, PIXEL_STATUS
from tracker.settings import Settings
from tracker.sink.postbacks import postback_queue_sink
from tracker.store import keys
from tracker.store.postback_log import load_inbound
from tracker.web.appkeys import PG_POOL, POSTBACK_GUARD, REDIS
from tracker.web.click import cookie_attributes
from tracker.web.pixel import GIF, NO_CLICK_ID

ALLOWED = {"allow_pixel": True}


async def hit(client, path="/px.gif", cookie=None, **params):
    """Fire the pixel; assert it answered its image, whatever became of the hit.
    The click's own cookie is dropped: a test sends the cookie it means."""
    client.session.cookie_jar.clear()
    headers = {"Cookie": f"tk_click={cookie}"} if cookie else {}
    resp = await client.get(path, params=params, headers=headers)
    body = await resp.read()
    assert resp.status == 200, body
    assert resp.headers["Cache-Control"] == "no-store"
    if path == "/px.gif":
        assert (resp.content_type, body) == ("image/gif", GIF)
    else:
        assert resp.content_type == "text/javascript"
    return resp


async def log_rows(pool):
    return await pool.fetch(
        "SELECT result, reason, source, method, click_id, params FROM postback_log ORDER BY id"
    )


def test_the_gif_is_a_transparent_1x1_image():
    assert GIF[:6] == b"GIF89a"
    assert struct.unpack("<HH", GIF[6:10]) == (1, 1)
    assert GIF[10] & 0x80  # a global colour table...
    assert GIF[13:19] == b"\x00\x00\x00\xff\xff\xff"  # ...of two colours
    # A graphic control extension with the transparency flag, for colour 0.
    assert GIF[19:23] == b"\x21\xf9\x04\x01" and GIF[25] == 0
    image = GIF.index(b",")
    assert struct.unpack("<HHHH", GIF[image + 1 : image + 9]) == (0, 0, 1, 1)
    assert GIF.endswith(b";") and len(GIF) == 43


async def test_pixel_with_a_click_id_is_a_pixel_conversion(client, api, pool):
    setup, click_id, _ = await prepared(client, api, ALLOWED)
    resp = await hit(client, clickid=click_id, payout="2.50", txid="T1", event="sale")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    row = await pool.fetchrow("SELECT * FROM conversions")
    assert (row["click_id"], row["source"], row["txid"], row["event"]) == (
        click_id,
        "pixel",
        "T1",
        "sale",
    )
    assert (row["payout"], row["network_id"]) == (Decimal("2.50"), setup["network"]["id"])
    [logged] = await log_rows(pool)
    assert (logged["result"], logged["source"], logged["method"]) == ("created", "pixel", "GET")
    listed = await api.call("GET", "/api/postbacks")
    assert listed["items"][0]["source"] == "pixel"


async def test_the_script_records_like_the_image(client, api, pool):
    _, click_id, _ = await prepared(client, api, ALLOWED)
    # Aliases of the postback dialects work here too.
    resp = await hit(client, "/px.js", cid=click_id, amount="4", tid="J1")
    assert resp.charset == "utf-8"
    assert (await resp.text()).startswith("/*")
    row = await pool.fetchrow("SELECT source, txid, original_payout FROM conversions")
    assert (row["source"], row["txid"], row["original_payout"]) == ("pixel", "J1", Decimal(4))


async def test_the_click_cookie_gives_the_click_id(client, api, pool):
    _, click_id, _ = await prepared(client, api, ALLOWED)
    await hit(client, cookie=click_id, txid="C1", clickid="")  # an unfilled macro
    row = await pool.fetchrow("SELECT click_id, source FROM conversions")
    assert (row["click_id"], row["source"]) == (click_id, "pixel")
    [logged] = await log_rows(pool)
    assert logged["params"]["clickid"] == click_id
    # The click id in the URL wins over the cookie.
    other = await make_click(client, (await api.call("GET", "/api/campaigns"))["items"][0])
    await hit(client, cookie=click_id, clickid=other, txid="C2")
    assert await pool.fetchval("SELECT click_id FROM conversions WHERE txid = 'C2'") == other


async def test_without_click_id_or_cookie_nothing_converts(client, api, pool):
    await prepared(client, api, ALLOWED)
    await hit(client, txid="N1")
    await hit(client, "/px.js", txid="N2")
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    rows = await log_rows(pool)
    assert [(r["result"], r["reason"], r["source"]) for r in rows] == [
        ("invalid", NO_CLICK_ID, "pixel")
    ] * 2
    assert rows[0]["params"] == {"txid": "N1"}


async def test_a_pixel_and_a_postback_for_one_txid_make_one_conversion(client, api, pool):
    _, click_id, send = await prepared(client, api, ALLOWED)
    # Pixel first: the postback then completes the conversion the pixel made.
    await hit(client, clickid=click_id, txid="A", status="pending")
    assert await send(txid="A", status="approved") == "updated"
    # Postback first: the pixel for the same txid is a duplicate.
    assert await send(txid="B", status="approved") == "created"
    await hit(client, clickid=click_id, txid="B")
    rows = await pool.fetch("SELECT txid, source, status FROM conversions ORDER BY txid")
    assert [tuple(r) for r in rows] == [
        ("A", "pixel", "approved"),
        ("B", "postback", "approved"),
    ]
    logged = await log_rows(pool)
    assert [(r["source"], r["result"]) for r in logged] == [
        ("pixel", "created"),
        ("postback", "updated"),
        ("postback", "created"),
        ("pixel", "duplicate"),
    ]


async def test_a_pixel_never_changes_or_refunds_a_conversion(client, api, pool):
    _, click_id, send = await prepared(client, api, ALLOWED)
    assert await send(txid="R", status="approved", payout="10") == "created"
    # Whoever sees a click id could fire these: none may touch the conversion.
    await hit(client, clickid=click_id, txid="R", status="rejected")
    await hit(client, clickid=click_id, txid="R", payout="99")
    await hit(client, clickid=click_id, txid="R2", parent_txid="R", payout="-5")
    await hit(client, clickid=click_id, txid="R3", status="chargeback", payout="-5")
    # Nor create one born rejected or charged back, which a source would be told about.
    await hit(client, clickid=click_id, txid="R4", status="chargeback", payout="10")
    await hit(client, clickid=click_id, txid="R5", status="rejected")
    row = await pool.fetchrow("SELECT status, payout, refunded FROM conversions")
    assert tuple(row) == ("approved", Decimal(10), Decimal(0))
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    logged = await log_rows(pool)
    assert [(r["result"], r["reason"]) for r in logged[1:]] == [
        ("invalid", PIXEL_STATUS),
        ("duplicate", None),
        ("invalid", PIXEL_CANNOT_REFUND),
        ("invalid", PIXEL_STATUS),
        ("invalid", PIXEL_STATUS),
        ("invalid", PIXEL_STATUS),
    ]


async def test_a_network_without_allow_pixel_refuses_it(client, api, pool):
    setup, click_id, _ = await prepared(client, api)
    assert setup["network"]["allow_pixel"] is False
    assert PIXEL_NOT_ALLOWED == "pixel not allowed for this network"
    await hit(client, clickid=click_id, txid="X")
    await hit(client, "/px.js", cookie=click_id, txid="X")
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    rows = await log_rows(pool)
    assert [(r["result"], r["reason"], r["source"], r["click_id"]) for r in rows] == [
        ("rejected-auth", PIXEL_NOT_ALLOWED, "pixel", click_id)
    ] * 2


async def test_the_admin_api_takes_and_returns_allow_pixel(api):
    network = await api.create("/api/affiliate-networks", {"name": "N", "allow_pixel": True})
    assert network["allow_pixel"] is True
    path = f"/api/affiliate-networks/{network['id']}"
    assert (await api.call("PATCH", path, json={"allow_pixel": False}))["allow_pixel"] is False
    assert (await api.call("GET", path))["allow_pixel"] is False
    await api.call("PATCH", path, expect=400, json={"allow_pixel": "sometimes"})


async def test_bad_input_is_answered_with_the_image_and_logged(client, api, pool):
    _, click_id, _ = await prepared(client, api, ALLOWED)
    cases = [
        {"clickid": click_id, "payout": "abc"},
        {"clickid": click_id, "payout": "1e999"},
        {"clickid": click_id, "payout": "9" * 40},
        {"clickid": click_id, "currency": "EURO"},
        {"clickid": click_id, "status": "no-such-status"},
        {"clickid": click_id, "txid": "x" * 3000},
        {"clickid": click_id, "txid": "a\x00b"},
        {"clickid": "c\x00d"},
        {"clickid": click_id, "cid": "another"},
        {"clickid": "x" * 200},
        {f"p{i}": "v" for i in range(150)},
    ]
    for params in cases:
        await hit(client, **params)
        await hit(client, "/px.js", **params)
    await hit(client, "/px.gif", cookie="x" * 300)
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    rows = await log_rows(pool)
    assert len(rows) == 2 * len(cases) + 1
    assert all(r["source"] == "pixel" and r["reason"] for r in rows), rows
    assert {r["result"] for r in rows} <= {"invalid", "unmatched"}
    # As in a postback, free parameters are cleaned rather than refused.
    await hit(client, clickid=click_id, **{"na\x00me": "v\x00"})
    row = await pool.fetchrow("SELECT source, params FROM conversions")
    assert (row["source"], row["params"]["name"]) == ("pixel", "v")


async def test_head_answers_headers_and_records_nothing(client, api, pool):
    _, click_id, _ = await prepared(client, api, ALLOWED)
    for path, content_type in (("/px.gif", "image/gif"), ("/px.js", "text/javascript")):
        resp = await client.head(path, params={"clickid": click_id, "txid": "H"})
        assert resp.status == 200
        assert resp.content_type == content_type
        assert resp.headers["Cache-Control"] == "no-store"
        assert await resp.read() == b""
    assert int(resp.headers["Content-Length"]) > 0
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 0
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0


async def test_a_pixel_is_queued_while_postgres_is_down(client, api, pool, redis, settings):
    _, click_id, _ = await prepared(client, api, ALLOWED)
    client.server.app[PG_POOL].terminate()
    await hit(client, clickid=click_id, txid="Q", payout="3")
    [(_, fields)] = await redis.xrange(keys.POSTBACK_STREAM)
    assert load_inbound(fields[b"d"]).source == "pixel"
    async with postback_queue_sink(pool, redis, settings, consumer="q", block_ms=50) as queue:
        task = asyncio.create_task(queue.run())
        await drained(queue)
        queue.stop()
        await task
    row = await pool.fetchrow("SELECT source, txid, payout FROM conversions")
    assert tuple(row) == ("pixel", "Q", Decimal(3))
    [logged] = await pool.fetch("SELECT source, result, queued FROM postback_log")
    assert tuple(logged) == ("pixel", "created", True)


async def test_the_image_is_answered_when_all_storage_is_down(client, api):
    from tracker.devstack import free_port

    _, click_id, _ = await prepared(client, api, ALLOWED)
    client.server.app[PG_POOL].terminate()
    redis = client.server.app[REDIS]
    redis.connection_pool.connection_kwargs["port"] = free_port()
    await redis.connection_pool.disconnect()
    redis.connection_pool.reset()
    await hit(client, clickid=click_id, txid="lost")
    await hit(client, "/px.js", txid="lost")


async def test_failed_hits_count_against_the_address(client, api, pool):
    await prepared(client, api, ALLOWED)
    client.server.app[POSTBACK_GUARD].limiter.limit = 3
    for i in range(6):
        await hit(client, clickid=f"nosuchclick{i}")
    # Over the limit, hits are still answered, but no longer logged.
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 3


def test_cookies_go_with_cross_site_requests_over_https():
    https = Settings(public_url="https://tracker.example")
    assert cookie_attributes(https) == "; Path=/; HttpOnly; SameSite=None; Secure"
    plain = Settings(public_url="http://tracker.example")
    assert cookie_attributes(plain) == "; Path=/; HttpOnly; SameSite=Lax"
