"""Request bodies of the admin API, and value types shared with the postback."""

import ipaddress
import re
import unicodedata
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from tracker.domain.lifecycle import STATUSES, SYNONYMS
from tracker.domain.money import parse_currency, parse_money

STATUS_WORDS = (*STATUSES, *SYNONYMS)


def _money_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_money(value)


MAX_URL_LENGTH = 4000
# Controls (NUL, tab, newlines, DEL, C1), invisible formatting (zero-width, bidi
# overrides), surrogates, and every kind of space and line or paragraph separator.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def url_problem(value: str) -> str | None:
    """Why `value` is not an acceptable http(s) URL template, or None.

    Macros (`{name}`) may appear in the path, query and fragment only: the scheme,
    host and port are fixed when the URL is saved, whatever a click carries."""
    if len(value) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"must not contain whitespace or control characters (found {char!r})"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not value.lower().startswith(parts.scheme + "://"):
        return "must be an http:// or https:// URL"
    if "{" in parts.netloc or "}" in parts.netloc:
        return "macros are allowed only in the path, query and fragment, not in the host"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    host = parts.hostname or ""
    if not host:
        return "must name a host"
    if not host.isascii():
        return "host must be ASCII (give an international name in its xn-- form)"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if parts.netloc.startswith("[") or not _HOST_NAME.fullmatch(host):
            return f"host {host!r} is not a valid host name"
    return None


def _http_url(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an http:// or https:// URL")
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _not_negative(value: Decimal | None) -> Decimal | None:
    if value is not None and value < 0:
        raise ValueError("must be zero or more")
    return value


OptionalMoney = Annotated[Decimal | None, BeforeValidator(_money_or_none)]
Currency = Annotated[str, BeforeValidator(parse_currency)]
Url = Annotated[str, BeforeValidator(_http_url)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TrafficSourceIn(Body):
    name: Name
    postback_url: Url | None = None
    external_id_param: ParamName = "external_id"
    cost_param: ParamName = "cost"
    # Highest per-click cost accepted from click URLs of `auto` campaigns; above it, no cost.
    max_click_cost: Annotated[Decimal, BeforeValidator(parse_money), Field(ge=0)] = Decimal("100")


def _status_map(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    mapped = {}
    for raw, status in value.items():
        if not isinstance(status, str) or status.strip().lower() not in STATUS_WORDS:
            raise ValueError(f"{raw!r} maps to {status!r}; use one of {', '.join(STATUS_WORDS)}")
        mapped[str(raw).strip().lower()] = status.strip().lower()
    return mapped


def _cidr(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from None


class AffiliateNetworkIn(Body):
    name: Name
    status_map: Annotated[dict[str, str], BeforeValidator(_status_map)] = {}
    duplicate_policy: Literal["txid", "ignore", "accept"] = "txid"
    require_token: bool = True
    ip_allowlist: list[Annotated[str, BeforeValidator(_cidr)]] = Field(default=[], max_length=200)
    signing_secret: str | None = Field(default=None, min_length=16, max_length=200)


class RotateTokenIn(Body):
    """How long the replaced postback token keeps working: up to 30 days."""

    grace_seconds: int = Field(default=0, ge=0, le=30 * 86400)


class OfferIn(Body):
    name: Name
    url: Url
    affiliate_network_id: int
    payout: Annotated[OptionalMoney, AfterValidator(_not_negative)] = None
    currency: Currency = "USD"


class CampaignOfferIn(Body):
    offer_id: int
    weight: int = Field(default=100, ge=0, le=1_000_000)


class CampaignIn(Body):
    name: Name
    traffic_source_id: int
    offers: list[CampaignOfferIn] = Field(min_length=1, max_length=100)
    cost_model: Literal["none", "cpc", "auto"] = "none"
    cost_value: OptionalMoney = None
    attribution_window_days: int = Field(default=30, ge=1, le=365)
    report_currency: Currency = "USD"

    @model_validator(mode="after")
    def check_consistency(self) -> "CampaignIn":
        if self.cost_model == "cpc" and (self.cost_value is None or self.cost_value < 0):
            raise ValueError("cost_model 'cpc' needs a cost_value of zero or more")
        ids = [o.offer_id for o in self.offers]
        if len(set(ids)) != len(ids):
            raise ValueError("an offer may appear only once in a campaign")
        if not any(o.weight > 0 for o in self.offers):
            raise ValueError("at least one offer needs a weight above zero")
        return self


class CurrencyRateIn(Body):
    """One unit of `currency` is worth `rate` USD from `valid_from` on."""

    currency: Currency
    rate: Annotated[Decimal, BeforeValidator(lambda v: parse_money(v, 12))]
    valid_from: date

    @model_validator(mode="after")
    def check_rate(self) -> "CurrencyRateIn":
        if self.rate <= 0:
            raise ValueError("rate must be above zero")
        return self
