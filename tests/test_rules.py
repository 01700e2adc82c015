"""Rules: every field and op, case, missing facts, networks, local time, order, default path."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tracker.domain.campaign import CampaignRoute, FlowPath, LanderRoute, OfferRoute
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.domain.rules import (
    ClickFacts,
    RuleError,
    compile_condition,
    compile_rule,
)
from tracker.domain.visitor import Agent, Geo, Visitor

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def ms(text: str) -> int:
    """A UTC time given as ISO text, in Unix milliseconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# Wednesday 2026-03-04 12:00 UTC.
NOON_UTC = ms("2026-03-04T12:00:00")

VISITOR = Visitor(
    ip="203.0.113.7",
    user_agent="Mozilla/5.0",
    referrer=None,
    language="de",
    geo=Geo(country="DE", region="Bavaria", city="München", asn=3320, isp="Deutsche Telekom AG"),
    agent=Agent(device="mobile", os="iOS", browser="Mobile Safari"),
)
BARE = Visitor(ip=None, user_agent=None, referrer=None, language=None)


def facts(
    visitor: Visitor = VISITOR,
    params: dict[str, str] | None = None,
    is_unique: bool | None = True,
    now_ms: int = NOON_UTC,
    timezone: Any = UTC,
) -> ClickFacts:
    return ClickFacts(visitor, params or {}, is_unique, now_ms, timezone)


def holds(field: str, op: str, values: list[Any], click: ClickFacts | None = None) -> bool:
    condition = compile_condition({"field": field, "op": op, "values": values})
    return condition.holds(click or facts())


@pytest.mark.parametrize(
    ("field", "hit", "miss"),
    [
        ("country", ["de", "AT"], ["FR"]),
        ("region", ["BAVARIA"], ["Hesse"]),
        ("city", ["MÜNCHEN"], ["Berlin"]),
        ("device", ["Mobile", "tablet"], ["desktop", "other"]),
        ("os", ["ios"], ["Android"]),
        ("browser", ["mobile safari"], ["Chrome Mobile"]),
        ("language", ["DE", "en"], ["fr"]),
        ("ip", ["203.0.113.0/24"], ["198.51.100.0/24", "2001:db8::/32"]),
        ("asn", [3320], ["AS15169"]),
        ("asn", ["AS3320"], ["15169"]),
        ("asn", ["deutsche telekom ag"], ["Google LLC"]),
        ("is_bot", [False], ["true"]),
        ("is_unique", ["TRUE"], [False]),
        ("hour", [12, "13"], [0, 23]),
        ("weekday", ["wed"], ["mon", 7]),
        ("weekday", [3], ["Sunday"]),
        ("weekday", ["Wednesday"], ["sat", "sun"]),
        ("param:sub1", ["ABC"], ["def"]),
        ("param:zone", [42], ["43"]),
    ],
)
def test_every_field_with_both_ops(field, hit, miss):
    click = facts(params={"sub1": "abc", "zone": "42"})
    assert holds(field, "in", hit, click) is True
    assert holds(field, "in", miss, click) is False
    assert holds(field, "not_in", hit, click) is False
    assert holds(field, "not_in", miss, click) is True


@pytest.mark.parametrize(
    "field",
    [
        "country",
        "region",
        "city",
        "os",
        "browser",
        "language",
        "ip",
        "asn",
        "is_unique",
        "param:sub1",
    ],
)
def test_a_missing_fact_fails_in_and_passes_not_in(field):
    values = {
        "country": ["DE"],
        "language": ["de"],
        "ip": ["0.0.0.0/0", "::/0"],
        "asn": [3320, "x"],
        "is_unique": [True, False],
    }.get(field, ["x"])
    click = facts(visitor=BARE, is_unique=None)
    assert holds(field, "in", values, click) is False
    assert holds(field, "not_in", values, click) is True


def test_facts_every_click_has():
    # A visitor with nothing known is still a device of type `other` and not a bot.
    click = facts(visitor=BARE)
    assert holds("device", "in", ["other"], click)
    assert holds("is_bot", "in", [False], click)
    bot = Visitor(ip=None, user_agent="curl/8", referrer=None, language=None, bot_reason="crawler")
    assert holds("is_bot", "in", ["true"], facts(visitor=bot))


def test_unreadable_address_is_missing():
    visitor = Visitor(ip="not-an-ip", user_agent=None, referrer=None, language=None)
    assert holds("ip", "in", ["0.0.0.0/0"], facts(visitor=visitor)) is False


def test_the_address_parsed_with_the_visitor_facts_is_used():
    # Gathered facts carry the parsed address; the text is not parsed again.
    visitor = Visitor(ip="10.1.2.3", user_agent=None, referrer=None, language=None)
    visitor.address = (4, 0x0B000001)  # 11.0.0.1
    assert holds("ip", "in", ["11.0.0.0/8"], facts(visitor=visitor))
    assert not holds("ip", "in", ["10.0.0.0/8"], facts(visitor=visitor))


