"""Admin API for flows: landers, campaign landers and rules, bot action, uniques, time zone,
cost models; every refusal naming its place; the compiled configuration the click path reads."""

import logging
from decimal import Decimal
from typing import Any

import orjson
import pytest

from tracker.domain.macros import compile_template
from tracker.domain.visitor import Agent, Geo, Visitor
from tracker.web.appkeys import CONFIG

GERMAN_IPHONE = Visitor(
    ip="203.0.113.7",
    user_agent="Mozilla/5.0 (iPhone)",
    referrer=None,
    language="de",
    geo=Geo(country="DE"),
    agent=Agent(device="mobile", os="iOS", browser="Mobile Safari"),
)
NOWHERE = Visitor(ip=None, user_agent=None, referrer=None, language=None)


async def landers(api: Any, count: int) -> list[dict[str, Any]]:
    return [
        await api.create(
            "/api/landers", {"name": f"LP {i}", "url": f"https://lp{i}.example/?c={{clickid}}"}
        )
        for i in range(count)
    ]


async def offers(api: Any, network_id: int, count: int) -> list[dict[str, Any]]:
    return [
        await api.create(
            "/api/offers",
            {
                "name": f"Offer {i}",
                "url": f"https://offer{i}.example/?c={{clickid}}",
                "affiliate_network_id": network_id,
            },
        )
        for i in range(count)
    ]


@pytest.fixture
async def flow(api: Any) -> dict[str, Any]:
    """A campaign with one offer, plus three more offers and three landers to route to."""
    setup = await api.setup_campaign()
    setup["offers"] = [setup["offer"], *await offers(api, setup["network"]["id"], 3)]
    setup["landers"] = await landers(api, 3)
    return setup


def campaign_body(flow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    o, lp = [x["id"] for x in flow["offers"]], [x["id"] for x in flow["landers"]]
    body = {
        "name": "Flows",
        "traffic_source_id": flow["source"]["id"],
        "offers": [{"offer_id": o[0], "weight": 100}],
        "landers": [{"lander_id": lp[0], "weight": 70}, {"lander_id": lp[1], "weight": 30}],
        "rules": [
            {
                "name": "German iPhones",
                "conditions": [
                    {"field": "country", "op": "in", "values": ["DE", "at"]},
                    {"field": "os", "op": "in", "values": ["ios"]},
                ],
                "offers": [{"offer_id": o[1], "weight": 1}, {"offer_id": o[2], "weight": 3}],
                "landers": [{"lander_id": lp[2], "weight": 100}],
            },
            {
                "name": "Zone 7 at night",
                "conditions": [
                    {"field": "param:zone", "op": "in", "values": ["7"]},
                    {"field": "hour", "op": "not_in", "values": [9, 10, 11]},
                ],
                "offers": [{"offer_id": o[3], "weight": 100}],
            },
        ],
        "bot_action": "url",
        "bot_url": "https://safe.example/?c={clickid}",
        "unique_window_hours": 48,
        "timezone": "europe/berlin",
    }
    body.update(extra)
    return body


async def test_landers_crud_and_archive(api, client):
    [lander] = await landers(api, 1)
    assert lander["name"] == "LP 0" and lander["archived_at"] is None
    assert lander["url"] == "https://lp0.example/?c={clickid}"
    renamed = await api.call("PATCH", f"/api/landers/{lander['id']}", json={"name": "Main LP"})
    assert (renamed["name"], renamed["url"]) == ("Main LP", lander["url"])
    assert (await api.call("GET", f"/api/landers/{lander['id']}"))["name"] == "Main LP"
    assert [x["id"] for x in (await api.call("GET", "/api/landers"))["items"]] == [lander["id"]]
    assert client.app[CONFIG].snapshot.landers[lander["id"]].url == compile_template(
        "https://lp0.example/?c={clickid}"
    )

    archived = await api.call("DELETE", f"/api/landers/{lander['id']}")
    assert archived["archived_at"] is not None
    assert (await api.call("GET", "/api/landers"))["items"] == []
    listed = await api.call("GET", "/api/landers?include_archived=true")
    assert [x["id"] for x in listed["items"]] == [lander["id"]]
    # Archived landers stay known, for visitors already on them.
    assert lander["id"] in client.app[CONFIG].snapshot.landers
    await api.call("GET", "/api/landers/999", expect=404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "L", "url": "ftp://lp.example/"}, "url"),
        ({"name": "L", "url": "https://{host}/"}, "url"),
        ({"name": "L", "url": "https://lp.example/ x"}, "url"),
        ({"name": "", "url": "https://lp.example/"}, "name"),
        ({"url": "https://lp.example/"}, "name"),
        ({"name": "L", "url": "https://lp.example/", "weight": 3}, "weight"),
    ],
)
async def test_lander_bodies_are_validated(api, body, field):
    answer = await api.call("POST", "/api/landers", expect=400, json=body)
    assert field in {d["field"] for d in answer["details"]}


