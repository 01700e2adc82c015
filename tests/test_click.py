"""The click redirect: what is stored, where the visitor goes, what is refused."""

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from tests.conftest import (
    Api,
    break_click_streams,
    click_entries,
    click_stream_length,
    mend_click_streams,
    start_client,
)
from tracker.store import keys
from tracker.web.app import create_app
from tracker.web.appkeys import CLICK_WRITER, CONFIG


def click_path(campaign):
    return urlsplit(campaign["click_url"]).path


async def test_redirect_substitutes_and_encodes_macros(client, api, redis):
    setup = await api.setup_campaign(
        offer_url=(
            "https://offer.example/lp?cid={clickid}&c={campaign_id}&o={offer_id}"
            "&t={traffic_source_id}&e={external_id}&s1={sub1}&s10={sub10}&z={zone}&u={unknown}"
        )
    )
    campaign = setup["campaign"]
    resp = await client.get(
        click_path(campaign),
        params={"external_id": "ext 1", "sub1": "a&b=c", "sub10": "é/?", "zone": "42#x"},
        allow_redirects=False,
    )
    assert resp.status == 302
    location = resp.headers["Location"]
    click_id = location.split("cid=")[1].split("&")[0]
    assert location == (
        f"https://offer.example/lp?cid={click_id}&c={campaign['id']}&o={setup['offer']['id']}"
        f"&t={setup['source']['id']}&e=ext%201&s1=a%26b%3Dc&s10=%C3%A9%2F%3F&z=42%23x&u="
    )
    record = orjson.loads(await redis.get(keys.click_key(click_id)))
    assert record["external_id"] == "ext 1"
    assert record["sub1"] == "a&b=c"
    assert record["params"] == {"zone": "42#x"}
    assert record["campaign_id"] == campaign["id"]
    assert record["ip"] == "127.0.0.1"


async def test_click_is_in_redis_with_ttl_and_on_stream(client, api, redis):
    campaign = (await api.setup_campaign())["campaign"]
    await api.call("PATCH", f"/api/campaigns/{campaign['id']}", json={"attribution_window_days": 7})
    resp = await client.get(
        click_path(campaign),
        headers={"User-Agent": "UA/1.0", "Referer": "https://site.example/"},
        allow_redirects=False,
    )
    click_id = resp.headers["Location"].split("cid=")[1]
    ttl = await redis.ttl(keys.click_key(click_id))
    # The hot window (72 h by default) is shorter than the 7-day attribution window.
    assert 72 * 3600 - 5 < ttl <= 72 * 3600
    [(_, fields)] = await click_entries(redis)
    record = orjson.loads(fields[b"d"])
    assert record["click_id"] == click_id
    assert record["user_agent"] == "UA/1.0"
    assert record["referrer"] == "https://site.example/"


async def test_cost_models(client, api, redis):
    setup = await api.setup_campaign(cost_model="auto")
    campaign = setup["campaign"]
    costs = []
    for cost in ("0.0123", "abc", None):
        params = {"cost": cost} if cost is not None else {}
        resp = await client.get(click_path(campaign), params=params, allow_redirects=False)
        click_id = resp.headers["Location"].split("cid=")[1]
        costs.append(orjson.loads(await redis.get(keys.click_key(click_id))).get("cost"))
    # A malformed cost does not lose the click; it is stored without a cost (a record
    # leaves its null members out).
    assert costs == ["0.0123", None, None]

    await api.call(
        "PATCH",
        f"/api/campaigns/{campaign['id']}",
        json={"cost_model": "cpc", "cost_value": "0.07"},
    )
    resp = await client.get(click_path(campaign), params={"cost": "9"}, allow_redirects=False)
    click_id = resp.headers["Location"].split("cid=")[1]
    assert orjson.loads(await redis.get(keys.click_key(click_id))).get("cost") == "0.070000"


async def test_free_parameters_are_bounded(client, api, redis, settings):
    campaign = (await api.setup_campaign())["campaign"]
    params = {"long": "v" * 600, **{f"p{i}": "v" * 350 for i in range(35)}}
    resp = await client.get(click_path(campaign), params=params, allow_redirects=False)
    assert resp.status == 302
    click_id = resp.headers["Location"].split("cid=")[1]
    record = orjson.loads(await redis.get(keys.click_key(click_id)))
    assert len(record["params"]) == settings.click_max_params
    assert len(record["params"]["long"]) == settings.click_max_param_length


async def test_weights_route_to_offers(client, api, redis):
    setup = await api.setup_campaign()
    network_id = setup["network"]["id"]
    other = await api.create(
        "/api/offers",
        {
            "name": "B",
            "url": "https://b.example/?cid={clickid}",
            "affiliate_network_id": network_id,
        },
    )
    campaign = setup["campaign"]
    await api.call(
        "PATCH",
        f"/api/campaigns/{campaign['id']}",
        json={
            "offers": [{"offer_id": setup["offer"]["id"], "weight": 0}, {"offer_id": other["id"]}]
        },
    )
    for _ in range(20):
        resp = await client.get(click_path(campaign), allow_redirects=False)
        assert resp.headers["Location"].startswith("https://b.example/")


async def test_unknown_and_archived_campaigns_record_nothing(client, api, redis):
    campaign = (await api.setup_campaign())["campaign"]
    resp = await client.get("/c/nope", allow_redirects=False)
    assert resp.status == 404
    assert (await resp.json())["error"] == "unknown campaign"
    await api.call("DELETE", f"/api/campaigns/{campaign['id']}")
    resp = await client.get(click_path(campaign), allow_redirects=False)
    assert resp.status == 404
    assert await click_stream_length(redis) == 0
    assert await redis.keys(keys.CLICK_PREFIX + "*") == []


