"""The click record, its macros and the visitor id: pure functions, no servers."""

from decimal import Decimal

import orjson

from tests.macro_reference import ClickMacros, render
from tracker.domain.campaign import CampaignRoute, LanderRoute, OfferRoute
from tracker.domain.click import (
    CLICK_COLUMNS,
    COPIED_TO_CONVERSION,
    ClickRecord,
    ParamLimits,
    plan_click,
    stored_json,
    visitor_id,
)
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.domain.visitor import Agent, Geo, Visitor

OFFER = OfferRoute(7, compile_template("https://o.example/?c={clickid}"), 1, None, "USD")
LANDER = LanderRoute(3, compile_template("https://l.example/?c={clickid}"))
VISITOR = Visitor(
    ip="81.2.69.142",
    user_agent="UA",
    referrer="https://r.example/",
    language="de",
    geo=Geo(country="GB", region="England", city="London", asn=20712, isp="Andrews & Arnold"),
    agent=Agent(device="mobile", os="iOS", os_version="17", browser="Mobile Safari"),
)
LIMITS = ParamLimits(max_params=2, max_length=5)


def campaign(**changes: object) -> CampaignRoute:
    fields: dict[str, object] = {
        "id": 4,
        "key": "k",
        "traffic_source_id": 2,
        "external_id_param": "ext",
        "cost_param": "cost",
        "cost_model": "auto",
        "cost_value": None,
        "attribution_window_days": 30,
        "report_currency": "USD",
        "offers": WeightedChoice([(OFFER, 1)]),
    }
    fields.update(changes)
    return CampaignRoute(**fields)  # type: ignore[arg-type]


def test_plan_fills_the_record_from_campaign_visitor_and_query():
    query = {"ext": "abcdefgh", "cost": "0.5", "sub1": "zone-1234", "a": "1", "b": "2", "c": "3"}
    plan = plan_click(campaign(), VISITOR, query, "id1", 1_700_000_000_123, LIMITS)
    record = plan.record
    assert (record.click_id, record.created_ms, record.campaign_id) == ("id1", 1_700_000_000_123, 4)
    assert (record.offer_id, record.traffic_source_id) == (7, 2)
    assert record.external_id == "abcde"  # cut to the limit
    assert record.cost == "0.5"
    assert record.sub1 == "zone-"
    assert record.params == {"a": "1", "b": "2"}  # at most max_params
    assert (record.country, record.city, record.asn, record.device) == (
        "GB",
        "London",
        20712,
        "mobile",
    )
    assert record.referrer == "https"
    assert record.is_bot is False and record.lander_id is None and record.path == -1
    assert plan.offer is OFFER and plan.lander is None


def test_plan_picks_a_lander_when_the_path_has_one():
    plan = plan_click(campaign(landers=WeightedChoice([(LANDER, 1)])), VISITOR, {}, "id", 1, LIMITS)
    assert plan.lander is LANDER
    assert plan.record.lander_id == 3
    assert plan.record.offer_id == 7  # chosen already, the default of the click-through


def test_bot_visitors_are_marked():
    bot = Visitor(None, None, None, None, bot_reason="empty-user-agent")
    record = plan_click(campaign(), bot, {}, "id", 1, LIMITS).record
    assert record.is_bot is True and record.bot_reason == "empty-user-agent"


def test_record_json_ends_with_is_unique_for_the_store_to_decide():
    record = plan_click(campaign(), VISITOR, {}, "id", 1, LIMITS).record
    assert orjson.dumps(record).endswith(b'"is_unique":null}')
    assert stored_json(record).endswith(b',"is_unique":null}')


def test_every_column_is_a_record_field_and_conversions_copy_stored_columns():
    fields = set(ClickRecord.__dataclass_fields__)
    columns = {name for name, _ in CLICK_COLUMNS}
    assert columns <= fields
    assert set(COPIED_TO_CONVERSION) <= columns


