"""Request bodies of the admin API, and value types shared with the postback."""

import functools
import ipaddress
import zoneinfo
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tracker.domain.lifecycle import STATUSES, SYNONYMS
from tracker.domain.money import parse_currency, parse_money
from tracker.domain.rules import MAX_VALUES
from tracker.domain.urls import url_problem

STATUS_WORDS = (*STATUSES, *SYNONYMS)


def _money_or_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return parse_money(value)


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


# What the API document says an amount is: a decimal string (an integer is taken too).
MONEY_SCHEMA = {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$", "examples": ["3.00"]}
MoneyText = WithJsonSchema(MONEY_SCHEMA)
OptionalMoney = Annotated[
    Decimal | None,
    BeforeValidator(_money_or_none),
    WithJsonSchema({"anyOf": [MONEY_SCHEMA, {"type": "null"}]}),
]
Currency = Annotated[
    str,
    BeforeValidator(parse_currency),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z]{3}$", "examples": ["USD"]}),
]
Url = Annotated[
    str,
    BeforeValidator(_http_url),
    WithJsonSchema({"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$"}),
]
Name = Annotated[str, Field(min_length=1, max_length=200)]
ParamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _statuses(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    words = []
    for status in value:
        if not isinstance(status, str) or status.strip().lower() not in STATUSES:
            raise ValueError(f"{status!r} is not a status; use {', '.join(STATUSES)}")
        if status.strip().lower() not in words:
            words.append(status.strip().lower())
    return words


def _outgoing_status_map(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    mapped = {}
    for status, word in value.items():
        if status.strip().lower() not in STATUSES:
            raise ValueError(f"{status!r} is not a status; use {', '.join(STATUSES)}")
        if not isinstance(word, str | int) or isinstance(word, bool) or len(str(word)) > 64:
            raise ValueError(f"{status!r} must map to a word or number of at most 64 characters")
        mapped[status.strip().lower()] = str(word)
    return mapped


def _share(value: Decimal | None) -> Decimal | None:
    if value is not None and not 0 < value <= 100:
        raise ValueError("must be more than 0 and at most 100 (percent)")
    if value is not None and value != round(value, 4):
        raise ValueError("takes at most 4 decimal places")
    return value


PostbackTemplate = Annotated[str, Field(min_length=1, max_length=16000)]


class TrafficSourceIn(Body):
    name: Name
    external_id_param: ParamName = "external_id"
    cost_param: ParamName = "cost"
    # Highest per-click cost accepted from click URLs of `auto` campaigns; above it, no cost.
    max_click_cost: Annotated[Decimal, BeforeValidator(parse_money), Field(ge=0), MoneyText] = (
        Decimal("100")
    )
    # Conversions sent back: a URL template (GET, or POST with a body template), or an ad
    # platform's conversion API with its credentials. Checked as a whole by the view.
    postback_preset: Literal["template", "meta", "tiktok", "google_ads"] = "template"
    postback_url: Url | None = None
    postback_method: Literal["GET", "POST"] = "GET"
    postback_body: PostbackTemplate | None = None
    postback_body_format: Literal["json", "form"] = "json"
    postback_statuses: Annotated[list[str], BeforeValidator(_statuses)] = ["approved"]
    postback_status_map: Annotated[dict[str, str], BeforeValidator(_outgoing_status_map)] = {}
    postback_share: Annotated[OptionalMoney, AfterValidator(_share)] = None
    postback_credentials: dict[str, str] = Field(default={}, max_length=10)
    postback_signing_secret: Annotated[str, Field(min_length=16, max_length=256)] | None = None


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
    # The conversion pixel carries no secret: off unless the network is to use it.
    allow_pixel: bool = False


class RotateTokenIn(Body):
    """How long the replaced postback token keeps working: up to 30 days."""

    grace_seconds: int = Field(default=0, ge=0, le=30 * 86400)


class OfferIn(Body):
    name: Name
    url: Url
    affiliate_network_id: int
    payout: Annotated[OptionalMoney, AfterValidator(_not_negative)] = None
    currency: Currency = "USD"


class LanderIn(Body):
    name: Name
    url: Url


Weight = Annotated[int, Field(ge=0, le=1_000_000)]


class CampaignOfferIn(Body):
    offer_id: int
    weight: Weight = 100


class CampaignLanderIn(Body):
    lander_id: int
    weight: Weight = 100


def _offer_weights(offers: list[CampaignOfferIn]) -> list[CampaignOfferIn]:
    ids = [o.offer_id for o in offers]
    if len(set(ids)) != len(ids):
        raise ValueError("an offer may appear only once in a path")
    if not any(o.weight > 0 for o in offers):
        raise ValueError("at least one offer needs a weight above zero")
    return offers


def _lander_weights(landers: list[CampaignLanderIn]) -> list[CampaignLanderIn]:
    ids = [lander.lander_id for lander in landers]
    if len(set(ids)) != len(ids):
        raise ValueError("a lander may appear only once in a path")
    return landers


PathOffers = Annotated[
    list[CampaignOfferIn], Field(min_length=1, max_length=100), AfterValidator(_offer_weights)
]
# No landers (or none with a weight above zero): the click goes straight to the offer.
PathLanders = Annotated[
    list[CampaignLanderIn], Field(max_length=100), AfterValidator(_lander_weights)
]


class ConditionIn(Body):
    """One condition of a rule; what the field, op and values mean is checked when the
    campaign is saved, by compiling the rule (tracker.domain.rules)."""

    field: str = Field(max_length=80)
    op: str = Field(max_length=20)
    values: list[str | int | bool] = Field(min_length=1, max_length=MAX_VALUES)


class RuleIn(Body):
    name: str = Field(default="", max_length=200)
    conditions: list[ConditionIn] = Field(min_length=1, max_length=50)
    offers: PathOffers
    landers: PathLanders = []


@functools.cache
def _time_zones() -> dict[str, str]:
    """IANA time zone names by their lower-case form."""
    return {name.lower(): name for name in zoneinfo.available_timezones() | {"UTC"}}


def time_zone_name(value: Any) -> Any:
    """The IANA name (`Europe/Berlin`), in its own spelling whatever the case given."""
    if not isinstance(value, str):
        return value
    name = _time_zones().get(value.strip().lower())
    if name is None:
        raise ValueError(f"{value!r} is not an IANA time zone name (like 'Europe/Berlin')")
    return name


# cost_model: what `cost_value` means. cpc: per click; cpm: per 1000 clicks; cpa: per
# approved conversion; revshare: percent of revenue; auto: from the click URL; none.
CostModel = Literal["none", "cpc", "auto", "cpm", "cpa", "revshare"]


class CampaignIn(Body):
    name: Name
    traffic_source_id: int
    offers: PathOffers
    landers: PathLanders = []
    rules: list[RuleIn] = Field(default=[], max_length=100)
    cost_model: CostModel = "none"
    cost_value: OptionalMoney = Field(default=None, validate_default=True)
    attribution_window_days: int = Field(default=30, ge=1, le=365)
    report_currency: Currency = "USD"
    bot_action: Literal["offer", "url", "404"] = "offer"
    bot_url: Url | None = Field(default=None, validate_default=True)
    unique_window_hours: int = Field(default=24, ge=1, le=8760)
    timezone: Annotated[str, BeforeValidator(time_zone_name)] = "UTC"
    # The campaign's own outgoing postback template, in place of its traffic source's.
    postback_url: Url | None = None
    postback_method: Literal["GET", "POST"] | None = None
    postback_body: PostbackTemplate | None = None
    postback_body_format: Literal["json", "form"] | None = None

    @field_validator("cost_value")
    @classmethod
    def check_cost_value(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        model = info.data.get("cost_model")
        if model in ("cpc", "cpm", "cpa") and (value is None or value < 0):
            raise ValueError(f"cost_model {model!r} needs a cost_value of zero or more")
        if model == "revshare" and (value is None or not 0 <= value <= 100):
            raise ValueError("cost_model 'revshare' needs a cost_value from 0 to 100 (percent)")
        if model == "cpm" and value is not None and value != round(value, 3):
            # A click's cost is stored to six places: a thousandth of this must fit exactly.
            raise ValueError("cost_model 'cpm' takes a cost_value with at most 3 decimal places")
        return value

    @field_validator("bot_url")
    @classmethod
    def check_bot_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("bot_action") == "url":
            raise ValueError("bot_action 'url' needs a bot_url")
        return value


class CurrencyRateIn(Body):
    """One unit of `currency` is worth `rate` USD from `valid_from` on."""

    currency: Currency
    rate: Annotated[Decimal, BeforeValidator(lambda v: parse_money(v, 12)), MoneyText]
    valid_from: date

    @model_validator(mode="after")
    def check_rate(self) -> "CurrencyRateIn":
        if self.rate <= 0:
            raise ValueError("rate must be above zero")
        return self