async def test_head_is_not_a_click(client, api, redis):
    campaign = (await api.setup_campaign())["campaign"]
    resp = await client.head(click_path(campaign), allow_redirects=False)
    assert resp.status == 200
    assert "Location" not in resp.headers
    assert (await client.head("/c/nope")).status == 404
    assert await click_stream_length(redis) == 0


async def test_huge_query_string_gets_json_414(client, api, redis):
    campaign = (await api.setup_campaign())["campaign"]
    resp = await client.get(click_path(campaign) + "?sub1=" + "x" * 40_000, allow_redirects=False)
    assert resp.status == 414
    assert "longer than" in (await resp.json())["error"]
    assert await click_stream_length(redis) == 0


async def test_failed_redis_write_spools_the_click_then_replays_it(client, api, redis, settings):
    campaign = (await api.setup_campaign())["campaign"]
    # A stream key of the wrong type makes XADD fail inside the script.
    await break_click_streams(redis)
    resp = await client.get(click_path(campaign), allow_redirects=False)
    assert resp.status == 302
    click_id = resp.headers["Location"].split("cid=")[1]
    writer = client.server.app[CLICK_WRITER]
    assert writer.degraded and writer.spooled == 1
    spooled = list(Path(settings.spool_dir).glob("clicks-*.jsonl"))
    assert len(spooled) == 1 and click_id.encode() in spooled[0].read_bytes()
    await redis.delete(keys.click_key(click_id))  # the SET ran before the XADD failed

    await mend_click_streams(redis)  # Redis "recovers"
    deadline = asyncio.get_running_loop().time() + 10
    while writer.degraded or list(Path(settings.spool_dir).glob("clicks-*.jsonl")):
        assert asyncio.get_running_loop().time() < deadline, "spool was not replayed"
        await asyncio.sleep(0.05)
    ttl = await redis.ttl(keys.click_key(click_id))
    assert 72 * 3600 - 60 < ttl <= 72 * 3600  # the hot window
    [(_, fields)] = await click_entries(redis)
    assert orjson.loads(fields[b"d"])["click_id"] == click_id
    # Back on the normal path: the next click goes to Redis, not the spool.
    resp = await client.get(click_path(campaign), allow_redirects=False)
    assert resp.status == 302 and writer.spooled == 1
    assert await click_stream_length(redis) == 2


async def test_no_redirect_when_neither_redis_nor_spool_can_take_the_click(api, redis, settings):
    blocker = Path(settings.spool_dir).parent / "not-a-dir"
    blocker.write_text("")
    bad = settings.model_copy(update={"spool_dir": str(blocker / "spool")})
    client = await start_client(create_app(bad), bad)
    try:
        api = Api(client)
        campaign = (await api.setup_campaign())["campaign"]
        await break_click_streams(redis)
        resp = await client.get(click_path(campaign), allow_redirects=False)
        assert resp.status == 503
        assert "Location" not in resp.headers
        assert "could not be recorded" in (await resp.json())["error"]
    finally:
        await client.close()


async def test_hostile_costs_are_dropped_and_the_click_kept(client, api, redis):
    setup = await api.setup_campaign(cost_model="auto")
    campaign = setup["campaign"]
    assert setup["source"]["max_click_cost"] == "100.00"
    stored = {}
    for cost in ("-5", "1e12", "999999999999", "100.000001", "100", "0", "12.5"):
        resp = await client.get(click_path(campaign), params={"cost": cost}, allow_redirects=False)
        assert resp.status == 302
        click_id = resp.headers["Location"].split("cid=")[1]
        stored[cost] = orjson.loads(await redis.get(keys.click_key(click_id))).get("cost")
    assert stored == {
        "-5": None,
        "1e12": None,
        "999999999999": None,
        "100.000001": None,
        "100": "100",
        "0": "0",
        "12.5": "12.5",
    }
    # The cap is the traffic source's to set.
    source_id = setup["source"]["id"]
    await api.call("PATCH", f"/api/traffic-sources/{source_id}", json={"max_click_cost": "1000"})
    await api.call(
        "PATCH", f"/api/traffic-sources/{source_id}", json={"max_click_cost": "-1"}, expect=400
    )
    await client.server.app[CONFIG].reload()
    resp = await client.get(click_path(campaign), params={"cost": "500"}, allow_redirects=False)
    click_id = resp.headers["Location"].split("cid=")[1]
    assert orjson.loads(await redis.get(keys.click_key(click_id))).get("cost") == "500"


async def test_click_ip_follows_the_trusted_proxy_rule(api, redis, settings):
    trusting = settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    client = await start_client(create_app(trusting), trusting)
    try:
        campaign = (await Api(client).setup_campaign())["campaign"]
        ips = []
        for lines in (["203.0.113.9"], ["198.51.100.1, 203.0.113.7", "127.0.0.1"], []):
            headers = [("X-Forwarded-For", line) for line in lines]
            resp = await client.get(click_path(campaign), headers=headers, allow_redirects=False)
            click_id = resp.headers["Location"].split("cid=")[1]
            ips.append(orjson.loads(await redis.get(keys.click_key(click_id)))["ip"])
        assert ips == ["203.0.113.9", "203.0.113.7", "127.0.0.1"]
    finally:
        await client.close()


async def test_untrusted_peer_cannot_forge_the_click_ip(client, api, redis):
    campaign = (await api.setup_campaign())["campaign"]
    resp = await client.get(
        click_path(campaign), headers={"X-Forwarded-For": "203.0.113.9"}, allow_redirects=False
    )
    click_id = resp.headers["Location"].split("cid=")[1]
    assert orjson.loads(await redis.get(keys.click_key(click_id)))["ip"] == "127.0.0.1"
