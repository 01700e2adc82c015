"""The campaigns table, the drill-down and its chart, through the report API's own
query parser and query (`parse_report_query`, `fetch_report`): the same dimensions,
filters, limits and 400 messages."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from markupsafe import Markup
from multidict import MultiDict

from tracker.domain.reports import (
    COUNTERS,
    DIMENSIONS,
    FILTERABLE,
    ID_DIMENSIONS,
    MAX_DIMENSIONS,
    ReportSpec,
    derive,
    dimension_column,
)
from tracker.store import admin as sql
from tracker.store.replica import Freshness
from tracker.web.appkeys import PG_POOL, SETTINGS
from tracker.web.errors import ApiError
from tracker.web.reports import EXACT_DIGITS, _zones, parse_report_query, read_report
from tracker.web.ui.chart import Series, line_chart
from tracker.web.ui.render import render

PRESETS = {
    "today": "Today",
    "yesterday": "Yesterday",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "custom": "Custom",
}
# The table's metric columns: (report metric, heading).
COLUMNS = (
    ("clicks", "Clicks"),
    ("conversions", "Conversions"),
    ("revenue", "Revenue"),
    ("cost", "Cost"),
    ("profit", "Profit"),
    ("roi", "ROI %"),
    ("cr", "CR %"),
    ("epc", "EPC"),
)
# Coloured by sign.
SIGNED = frozenset({"profit", "roi"})
# What a drill-down level groups by when a row is opened.
NEXT_DIMENSION = ("sub1", "offer", "country", "device", "lander", "sub2")
# Hourly charts cover at most this; longer ranges are charted by day.
MAX_HOURLY = timedelta(days=7, hours=1)


@dataclass
class Range:
    """The date range a page shows: a preset or custom days, in a time zone."""

    preset: str
    start: str
    end: str
    tz: str
    problems: list[dict[str, str]] = field(default_factory=list)

    def params(self) -> dict[str, str]:
        if self.preset == "custom":
            return {"preset": "custom", "from": self.start, "to": self.end, "tz": self.tz}
        return {"preset": self.preset, "tz": self.tz}


def today_in(tz: str) -> date:
    if tz not in _zones():  # not a zone: its 400 comes from the report parser
        return datetime.now(UTC).date()
    return datetime.now(ZoneInfo(tz)).date()


def date_range(query: Any, default_tz: str) -> Range:
    """The range a page's query string asks for (default: today in the default zone)."""
    tz = str(query.get("tz") or default_tz).strip()
    preset = str(query.get("preset") or "today")
    if preset not in PRESETS:
        preset = "today"
    today = today_in(tz)
    if preset == "custom":
        start = str(query.get("from") or today.isoformat())
        end = str(query.get("to") or start)
        return Range(preset, start, end, tz)
    first, last = {
        "today": (today, today),
        "yesterday": (today - timedelta(days=1), today - timedelta(days=1)),
        "7d": (today - timedelta(days=6), today),
        "30d": (today - timedelta(days=29), today),
    }[preset]
    return Range(preset, first.isoformat(), last.isoformat(), tz)


def _zero_sums() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTERS, 0), "revenue": Decimal(0), "cost": Decimal(0)}


@dataclass
class Figures:
    """A report as the dashboard shows it: the API's rows and totals, or the problems
    the API would answer with (its 400 details, or its 503 or 504 message); and where
    the figures were read from."""

    spec: ReportSpec | None
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    problems: list[dict[str, str]]
    freshness: Freshness | None = None


async def run_report(request: web.Request, params: MultiDict[str]) -> Figures:
    """The report `params` ask for, as the API would answer it."""
    settings = request.config_dict[SETTINGS]
    try:
        spec = parse_report_query(params, settings.report_timezone, settings.report_max_days)
        rows, totals, freshness = await read_report(request, spec)
    except ApiError as exc:
        problems = exc.details or [{"field": "", "message": exc.error}]
        return Figures(None, [], derive(_zero_sums()), problems)
    with localcontext(prec=EXACT_DIGITS):
        items = [{**row, **derive(row)} for row in rows]
        total = derive(totals)
    return Figures(spec, items, total, [], freshness)


def lag_notice(request: web.Request, freshness: Freshness | None) -> str | None:
    """ "Data N s behind" when the reports replica lags more than the setting allows."""
    if freshness is None or freshness.database != "replica":
        return None
    limit = request.config_dict[SETTINGS].reports_lag_notice_seconds
    lag = freshness.lag_seconds
    if lag is None:
        return "Data read from the reports replica, which cannot tell how far behind it is"
    if lag <= limit:
        return None
    return f"Data {lag:.0f} s behind: read from the reports replica"


