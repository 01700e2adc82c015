"""Receipts, the postback queue, atomic conversion + log rows, replay keys, bad log rows."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from tests.conftest import store_clicks_late
from tests.test_lifecycle import prepared
from tests.test_postback import make_click
from tracker.domain.auth import signature_for
from tracker.sink.postbacks import postback_queue_sink
from tracker.store import keys
from tracker.store.postback_log import Inbound, PostbackLog, enqueue
from tracker.web.appkeys import PG_POOL, POSTBACK_GUARD

SECRET = "queue-signing-secret-0123456789"


async def network_id(pool):
    return await pool.fetchval("SELECT id FROM affiliate_networks")


async def read_queue(redis):
    entries = await redis.xrange(keys.POSTBACK_STREAM)
    return [(entry_id, fields) for entry_id, fields in entries]


async def drained(queue, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while await queue.backlog():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the postback queue did not drain")
        await asyncio.sleep(0.05)


async def test_postbacks_are_queued_while_postgres_is_down_and_applied_later(
    client, api, pool, redis, settings
):
    setup, click_id, _ = await prepared(client, api, {"signing_secret": SECRET})
    token = setup["network"]["postback_token"]
    query = urlencode({"clickid": click_id, "txid": "q1", "token": token})
    now = str(int(time.time()))
    headers = {"X-Signature": signature_for(SECRET, now, query), "X-Timestamp": now}
    client.server.app[PG_POOL].terminate()
    resp = await client.get(f"/postback?{query}", headers=headers)
    body_first = await resp.json()
    assert resp.status == 200, body_first
    assert body_first["result"] == "queued" and len(body_first["receipt_id"]) == 24
    # Signatures are claimed in Postgres, so a copy sent now waits in the queue too; it
    # is found to be a replay when applied.
    resp = await client.get(f"/postback?{query}", headers=headers)
    assert (resp.status, (await resp.json())["result"]) == (200, "queued")
    assert await redis.xlen(keys.POSTBACK_STREAM) == 2
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0

    async with postback_queue_sink(pool, redis, settings, consumer="q", block_ms=50) as queue:
        task = asyncio.create_task(queue.run())
        await drained(queue)
        queue.stop()
        await task
    assert queue.applied == 2
    rows = await pool.fetch(
        "SELECT receipt_id, result, reason, queued, conversion_id FROM postback_log ORDER BY id"
    )
    assert len(rows) == 2 and all(row["queued"] for row in rows)
    # Applied in arrival order: the first copy creates, the second is the replay.
    assert rows[0]["receipt_id"] == body_first["receipt_id"]
    assert [row["result"] for row in rows] == ["created", "rejected-auth"]
    assert rows[1]["reason"] == "forbidden: signature already used"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    assert await redis.xlen(keys.POSTBACK_STREAM) == 0  # applied entries are removed


@pytest.mark.parametrize("policy", ["txid", "ignore", "accept"])
async def test_applying_a_queued_entry_twice_creates_nothing_twice(
    client, api, pool, redis, settings, policy
):
    setup, click_id, _ = await prepared(client, api, {"duplicate_policy": policy})
    token = setup["network"]["postback_token"]
    received = datetime.now(UTC) - timedelta(minutes=3)
    for i, status in enumerate(["pending", "approved", "pending"]):
        params = {"clickid": click_id, "txid": f"t{i % 2}", "token": token, "status": status}
        await enqueue(redis, Inbound(params, "GET", urlencode(params), received))
    entries = await read_queue(redis)
    async with postback_queue_sink(pool, redis, settings, consumer="q") as queue:
        await queue.ensure_group()
        await queue.apply(entries)
        state = await pool.fetch("SELECT id, status FROM conversions ORDER BY id")
        history = await pool.fetchval("SELECT count(*) FROM conversion_history")
        # A crash after the commit, before the acknowledgement: the same entries again.
        await queue.apply(entries)
    assert await pool.fetch("SELECT id, status FROM conversions ORDER BY id") == state
    assert await pool.fetchval("SELECT count(*) FROM conversion_history") == history
    expected = {"txid": 2, "ignore": 1, "accept": 3}[policy]
    assert len(state) == expected
    logged = await pool.fetch("SELECT received_at, queued FROM postback_log")
    assert len(logged) == 3  # one row per receipt
    assert all(row["queued"] and row["received_at"] == received for row in logged)


async def test_refusals_during_an_outage_are_answered_as_refusals(
    client, api, pool, redis, settings
):
    setup, click_id, _ = await prepared(client, api, {})
    token = setup["network"]["postback_token"]
    client.server.app[PG_POOL].terminate()
    answers = []
    for query in (
        f"clickid={click_id}&txid=w1&token=wrong-token",
        f"clickid={click_id}&txid=w2&token={token}&status=bogus",
        f"clickid={click_id}&txid=ok&token={token}",
    ):
        resp = await client.get(f"/postback?{query}")
        answers.append((resp.status, (await resp.json()).get("result")))
    print("answers during the outage:", answers)
    assert answers == [(403, "rejected-auth"), (400, "invalid"), (200, "queued")]
    async with postback_queue_sink(pool, redis, settings, consumer="q", block_ms=50) as queue:
        task = asyncio.create_task(queue.run())
        await drained(queue)
        queue.stop()
        await task
    rows = await pool.fetch("SELECT result, queued FROM postback_log ORDER BY id")
    assert [(r["result"], r["queued"]) for r in rows] == [
        ("rejected-auth", True),
        ("invalid", True),
        ("created", True),
    ]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


async def test_queued_postback_is_judged_at_receipt(client, api, pool, redis, settings):
    """The signature window is judged at receipt: applied 10 minutes later, still valid."""
    setup, click_id, _ = await prepared(client, api, {"signing_secret": SECRET})
    received = datetime.now(UTC) - timedelta(minutes=10)
    stamp = str(int(received.timestamp()))
    query = urlencode(
        {"clickid": click_id, "txid": "late", "token": setup["network"]["postback_token"]}
    )
    inbound = Inbound(
        dict(p.split("=") for p in query.split("&")),
        "GET",
        query,
        received,
        signature=signature_for(SECRET, stamp, query),
        signature_ts=stamp,
    )
    await enqueue(redis, inbound)
    async with postback_queue_sink(pool, redis, settings, consumer="q") as queue:
        await queue.ensure_group()
        await queue.apply(await read_queue(redis))
    assert await pool.fetchval("SELECT result FROM postback_log") == "created"


async def test_conversion_and_its_log_row_are_one_transaction(client, api, pool):
    setup, click_id, _ = await prepared(client, api, {"signing_secret": SECRET})
    token = setup["network"]["postback_token"]
    query = urlencode({"clickid": click_id, "txid": "a1", "token": token})
    now = str(int(time.time()))
    headers = {"X-Signature": signature_for(SECRET, now, query), "X-Timestamp": now}
    await pool.execute(
        """
        CREATE FUNCTION refuse_log() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'log refused'; END $$;
        CREATE TRIGGER refuse_log BEFORE INSERT ON postback_log
        FOR EACH ROW EXECUTE FUNCTION refuse_log();
        """
    )
    try:
        resp = await client.get(f"/postback?{query}", headers=headers)
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"] == "postback not recorded, retry later"
        assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    finally:
        await pool.execute("DROP TRIGGER refuse_log ON postback_log; DROP FUNCTION refuse_log()")
    # The failed attempt gave its signature back: the network's retry is no replay.
    resp = await client.get(f"/postback?{query}", headers=headers)
    body = await resp.json()
    assert (resp.status, body["result"]) == (200, "created"), body
    row = await pool.fetchrow("SELECT result, conversion_id FROM postback_log")
    assert (row["result"], row["conversion_id"]) == ("created", body["conversion_id"])
    # An update writes its log row in its own transaction too.
    await pool.execute(
        "ALTER TABLE postback_log ADD CONSTRAINT no_updates CHECK (result <> 'updated')"
    )
    try:
        query2 = urlencode(
            {"clickid": click_id, "txid": "a1", "token": token, "status": "rejected"}
        )
        headers2 = {"X-Signature": signature_for(SECRET, now, query2), "X-Timestamp": now}
        resp = await client.get(f"/postback?{query2}", headers=headers2)
        assert resp.status == 503
        assert await pool.fetchval("SELECT status FROM conversions") == "approved"
    finally:
        await pool.execute("ALTER TABLE postback_log DROP CONSTRAINT no_updates")
    resp = await client.get(f"/postback?{query2}", headers=headers2)
    assert (await resp.json())["result"] == "updated"
    assert await pool.fetchval("SELECT status FROM conversions") == "rejected"
    results = await pool.fetch("SELECT result FROM postback_log ORDER BY id")
    assert [r["result"] for r in results] == ["created", "updated"]


async def test_signed_orphan_copies_become_one_conversion(client, api, pool, redis, sink, settings):
    setup, _, _ = await prepared(
        client, api, {"signing_secret": SECRET, "duplicate_policy": "accept"}
    )
    sink.stop()  # hold the click back
    await asyncio.sleep(0.3)
    click_id = await make_click(client, setup["campaign"])
    await redis.delete(keys.click_key(click_id))
    query = urlencode(
        {"clickid": click_id, "txid": "o1", "token": setup["network"]["postback_token"]}
    )
    now = str(int(time.time()))
    headers = {"X-Signature": signature_for(SECRET, now, query), "X-Timestamp": now}
    for _ in range(2):
        resp = await client.get(f"/postback?{query}", headers=headers)
        assert resp.status == 404
    await store_clicks_late(redis, pool, settings)
    rows = await pool.fetch("SELECT result, reason FROM postback_log ORDER BY id")
    assert [r["result"] for r in rows] == ["created", "rejected-auth"]
    assert rows[1]["reason"] == "forbidden: signature already used"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


async def test_archived_network_is_refused(client, api, pool):
    setup, click_id, _ = await prepared(client, api)
    archived = await api.call("DELETE", f"/api/affiliate-networks/{setup['network']['id']}")
    assert archived["archived_at"] is not None
    resp = await client.get(
        "/postback", params={"clickid": click_id, "token": setup["network"]["postback_token"]}
    )
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden: the affiliate network is archived"
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    assert await pool.fetchval("SELECT result FROM postback_log") == "rejected-auth"


async def test_wrong_token_writes_only_its_log_row(client, api, pool):
    _, click_id, _ = await prepared(client, api)
    resp = await client.get("/postback", params={"clickid": click_id, "token": "nope"})
    assert resp.status == 403
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    assert await pool.fetchval("SELECT count(*) FROM conversion_history") == 0
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 1


async def raw_get(port: int, target: str, headers: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET "
        + target.encode()
        + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        + headers
        + b"\r\n"
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def test_one_unstorable_log_row_fails_alone(client, api, pool):
    setup, click_id, _ = await prepared(client, api)
    token = setup["network"]["postback_token"]
    port = client.server.port
    # NUL bytes in parameters and header bytes that are not UTF-8 (they arrive as lone
    # surrogates): Postgres refuses the first, JSON the second.
    bad = raw_get(
        port,
        f"/postback?clickid=nosuch&note=a%00b&token={token}",
        b"X-Signature: \xff\xfezz\r\nX-Timestamp: 1\xed\xa0\x80\r\n",
    )
    good = [
        client.get("/postback", params={"clickid": click_id, "txid": f"g{i}", "token": token})
        for i in range(20)
    ]
    unmatched = [
        client.get("/postback", params={"clickid": f"none{i}", "token": token}) for i in range(10)
    ]
    results = await asyncio.gather(
        bad,
        raw_get(port, f"/postback?clickid=nosuch2&x=%00&token={token}", b"X-Timestamp: \xff\r\n"),
        *good,
        *unmatched,
    )
    # Dirty signature headers are refused at the edge (400), and still logged.
    assert results[0][0] == 400 and results[1][0] == 400
    assert [r.status for r in results[2:22]] == [200] * 20
    assert [r.status for r in results[22:]] == [404] * 10
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 20
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 32
    raw = await pool.fetchval(
        "SELECT raw FROM postback_log WHERE raw LIKE 'clickid=nosuch&%' AND result = 'invalid'"
    )
    assert "\x00" not in raw


async def test_log_batch_with_a_bad_row_keeps_every_row(pool):
    postback_log = PostbackLog(pool)
    await postback_log.start()

    class Result:
        result, reason, conversion_id, network_id, click_id = "unmatched", None, None, None, "c"

    now = datetime.now(UTC)
    try:
        inbounds = [Inbound({"i": str(i)}, "GET", f"i={i}", now) for i in range(30)]
        inbounds[7] = Inbound(
            {"i": "7\x00", "s": "\udcff"}, "GET", "i=7\x00", now, signature="\ud800"
        )
        await asyncio.gather(*(postback_log.append(i, Result()) for i in inbounds))
    finally:
        await postback_log.close()
    rows = await pool.fetch("SELECT params FROM postback_log ORDER BY (params->>'i')")
    assert len(rows) == 30
    assert {row["params"]["i"] for row in rows} == {str(i) for i in range(30)}


async def test_junk_cannot_fill_the_queue_during_an_outage(client, api, redis):
    setup, _, _ = await prepared(client, api)
    token = setup["network"]["postback_token"]
    client.server.app[POSTBACK_GUARD].limiter.limit = 5
    client.server.app[PG_POOL].terminate()
    answers = []
    for i in range(8):  # unknown clicks, no token: looked up in Postgres, which is down
        resp = await client.get("/postback", params={"clickid": f"junk{i}", "x": "y" * 2000})
        answers.append((resp.status, (await resp.json()).get("result")))
    assert answers == [(200, "queued")] * 5 + [(429, None)] * 3
    # A network's own postback is never limited, outage or not.
    resp = await client.get("/postback", params={"clickid": "junk-net", "token": token})
    assert (resp.status, (await resp.json())["result"]) == (200, "queued")
    assert await redis.xlen(keys.POSTBACK_STREAM) == 6
