"""The template preset: macros, encodings, amounts, signatures and configuration checks."""

import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tracker.outbound.payloads import (
    MACROS,
    DeliveryFacts,
    PayloadError,
    PlatformUrls,
    SourcePostback,
    build_request,
    check_postback_config,
    decimal_text,
    masked_credentials,
    shared_payout,
)

NOW = datetime(2024, 5, 2, 8, 30, 15, 900000, tzinfo=UTC)
NOW_SECONDS = 1714638615
URLS = PlatformUrls("http://meta.test/v19.0", "http://tiktok.test/v1.3", "http://google.test/v17")

FACTS = DeliveryFacts(
    delivery_id=501,
    conversion_id=77,
    conversion_time=datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
    click_time=datetime(2024, 5, 1, 11, 0, 0, 250000, tzinfo=UTC),
    click_id="c0ffee",
    external_id="ext-1",
    campaign_id=5,
    offer_id=9,
    traffic_source_id=2,
    status="approved",
    payout=Decimal("10.005"),
    currency="EUR",
    cost=Decimal("0.50"),
    txid="tx-1",
    event="deposit",
    ip="203.0.113.7",
    user_agent="Mozilla/5.0",
    click_params={"fbclid": "FB.1", "zone": "z 1"},
    fields={"sub1": "banner", "country": "DE", "is_bot": "0", "lander_id": "3"},
)


def postback(**changes: Any) -> SourcePostback:
    base = SourcePostback(
        preset="template",
        method="GET",
        url="https://source.test/pb",
        body=None,
        body_format="json",
        status_map={},
        share_percent=None,
        credentials={},
        signing_secret=None,
    )
    return replace(base, **changes)


def render_url(url: str, facts: DeliveryFacts = FACTS, **changes: Any) -> str:
    return build_request(postback(url=url, **changes), facts, URLS, NOW).url


def render_json(body: str, facts: DeliveryFacts = FACTS, **changes: Any) -> Any:
    request = build_request(
        postback(method="POST", body=body, body_format="json", **changes), facts, URLS, NOW
    )
    assert request.body is not None
    return json.loads(request.body, parse_float=Decimal)


def with_sub1(value: str | None) -> DeliveryFacts:
    return replace(FACTS, fields={**FACTS.fields, "sub1": value})


HOSTILE = [
    ("a b", "a%20b"),
    ("a&b=c", "a%26b%3Dc"),
    ("#frag", "%23frag"),
    ("50%", "50%25"),
    ("1+1", "1%2B1"),
    ("/path?q", "%2Fpath%3Fq"),
    ("Zürich €", "Z%C3%BCrich%20%E2%82%AC"),
    ("line\nbreak\r\n", "line%0Abreak%0D%0A"),
    ("{clickid}", "%7Bclickid%7D"),
    ("", ""),
]


@pytest.mark.parametrize(("value", "encoded"), HOSTILE)
def test_url_values_are_percent_encoded(value: str, encoded: str) -> None:
    url = render_url("https://source.test/pb?s={sub1}&c={clickid}", with_sub1(value))
    assert url == f"https://source.test/pb?s={encoded}&c=c0ffee"
    assert parse_qs(urlsplit(url).query).get("s", [""]) == [value]


@pytest.mark.parametrize(("value", "encoded"), HOSTILE)
def test_form_values_are_percent_encoded(value: str, encoded: str) -> None:
    request = build_request(
        postback(method="POST", body="s={sub1}&p={payout}", body_format="form"),
        with_sub1(value),
        URLS,
        NOW,
    )
    assert request.body == f"s={encoded}&p=10.005".encode()
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode(), keep_blank_values=True)["s"] == [value]


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash", "\\", '\\"', "tab\tnew\nline", "nul\x00bell\x07", "\u2028é🙂", ""],
)
def test_json_values_are_escaped_inside_strings_and_bare(value: str) -> None:
    template = '{"whole": "{sub1}", "inside": "<{sub1}>", "bare": {sub1}}'
    data = render_json(template, with_sub1(value))
    assert data == {"whole": value, "inside": f"<{value}>", "bare": value}


