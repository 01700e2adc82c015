"""Reports from a streaming replica (TRACKER_REPORTS_DATABASE_URL): a primary and its
replica started by this module, the report's source and lag, writes on the primary,
and a stopped replica."""

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tests.conftest import API_KEY, Api, empty_stores, start_client, store_clicks_late
from tests.test_postback import make_click
from tests.test_remote import Cli
from tests.test_ui import sign_in
from tracker.devstack import PostgresServer, RedisServer, free_port, start_replica
from tracker.settings import Settings
from tracker.store.db import create_pool, migrate
from tracker.store.replica import replica_freshness
from tracker.web.app import create_app

Servers = tuple[PostgresServer, PostgresServer, RedisServer]


@pytest.fixture(scope="module")
def replicated() -> Iterator[Servers]:
    """A primary, a streaming replica of it and a Redis, this module's own."""
    root = Path(tempfile.mkdtemp(prefix="tracker-replica-"))
    root.chmod(0o755)
    primary = PostgresServer(root / "primary", free_port(), fast_unsafe=True)
    redis = RedisServer(root / "redis", free_port(), persistent=False)
    replica: PostgresServer | None = None
    try:
        primary.start()
        asyncio.run(migrate(primary.dsn()))
        replica = start_replica(primary, root / "replica", free_port())
        redis.start()
        yield primary, replica, redis
    finally:
        redis.stop()
        if replica is not None:
            replica.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def settings(replicated: Servers, tmp_path: Path) -> Settings:
    primary, replica, redis = replicated
    await empty_stores(primary.dsn(), redis.url())
    return Settings(
        database_url=primary.dsn(),
        reports_database_url=replica.dsn(),
        reports_lag_notice_seconds=0.5,
        redis_url=redis.url(),
        api_key=API_KEY,
        public_url="http://tracker.test",
        config_refresh_seconds=0.2,
        spool_dir=str(tmp_path / "spool"),
        pg_timeout=2.0,
    )


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """A pool on the primary and a Redis client, for the sink and direct checks."""
    pool = await create_pool(settings.database_url, 1, 4)
    redis = Redis.from_url(settings.redis_url)
    yield pool, redis
    await redis.aclose()
    await pool.close()


def _range() -> dict[str, str]:
    today = datetime.now(UTC).date()
    return {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}


def _cli_range() -> list[str]:
    bounds = _range()
    return ["--from", bounds["from"], "--to", bounds["to"]]


async def report(api: Api, expect: int = 200) -> Any:
    return await api.call("GET", "/api/reports", expect=expect, params=_range())