async def test_campaign_with_landers_and_rules_round_trips(api, client, flow):
    body = campaign_body(flow)
    created = await api.create("/api/campaigns", body)
    assert created["landers"] == body["landers"]
    # A rule without landers comes back with an empty list: straight to the offer.
    body["rules"][1]["landers"] = []
    assert created["rules"] == body["rules"]
    assert (created["bot_action"], created["bot_url"]) == ("url", body["bot_url"])
    assert created["unique_window_hours"] == 48
    assert created["timezone"] == "Europe/Berlin"
    fetched = await api.call("GET", f"/api/campaigns/{created['id']}")
    assert {k: fetched[k] for k in body} == {**body, "timezone": "Europe/Berlin"}
    [listed] = [
        c for c in (await api.call("GET", "/api/campaigns"))["items"] if c["id"] == created["id"]
    ]
    assert (listed["landers"], listed["rules"]) == (body["landers"], body["rules"])

    route = client.app[CONFIG].snapshot.campaigns[created["key"]]
    o, lp = [x["id"] for x in flow["offers"]], [x["id"] for x in flow["landers"]]
    assert [x.id for x in route.landers] == lp[:2]
    assert [x.id for x in route.offers] == [o[0]]
    assert (route.bot_action, route.unique_window_hours, str(route.timezone)) == (
        "url",
        48,
        "Europe/Berlin",
    )
    assert route.bot_url == compile_template("https://safe.example/?c={clickid}")
    assert not route.uses_uniqueness_rules()
    index, path = route.choose_path(GERMAN_IPHONE, {}, None, 0)
    assert index == 0
    assert [x.id for x in path.offers] == o[1:3] and [x.id for x in path.landers] == [lp[2]]
    # 1970-01-01 00:00 UTC is 01:00 in Berlin: not 9 to 11, so rule 1 holds for zone 7.
    index, path = route.choose_path(NOWHERE, {"zone": "7"}, None, 0)
    assert index == 1 and [x.id for x in path.offers] == [o[3]] and not path.landers
    eleven_in_berlin = 10 * 3600 * 1000
    assert route.choose_path(NOWHERE, {"zone": "7"}, None, eleven_in_berlin) == (
        -1,
        route.default_path,
    )
    assert route.path_at(1) is path


async def test_defaults_for_a_plain_campaign(api, flow):
    campaign = flow["campaign"]
    assert (campaign["landers"], campaign["rules"]) == ([], [])
    assert (campaign["bot_action"], campaign["bot_url"]) == ("offer", None)
    assert (campaign["unique_window_hours"], campaign["timezone"]) == (24, "UTC")


def _rule(flow: dict[str, Any], **change: Any) -> dict[str, Any]:
    rule = {
        "name": "r",
        "conditions": [{"field": "country", "op": "in", "values": ["DE"]}],
        "offers": [{"offer_id": flow["offers"][1]["id"], "weight": 1}],
        "landers": [],
    }
    rule.update(change)
    return rule


def _cond(field: str, op: str, values: Any) -> list[dict[str, Any]]:
    return [{"field": field, "op": op, "values": values}]


BAD_RULES = [
    (lambda f: [_rule(f, conditions=_cond("planet", "in", ["x"]))], "rules.0.conditions.0.field"),
    (
        lambda f: [_rule(f), _rule(f), _rule(f, conditions=_cond("country", "is", ["DE"]))],
        "rules.2.conditions.0.op",
    ),
    (lambda f: [_rule(f, conditions=_cond("country", "in", []))], "rules.0.conditions.0.values"),
    (
        lambda f: [_rule(f, conditions=_cond("ip", "in", ["10.0.0.0/8", "10.0.0.0/40"]))],
        "rules.0.conditions.0.values.1",
    ),
    (
        lambda f: [_rule(f, conditions=_cond("country", "in", ["DE", "XX"]))],
        "rules.0.conditions.0.values.1",
    ),
    (lambda f: [_rule(f, conditions=_cond("hour", "in", [24]))], "rules.0.conditions.0.values.0"),
    (
        lambda f: [_rule(f, conditions=_cond("weekday", "in", ["someday"]))],
        "rules.0.conditions.0.values.0",
    ),
    (
        lambda f: [_rule(f, conditions=_cond("device", "not_in", ["phone"]))],
        "rules.0.conditions.0.values.0",
    ),
    (lambda f: [_rule(f, conditions=[])], "rules.0.conditions"),
    (lambda f: [_rule(f, offers=[])], "rules.0.offers"),
    (
        lambda f: [_rule(f, offers=[{"offer_id": f["offers"][1]["id"], "weight": 0}])],
        "rules.0.offers",
    ),
    (
        lambda f: [
            _rule(
                f,
                offers=[
                    {"offer_id": f["offers"][1]["id"], "weight": 1},
                    {"offer_id": 999_999, "weight": 1},
                ],
            )
        ],
        "rules.0.offers.1.offer_id",
    ),
    (
        lambda f: [_rule(f, landers=[{"lander_id": 999_999, "weight": 1}])],
        "rules.0.landers.0.lander_id",
    ),
    (lambda f: [{"conditions": [{"field": "country", "op": "in"}]}], "rules.0.offers"),
]