def _sort_links(base: str, keep: dict[str, Any], sort: str, keys: list[str]) -> dict[str, str]:
    """Per column: the URL sorting by it (descending first; again: ascending)."""
    links = {}
    for key in keys:
        wanted = key if sort == f"-{key}" else f"-{key}"
        links[key] = base + "?" + urlencode({**keep, "sort": wanted}, doseq=True)
    return links


def _sort_word(query: Any) -> str:
    return str(query.get("sort") or "-clicks")


async def campaigns_page(request: web.Request) -> web.Response:
    """Every active campaign with its figures for the range; totals; sortable columns."""
    settings = request.config_dict[SETTINGS]
    span = date_range(request.query, settings.report_timezone)
    sort = _sort_word(request.query)
    params = MultiDict({"from": span.start, "to": span.end, "tz": span.tz, "group_by": "campaign"})
    params["sort"] = sort
    figures = await run_report(request, params)
    rows, totals, problems = figures.rows, figures.totals, figures.problems
    async with request.config_dict[PG_POOL].acquire() as conn:
        campaigns = await sql.list_rows(conn, "campaigns", False, 1000, 0)
    seen = {row["campaign_id"] for row in rows}
    zero = derive(_zero_sums())
    # Campaigns without traffic in the range are listed too, after the others.
    rows += [
        {"campaign_id": c["id"], "campaign_name": c["name"], **zero}
        for c in campaigns
        if c["id"] not in seen
    ]
    keys = ["campaign", *(key for key, _ in COLUMNS)]
    return render(
        request,
        "campaigns.html",
        {
            "title": "Campaigns",
            "span": span,
            "presets": PRESETS,
            "columns": COLUMNS,
            "signed_columns": SIGNED,
            "rows": rows,
            "totals": totals,
            "problems": problems,
            "lag_notice": lag_notice(request, figures.freshness),
            "sort": sort,
            "sort_links": _sort_links("/ui/", span.params(), sort, keys),
            "range_query": urlencode(span.params()),
        },
    )


def _levels(query: Any) -> tuple[list[str], list[str]]:
    by = [d for d in query.getall("by", []) if d][:MAX_DIMENSIONS] or ["sub1"]
    values = query.getall("v", [])[: len(by) - 1]
    by = by[: len(values) + 1]
    return by, values


def _drill_url(campaign_id: int, keep: dict[str, str], by: list[str], values: list[str]) -> str:
    query = [*keep.items(), *(("by", d) for d in by), *(("v", v) for v in values)]
    return f"/ui/campaigns/{campaign_id}?" + urlencode(query)


def _label(row: dict[str, Any], dimension: str, tz: str) -> str:
    if dimension in ID_DIMENSIONS:
        name = row.get(f"{dimension}_name")
        value = row.get(dimension_column(dimension))
        return f"{name} (#{value})" if name else ("—" if value is None else f"#{value}")
    value = row.get(dimension)
    if value is None:
        return "(none)"
    if isinstance(value, datetime):
        return value.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _chart_points(
    spec: ReportSpec, rows: list[dict[str, Any]], interval: str
) -> tuple[list[str], list[Any], dict[Any, dict[str, Any]]]:
    """Every bucket of the range (empty ones too) and the rows by bucket."""
    zone = ZoneInfo(spec.tz)
    by_bucket: dict[Any, dict[str, Any]] = {}
    for row in rows:
        value = row[interval]
        key = value.astimezone(UTC) if isinstance(value, datetime) else value
        by_bucket[key] = row
    labels: list[str] = []
    buckets: list[Any] = []
    if interval == "hour":
        moment = spec.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        while moment < spec.end:
            buckets.append(moment)
            labels.append(moment.astimezone(zone).strftime("%m-%d %H:00"))
            moment += timedelta(hours=1)
    else:
        day = spec.start.astimezone(zone).date()
        last = (spec.end - timedelta(microseconds=1)).astimezone(zone).date()
        while day <= last:
            buckets.append(day)
            labels.append(day.isoformat())
            day += timedelta(days=1)
    return labels, buckets, by_bucket


