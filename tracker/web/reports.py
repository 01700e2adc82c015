"""ROI reports: `GET /api/reports`, as JSON or CSV."""

import csv
import functools
import io
import re
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from decimal import localcontext
from typing import Any, Literal
from zoneinfo import ZoneInfo

import asyncpg
from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, Field

from tracker.domain.reports import (
    DIMENSIONS,
    FILTERABLE,
    ID_DIMENSIONS,
    MAX_DIMENSIONS,
    METRICS,
    TEXT_DIMENSIONS,
    ReportSpec,
    derive,
    dimension_column,
    filter_value,
)
from tracker.domain.validation import INT64_MAX
from tracker.store.replica import REPLICA_UNAVAILABLE, Freshness, ReportSource
from tracker.store.reports import fetch_report
from tracker.web.appkeys import REPORT_SOURCE, SETTINGS
from tracker.web.errors import ApiError, json_response
from tracker.web.responses import report_response

MAX_LIMIT = 10000
MAX_EVENTS = 10
MAX_FILTER_VALUES = 500
# Enough for any sum of NUMERIC amounts below 10^12 with 14 decimal places.
EXACT_DIGITS = 60
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
_DATE = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}")
_FILTER = re.compile(r"(filter|exclude)\[([a-z0-9_]+)\]")
_KNOWN = frozenset(
    {"from", "to", "tz", "group_by", "campaign_id", "conversion_time", "events", "sort",
     "limit", "offset", "format"}
)  # fmt: skip


class _Problems:
    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.details.append({"field": field, "message": message})


@functools.cache
def _zones() -> frozenset[str]:
    """IANA zone names (not `localtime` or a file path), the same in Python and Postgres."""
    not_zones = {"localtime", "posixrules", "Factory"}
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in not_zones and not name.startswith(("posix/", "right/"))
    ) | {"UTC"}


def _moment(text: str, zone: ZoneInfo, end: bool) -> datetime:
    """A date (its local midnight; for `to`, the next one) or an ISO date-time (naive:
    in `zone`)."""
    text = text.strip()
    if _DATE.fullmatch(text):
        day = date.fromisoformat(text)
        if end and day == date.max:
            return _LATEST
        moment = datetime.combine(day + timedelta(days=int(end)), time(), tzinfo=zone)
    else:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a day of the ends of representable time
        return _LATEST if moment.year == date.max.year else _EARLIEST


