"""Real Redis and PostgreSQL for the suite, started once in a temporary directory."""

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tracker.devstack import PostgresServer, RedisServer, free_port
from tracker.logs import JsonFormatter
from tracker.settings import Settings
from tracker.sink.clicks import ClickSink
from tracker.sink.orphans import orphan_matcher
from tracker.store import keys
from tracker.store.conversions import ConversionPostback
from tracker.store.db import create_pool, list_migrations, migrate
from tracker.store.postback_log import Inbound
from tracker.web.app import create_app, handler_args

API_KEY = "test-api-key"


class LoggedLines(logging.Handler):
    """Every line the suite logs, formatted as in production but without the configured
    secrets to mask, so that a key the code itself writes would show."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if API_KEY in line or _UNMASKED.search(line):
            self.leaks.append(line)


# A credential field or scheme whose value is not the mask.
_UNMASKED = re.compile(
    r"(?i)(?<![a-z0-9])(token|signature|api[_-]?key|secret|password)"
    r"(\\?\"?\s*[=:]\s*\\?\"?)(?!\*\*\*)[A-Za-z0-9]"
    r"|\b(bearer|basic) (?!\*\*\*)[A-Za-z0-9]"
)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """No line logged by the suite shows the API key or an unmasked credential."""
    lines = LoggedLines()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # what production logs
    root.addHandler(lines)
    yield
    root.removeHandler(lines)
    root.setLevel(level)
    assert not lines.leaks, lines.leaks[:5]


@pytest.fixture(scope="session")
def servers() -> Iterator[tuple[PostgresServer, RedisServer]]:
    root = Path(tempfile.mkdtemp(prefix="tracker-test-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port(), fast_unsafe=True)
    rd = RedisServer(root / "redis", free_port(), persistent=False)
    try:
        pg.start()
        rd.start()
        asyncio.run(migrate(pg.dsn()))
        yield pg, rd
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def usd_conversion(
    click: dict[str, Any],
    txid: str,
    payout: Decimal = Decimal("2.50"),
    status: str = "approved",
    parent_txid: str | None = None,
    inbound: Inbound | None = None,
) -> ConversionPostback:
    """A conversion for the writer, in USD, as a postback with `txid` would make it."""
    return ConversionPostback(
        click=click,
        network_id=None,
        dedupe_key=txid,
        txid=txid,
        parent_txid=parent_txid,
        status=status,
        payout=payout,
        currency="USD",
        original_payout=payout,
        original_currency="USD",
        payout_given=True,
        event=None,
        params={},
        inbound=inbound,
    )


async def fresh_database(servers: tuple[PostgresServer, RedisServer], name: str) -> str:
    """The DSN of a new, empty database `name` on the suite's server."""
    pg, _ = servers
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return pg.dsn(name)


async def migrate_to(dsn: str, version: int, folder: Path) -> None:
    """Apply the bundled migrations up to `version` only (the schema an upgrade starts
    from), from copies in `folder`."""
    folder.mkdir()
    for number, name, sql in list_migrations():
        if number <= version:
            (folder / name).write_text(sql)
    await migrate(dsn, folder)


async def empty_stores(dsn: str, redis_url: str) -> None:
    """Empty every table but the migrations' record and the rollup zones, and Redis."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('schema_migrations', 'rollup_zones')"
        )
        names = ", ".join(row["tablename"] for row in tables)
        await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    await redis.aclose()


@pytest.fixture
async def settings(servers: tuple[PostgresServer, RedisServer], tmp_path: Path) -> Settings:
    """Settings for one test, with an emptied database and Redis."""
    pg, rd = servers
    await empty_stores(pg.dsn(), rd.url())
    return Settings(
        database_url=pg.dsn(),
        redis_url=rd.url(),
        api_key=API_KEY,
        public_url="http://tracker.test",
        config_refresh_seconds=0.2,
        spool_dir=str(tmp_path / "spool"),
    )


# Test clicks come from a browser: the HTTP client's own User-Agent is a bot's.
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


async def start_client(app: web.Application, settings: Settings) -> TestClient[Any, Any]:
    server = TestServer(app)
    await server.start_server(**handler_args(settings))
    client: TestClient[Any, Any] = TestClient(server, headers={"User-Agent": BROWSER})
    await client.start_server()
    return client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The web app on a real socket, without the API key header."""
    client = await start_client(create_app(settings), settings)
    yield client
    await client.close()


