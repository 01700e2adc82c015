"""Each preset's request, sent to a local aiohttp server that plays the platform."""

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from yarl import URL

from tracker.outbound.payloads import (
    DeliveryFacts,
    OutboundRequest,
    PayloadError,
    PlatformUrls,
    SourcePostback,
    build_request,
    check_postback_config,
)

NOW = datetime(2024, 5, 2, 8, 30, 15, tzinfo=UTC)
CONVERSION_TIME = datetime(2024, 5, 1, 12, 0, 7, 999999, tzinfo=UTC)
CONVERSION_SECONDS = 1714564807
CLICK_TIME = datetime(2024, 5, 1, 11, 0, 0, 250000, tzinfo=UTC)
CLICK_MILLIS = 1714561200250
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"

FACTS = DeliveryFacts(
    delivery_id=9001,
    conversion_id=77,
    conversion_time=CONVERSION_TIME,
    click_time=CLICK_TIME,
    click_id="c0ffee",
    external_id=None,
    campaign_id=5,
    offer_id=9,
    traffic_source_id=2,
    status="approved",
    payout=Decimal("10.005"),
    currency="EUR",
    cost=Decimal("0.50"),
    txid="tx-1",
    event=None,
    ip="2001:db8::7",
    user_agent=UA,
    click_params={
        "fbclid": "IwAR2xYz_0-a",
        "ttclid": "E.C.P.abc123",
        "gclid": "Cj0KCQjw-gclid_value",
    },
    fields={},
)

META = {"pixel_id": "123456789012345", "access_token": "EAAB+tok/en=&x", "test_event_code": "T1"}
TIKTOK = {"pixel_code": "CQ1A2B3C4D5E6F7G8H9", "access_token": "tt-access-token-0123"}
GOOGLE = {
    "customer_id": "123-456-7890",
    "conversion_action_id": "987654",
    "developer_token": "dev-token-abcdef",
    "access_token": "ya29.a0AfH6SM-token",
    "login_customer_id": "111-222-3333",
}


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Platform:
    server: TestServer
    received: list[Received]

    def urls(self) -> PlatformUrls:
        return PlatformUrls(
            meta=str(self.server.make_url("/v19.0")),
            tiktok=str(self.server.make_url("/open_api/v1.3")),
            google_ads=str(self.server.make_url("/v17")),
        )

    async def send(self, request: OutboundRequest) -> Received:
        async with (
            ClientSession() as session,
            # encoded=True: the URL goes out exactly as built (and as signed).
            session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
            ) as response,
        ):
            assert response.status == 200
        assert len(self.received) == 1
        return self.received.pop()


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    received: list[Received] = []

    async def record(request: web.Request) -> web.Response:
        received.append(
            Received(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                raw_path=request.raw_path,
                headers=dict(request.headers),
                body=await request.read(),
            )
        )
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Platform(server, received)
    finally:
        await server.close()


def preset(name: str, credentials: dict[str, str], **changes: Any) -> SourcePostback:
    base = SourcePostback(
        preset=name,
        method="POST",
        url=None,
        body=None,
        body_format="json",
        status_map={"approved": "ignored by presets"},
        share_percent=None,
        credentials=credentials,
        signing_secret=None,
    )
    return replace(base, **changes)


def exact_json(body: bytes) -> Any:
    """The JSON body with numbers as Decimal/int, so that a float could not pass for exact."""
    return json.loads(body, parse_float=Decimal)


def assert_json_number(value: Any, expected: str) -> None:
    assert isinstance(value, int | Decimal) and not isinstance(value, bool), value
    assert Decimal(value) == Decimal(expected)


def assert_common_headers(received: Received) -> None:
    assert received.method == "POST"
    assert received.headers["Idempotency-Key"] == "9001"
    assert received.headers["Content-Type"] == "application/json"
    assert "X-Signature" not in received.headers


