"""What one conversion delivery sends: the types, the URL/body template and the dispatcher.

Everything here is pure. The outbox gathers the facts of a delivery and the source's
settings, calls `build_request`, and sends the `OutboundRequest` byte for byte. A
`PayloadError` is final: the same inputs would fail the same way on every retry.
"""

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from functools import cache
from urllib.parse import quote

import orjson

from tracker.domain.urls import url_problem

TEMPLATE, META, TIKTOK, GOOGLE_ADS = "template", "meta", "tiktok", "google_ads"
PRESETS = (TEMPLATE, META, TIKTOK, GOOGLE_ADS)
METHODS = ("GET", "POST")
JSON, FORM = "json", "form"
BODY_FORMATS = (JSON, FORM)
CONTENT_TYPES = {JSON: "application/json", FORM: "application/x-www-form-urlencoded"}

SUB_MACROS = tuple(f"sub{i}" for i in range(1, 11))
VISITOR_MACROS = (
    "country",
    "region",
    "city",
    "asn",
    "isp",
    "device",
    "os",
    "os_version",
    "browser",
    "browser_version",
    "language",
    "is_bot",
    "is_unique",
    "lander_id",
)
# Amounts render as plain decimals; ids as integers; the rest is text.
MONEY_MACROS = ("payout", "revenue", "cost", "profit")
ID_MACROS = ("delivery_id", "conversion_id", "campaign_id", "offer_id")
TEXT_MACROS = ("external_id", "clickid", "currency", "status", "txid", "event")
MACROS = frozenset((*TEXT_MACROS, *MONEY_MACROS, *ID_MACROS, *SUB_MACROS, *VISITOR_MACROS))
# `{param:fbclid}`: a parameter of the click URL by its exact name.
PARAM_PREFIX = "param:"

REQUIRED_CREDENTIALS: dict[str, frozenset[str]] = {
    TEMPLATE: frozenset(),
    META: frozenset({"pixel_id", "access_token"}),
    TIKTOK: frozenset({"pixel_code", "access_token"}),
    # And an `access_token`, or the three OAuth fields the sender refreshes one with.
    GOOGLE_ADS: frozenset({"customer_id", "conversion_action_id", "developer_token"}),
}
OPTIONAL_CREDENTIALS: dict[str, frozenset[str]] = {
    TEMPLATE: frozenset(),
    META: frozenset({"test_event_code", "event_source_url"}),
    TIKTOK: frozenset({"test_event_code"}),
    GOOGLE_ADS: frozenset(
        {"login_customer_id", "access_token", "client_id", "client_secret", "refresh_token"}
    ),
}
SECRET_CREDENTIALS: dict[str, frozenset[str]] = {
    TEMPLATE: frozenset(),
    META: frozenset({"access_token"}),
    TIKTOK: frozenset({"access_token"}),
    GOOGLE_ADS: frozenset({"developer_token", "access_token", "client_secret", "refresh_token"}),
}

MAX_BODY_LENGTH = 16000
MAX_CREDENTIAL_LENGTH = 2048
SIGNATURE_HEADER = "X-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True, slots=True)
class DeliveryFacts:
    """What one delivery reports: the conversion, its click, and the visitor."""

    delivery_id: int  # also the Idempotency-Key and the platforms' event_id / order id
    conversion_id: int
    conversion_time: datetime  # aware, UTC
    click_time: datetime  # aware, UTC
    click_id: str
    external_id: str | None
    campaign_id: int
    offer_id: int | None
    traffic_source_id: int
    status: str  # the conversion status this delivery reports
    payout: Decimal | None  # the full payout in `currency`; negative for a refund delivery
    currency: str  # ISO 4217, the campaign's report currency
    cost: Decimal | None  # the click's cost
    txid: str | None
    event: str | None
    ip: str | None
    user_agent: str | None
    click_params: Mapping[str, str]  # the click URL's parameters as stored
    fields: Mapping[str, str | None]  # sub1..sub10 and visitor facts by macro name, as text


