import string
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.macro_reference import ClickMacros, render
from tracker.domain.click import ClickRecord
from tracker.domain.macros import (
    FIELD_MACROS,
    compile_click_template,
    compile_template,
    encode,
)


def test_known_unknown_and_empty_macros():
    template = compile_template("https://o.example/{sub1}/lp?c={clickid}&x={nope}&e={external_id}")
    url = render(template, {"clickid": "abc", "sub1": "s1", "external_id": None})
    assert url == "https://o.example/s1/lp?c=abc&x=&e="


def test_values_are_url_encoded():
    template = compile_template("https://o.example/?q={sub2}")
    url = render(template, {"sub2": "a b&c=d/é?#"})
    assert url == "https://o.example/?q=a%20b%26c%3Dd%2F%C3%A9%3F%23"


def test_template_without_macros_is_unchanged():
    assert render(compile_template("https://o.example/x?y=1"), {}) == "https://o.example/x?y=1"


# A campaign's compiled click templates give the same text as the macro lookup by name.

EVERY_MACRO = (
    *FIELD_MACROS,
    "timestamp",
    "is_unique",
    "zone",  # the source's external id parameter
    "bid",  # the source's cost parameter
    "free",  # a click URL parameter
    "nothing",  # no such parameter
    "a.b-c_d",
)
TEMPLATE_TEXT = (
    "https://o.example/{clickid}/p?"
    + "&".join(f"{name}={{{name}}}" for name in EVERY_MACRO)
    + "&again={clickid}&sub1={sub1}{sub1}#{country}"
)
TEMPLATE = compile_template(TEMPLATE_TEXT)


def record(**changes: object) -> ClickRecord:
    fields: dict[str, object] = {
        "click_id": "0123456789abcdefghijklmnopqrs",
        "created_ms": 1_700_000_123_456,
        "campaign_id": 4,
        "offer_id": 7,
        "traffic_source_id": 2,
        "external_id": "ext 1/2",
        "cost": "0.0042",
    }
    fields.update(changes)
    return ClickRecord(**fields)  # type: ignore[arg-type]


def both(rec: ClickRecord, raw_cost: str | None, template=TEMPLATE) -> tuple[str, str]:
    by_name = render(template, ClickMacros(rec.__getattribute__, "zone", "bid", raw_cost))
    compiled = compile_click_template(template, "zone", "bid").render(rec, raw_cost)
    return by_name, compiled


def test_compiled_template_renders_every_macro_as_the_lookup_does():
    full = record(
        sub1="ünï cödé",
        sub2="a b&c=d/é?#%",
        sub3="~._-",
        sub10="",
        country="GB",
        region="England",
        city="Łódź",
        asn=20712,
        isp="Andrews & Arnold",
        device="mobile",
        os="iOS",
        browser="Mobile Safari",
        language="de",
        ip="2001:db8::1",
        user_agent="Mozilla/5.0 (X11; Linux)",
        referrer="https://r.example/?q=1",
        lander_id=3,
        params={"free": "x+y z", "zone": "shadowed"},
        is_unique=True,
    )
    by_name, compiled = both(full, "1.5e-3")
    assert compiled == by_name
    assert "/0123456789abcdefghijklmnopqrs/p?clickid=0123456789abcdefghijklmnopqrs&" in compiled
    assert "&sub1=%C3%BCn%C3%AF%20c%C3%B6d%C3%A9&" in compiled
    assert "&sub2=a%20b%26c%3Dd%2F%C3%A9%3F%23%25&sub3=~._-&" in compiled
    assert "&timestamp=1700000123&is_unique=1&zone=ext%201%2F2&" in compiled
    assert "&bid=1.5e-3&free=x%2By%20z&" in compiled
    assert "&nothing=&a.b-c_d=&again=0123456789abcdefghijklmnopqrs" in compiled
    assert compiled.endswith("#GB")


def test_compiled_template_with_values_missing():
    bare = record(external_id=None, cost=None, is_unique=False)
    by_name, compiled = both(bare, None)
    assert compiled == by_name
    assert "&external_id=&cost=&" in compiled and "&asn=&" in compiled
    assert "&is_unique=0&zone=&bid=&free=&" in compiled
    assert both(record(), None)[1].count("is_unique=&") == 1


def test_compiled_template_without_macros_and_builtins_before_parameters():
    plain = compile_template("https://o.example/x?y=1")
    assert compile_click_template(plain, "zone", "bid").render(record(), "1") == (
        "https://o.example/x?y=1"
    )
    # A source whose parameters are named like built-ins gets the built-ins.
    template = compile_template("?e={external_id}&c={cost}&t={timestamp}")
    rec = record(external_id="E", cost="0.5")
    assert compile_click_template(template, "external_id", "cost").render(rec, "9") == (
        render(template, ClickMacros(rec.__getattribute__, "external_id", "cost", "9"))
    )
    assert compile_click_template(template, "timestamp", "cost").render(rec, "9") == (
        "?e=E&c=0.5&t=1700000123"
    )


def test_encode_is_quote():
    for value in ("", "abc", "ABC019", "a-b_c.d~e", "é", "a b", "½", "٣", "a\x00b", "\ufffd"):
        assert encode(value) == quote(value, safe="")


any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))


@settings(deadline=None, max_examples=200)
@given(
    st.dictionaries(st.sampled_from(["sub1", "sub5", "city", "isp", "external_id"]), any_text),
    st.dictionaries(st.sampled_from(["free", "zone", "bid", "x"]), any_text),
    st.none() | any_text,
    st.none() | st.booleans(),
    st.text(alphabet=string.ascii_letters + "{}_", max_size=30),
)
def test_compiled_template_agrees_with_the_lookup(fields, params, raw_cost, unique, noise):
    rec = record(**fields, params=params or None, is_unique=unique)
    template = compile_template(noise + TEMPLATE_TEXT + noise)
    by_name, compiled = both(rec, raw_cost, template)
    assert compiled == by_name