async def until(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str, within: float = 10
) -> Any:
    """`probe()`'s first answer that is `done`; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r}"
        await asyncio.sleep(0.05)


async def postback(
    client: TestClient[Any, Any], made: dict[str, Any], click_id: str, txid: str
) -> None:
    resp = await client.get(
        "/postback",
        params={
            "clickid": click_id,
            "payout": "3.00",
            "txid": txid,
            "status": "approved",
            "token": made["network"]["postback_token"],
        },
    )
    assert resp.status == 200, await resp.text()


def _figures(body: dict[str, Any]) -> tuple[int, int]:
    return body["totals"]["clicks"], body["totals"]["conversions"]


async def test_reports_read_the_replica_and_say_how_far_behind_it_is(
    client, settings, stores, replicated
):
    pool, redis = stores
    _, replica, _ = replicated
    api = Api(client)
    # Admin writes go to the primary: on the replica any write fails.
    made = await api.setup_campaign()
    standby = await asyncpg.connect(replica.dsn())
    try:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await standby.execute("INSERT INTO traffic_sources (name) VALUES ('x')")

        first = await make_click(client, made["campaign"])
        await store_clicks_late(redis, pool, settings)
        await postback(client, made, first, "T-1")
        body = await until(lambda: report(api), lambda b: _figures(b) == (1, 1), "replayed")
        assert body["source"]["database"] == "replica"
        assert body["source"]["lag_seconds"] is not None and body["source"]["lag_seconds"] >= 0

        # Idle primary: the last replayed transaction ages, yet the replica misses nothing.
        naive = await until(
            lambda: standby.fetchval(
                "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
            ),
            lambda age: age >= 1,
            "last replayed transaction a second old",
        )
        body = await until(
            lambda: report(api), lambda b: b["source"]["lag_seconds"] == 0, "caught up"
        )
        as_of = datetime.fromisoformat(body["source"]["as_of"])
        assert abs((datetime.now(UTC) - as_of).total_seconds()) < 5
        ready = await client.get("/readyz")
        check = (await ready.json())["checks"]["reports_replica"]
        assert ready.status == 200 and check["ok"] and check["required"] is False
        assert check["lag_seconds"] is not None

        # Replay paused: what the primary gets next is missing from reports, and the
        # lag says so; the postback log (primary) has it at once.
        await standby.execute("SELECT pg_wal_replay_pause()")
        paused_at = datetime.now(UTC)
        second = await make_click(client, made["campaign"])
        await store_clicks_late(redis, pool, settings)
        await postback(client, made, second, "T-2")
        assert await pool.fetchval("SELECT count(*) FROM clicks") == 2
        logged = await api.call("GET", "/api/postbacks")
        assert {item["click_id"] for item in logged["items"]} >= {first, second}
        body = await until(
            lambda: report(api), lambda b: (b["source"]["lag_seconds"] or 0) > 0.5, "lag"
        )
        assert _figures(body) == (1, 1)
        assert datetime.fromisoformat(body["source"]["as_of"]) < paused_at
        csv = await client.get(
            "/api/reports",
            params={**_range(), "format": "csv"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert csv.status == 200
        assert csv.headers["X-Report-Database"] == "replica"
        assert float(csv.headers["X-Report-Lag-Seconds"]) > 0.5
        await sign_in(client)
        page = await (await client.get("/ui/", params={"preset": "today"})).text()
        assert 'id="lag-notice"' in page and "s behind" in page
        table = (await Cli(str(client.make_url("")).rstrip("/"))("report", *_cli_range())).stdout
        assert "reports replica" in table and "s behind the primary" in table
        print(
            f"\nidle primary: last replayed transaction {float(naive):.1f} s old, reported lag 0;"
            f" replay paused: report lag {body['source']['lag_seconds']} s, "
            f"figures (clicks, conversions) {_figures(body)} against (2, 2) on the primary"
        )

        await standby.execute("SELECT pg_wal_replay_resume()")
        body = await until(
            lambda: report(api),
            lambda b: _figures(b) == (2, 2) and b["source"]["lag_seconds"] == 0,
            "resumed",
        )
        page = await (await client.get("/ui/", params={"preset": "today"})).text()
        assert 'id="lag-notice"' not in page
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()


def _cluster_pids(server: PostgresServer) -> list[int]:
    """The postmaster of `server` (started by this module) and its children."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    """Every process of `server` stopped (SIGSTOP), as a hung host would be."""
    pids = _cluster_pids(server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.faults
async def test_a_frozen_replica_is_a_503_within_the_postgres_timeout(
    client, settings, stores, replicated
):
    """A replica that hangs: the report gives up with a 503 once its first query has
    waited TRACKER_PG_TIMEOUT (about twice that in all: the stuck connection's release
    waits too), not after the report timeout with a 504; clicks and readiness go on."""
    _, replica, _ = replicated
    api = Api(client)
    made = await api.setup_campaign()
    await report(api)
    with frozen(replica):
        started = time.monotonic()
        resp = await client.get(
            "/api/reports", params=_range(), headers={"Authorization": f"Bearer {API_KEY}"}
        )
        took = time.monotonic() - started
        body = await resp.json()
        assert resp.status == 503, body
        assert "no answer within TRACKER_PG_TIMEOUT" in body["error"]
        assert took < settings.report_timeout
        ready = await client.get("/readyz")
        assert ready.status == 200, await ready.json()
        clicks = [await make_click(client, made["campaign"]) for _ in range(10)]
    body = await until(lambda: report(api), lambda b: b["source"]["lag_seconds"] == 0, "thawed")
    print(
        f"\nreplica frozen: report {resp.status} after {took:.1f} s "
        f"(TRACKER_PG_TIMEOUT {settings.pg_timeout:g} s), readyz {ready.status}, "
        f"clicks redirected {len(clicks)}/10; thawed: report 200, lag 0"
    )


@pytest.mark.faults
async def test_a_stopped_replica_stops_reports_only(client, settings, stores, replicated):
    """Replica down: reports answer 503 naming it (no fallback to the primary); clicks,
    postbacks, admin and readiness go on; a process started meanwhile starts; reports
    come back with the replica."""
    pool, redis = stores
    _, replica, _ = replicated
    api = Api(client)
    made = await api.setup_campaign()
    await report(api)  # the reports pool holds a connection when the replica stops
    replica.stop()
    try:
        resp = await client.get(
            "/api/reports", params=_range(), headers={"Authorization": f"Bearer {API_KEY}"}
        )
        body = await resp.json()
        assert resp.status == 503, body
        assert body["database"] == "replica" and "reports database" in body["error"]
        assert resp.headers["Retry-After"]
        csv = await client.get(
            "/api/reports",
            params={**_range(), "format": "csv"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert csv.status == 503

        ready = await client.get("/readyz")
        checks = (await ready.json())["checks"]
        assert ready.status == 200, checks
        assert checks["reports_replica"]["ok"] is False
        assert checks["reports_replica"]["required"] is False

        late = await start_client(create_app(settings), settings)
        try:
            clicks = [await make_click(late, made["campaign"]) for _ in range(10)]
        finally:
            await late.close()
        clicks += [await make_click(client, made["campaign"]) for _ in range(10)]
        await store_clicks_late(redis, pool, settings)
        for i, click_id in enumerate(clicks[:5]):
            await postback(client, made, click_id, f"D-{i}")
        await api.call("PATCH", f"/api/campaigns/{made['campaign']['id']}", json={"name": "C2"})
        await sign_in(client)
        page = await client.get("/ui/", params={"preset": "today"})
        assert page.status == 200 and "reports database" in await page.text()
        stored = await pool.fetchval("SELECT count(*) FROM clicks")
        converted = await pool.fetchval("SELECT count(*) FROM conversions")
        assert (stored, converted) == (20, 5)
        print(
            f"\nreplica stopped: report {resp.status}, csv {csv.status}, readyz {ready.status}; "
            f"clicks redirected 20/20 (10 by a process started meanwhile), stored {stored}, "
            f"conversions {converted}/5"
        )
    finally:
        replica.start()
    body = await until(
        lambda: report(api),
        lambda b: _figures(b) == (20, 5),
        "back",
        within=15,
    )
    assert body["source"]["database"] == "replica"


async def test_without_the_setting_reports_say_they_read_the_primary(settings):
    primary = settings.model_copy(update={"reports_database_url": ""})
    client = await start_client(create_app(primary), primary)
    try:
        resp = await client.get(
            "/api/reports", params=_range(), headers={"Authorization": f"Bearer {API_KEY}"}
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["source"]["database"] == "primary"
        assert body["source"]["lag_seconds"] == 0
        assert resp.headers["X-Report-Database"] == "primary"
        ready = await (await client.get("/readyz")).json()
        assert "reports_replica" not in ready["checks"]
    finally:
        await client.close()


async def test_a_replica_url_naming_no_database_is_a_503(settings):
    """A wrong database name is the replica's refusal, answered like its outage."""
    wrong = settings.reports_database_url.rsplit("/", 1)[0] + "/no_such_database"
    misnamed = settings.model_copy(update={"reports_database_url": wrong})
    client = await start_client(create_app(misnamed), misnamed)
    try:
        resp = await client.get(
            "/api/reports", params=_range(), headers={"Authorization": f"Bearer {API_KEY}"}
        )
        body = await resp.json()
        assert resp.status == 503, body
        assert "InvalidCatalogNameError" in body["error"]
    finally:
        await client.close()


def test_lag_is_unknown_or_zero_or_the_replay_age():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    base = {"now": now, "in_recovery": True, "streaming": True, "replayed_all": True}
    replayed = now - timedelta(seconds=90)
    assert replica_freshness({**base, "replayed_at": replayed}).lag_seconds == 0
    behind = replica_freshness({**base, "replayed_all": False, "replayed_at": replayed})
    assert (behind.lag_seconds, behind.as_of) == (90, replayed)
    cut_off = replica_freshness({**base, "streaming": False, "replayed_at": replayed})
    assert cut_off.lag_seconds == 90
    assert replica_freshness({**base, "replayed_all": None, "replayed_at": None}).as_of is None
    assert (
        replica_freshness({**base, "in_recovery": False, "replayed_at": None}).lag_seconds is None
    )