@dataclass(frozen=True, slots=True)
class SourcePostback:
    """How one traffic source (or a campaign's override) wants its postback."""

    preset: str  # "template" | "meta" | "tiktok" | "google_ads"
    method: str  # "GET" | "POST" (template only)
    url: str | None  # template: the URL template with {macros}
    body: str | None  # template POST: body template
    body_format: str  # "json" | "form" (template POST)
    status_map: Mapping[str, str]  # our status -> the source's word (template only)
    share_percent: Decimal | None  # percent of the payout reported (None = 100)
    credentials: Mapping[str, str]  # preset ids and secrets
    signing_secret: str | None  # template: when set, add the X-Signature header


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """One HTTP request, exactly as it must be sent (the URL is already percent-encoded)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class PlatformUrls:
    """The ad platforms' API base URLs, from settings, without a trailing slash."""

    meta: str  # e.g. https://graph.facebook.com/v19.0
    tiktok: str  # e.g. https://business-api.tiktok.com/open_api/v1.3
    google_ads: str  # e.g. https://googleads.googleapis.com/v17


class PayloadError(ValueError):
    """A delivery that cannot be built; final, the message says why."""


Problems = list[tuple[str, str]]
PresetBuilder = Callable[[SourcePostback, DeliveryFacts, PlatformUrls], OutboundRequest]
PresetChecker = Callable[[Mapping[str, str]], Problems]


def build_request(
    postback: SourcePostback, facts: DeliveryFacts, urls: PlatformUrls, now: datetime
) -> OutboundRequest:
    """The request that reports `facts` to the source configured by `postback`.

    `now` dates the template preset's signature. Raises `PayloadError` when the
    delivery cannot be built (no URL, an unknown macro, a missing click id ...)."""
    if postback.preset == TEMPLATE:
        return build_template_request(postback, facts, now)
    preset = _presets().get(postback.preset)
    if preset is None:
        raise PayloadError(f"unknown postback preset {postback.preset[:40]!r}")
    require_credentials(postback.preset, postback.credentials)
    return preset[0](postback, facts, urls)


def check_postback_config(
    preset: str,
    method: str,
    url: str | None,
    body: str | None,
    body_format: str,
    credentials: Mapping[str, str],
) -> Problems:
    """Every problem with a postback setting as (field, message); empty when it is usable.

    Fields are `preset`, `method`, `url`, `body`, `body_format` and
    `credentials.<name>`, for the admin API's 400 details."""
    if preset not in PRESETS:
        return [("preset", f"must be one of {', '.join(PRESETS)}")]
    problems = credential_problems(preset, credentials)
    if preset != TEMPLATE:
        if url:
            problems.append(("url", f"the {preset} preset builds its own URL; leave url empty"))
        if body:
            problems.append(("body", f"the {preset} preset builds its own body; leave body empty"))
        problems.extend(_presets()[preset][1](credentials))
        return problems
    if method not in METHODS:
        problems.append(("method", "must be GET or POST"))
    if body_format not in BODY_FORMATS:
        problems.append(("body_format", "must be json or form"))
    if not url:
        problems.append(("url", "the template preset needs a URL"))
    else:
        problem = url_template_problem(url)
        if problem is not None:
            problems.append(("url", problem))
    if body:
        if method == "GET":
            problems.append(("body", "a GET postback has no body; use POST"))
        elif body_format in BODY_FORMATS:
            problem = body_template_problem(body, body_format)
            if problem is not None:
                problems.append(("body", problem))
    return problems


def masked_credentials(preset: str, credentials: Mapping[str, str]) -> dict[str, str]:
    """Credentials as the API shows them: ids in full, secrets as "…" and their last 4 characters.

    A secret shorter than 12 characters shows no character at all, and a name the
    preset does not know is treated as a secret."""
    public = REQUIRED_CREDENTIALS.get(preset, frozenset()) | OPTIONAL_CREDENTIALS.get(
        preset, frozenset()
    )
    secret = SECRET_CREDENTIALS.get(preset, frozenset())
    masked = {}
    for name, value in credentials.items():
        if name in public and name not in secret:
            masked[name] = value
        else:
            masked[name] = "…" + value[-4:] if len(value) >= 12 else "…"
    return masked


