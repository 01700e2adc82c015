"""Campaign flows over HTTP: visitor facts, landers, bots, unique clicks, live rule changes."""

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.conftest import Api, click_stream_length, start_client, wait_for_sink
from tracker.store import keys
from tracker.web.app import create_app

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
FACTS_URL = (
    "https://offer.example/?cid={clickid}&country={country}&device={device}&os={os}"
    "&browser={browser}&lang={language}&ip={ip}&isp={isp}&ts={timestamp}&u={is_unique}"
    "&ref={referrer}&lp={lander_id}"
)


def click_path(campaign: dict[str, Any]) -> str:
    return urlsplit(campaign["click_url"]).path


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def click(client: Any, campaign: dict[str, Any], **kwargs: Any) -> Any:
    """A click from a fresh browser: cookies only when the test gives them."""
    client.session.cookie_jar.clear()
    headers = {"User-Agent": CHROME, **kwargs.pop("headers", {})}
    return await client.get(click_path(campaign), headers=headers, allow_redirects=False, **kwargs)


async def proxied_client(settings: Any, **changes: Any) -> Any:
    """A client whose requests come through a trusted proxy (the test itself)."""
    trusted = settings.model_copy(update={"trusted_proxies": ["127.0.0.1/32"], **changes})
    return await start_client(create_app(trusted), trusted)


async def test_click_stores_facts_and_offers_them_as_macros(settings, pool, sink):
    client = await proxied_client(settings)
    try:
        api = Api(client)
        setup = await api.setup_campaign(offer_url=FACTS_URL)
        resp = await click(
            client,
            setup["campaign"],
            headers={
                "User-Agent": IPHONE,
                "X-Forwarded-For": "81.2.69.142",
                "Accept-Language": "de-CH,de;q=0.9,en;q=0.5",
                "Referer": "https://news.example/a",
            },
        )
        assert resp.status == 302
        got = query_of(resp.headers["Location"])
        assert got["country"] == "GB"
        assert got["device"] == "mobile"
        assert got["os"] == "iOS"
        assert got["browser"] == "Mobile Safari"
        assert got["lang"] == "de"
        assert got["ip"] == "81.2.69.142"
        assert got["isp"]
        assert got["ref"] == "https://news.example/a"
        assert got["u"] == "1"
        assert "lp" not in got  # no lander on a direct link
        assert abs(int(got["ts"]) - time.time()) < 60
        await wait_for_sink(sink)
        row = await pool.fetchrow("SELECT * FROM clicks WHERE click_id = $1", got["cid"])
        assert (row["country"], row["device"], row["os"], row["os_version"]) == (
            "GB",
            "mobile",
            "iOS",
            "17",
        )
        assert (row["browser"], row["browser_version"], row["language"]) == (
            "Mobile Safari",
            "17",
            "de",
        )
        assert row["is_bot"] is False and row["is_unique"] is True
        assert row["isp"] == got["isp"]

        token = setup["network"]["postback_token"]
        pb = await client.get(
            "/postback", params={"clickid": got["cid"], "payout": "2", "token": token}
        )
        assert pb.status == 200, await pb.text()
        conv = await pool.fetchrow("SELECT * FROM conversions WHERE click_id = $1", got["cid"])
        for name in ("country", "device", "os", "browser", "language", "isp", "is_unique"):
            assert conv[name] == row[name], name
        assert conv["is_bot"] is False
    finally:
        await client.close()


async def test_cdn_country_header_is_believed_from_trusted_proxies_only(client, api, settings):
    campaign = (await api.setup_campaign(offer_url=FACTS_URL))["campaign"]
    untrusted = await click(client, campaign, headers={"CF-IPCountry": "DE"})
    assert query_of(untrusted.headers["Location"]).get("country") is None
    proxied = await proxied_client(settings, country_header="X-Country")
    try:
        first = await click(proxied, campaign, headers={"CF-IPCountry": "de"})
        assert query_of(first.headers["Location"])["country"] == "DE"
        second = await click(proxied, campaign, headers={"X-Country": "FR"})
        assert query_of(second.headers["Location"])["country"] == "FR"
        # Not a country: ignored, and the GeoIP answer (none for a private peer) stays.
        third = await click(proxied, campaign, headers={"CF-IPCountry": "XX"})
        assert query_of(third.headers["Location"]).get("country") is None
    finally:
        await proxied.close()