async def test_meta_conversions_api(platform: Platform) -> None:
    request = build_request(preset("meta", META), FACTS, platform.urls(), NOW)
    received = await platform.send(request)
    assert_common_headers(received)
    assert received.path == "/v19.0/123456789012345/events"
    assert received.query == {"access_token": "EAAB+tok/en=&x"}
    assert "access_token=EAAB%2Btok%2Fen%3D%26x" in received.raw_path
    data = exact_json(received.body)
    assert set(data) == {"data", "test_event_code"}
    assert data["test_event_code"] == "T1"
    assert len(data["data"]) == 1
    event = data["data"][0]
    assert set(event) == {
        "event_name",
        "event_time",
        "action_source",
        "event_id",
        "user_data",
        "custom_data",
    }
    assert event["event_name"] == "Purchase"
    assert type(event["event_time"]) is int and event["event_time"] == CONVERSION_SECONDS
    assert event["action_source"] == "website"
    assert event["event_id"] == "9001"
    assert event["user_data"] == {
        "fbc": f"fb.1.{CLICK_MILLIS}.IwAR2xYz_0-a",
        "client_ip_address": "2001:db8::7",
        "client_user_agent": UA,
    }
    assert set(event["custom_data"]) == {"value", "currency"}
    assert_json_number(event["custom_data"]["value"], "10.005")
    assert event["custom_data"]["currency"] == "EUR"
    assert b'"value":10.005' in received.body


async def test_meta_without_fbclid_matches_on_ip_and_user_agent(platform: Platform) -> None:
    facts = replace(FACTS, click_params={}, event="Lead", ip=None, payout=Decimal(12))
    credentials = {**META, "event_source_url": "https://shop.example/thanks"}
    del credentials["test_event_code"]
    request = build_request(
        preset("meta", credentials, share_percent=Decimal("37.5")), facts, platform.urls(), NOW
    )
    data = exact_json((await platform.send(request)).body)
    assert set(data) == {"data"}
    event = data["data"][0]
    assert event["event_name"] == "Lead"
    assert event["event_source_url"] == "https://shop.example/thanks"
    assert event["user_data"] == {"client_user_agent": UA}
    assert_json_number(event["custom_data"]["value"], "4.5")


async def test_tiktok_events_api(platform: Platform) -> None:
    facts = replace(FACTS, event="SubmitForm")
    credentials = {**TIKTOK, "test_event_code": "TEST123"}
    request = build_request(preset("tiktok", credentials), facts, platform.urls(), NOW)
    received = await platform.send(request)
    assert_common_headers(received)
    assert received.path == "/open_api/v1.3/event/track/"
    assert received.query == {}
    assert received.headers["Access-Token"] == "tt-access-token-0123"
    data = exact_json(received.body)
    assert set(data) == {"event_source", "event_source_id", "test_event_code", "data"}
    assert data["event_source"] == "web"
    assert data["event_source_id"] == "CQ1A2B3C4D5E6F7G8H9"
    assert data["test_event_code"] == "TEST123"
    assert len(data["data"]) == 1
    event = data["data"][0]
    assert set(event) == {"event", "event_time", "event_id", "user", "properties"}
    assert event["event"] == "SubmitForm"
    assert type(event["event_time"]) is int and event["event_time"] == CONVERSION_SECONDS
    assert event["event_id"] == "9001"
    assert event["user"] == {"ttclid": "E.C.P.abc123", "ip": "2001:db8::7", "user_agent": UA}
    assert set(event["properties"]) == {"value", "currency"}
    assert_json_number(event["properties"]["value"], "10.005")
    assert event["properties"]["currency"] == "EUR"


async def test_tiktok_default_event_and_share(platform: Platform) -> None:
    facts = replace(FACTS, click_params={})
    request = build_request(
        preset("tiktok", TIKTOK, share_percent=Decimal(50)), facts, platform.urls(), NOW
    )
    data = exact_json((await platform.send(request)).body)
    assert "test_event_code" not in data
    event = data["data"][0]
    assert event["event"] == "CompletePayment"
    assert event["user"] == {"ip": "2001:db8::7", "user_agent": UA}
    assert_json_number(event["properties"]["value"], "5.0025")


