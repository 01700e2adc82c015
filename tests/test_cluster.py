"""The tracker on a 3-master, 3-replica Redis Cluster: end to end, then failovers under
click load (`pytest -m cluster -s` shows the figures)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.conftest import BROWSER, Api, clickid_from, start_client
from tracker.devstack import RedisClusterServer
from tracker.domain.clickid import click_shard, new_click_id
from tracker.settings import Settings
from tracker.sink.clicks import ClickSink
from tracker.sink.orphans import orphan_matcher
from tracker.store import keys
from tracker.store.auth_failures import AuthFailures
from tracker.store.clicks import ClickWriter
from tracker.store.ratelimit import FailureLimiter
from tracker.store.redis import PackedConnection, create_redis, is_cluster
from tracker.web.app import create_app
from tracker.web.appkeys import CLICK_WRITER

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    server = RedisClusterServer(tmp_path_factory.mktemp("cluster"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def cluster_settings(settings: Settings, redis_cluster: RedisClusterServer) -> Settings:
    """The test's settings on the cluster, each click batch confirmed by a replica."""
    redis_cluster.wait_until_ok()
    client = create_redis(redis_cluster.url(), cluster=True)
    await client.flushall()
    await client.aclose()
    return settings.model_copy(
        update={
            "redis_url": redis_cluster.url(),
            "redis_cluster": True,
            "redis_wait_replicas": 1,
            "redis_wait_timeout_ms": 200,
            "click_write_timeout": 0.5,  # twice the WAIT and some (the settings' rule)
        }
    )


@pytest.fixture
async def cluster_redis(cluster_settings: Settings) -> AsyncIterator[Redis]:
    client = create_redis(cluster_settings.redis_url, timeout=2.0, cluster=True)
    assert is_cluster(client)
    await client.initialize()  # type: ignore[attr-defined]
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def running_sink(
    pool: asyncpg.Pool, settings: Settings, consumer: str
) -> AsyncIterator[ClickSink]:
    """A sink with orphan re-matching on a client of its own (its reads block)."""
    redis = create_redis(settings.redis_url, timeout=1.0, cluster=True)
    async with orphan_matcher(pool, redis, settings) as matcher:
        sink = ClickSink(
            redis,
            pool,
            consumer=consumer,
            block_ms=100,
            claim_idle_ms=1000,
            housekeeping_seconds=0.2,
            on_stored=matcher.rematch,
            shards=settings.redis_shards,
        )
        task = asyncio.create_task(sink.run())
        try:
            yield sink
        finally:
            sink.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
    await redis.aclose()


