"""Postback log hygiene: failed postbacks cut to a few KB and limited per address;
authenticated networks never limited; expired rows deleted in batches."""

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from redis.asyncio import Redis

from tests.test_postback import make_click
from tracker.devstack import free_port
from tracker.settings import Settings
from tracker.sink.housekeeping import Housekeeper
from tracker.sink.orphans import orphan_matcher
from tracker.store.partitions import ensure_partitions
from tracker.store.postback_log import Inbound, dumps_with_log, log_fields, truncated_for_log
from tracker.store.ratelimit import FailureLimiter
from tracker.web.appkeys import POSTBACK_GUARD

JUNK = {f"p{i:03d}": "x" * 2048 for i in range(97)}  # about 200 KB


def inbound(params, raw="", **extra):
    return Inbound(params, "GET", raw, datetime.now(UTC), "10.0.0.1", **extra)


@pytest.mark.faults
async def test_junk_is_capped_and_limited_while_networks_pass(client, api, pool):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    # Freeze the limiter's minute so the figures do not depend on when the test runs.
    client.app[POSTBACK_GUARD].limiter.clock = lambda: 1_000_000.0 * 60 + 1
    gate = asyncio.Semaphore(16)

    async def junk(i):
        async with gate:
            resp = await client.post("/postback", data={"clickid": f"junk{i}", **JUNK})
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    async def network(i):
        async with gate:
            params = {"clickid": click_id, "txid": f"t{i}", "token": token}
            if i % 5 == 0:  # an orphan: its click is not known yet, but the token is
                params["clickid"] = f"early{i}"
            resp = await client.post("/postback", data={**params, **JUNK})
            return resp.status, (await resp.json()).get("result")

    junk_results, network_results = await asyncio.gather(
        asyncio.gather(*(junk(i) for i in range(1000))),
        asyncio.gather(*(network(i) for i in range(100))),
    )
    statuses = [status for status, _, _ in junk_results]
    refused = [(body, retry) for status, body, retry in junk_results if status == 429]
    assert (statuses.count(404), statuses.count(429)) == (60, 940), sorted(set(statuses))
    assert all(
        body["error"] == "too many failed postbacks from this address" for body, _ in refused
    )
    assert all(retry is not None and 1 <= int(retry) <= 60 for _, retry in refused)
    assert sorted(network_results) == [(200, "created")] * 80 + [(404, "unmatched")] * 20

    rows = await pool.fetch(
        "SELECT octet_length(raw) + octet_length(params::text) AS size, truncated, params "
        "FROM postback_log WHERE click_id LIKE 'junk%'"
    )
    sizes = [row["size"] for row in rows]
    assert len(rows) == 60
    assert all(row["truncated"] for row in rows)
    assert max(sizes) <= 4096
    assert all(row["params"]["clickid"].startswith("junk") for row in rows)
    # Authenticated orphans are cut too, but logged every one, with their click id and token.
    orphans = await pool.fetch(
        "SELECT params, truncated FROM postback_log WHERE click_id LIKE 'early%'"
    )
    assert len(orphans) == 20
    assert all(o["truncated"] and o["params"]["token"] == token for o in orphans)
    total = await pool.fetchval(
        "SELECT sum(octet_length(raw) + octet_length(params::text)) FROM postback_log"
    )
    print(
        f"junk: {statuses.count(404)} logged, {statuses.count(429)} refused (429); "
        f"largest junk row {max(sizes)} B; network postbacks {len(network_results)}, none 429; "
        f"whole log {total} B for {len(rows) + 100} rows"
    )