async def lander_campaign(api: Api, offers: int = 1, **campaign: Any) -> dict[str, Any]:
    setup = await api.setup_campaign(offer_url="https://offer.example/a?cid={clickid}&o={offer_id}")
    extra = [
        await api.create(
            "/api/offers",
            {
                "name": f"Offer {n}",
                "url": "https://offer.example/b?cid={clickid}&o={offer_id}",
                "affiliate_network_id": setup["network"]["id"],
                "payout": "5",
            },
        )
        for n in range(offers - 1)
    ]
    lander = await api.create(
        "/api/landers",
        {"name": "Lander", "url": "https://lander.example/p?cid={clickid}&l={lander_id}"},
    )
    offer_ids = [setup["offer"]["id"], *(o["id"] for o in extra)]
    setup["offers"] = offer_ids
    setup["lander"] = lander
    setup["campaign"] = await api.call(
        "PATCH",
        f"/api/campaigns/{setup['campaign']['id']}",
        json={
            # The first offer is all but certain to be the click's pick.
            "offers": [
                {"offer_id": i, "weight": 1_000_000 if n == 0 else 1}
                for n, i in enumerate(offer_ids)
            ]
            if offers > 1
            else [{"offer_id": offer_ids[0], "weight": 100}],
            "landers": [{"lander_id": lander["id"], "weight": 100}],
            **campaign,
        },
    )
    return setup


async def test_lander_flow_counts_views_and_click_throughs(client, api, pool, sink):
    setup = await lander_campaign(api, offers=2)
    resp = await click(client, setup["campaign"])
    assert resp.status == 302
    location = resp.headers["Location"]
    assert location.startswith("https://lander.example/p?")
    got = query_of(location)
    click_id = got["cid"]
    assert got["l"] == str(setup["lander"]["id"])
    cookies = resp.headers.getall("Set-Cookie")
    click_cookie = next(c for c in cookies if c.startswith("tk_click="))
    assert f"tk_click={click_id};" in click_cookie
    assert "HttpOnly" in click_cookie and "SameSite=Lax" in click_cookie
    assert "Secure" not in click_cookie  # the public URL is plain http
    assert "Max-Age=2592000" in click_cookie

    # The call to action carries no clickid: the cookie tells the click.
    through = await client.get("/lp/click", cookies={"tk_click": click_id}, allow_redirects=False)
    assert through.status == 302, await through.text()
    offer_url = through.headers["Location"]
    assert query_of(offer_url) == {"cid": click_id, "o": str(setup["offers"][0])}
    # Asking for the second offer of the path: the visitor goes there, and the click
    # (and so its conversion) belongs to it from now on.
    second = setup["offers"][1]
    again = await client.get(
        "/lp/click", params={"clickid": click_id, "offer": str(second)}, allow_redirects=False
    )
    assert query_of(again.headers["Location"])["o"] == str(second)
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT * FROM clicks WHERE click_id = $1", click_id)
    assert row["lander_id"] == setup["lander"]["id"]
    assert row["lp_clicked_at"] is not None
    assert row["offer_id"] == second
    rollups = await pool.fetch(
        "SELECT offer_id, clicks, lp_views, lp_clicks FROM click_rollups ORDER BY offer_id"
    )
    assert [tuple(r) for r in rollups if r["clicks"] or r["lp_views"] or r["lp_clicks"]] == [
        (second, 1, 1, 1)
    ]
    assert sum(r["clicks"] for r in rollups) == 1

    token = setup["network"]["postback_token"]
    pb = await client.get("/postback", params={"clickid": click_id, "payout": "5", "token": token})
    assert pb.status == 200
    conv = await pool.fetchrow("SELECT offer_id, lander_id FROM conversions")
    assert (conv["offer_id"], conv["lander_id"]) == (second, setup["lander"]["id"])


async def test_offer_outside_the_path_is_ignored(client, api):
    setup = await lander_campaign(api)
    other = await api.create(
        "/api/offers",
        {
            "name": "Elsewhere",
            "url": "https://elsewhere.example/",
            "affiliate_network_id": setup["network"]["id"],
        },
    )
    click_id = query_of((await click(client, setup["campaign"])).headers["Location"])["cid"]
    for offer in (str(other["id"]), "abc", "-1", "99999999999999999999999"):
        resp = await client.get(
            "/lp/click", params={"clickid": click_id, "offer": offer}, allow_redirects=False
        )
        assert resp.status == 302
        assert resp.headers["Location"].startswith("https://offer.example/a?")


async def test_bad_lander_clicks_are_refused_and_record_nothing(client, api, redis):
    setup = await lander_campaign(api)
    await click(client, setup["campaign"])
    before = await click_stream_length(redis)
    cases = [
        ({}, {}, 400),
        ({"clickid": ""}, {}, 400),
        ({"clickid": "not-a-click"}, {}, 400),
        ({}, {"tk_click": "x" * 29}, 400),
        ({"clickid": "0" * 29}, {}, 404),
        ({}, {"tk_click": "1" * 29}, 404),
    ]
    for params, cookies, status in cases:
        client.session.cookie_jar.clear()
        resp = await client.get("/lp/click", params=params, cookies=cookies, allow_redirects=False)
        assert resp.status == status, (params, cookies)
        assert "error" in await resp.json()
    assert await click_stream_length(redis) == before