async def drained(sink: ClickSink, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if not await sink.backlog():
                return
        except Exception:  # a node failing over: ask again
            pass
        assert time.monotonic() < deadline, "the sink did not drain the click streams"
        await asyncio.sleep(0.1)


async def click(client: Any, path: str, visitor: int) -> str | None:
    """A click by visitor number `visitor` (no cookie: its browser names it); its id on a
    302, else None."""
    client.session.cookie_jar.clear()
    resp = await client.get(
        path, headers={"User-Agent": f"{BROWSER} v{visitor}"}, allow_redirects=False
    )
    await resp.release()
    return clickid_from(resp.headers["Location"]) if resp.status == 302 else None


async def test_end_to_end_on_the_cluster(cluster_settings, cluster_redis, pool):
    client = await start_client(create_app(cluster_settings), cluster_settings)
    try:
        api = Api(client)
        setup = await api.setup_campaign(payout="3.00")
        token = setup["network"]["postback_token"]
        path = urlsplit(setup["campaign"]["click_url"]).path
        # 20 visitors, two clicks each: each visitor's clicks share its shard.
        ids = [await click(client, path, i % 20) for i in range(40)]
        assert all(ids)
        click_ids = [i for i in ids if i is not None]
        shards = {click_shard(i) for i in click_ids}
        assert len(shards) >= 4 and shards <= set(range(cluster_settings.redis_shards))
        for first, second in zip(click_ids[:20], click_ids[20:], strict=True):
            assert click_shard(first) == click_shard(second)
        nodes = {cluster_redis.get_node_from_key(keys.click_stream(s)).name for s in shards}
        assert len(nodes) == 3  # the clicks are on every master

        # Readiness sums the backlog over the shards' streams, each asked on its node.
        resp = await client.get("/readyz")
        ready = await resp.json()
        assert resp.status == 200, ready
        assert ready["checks"]["sink_clicks"]["ok"]
        assert ready["checks"]["sink_clicks"]["lag_seconds"] >= 0

        async def postback(click_id: str, txid: str) -> tuple[int, Any]:
            resp = await client.get(
                "/postback", params={"token": token, "clickid": click_id, "txid": txid}
            )
            return resp.status, await resp.json()

        # An orphan: its record gone from Redis before the sink stored the click.
        orphan = click_ids[0]
        assert await cluster_redis.delete(keys.click_key(orphan)) == 1
        assert (await postback(orphan, "orphan"))[0] == 404
        # Matched from Redis (one MGET per shard in the batch).
        results = await asyncio.gather(*(postback(c, f"t{c}") for c in click_ids[1:11]))
        assert [(status, body["result"]) for status, body in results] == [(200, "created")] * 10

        async with running_sink(pool, cluster_settings, "e2e") as sink:
            await drained(sink)
            deadline = time.monotonic() + 10
            while await pool.fetchval("SELECT count(*) FROM conversions") < 11:
                assert time.monotonic() < deadline, "the orphan postback was not matched"
                await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM clicks") == 40
        assert await pool.fetchval("SELECT count(*) FROM clicks WHERE is_unique") == 20
        today = datetime.now(UTC).date().isoformat()
        report = await api.call("GET", f"/api/reports?from={today}&to={today}&group_by=campaign")
        [row] = report["rows"]
        assert (row["clicks"], row["conversions"], row["revenue"]) == (40, 11, "33.00")
    finally:
        await client.close()


@pytest.mark.faults
async def test_failovers_under_click_load_lose_no_click(
    cluster_settings, cluster_redis, pool, redis_cluster, tmp_path: Path
):
    """`CLUSTER FAILOVER` on one replica, then `kill -9` of another master, while clicks
    arrive: every click that got a 302 is found by its postback, and each conversion is
    counted once."""
    client = await start_client(create_app(cluster_settings), cluster_settings)
    redirected: list[str] = []
    refused = 0
    stop = asyncio.Event()
    try:
        api = Api(client)
        setup = await api.setup_campaign(payout="1.00")
        token = setup["network"]["postback_token"]
        path = urlsplit(setup["campaign"]["click_url"]).path

        async def load(worker: int) -> None:
            nonlocal refused
            n = 0
            while not stop.is_set():
                n += 1
                click_id = await click(client, path, worker * 100_000 + n)
                if click_id is None:
                    refused += 1
                else:
                    redirected.append(click_id)

        async def clicks_after(count: int) -> None:
            target = len(redirected) + count
            deadline = time.monotonic() + 20
            while len(redirected) < target:
                assert time.monotonic() < deadline, "clicks stopped"
                await asyncio.sleep(0.02)

        async with (
            running_sink(pool, cluster_settings, "a"),
            running_sink(pool, cluster_settings, "b"),
        ):
            workers = [asyncio.create_task(load(w)) for w in range(8)]
            await clicks_after(200)
            # A graceful failover: the replica of shard 0's master takes over.
            graceful_master = _port(cluster_redis, keys.click_stream(0))
            replica = redis_cluster.replica_of(graceful_master)
            started = time.monotonic()
            await asyncio.to_thread(redis_cluster.failover, replica)
            graceful_seconds = time.monotonic() - started
            await clicks_after(200)
            # A crash: another master is killed; its replica is promoted.
            roles = await asyncio.to_thread(redis_cluster.roles)
            killed = next(p for p, role in roles.items() if role == "master" and p != replica)
            before_kill = len(redirected)
            started = time.monotonic()
            redis_cluster.kill(killed)
            await asyncio.to_thread(redis_cluster.wait_until_ok)
            crash_seconds = time.monotonic() - started
            await clicks_after(200)
            stop.set()
            await asyncio.gather(*workers)
            writer = client.server.app[CLICK_WRITER]
            deadline = time.monotonic() + 30
            while (
                writer.degraded
                or writer.spool.has_clicks
                or list(Path(cluster_settings.spool_dir).glob("clicks-*.jsonl"))
            ):
                assert time.monotonic() < deadline, "the spool was not replayed"
                await asyncio.sleep(0.1)
            # Both sinks share the shards; wait for them to store everything.
            sinks_done = time.monotonic() + 30
            while await pool.fetchval("SELECT count(*) FROM clicks") < len(set(redirected)):
                assert time.monotonic() < sinks_done, "the sinks did not store every click"
                await asyncio.sleep(0.1)

            async def postback(click_id: str) -> tuple[int, str]:
                resp = await client.get(
                    "/postback", params={"token": token, "clickid": click_id, "txid": "x"}
                )
                body = await resp.json()
                return resp.status, str(body.get("result", body.get("error")))

            results: list[tuple[int, str]] = []
            for start in range(0, len(redirected), 50):
                part = redirected[start : start + 50]
                results += await asyncio.gather(*(postback(c) for c in part))
            again = await asyncio.gather(*(postback(c) for c in redirected[:100]))
        lost = [c for c, (status, _) in zip(redirected, results, strict=True) if status != 200]
        created = sum(1 for _, result in results if result == "created")
        conversions = await pool.fetchval("SELECT count(*) FROM conversions")
        stored = await pool.fetchval("SELECT count(*) FROM clicks")
        rollup = await pool.fetchval("SELECT coalesce(sum(clicks), 0) FROM click_rollups")
        print(
            f"\ncluster failovers: {len(redirected)} clicks redirected ({refused} refused 503), "
            f"{before_kill} before the kill; graceful failover {graceful_seconds:.2f} s, "
            f"kill -9 to cluster ok {crash_seconds:.2f} s; "
            f"{writer.spooled} spooled ({writer.unconfirmed} not confirmed by a replica), "
            f"{writer.replayed} replayed; clicks stored {stored}, in rollups {rollup}; "
            f"postbacks matched {len(redirected) - len(lost)}, lost {len(lost)}; "
            f"conversions {conversions} (created {created}, doubled "
            f"{conversions - len(redirected)})"
        )
        assert len(redirected) >= 600 and len(set(redirected)) == len(redirected)
        assert lost == []
        assert created == len(redirected) == conversions == stored == rollup
        assert {result for _, result in again} == {"duplicate"}
    finally:
        stop.set()
        await client.close()
        # Bring the killed node back as a replica for any later test on this cluster.
        with contextlib.suppress(Exception):
            if redis_cluster.processes[killed].poll() is not None:
                redis_cluster.start_node(killed)


def _port(redis: Redis, key: str) -> int:
    return int(redis.get_node_from_key(key).port)  # type: ignore[attr-defined]


async def test_other_keys_work_on_the_cluster(cluster_redis):
    """Every other key is one per call (or one slot per pipeline): no CROSSSLOT, and the
    limiters count in Redis, not in their in-memory fallback."""
    limiter = FailureLimiter(cluster_redis, limit=3)
    assert [await limiter._count("192.0.2.1", 7) for _ in range(2)] == [1, 2]
    assert await cluster_redis.get(keys.failed_postback_key("192.0.2.1", 7)) == b"2"
    assert limiter._local == {}

    failures = AuthFailures(limit=2, window_seconds=60)
    for _ in range(2):
        await failures.record(cluster_redis, "192.0.2.2")
    assert await failures.retry_after(cluster_redis, "192.0.2.2") == 60
    assert await cluster_redis.get(keys.auth_failures_key("192.0.2.2")) == b"2"

    assert await cluster_redis.incr(keys.CONFIG_VERSION) == 1
    await cluster_redis.set(keys.ui_session_key("h"), b"s", ex=60)
    assert await cluster_redis.get(keys.ui_session_key("h")) == b"s"

    # The postback queue's group, read and its acknowledge-and-delete transaction.
    await cluster_redis.xgroup_create(
        keys.POSTBACK_STREAM, keys.POSTBACK_GROUP, id="0", mkstream=True
    )
    entry = await cluster_redis.xadd(keys.POSTBACK_STREAM, {b"d": b"{}"})
    await cluster_redis.xreadgroup(keys.POSTBACK_GROUP, "q", {keys.POSTBACK_STREAM: ">"}, count=10)
    async with cluster_redis.pipeline(transaction=True) as pipe:
        pipe.xack(keys.POSTBACK_STREAM, keys.POSTBACK_GROUP, entry)
        pipe.xdel(keys.POSTBACK_STREAM, entry)
        assert await pipe.execute() == [1, 1]


async def test_every_node_connection_packs_with_hiredis(cluster_redis):
    """The cluster client takes no connection class: the one `create_redis` sets reaches
    every node it found, and the connections they made."""
    await cluster_redis.set("k", "v")
    nodes = cluster_redis.get_nodes()
    assert nodes  # every node it knows of (a replica lost in a failover test rejoins later)
    assert all(node.connection_class is PackedConnection for node in nodes)
    made = [conn for node in nodes for conn in node._connections]
    assert made and all(isinstance(conn, PackedConnection) for conn in made)


async def test_a_dead_sinks_entries_are_claimed_by_another(cluster_settings, cluster_redis, pool):
    """Entries a sink read on every shard but never acknowledged are stored by another."""
    # A replica's acknowledgement may take a while on a busy machine: no spool here.
    writer = ClickWriter(
        cluster_redis, shards=cluster_settings.redis_shards, wait_replicas=1, wait_timeout_ms=5000
    )
    await writer.start()
    record = b'{"click_id":"%s","campaign_id":1,"offer_id":2,"traffic_source_id":3,"created_ms":%d}'
    now_ms = int(time.time() * 1000)
    # Shards 8 and above (ids made when P was larger) have their entries on stream N mod P.
    ids = [new_click_id(now_ms, s) for s in [*range(12), 300, 511]]
    try:
        await asyncio.gather(*(writer.write(i, record % (i.encode(), now_ms), 60) for i in ids))
    finally:
        await writer.close()
    for stream in keys.click_streams(cluster_settings.redis_shards):
        with contextlib.suppress(ResponseError):
            await cluster_redis.xgroup_create(stream, keys.SINK_GROUP, id="0", mkstream=True)
        await cluster_redis.xreadgroup(keys.SINK_GROUP, "dead", {stream: ">"}, count=100)
    async with running_sink(pool, cluster_settings, "alive") as sink:
        await drained(sink)
    stored = await pool.fetchval("SELECT count(*) FROM clicks WHERE click_id = any($1)", ids)
    assert stored == len(ids)
    assert await pool.fetchval("SELECT count(*) FROM click_dead_letters") == 0
    assert await cluster_redis.exists(*(keys.click_key(i) for i in ids)) == len(ids)


async def test_wait_on_a_single_redis_without_replicas(redis):
    """WAIT asked of a Redis with no replica: the first batch finds none there and is
    confirmed; a script flushed from Redis is loaded again."""
    writer = ClickWriter(redis, wait_replicas=1, wait_timeout_ms=50)
    await writer.start()
    try:
        first = new_click_id(shard=1)
        assert await writer.write(first, b'{"is_unique":null}', 60, "uv:{s1}:1:v", 60) is True
        await redis.script_flush()
        writer._replicas_seen.clear()  # WAIT again: the script goes in the pipeline
        second = new_click_id(shard=1)
        assert await writer.write(second, b'{"is_unique":null}', 60, "uv:{s1}:1:v", 60) is False
    finally:
        await writer.close()
    assert writer.unconfirmed == 0
    assert await redis.get(keys.click_key(second)) == b'{"is_unique":false}'