async def test_refused_without_a_token_counts_authenticated_failure_does_not(client, api):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    guard = client.app[POSTBACK_GUARD]
    guard.limiter.limit = 3
    guard.limiter.clock = lambda: 2_000_000.0 * 60 + 5
    # Passed authentication but invalid (an unknown status): not counted.
    for _ in range(5):
        resp = await client.get(
            "/postback", params={"clickid": click_id, "token": token, "status": "bogus"}
        )
        assert resp.status == 400
    for _ in range(3):
        resp = await client.get("/postback", params={"clickid": click_id, "token": "wrong"})
        assert resp.status == 403
    resp = await client.get("/postback", params={"clickid": click_id, "token": "wrong"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "55"
    # Still over the limit for junk, never for the network.
    resp = await client.get("/postback", params={"clickid": click_id, "token": token})
    assert resp.status == 200


async def test_limiter_counts_in_process_when_redis_is_down():
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = FailureLimiter(dead, limit=2, clock=lambda: 600.0)
    try:
        assert [await limiter.hit("a") for _ in range(3)] == [None, None, 60]
        assert await limiter.hit("b") is None
        limiter.clock = lambda: 661.0  # the next minute
        assert await limiter.hit("a") is None
    finally:
        await dead.aclose()


def test_small_postbacks_are_logged_whole():
    small = inbound({"clickid": "abc", "payout": "1.5"}, "clickid=abc&payout=1.5")
    assert truncated_for_log(small, 4096) is small


def test_large_postbacks_are_cut():
    big = inbound(
        {**JUNK, "clickid": "abc"}, "r" * 300_000, signature="s" * 5000, path_token="t" * 9000
    )
    cut = truncated_for_log(big, 4096)
    assert cut.truncated
    size = len(cut.raw) + sum(len(k) + len(v) + 6 for k, v in cut.params.items())
    size += len(cut.signature or "") + len(cut.path_token or "")
    assert size <= 4096
    assert len(cut.params) >= 4


def test_cutting_keeps_utf8_whole_and_drops_nul():
    text = "é" * 5000
    cut = truncated_for_log(inbound({"v": text}, "a\x00b" + text), 2048)
    assert "\x00" not in cut.raw
    assert cut.raw.startswith("ab")
    assert set(cut.params["v"]) == {"é"}
    assert len(cut.params["v"].encode()) <= 256


async def insert_log(pool, age_days, result, n=1):
    when = datetime.now(UTC) - timedelta(days=age_days)
    await ensure_partitions(pool, "postback_log", [when])
    await pool.executemany(
        "INSERT INTO postback_log (received_at, result, method, raw, params) "
        "VALUES ($1, $2, 'GET', '', '{}')",
        [(when, result)] * n,
    )


def test_batch_json_carries_log_columns_cleaned_only_when_dirty():
    clean = inbound({"clickid": "c1"}, raw="clickid=c1")
    # A NUL in the path token and a lone surrogate in the forwarded address: Postgres and
    # JSON refuse them, so the log columns of the whole batch are cleaned as log_fields does.
    dirty = Inbound(
        {"clickid": "c2"}, "GET", "c2", datetime.now(UTC), "\udcff", path_token="t\x00k"
    )
    rows = orjson.loads(dumps_with_log([{"idx": 0, "log": clean}]))
    assert rows == [{"idx": 0, "log": orjson.loads(orjson.dumps(log_fields(clean)))}]
    rows = orjson.loads(dumps_with_log([{"idx": 0, "log": clean}, {"idx": 1, "log": dirty}]))
    assert rows[1]["log"]["path_token"] == "tk"
    assert rows[1]["log"]["client_ip"] == "\ufffd"
    assert rows[0]["log"]["receipt_id"] == clean.receipt_id
    nul_only = inbound({"clickid": "c3"}, raw="a\x00b")
    assert orjson.loads(dumps_with_log([{"log": nul_only}]))[0]["log"]["raw"] == "ab"


async def test_retention_deletes_old_rows_in_batches(settings, pool, redis):
    """Refused rows past their shorter retention are deleted in batches; every row past
    the general retention goes with its daily partition."""
    settings = settings.model_copy(update={"postback_log_cleanup_batch": 7})
    await insert_log(pool, 100, "created", 20)  # older than 90 days: gone
    await insert_log(pool, 80, "created", 3)  # kept
    await insert_log(pool, 20, "invalid", 4)  # refused, older than 14 days: gone
    await insert_log(pool, 20, "rejected-auth", 2)  # gone
    await insert_log(pool, 20, "unmatched", 11)  # waits for its click: kept
    await insert_log(pool, 100, "unmatched", 2)  # older than 90 days: gone
    await insert_log(pool, 20, "duplicate", 5)  # kept
    await insert_log(pool, 10, "invalid", 6)  # kept
    async with orphan_matcher(pool, redis, settings) as matcher:
        keeper = Housekeeper(pool, matcher, settings)
        assert await keeper.purge_log() == 6
        done = await keeper.maintain()
    day = (datetime.now(UTC) - timedelta(days=100)).strftime("%Y%m%d")
    assert f"postback_log_p{day}" in done.dropped
    rows = await pool.fetch("SELECT result, count(*) FROM postback_log GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in rows] == [
        ("created", 3),
        ("duplicate", 5),
        ("invalid", 6),
        ("unmatched", 11),
    ]


async def test_retention_runs_in_the_background(settings, pool, redis):
    await insert_log(pool, 100, "created", 3)
    settings = settings.model_copy(
        update={"postback_log_cleanup_seconds": 0.05, "maintain_seconds": 0.05}
    )
    async with orphan_matcher(pool, redis, settings) as matcher:
        keeper = Housekeeper(pool, matcher, Settings(**settings.model_dump()))
        await keeper.start()
        try:
            for _ in range(200):
                if not await pool.fetchval("SELECT count(*) FROM postback_log"):
                    break
                await asyncio.sleep(0.05)
        finally:
            await keeper.close()
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 0
