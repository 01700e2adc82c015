import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from tracker.domain.params import (
    ParamError,
    clean_free_text,
    first_wins,
    form_pairs,
    json_pairs,
    load_json_object,
    plain_query,
    postback_params,
)


def test_first_occurrence_wins():
    assert first_wins([("a", "1"), ("b", "2"), ("a", "3")]) == {"a": "1", "b": "2"}
    # Names are compared once cleaned: "a\x00" is "a".
    assert first_wins([("a\x00", "1"), ("a", "2")]) == {"a": "1"}


def test_body_comes_before_query():
    params = postback_params([("payout", "1")], [("payout", "2"), ("txid", "q")])
    assert params == {"payout": "1", "txid": "q"}


def test_free_text_is_cleaned_and_values_are_refused():
    assert postback_params([("event", "s\x00ale"), ("note", "\ud800")]) == {
        "event": "sale",
        "note": "\ufffd",
    }
    for name in ("clickid", "cid", "payout", "amount", "txid", "currency", "status", "token"):
        with pytest.raises(ParamError) as exc:
            postback_params([(name, "x\x00")])
        assert exc.value.name == name and repr(name) in str(exc.value)
    # A later dirty repeat is ignored, not refused.
    assert postback_params([("txid", "ok"), ("txid", "\x00")]) == {"txid": "ok"}


def test_click_parameters_are_never_refused():
    assert clean_free_text([("sub1", "\x00"), ("sub1", "b"), ("x", "\udcff")]) == {
        "sub1": "",
        "x": "\ufffd",
    }


@pytest.mark.parametrize(
    ("body", "charset", "pairs"),
    [
        (b"a=1&b=&a=2", None, [("a", "1"), ("b", ""), ("a", "2")]),
        (b"a=%FF", None, [("a", "\ufffd")]),
        (b"a=\xff", None, [("a", "\ufffd")]),
        (b"a=%E9", "latin-1", [("a", "é")]),
        (b"a=x+y", "utf-8", [("a", "x y")]),
    ],
)
def test_form_pairs(body, charset, pairs):
    assert form_pairs(body, charset) == pairs


def test_unknown_charset():
    with pytest.raises(ValueError, match="unknown charset"):
        form_pairs(b"a=1", "bogus")


def test_json_numbers_keep_their_text():
    data = load_json_object(b'{"payout": 0.10, "n": 12, "e": 1e3, "a": 1, "a": 2}', True)
    assert data == {"payout": "0.10", "n": "12", "e": "1e3", "a": "1"}
    assert load_json_object(b'{"n": 1.5}') == {"n": 1.5}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"\xff", "not valid UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_json(body, message):
    with pytest.raises(ValueError, match=message):
        load_json_object(body, True)


def test_json_pairs():
    assert json_pairs({"a": "x", "b": None, "c": True, "d": "1"}) == [
        ("a", "x"),
        ("c", "true"),
        ("d", "1"),
    ]
    for data in ({"payout": True}, {"txid": False}, {"a": [1]}, {"a": {"b": 1}}):
        with pytest.raises(ParamError):
            json_pairs(data)


def _decoded(raw: str) -> dict[str, str]:
    return clean_free_text(URL.build(path="/c/k", query_string=raw, encoded=True).query.items())


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "a=1&b=2&a=3",
        "external_id=ext1x5&sub1=zone5&sub3=US&sub5=banner-300x250&cost=0.0042",
        "a&b=&=c&&d==e&x+y=1+2",
        "a=1;b=2",
    ],
)
def test_plain_query_reads_as_the_decoded_query(raw):
    assert plain_query(raw) == _decoded(raw)


@pytest.mark.parametrize("raw", ["a=%41", "a=\u00e9", "a=\x00", "%00=1"])
def test_plain_query_leaves_what_needs_decoding(raw):
    assert plain_query(raw) is None


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=string.printable + "\x00é"))
def test_plain_query_agrees_with_the_decoder(raw):
    plain = plain_query(raw)
    assert plain is None or plain == _decoded(raw)
