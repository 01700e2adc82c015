"""The hot window: click records leave Redis after TRACKER_REDIS_CLICK_TTL_HOURS, and every
reader of a click still finds it, with the same result, through Postgres."""

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from tests.conftest import click_stream_length, start_client, store_clicks_late, wait_for_sink
from tests.test_flows import click, lander_campaign, query_of
from tests.test_pixel import ALLOWED, hit
from tests.test_postback import make_click
from tracker.domain.campaign import CampaignRoute, FlowPath, LanderRoute, OfferRoute
from tracker.domain.click import COPIED_TO_CONVERSION, ClickRecord, stored_json
from tracker.domain.clickid import new_click_id
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.domain.rules import compile_rule
from tracker.store import keys
from tracker.store.clicks import (
    SELECT_CLICK,
    ClickReader,
    ClickWriter,
    hot_window_seconds,
)
from tracker.store.spool import ClickSpool
from tracker.web.app import create_app

DAY = 86400
# What a conversion takes from its click, beside the click's own identity and time.
CONVERSION_FIELDS = ", ".join(
    ["network_id", "payout", "currency", "status", "txid", "click_params", *COPIED_TO_CONVERSION]
)


@contextlib.asynccontextmanager
async def hot_client(settings, hours):
    """The web app with a hot window of `hours`."""
    client = await start_client(
        create_app(settings.model_copy(update={"redis_click_ttl_hours": hours})), settings
    )
    try:
        yield client
    finally:
        await client.close()


async def forget(redis, click_id):
    """The click's Redis record is gone, as when the hot window passes."""
    assert await redis.delete(keys.click_key(click_id)) == 1


async def postback(client, setup, click_id, expect=200, **params):
    resp = await client.get(
        "/postback",
        params={"clickid": click_id, "token": setup["network"]["postback_token"], **params},
    )
    body = await resp.json()
    assert resp.status == expect, body
    return body


def test_the_window_in_seconds(settings):
    assert hot_window_seconds(settings) == 72 * 3600
    assert hot_window_seconds(settings.model_copy(update={"redis_click_ttl_hours": 0.5})) == 1800
    tiny = settings.model_copy(update={"redis_click_ttl_hours": 1e-9})
    assert hot_window_seconds(tiny) == 1


async def test_the_record_lives_for_the_hot_window_and_the_cookie_for_the_attribution(
    api, redis, settings
):
    setup = await api.setup_campaign()
    for hours, attribution_days, expected in (
        (2, 30, 2 * 3600),  # the hot window is shorter
        (0.5, 30, 1800),
        (72, 1, DAY),  # never longer than the attribution window
        (24 * 400, 30, 30 * DAY),
    ):
        await api.call(
            "PATCH",
            f"/api/campaigns/{setup['campaign']['id']}",
            json={"attribution_window_days": attribution_days},
        )
        async with hot_client(settings, hours) as client:
            resp = await client.get(
                urlsplit(setup["campaign"]["click_url"]).path, allow_redirects=False
            )
            assert resp.status == 302
            click_id = resp.headers["Location"].split("cid=")[1]
            ttl = await redis.ttl(keys.click_key(click_id))
            assert expected - 5 <= ttl <= expected, (hours, attribution_days, ttl)
            cookie = resp.headers["Set-Cookie"]
            assert f"Max-Age={attribution_days * DAY};" in cookie, cookie
    # Every click is on the stream, whatever its record's TTL.
    assert await click_stream_length(redis) == 4


async def test_a_click_reads_the_same_from_redis_and_from_postgres(client, api, redis, pool, sink):
    setup = await api.setup_campaign()
    click_id = await make_click(
        client, setup["campaign"], external_id="e1", sub1="s1", sub5="x y", extra="z", cost="0.12"
    )
    await wait_for_sink(sink)
    reader = ClickReader(redis, pool)
    await reader.start()
    try:
        hot = await reader.fetch(click_id)
        await forget(redis, click_id)
        cold = await reader.fetch(click_id)
    finally:
        await reader.close()
    assert hot is not None and cold is not None
    # Postgres answers every field a reader uses, with the value Redis had.
    # (A record without `path` is read as the default path's, -1, by the lander
    # click-through; Postgres keeps no path, so a rule's path is not known there.)
    cold.setdefault("path", -1)
    differing = {name: (hot[name], cold.get(name)) for name in hot if hot[name] != cold.get(name)}
    assert differing == {}, differing