@pytest.mark.parametrize(("rules", "place"), BAD_RULES)
async def test_bad_rules_name_their_place(api, flow, rules, place):
    body = campaign_body(flow, rules=rules(flow))
    answer = await api.call("POST", "/api/campaigns", expect=400, json=body)
    assert place in {d["field"] for d in answer["details"]}, answer


@pytest.mark.parametrize(
    ("extra", "place"),
    [
        ({"landers": [{"lander_id": 999_999, "weight": 1}]}, "landers.0.lander_id"),
        ({"offers": [{"offer_id": 999_999, "weight": 1}]}, "offers.0.offer_id"),
        ({"landers": [{"lander_id": 1, "weight": -1}]}, "landers.0.weight"),
        ({"bot_action": "redirect"}, "bot_action"),
        ({"bot_action": "url", "bot_url": None}, "bot_url"),
        ({"bot_action": "url", "bot_url": "javascript:alert(1)"}, "bot_url"),
        ({"unique_window_hours": 0}, "unique_window_hours"),
        ({"unique_window_hours": 8761}, "unique_window_hours"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"cost_model": "cpx"}, "cost_model"),
        ({"cost_model": "cpm"}, "cost_value"),
        ({"cost_model": "cpm", "cost_value": "1.2345"}, "cost_value"),
        ({"cost_model": "cpa", "cost_value": "-1"}, "cost_value"),
        ({"cost_model": "revshare", "cost_value": "100.01"}, "cost_value"),
        ({"cost_model": "revshare"}, "cost_value"),
        ({"cost_model": "cpc"}, "cost_value"),
    ],
)
async def test_bad_campaign_fields_name_their_place(api, flow, extra, place):
    answer = await api.call("POST", "/api/campaigns", expect=400, json=campaign_body(flow, **extra))
    assert place in {d["field"] for d in answer["details"]}, answer


async def test_every_bad_reference_is_named_at_once(api, flow):
    body = campaign_body(
        flow,
        landers=[{"lander_id": 999_998, "weight": 1}],
        rules=[
            _rule(flow, landers=[{"lander_id": 999_997}]),
            _rule(flow, conditions=_cond("country", "maybe", ["DE"])),
        ],
    )
    answer = await api.call("POST", "/api/campaigns", expect=400, json=body)
    assert answer["error"] == "invalid campaign"
    assert answer["details"] == [
        {"field": "rules.1.conditions.0.op", "message": "must be 'in' or 'not_in'"},
        {"field": "landers.0.lander_id", "message": "no active landers row 999998"},
        {"field": "rules.0.landers.0.lander_id", "message": "no active landers row 999997"},
    ]


async def test_archived_offers_and_landers_are_refused(api, flow):
    offer, lander = flow["offers"][2], flow["landers"][2]
    await api.call("DELETE", f"/api/offers/{offer['id']}")
    await api.call("DELETE", f"/api/landers/{lander['id']}")
    answer = await api.call("POST", "/api/campaigns", expect=400, json=campaign_body(flow))
    assert {d["field"] for d in answer["details"]} == {
        "rules.0.offers.1.offer_id",
        "rules.0.landers.0.lander_id",
    }
    body = campaign_body(flow, landers=[{"lander_id": lander["id"]}], rules=[])
    answer = await api.call("POST", "/api/campaigns", expect=400, json=body)
    assert [d["field"] for d in answer["details"]] == ["landers.0.lander_id"]


