"""Response bodies of the API as pydantic models.

The handlers build their answers through these models (`model_response`), and the API
document takes its response schemas from them: a field answered but not modelled fails
(`extra="forbid"`), so the document cannot drift from what is sent.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, create_model

from tracker.domain.money import format_money
from tracker.domain.reports import (
    COUNTERS,
    DIMENSIONS,
    ID_DIMENSIONS,
    RATIOS,
    SUMS,
    dimension_column,
)
from tracker.web.errors import json_response
from tracker.web.schemas import RuleIn

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
# Money leaves as a decimal string with at least two places ("3.00", "0.125").
Money = Annotated[
    Decimal,
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN, "examples": ["3.00"]}),
]
DecimalText = Annotated[str, Field(pattern=DECIMAL_PATTERN)]


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


T = TypeVar("T")


def shaped(model: type[BaseModel], data: Any) -> dict[str, Any]:
    """`data` shaped by `model`: validated (a field the model lacks fails), money as
    decimal strings; fields the data does not give stay out."""
    return model.model_validate(data).model_dump(by_alias=True, exclude_unset=True)


def model_response(model: type[BaseModel], data: Any, status: int = 200) -> web.Response:
    """`data` shaped by `model`, as JSON."""
    return json_response(shaped(model, data), status)


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error: what is wrong, and for bad input which field and why. Some answers
    add more (a postback's `result` and `receipt_id`; an upload's applied rows)."""

    model_config = ConfigDict(extra="allow")

    error: str
    details: list[FieldProblem] | None = None


class Page(Out, Generic[T]):
    items: list[T]
    limit: int
    offset: int


class Items(Out, Generic[T]):
    items: list[T]


class Timestamps(Out):
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


class TrafficSourceOut(Timestamps):
    id: int
    name: str
    external_id_param: str
    cost_param: str
    max_click_cost: Money
    postback_preset: str
    postback_url: str | None
    postback_method: str
    postback_body: str | None
    postback_body_format: str
    postback_statuses: list[str]
    postback_status_map: dict[str, str]
    postback_share: Money | None
    postback_credentials: dict[str, str] = Field(description="masked: `…` and the last characters")
    postback_signing_secret: str | None = Field(description="masked like the credentials")


class AffiliateNetworkOut(Timestamps):
    id: int
    name: str
    postback_token: str
    previous_postback_token: str | None
    previous_token_expires_at: datetime | None
    postback_url: str = Field(description="the URL template to give the network")
    status_map: dict[str, str]
    duplicate_policy: str
    require_token: bool
    ip_allowlist: list[str]
    signing_secret: str | None
    allow_pixel: bool


class OfferOut(Timestamps):
    id: int
    name: str
    url: str
    affiliate_network_id: int
    payout: Money | None
    currency: str


class LanderOut(Timestamps):
    id: int
    name: str
    url: str


class CampaignOfferOut(Out):
    offer_id: int
    weight: int


class CampaignLanderOut(Out):
    lander_id: int
    weight: int


class CampaignOut(Timestamps):
    id: int
    key: str
    click_url: str
    name: str
    traffic_source_id: int
    offers: list[CampaignOfferOut]
    landers: list[CampaignLanderOut]
    rules: list[RuleIn]
    cost_model: str
    cost_value: Money | None
    attribution_window_days: int
    report_currency: str
    bot_action: str
    bot_url: str | None
    unique_window_hours: int
    timezone: str
    postback_url: str | None
    postback_method: str | None
    postback_body: str | None
    postback_body_format: str | None


class CostOut(Out):
    campaign_id: int
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    cost: Money
    clicks: int = Field(description="the stored clicks the cost is spread over")
    filter: dict[str, str | int]
    cost_update_id: int


class CurrencyRateOut(Out):
    id: int
    currency: str
    rate: DecimalText = Field(description="USD for one unit of the currency")
    valid_from: date
    created_at: datetime


class CurrencyRateSetOut(CurrencyRateOut):
    converted: int = Field(description="conversions waiting for this rate, now converted")


class PostbackLogOut(Out):
    id: int
    receipt_id: str
    received_at: datetime
    network_id: int | None
    click_id: str | None
    result: str
    reason: str | None
    conversion_id: int | None
    client_ip: str | None
    method: str
    source: str
    params: dict[str, str] = Field(description="as received; a token is shown as ***")
    queued: bool
    truncated: bool
    rematched_at: datetime | None