def build_charts(spec: ReportSpec, rows: list[dict[str, Any]], interval: str) -> list[Markup]:
    labels, buckets, by_bucket = _chart_points(spec, rows, interval)
    zero = derive(_zero_sums())
    points = [by_bucket.get(b, zero) for b in buckets]
    counts = [
        Series("Clicks", [int(p["clicks"]) for p in points], "s-clicks"),
        Series("Conversions", [int(p["conversions"]) for p in points], "s-conversions"),
    ]
    money = [
        Series("Revenue", [Decimal(p["revenue"]) for p in points], "s-revenue"),
        Series("Profit", [Decimal(p["profit"]) for p in points], "s-profit"),
    ]
    return [
        Markup(line_chart("Clicks and conversions", labels, counts)),  # escaped by line_chart
        Markup(line_chart("Revenue and profit", labels, money)),
    ]


async def drilldown_page(request: web.Request) -> web.Response:
    """One campaign grouped by a dimension; a row opens the next level (up to the
    report's three dimensions); breadcrumbs lead back; a chart of the range."""
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise web.HTTPNotFound()
    campaign_id = int(raw)
    async with request.config_dict[PG_POOL].acquire() as conn:
        campaign = await sql.get_row(conn, "campaigns", campaign_id)
    if campaign is None:
        raise web.HTTPNotFound()
    settings = request.config_dict[SETTINGS]
    span = date_range(request.query, settings.report_timezone)
    by, values = _levels(request.query)
    current = by[-1]
    sort = _sort_word(request.query)
    base = {"from": span.start, "to": span.end, "tz": span.tz, "campaign_id": str(campaign_id)}
    params = MultiDict(base)
    params["group_by"] = current
    params["sort"] = sort
    for dimension, value in zip(by, values, strict=False):
        params[f"filter[{dimension}]"] = value
    figures = await run_report(request, params)
    spec, rows, totals, problems = figures.spec, figures.rows, figures.totals, figures.problems

    keep = span.params()
    crumbs = [
        {"label": "Campaigns", "url": "/ui/?" + urlencode(keep)},
        {"label": campaign["name"], "url": _drill_url(campaign_id, keep, by[:1], [])},
    ]
    for i, value in enumerate(values):
        crumbs.append(
            {
                "label": f"{by[i]} = {value}",
                "url": _drill_url(campaign_id, keep, by[: i + 2], values[: i + 1]),
            }
        )
    deeper = len(by) < MAX_DIMENSIONS and current in FILTERABLE
    next_dimension = next((d for d in NEXT_DIMENSION if d not in by), "country")
    items = []
    for row in rows:
        raw_value = row.get(dimension_column(current))
        open_url = None
        if deeper and raw_value is not None:
            open_url = _drill_url(
                campaign_id, keep, [*by, next_dimension], [*values, str(raw_value)]
            )
        items.append({**row, "label": _label(row, current, span.tz), "open_url": open_url})

    interval = request.query.get("interval", "")
    if interval not in ("hour", "day"):
        interval = "hour" if span.start == span.end else "day"
    if interval == "hour" and spec is not None and spec.end - spec.start > MAX_HOURLY:
        interval = "day"  # a point an hour over weeks is more noise than picture
    charts: list[Markup] = []
    if spec is not None:
        chart_params = MultiDict(base)
        chart_params["group_by"] = interval
        for dimension, value in zip(by, values, strict=False):
            chart_params[f"filter[{dimension}]"] = value
        chart = await run_report(request, chart_params)
        problems += chart.problems
        if chart.spec is not None:
            charts = build_charts(chart.spec, chart.rows, interval)

    here = [*keep.items(), *(("by", d) for d in by), *(("v", v) for v in values)]
    sort_keep: dict[str, Any] = {**keep, "by": by, "v": values}
    return render(
        request,
        "drilldown.html",
        {
            "title": f"Campaign {campaign['name']}",
            "campaign": campaign,
            "span": span,
            "presets": PRESETS,
            "columns": COLUMNS,
            "signed_columns": SIGNED,
            "rows": items,
            "totals": totals,
            "problems": problems,
            "lag_notice": lag_notice(request, figures.freshness),
            "crumbs": crumbs,
            "current": current,
            "by": by,
            "values": values,
            "dimensions": [d for d in DIMENSIONS if d != "campaign"],
            "interval": interval,
            "sort": sort,
            "charts": charts,
            "here_query": urlencode(here),
            "sort_links": _sort_links(
                f"/ui/campaigns/{campaign_id}",
                sort_keep,
                sort,
                [current, *(key for key, _ in COLUMNS)],
            ),
        },
    )