def _words(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_report_query(query: MultiMapping[str], default_tz: str, max_days: int) -> ReportSpec:
    """A report's spec from its query string; a 400 naming every bad parameter."""
    problems = _Problems()
    first = {name: query.getone(name) for name in query if _FILTER.fullmatch(name) is None}
    for name in first:
        if name not in _KNOWN:
            problems.add(name, "unknown parameter")

    tz_name = first.get("tz", default_tz)
    zone = ZoneInfo("UTC")
    try:
        if tz_name not in _zones():
            raise zoneinfo.ZoneInfoNotFoundError
        zone = ZoneInfo(tz_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add("tz", f"{tz_name[:60]!r} is not an IANA time zone such as Europe/Berlin")

    bounds: dict[str, datetime] = {}
    for name in ("from", "to"):
        if name not in first:
            problems.add(name, "required: a date (2026-03-01) or date-time (2026-03-01T08:00)")
            continue
        try:
            bounds[name] = _moment(first[name], zone, end=name == "to")
        except (ValueError, OverflowError):
            problems.add(name, "is not a date (2026-03-01) or date-time (2026-03-01T08:00)")
    if len(bounds) == 2:
        if bounds["to"] <= bounds["from"]:
            problems.add("to", "is before `from`")
        elif bounds["to"] - bounds["from"] > timedelta(days=max_days, hours=1):  # DST
            problems.add("to", f"a report covers at most {max_days} days")

    group_by = _words(first.get("group_by", "campaign"))
    for name in group_by:
        if name not in DIMENSIONS:
            problems.add(
                "group_by", f"unknown dimension {name[:40]!r}; use {', '.join(DIMENSIONS)}"
            )
    group_by = list(dict.fromkeys(group_by))
    if len(group_by) > MAX_DIMENSIONS:
        problems.add("group_by", f"at most {MAX_DIMENSIONS} dimensions")

    filters: dict[str, tuple[Any, ...]] = {}
    excludes: dict[str, tuple[Any, ...]] = {}
    for name in dict.fromkeys(query):
        match = _FILTER.fullmatch(name)
        if match is None:
            continue
        kind, dimension = match.groups()
        if dimension not in FILTERABLE:
            problems.add(name, f"unknown field; use {', '.join(FILTERABLE)}")
            continue
        values = [v for text in query.getall(name) for v in _words(text)]
        if not values or len(values) > MAX_FILTER_VALUES:
            problems.add(name, f"give 1 to {MAX_FILTER_VALUES} values, comma-separated")
            continue
        try:
            parsed = tuple(dict.fromkeys(filter_value(dimension, v) for v in values))
        except ValueError as exc:
            problems.add(name, str(exc))
            continue
        (filters if kind == "filter" else excludes)[dimension] = parsed
    if "campaign_id" in first:
        raw = first["campaign_id"]
        if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= INT64_MAX:
            # With filter[campaign] too, both must hold.
            wanted = filters.get("campaign")
            filters["campaign"] = (int(raw),) if wanted is None or int(raw) in wanted else ()
        else:
            problems.add("campaign_id", "must be a whole number from 1 to 9223372036854775807")

    conversion_time = first.get("conversion_time", "click")
    if conversion_time not in ("click", "postback"):
        problems.add("conversion_time", "must be click or postback")

    events = tuple(dict.fromkeys(_words(first.get("events", ""))))
    if len(events) > MAX_EVENTS or any(len(e) > 64 or "\x00" in e for e in events):
        problems.add("events", f"at most {MAX_EVENTS} event names of up to 64 characters")

    sort: list[tuple[str, bool]] = []
    sortable = {*group_by, *METRICS, *(f"event:{e}" for e in events)}
    for word in _words(first.get("sort", "")):
        key = word.removeprefix("-")
        if key not in sortable:
            problems.add("sort", f"{key[:40]!r} is neither a metric nor a grouped dimension")
        else:
            sort.append((key, word.startswith("-")))

    limits = {}
    for name, default, high in (("limit", 1000, MAX_LIMIT), ("offset", 0, 10**9)):
        raw = first.get(name, str(default))
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > high:
            problems.add(name, f"a whole number from 0 to {high}")
        else:
            limits[name] = int(raw)
    if limits.get("limit") == 0:
        problems.add("limit", f"a whole number from 1 to {MAX_LIMIT}")

    if first.get("format", "json") not in ("json", "csv"):
        problems.add("format", "must be json or csv")
    if problems.details:
        raise ApiError(400, "invalid report query", problems.details)
    return ReportSpec(
        start=bounds["from"],
        end=bounds["to"],
        tz=tz_name,
        group_by=tuple(group_by),
        conversion_time=conversion_time,
        filters=filters,
        excludes=excludes,
        events=events,
        sort=tuple(sort),
        limit=limits["limit"],
        offset=limits["offset"],
    )


def _dimension_values(spec: ReportSpec, row: dict[str, Any]) -> dict[str, Any]:
    zone = ZoneInfo(spec.tz)
    item: dict[str, Any] = {}
    for name in spec.group_by:
        column = dimension_column(name)
        value = row[column]
        if name == "hour" and isinstance(value, datetime):
            value = value.astimezone(zone).isoformat(timespec="minutes")
        item[column] = value
        if name in ID_DIMENSIONS:
            item[f"{name}_name"] = row.get(f"{name}_name")
    return item


def _columns(spec: ReportSpec) -> list[str]:
    columns = []
    for name in spec.group_by:
        columns.append(dimension_column(name))
        if name in ID_DIMENSIONS:
            columns.append(f"{name}_name")
    return columns + list(METRICS) + [f"event:{e}" for e in spec.events]


class ReportsDatabaseUnavailable(ApiError):
    """The reports replica cannot answer: a 503 naming it, with a Retry-After."""

    RETRY_AFTER_SECONDS = 5

    def __init__(self, reason: str) -> None:
        super().__init__(
            503,
            "the reports database (the replica in TRACKER_REPORTS_DATABASE_URL) is "
            f"unavailable: {reason}; retry later",
        )

    def response(self) -> web.Response:
        answer = json_response({"error": self.error, "database": "replica"}, self.status)
        answer.headers["Retry-After"] = str(self.RETRY_AFTER_SECONDS)
        return answer


async def read_report(
    request: web.Request, spec: ReportSpec
) -> tuple[list[dict[str, Any]], dict[str, Any], Freshness]:
    """The report's rows and totals from the reports database, and how current they are
    (measured first: the figures are at least that fresh). A 504 past the report
    timeout; a 503 while the reports replica cannot answer. Reports do not fall back
    to the primary: the replica is there to keep their load off the primary's click
    and postback path, which an outage of the replica must not pour back onto it."""
    settings = request.config_dict[SETTINGS]
    source = request.config_dict[REPORT_SOURCE]
    try:
        # A replica that does not answer this one cheap query within TRACKER_PG_TIMEOUT
        # (TimeoutError is one of REPLICA_UNAVAILABLE) is down, not slow: 503, not 504.
        freshness = await source.freshness()
    except REPLICA_UNAVAILABLE as exc:
        raise _replica_failed(source, exc) from None
    try:
        rows, totals = await fetch_report(source.pool, spec, settings.report_timeout)
    except TimeoutError:
        raise ApiError(
            504,
            f"the report took longer than {settings.report_timeout:g} s: "
            "narrow the range, filter, or group by fewer or coarser dimensions",
        ) from None
    except REPLICA_UNAVAILABLE as exc:
        raise _replica_failed(source, exc) from None
    return rows, totals, freshness


def _replica_failed(source: ReportSource, exc: BaseException) -> BaseException:
    """What to raise for a reports database failure: the replica's is a 503 naming it;
    the primary's is answered like any other outage (the error middleware's 503)."""
    if not source.is_replica:
        return exc
    source.outage.warning("reports replica unavailable: %r", exc)
    if isinstance(exc, asyncpg.SerializationError):
        return ReportsDatabaseUnavailable(
            "it cancelled the report to apply the primary's changes "
            "(raise max_standby_streaming_delay, or set hot_standby_feedback, on the replica)"
        )
    if isinstance(exc, TimeoutError):
        return ReportsDatabaseUnavailable("no answer within TRACKER_PG_TIMEOUT")
    return ReportsDatabaseUnavailable(f"{type(exc).__name__}: {exc}"[:200])


async def report(request: web.Request) -> web.StreamResponse:
    """Clicks, visitor counters, conversions by status, revenue, cost and the ratios,
    per group (sorted and paged) and in total; and where they were read from."""
    settings = request.config_dict[SETTINGS]
    spec = parse_report_query(request.query, settings.report_timezone, settings.report_max_days)
    rows, totals, freshness = await read_report(request, spec)
    with localcontext(prec=EXACT_DIGITS):
        items = [{**_dimension_values(spec, row), **derive(row, spec.events)} for row in rows]
        total = derive(totals, spec.events)
    if request.query.get("format") == "csv":
        return await _csv(request, spec, items, freshness)
    answer = report_response(
        {
            "from": _local(spec.start, spec.tz),
            "to": _local(spec.end, spec.tz),
            "tz": spec.tz,
            "conversion_time": spec.conversion_time,
            "group_by": list(spec.group_by),
            "rows": items,
            "totals": total,
            "total_rows": totals["groups"],
            "limit": spec.limit,
            "offset": spec.offset,
            "source": freshness.as_json(),
        },
    )
    answer.headers.update(freshness_headers(freshness))
    return answer


# A cell a spreadsheet would run as a formula (a sub id such as `=HYPERLINK(…)`).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _local(moment: datetime, tz: str) -> str:
    try:
        return moment.astimezone(ZoneInfo(tz)).isoformat()
    except OverflowError:
        return moment.isoformat()


def _cell(value: Any, text: bool) -> Any:
    if value is None:
        return ""
    if text and isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return value


def freshness_headers(freshness: Freshness) -> dict[str, str]:
    """A report's source as headers (a CSV body has no place for it): X-Report-Database,
    X-Report-Lag-Seconds and X-Report-As-Of (the last two empty when unknown)."""
    lag, as_of = freshness.lag_seconds, freshness.as_of
    return {
        "X-Report-Database": freshness.database,
        "X-Report-Lag-Seconds": "" if lag is None else f"{lag:.3f}",
        "X-Report-As-Of": "" if as_of is None else as_of.isoformat(),
    }


async def _csv(
    request: web.Request, spec: ReportSpec, items: list[dict[str, Any]], freshness: Freshness
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="report.csv"',
            **freshness_headers(freshness),
        }
    )
    await response.prepare(request)
    columns = _columns(spec)
    texts = {dimension_column(n) for n in spec.group_by if n in TEXT_DIMENSIONS}
    texts |= {f"{n}_name" for n in spec.group_by if n in ID_DIMENSIONS}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for i, item in enumerate(items, start=1):
        writer.writerow([_cell(item.get(column), column in texts) for column in columns])
        if i % 500 == 0:
            await response.write(buffer.getvalue().encode())
            buffer.seek(0)
            buffer.truncate()
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


class ReportQuery(BaseModel):
    """The query of `GET /api/reports`, for the API document (parse_report_query reads
    it; a test keeps the two in step). `filter[<dimension>]` and
    `exclude[<dimension>]` take comma-separated values as well."""

    start: str = Field(alias="from", description="a date (2026-03-01) or date-time, in `tz`")
    end: str = Field(alias="to", description="a date (included) or date-time (excluded)")
    tz: str | None = Field(default=None, description="IANA zone; default TRACKER_REPORT_TIMEZONE")
    group_by: str = Field(
        default="campaign", description=f"comma-separated, of: {', '.join(DIMENSIONS)}"
    )
    campaign_id: int | None = Field(default=None, ge=1, le=INT64_MAX)
    conversion_time: Literal["click", "postback"] = "click"
    events: str | None = Field(default=None, description="comma-separated event names")
    sort: str | None = Field(
        default=None, description="comma-separated metrics or grouped dimensions; `-` descends"
    )
    limit: int = Field(default=1000, ge=1, le=MAX_LIMIT)
    offset: int = Field(default=0, ge=0, le=10**9)
    format: Literal["json", "csv"] = "json"