async def test_postbacks_after_the_window_convert_and_dedupe_as_before(
    client, api, redis, pool, sink
):
    setup = await api.setup_campaign(payout="3.00")
    params = {"external_id": "e1", "sub2": "s2", "gclid": "g-1"}
    hot_id = await make_click(client, setup["campaign"], **params)
    cold_id = await make_click(client, setup["campaign"], **params)
    await wait_for_sink(sink)
    await forget(redis, cold_id)
    for click_id in (hot_id, cold_id):
        body = await postback(client, setup, click_id, payout="1.50", txid="T1")
        assert body["result"] == "created", body
    rows = await pool.fetch(
        f"SELECT click_id, click_time, {CONVERSION_FIELDS} FROM conversions ORDER BY id"
    )
    assert [r["click_id"] for r in rows] == [hot_id, cold_id]
    # The second click is the same visitor's, so it alone is not unique.
    own = ("click_id", "click_time", "is_unique")
    hot, cold = ({k: v for k, v in dict(r).items() if k not in own} for r in rows)
    assert hot == cold
    assert cold["payout"] == Decimal("1.50") and cold["external_id"] == "e1"
    # The conversion's click time is the click's, to the millisecond, from either store.
    stored = await pool.fetchrow(SELECT_CLICK, cold_id)
    assert int(rows[1]["click_time"].timestamp() * 1000) == stored["created_ms"]

    # The same postback again, now that the hot click's record is gone too: a duplicate
    # of the conversion made from Redis, not a second one.
    await forget(redis, hot_id)
    for click_id in (hot_id, cold_id):
        body = await postback(client, setup, click_id, payout="1.50", txid="T1")
        assert body["result"] == "duplicate", body
        body = await postback(client, setup, click_id, payout="1.50", txid="T1", status="rejected")
        assert body["result"] == "updated", body
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 2
    assert await pool.fetchval("SELECT count(*) FROM conversions WHERE status = 'rejected'") == 2

    # A network that allows one conversion per click: its key is the click alone.
    await api.call(
        "PATCH",
        f"/api/affiliate-networks/{setup['network']['id']}",
        json={"duplicate_policy": "ignore"},
    )
    once = await make_click(client, setup["campaign"])
    await wait_for_sink(sink)
    first = await postback(client, setup, once, payout="2", txid="A")
    await forget(redis, once)
    await asyncio.sleep(0.3)  # the network's change reaches the web process
    second = await postback(client, setup, once, payout="2", txid="B")
    assert (first["result"], second["result"]) == ("created", "duplicate")
    assert await pool.fetchval("SELECT count(*) FROM conversions WHERE click_id = $1", once) == 1


async def test_a_click_beyond_the_hot_window_matches_within_the_attribution_window(
    client, api, redis, pool, sink
):
    """Clicks 5 and 40 days old, stored as the sink stores them and long gone from Redis:
    the first converts, the second is older than the 30-day window, as before."""
    setup = await api.setup_campaign(payout="4.00")
    template_id = await make_click(client, setup["campaign"], sub1="old")
    record = orjson.loads(await redis.get(keys.click_key(template_id)))
    writer = ClickWriter(redis, hot_seconds=3600)
    await writer.start()
    old_ids = []
    try:
        for days in (5, 40):
            created_ms = int((time.time() - days * DAY) * 1000)
            click_id = new_click_id(created_ms)
            old = {**record, "click_id": click_id, "created_ms": created_ms}
            remaining = created_ms // 1000 + 30 * DAY - int(time.time())
            await writer.write(click_id, orjson.dumps(old), max(0, remaining))
            old_ids.append(click_id)
    finally:
        await writer.close()
    await wait_for_sink(sink)
    # The 5-day-old click: 3600 s in Redis at most; the 40-day-old one: none at all.
    assert 0 < await redis.ttl(keys.click_key(old_ids[0])) <= 3600
    assert not await redis.exists(keys.click_key(old_ids[1]))
    await forget(redis, old_ids[0])

    recent, ancient = old_ids
    body = await postback(client, setup, recent, payout="4", txid="R")
    assert body["result"] == "created", body
    body = await postback(client, setup, ancient, expect=404, payout="4", txid="A")
    assert "attribution window" in body["error"], body
    row = await pool.fetchrow("SELECT click_id, sub1, click_time FROM conversions")
    assert (row["click_id"], row["sub1"]) == (recent, "old")
    assert datetime.now(UTC) - row["click_time"] > timedelta(days=4.9)