async def test_google_ads_click_conversion_upload(platform: Platform) -> None:
    request = build_request(preset("google_ads", GOOGLE), FACTS, platform.urls(), NOW)
    received = await platform.send(request)
    assert_common_headers(received)
    assert received.path == "/v17/customers/1234567890:uploadClickConversions"
    assert received.query == {}
    assert received.headers["Authorization"] == "Bearer ya29.a0AfH6SM-token"
    assert received.headers["developer-token"] == "dev-token-abcdef"
    assert received.headers["login-customer-id"] == "1112223333"
    data = exact_json(received.body)
    assert set(data) == {"conversions", "partialFailure"}
    assert data["partialFailure"] is True
    assert len(data["conversions"]) == 1
    conversion = data["conversions"][0]
    assert set(conversion) == {
        "gclid",
        "conversionAction",
        "conversionDateTime",
        "conversionValue",
        "currencyCode",
        "orderId",
    }
    assert conversion["gclid"] == "Cj0KCQjw-gclid_value"
    assert conversion["conversionAction"] == "customers/1234567890/conversionActions/987654"
    assert conversion["conversionDateTime"] == "2024-05-01 12:00:07+00:00"
    assert_json_number(conversion["conversionValue"], "10.005")
    assert conversion["currencyCode"] == "EUR"
    assert conversion["orderId"] == "9001"


async def test_google_ads_without_login_customer_and_payout(platform: Platform) -> None:
    credentials = {k: v for k, v in GOOGLE.items() if k != "login_customer_id"}
    facts = replace(FACTS, payout=None)
    request = build_request(preset("google_ads", credentials), facts, platform.urls(), NOW)
    received = await platform.send(request)
    assert "login-customer-id" not in received.headers
    conversion = exact_json(received.body)["conversions"][0]
    assert "conversionValue" not in conversion and "currencyCode" not in conversion


def test_google_ads_needs_a_gclid() -> None:
    facts = replace(FACTS, click_params={"fbclid": "x"})
    with pytest.raises(PayloadError) as raised:
        build_request(preset("google_ads", GOOGLE), facts, PlatformUrls("a", "b", "c"), NOW)
    assert str(raised.value) == "the click has no gclid parameter"


@pytest.mark.parametrize(
    ("name", "credentials"), [("meta", META), ("tiktok", TIKTOK), ("google_ads", GOOGLE)]
)
@pytest.mark.parametrize("payout", [Decimal(-10), Decimal(0), Decimal("0.000001")])
def test_presets_refuse_non_positive_values(
    name: str, credentials: dict[str, str], payout: Decimal
) -> None:
    # 50% of 0.000001 rounds to 0 at 6 places: nothing positive is left to report.
    facts = replace(FACTS, payout=payout, status="chargeback")
    postback = preset(name, credentials, share_percent=Decimal(50))
    with pytest.raises(PayloadError, match="platforms take no negative conversions"):
        build_request(postback, facts, PlatformUrls("a", "b", "c"), NOW)


@pytest.mark.parametrize(
    ("name", "credentials", "dropped"),
    [
        ("meta", META, "access_token"),
        ("tiktok", TIKTOK, "pixel_code"),
        ("google_ads", GOOGLE, "developer_token"),
    ],
)
def test_presets_with_missing_credentials_are_dead(
    name: str, credentials: dict[str, str], dropped: str
) -> None:
    incomplete = {k: v for k, v in credentials.items() if k != dropped}
    with pytest.raises(PayloadError, match=f"credentials.{dropped} required"):
        build_request(preset(name, incomplete), FACTS, PlatformUrls("a", "b", "c"), NOW)


def test_preset_without_any_matching_signal_is_dead() -> None:
    facts = replace(FACTS, click_params={}, ip=None, user_agent=None)
    for name, credentials in (("meta", META), ("tiktok", TIKTOK)):
        with pytest.raises(PayloadError, match="to match"):
            build_request(preset(name, credentials), facts, PlatformUrls("a", "b", "c"), NOW)


