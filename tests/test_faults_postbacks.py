"""Postbacks through a Postgres outage, a sink killed mid-drain, and duplicate storms.

The outage tests run `tracker serve` and `tracker sink` as processes against a
Redis and a Postgres of their own, and stop Postgres under load.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from tests.test_lifecycle import prepared
from tracker.devstack import PostgresServer, RedisServer, free_port, wait_for_port
from tracker.store import keys
from tracker.store.db import migrate

pytestmark = pytest.mark.faults
API_KEY = "faults-api-key"
ROOT = Path(__file__).resolve().parent.parent


class Stack:
    def __init__(self, root: Path) -> None:
        self.pg = PostgresServer(root / "postgres", free_port(), fast_unsafe=True)
        self.redis = RedisServer(root / "redis", free_port(), persistent=False)
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TRACKER_DATABASE_URL": self.pg.dsn(),
            "TRACKER_REDIS_URL": self.redis.url(),
            "TRACKER_HTTP_PORT": str(self.port),
            "TRACKER_API_KEY": API_KEY,
            "TRACKER_PG_TIMEOUT": "2",
            "TRACKER_SINK_CLAIM_IDLE_MS": "1000",
            "TRACKER_SINK_BLOCK_MS": "100",
        }
        self.web: subprocess.Popen[bytes] | None = None
        self.sinks: list[subprocess.Popen[bytes]] = []

    def start_web(self) -> None:
        self.web = subprocess.Popen([sys.executable, "-m", "tracker", "serve"], env=self.env)
        wait_for_port(self.port, "tracker serve")

    def start_sink(self) -> subprocess.Popen[bytes]:
        sink = subprocess.Popen([sys.executable, "-m", "tracker", "sink"], env=self.env)
        self.sinks.append(sink)
        return sink

    def stop_sinks(self, sig: int = signal.SIGTERM) -> None:
        for sink in self.sinks:
            if sink.poll() is None:
                sink.send_signal(sig)
                sink.wait(timeout=20)
        self.sinks.clear()

    def stop(self) -> None:
        self.stop_sinks()
        if self.web is not None:
            self.web.terminate()
            self.web.wait(timeout=20)


@contextlib.contextmanager
def running_stack(prefix: str, **env: str) -> Iterator[Stack]:
    """Postgres, Redis and `tracker serve` in a temporary folder, with `env` added to the
    tracker processes' environment; all stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    stack = Stack(root)
    stack.env.update(env)
    try:
        stack.pg.start()
        stack.redis.start()
        asyncio.run(migrate(stack.pg.dsn()))
        stack.start_web()
        yield stack
    finally:
        stack.stop()
        stack.redis.stop()
        stack.pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("tracker-faults-pb-") as stack:
        yield stack


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{stack.port}", connector=connector) as s:
        yield s


