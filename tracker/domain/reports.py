"""What a report may ask for: dimensions, filters, metrics and their formulas.

Pure: the store turns a `ReportSpec` into SQL, the web layer turns a query string
into one. Counters and money sums come from the store; every ratio is derived here,
exactly, from those sums.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from heapq import heappop, heappush
from typing import Any

from tracker.domain.money import format_money

MAX_DIMENSIONS = 3

# Dimensions whose value is a row id, shown with the row's name.
ID_DIMENSIONS = ("campaign", "offer", "lander", "traffic_source", "affiliate_network")
TEXT_DIMENSIONS = (
    *(f"sub{i}" for i in range(1, 11)),
    "external_id",
    "country",
    "region",
    "city",
    "device",
    "os",
    "browser",
    "language",
)
TIME_DIMENSIONS = ("hour", "day", "week", "month", "weekday")
DIMENSIONS = (*ID_DIMENSIONS, *TEXT_DIMENSIONS, "asn", "is_unique", *TIME_DIMENSIONS)
# Dimensions a filter or exclude may name (time is chosen with from, to and tz).
FILTERABLE = tuple(d for d in DIMENSIONS if d not in TIME_DIMENSIONS)

# Summed by the store for each group (and the totals).
COUNTERS = (
    "clicks",
    "unique_clicks",
    "bots",
    "lp_views",
    "lp_clicks",
    "conversions",
    "leads",
    "pending",
    "rejected",
    "chargebacks",
    "unconverted",
)
SUMS = ("revenue", "cost")
RATIOS = ("profit", "roi", "cr", "epc", "cpc", "cpa", "lp_ctr")
METRICS = (*COUNTERS, *SUMS, *RATIOS)

_HUNDRED = Decimal(100)
_RATIO = Decimal("0.0001")
_PERCENT = Decimal("0.01")


def dimension_column(name: str) -> str:
    """The key a dimension has in a report row: `campaign_id` for an id dimension."""
    return f"{name}_id" if name in ID_DIMENSIONS else name


@dataclass(frozen=True, slots=True)
class ReportSpec:
    """One report. `start` and `end` are instants (`end` excluded); `tz` buckets time
    dimensions; filters and excludes hold values already checked for their dimension."""

    start: datetime
    end: datetime
    tz: str
    group_by: tuple[str, ...]
    conversion_time: str = "click"  # or "postback"
    filters: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    excludes: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()  # (metric or dimension, descending)
    limit: int = 1000
    offset: int = 0


# (grain: "day", "week" or "month", first day, +1 to add the block or -1 to take it away)
Block = tuple[str, date, int]
GRAINS = ("day", "week", "month")
# Rows a block of each grain holds, relative to a day's, when the tables say nothing (no
# statistics yet): a week or a month of sparse keys holds more rows than a day, of dense
# keys (every key every day) as many.
BLOCK_ROWS = {"day": 1.0, "week": 3.0, "month": 8.0}
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)
_MONTH_REACH = timedelta(days=31)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _previous_month(day: date) -> date:
    return date(day.year - (day.month == 1), (day.month - 2) % 12 + 1, 1)


def day_blocks(first: date, end: date, rows: Mapping[str, float] = BLOCK_ROWS) -> list[Block]:
    """The day, week (from Monday) and calendar month blocks whose signed sum covers the
    days from `first` up to `end` (excluded) and that read the fewest rows, `rows` giving
    a block's rows by grain (fewest blocks among equals): a week or a month may be added
    and some of its days (or weeks) taken away. Counters are sums, so any such cover
    gives the same totals as the days themselves. A grain missing from `rows` is not used."""
    if end <= first:
        return []
    low, high = first - _MONTH_REACH, end + _MONTH_REACH
    # Cheapest paths over day boundaries (Dijkstra): each step adds a block (moving
    # forward) or takes one away (moving back); a path from `first` to `end` is a cover.
    best: dict[date, tuple[float, int]] = {first: (0.0, 0)}
    came_from: dict[date, tuple[date, Block]] = {}
    queue: list[tuple[float, int, date]] = [(0.0, 0, first)]
    done: set[date] = set()
    while queue:
        cost, count, at = heappop(queue)
        if at in done:
            continue
        done.add(at)
        if at == end:
            break
        steps = [(at + _DAY, ("day", at, 1)), (at - _DAY, ("day", at - _DAY, -1))]
        if "week" in rows and at.isoweekday() == 1:
            steps += [(at + _WEEK, ("week", at, 1)), (at - _WEEK, ("week", at - _WEEK, -1))]
        if "month" in rows and at.day == 1:
            back = _previous_month(at)
            steps += [(_next_month(at), ("month", at, 1)), (back, ("month", back, -1))]
        for step, block in steps:
            if not low <= step <= high or step in done:
                continue
            reached = (cost + rows[block[0]], count + 1)
            if step not in best or reached < best[step]:
                best[step] = reached
                came_from[step] = (at, block)
                heappush(queue, (*reached, step))
    blocks = []
    at = end
    while at != first:
        at, block = came_from[at]
        blocks.append(block)
    return sorted(blocks, key=lambda b: (b[1], GRAINS.index(b[0])))


def filter_value(dimension: str, text: str) -> Any:
    """A filter value read for its dimension; ValueError says what is wrong."""
    if dimension in ID_DIMENSIONS or dimension == "asn":
        raw = text.strip().upper().removeprefix("AS") if dimension == "asn" else text.strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise ValueError(f"{text!r} is not a number")
        return int(raw)
    if dimension == "is_unique":
        word = text.strip().lower()
        if word in ("1", "true", "yes"):
            return True
        if word in ("0", "false", "no"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    if dimension == "country":
        code = text.strip().upper()
        if len(code) != 2 or not code.isascii() or not code.isalpha():
            raise ValueError(f"{text!r} is not a two-letter country code")
        return code
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    return text


def _ratio(numerator: Decimal, denominator: Decimal | int, places: Decimal) -> str | None:
    if not denominator:
        return None
    return str((numerator / Decimal(denominator)).quantize(places, ROUND_HALF_UP))


def derive(sums: dict[str, Any], events: tuple[str, ...] = ()) -> dict[str, Any]:
    """A report row's metrics from its counters and money sums.

    roi, cr and lp_ctr are percentages; epc, cpc and cpa money per click or
    conversion. A ratio whose denominator is zero is null, not a made-up zero."""
    revenue: Decimal = sums["revenue"]
    cost: Decimal = sums["cost"]
    clicks: int = sums["clicks"]
    conversions: int = sums["conversions"]
    profit = revenue - cost
    metrics: dict[str, Any] = {name: int(sums[name]) for name in COUNTERS}
    metrics.update(
        revenue=format_money(revenue),
        cost=format_money(cost),
        profit=format_money(profit),
        roi=_ratio(profit * _HUNDRED, cost, _PERCENT),
        cr=_ratio(Decimal(conversions) * _HUNDRED, clicks, _PERCENT),
        epc=_ratio(revenue, clicks, _RATIO),
        cpc=_ratio(cost, clicks, _RATIO),
        cpa=_ratio(cost, conversions, _RATIO),
        lp_ctr=_ratio(Decimal(sums["lp_clicks"]) * _HUNDRED, sums["lp_views"], _PERCENT),
    )
    for i, name in enumerate(events):
        metrics[f"event:{name}"] = int(sums[f"event_{i}"])
    return metrics