@pytest.mark.parametrize(
    ("name", "credentials", "field", "message"),
    [
        ("meta", {"access_token": "t"}, "credentials.pixel_id", "required"),
        ("meta", {**META, "pixel_id": "abc"}, "credentials.pixel_id", "digits only"),
        ("meta", {**META, "extra": "1"}, "credentials.extra", "unknown credential"),
        ("meta", {**META, "event_source_url": "shop"}, "credentials.event_source_url", "http"),
        ("meta", {**META, "access_token": "has space"}, "credentials.access_token", "ASCII"),
        ("tiktok", {"pixel_code": "C1"}, "credentials.access_token", "required"),
        ("tiktok", {**TIKTOK, "pixel_code": "C-1"}, "credentials.pixel_code", "letters"),
        ("google_ads", {**GOOGLE, "customer_id": "123"}, "credentials.customer_id", "10-digit"),
        (
            "google_ads",
            {**GOOGLE, "login_customer_id": "12-34"},
            "credentials.login_customer_id",
            "10-digit",
        ),
        (
            "google_ads",
            {**GOOGLE, "conversion_action_id": "customers/1/conversionActions/2"},
            "credentials.conversion_action_id",
            "numeric",
        ),
        ("google_ads", {**GOOGLE, "access_token": ""}, "credentials.access_token", "required"),
        (
            "google_ads",
            {**GOOGLE, "client_id": "id.apps", "refresh_token": "1//tok"},
            "credentials.client_secret",
            "with the other OAuth fields",
        ),
    ],
)
def test_preset_configuration_problems(
    name: str, credentials: dict[str, str], field: str, message: str
) -> None:
    problems = check_postback_config(name, "POST", None, None, "json", credentials)
    assert any(f == field and message in m for f, m in problems), problems


def test_preset_configurations_take_no_template() -> None:
    problems = check_postback_config("meta", "POST", "https://x.test/", "{}", "json", META)
    assert {field for field, _ in problems} == {"url", "body"}
    for name, credentials in (("meta", META), ("tiktok", TIKTOK), ("google_ads", GOOGLE)):
        assert check_postback_config(name, "POST", None, None, "json", credentials) == []
        assert check_postback_config(name, "GET", "", "", "", credentials) == []


async def test_template_get_and_post_with_signatures(platform: Platform) -> None:
    secret = "source-signing-secret"
    base = str(platform.server.make_url("/pb"))
    facts = replace(FACTS, fields={"sub1": "a b&c=d"})
    get = build_request(
        preset(
            "template",
            {},
            method="GET",
            url=base + "?c={clickid}&s={sub1}&p={payout}&st={status}",
            status_map={"approved": "1"},
            signing_secret=secret,
        ),
        facts,
        platform.urls(),
        NOW,
    )
    received = await platform.send(get)
    assert received.method == "GET"
    assert received.query == {"c": "c0ffee", "s": "a b&c=d", "p": "10.005", "st": "1"}
    assert received.headers["Idempotency-Key"] == "9001"
    timestamp, mac = received.headers["X-Signature"].split(",")
    assert timestamp == "t=1714638615"
    # The receiver rebuilds the URL it published plus the path and query it got.
    signed = f"1714638615.{platform.server.make_url('')}{received.raw_path}".encode()
    assert mac == "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()

    post = build_request(
        preset(
            "template",
            {},
            url=base,
            body='{"click": "{clickid}", "payout": {payout}, "sub": "{sub1}"}',
            signing_secret=secret,
        ),
        facts,
        platform.urls(),
        NOW,
    )
    received = await platform.send(post)
    assert received.method == "POST"
    assert received.headers["Content-Type"] == "application/json"
    assert exact_json(received.body) == {
        "click": "c0ffee",
        "payout": Decimal("10.005"),
        "sub": "a b&c=d",
    }
    signed = b"1714638615." + received.body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    assert received.headers["X-Signature"] == f"t=1714638615,v1={expected}"