async def test_a_pixel_after_the_window_converts(client, api, redis, pool, sink):
    setup = await api.setup_campaign()
    await api.call("PATCH", f"/api/affiliate-networks/{setup['network']['id']}", json=ALLOWED)
    click_id = await make_click(client, setup["campaign"], sub3="p")
    await wait_for_sink(sink)
    await forget(redis, click_id)
    await hit(client, clickid=click_id, payout="2.50", txid="P1")
    row = await pool.fetchrow("SELECT click_id, source, payout, sub3 FROM conversions")
    assert tuple(row) == (click_id, "pixel", Decimal("2.50"), "p")


async def test_a_lander_click_through_after_the_window(client, api, redis, pool, sink):
    setup = await lander_campaign(api, offers=2)
    second = setup["offers"][1]
    click_id = query_of((await click(client, setup["campaign"])).headers["Location"])["cid"]
    await wait_for_sink(sink)
    await forget(redis, click_id)

    through = await client.get(
        "/lp/click", params={"clickid": click_id, "offer": str(second)}, allow_redirects=False
    )
    assert through.status == 302, await through.text()
    assert query_of(through.headers["Location"]) == {"cid": click_id, "o": str(second)}
    # The click-through makes the click hot again, for at most the hot window.
    ttl = await redis.ttl(keys.click_key(click_id))
    assert 72 * 3600 - 5 <= ttl <= 72 * 3600
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT offer_id, lp_clicked_at FROM clicks")
    assert row["offer_id"] == second and row["lp_clicked_at"] is not None
    rollups = await pool.fetch("SELECT offer_id, clicks, lp_clicks FROM click_rollups")
    assert sorted((r["offer_id"], r["clicks"], r["lp_clicks"]) for r in rollups if r["clicks"]) == [
        (second, 1, 1)
    ]

    # Once more after that record is gone too: the first click-through's time is kept,
    # and the conversion belongs to the offer reached.
    first_time = row["lp_clicked_at"]
    await forget(redis, click_id)
    again = await client.get("/lp/click", params={"clickid": click_id}, allow_redirects=False)
    assert query_of(again.headers["Location"])["o"] == str(second)
    # Nothing changed: nothing is written again.
    assert not await redis.exists(keys.click_key(click_id))
    await wait_for_sink(sink)
    assert await pool.fetchval("SELECT lp_clicked_at FROM clicks") == first_time
    body = await postback(client, setup, click_id, payout="5", txid="L")
    assert body["result"] == "created"
    assert await pool.fetchval("SELECT offer_id FROM conversions") == second


async def test_cost_updates_reach_clicks_gone_from_redis(client, api, redis, pool, sink):
    setup = await api.setup_campaign()
    ids = [await make_click(client, setup["campaign"]) for _ in range(2)]
    await wait_for_sink(sink)
    await forget(redis, ids[0])
    now = datetime.now(UTC)
    result = await api.call(
        "POST",
        "/api/costs",
        expect=201,
        json={
            "campaign_id": setup["campaign"]["id"],
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(hours=1)).isoformat(),
            "cost": "1.00",
        },
    )
    assert result["clicks"] == 2
    costs = await pool.fetch("SELECT cost FROM clicks")
    assert sorted(r["cost"] for r in costs) == [Decimal("0.5"), Decimal("0.5")]


