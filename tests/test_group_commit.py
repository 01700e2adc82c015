"""Group commit: shared round trips, each caller's own data, and clean failures."""

import asyncio
import dataclasses
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from tests.conftest import break_click_streams, click_stream_length, usd_conversion
from tracker.devstack import free_port
from tracker.store import keys
from tracker.store.batching import BatchQueueFullError
from tracker.store.clicks import ClickWriteError, ClickWriter
from tracker.store.conversions import ConversionPostback, ConversionWriter, SignatureUsed
from tracker.store.db import create_pool
from tracker.web.appkeys import CLICK_WRITER, CONVERSION_WRITER


async def test_concurrent_clicks_share_pipelines_and_keep_their_own_data(client, api, redis):
    setup = await api.setup_campaign(
        offer_url="https://o.example/?cid={clickid}&e={external_id}&s={sub1}"
    )
    path = urlsplit(setup["campaign"]["click_url"]).path

    async def click(i):
        resp = await client.get(
            path, params={"external_id": f"e{i}", "sub1": f"s{i}"}, allow_redirects=False
        )
        assert resp.status == 302
        return i, parse_qs(urlsplit(resp.headers["Location"]).query)

    results = await asyncio.gather(*(click(i) for i in range(300)))
    for i, query in results:
        assert query["e"] == [f"e{i}"] and query["s"] == [f"s{i}"]
        record = orjson.loads(await redis.get(keys.click_key(query["cid"][0])))
        assert (record["external_id"], record["sub1"]) == (f"e{i}", f"s{i}")
    assert await click_stream_length(redis) == 300
    batcher = client.server.app[CLICK_WRITER].batcher
    assert batcher.items == 300
    assert batcher.batches < 300  # clicks did share round trips


async def test_failed_pipeline_fails_every_waiting_click():
    dead = Redis(port=free_port(), socket_connect_timeout=1)
    writer = ClickWriter(dead)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.write(f"id{i}", b"{}", 60) for i in range(20)), return_exceptions=True
        )
    finally:
        await writer.close()
        await dead.aclose()
    assert all(isinstance(r, ClickWriteError) for r in results)


async def test_every_click_of_a_failed_batch_is_spooled(client, api, redis):
    setup = await api.setup_campaign()
    path = urlsplit(setup["campaign"]["click_url"]).path
    await break_click_streams(redis)
    responses = await asyncio.gather(*(client.get(path, allow_redirects=False) for _ in range(30)))
    assert [r.status for r in responses] == [302] * 30
    assert client.server.app[CLICK_WRITER].spooled == 30


async def test_concurrent_postbacks_share_commits_and_get_their_own_ids(client, api, pool):
    setup = await api.setup_campaign()
    path = urlsplit(setup["campaign"]["click_url"]).path
    resp = await client.get(path, allow_redirects=False)
    click_id = parse_qs(urlsplit(resp.headers["Location"]).query)["cid"][0]
    token = setup["network"]["postback_token"]

    async def postback(txid, payout):
        params = {"clickid": click_id, "txid": txid, "payout": payout, "token": token}
        resp = await client.get("/postback", params=params)
        assert resp.status == 200
        return txid, payout, await resp.json()

    sends = [postback(f"t{i}", f"{i}.01") for i in range(100)]
    sends += [postback("t0", "0.01") for _ in range(20)]  # repeats of one txid
    results = await asyncio.gather(*sends)
    created = [r for r in results if r[2]["result"] == "created"]
    assert len(created) == 100
    rows = {
        row["id"]: (row["txid"], row["payout"])
        for row in await pool.fetch("SELECT id, txid, payout FROM conversions")
    }
    for txid, payout, body in results:
        assert rows[body["conversion_id"]] == (txid, Decimal(payout))
    assert client.server.app[CONVERSION_WRITER].batcher.batches < len(sends)


# A click as the conversion writer reads it (the fields it copies).
CLICK = {
    "click_id": "c1",
    "created_ms": 1_700_000_000_000,
    "campaign_id": 1,
    "offer_id": 1,
    "traffic_source_id": 1,
}


