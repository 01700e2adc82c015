"""Deliveries through a Postgres outage and a sink killed with SIGKILL: every conversion
reaches its traffic source, none is lost, and a resend carries the same Idempotency-Key.

Runs `tracker serve` and `tracker sink` as processes against a Redis and a Postgres of
their own, as the other fault tests do."""

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.test_faults_postbacks import Stack, campaign_with_clicks, running_stack, until

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(
        "tracker-faults-outbox-",
        TRACKER_OUTBOUND_ALLOW_PRIVATE="true",
        TRACKER_OUTBOUND_RETRY_BASE_SECONDS="0.2",
        TRACKER_OUTBOUND_TIMEOUT="2",
    ) as stack:
        yield stack


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{stack.port}") as session:
        yield session


async def test_deliveries_through_an_outage_and_a_killed_sink(
    stack: Stack, http: aiohttp.ClientSession
):
    keys: Counter[str] = Counter()

    async def receive(request: web.Request) -> web.Response:
        keys[request.headers["Idempotency-Key"]] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/pb", receive)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    try:
        stack.start_sink()
        token, click_ids = await campaign_with_clicks(stack, http, 100)
        conn = await asyncpg.connect(stack.pg.dsn())
        try:
            await conn.execute(
                "UPDATE traffic_sources SET postback_url = $1",
                f"http://127.0.0.1:{receiver.port}/pb?c={{clickid}}&p={{payout}}",
            )
        finally:
            await conn.close()
        answers: Counter[str] = Counter()

        async def postback(i: int) -> None:
            params = {"clickid": click_ids[i % 100], "txid": f"t{i}", "token": token}
            async with http.get("/postback", params=params) as resp:
                answers[(await resp.json()).get("result", "error")] += 1

        async def load() -> None:
            tasks = []
            for i in range(150):  # about 7.5 s, across the outage and the kill
                tasks.append(asyncio.create_task(postback(i)))
                await asyncio.sleep(0.05)
            await asyncio.gather(*tasks)

        loader = asyncio.create_task(load())
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.pg.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(stack.pg.start)
        await asyncio.sleep(1.0)
        stack.stop_sinks(signal.SIGKILL)  # mid-delivery, without a goodbye
        stack.start_sink()
        await loader

        conn = await asyncpg.connect(stack.pg.dsn())
        try:

            async def all_delivered() -> bool:
                row = await conn.fetchrow(
                    "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'delivered') AS done"
                    " FROM deliveries"
                )
                conversions = await conn.fetchval("SELECT count(*) FROM conversions")
                # Postbacks queued during the outage count too: until they are applied,
                # the ones already written may all be delivered.
                return bool(row["total"] == conversions == row["done"] and conversions >= 150)

            await until(all_delivered, "every delivery to be delivered", 60)
            ids = {str(r["id"]) for r in await conn.fetch("SELECT id FROM deliveries")}
            conversions = await conn.fetchval("SELECT count(*) FROM conversions")
            txids = await conn.fetchval("SELECT count(DISTINCT txid) FROM conversions")
        finally:
            await conn.close()
    finally:
        stack.stop_sinks()
        await receiver.close()
    resent = {key: n for key, n in keys.items() if n > 1}
    print(f"\noutbox through an outage: answers {dict(answers)}; resent {len(resent)}")
    assert sum(answers.values()) == 150
    assert set(answers) <= {"created", "queued"}
    assert conversions == txids == 150  # none lost, none doubled
    assert set(keys) == ids  # each delivery reached the source, under its own key
