"""The sink's periodic orphan sweep: postbacks that missed their click's batch."""

import asyncio
from datetime import UTC, datetime, timedelta

from tests.conftest import wait_for_sink
from tests.test_postback import make_click
from tracker.postbacks import UNMATCHED, Outcome
from tracker.sink.housekeeping import Housekeeper
from tracker.sink.orphans import orphan_matcher
from tracker.store import keys
from tracker.store.postback_log import Inbound, PostbackLog


async def log_unmatched(pool, click_id, token, received_at=None, txid="t1"):
    """A postback logged as unmatched, as the web app does when the click is unknown."""
    params = {"clickid": click_id, "payout": "4.50", "txid": txid, "token": token}
    inbound = Inbound(params, "GET", "", received_at or datetime.now(UTC), "10.0.0.9")
    log = PostbackLog(pool)
    await log.start()
    try:
        await log.append(inbound, Outcome(UNMATCHED, 404, click_id=click_id))
    finally:
        await log.close()


async def test_sweep_converts_an_orphan_logged_after_its_click_was_stored(
    client, api, pool, redis, sink, settings
):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    late_id = await make_click(client, setup["campaign"])
    await wait_for_sink(sink)  # stored, and re-matched with no orphans waiting yet
    # The race: each postback found no click, and was logged once the batch had gone by.
    await log_unmatched(pool, click_id, token)
    await log_unmatched(pool, "never-clicked", token)
    stale = datetime.now(UTC) - timedelta(days=31)  # beyond the 30-day window
    await log_unmatched(pool, late_id, token, received_at=stale)
    await redis.delete(keys.click_key(click_id), keys.click_key(late_id))

    async with orphan_matcher(pool, redis, settings) as matcher:
        keeper = Housekeeper(pool, matcher, settings)
        assert await keeper.sweep_orphans() == 1
        assert await keeper.sweep_orphans() == 0  # nothing left to re-match

    conversion = await pool.fetchrow("SELECT click_id, payout FROM conversions")
    assert (conversion["click_id"], str(conversion["payout"])) == (click_id, "4.500000")
    rows = await pool.fetch("SELECT click_id, result, rematched_at FROM postback_log ORDER BY id")
    assert [(r["click_id"], r["result"], r["rematched_at"] is not None) for r in rows] == [
        (click_id, "created", True),
        ("never-clicked", "unmatched", False),
        (late_id, "unmatched", False),
    ]


async def test_sweep_runs_periodically(client, api, pool, redis, sink, settings):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    await wait_for_sink(sink)
    await log_unmatched(pool, click_id, setup["network"]["postback_token"])
    fast = settings.model_copy(update={"orphan_sweep_seconds": 0.05})
    async with orphan_matcher(pool, redis, fast) as matcher:
        keeper = Housekeeper(pool, matcher, fast)
        await keeper.start()
        try:
            for _ in range(200):
                if await pool.fetchval("SELECT count(*) FROM conversions"):
                    break
                await asyncio.sleep(0.05)
        finally:
            await keeper.close()
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