async def until(check: Any, what: str, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def campaign_with_clicks(
    stack: Stack, http: aiohttp.ClientSession, clicks: int
) -> tuple[str, list[str]]:
    """A fresh campaign, `clicks` clicks stored in Postgres; half of them gone from Redis
    so that their postbacks look the click up in Postgres."""
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def create(path: str, body: dict[str, Any]) -> Any:
        async with http.post(path, json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    source = await create("/api/traffic-sources", {"name": "S"})
    network = await create("/api/affiliate-networks", {"name": "N"})
    offer_url = "https://o.example/?c={clickid}"
    offer = await create(
        "/api/offers",
        {"name": "O", "url": offer_url, "affiliate_network_id": network["id"], "payout": "2"},
    )
    campaign = await create(
        "/api/campaigns",
        {"name": "C", "traffic_source_id": source["id"],
         "offers": [{"offer_id": offer["id"], "weight": 1}]},
    )  # fmt: skip
    path = urlsplit(campaign["click_url"]).path

    async def click() -> str:
        async with http.get(path, allow_redirects=False) as resp:
            assert resp.status == 302
            return resp.headers["Location"].split("c=")[1]

    ids = list(await asyncio.gather(*(click() for _ in range(clicks))))
    conn = await asyncpg.connect(stack.pg.dsn())
    try:

        async def stored() -> bool:
            count = await conn.fetchval(
                "SELECT count(*) FROM clicks WHERE click_id = any($1::text[])", ids
            )
            return bool(count == len(ids))

        await until(stored, "the sink to store the clicks")
    finally:
        await conn.close()
    redis = Redis.from_url(stack.redis.url())
    await redis.delete(*(keys.click_key(c) for c in ids[::2]))
    await redis.aclose()
    return network["postback_token"], ids


async def queue_backlog(redis: Redis) -> int:
    try:
        groups = await redis.xinfo_groups(keys.POSTBACK_STREAM)
    except Exception:
        return 0
    return sum(int(g["pending"]) + int(g.get("lag") or 0) for g in groups)


async def figures(stack: Stack, sent: list[tuple[str, str]], queued: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(stack.pg.dsn())
    try:
        click_ids = sorted({c for c, _ in sent})
        rows = await conn.fetch(
            "SELECT click_id, txid, count(*) AS n FROM conversions "
            "WHERE click_id = any($1::text[]) GROUP BY 1, 2",
            click_ids,
        )
        logged = await conn.fetchval(
            "SELECT count(DISTINCT receipt_id) FROM postback_log WHERE receipt_id = any($1)", queued
        )
    finally:
        await conn.close()
    stored = {(r["click_id"], r["txid"]): r["n"] for r in rows}
    distinct = set(sent)
    return {
        "postbacks": len(sent),
        "distinct_txids": len(distinct),
        "conversions": sum(stored.values()),
        "lost": len(distinct - stored.keys()),
        "doubled": sum(n - 1 for n in stored.values() if n > 1),
        "queued": len(queued),
        "queued_logged": logged,
    }


async def test_postbacks_through_a_postgres_outage(stack: Stack, http: aiohttp.ClientSession):
    stack.start_sink()
    try:
        token, click_ids = await campaign_with_clicks(stack, http, 300)
        unique = [(click_ids[i % 300], f"tx{i}") for i in range(400)]
        sent = unique + unique[::8]  # and 50 exact duplicates
        answers: Counter[tuple[int, str]] = Counter()
        queued: list[str] = []
        limit = asyncio.Semaphore(30)

        async def postback(click_id: str, txid: str) -> None:
            async with limit:
                params = {"clickid": click_id, "txid": txid, "token": token, "payout": "1.5"}
                async with http.get("/postback", params=params) as resp:
                    body = await resp.json()
                    answers[(resp.status, body.get("result", body.get("error")))] += 1
                    if body.get("result") == "queued":
                        queued.append(body["receipt_id"])

        async def load() -> None:
            tasks = []
            for click_id, txid in sent:  # spread over ~13 s, across the outage
                tasks.append(asyncio.create_task(postback(click_id, txid)))
                await asyncio.sleep(0.03)
            await asyncio.gather(*tasks)

        loader = asyncio.create_task(load())
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.pg.stop)
        await asyncio.sleep(10)
        await asyncio.to_thread(stack.pg.start)
        await loader

        redis = Redis.from_url(stack.redis.url())
        try:
            await until(lambda: _drained(redis), "the postback queue to drain", 30)
        finally:
            await redis.aclose()
        result = await figures(stack, sent, queued)
    finally:
        stack.stop_sinks()
    print(f"\npostgres outage 10 s: answers {dict(answers)}; figures {result}")
    assert all(status == 200 for status, _ in answers), answers
    assert {outcome for _, outcome in answers} <= {"created", "duplicate", "queued"}
    assert result["queued"] > 0  # the outage was felt
    assert (result["lost"], result["doubled"]) == (0, 0)
    assert result["conversions"] == result["distinct_txids"]
    assert result["queued_logged"] == result["queued"]


async def _drained(redis: Redis) -> bool:
    return await queue_backlog(redis) == 0


async def test_sink_killed_while_draining_the_queue(stack: Stack, http: aiohttp.ClientSession):
    stack.start_sink()
    token, click_ids = await campaign_with_clicks(stack, http, 200)
    stack.stop_sinks()
    unique = [(click_ids[i % 200], f"k{i}") for i in range(800)]
    sent = unique + unique[::10]
    queued: list[str] = []
    limit = asyncio.Semaphore(40)

    async def postback(click_id: str, txid: str) -> None:
        async with limit:
            params = {"clickid": click_id, "txid": txid, "token": token}
            async with http.get("/postback", params=params) as resp:
                body = await resp.json()
                assert (resp.status, body["result"]) == (200, "queued"), body
                queued.append(body["receipt_id"])

    await asyncio.to_thread(stack.pg.stop)
    try:
        await asyncio.gather(*(postback(c, t) for c, t in sent))
    finally:
        await asyncio.to_thread(stack.pg.start)
    conn = await asyncpg.connect(stack.pg.dsn())
    redis = Redis.from_url(stack.redis.url())
    try:
        first = stack.start_sink()

        async def some_applied() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM postback_log WHERE receipt_id = any($1)", queued
            )
            return bool(n > 0)

        await until(some_applied, "the sink to start draining")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        applied_before_kill = await conn.fetchval(
            "SELECT count(*) FROM postback_log WHERE receipt_id = any($1)", queued
        )
        stack.sinks.remove(first)
        stack.start_sink()
        await until(lambda: _drained(redis), "the second sink to drain the queue", 30)
        result = await figures(stack, sent, queued)
    finally:
        stack.stop_sinks()
        await conn.close()
        await redis.aclose()
    result["applied_before_kill"] = applied_before_kill
    print(f"\nsink kill -9 mid-drain: {result}")
    assert 0 < applied_before_kill < len(sent)
    assert (result["lost"], result["doubled"]) == (0, 0)
    assert result["conversions"] == result["distinct_txids"]
    assert result["queued_logged"] == len(sent)


@pytest.mark.parametrize("policy", ["txid", "ignore", "accept"])
async def test_duplicate_storm(client, api, pool, policy):
    _, click_id, _ = await prepared(client, api, {"duplicate_policy": policy})
    token = await pool.fetchval("SELECT postback_token FROM affiliate_networks")
    params = {"clickid": click_id, "txid": "storm", "token": token, "payout": "5"}

    async def postback() -> tuple[int, str]:
        resp = await client.get("/postback", params=params)
        return resp.status, (await resp.json())["result"]

    answers = Counter(await asyncio.gather(*(postback() for _ in range(200))))
    conversions = await pool.fetchval("SELECT count(*) FROM conversions")
    logged = await pool.fetchval("SELECT count(*) FROM postback_log")
    print(f"\nduplicate storm ({policy}): answers {dict(answers)}, conversions {conversions}")
    assert {status for status, _ in answers} == {200}
    created = answers[(200, "created")]
    assert created == conversions == {"txid": 1, "ignore": 1, "accept": 200}[policy]
    assert answers[(200, "duplicate")] == 200 - created
    assert logged == 200
