"""Properties of the pure domain code, checked on generated input."""

import re
import string
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.macro_reference import render
from tracker.domain.clickid import CLICK_ID_LENGTH, click_id_time_ms, is_click_id, new_click_id
from tracker.domain.dialects import ALIASES, DialectConflict, canonical_params
from tracker.domain.lifecycle import ALLOWED, CHARGEBACK, STATUSES, decide_change
from tracker.domain.macros import compile_template
from tracker.domain.money import MoneyError, format_money, parse_money
from tracker.domain.params import VALUE_NAMES, ParamError, first_wins, postback_params
from tracker.domain.text import clean_text, dirt_in

settings.register_profile("domain", deadline=None, max_examples=200)
settings.load_profile("domain")

MAX_MS = 2**48 - 1
UNRESERVED = set(string.ascii_letters + string.digits + "-._~%")
# Every code point, lone surrogates and NUL included.
any_text = st.text(alphabet=st.characters(exclude_categories=()))


# Macros --------------------------------------------------------------------------------------


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "sub1"]), any_text.filter(lambda v: "\ud800" > v or True)
    )
)
def test_rendered_values_are_fully_encoded(values):
    clean = {name: clean_text(value) for name, value in values.items()}
    out = render(compile_template("https://o.example/?x={a}&y={b}&z={sub1}"), clean)
    encoded = out.removeprefix("https://o.example/?")
    for part in encoded.split("&"):
        value = part.split("=", 1)[1]
        assert set(value) <= UNRESERVED
        assert re.fullmatch(r"(?:[A-Za-z0-9\-._~]|%[0-9A-F]{2})*", value)


@given(
    st.text(alphabet=string.ascii_letters + "{}_"), st.from_regex(r"[a-z]{1,10}", fullmatch=True)
)
def test_unknown_macros_vanish(prefix, name):
    literal = prefix.replace("{", "").replace("}", "")
    assert render(compile_template(f"{literal}{{{name}}}{literal}"), {}) == literal + literal


@given(st.text().filter(lambda t: "{" not in t))
def test_literal_text_renders_as_itself(text):
    assert render(compile_template(text), {"a": "x"}) == text


# Click ids -----------------------------------------------------------------------------------


@given(st.integers(0, MAX_MS))
def test_click_id_shape_and_time_round_trip(ms):
    click_id = new_click_id(ms)
    assert len(click_id) == CLICK_ID_LENGTH and is_click_id(click_id)
    assert set(click_id) <= set("0123456789abcdefghijklmnopqrstuv")
    assert click_id_time_ms(click_id) == ms


@given(st.integers(0, MAX_MS - 1), st.integers(1, 10**6))
def test_click_ids_sort_by_time(ms, later):
    assert new_click_id(ms) < new_click_id(min(ms + later, MAX_MS))


# Money ---------------------------------------------------------------------------------------


@given(st.decimals(min_value=Decimal("-999999999999"), max_value=Decimal("999999999999"), places=6))
def test_format_and_parse_round_trip(amount):
    assert parse_money(format_money(amount)) == amount


@given(any_text)
def test_parse_money_raises_only_money_error(text):
    try:
        value = parse_money(text)
    except MoneyError:
        return
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text.strip(" \t\r\n"))
    assert value.is_finite()


@given(any_text.filter(lambda t: not t.isascii()))
def test_non_ascii_amounts_are_refused(text):
    try:
        parse_money(text)
    except MoneyError:
        return
    raise AssertionError(f"accepted {text!r}")


@given(st.integers(-(10**11), 10**11), st.integers(0, 9999), st.integers(0, 8))
def test_trailing_zeros_never_change_the_value(whole, frac, zeros):
    text = f"{whole}.{frac:04d}" + "0" * zeros
    assert parse_money(text, 4) == Decimal(f"{whole}.{frac:04d}")


# Text and parameters ------------------------------------------------------------------------


@given(any_text)
def test_cleaned_text_is_storable(text):
    cleaned = clean_text(text)
    assert "\x00" not in cleaned
    cleaned.encode("utf-8")  # no lone surrogate left
    assert clean_text(cleaned) == cleaned


names = st.sampled_from([*VALUE_NAMES, "event", "note", "sub1", "x"])
pairs = st.lists(st.tuples(names, st.text(max_size=8)), max_size=12)


@given(pairs, pairs)
def test_first_occurrence_wins_across_sources(body, query):
    try:
        params = postback_params(body, query)
    except ParamError as exc:
        assert exc.name in VALUE_NAMES
        first = first_wins([*body, *query])
        assert dirt_in(first[exc.name]) is not None
        return
    expected = first_wins([*body, *query])
    assert params.keys() == expected.keys()
    for name, value in params.items():
        assert value == (expected[name] if name in VALUE_NAMES else clean_text(expected[name]))


alias_params = st.dictionaries(
    st.sampled_from([name for names in ALIASES.values() for name in names]),
    st.sampled_from(["", "a", "b"]),
)


@given(alias_params)
def test_canonical_params_conflicts_and_empties(params):
    try:
        fields = canonical_params(params)
    except DialectConflict as exc:
        given_values = {params[n] for n in ALIASES[exc.field] if params.get(n)}
        assert len(given_values) > 1
        return
    for field, names in ALIASES.items():
        given_values = {params[n] for n in names if params.get(n)}
        if given_values:
            assert fields[field] in given_values and len(given_values) == 1
        else:
            assert field not in fields
    assert "" not in fields.values()


# Status transitions --------------------------------------------------------------------------

steps = st.lists(
    st.tuples(
        st.sampled_from(STATUSES),
        st.one_of(st.none(), st.decimals(min_value=-200, max_value=200, places=2)),
    ),
    max_size=20,
)


@given(st.sampled_from(STATUSES), st.decimals(min_value=1, max_value=100, places=2), steps)
def test_any_postback_sequence_stays_within_the_lifecycle(start, original, sequence):
    current, refunded = start, Decimal(0)
    for incoming, payout in sequence:
        change = decide_change(current, incoming, payout, original, refunded)
        if current == CHARGEBACK:
            assert change.new_status is None and change.refund == 0
        if change.new_status is not None:
            assert change.new_status in ALLOWED[current]
            current = change.new_status
        assert change.refund >= 0
        refunded += change.refund
        assert current in STATUSES
        assert refunded <= original
