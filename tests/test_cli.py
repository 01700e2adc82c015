"""The real processes: `tracker seed-demo`, `tracker serve` and `tracker sink`."""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from tests.conftest import API_KEY
from tracker.devstack import PostgresServer, free_port, wait_for_port
from tracker.store import keys
from tracker.store.db import migrate


def env_for(settings, port):
    env = dict(os.environ)
    env.update(
        TRACKER_DATABASE_URL=settings.database_url,
        TRACKER_REDIS_URL=settings.redis_url,
        TRACKER_API_KEY=API_KEY,
        TRACKER_HTTP_PORT=str(port),
        TRACKER_SINK_BLOCK_MS="50",
    )
    return env


def run_tracker(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


async def wait_until_listening(port):
    await asyncio.to_thread(wait_for_port, port, "tracker serve")


async def test_serve_and_sink_processes(settings):
    port = free_port()
    env = env_for(settings, port)
    first = run_tracker(env, "seed-demo").stdout
    second = run_tracker(env, "seed-demo").stdout
    assert first == second  # seeding twice changes nothing
    click_url = re.search(r"click URL:\s+(\S+)", first)[1]
    token = re.search(r"token=(\S+)", first)[1]

    procs = [
        subprocess.Popen([sys.executable, "-m", "tracker", cmd], env=env)
        for cmd in ("serve", "sink")
    ]
    try:
        await wait_until_listening(port)
        async with aiohttp.ClientSession() as http:
            async with http.get(click_url, allow_redirects=False) as resp:
                assert resp.status == 302
                click_id = re.search(r"clickid=([0-9a-v]+)", resp.headers["Location"])[1]
            params = {"clickid": click_id, "payout": "2.50", "token": token}
            async with http.get(f"http://127.0.0.1:{port}/postback", params=params) as resp:
                assert resp.status == 200
                assert (await resp.json())["result"] == "created"
        conn = await asyncpg.connect(settings.database_url)
        try:
            deadline = time.monotonic() + 5
            while not await conn.fetchval(
                "SELECT count(*) FROM clicks WHERE click_id = $1", click_id
            ):
                assert time.monotonic() < deadline, "sink did not store the click"
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=20) for proc in procs]
    assert codes == [0, 0]


@pytest.mark.faults
async def test_sink_started_before_postgres_waits_for_it(settings):
    """A sink started during a Postgres outage neither exits nor loses the queue: it
    begins storing clicks as soon as Postgres answers."""
    root = Path(tempfile.mkdtemp(prefix="tracker-test-sink-"))
    root.chmod(0o755)  # Postgres runs as its own user when we are root
    pg = PostgresServer(root / "pg", free_port(), fast_unsafe=True)
    # Migrated, then stopped: the sink must not meet a database without its tables.
    await asyncio.to_thread(pg.start)
    await migrate(pg.dsn())
    await asyncio.to_thread(pg.stop)
    env = env_for(settings, free_port())
    env["TRACKER_DATABASE_URL"] = pg.dsn()
    redis = Redis.from_url(settings.redis_url)
    record = {"click_id": "waited", "created_ms": int(time.time() * 1000), "campaign_id": 1,
              "offer_id": 1, "traffic_source_id": 1}  # fmt: skip
    await redis.xadd(keys.CLICK_STREAM, {b"d": orjson.dumps(record)})
    sink = subprocess.Popen([sys.executable, "-m", "tracker", "sink"], env=env)
    try:
        await asyncio.sleep(1.5)
        assert sink.poll() is None, "the sink gave up while Postgres was away"
        await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.dsn())
        try:
            for _ in range(400):
                if await conn.fetchval("SELECT count(*) FROM clicks WHERE click_id = 'waited'"):
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT count(*) FROM clicks") == 1
        finally:
            await conn.close()
    finally:
        sink.send_signal(signal.SIGTERM)
        code = sink.wait(timeout=20)
        await redis.aclose()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0


def test_a_task_that_ignores_cancellation_does_not_hold_a_stopping_process():
    """A process whose work is done exits even when a task it leaves swallows its
    cancellation (as asyncio.wait_for can lose one on Python 3.11), saying which."""
    script = """
import asyncio, logging, uvloop
from tracker.cli import _until_done
from tracker.logs import setup_logging

async def stubborn():
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass

async def main():
    asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0.1)

setup_logging()
uvloop.run(_until_done(main()))
"""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).parent.parent,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "did not stop when cancelled" in done.stderr and "stubborn" in done.stderr
    assert took < 15