@pytest.fixture
async def api(client: TestClient[Any, Any]) -> "Api":
    return Api(client)


class Api:
    """Authenticated JSON calls to the admin API."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = await self.client.request(method, path, headers=self.headers, **kwargs)
        body = await resp.json()
        assert resp.status == expect, (resp.status, body)
        return body

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.call("POST", path, expect=201, json=body)

    async def setup_campaign(
        self,
        offer_url: str = "https://offer.example/lp?cid={clickid}",
        payout: str | None = "3.00",
        cost_model: str = "none",
        cost_value: str | None = None,
    ) -> dict[str, Any]:
        """Source, network, offer and campaign; returns them by name."""
        source = await self.create("/api/traffic-sources", {"name": "Source"})
        network = await self.create("/api/affiliate-networks", {"name": "Network"})
        offer_body: dict[str, Any] = {
            "name": "Offer",
            "url": offer_url,
            "affiliate_network_id": network["id"],
        }
        if payout is not None:
            offer_body["payout"] = payout
        offer = await self.create("/api/offers", offer_body)
        campaign_body: dict[str, Any] = {
            "name": "Campaign",
            "traffic_source_id": source["id"],
            "offers": [{"offer_id": offer["id"], "weight": 100}],
            "cost_model": cost_model,
        }
        if cost_value is not None:
            campaign_body["cost_value"] = cost_value
        campaign = await self.create("/api/campaigns", campaign_body)
        return {"source": source, "network": network, "offer": offer, "campaign": campaign}


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(settings.database_url, 1, 4)
    yield pool
    await pool.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def sink(redis: Redis, pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[ClickSink]:
    """The stream consumer, with orphan re-matching, running in the test's event loop."""
    async with orphan_matcher(pool, redis, settings) as matcher:
        sink = ClickSink(
            redis,
            pool,
            consumer="test-sink",
            block_ms=50,
            housekeeping_seconds=0.2,
            on_stored=matcher.rematch,
        )
        task = asyncio.create_task(sink.run())
        yield sink
        sink.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def wait_for_sink(sink: ClickSink, within: float = 10.0) -> None:
    """Wait until every click on the stream is stored in Postgres."""
    deadline = asyncio.get_running_loop().time() + within
    while await sink.backlog():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("sink did not drain the click stream")
        await asyncio.sleep(0.05)


async def store_clicks_late(redis: Redis, pool: asyncpg.Pool, settings: Settings) -> None:
    """Run a sink, with orphan re-matching, until the click stream is drained; for tests
    whose postbacks arrive before their click is stored."""
    async with orphan_matcher(pool, redis, settings) as matcher:
        await drain(ClickSink(redis, pool, consumer="late", block_ms=50, on_stored=matcher.rematch))


def clickid_from(location: str) -> str:
    """The click id a test offer URL (`...?cid={clickid}`) was given."""
    return parse_qs(urlsplit(location).query)["cid"][0]


async def drain(sink: ClickSink) -> None:
    """Run `sink` until the click streams are stored, then stop it."""
    task = asyncio.create_task(sink.run())
    try:
        await wait_for_sink(sink)
    finally:
        sink.stop()
        await asyncio.wait_for(task, 5)


async def click_entries(redis: Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry on the click streams (all shards and the legacy one), oldest first."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    for stream in keys.click_streams(keys.DEFAULT_SHARDS):
        entries.extend(await redis.xrange(stream))
    return sorted(entries, key=lambda e: tuple(int(p) for p in e[0].split(b"-")))


async def click_stream_length(redis: Redis) -> int:
    """Entries on all the click streams."""
    return sum([await redis.xlen(s) for s in keys.click_streams(keys.DEFAULT_SHARDS)])


async def break_click_streams(redis: Redis) -> None:
    """Make every click stream a string, so that each XADD fails inside the script."""
    for stream in keys.click_streams(keys.DEFAULT_SHARDS):
        await redis.delete(stream)
        await redis.set(stream, b"not a stream")


async def mend_click_streams(redis: Redis) -> None:
    await redis.delete(*keys.click_streams(keys.DEFAULT_SHARDS))