def credential_problems(preset: str, credentials: Mapping[str, str]) -> Problems:
    """Missing, unknown and malformed credentials of `preset` (format checks aside)."""
    required = REQUIRED_CREDENTIALS[preset]
    known = required | OPTIONAL_CREDENTIALS[preset]
    problems: Problems = []
    for name in sorted(required):
        if not credentials.get(name):
            problems.append((f"credentials.{name}", f"required by the {preset} preset"))
    for name, value in credentials.items():
        field = f"credentials.{name[:40]}"
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            problems.append((field, f"unknown credential for the {preset} preset ({allowed})"))
        elif not isinstance(value, str):
            problems.append((field, "must be a string"))
        elif len(value) > MAX_CREDENTIAL_LENGTH:
            problems.append((field, f"must be at most {MAX_CREDENTIAL_LENGTH} characters"))
        elif value and not all("!" <= char <= "~" for char in value):
            # Credentials travel in headers and query strings: printable ASCII only.
            problems.append((field, "must be printable ASCII without spaces"))
    return problems


def require_credentials(preset: str, credentials: Mapping[str, str]) -> None:
    """Raise `PayloadError` when stored credentials cannot be used as they are."""
    problems = credential_problems(preset, credentials)
    checker = _presets().get(preset)
    if checker is not None:
        problems.extend(checker[1](credentials))
    if problems:
        field, message = problems[0]
        raise PayloadError(f"{field} {message}")


# Presets build on the types above, so their modules are imported on first use.
@cache
def _presets() -> dict[str, tuple[PresetBuilder, PresetChecker]]:
    from tracker.outbound import google_ads, meta, tiktok

    return {
        META: (meta.build, meta.credential_problems),
        TIKTOK: (tiktok.build, tiktok.credential_problems),
        GOOGLE_ADS: (google_ads.build, google_ads.credential_problems),
    }


# -- amounts and times -------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHARE_PLACES = Decimal("0.000001")


def decimal_text(value: Decimal) -> str:
    """An amount as plain decimal text without trailing zeros: 12.50 -> "12.5", never "1.25E+1"."""
    if not value.is_finite():
        raise PayloadError(f"amount {value} is not a number")
    if value.is_zero():
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def json_number(value: Decimal) -> orjson.Fragment:
    """An exact JSON number for orjson, which cannot serialise Decimal (and float is not exact)."""
    return orjson.Fragment(decimal_text(value).encode())


def shared_payout(payout: Decimal | None, share_percent: Decimal | None) -> Decimal | None:
    """The part of `payout` reported to the source: `share_percent` of it, to 6 places."""
    if payout is None or share_percent is None:
        return payout
    with localcontext() as context:
        context.prec = 60
        try:
            return (payout * share_percent / 100).quantize(_SHARE_PLACES, ROUND_HALF_EVEN)
        except InvalidOperation:
            raise PayloadError(f"cannot take {share_percent}% of {payout}") from None


def preset_value(postback: SourcePostback, facts: DeliveryFacts) -> Decimal | None:
    """The value an ad platform is told: the shared payout, None when the payout is unknown."""
    value = shared_payout(facts.payout, postback.share_percent)
    if value is not None and value <= 0:
        raise PayloadError(
            f"the reported payout is {decimal_text(value)}: "
            "ad platforms take no negative conversions"
        )
    return value


def match_keys(
    facts: DeliveryFacts,
    platform: str,
    click_param: str,
    click_key: tuple[str, str] | None,
    ip_key: str,
    user_agent_key: str,
) -> dict[str, str]:
    """What an ad platform matches a conversion on: its own click id (`click_key`, the
    platform's name for it and its value, when the click URL had `click_param`), the
    click's IP address and User-Agent, under the platform's names. PayloadError when
    there is none of them."""
    keys: dict[str, str] = {}
    if click_key is not None:
        keys[click_key[0]] = click_key[1]
    if facts.ip:
        keys[ip_key] = facts.ip
    if facts.user_agent:
        keys[user_agent_key] = facts.user_agent
    if not keys:
        raise PayloadError(
            f"the click has no {click_param}, IP address or User-Agent for {platform} to match"
        )
    return keys


def epoch_seconds(moment: datetime) -> int:
    """Whole Unix seconds, exact (no float)."""
    return (_aware(moment) - _EPOCH) // timedelta(seconds=1)