@pytest.mark.parametrize(
    ("ip", "networks", "expected"),
    [
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.1.2.3"], True),
        ("10.1.2.4", ["10.1.2.3/32"], False),
        ("11.0.0.0", ["10.0.0.0/8"], False),
        ("9.255.255.255", ["10.0.0.0/8"], False),
        ("10.255.255.255", ["10.0.0.0/9", "10.128.0.0/9"], True),
        ("192.168.1.1", ["10.0.0.0/8", "192.168.0.0/16"], True),
        # Host bits set in a block are ignored, as elsewhere in the tracker.
        ("192.168.1.1", ["192.168.1.77/24"], True),
        ("2001:db8::1", ["2001:db8::/32"], True),
        ("2001:db9::1", ["2001:db8::/32"], False),
        ("2001:db8::1", ["0.0.0.0/0"], False),
        ("10.0.0.1", ["::/0"], False),
        # An IPv4-mapped IPv6 address is the IPv4 address.
        ("::ffff:10.0.0.1", ["10.0.0.0/8"], True),
    ],
)
def test_ip_membership_v4_and_v6(ip, networks, expected):
    visitor = Visitor(ip=ip, user_agent=None, referrer=None, language=None)
    assert holds("ip", "in", networks, facts(visitor=visitor)) is expected
    assert holds("ip", "not_in", networks, facts(visitor=visitor)) is not expected


def test_asn_matches_number_or_organisation():
    only_name = Visitor(
        ip=None, user_agent=None, referrer=None, language=None, geo=Geo(isp="Hetzner Online GmbH")
    )
    assert holds("asn", "in", [24940, "HETZNER ONLINE GMBH"], facts(visitor=only_name))
    assert not holds("asn", "in", [24940], facts(visitor=only_name))
    only_number = Visitor(
        ip=None, user_agent=None, referrer=None, language=None, geo=Geo(asn=24940)
    )
    assert holds("asn", "in", ["as24940"], facts(visitor=only_number))


def test_params_are_found_by_exact_name_and_compared_without_case():
    click = facts(params={"Sub1": "Foo", "sub2": ""})
    assert not holds("param:sub1", "in", ["foo"], click)
    assert holds("param:Sub1", "in", ["FOO"], click)
    # An empty value is a value; a missing parameter is not.
    assert holds("param:sub2", "in", [""], click)
    assert not holds("param:sub3", "in", [""], click)


@pytest.mark.parametrize(
    ("utc", "timezone", "hour", "weekday"),
    [
        # Berlin is UTC+1 in winter: Wednesday 23:30 UTC is Thursday 00:30 there.
        ("2026-03-04T23:30:00", BERLIN, 0, 4),
        ("2026-03-04T23:30:00", UTC, 23, 3),
        # New York is UTC-5 in winter: Monday 03:00 UTC is Sunday 22:00 there.
        ("2026-03-02T03:00:00", NEW_YORK, 22, 7),
        # Spring forward in Berlin, Sunday 2026-03-29: 01:59:59 UTC+1, then 03:00 UTC+2.
        ("2026-03-29T00:59:59", BERLIN, 1, 7),
        ("2026-03-29T01:00:00", BERLIN, 3, 7),
        # Fall back in Berlin, Sunday 2026-10-25: 02:xx happens twice, first UTC+2, then UTC+1.
        ("2026-10-25T00:30:00", BERLIN, 2, 7),
        ("2026-10-25T01:30:00", BERLIN, 2, 7),
        ("2026-10-25T02:30:00", BERLIN, 3, 7),
        # New York springs forward on 2026-03-08 at 07:00 UTC (02:00 EST becomes 03:00 EDT).
        ("2026-03-08T06:59:00", NEW_YORK, 1, 7),
        ("2026-03-08T07:00:00", NEW_YORK, 3, 7),
    ],
)
def test_hour_and_weekday_in_the_campaign_time_zone(utc, timezone, hour, weekday):
    click = facts(now_ms=ms(utc), timezone=timezone)
    assert holds("hour", "in", [hour], click)
    assert not holds("hour", "in", [h for h in range(24) if h != hour], click)
    assert holds("weekday", "in", [weekday], click)
    assert not holds("weekday", "not_in", [weekday], click)
    day_name = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[weekday - 1]
    assert holds("weekday", "in", [day_name.upper()], click)


def test_local_time_is_worked_out_only_when_asked():
    click = facts()
    assert holds("country", "in", ["DE"], click)
    assert click._local is None
    assert holds("hour", "in", [12], click)
    assert click._local == (12, 3)