def test_json_numbers_are_exact_literals_and_strings_stay_strings() -> None:
    body = (
        '{"payout": {payout}, "quoted": "{payout}", "cost": {cost}, "id": {delivery_id}, '
        '"conv": {conversion_id}, "campaign": {campaign_id}, "offer": {offer_id}, '
        '"click": "{clickid}", "bare_text": {country}}'
    )
    request = build_request(postback(method="POST", body=body), FACTS, URLS, NOW)
    assert request.body is not None
    assert b'"payout": 10.005,' in request.body
    data = json.loads(request.body, parse_float=Decimal)
    assert data == {
        "payout": Decimal("10.005"),
        "quoted": "10.005",
        "cost": Decimal("0.5"),
        "id": 501,
        "conv": 77,
        "campaign": 5,
        "offer": 9,
        "click": "c0ffee",
        "bare_text": "DE",
    }
    assert request.headers["Content-Type"] == "application/json"


def test_missing_values_are_empty_in_urls_and_strings_and_null_when_bare() -> None:
    facts = replace(FACTS, txid=None, payout=None, cost=None, offer_id=None, external_id=None)
    url = render_url("https://source.test/?t={txid}&p={payout}&o={offer_id}&r={region}", facts)
    assert url == "https://source.test/?t=&p=&o=&r="
    data = render_json(
        '{"t": "{txid}", "p": {payout}, "o": {offer_id}, "e": {external_id}, "q": "x{region}"}',
        facts,
    )
    assert data == {"t": "", "p": None, "o": None, "e": None, "q": "x"}


def test_every_documented_macro_is_known_and_renders() -> None:
    assert {f"sub{i}" for i in range(1, 11)} <= MACROS
    url = "https://source.test/?" + "&".join(f"{name}={{{name}}}" for name in sorted(MACROS))
    assert check_postback_config("template", "GET", url, None, "json", {}) == []
    query = parse_qs(urlsplit(render_url(url)).query, keep_blank_values=True)
    assert query["clickid"] == ["c0ffee"]
    assert query["lander_id"] == ["3"]
    assert query["is_bot"] == ["0"]
    assert query["sub1"] == ["banner"]
    assert query["sub2"] == [""]
    assert query["revenue"] == ["10.005"]
    assert query["currency"] == ["EUR"]
    assert query["event"] == ["deposit"]


def test_click_parameters_by_name() -> None:
    url = render_url("https://source.test/?fb={param:fbclid}&z={param:zone}&n={param:none}")
    assert url == "https://source.test/?fb=FB.1&z=z%201&n="