@pytest.mark.faults
async def test_a_lagging_sink_loses_no_click_whose_record_expired(api, redis, pool, settings):
    """A one-second hot window and no sink running: records expire while their clicks wait
    on the stream. The stream entry does not expire, so the sink, once back, stores every
    click, and a postback that came meanwhile (unmatched then) is matched as an orphan."""
    setup = await api.setup_campaign(payout="2.00")
    clicks = 20
    async with hot_client(settings, 1 / 3600) as client:
        ids = [await make_click(client, setup["campaign"]) for _ in range(clicks)]
        deadline = time.monotonic() + 10
        while await redis.exists(*(keys.click_key(i) for i in ids)):
            assert time.monotonic() < deadline, "records did not expire"
            await asyncio.sleep(0.1)
        on_stream = await click_stream_length(redis)
        early = await postback(client, setup, ids[0], expect=404, payout="2", txid="E")
        assert early["error"] == "unknown click id"
        await store_clicks_late(redis, pool, settings)
        stored = await pool.fetchval("SELECT count(*) FROM clicks")
        late = await postback(client, setup, ids[1], payout="2", txid="L")
    conversions = await pool.fetch("SELECT click_id FROM conversions ORDER BY id")
    rematched = await pool.fetchval(
        "SELECT count(*) FROM postback_log WHERE click_id = $1 AND rematched_at IS NOT NULL",
        ids[0],
    )
    print(
        f"lagging sink, 1 s hot window: {clicks} clicks redirected, {on_stream} on the stream "
        f"after every record expired, {stored} stored, {clicks - stored} lost; "
        f"early postback 404 then re-matched: {rematched}; conversions {len(conversions)}"
    )
    assert on_stream == clicks and stored == clicks
    assert late["result"] == "created"
    assert {r["click_id"] for r in conversions} == {ids[0], ids[1]} and len(conversions) == 2
    assert rematched == 1


async def test_spool_replay_keeps_to_the_hot_window(redis, tmp_path):
    """A click spooled while Redis failed, replayed later, gets no more than the hot
    window in Redis, even from a spool file written with the whole attribution window."""
    spool = ClickSpool(str(tmp_path / "spool"))
    writer = ClickWriter(redis, spool, probe_seconds=0.05, hot_seconds=600)
    await writer.start()
    try:
        writer.degraded = True  # Redis "failing": the write goes to the spool
        assert await writer.write("s1", b'{"click_id":"s1"}', 30 * DAY) is None
        # A line spooled by a process without a hot window.
        await spool.append("s2", b'{"click_id":"s2"}', 30 * DAY)
        deadline = time.monotonic() + 10
        while await click_stream_length(redis) < 2:
            assert time.monotonic() < deadline, "spool not replayed"
            await asyncio.sleep(0.05)
    finally:
        await writer.close()
    for click_id in ("s1", "s2"):
        assert 590 <= await redis.ttl(keys.click_key(click_id)) <= 600


def bare_record(click_id: str, **fields: Any) -> ClickRecord:
    """A click record with only what every record has, and `fields`."""
    return ClickRecord(
        click_id=click_id,
        created_ms=1,
        campaign_id=2,
        offer_id=3,
        traffic_source_id=4,
        external_id=None,
        cost=None,
        **fields,
    )


def test_a_stored_record_leaves_out_null_members_and_nothing_else():
    tricky = '","sub2":null,"x'
    record = bare_record(
        "c1",
        sub1=tricky,
        sub3=',"sub4":null,',
        params={"a": ',"b":null,', "n": "null"},
        user_agent="UA",
    )
    full = orjson.dumps(record)
    compact = stored_json(record)
    # The store decides `is_unique` by the record's `null}` tail: it stays.
    assert compact.endswith(b',"is_unique":null}')
    parsed = orjson.loads(compact)
    assert parsed == {
        k: v for k, v in orjson.loads(full).items() if v is not None or k == "is_unique"
    }
    assert (parsed["sub1"], parsed["sub3"]) == (tricky, ',"sub4":null,')
    assert parsed["params"] == {"a": ',"b":null,', "n": "null"}
    assert len(compact) < len(full) - 150
    # Member order is the record's, as a full dump has it.
    assert list(parsed) == [k for k in orjson.loads(full) if k in parsed]
    record.is_unique = True
    assert stored_json(record).endswith(b',"is_unique":true}')