async def test_a_bad_row_fails_alone(pool):
    writer = ConversionWriter(pool)
    await writer.start()
    click = CLICK

    def conversion(txid, payout):
        return usd_conversion(click, txid, payout)

    try:
        results = await asyncio.gather(
            writer.record(conversion("ok1", Decimal("1.50"))),
            writer.record(conversion("huge", Decimal("1e20"))),  # overflows NUMERIC(18, 6)
            writer.record(conversion("ok2", Decimal("2.50"))),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0][0] == "created" and results[2][0] == "created"
    assert isinstance(results[1], Exception)
    assert await pool.fetchval("SELECT sum(payout) FROM conversions") == Decimal("4.00")


@pytest.mark.parametrize("count", [1, 700])
async def test_close_writes_everything_queued(redis, count):
    writer = ClickWriter(redis, max_batch=256)
    await writer.start()
    tasks = [asyncio.create_task(writer.write(f"q{i}", b"{}", 60)) for i in range(count)]
    await asyncio.sleep(0)
    await writer.close()
    await asyncio.gather(*tasks)
    assert await click_stream_length(redis) == count


@pytest.mark.faults
async def test_writers_inserting_the_same_keys_in_opposite_orders_do_not_deadlock(settings):
    """Two processes' writers (here: two pools) creating overlapping conversions at once,
    one in ascending and one in descending order: every postback is answered, none fails."""
    pools = [await create_pool(settings.database_url, 2, 4) for _ in range(2)]
    writers = [ConversionWriter(p, max_batch=100) for p in pools]
    for writer in writers:
        await writer.start()

    def conversion(i):
        click = {"click_id": f"c{i % 40}", "created_ms": 1_700_000_000_000, "campaign_id": 1,
                 "offer_id": 1, "traffic_source_id": 1}  # fmt: skip
        return ConversionPostback(
            click=click, network_id=None, dedupe_key=f"t{i}", txid=f"t{i}", parent_txid=None,
            status="approved", payout=Decimal(1), currency="USD", original_payout=Decimal(1),
            original_currency="USD", payout_given=True, event=None, params={},
        )  # fmt: skip

    try:
        for _ in range(5):
            keys_ = list(range(300))
            results = await asyncio.gather(
                *(writers[0].record(conversion(i)) for i in keys_),
                *(writers[1].record(conversion(i)) for i in reversed(keys_)),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            assert failures == []
            assert sorted(r[0] for r in results).count("created") == 300
            await pools[0].execute("TRUNCATE conversions, conversion_history CASCADE")
    finally:
        for writer in writers:
            await writer.close()
        for p in pools:
            await p.close()


async def test_signatures_are_spent_in_the_batch_that_writes_them(pool):
    """Two receipts of one signed postback in one batch: one conversion, one replay; the
    same receipt applied again is no replay; a signed update is refused to another
    receipt; a batch that fails gives its signatures back."""
    writer = ConversionWriter(pool)
    await writer.start()
    click = CLICK

    def signed(txid, receipt, signature="sha256=" + "a" * 64, **extra):
        return dataclasses.replace(
            usd_conversion(click, txid, **extra), signature_claim=(signature, receipt)
        )

    try:
        # Different dedupe keys (as under the `accept` policy): only the signature decides.
        first = await asyncio.gather(
            writer.record(signed("t1", "r1")),
            writer.record(signed("t2", "r2")),
            writer.record(usd_conversion(click, "plain")),
            return_exceptions=True,
        )
        assert first[0][0] == "created" and first[2][0] == "created"
        assert isinstance(first[1], SignatureUsed)
        assert await writer.record(signed("t1", "r1")) == ("duplicate", first[0][1])
        with pytest.raises(SignatureUsed):  # an update (t1 exists) from another receipt
            await writer.record(signed("t1", "r3", status="rejected"))
        await pool.execute("ALTER TABLE conversions ADD CONSTRAINT no_t9 CHECK (txid <> 't9')")
        try:
            with pytest.raises(asyncpg.CheckViolationError):
                await writer.record(signed("t9", "r9", signature="sha256=" + "b" * 64))
        finally:
            await pool.execute("ALTER TABLE conversions DROP CONSTRAINT no_t9")
    finally:
        await writer.close()
    holders = await pool.fetch("SELECT signature, receipt_id FROM postback_signatures")
    print("signature holders:", [tuple(row) for row in holders])
    assert [tuple(row) for row in holders] == [("sha256=" + "a" * 64, "r1")]
    rows = await pool.fetch("SELECT txid, status FROM conversions ORDER BY txid")
    assert [tuple(row) for row in rows] == [("plain", "approved"), ("t1", "approved")]


async def test_updates_of_different_clicks_go_side_by_side_and_each_clicks_in_order(pool, settings):
    """Status updates: while another transaction holds one click's conversion, the other
    clicks' updates are applied and answered meanwhile, each click's two in the order they
    came (approved, then rejected; the other way round would end approved), and new
    conversions are written meanwhile too. The held update is not lost when its caller
    gives up, and closing the writer waits for it."""
    writer = ConversionWriter(pool)
    await writer.start()
    clicks = [{**CLICK, "click_id": f"u{i}"} for i in range(4)]
    watcher = await asyncpg.connect(settings.database_url)
    try:
        created = await asyncio.gather(
            *(writer.record(usd_conversion(c, "t", Decimal(1), "pending")) for c in clicks)
        )
        assert [r[0] for r in created] == ["created"] * 4
        holder = await pool.acquire()
        hold = holder.transaction()
        await hold.start()
        try:
            await holder.execute("SELECT FROM conversions WHERE click_id = 'u0' FOR UPDATE")
            # Submitted together, they make one batch, the held click first.
            held = asyncio.ensure_future(writer.record(usd_conversion(clicks[0], "t", Decimal(2))))
            others = asyncio.gather(
                *(
                    writer.record(usd_conversion(c, "t", Decimal(2), status))
                    for c in clicks[1:]
                    for status in ("approved", "rejected")
                )
            )
            query = "SELECT click_id, status FROM conversions WHERE click_id IN ('u1', 'u2', 'u3')"
            deadline = asyncio.get_running_loop().time() + 10
            rejected = {"u1": "rejected", "u2": "rejected", "u3": "rejected"}
            while dict(await watcher.fetch(query)) != rejected:
                assert asyncio.get_running_loop().time() < deadline, "updates waited in line"
                await asyncio.sleep(0.02)
            updated = await asyncio.wait_for(others, 10)
            assert [r[0] for r in updated] == ["updated"] * 6
            new = usd_conversion({**CLICK, "click_id": "n1"}, "t")
            assert (await asyncio.wait_for(writer.record(new), 10))[0] == "created"
            assert not held.done()
            # Its caller gives up (a handler cancelled at shutdown): the update goes on.
            held.cancel()
        finally:
            await hold.rollback()
            await pool.release(holder)
        with pytest.raises(asyncio.CancelledError):
            await held
    finally:
        await writer.close()  # once the held update is through
        await watcher.close()
    statuses = dict(await pool.fetch("SELECT click_id, status FROM conversions"))
    assert statuses == {"u0": "approved", **rejected, "n1": "approved"}


async def test_updates_waiting_past_the_limit_are_refused_at_once(pool):
    """Updates that wait (here on a conversion another transaction holds) count against
    the writer's `max_pending`, as queued postbacks do: the next one is refused at once."""
    writer = ConversionWriter(pool, max_pending=1)
    await writer.start()
    try:
        await writer.record(usd_conversion(CLICK, "t", Decimal(1), "pending"))
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT FROM conversions WHERE click_id = 'c1' FOR UPDATE")
            waiting = asyncio.ensure_future(writer.record(usd_conversion(CLICK, "t", Decimal(2))))
            deadline = asyncio.get_running_loop().time() + 10
            while not writer.updates:
                assert asyncio.get_running_loop().time() < deadline, "the update never started"
                await asyncio.sleep(0.01)
            with pytest.raises(BatchQueueFullError):
                await writer.record(usd_conversion(CLICK, "t", Decimal(3), "rejected"))
        assert (await waiting)[0] == "updated"
    finally:
        await writer.close()
