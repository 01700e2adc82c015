"""The click path under store faults and crashes, with real processes and servers.

A Redis and a PostgreSQL of this module's own (they are stopped, frozen and
restarted), `tracker serve` and `tracker sink` as subprocesses, and ~30
concurrent clients. Every click that got a 302 must end up in Postgres once.
Run with `pytest -s -m faults` to see the figures.
"""

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import BROWSER
from tracker.demo import seed_demo
from tracker.devstack import PostgresServer, RedisServer, free_port, wait_for_port
from tracker.domain.clickid import new_click_id
from tracker.processes import restart_delay
from tracker.store.clicks import ClickReader
from tracker.store.db import migrate
from tracker.store.redis import create_redis

pytestmark = pytest.mark.faults

CONCURRENCY = 30
_CLICK_ID = re.compile(r"clickid=([0-9a-v]+)")


@dataclass
class Stack:
    root: Path
    pg: PostgresServer
    redis: RedisServer
    campaign_key: str


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="tracker-faults-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port(), fast_unsafe=True)
    rd = RedisServer(root / "redis", free_port(), persistent=True)
    try:
        pg.start()
        rd.start()
        asyncio.run(migrate(pg.dsn()))
        demo = asyncio.run(seed_demo(pg.dsn()))
        yield Stack(root, pg, rd, demo.campaign_key)
    finally:
        rd.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Run:
    """One test's processes and what its visitors saw."""

    stack: Stack
    spool: Path
    port: int = field(default_factory=free_port)
    redirected: list[str] = field(default_factory=list)
    refused: int = 0
    errors: int = 0
    max_latency: float = 0.0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TRACKER_DATABASE_URL=self.stack.pg.dsn(),
            TRACKER_REDIS_URL=self.stack.redis.url(),
            TRACKER_HTTP_PORT=str(self.port),
            TRACKER_SPOOL_DIR=str(self.spool),
            TRACKER_SINK_BLOCK_MS="50",
            TRACKER_SINK_CLAIM_IDLE_MS="1000",
            TRACKER_SPOOL_PROBE_SECONDS="0.2",
        )
        return env

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "tracker", *args], env=self.env())
        self.procs[name] = proc
        return proc

    async def wait_listening(self) -> None:
        await asyncio.to_thread(wait_for_port, self.port, "tracker serve")

    async def load(self, stop: asyncio.Event) -> None:
        url = f"http://127.0.0.1:{self.port}/c/{self.stack.campaign_key}"

        async def visitor(http: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with http.get(url, allow_redirects=False) as resp:
                        await resp.read()
                        if resp.status == 302:
                            self.redirected.append(_CLICK_ID.search(resp.headers["Location"])[1])
                        else:
                            self.refused += 1
                except aiohttp.ClientError:
                    self.errors += 1
                    await asyncio.sleep(0.01)
                    continue
                self.max_latency = max(self.max_latency, time.monotonic() - started)

        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": BROWSER}
        ) as http:
            await asyncio.gather(*(visitor(http) for _ in range(CONCURRENCY)))

    async def stored(self, within: float = 25.0) -> tuple[int, int, int]:
        """(clicks of ours in Postgres, all click rows, rollup click count), once settled."""
        conn = await asyncpg.connect(self.stack.pg.dsn())
        try:
            deadline = time.monotonic() + within
            while True:
                ours = await conn.fetchval(
                    "SELECT count(*) FROM clicks WHERE click_id = any($1::text[])",
                    self.redirected,
                )
                if ours == len(self.redirected) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            rows = await conn.fetchval("SELECT count(*) FROM clicks")
            rollup = await conn.fetchval("SELECT coalesce(sum(clicks), 0) FROM click_rollups")
            return ours, rows, rollup
        finally:
            await conn.close()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def report(self, name: str, lost: int, rows: int, rollup: int) -> None:
        answered = len(self.redirected) + self.refused + self.errors
        print(
            f"\n[faults] {name}: {answered} requests, {len(self.redirected)} redirected "
            f"({100 * len(self.redirected) / max(answered, 1):.2f}%), {self.refused} refused, "
            f"{self.errors} connection errors, max latency {self.max_latency * 1000:.0f} ms; "
            f"lost {lost}, click rows {rows}, rollup clicks {rollup}"
        )


@pytest.fixture
async def run(stack: Stack, tmp_path: Path) -> "Iterator[Run]":
    conn = await asyncpg.connect(stack.pg.dsn())
    try:
        await conn.execute("TRUNCATE clicks, click_rollups, click_dead_letters")
    finally:
        await conn.close()
    redis = create_redis(stack.redis.url())
    await redis.flushdb()
    await redis.aclose()
    run = Run(stack, tmp_path / "spool")
    try:
        yield run
    finally:
        run.stop_all()