@pytest.mark.parametrize(
    ("raw", "place"),
    [
        ({"field": "planet", "op": "in", "values": ["x"]}, "field"),
        ({"field": "param:", "op": "in", "values": ["x"]}, "field"),
        ({"field": "param:a b", "op": "in", "values": ["x"]}, "field"),
        ({"field": 3, "op": "in", "values": ["x"]}, "field"),
        ({"field": "country", "op": "equals", "values": ["DE"]}, "op"),
        ({"field": "country", "values": ["DE"]}, "op"),
        ({"field": "country", "op": "in", "values": []}, "values"),
        ({"field": "country", "op": "in", "values": "DE"}, "values"),
        ({"field": "country", "op": "in"}, "values"),
        ({"field": "country", "op": "in", "values": ["DE", "XX"]}, "values.1"),
        ({"field": "country", "op": "in", "values": ["DEU"]}, "values.0"),
        ({"field": "device", "op": "in", "values": ["phone"]}, "values.0"),
        ({"field": "language", "op": "in", "values": ["de-AT"]}, "values.0"),
        ({"field": "ip", "op": "in", "values": ["10.0.0.0/33"]}, "values.0"),
        ({"field": "ip", "op": "in", "values": ["10.0.0.0/8", "nope"]}, "values.1"),
        ({"field": "ip", "op": "in", "values": [10]}, "values.0"),
        ({"field": "asn", "op": "in", "values": [2**32]}, "values.0"),
        ({"field": "asn", "op": "in", "values": [""]}, "values.0"),
        ({"field": "is_bot", "op": "in", "values": ["maybe"]}, "values.0"),
        ({"field": "is_unique", "op": "in", "values": [1]}, "values.0"),
        ({"field": "hour", "op": "in", "values": [24]}, "values.0"),
        ({"field": "hour", "op": "in", "values": [-1]}, "values.0"),
        ({"field": "hour", "op": "in", "values": ["noon"]}, "values.0"),
        ({"field": "hour", "op": "in", "values": [True]}, "values.0"),
        ({"field": "weekday", "op": "in", "values": [0]}, "values.0"),
        ({"field": "weekday", "op": "in", "values": ["mo"]}, "values.0"),
        ({"field": "city", "op": "in", "values": [" "]}, "values.0"),
        ({"field": "city", "op": "in", "values": ["x" * 201]}, "values.0"),
        ({"field": "param:sub1", "op": "in", "values": [None]}, "values.0"),
        ({"field": "country", "op": "in", "values": ["DE"], "extra": 1}, "extra"),
        ("country in DE", ""),
    ],
)
def test_invalid_conditions_name_their_place(raw, place):
    with pytest.raises(RuleError) as caught:
        compile_condition(raw)
    assert caught.value.place == place


def test_rule_errors_are_placed_within_the_rule():
    raw = {
        "name": "r",
        "conditions": [
            {"field": "country", "op": "in", "values": ["DE"]},
            {"field": "hour", "op": "in", "values": [1, 99]},
        ],
    }
    with pytest.raises(RuleError) as caught:
        compile_rule(0, raw, None)
    assert caught.value.within("rules.2").place == "rules.2.conditions.1.values.1"
    with pytest.raises(RuleError) as caught:
        compile_rule(0, {"name": "r", "conditions": []}, None)
    assert caught.value.place == "conditions"


def test_a_rule_needs_every_condition():
    rule = compile_rule(
        0,
        {
            "name": "German iPhones",
            "conditions": [
                {"field": "country", "op": "in", "values": ["DE"]},
                {"field": "os", "op": "in", "values": ["iOS"]},
            ],
        },
        "path",
    )
    assert rule.matches(facts())
    assert not rule.matches(facts(visitor=BARE))
    assert not rule.uses_uniqueness


# Campaign paths -------------------------------------------------------------------------


def offer(offer_id: int) -> OfferRoute:
    return OfferRoute(
        id=offer_id,
        url=compile_template(f"https://o{offer_id}.example/"),
        affiliate_network_id=1,
        payout=None,
        currency="USD",
    )


def path(*offer_ids: int, weight: int = 1, landers: tuple[int, ...] = ()) -> FlowPath:
    return FlowPath(
        offers=WeightedChoice([(offer(i), weight) for i in offer_ids]),
        landers=WeightedChoice(
            [(LanderRoute(i, compile_template(f"https://l{i}.example/")), 1) for i in landers]
        ),
    )


def rule(index: int, flow: FlowPath, *conditions: tuple[str, str, list[Any]]) -> Any:
    raw = {"conditions": [{"field": f, "op": o, "values": v} for f, o, v in conditions]}
    return compile_rule(index, raw, flow)


