"""Admin API: auth, validation, CRUD, archive, and configuration reaching every process."""

import asyncio
from urllib.parse import urlsplit

from tests.conftest import start_client
from tracker.web.app import create_app


async def test_api_key_is_required(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-api-key"}):
        resp = await client.get("/api/campaigns", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"] == "missing or wrong API key"
    resp = await client.get("/api/reports?from=2026-01-01&to=2026-01-01")
    assert resp.status == 401


async def test_invalid_bodies_name_the_field(api):
    body = await api.call("POST", "/api/traffic-sources", expect=400, json={"name": ""})
    assert body["error"] == "invalid request"
    assert body["details"][0]["field"] == "name"
    body = await api.call("POST", "/api/traffic-sources", expect=400, data="[1")
    assert body["error"] == "request body is not valid JSON"
    network = await api.create("/api/affiliate-networks", {"name": "N"})
    body = await api.call(
        "POST",
        "/api/offers",
        expect=400,
        json={"name": "O", "url": "ftp://x", "affiliate_network_id": network["id"], "payout": 1.5},
    )
    assert {d["field"] for d in body["details"]} == {"url", "payout"}
    body = await api.call(
        "POST",
        "/api/offers",
        expect=400,
        json={"name": "O", "url": "https://x.example/", "affiliate_network_id": 999},
    )
    assert body["details"] == [
        {"field": "affiliate_network_id", "message": "no active affiliate_networks row 999"}
    ]
    body = await api.call("POST", "/api/campaigns", expect=400, json={"name": "C", "bogus": 1})
    assert {d["field"] for d in body["details"]} >= {"bogus", "traffic_source_id", "offers"}


async def test_crud_and_archive(api):
    source = await api.create(
        "/api/traffic-sources", {"name": "Src", "external_id_param": "zoneid"}
    )
    assert source["cost_param"] == "cost"
    assert source["archived_at"] is None
    updated = await api.call(
        "PATCH", f"/api/traffic-sources/{source['id']}", json={"name": "Renamed"}
    )
    assert (updated["name"], updated["external_id_param"]) == ("Renamed", "zoneid")
    assert (await api.call("GET", f"/api/traffic-sources/{source['id']}"))["name"] == "Renamed"
    await api.call("PATCH", f"/api/traffic-sources/{source['id']}", expect=400, json={"name": None})
    await api.call("GET", "/api/traffic-sources/999", expect=404)
    await api.call("PATCH", "/api/traffic-sources/999", expect=404, json={"name": "x"})
    await api.call("GET", "/api/traffic-sources/abc", expect=404)
    archived = await api.call("DELETE", f"/api/traffic-sources/{source['id']}")
    assert archived["archived_at"] is not None
    assert (await api.call("GET", "/api/traffic-sources"))["items"] == []
    listed = await api.call("GET", "/api/traffic-sources?include_archived=true")
    assert [item["id"] for item in listed["items"]] == [source["id"]]


async def test_network_and_campaign_urls(api):
    setup = await api.setup_campaign(payout="1.50")
    network, campaign, offer = setup["network"], setup["campaign"], setup["offer"]
    assert len(network["postback_token"]) >= 20
    assert network["postback_url"] == (
        "http://tracker.test/postback?clickid={clickid}&payout={payout}&txid={txid}"
        f"&status={{status}}&token={network['postback_token']}"
    )
    assert offer["payout"] == "1.50" and offer["currency"] == "USD"
    assert campaign["click_url"] == f"http://tracker.test/c/{campaign['key']}"
    assert len(campaign["key"]) >= 12
    assert campaign["offers"] == [{"offer_id": offer["id"], "weight": 100}]
    assert campaign["attribution_window_days"] == 30
    got = await api.call("GET", f"/api/campaigns/{campaign['id']}")
    assert got == campaign


async def test_campaign_changes_reach_other_processes(settings, api, client):
    """A campaign made through one app instance works at once on another."""
    other = await start_client(create_app(settings), settings)
    try:
        setup = await api.setup_campaign()
        path = urlsplit(setup["campaign"]["click_url"]).path
        for _ in range(50):
            resp = await other.get(path, allow_redirects=False)
            if resp.status == 302:
                break
            await asyncio.sleep(0.05)
        assert resp.status == 302
        await api.call("DELETE", f"/api/campaigns/{setup['campaign']['id']}")
        for _ in range(50):
            resp = await other.get(path, allow_redirects=False)
            if resp.status == 404:
                break
            await asyncio.sleep(0.05)
        assert resp.status == 404
    finally:
        await other.close()


async def test_unknown_route_is_json(client):
    resp = await client.get("/nope")
    assert resp.status == 404
    assert await resp.json() == {"error": "Not Found"}


async def test_postback_on_a_process_that_has_not_refreshed_yet(settings, api, client):
    """The offer is new to the second process: it reloads instead of skipping the auth checks."""
    slow = settings.model_copy(update={"config_refresh_seconds": 3600})
    other = await start_client(create_app(slow), slow)
    try:
        setup = await api.setup_campaign()
        resp = await client.get(
            urlsplit(setup["campaign"]["click_url"]).path, allow_redirects=False
        )
        click_id = resp.headers["Location"].split("cid=")[1]
        resp = await other.get("/postback", params={"clickid": click_id})
        assert resp.status == 403
        assert (await resp.json())["error"] == "forbidden: missing token"
        token = setup["network"]["postback_token"]
        resp = await other.get("/postback", params={"clickid": click_id, "token": token})
        assert resp.status == 200
    finally:
        await other.close()