class DeliveryAttemptOut(Out):
    attempted_at: str
    status_code: int | None
    latency_ms: int | None
    response: str | None
    error: str | None


class DeliveryOut(Out):
    id: int
    conversion_id: int
    traffic_source_id: int | None
    campaign_id: int | None
    status: str
    payout: DecimalText | None
    currency: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None
    last_error: str | None
    attempts_log: list[DeliveryAttemptOut]


class DeliveryRetryOut(Out):
    id: int
    state: str


class DeliveryReplayOut(Out):
    replayed: int = Field(description="dead deliveries sent again")


class UploadRowOut(Out):
    row: int = Field(description="line of the file")
    clickid: str | None
    txid: str | None
    result: str
    conversion_id: int | None
    error: str | None


class UploadOut(Out):
    rows: list[UploadRowOut]
    summary: dict[str, int] = Field(description="rows by result")


class HealthOut(Out):
    status: str


class CheckOut(Out):
    ok: bool
    ms: float
    lag_seconds: float | None = None
    error: str | None = None
    required: bool | None = Field(
        default=None, description="false: a failure is shown but leaves the process ready"
    )


class ReadyOut(Out):
    status: str = Field(description="ready, or not ready")
    error: str | None = Field(default=None, description="every failed check (503 only)")
    checks: dict[str, CheckOut]


class PostbackOut(Out):
    """A postback's answer: its result, and the conversion or, while PostgreSQL is
    unavailable, the receipt under which it waits (`queued`). Documented only: the
    postback path builds its answer without a model, and the schemathesis run holds
    it to this shape."""

    result: str
    conversion_id: int | None = None
    receipt_id: str | None = None


class PostbackRefusalOut(Out):
    """A postback refused: why, and its result (invalid, rejected-auth, unmatched);
    a body that cannot be read at all has no result."""

    error: str
    result: str | None = None
    details: list[FieldProblem] | None = None


def _dimension_type(name: str) -> Any:
    if name in ID_DIMENSIONS or name in ("asn", "weekday"):
        return int | None
    if name == "is_unique":
        return bool | None
    if name in ("day", "week"):
        return date | None
    return str | None  # text dimensions, hour (ISO date-time) and month (YYYY-MM)


def _report_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in DIMENSIONS:
        fields[dimension_column(name)] = (_dimension_type(name), None)
        if name in ID_DIMENSIONS:
            fields[f"{name}_name"] = (str | None, None)
    return fields


_METRIC_FIELDS: dict[str, Any] = {
    **{name: (int, ...) for name in COUNTERS},
    **{name: (DecimalText, ...) for name in SUMS},
    **{name: (DecimalText | None, ...) for name in RATIOS},
}
_EVENTS = ConfigDict(
    extra="allow",
    json_schema_extra={
        "patternProperties": {"^event:": {"type": "integer"}},
        "additionalProperties": False,
    },
)

# A total; its events are `event:<name>` counts. Built from the domain's metric names.
ReportTotals: type[BaseModel] = create_model("ReportTotals", __config__=_EVENTS, **_METRIC_FIELDS)
# A row: the grouped dimensions (an id dimension with its name), then the metrics.
ReportRow: type[BaseModel] = create_model(
    "ReportRow", __config__=_EVENTS, **_report_fields(), **_METRIC_FIELDS
)


def report_response(body: dict[str, Any]) -> web.Response:
    """A report, shaped by ReportOut. Every row is built by the same code for one spec,
    so the first stands for the shape of all: checking 10,000 rows would add a
    noticeable fraction of a second to a large report."""
    rows = body["rows"]
    checked = shaped(ReportOut, {**body, "rows": rows[:1]})
    checked["rows"] = rows
    return json_response(checked)


class ReportSourceOut(Out):
    """Where a report's figures come from, and how current they are."""

    database: Literal["replica", "primary"] = Field(
        description="replica when TRACKER_REPORTS_DATABASE_URL is set, else primary"
    )
    lag_seconds: float | None = Field(
        description="seconds the replica is behind the primary (0: caught up); "
        "null when it cannot tell (nothing replayed since it started, or not a standby)"
    )
    as_of: datetime | None = Field(
        description="the figures are complete up to this moment (null when unknown)"
    )


class ReportOut(Out):
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    tz: str
    conversion_time: str
    group_by: list[str]
    rows: list[ReportRow]
    totals: ReportTotals
    total_rows: int
    limit: int
    offset: int
    source: ReportSourceOut