def campaign(rules: tuple[Any, ...] = (), timezone: Any = UTC, **kwargs: Any) -> CampaignRoute:
    return CampaignRoute(
        id=1,
        key="k",
        traffic_source_id=1,
        external_id_param="external_id",
        cost_param="cost",
        cost_model=kwargs.pop("cost_model", "none"),
        cost_value=kwargs.pop("cost_value", None),
        attribution_window_days=30,
        report_currency="USD",
        offers=WeightedChoice([(offer(1), 1)]),
        rules=rules,
        timezone=timezone,
        **kwargs,
    )


def test_no_rules_means_the_default_path():
    route = campaign()
    index, chosen = route.choose_path(VISITOR, {}, None, NOON_UTC)
    assert (index, chosen) == (-1, route.default_path)
    assert [o.id for o in chosen.offers] == [1]
    assert not chosen.landers
    assert not route.uses_uniqueness_rules()


def test_the_first_matching_rule_wins():
    rules = (
        rule(0, path(10), ("country", "in", ["FR"])),
        rule(1, path(11), ("country", "in", ["DE"]), ("device", "in", ["mobile"])),
        rule(2, path(12), ("country", "in", ["DE"])),
    )
    route = campaign(rules)
    index, chosen = route.choose_path(VISITOR, {}, None, NOON_UTC)
    assert index == 1 and chosen is rules[1].path
    desktop = Visitor(ip=None, user_agent=None, referrer=None, language=None, geo=Geo(country="DE"))
    assert route.choose_path(desktop, {}, None, NOON_UTC)[0] == 2
    assert route.choose_path(BARE, {}, None, NOON_UTC) == (-1, route.default_path)


def test_a_rule_with_no_offer_left_falls_through():
    rules = (
        rule(0, path(10, weight=0), ("country", "in", ["DE"])),
        rule(1, FlowPath(WeightedChoice([])), ("country", "in", ["DE"])),
        rule(2, path(12), ("country", "in", ["DE"])),
    )
    route = campaign(rules)
    assert route.choose_path(VISITOR, {}, None, NOON_UTC)[0] == 2
    # A stored click that took a rule now gone or empty goes back by the default path.
    assert route.path_at(2) is rules[2].path
    assert route.path_at(0) is route.default_path
    assert route.path_at(7) is route.default_path
    assert route.path_at(-1) is route.default_path


def test_rule_indexes_are_the_stored_positions():
    # A stored rule skipped at load keeps the others' indexes.
    route = campaign((rule(3, path(13, landers=(5,)), ("is_bot", "in", [False])),))
    index, chosen = route.choose_path(VISITOR, {}, None, NOON_UTC)
    assert index == 3 and [lander.id for lander in chosen.landers] == [5]
    assert route.path_at(3) is chosen


def test_uniqueness_rules_are_announced():
    route = campaign((rule(0, path(10), ("is_unique", "in", [True])),))
    assert route.uses_uniqueness_rules()
    assert route.choose_path(VISITOR, {}, True, NOON_UTC)[0] == 0
    assert route.choose_path(VISITOR, {}, False, NOON_UTC)[0] == -1
    assert route.choose_path(VISITOR, {}, None, NOON_UTC)[0] == -1


def test_rules_use_the_campaign_time_zone():
    night_in_berlin = ms("2026-03-04T23:30:00")
    rules = (rule(0, path(10), ("hour", "in", [0])),)
    assert campaign(rules, BERLIN).choose_path(VISITOR, {}, None, night_in_berlin)[0] == 0
    assert campaign(rules, UTC).choose_path(VISITOR, {}, None, night_in_berlin)[0] == -1


def test_offer_by_id_finds_only_pickable_offers():
    flow = FlowPath(WeightedChoice([(offer(1), 1), (offer(2), 0)]))
    assert flow.offer_by_id(1) == offer(1)
    assert flow.offer_by_id(2) is None
    assert flow.offer_by_id(3) is None


@pytest.mark.parametrize(
    ("model", "value", "reported", "expected"),
    [
        ("cpc", "0.05", None, Decimal("0.05")),
        ("cpm", "1.50", None, Decimal("0.0015")),
        ("cpm", "2", None, Decimal("0.002")),
        ("cpm", "0.001", None, Decimal("0.000001")),
        ("cpa", "4.00", "0.10", None),
        ("revshare", "40", "0.10", None),
        ("none", None, "0.10", None),
        ("auto", None, "0.10", Decimal("0.10")),
    ],
)
def test_click_cost_per_model(model, value, reported, expected):
    route = campaign(cost_model=model, cost_value=Decimal(value) if value else None)
    assert route.click_cost(reported) == expected
    if expected is not None:
        assert str(route.click_cost(reported)).rstrip("0") == str(expected).rstrip("0")