@pytest.mark.parametrize(
    ("payout", "share", "expected"),
    [
        (Decimal("10.005"), Decimal(50), "5.0025"),
        (Decimal("10.005"), None, "10.005"),
        (Decimal("12.50"), None, "12.5"),
        (Decimal("12.50"), Decimal(100), "12.5"),
        (Decimal("1E+1"), None, "10"),
        (Decimal(100), Decimal("33.333"), "33.333"),
        (Decimal(1), Decimal("33.3333333"), "0.333333"),
        (Decimal("0.000005"), Decimal(50), "0.000002"),  # half to even, down
        (Decimal("0.000015"), Decimal(50), "0.000008"),  # half to even, up
        (Decimal("999999999999.999999"), Decimal("0.5"), "5000000000"),
        (Decimal(-20), Decimal(25), "-5"),
        (Decimal("0.00"), Decimal(50), "0"),
    ],
)
def test_share_of_the_payout_is_exact(
    payout: Decimal, share: Decimal | None, expected: str
) -> None:
    facts = replace(FACTS, payout=payout)
    url = render_url("https://source.test/?p={payout}&r={revenue}", facts, share_percent=share)
    assert url == f"https://source.test/?p={expected}&r={decimal_text(payout)}"
    shared = shared_payout(payout, share)
    assert shared is not None and decimal_text(shared) == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1.25E+1"), "12.5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("-0.00"), "0"),
        (Decimal("0.000001"), "0.000001"),
        (Decimal("-3.10"), "-3.1"),
        (Decimal("7"), "7"),
    ],
)
def test_amounts_never_use_exponents(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text


def test_status_map_and_unmapped_statuses() -> None:
    status_map = {"approved": "1", "chargeback": "-1"}
    assert render_url("https://s.test/?s={status}", status_map=status_map) == "https://s.test/?s=1"
    rejected = replace(FACTS, status="rejected")
    url = render_url("https://s.test/?s={status}", rejected, status_map=status_map)
    assert url == "https://s.test/?s=rejected"


@pytest.mark.parametrize(
    ("payout", "cost", "profit"),
    [
        (Decimal(10), Decimal("2.5"), "7.5"),
        (None, Decimal("2.5"), "-2.5"),
        (Decimal("3.10"), None, "3.1"),
        (None, None, "0"),
        (Decimal(-10), Decimal(1), "-11"),
    ],
)
def test_profit_counts_missing_amounts_as_zero(
    payout: Decimal | None, cost: Decimal | None, profit: str
) -> None:
    facts = replace(FACTS, payout=payout, cost=cost)
    assert render_url("https://s.test/?x={profit}", facts) == f"https://s.test/?x={profit}"


def test_negative_payout_of_a_chargeback_is_sent_as_is() -> None:
    facts = replace(FACTS, payout=Decimal("-10.00"), status="chargeback")
    data = render_json(
        '{"p": {payout}, "r": {revenue}, "s": "{status}"}', facts, share_percent=Decimal(50)
    )
    assert data == {"p": -5, "r": -10, "s": "chargeback"}


def test_get_has_no_body_and_every_request_an_idempotency_key() -> None:
    request = build_request(postback(url="https://s.test/?c={clickid}"), FACTS, URLS, NOW)
    assert request.method == "GET"
    assert request.body is None
    assert request.headers == {"Idempotency-Key": "501"}


def test_post_without_body_template_sends_an_empty_body() -> None:
    request = build_request(postback(method="POST"), FACTS, URLS, NOW)
    assert (request.method, request.body) == ("POST", b"")
    assert request.headers == {"Idempotency-Key": "501"}


def expected_signature(secret: str, signed: bytes) -> str:
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={NOW_SECONDS},v1={digest}"


def test_signature_of_a_get_covers_the_url_as_sent() -> None:
    secret = "a-long-signing-secret"
    request = build_request(
        postback(url="https://s.test/pb?c={clickid}&s={sub1}", signing_secret=secret),
        with_sub1("a b"),
        URLS,
        NOW,
    )
    assert request.url == "https://s.test/pb?c=c0ffee&s=a%20b"
    signed = f"{NOW_SECONDS}.{request.url}".encode()
    assert request.headers["X-Signature"] == expected_signature(secret, signed)


def test_signature_of_a_post_covers_the_body() -> None:
    secret = "another-secret-value"
    request = build_request(
        postback(method="POST", body='{"p": {payout}}', signing_secret=secret), FACTS, URLS, NOW
    )
    assert request.body == b'{"p": 10.005}'
    signed = f"{NOW_SECONDS}.".encode() + request.body
    assert request.headers["X-Signature"] == expected_signature(secret, signed)
    other = build_request(postback(method="POST", body='{"p": {payout}}'), FACTS, URLS, NOW)
    assert "X-Signature" not in other.headers


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": None}, "no postback URL"),
        ({"url": "https://s.test/?x={nope}"}, "unknown macro {nope}"),
        ({"url": "https://{sub1}.s.test/"}, "not in the host"),
        ({"url": "ftp://s.test/"}, "http:// or https://"),
        ({"body": '{"a": 1}'}, "GET postback has no body"),
        ({"method": "PUT"}, "not GET or POST"),
        ({"method": "POST", "body": '{"a": {bogus}}'}, "unknown macro {bogus}"),
        ({"method": "POST", "body": '{"a": {payout}'}, "not valid JSON"),
        ({"preset": "myspace"}, "unknown postback preset"),
    ],
)
def test_deliveries_that_cannot_be_built(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("{", r"\{").replace("}", r"\}")):
        build_request(postback(**changes), FACTS, URLS, NOW)


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"preset": "myspace"}, "preset", "must be one of"),
        ({"method": "PATCH"}, "method", "GET or POST"),
        ({"url": None}, "url", "needs a URL"),
        ({"url": "https://s.test/?x={nope}"}, "url", "unknown macro {nope}"),
        ({"url": "https://s.test/?x={click!id}"}, "url", "not part of a macro"),
        ({"url": "https://s.test/?x={clickid"}, "url", "not part of a macro"),
        ({"url": "https://{sub1}/"}, "url", "not in the host"),
        ({"url": "https://u:p@s.test/"}, "url", "user name or password"),
        ({"url": "https://s.test/pb#{sub1}"}, "url", "#fragment"),
        ({"url": "https://s.test/pb?c=\u00fc{sub1}"}, "url", "must be ASCII"),
        ({"url": "https://s.test/a b"}, "url", "whitespace"),
        ({"url": "s.test/pb"}, "url", "http:// or https://"),
        ({"url": "https://s.test/" + "x" * 4000}, "url", "at most 4000"),
        ({"body": "a=1"}, "body", "GET postback has no body"),
        ({"method": "POST", "body_format": "xml", "body": "a"}, "body_format", "json or form"),
        ({"method": "POST", "body": '{"a": {nope}}'}, "body", "unknown macro {nope}"),
        ({"method": "POST", "body": '{"a": {payout}'}, "body", "not valid JSON"),
        ({"method": "POST", "body": '{"a": 1{payout}}'}, "body", "not valid JSON"),
        ({"method": "POST", "body": "{{clickid}: 1}"}, "body", "not valid JSON"),
        ({"method": "POST", "body": '{"a": "\\{clickid}"}'}, "body", "after a backslash"),
        ({"method": "POST", "body": "a={clickid}&b={x}", "body_format": "form"}, "body", "{x}"),
        ({"method": "POST", "body": "a={ clickid }", "body_format": "form"}, "body", "not part"),
        ({"credentials": {"token": "x"}}, "credentials.token", "unknown credential"),
    ],
)
def test_configuration_problems(config: dict[str, Any], field: str, message: str) -> None:
    arguments: dict[str, Any] = {
        "preset": "template",
        "method": "GET",
        "url": "https://s.test/pb?c={clickid}",
        "body": None,
        "body_format": "json",
        "credentials": {},
    }
    arguments.update(config)
    problems = check_postback_config(**arguments)
    assert any(f == field and message in m for f, m in problems), problems


