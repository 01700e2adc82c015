"""The demo seed and rate changes reach running processes without a restart."""

import asyncio

from tests.conftest import start_client
from tracker.demo import seed_demo
from tracker.web.app import create_app
from tracker.web.appkeys import CONFIG


async def eventually(check, within=10.0):
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not seen in time"
        await asyncio.sleep(0.05)


async def test_running_app_sees_the_demo_campaign(client, settings):
    await client.get("/c/warm-up", allow_redirects=False)  # the app is running
    demo = await seed_demo(settings.database_url, settings.redis_url)

    async def redirects():
        resp = await client.get(f"/c/{demo.campaign_key}", allow_redirects=False)
        return resp.status == 302

    await eventually(redirects)


async def test_a_rate_set_on_one_process_reaches_another(client, api, settings):
    other = await start_client(create_app(settings), settings)
    try:
        await api.call(
            "POST",
            "/api/currency-rates",
            expect=201,
            json={"currency": "EUR", "rate": "1.1", "valid_from": "2020-01-01"},
        )

        async def has_rate():
            return "EUR" in other.app[CONFIG].snapshot.rates

        await eventually(has_rate)
    finally:
        await other.close()