@pytest.mark.parametrize(
    ("model", "value"),
    [("cpm", "2.5"), ("cpa", "4.00"), ("revshare", "40"), ("revshare", "0"), ("cpc", "0.05")],
)
async def test_cost_models_are_accepted(api, client, flow, model, value):
    body = campaign_body(flow, cost_model=model, cost_value=value)
    created = await api.create("/api/campaigns", body)
    assert (created["cost_model"], Decimal(created["cost_value"])) == (model, Decimal(value))
    route = client.app[CONFIG].snapshot.campaigns[created["key"]]
    expected = {"cpm": Decimal("0.0025"), "cpc": Decimal("0.05")}.get(model)
    assert route.click_cost("0.10") == expected


async def test_patch_keeps_landers_and_rules(api, flow):
    created = await api.create("/api/campaigns", campaign_body(flow))
    path = f"/api/campaigns/{created['id']}"
    patched = await api.call("PATCH", path, json={"name": "Renamed"})
    assert patched["name"] == "Renamed"
    for key in ("landers", "rules", "bot_action", "bot_url", "unique_window_hours", "timezone"):
        assert patched[key] == created[key], key
    # Patching the rules alone replaces them and leaves the default path's landers.
    new_rules = [_rule(flow)]
    patched = await api.call("PATCH", path, json={"rules": new_rules})
    assert patched["rules"] == new_rules and patched["landers"] == created["landers"]
    patched = await api.call("PATCH", path, json={"landers": [], "bot_action": "404"})
    assert (patched["landers"], patched["rules"], patched["bot_action"]) == ([], new_rules, "404")
    # A patch is validated against the merged whole: bot_action url needs the stored bot_url.
    patched = await api.call("PATCH", path, json={"bot_action": "url"})
    assert patched["bot_url"] == created["bot_url"]
    answer = await api.call("PATCH", path, expect=400, json={"rules": [_rule(flow, offers=[])]})
    assert [d["field"] for d in answer["details"]] == ["rules.0.offers"]
    assert (await api.call("GET", path))["rules"] == new_rules


async def test_archived_offers_and_landers_leave_the_compiled_paths(api, client, flow):
    created = await api.create("/api/campaigns", campaign_body(flow))
    o, lp = flow["offers"], flow["landers"]
    await api.call("DELETE", f"/api/landers/{lp[0]['id']}")
    await api.call("DELETE", f"/api/offers/{o[1]['id']}")
    route = client.app[CONFIG].snapshot.campaigns[created["key"]]
    assert [x.id for x in route.landers] == [lp[1]["id"]]
    assert route.choose_path(GERMAN_IPHONE, {}, None, 0)[0] == 0
    assert [x.id for x in route.path_at(0).offers] == [o[2]["id"]]
    # The rule's last offer gone: it falls through, here to the default path.
    await api.call("DELETE", f"/api/offers/{o[2]['id']}")
    route = client.app[CONFIG].snapshot.campaigns[created["key"]]
    assert route.choose_path(GERMAN_IPHONE, {}, None, 0) == (-1, route.default_path)
    assert route.path_at(0) is route.default_path


async def test_a_stored_rule_that_does_not_compile_is_skipped(api, client, flow, pool, caplog):
    created = await api.create("/api/campaigns", campaign_body(flow))
    other = await api.create("/api/campaigns", campaign_body(flow, name="Other"))
    rules = campaign_body(flow)["rules"]
    rules[0]["conditions"][0]["op"] = "roughly"
    await pool.execute(
        "UPDATE campaigns SET rules = $2::text::jsonb, timezone = 'Nowhere/Land' WHERE id = $1",
        created["id"],
        orjson.dumps(rules).decode(),
    )
    with caplog.at_level(logging.WARNING, logger="tracker.config"):
        await client.app[CONFIG].reload()
    snapshot = client.app[CONFIG].snapshot
    route = snapshot.campaigns[created["key"]]
    assert [rule.index for rule in route.rules] == [1]
    assert str(route.timezone) == "UTC"
    assert [rule.index for rule in snapshot.campaigns[other["key"]].rules] == [0, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("rule 0 skipped" in m and "conditions.0.op" in m for m in messages), messages
    assert any("Nowhere/Land" in m for m in messages), messages


async def test_uniqueness_rules_are_announced(api, client, flow):
    rule = _rule(flow, conditions=_cond("is_unique", "in", [True]))
    created = await api.create("/api/campaigns", campaign_body(flow, rules=[rule]))
    route = client.app[CONFIG].snapshot.campaigns[created["key"]]
    assert route.uses_uniqueness_rules()
    assert route.choose_path(NOWHERE, {}, True, 0)[0] == 0
    assert route.choose_path(NOWHERE, {}, False, 0)[0] == -1