def epoch_millis(moment: datetime) -> int:
    """Whole Unix milliseconds, exact (no float)."""
    return (_aware(moment) - _EPOCH) // timedelta(milliseconds=1)


def _aware(moment: datetime) -> datetime:
    # Database timestamps are UTC; a naive one here means UTC rather than local time.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def json_request(
    url: str, payload: object, delivery_id: int, headers: Mapping[str, str] | None = None
) -> OutboundRequest:
    """A JSON POST with the delivery's Idempotency-Key."""
    all_headers = {IDEMPOTENCY_HEADER: str(delivery_id), **(headers or {})}
    all_headers["Content-Type"] = CONTENT_TYPES[JSON]
    return OutboundRequest("POST", url, all_headers, orjson.dumps(payload))


# -- the template preset -----------------------------------------------------------------------

MacroValue = str | int | Decimal | None
# A name in braces is always a macro, in the URL and in either kind of body.
_MACRO = re.compile(r"\{(param:[^{}\s\"\\]{1,128}|[A-Za-z0-9_.\-]{1,64})\}")


@dataclass(frozen=True, slots=True)
class _Template:
    literals: tuple[str, ...]  # one more than macros: text, macro, text, ..., text
    macros: tuple[str, ...]


def _split(template: str) -> _Template:
    parts = _MACRO.split(template)
    return _Template(tuple(parts[0::2]), tuple(parts[1::2]))


def _unknown_macro(template: _Template) -> str | None:
    for name in template.macros:
        if name not in MACROS and not name.startswith(PARAM_PREFIX):
            return name
    return None


def _stray_brace(template: _Template) -> bool:
    return any("{" in text or "}" in text for text in template.literals)


def url_template_problem(url: str) -> str | None:
    """Why `url` is not a usable postback URL template, or None: a URL the sender can
    request as written (see `domain.urls.url_problem`) whose macros are all known."""
    problem = url_problem(url, sent_as_written=True)
    if problem is not None:
        return problem
    template = _split(url)
    unknown = _unknown_macro(template)
    if unknown is not None:
        return f"unknown macro {{{unknown}}}"
    if _stray_brace(template):
        return "has a '{' or '}' that is not part of a macro"
    return None


def body_template_problem(body: str, body_format: str) -> str | None:
    """Why `body` is not a usable body template of `body_format`, or None.

    A JSON template must parse as JSON once every macro is filled in."""
    if len(body) > MAX_BODY_LENGTH:
        return f"must be at most {MAX_BODY_LENGTH} characters"
    template = _split(body)
    unknown = _unknown_macro(template)
    if unknown is not None:
        return f"unknown macro {{{unknown}}}"
    if body_format == FORM:
        return "has a '{' or '}' that is not part of a macro" if _stray_brace(template) else None
    try:
        quoted = _json_string_positions(template)
    except PayloadError as exc:
        return str(exc)
    # A bare macro is tried as null, which no other JSON value may touch either.
    filled = _join(template, ["" if inside else "null" for inside in quoted])
    try:
        orjson.loads(filled)
    except orjson.JSONDecodeError as exc:
        return f"is not valid JSON once its macros are filled in: {exc}"
    return None


def macro_values(postback: SourcePostback, facts: DeliveryFacts) -> dict[str, MacroValue]:
    """Every built-in macro's value for one delivery (`{param:NAME}` aside)."""
    revenue = facts.payout
    values: dict[str, MacroValue] = {
        "external_id": facts.external_id,
        "clickid": facts.click_id,
        "payout": shared_payout(revenue, postback.share_percent),
        "revenue": revenue,
        "currency": facts.currency,
        "status": postback.status_map.get(facts.status, facts.status),
        "txid": facts.txid,
        "event": facts.event,
        "campaign_id": facts.campaign_id,
        "offer_id": facts.offer_id,
        "cost": facts.cost,
        "profit": (revenue or Decimal(0)) - (facts.cost or Decimal(0)),
        "delivery_id": facts.delivery_id,
        "conversion_id": facts.conversion_id,
    }
    for name in (*SUB_MACROS, *VISITOR_MACROS):
        values[name] = facts.fields.get(name)
    return values