@pytest.mark.parametrize(
    ("method", "body", "body_format"),
    [
        ("GET", None, "json"),
        ("POST", None, "json"),
        ("POST", '{"payout": {payout}, "id": "{clickid}", "n": [{sub1}, "{param:x}"]}', "json"),
        ("POST", '{"a": {"b": "{status}"}, "c": "brace { and } in a string"}', "json"),
        ("POST", "click={clickid}&amount={payout}&c={param:gclid}", "form"),
    ],
)
def test_valid_configurations(method: str, body: str | None, body_format: str) -> None:
    url = "https://s.test/pb/{clickid}?p={payout}&s={status}&t={sub2}"
    assert check_postback_config("template", method, url, body, body_format, {}) == []


@pytest.mark.parametrize(
    "secret", ["", "a", "abcd", "abcdefgh", "abcdefghijk", "abcdefghijkl", "x" * 200]
)
def test_masked_credentials_never_show_a_whole_secret(secret: str) -> None:
    for preset, name in [
        ("meta", "access_token"),
        ("tiktok", "access_token"),
        ("google_ads", "developer_token"),
        ("google_ads", "access_token"),
        ("template", "access_token"),
        ("meta", "unexpected"),
    ]:
        shown = masked_credentials(preset, {name: secret})[name]
        assert shown.startswith("…")
        # At most the last 4 characters, and only of a secret three times that long.
        assert shown == "…" or (len(secret) >= 12 and shown == "…" + secret[-4:])
        if secret:
            assert secret not in shown
    assert masked_credentials("meta", {"access_token": "EAAB" + "q" * 20 + "wxyz"}) == {
        "access_token": "…wxyz"
    }


def test_masked_credentials_show_ids_in_full() -> None:
    credentials = {
        "customer_id": "123-456-7890",
        "conversion_action_id": "42",
        "login_customer_id": "111-222-3333",
        "developer_token": "dev-token-1234567890",
        "access_token": "ya29.access-token-abcdef",
    }
    assert masked_credentials("google_ads", credentials) == {
        "customer_id": "123-456-7890",
        "conversion_action_id": "42",
        "login_customer_id": "111-222-3333",
        "developer_token": "…7890",
        "access_token": "…cdef",
    }
    meta = masked_credentials(
        "meta", {"pixel_id": "1234", "access_token": "EAAB12345678", "test_event_code": "TEST1"}
    )
    assert meta == {"pixel_id": "1234", "access_token": "…5678", "test_event_code": "TEST1"}