def test_macros_read_the_record_and_never_let_a_parameter_shadow_a_builtin():
    plan = plan_click(
        campaign(), VISITOR, {"country": "XX", "zone": "z 1", "cost": "1.5"}, "id9", 5_000, LIMITS
    )
    plan.record.is_unique = True
    macros = ClickMacros(plan.record.__getattribute__, "ext", "cost", "1.5")
    template = compile_template(
        "https://o.example/?c={clickid}&g={country}&z={zone}&t={timestamp}&u={is_unique}"
        "&asn={asn}&isp={isp}&cost={cost}&n={nothing}"
    )
    assert render(template, macros) == (
        "https://o.example/?c=id9&g=GB&z=z%201&t=5&u=1&asn=20712&isp=Andrews%20%26%20Arnold"
        "&cost=1.5&n="
    )


def test_macros_from_a_stored_record():
    stored = {"click_id": "x", "created_ms": 1000, "is_unique": False, "cost": "0.1", "asn": None}
    macros = ClickMacros(stored.get, "ext", "cost", "0.1")
    assert macros.get("is_unique") == "0"
    assert macros.get("timestamp") == "1"
    assert macros.get("asn") is None
    assert macros.get("cost") == "0.1"


def test_visitor_id_prefers_a_well_formed_cookie():
    vid, new = visitor_id(None, "1.2.3.4", "UA")
    assert new and len(vid) == 22
    assert visitor_id(None, "1.2.3.4", "UA") == (vid, True)  # the same visitor again
    assert visitor_id(None, "1.2.3.5", "UA")[0] != vid
    assert visitor_id(vid, "9.9.9.9", "other") == (vid, False)
    for bad in ("", "short", "x" * 23, "a b" + "c" * 19, "é" * 22):
        assert visitor_id(bad, "1.2.3.4", "UA") == (vid, True)
    assert visitor_id(None, None, "\udcff")[1]  # undecodable text hashes too


def test_cpm_and_conversion_cost_models_per_click():
    assert campaign(cost_model="cpm", cost_value=Decimal("2.5")).click_cost(None) == Decimal(
        "0.0025"
    )
    assert campaign(cost_model="cpa", cost_value=Decimal("3")).click_cost(None) is None
    assert campaign(cost_model="revshare", cost_value=Decimal("40")).click_cost(None) is None


def test_plan_fills_every_field_as_named():
    """plan_click fills the record positionally: each field gets the value of its name."""
    visitor = Visitor(
        ip="ip",
        user_agent="ua",
        referrer="ref",
        language="lang",
        geo=Geo(country="GB", region="reg", city="city", asn=1, isp="isp"),
        agent=Agent(device="dev", os="os", os_version="osv", browser="br", browser_version="brv"),
        bot_reason="crawler",
    )
    query = {f"sub{i}": f"s{i}" for i in range(1, 11)} | {"ext": "e", "cost": "2", "p": "v"}
    lander = LanderRoute(3, compile_template("https://l.example/"))
    plan = plan_click(
        campaign(landers=WeightedChoice([(lander, 1)])),
        visitor,
        query,
        "cid",
        1234,
        ParamLimits(5, 50),
        True,
    )
    expected = ClickRecord(
        **{f"sub{i}": f"s{i}" for i in range(1, 11)},
        click_id="cid",
        created_ms=1234,
        campaign_id=4,
        offer_id=7,
        traffic_source_id=2,
        external_id="e",
        cost="2",
        params={"p": "v"},
        ip="ip",
        user_agent="ua",
        referrer="ref",
        country="GB",
        region="reg",
        city="city",
        asn=1,
        isp="isp",
        device="dev",
        os="os",
        os_version="osv",
        browser="br",
        browser_version="brv",
        language="lang",
        is_bot=True,
        bot_reason="crawler",
        lander_id=3,
        path=-1,
        is_unique=True,
    )
    assert plan.record == expected
    assert orjson.dumps(plan.record) == orjson.dumps(expected)