async def with_load(run: Run, scenario) -> None:
    """Drive clicks while `scenario` runs, and for a moment after it."""
    stop = asyncio.Event()
    load = asyncio.create_task(run.load(stop))
    try:
        await asyncio.sleep(0.7)
        await scenario()
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await load


async def test_redis_restart_under_load(run: Run) -> None:
    run.start("serve", "serve")
    run.start("sink", "sink")
    await run.wait_listening()

    async def restart_redis() -> None:
        await asyncio.to_thread(run.stack.redis.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(run.stack.redis.start)

    await with_load(run, restart_redis)
    ours, rows, rollup = await run.stored()
    lost = len(run.redirected) - ours
    run.report("redis restart", lost, rows, rollup)
    answered = len(run.redirected) + run.refused + run.errors
    assert len(run.redirected) >= 0.999 * answered
    assert len(run.redirected) > 200
    assert lost == 0
    assert rows == len(set(run.redirected)) == len(run.redirected)
    assert rollup == rows


async def test_redis_frozen_under_load(run: Run) -> None:
    run.start("serve", "serve")
    run.start("sink", "sink")
    await run.wait_listening()
    redis_process = run.stack.redis.process
    assert redis_process is not None

    async def freeze_redis() -> None:
        redis_process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(5.0)
        finally:
            redis_process.send_signal(signal.SIGCONT)

    await with_load(run, freeze_redis)
    ours, rows, rollup = await run.stored()
    lost = len(run.redirected) - ours
    run.report("redis frozen 5 s", lost, rows, rollup)
    assert run.refused == run.errors == 0
    assert run.max_latency <= 1.0
    assert lost == 0
    assert rows == len(run.redirected)
    assert rollup == rows


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


async def test_web_worker_killed_while_spooling(run: Run) -> None:
    """kill -9 of a worker that holds spooled clicks: a restarted process replays them."""
    supervisor = run.start("serve", "serve", "--workers", "2")
    run.start("sink", "sink")
    await run.wait_listening()
    deadline = time.monotonic() + 15
    while len(_children(supervisor.pid)) < 2:
        assert time.monotonic() < deadline, "workers did not start"
        await asyncio.sleep(0.1)
    victim = _children(supervisor.pid)[0]

    async def kill_worker_during_outage() -> None:
        await asyncio.to_thread(run.stack.redis.stop)
        await asyncio.sleep(0.8)  # the workers spool
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(run.stack.redis.start)

    await with_load(run, kill_worker_during_outage)
    workers = _children(supervisor.pid)
    ours, rows, rollup = await run.stored()
    lost = len(run.redirected) - ours
    run.report("web worker kill -9 during an outage", lost, rows, rollup)
    assert victim not in workers and len(workers) == 2  # restarted by the supervisor
    assert len(run.redirected) > 200
    assert lost == 0
    # A click stored just before the kill may never have reached its visitor as a 302,
    # and the client library silently retries a request cut off on a kept-alive
    # connection: at most one such extra click per connection in flight.
    assert len(run.redirected) <= rows <= len(run.redirected) + run.errors + CONCURRENCY
    assert rollup == rows
    assert not list(run.spool.glob("clicks-*.jsonl"))  # every spool replayed and removed


async def test_sink_killed_under_load(run: Run) -> None:
    run.start("serve", "serve")
    sink = run.start("sink", "sink")
    await run.wait_listening()

    async def kill_sink() -> None:
        await asyncio.sleep(0.5)
        sink.kill()
        await asyncio.to_thread(sink.wait)
        await asyncio.sleep(0.5)
        run.start("sink", "sink")

    await with_load(run, kill_sink)
    ours, rows, rollup = await run.stored()
    lost = len(run.redirected) - ours
    run.report("sink kill -9", lost, rows, rollup)
    assert run.refused == run.errors == 0
    assert lost == 0
    assert rows == len(run.redirected)
    assert rollup == rows


async def test_postback_click_lookup_falls_back_to_postgres(pool) -> None:
    stored = new_click_id()
    await pool.execute(
        "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id, traffic_source_id) "
        "VALUES ($1, click_id_time($1), 1, 2, 3)",
        stored,
    )
    nowhere = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, connect_timeout=0.2)
    reader = ClickReader(nowhere, pool, timeout=0.2)
    await reader.start()
    try:
        click = await reader.fetch(stored)
        missing = await reader.fetch(new_click_id())
    finally:
        await reader.close()
        with contextlib.suppress(Exception):
            await nowhere.aclose()
    assert click is not None and (click["campaign_id"], click["offer_id"]) == (1, 2)
    assert missing is None


def test_supervisor_backs_off_a_crashing_worker() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