async def test_lander_click_of_an_archived_campaign_still_redirects(client, api):
    setup = await lander_campaign(api)
    click_id = query_of((await click(client, setup["campaign"])).headers["Location"])["cid"]
    await api.call("DELETE", f"/api/campaigns/{setup['campaign']['id']}")
    assert (await click(client, setup["campaign"])).status == 404
    resp = await client.get("/lp/click", params={"clickid": click_id}, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith("https://offer.example/a?")


@pytest.mark.parametrize(
    ("action", "status", "target"),
    [
        ("offer", 302, "https://offer.example/"),
        ("url", 302, "https://safe.example/"),
        ("404", 404, None),
    ],
)
async def test_bot_actions(client, api, pool, sink, action, status, target):
    setup = await api.setup_campaign(offer_url="https://offer.example/?cid={clickid}")
    body: dict[str, Any] = {"bot_action": action}
    if action == "url":
        body["bot_url"] = "https://safe.example/?cid={clickid}&c={country}"
    campaign = await api.call("PATCH", f"/api/campaigns/{setup['campaign']['id']}", json=body)
    bot = await click(client, campaign, headers={"User-Agent": GOOGLEBOT})
    assert bot.status == status
    if target is not None:
        assert bot.headers["Location"].startswith(target)
    else:
        assert "error" in await bot.json()
    human = await click(client, campaign)
    assert human.headers["Location"].startswith("https://offer.example/")
    await wait_for_sink(sink)
    rows = await pool.fetch("SELECT is_bot, bot_reason FROM clicks ORDER BY created_at")
    assert [(r["is_bot"], r["bot_reason"]) for r in rows] == [(True, "crawler"), (False, None)]
    [rollup] = await pool.fetch("SELECT clicks, bot_clicks, unique_clicks FROM click_rollups")
    assert tuple(rollup) == (1, 1, 1)


async def test_bot_signals_from_settings_and_empty_agents(settings, pool, sink):
    client = await proxied_client(
        settings, bot_ip_ranges=["203.0.113.0/24"], bot_asns=["AMAZON-02"]
    )
    try:
        campaign = (await Api(client).setup_campaign())["campaign"]
        await click(client, campaign, headers={"X-Forwarded-For": "203.0.113.9"})
        await click(client, campaign, headers={"X-Forwarded-For": "18.130.0.1"})
        await click(client, campaign, headers={"User-Agent": ""})
        await click(client, campaign, headers={"X-Forwarded-For": "81.2.69.142"})
        await wait_for_sink(sink)
        rows = await pool.fetch("SELECT ip, bot_reason FROM clicks ORDER BY created_at")
        reasons = [r["bot_reason"] for r in rows]
        assert reasons[:2] == ["ip-range", "data-center"]
        assert reasons[2] in ("empty-user-agent", "absurd-user-agent")
        assert reasons[3] is None
    finally:
        await client.close()


async def test_unique_clicks_inside_and_outside_the_window(client, api, redis, pool, sink):
    setup = await api.setup_campaign(offer_url="https://offer.example/?u={is_unique}")
    other = await api.create(
        "/api/campaigns",
        {
            "name": "Other",
            "traffic_source_id": setup["source"]["id"],
            "offers": [{"offer_id": setup["offer"]["id"]}],
        },
    )
    campaign = setup["campaign"]

    async def unique(target: dict[str, Any], **kwargs: Any) -> str:
        resp = await click(client, target, **kwargs)
        return query_of(resp.headers["Location"]).get("u", "")

    first = await click(client, campaign)
    assert query_of(first.headers["Location"])["u"] == "1"
    visitor = next(
        c.split(";")[0].split("=", 1)[1]
        for c in first.headers.getall("Set-Cookie")
        if c.startswith("tk_visitor=")
    )
    # The same address and browser: a repeat, with or without the cookie.
    assert await unique(campaign) == "0"
    assert await unique(campaign, cookies={"tk_visitor": visitor}) == "0"
    # The cookie keeps the visitor the same one from another browser string.
    assert (
        await unique(campaign, cookies={"tk_visitor": visitor}, headers={"User-Agent": IPHONE})
        == "0"
    )
    # Another browser without the cookie is another visitor; another campaign is new.
    assert await unique(campaign, headers={"User-Agent": IPHONE}) == "1"
    assert await unique(other) == "1"
    # Once the window has passed (its key expired), the visitor is unique again.
    for key in await redis.keys(f"{keys.UNIQUE_VISITOR_PREFIX}{{s*}}:{campaign['id']}:*"):
        ttl = await redis.ttl(key)
        assert 23 * 3600 < ttl <= 24 * 3600
        await redis.delete(key)
    assert await unique(campaign) == "1"
    await wait_for_sink(sink)
    [rollup] = await pool.fetch(
        "SELECT clicks, unique_clicks FROM click_rollups WHERE campaign_id = $1", campaign["id"]
    )
    assert tuple(rollup) == (6, 3)


async def test_rule_on_uniqueness_routes_repeat_visitors(client, api):
    setup = await api.setup_campaign(offer_url="https://offer.example/first")
    repeat_offer = await api.create(
        "/api/offers",
        {
            "name": "Repeat",
            "url": "https://offer.example/repeat",
            "affiliate_network_id": setup["network"]["id"],
        },
    )
    rule = {
        "name": "repeat visitors",
        "conditions": [{"field": "is_unique", "op": "in", "values": ["false"]}],
        "offers": [{"offer_id": repeat_offer["id"], "weight": 1}],
    }
    campaign = await api.call(
        "PATCH", f"/api/campaigns/{setup['campaign']['id']}", json={"rules": [rule]}
    )
    assert (await click(client, campaign)).headers["Location"] == "https://offer.example/first"
    assert (await click(client, campaign)).headers["Location"] == "https://offer.example/repeat"


async def test_a_rule_change_reaches_a_running_process_within_a_second(settings, api):
    """The other process polls the configuration version (every 0.5 s by default)."""
    default = settings.model_copy(update={"config_refresh_seconds": 0.5})
    other = await start_client(create_app(default), default)
    try:
        setup = await api.setup_campaign(offer_url="https://offer.example/default")
        german = await api.create(
            "/api/offers",
            {
                "name": "German",
                "url": "https://offer.example/de",
                "affiliate_network_id": setup["network"]["id"],
            },
        )
        campaign = setup["campaign"]
        headers = {"User-Agent": CHROME}
        deadline = time.monotonic() + 5
        while (
            await other.get(click_path(campaign), headers=headers, allow_redirects=False)
        ).status != 302:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        rule = {
            "name": "desktop",
            "conditions": [{"field": "device", "op": "in", "values": ["Desktop"]}],
            "offers": [{"offer_id": german["id"]}],
        }
        await api.call("PATCH", f"/api/campaigns/{campaign['id']}", json={"rules": [rule]})
        changed = time.monotonic()
        while True:
            resp = await other.get(click_path(campaign), headers=headers, allow_redirects=False)
            if resp.headers["Location"] == "https://offer.example/de":
                break
            assert time.monotonic() - changed < 1.0, "the rule did not arrive within a second"
            await asyncio.sleep(0.02)
    finally:
        await other.close()


async def test_old_records_without_facts_are_still_stored(redis, pool, sink):
    """Clicks written before the facts existed are on the stream during an upgrade."""
    old = {
        "click_id": "0" * 29,
        "created_ms": int(time.time() * 1000),
        "campaign_id": 1,
        "offer_id": 1,
        "traffic_source_id": 1,
        "external_id": None,
        "cost": None,
        "ip": "127.0.0.1",
    }
    await redis.xadd(keys.CLICK_STREAM, {"d": orjson.dumps(old)})
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT is_bot, is_unique FROM clicks")
    assert (row["is_bot"], row["is_unique"]) == (False, None)


async def test_a_click_through_stored_before_its_click_counts_once(redis, pool, sink):
    """A click replayed late from a spool reaches the stream after its click-through."""
    now = int(time.time() * 1000)
    click = {
        "click_id": "1" * 29,
        "created_ms": now,
        "campaign_id": 1,
        "offer_id": 5,
        "traffic_source_id": 1,
        "external_id": None,
        "cost": "0.2",
        "is_bot": False,
        "lander_id": 3,
        "is_unique": True,
    }
    through = {**click, "offer_id": 6, "lp_ms": now + 5000}
    await redis.xadd(keys.CLICK_STREAM, {"d": orjson.dumps(through)})
    await wait_for_sink(sink)
    await redis.xadd(keys.CLICK_STREAM, {"d": orjson.dumps(click)})
    await redis.xadd(keys.CLICK_STREAM, {"d": orjson.dumps({**through, "offer_id": 5})})
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT offer_id, lp_clicked_at FROM clicks")
    assert row["offer_id"] == 5
    assert abs(row["lp_clicked_at"].timestamp() * 1000 - (now + 5000)) < 1
    rollups = await pool.fetch(
        "SELECT offer_id, clicks, unique_clicks, lp_views, lp_clicks, cost::text AS cost"
        " FROM click_rollups ORDER BY offer_id"
    )
    assert [tuple(r) for r in rollups] == [
        (5, 1, 1, 1, 1, "0.200000"),
        (6, 0, 0, 0, 0, "0.000000"),
    ]