def build_template_request(
    postback: SourcePostback, facts: DeliveryFacts, now: datetime
) -> OutboundRequest:
    """The request of a `template` source: its URL and body with the macros filled in."""
    if not postback.url:
        raise PayloadError("the source has no postback URL")
    problem = url_template_problem(postback.url)
    if problem is not None:
        raise PayloadError(f"postback URL {problem}")
    method = postback.method.upper()
    if method not in METHODS:
        raise PayloadError(f"postback method {postback.method[:10]!r} is not GET or POST")
    values = macro_values(postback, facts)
    url_template = _split(postback.url)
    url = _join(url_template, [_url_text(_lookup(values, facts, m)) for m in url_template.macros])
    headers = {IDEMPOTENCY_HEADER: str(facts.delivery_id)}
    body: bytes | None = None
    if method == "POST":
        body = b""
        if postback.body:
            if postback.body_format not in BODY_FORMATS:
                raise PayloadError(f"body format {postback.body_format[:10]!r} is not json or form")
            problem = body_template_problem(postback.body, postback.body_format)
            if problem is not None:
                raise PayloadError(f"postback body {problem}")
            body = _render_body(postback.body, postback.body_format, values, facts).encode()
            headers["Content-Type"] = CONTENT_TYPES[postback.body_format]
    elif postback.body:
        raise PayloadError("a GET postback has no body")
    if postback.signing_secret:
        headers[SIGNATURE_HEADER] = signature(postback.signing_secret, now, url, body)
    return OutboundRequest(method, url, headers, body)


def signature(secret: str, now: datetime, url: str, body: bytes | None) -> str:
    """The X-Signature value: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.

    The HMAC covers "<t>." followed by the body for a POST, or by the URL as sent
    for a request without a body."""
    timestamp = epoch_seconds(now)
    signed = f"{timestamp}.".encode() + (body if body is not None else url.encode())
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _lookup(values: Mapping[str, MacroValue], facts: DeliveryFacts, name: str) -> MacroValue:
    if name.startswith(PARAM_PREFIX):
        return facts.click_params.get(name[len(PARAM_PREFIX) :])
    try:
        return values[name]
    except KeyError:
        raise PayloadError(f"unknown macro {{{name}}}") from None


def _text(value: MacroValue) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def _url_text(value: MacroValue) -> str:
    return quote(_text(value) or "", safe="")


def _join(template: _Template, rendered: list[str]) -> str:
    parts = [template.literals[0]]
    for value, text in zip(rendered, template.literals[1:], strict=True):
        parts.append(value)
        parts.append(text)
    return "".join(parts)


def _render_body(
    body: str, body_format: str, values: Mapping[str, MacroValue], facts: DeliveryFacts
) -> str:
    template = _split(body)
    found = [_lookup(values, facts, name) for name in template.macros]
    if body_format == FORM:
        return _join(template, [_url_text(value) for value in found])
    quoted = _json_string_positions(template)
    return _join(
        template,
        [
            _json_inside_string(value) if inside else _json_literal(value)
            for value, inside in zip(found, quoted, strict=True)
        ],
    )


def _json_string_positions(template: _Template) -> list[bool]:
    """For each macro of a JSON template, whether it sits inside a string literal."""
    positions = []
    inside = escaped = False
    for text in template.literals[:-1]:
        for char in text:
            if escaped:
                escaped = False
            elif inside and char == "\\":
                escaped = True
            elif char == '"':
                inside = not inside
        if escaped:
            raise PayloadError("a macro right after a backslash cannot be escaped")
        positions.append(inside)
    return positions


def _json_inside_string(value: MacroValue) -> str:
    text = _text(value)
    if not text:
        return ""
    try:
        return orjson.dumps(text).decode()[1:-1]
    except orjson.JSONEncodeError as exc:
        raise PayloadError(f"a value cannot be written as JSON: {exc}") from None


def _json_literal(value: MacroValue) -> str:
    """A bare macro: a number for amounts and ids, a JSON string for text, null when missing."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + _json_inside_string(value) + '"'
    return _text(value) or "null"