async def test_readers_see_left_out_members_as_null(redis, pool):
    record = bare_record("c2")
    await redis.set(keys.click_key("c2"), stored_json(record))
    reader = ClickReader(redis, pool)
    await reader.start()
    try:
        assert await reader.fetch("c2") == orjson.loads(orjson.dumps(record))
    finally:
        await reader.close()


async def rule_path_campaign(api):
    """A campaign whose rule (route=r in the click URL) sends the visitor to a lander
    with offers B and C; its default path has offer A only."""
    setup = await api.setup_campaign(offer_url="https://offer.example/a?cid={clickid}")
    offers = {
        name: await api.create(
            "/api/offers",
            {
                "name": name,
                "url": f"https://offer.example/{name}?cid={{clickid}}",
                "affiliate_network_id": setup["network"]["id"],
            },
        )
        for name in ("b", "c")
    }
    lander = await api.create(
        "/api/landers", {"name": "Lander", "url": "https://lander.example/p?cid={clickid}"}
    )
    rule = {
        "conditions": [{"field": "param:route", "op": "in", "values": ["r"]}],
        "offers": [{"offer_id": offers[name]["id"], "weight": 1} for name in ("b", "c")],
        "landers": [{"lander_id": lander["id"], "weight": 1}],
    }
    campaign = await api.call(
        "PATCH", f"/api/campaigns/{setup['campaign']['id']}", json={"rules": [rule]}
    )
    return campaign, offers


@pytest.mark.parametrize("expired", [False, True])
async def test_a_rule_path_click_through_picks_from_its_rule_path(
    client, api, redis, sink, expired
):
    campaign, offers = await rule_path_campaign(api)
    resp = await click(client, campaign, params={"route": "r"})
    assert resp.headers["Location"].startswith("https://lander.example/")
    click_id = query_of(resp.headers["Location"])["cid"]
    await wait_for_sink(sink)
    if expired:
        await forget(redis, click_id)
    through = await client.get(
        "/lp/click",
        params={"clickid": click_id, "offer": str(offers["c"]["id"])},
        allow_redirects=False,
    )
    assert through.headers["Location"].startswith("https://offer.example/c?"), through.headers
    # Again, now from the record that click-through wrote (it has no rule index either).
    again = await client.get(
        "/lp/click",
        params={"clickid": click_id, "offer": str(offers["b"]["id"])},
        allow_redirects=False,
    )
    assert again.headers["Location"].startswith("https://offer.example/b?"), again.headers


def test_the_path_of_a_click_read_from_postgres():
    def offer(offer_id):
        return OfferRoute(offer_id, compile_template("https://o.example/"), 1, None, "USD")

    def path(*ids, landers=()):
        return FlowPath(
            WeightedChoice([(offer(i), 1) for i in ids]),
            WeightedChoice(
                [(LanderRoute(i, compile_template("https://l.example/")), 1) for i in landers]
            ),
        )

    rule_path = path(1, 2, landers=(9,))
    other_rule = path(1, 3)
    rules = tuple(
        compile_rule(index, {"conditions": [{"field": "os", "op": "in", "values": ["iOS"]}]}, p)
        for index, p in enumerate((rule_path, other_rule))
    )
    campaign = CampaignRoute(
        id=1, key="k", traffic_source_id=1, external_id_param="e", cost_param="c",
        cost_model="none", cost_value=None, attribution_window_days=30,
        report_currency="USD", offers=WeightedChoice([(offer(1), 1), (offer(4), 1)]), rules=rules,
    )  # fmt: skip
    find = campaign.path_of_stored_click
    assert find(2, 9, None) is rule_path  # only that path has offer 2
    assert find(1, 9, 2) is rule_path  # the lander narrows it
    assert find(1, None, 3) is other_rule  # the wanted offer settles it
    assert find(1, None, 4) is campaign.default_path
    assert find(1, None, None) is rule_path  # the first holding the offer: the same offer
    assert find(7, None, 2) is campaign.default_path  # the offer left every path
