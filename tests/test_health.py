"""GET /healthz and /readyz: no API key, answers that say what is wrong, never a hang."""

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import BROWSER, start_client, store_clicks_late
from tests.test_faults_postbacks import Stack, running_stack
from tracker.store.db import list_migrations
from tracker.web.app import create_app


async def test_healthz_needs_no_key_and_no_store(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_ready_when_every_check_passes(client):
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {
        "redis",
        "postgres",
        "migrations",
        "sink_clicks",
        "sink_postbacks",
    }
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["sink_clicks"]["lag_seconds"] == 0


async def test_a_missing_migration_is_named(client, pool):
    version, name, _ = list_migrations()[-1]
    row = await pool.fetchrow(
        "DELETE FROM schema_migrations WHERE version = $1 RETURNING *", version
    )
    try:
        resp = await client.get("/readyz")
        body = await resp.json()
    finally:
        await pool.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)", *row
        )
    assert resp.status == 503
    assert name in body["error"]
    assert "tracker migrate" in body["checks"]["migrations"]["error"]
    assert body["checks"]["redis"]["ok"] and body["checks"]["postgres"]["ok"]


async def test_a_sink_that_falls_behind_is_not_ready(settings, api, redis, pool):
    """Clicks waiting on the stream longer than the limit make the tracker unready; once a
    sink stores them it is ready again."""
    lagging = settings.model_copy(update={"ready_max_sink_lag_seconds": 0.2})
    client = await start_client(create_app(lagging), lagging)
    try:
        made = await api.setup_campaign()
        deadline = time.monotonic() + 5
        while True:  # until this app's config cache has the new campaign
            resp = await client.get(
                f"/c/{made['campaign']['key']}",
                allow_redirects=False,
                headers={"User-Agent": BROWSER},
            )
            if resp.status == 302 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert resp.status == 302
        await asyncio.sleep(0.4)
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503, body
        assert "sink_clicks" in body["error"] and "behind" in body["error"]
        assert body["checks"]["sink_clicks"]["lag_seconds"] >= 0.2
        assert body["checks"]["sink_postbacks"]["ok"]

        await store_clicks_late(redis, pool, settings)
        resp = await client.get("/readyz")
        assert resp.status == 200, await resp.json()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("tracker-health-", TRACKER_READY_TIMEOUT="1.0") as stack:
        yield stack


async def _probe(stack: Stack, path: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{stack.port}{path}") as resp,
    ):
        return resp.status, await resp.json(), time.monotonic() - started


async def _until_ready(stack: Stack, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while (status := (await _probe(stack, "/readyz"))[0]) != 200:
        assert time.monotonic() < deadline, f"still {status}"
        await asyncio.sleep(0.2)


@pytest.mark.faults
async def test_readiness_through_redis_and_postgres_outages(stack: Stack) -> None:
    await _until_ready(stack)
    redis_process = stack.redis.process
    assert redis_process is not None
    redis_process.send_signal(signal.SIGSTOP)
    try:
        status, body, took = await _probe(stack, "/readyz")
        live, _, live_took = await _probe(stack, "/healthz")
    finally:
        redis_process.send_signal(signal.SIGCONT)
    print(f"\nredis frozen: /readyz {status} in {took:.2f} s, /healthz {live} in {live_took:.3f} s")
    assert status == 503 and live == 200
    assert took < 2.5 and live_took < 0.5
    assert "redis" in body["error"] and not body["checks"]["redis"]["ok"]
    assert body["checks"]["postgres"]["ok"]
    await _until_ready(stack)

    await asyncio.to_thread(stack.pg.stop)
    try:
        status, body, took = await _probe(stack, "/readyz")
        live, _, _ = await _probe(stack, "/healthz")
    finally:
        await asyncio.to_thread(stack.pg.start)
    print(f"postgres stopped: /readyz {status} in {took:.2f} s, /healthz {live}")
    assert status == 503 and live == 200
    assert took < 2.5
    assert not body["checks"]["postgres"]["ok"] and not body["checks"]["migrations"]["ok"]
    assert body["checks"]["redis"]["ok"]
    await _until_ready(stack)

    await asyncio.to_thread(stack.redis.stop)
    try:
        status, body, took = await _probe(stack, "/readyz")
    finally:
        await asyncio.to_thread(stack.redis.start)
    print(f"redis stopped: /readyz {status} in {took:.2f} s")
    assert status == 503 and took < 2.5
    assert not body["checks"]["redis"]["ok"] and body["checks"]["postgres"]["ok"]
    await _until_ready(stack)
