"""The report query: click counters and cost from the clicks, conversions, revenue and
booked cost from the conversions, grouped by up to three dimensions.

Each report reads the smallest table that answers it exactly (`report_path` names it).
Over whole local days of a zone listed in `rollup_zones`, with dimensions and filters
among the ids (campaign, offer, source, network), day, week, month and weekday, plus
lander or country: the per-zone daily rollups, clicks and conversions alike (conversions
by click day or by arrival day). Else clicks come from `click_rollups` (campaign, offer,
traffic source and UTC day, whole UTC days, no other filter), from `click_hourly` when
the report asks only for ids and time in a zone of whole-hour offsets, or from the raw
clicks; conversions then come raw. Conversions carry every dimension of their click, so
they are grouped without a join; `conversion_time` dates them by their click
(`click_time`) or by their arrival (`created_at`).

Cost has two parts. What clicks cost (`cpc`, `auto`, `cpm`, and costs set with
`POST /api/costs`) is stored with each click. What conversions cost (`cpa`,
`revshare`) is booked from the approved conversions, with the campaign's current
`cost_value`. Both are exact NUMERIC sums: nothing is rounded.
"""

from collections.abc import Mapping, Sequence
from datetime import UTC, date, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from tracker.domain.reports import (
    BLOCK_ROWS,
    COUNTERS,
    GRAINS,
    ID_DIMENSIONS,
    RATIOS,
    TIME_DIMENSIONS,
    Block,
    ReportSpec,
    day_blocks,
    dimension_column,
)
from tracker.store.admin import Conn
from tracker.store.rollups import (
    CLICK_ROLLUPS,
    CONVERSION_ROLLUPS,
    ROLLUP_COUNTERS,
    rolled_up_zones,
    zone_rollup_keys,
)

# Id dimension -> (column of clicks and conversions, table of names).
_ID_COLUMNS = {
    "campaign": ("campaign_id", "campaigns"),
    "offer": ("offer_id", "offers"),
    "lander": ("lander_id", "landers"),
    "traffic_source": ("traffic_source_id", "traffic_sources"),
    "affiliate_network": ("affiliate_network_id", "affiliate_networks"),
}
# What click_rollups can answer: these dimensions, over whole UTC days.
_ROLLUP_DIMENSIONS = frozenset({"campaign", "offer", "traffic_source", "day"})

# Campaigns whose conversions carry a cost; names chosen to clash with no conversions column.
_BOOKS = "cost_model IN ('cpa', 'revshare')"
BOOKING_CAMPAIGNS = f"""(
    SELECT id AS booking_campaign_id, cost_model AS booking_model, cost_value AS booking_value
    FROM campaigns WHERE {_BOOKS}
) m"""
BOOKING_EXISTS = f"SELECT EXISTS (SELECT FROM campaigns WHERE {_BOOKS})"


def _booked_cost(conversions: str, revenue: str) -> str:
    """What the campaigns (`m`) book for `conversions` approved conversions that kept
    `revenue` (SQL for each): `cpa` books cost_value a conversion; `revshare` cost_value
    percent of the revenue kept (payout less refunds), exactly (the product of two 6-place
    amounts and 0.01 has 14 places; NULL while a payout awaits an exchange rate)."""
    return f"""CASE m.booking_model
    WHEN 'cpa' THEN m.booking_value * {conversions}
    WHEN 'revshare' THEN m.booking_value * 0.01 * {revenue}
END"""


def _booking_join(row: str) -> str:
    """Each row's campaign's cost per conversion (`m`, NULL for a campaign booking none)."""
    return f"\n    LEFT JOIN {BOOKING_CAMPAIGNS} ON m.booking_campaign_id = {row}.campaign_id"


_CLICK_COUNTERS = ("clicks", "unique_clicks", "bots", "lp_views", "lp_clicks")
_CONVERSION_COUNTERS = tuple(c for c in COUNTERS if c not in _CLICK_COUNTERS)
# Ratios as SQL over a group's sums, for sorting; NULL when the denominator is zero.
_RATIO_SQL = {
    "profit": "g.revenue - g.cost",
    "roi": "(g.revenue - g.cost) * 100 / nullif(g.cost, 0)",
    "cr": "g.conversions * 100.0 / nullif(g.clicks, 0)",
    "epc": "g.revenue / nullif(g.clicks, 0)",
    "cpc": "g.cost / nullif(g.clicks, 0)",
    "cpa": "g.cost / nullif(g.conversions, 0)",
    "lp_ctr": "g.lp_clicks * 100.0 / nullif(g.lp_views, 0)",
}
assert set(_RATIO_SQL) == set(RATIOS)


def uses_rollups(spec: ReportSpec) -> bool:
    whole_days = all(moment.astimezone(UTC).time() == time() for moment in (spec.start, spec.end))
    return (
        spec.tz == "UTC"
        and whole_days
        and set(spec.group_by) <= _ROLLUP_DIMENSIONS
        and set(spec.filters) <= {"campaign", "offer", "traffic_source"}
        and set(spec.excludes) <= {"campaign", "offer", "traffic_source"}
    )


_HOURLY_DIMENSIONS = frozenset(
    {"campaign", "offer", "lander", "traffic_source", "affiliate_network", *TIME_DIMENSIONS}
)
_HOURLY_FILTERS = frozenset(ID_DIMENSIONS)


def uses_hourly(spec: ReportSpec) -> bool:
    """Whether `click_hourly` answers the report: id dimensions and time only, bounds on
    whole UTC hours, and a zone whose offset is whole hours over the whole range."""
    if not (
        set(spec.group_by) <= _HOURLY_DIMENSIONS
        and set(spec.filters) <= _HOURLY_FILTERS
        and set(spec.excludes) <= _HOURLY_FILTERS
    ):
        return False
    try:
        bounds = [moment.astimezone(UTC) for moment in (spec.start, spec.end)]
        zone = ZoneInfo(spec.tz)
    except (OverflowError, ValueError, KeyError):
        return False
    if any(moment.time().replace(hour=0) != time() for moment in bounds):
        return False
    moment = bounds[0]
    while True:  # offsets change at most a few times a year: daily samples find them
        offset = zone.utcoffset(moment.replace(tzinfo=None))
        if offset is None or offset.total_seconds() % 3600:
            return False
        if moment >= bounds[1]:
            return True
        moment = min(moment + timedelta(days=1), bounds[1])


class _Query:
    """Collects the parameters of one statement."""

    def __init__(self, spec: ReportSpec) -> None:
        self.args: list[Any] = [spec.start, spec.end, spec.tz]

    def param(self, value: Any, cast: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{cast}"


# The per-zone daily rollups (migration 0016): (click table, conversion table, the fact
# besides the ids they carry), smallest first. Both answer time as local days.
_ZONE_ROLLUPS = (
    ("click_daily", "conversion_daily", "lander"),
    ("click_daily_geo", "conversion_daily_geo", "country"),
)
# Daily rollup -> its blocks by grain: weeks (migration 0018) and calendar months (0019),
# read for the whole weeks and months of a range when the report has no time dimension.
_BLOCKS = {
    "click_daily_geo": {"day": "click_daily_geo", "week": "click_weekly_geo",
                        "month": "click_monthly_geo"},
    "conversion_daily_geo": {"day": "conversion_daily_geo", "week": "conversion_weekly_geo",
                             "month": "conversion_monthly_geo"},
}  # fmt: skip
_ZONE_IDS = frozenset({"campaign", "offer", "traffic_source", "affiliate_network"})
_ZONE_TIMES = frozenset({"day", "week", "month", "weekday"})
# Grouping a month of rollup rows by several keys: in memory, not spilled to disk.
SET_REPORT_MEMORY = "SET LOCAL work_mem = '64MB'"


def whole_local_days(spec: ReportSpec) -> bool:
    """Whether the range starts and ends at a local midnight of the report's zone."""
    try:
        zone = ZoneInfo(spec.tz)
        return all(moment.astimezone(zone).time() == time() for moment in (spec.start, spec.end))
    except (OverflowError, ValueError, KeyError):
        return False


def zone_rollup(spec: ReportSpec, zones: frozenset[str]) -> tuple[str, str] | None:
    """(click table, conversion table) of the smallest per-zone daily rollup that answers
    the report exactly, or None: its zone rolled up, whole local days, and every
    dimension, filter and exclude one the rollup carries."""
    if spec.tz not in zones or not whole_local_days(spec):
        return None
    named = {*spec.filters, *spec.excludes}
    for clicks, conversions, fact in _ZONE_ROLLUPS:
        carried = _ZONE_IDS | {fact}
        if set(spec.group_by) <= carried | _ZONE_TIMES and named <= carried:
            return clicks, conversions
    return None


def _local_days(spec: ReportSpec) -> tuple[date, date]:
    """The first local day of a range of whole local days, and the day after its last
    (computed here: per row in SQL, the zone's rules would be looked up again and again)."""
    zone = ZoneInfo(spec.tz)
    first, end = (moment.astimezone(zone).date() for moment in (spec.start, spec.end))
    return first, end


# Rows per block of each grain, from the planner's statistics of the geo rollups (click and
# conversion tables together): a table's rows over its distinct days (n_distinct < 0 is a
# fraction of the rows).
BLOCK_ROWS_SQL = """
SELECT t.grain, sum(c.reltuples / CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * c.reltuples
                                       ELSE s.n_distinct END) AS rows
FROM unnest($1::text[], $2::text[]) AS t (grain, name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = 'day'
WHERE c.reltuples > 0 AND s.n_distinct <> 0
GROUP BY t.grain
"""


async def block_rows(conn: Conn | asyncpg.Pool) -> dict[str, float]:
    """Rows a block of each grain reads, relative to a day's (the statistics say how dense
    the keys are: a month of dense keys holds about as many rows as a day); the default
    ratio while a table has no statistics."""
    pairs = [(grain, table) for by_grain in _BLOCKS.values() for grain, table in by_grain.items()]
    found = await conn.fetch(BLOCK_ROWS_SQL, *map(list, zip(*pairs, strict=True)))
    rows = {row["grain"]: float(row["rows"]) for row in found}
    if set(rows) != set(GRAINS) or rows["day"] <= 0:
        return dict(BLOCK_ROWS)
    return {grain: rows[grain] / rows["day"] for grain in GRAINS}


def _may_read_blocks(spec: ReportSpec, table: str) -> bool:
    """Whether blocks exist for the daily rollup `table` and the report can read them (it
    has no time dimension)."""
    return table in _BLOCKS and not set(spec.group_by) & _ZONE_TIMES


def zone_blocks(
    spec: ReportSpec, table: str, rows: Mapping[str, float] = BLOCK_ROWS
) -> list[Block] | None:
    """The day, week and month blocks a report on the daily rollup `table` reads instead
    of its days (the fewest rows by `rows`, a block's rows by grain), when blocks exist for
    it, the report has no time dimension and they save reading; else None (the days are
    read as a range)."""
    if not _may_read_blocks(spec, table):
        return None
    blocks = day_blocks(*_local_days(spec), rows)
    return blocks if any(grain != "day" for grain, _, _ in blocks) else None


def _blocks_source(
    table: str,
    keys: str,
    counters: Sequence[str],
    blocks: list[Block],
    query: _Query,
    condition: str = "",
) -> str:
    """Rows of the daily rollup `table` and of its weekly and monthly blocks, as the blocks
    select them (and `condition`): `keys`, then `counters` (columns, or NULL placeholders),
    negated in the rows of a block taken away, so that a plain sum adds the blocks up."""
    negated = ", ".join(c if c.startswith("NULL") else f"-{c} AS {c}" for c in counters)
    parts = []
    for grain, source in _BLOCKS[table].items():
        for sign, columns in ((1, ", ".join(counters)), (-1, negated)):
            chosen = [day for g, day, s in blocks if g == grain and s == sign]
            if not chosen:
                continue
            # `day = any(...)` lets the planner see how many days it reads, from the index.
            days = query.param(chosen, "date[]")
            parts.append(
                f"SELECT {keys}, {columns} FROM {source}"
                f" WHERE zone = $3::text AND day = any({days}){condition}"
            )
    return "\n        UNION ALL\n        ".join(parts)


def _zone_dimension_sql(name: str) -> str:
    """A dimension read from a per-zone daily rollup row `r` (time from its local day)."""
    if name == "affiliate_network":
        return "o.affiliate_network_id"
    if name in _ID_COLUMNS:
        return f"r.{_ID_COLUMNS[name][0]}"
    if name == "day":
        return "r.day"
    if name == "week":
        return "date_trunc('week', r.day::timestamp)::date"
    if name == "month":
        return "to_char(r.day, 'YYYY-MM')"
    if name == "weekday":
        return "extract(isodow FROM r.day)::int"
    return f"r.{name}"


def _zone_conditions(spec: ReportSpec, query: _Query, days: bool = True) -> list[str]:
    """The zone, the range's days (unless blocks choose the rows) and the filters."""
    # $1 and $2, the range's instants, are always parameters: typed here where unused.
    where = ["r.zone = $3::text", "$1::timestamptz <= $2::timestamptz"]
    if days:
        first, end = _local_days(spec)
        where += [f"r.day >= {query.param(first, 'date')}", f"r.day < {query.param(end, 'date')}"]
    for name, values in spec.filters.items():
        expr = _zone_dimension_sql(name)
        where.append(f"{expr} = any({query.param(list(values), _cast(name))})")
    for name, values in spec.excludes.items():
        expr = _zone_dimension_sql(name)
        values_param = query.param(list(values), _cast(name))
        where.append(f"({expr} IS NULL OR NOT {expr} = any({values_param}))")
    return where


def _rolled_clicks(source: str, row: str, select: str, where: list[str], dims: list[str]) -> str:
    """The click counters of a report from a rollup table (`source`, aliased `row`). A
    rollup row whose clicks all moved away (a lander click-through to another offer)
    stays, at zero: it is no group, as it is none in the raw clicks."""
    return f"""
    SELECT {select + "," if select else ""}
           sum({row}.clicks) AS clicks, sum({row}.unique_clicks) AS unique_clicks,
           sum({row}.bot_clicks) AS bots, sum({row}.lp_views) AS lp_views,
           sum({row}.lp_clicks) AS lp_clicks, sum({row}.cost) AS click_cost
    FROM {source}
    WHERE {" AND ".join(where)}
    {"GROUP BY " + ", ".join(dims) if dims else ""}
    HAVING sum({row}.clicks) + sum({row}.bot_clicks) > 0"""


def _dimension_sql(name: str, row: str, moment: str) -> str:
    if name == "lander" and row == "h":
        return "nullif(h.lander_id, 0)"  # the hourly rollups key "no lander" as 0
    if name in _ID_COLUMNS:
        column = _ID_COLUMNS[name][0]
        return f"o.{column}" if name == "affiliate_network" else f"{row}.{column}"
    local = f"({moment} AT TIME ZONE $3::text)"
    if name == "hour":
        return f"date_trunc('hour', {moment}, $3::text)"
    if name == "day":
        return f"{local}::date"
    if name == "week":
        return f"date_trunc('week', {local})::date"
    if name == "month":
        return f"to_char({local}, 'YYYY-MM')"
    if name == "weekday":
        return f"extract(isodow FROM {local})::int"
    return f"{row}.{name}"


def _cast(name: str) -> str:
    if name in ID_DIMENSIONS or name == "asn":
        return "bigint[]"
    return "boolean[]" if name == "is_unique" else "text[]"


def _conditions(spec: ReportSpec, query: _Query, row: str, moment: str) -> list[str]:
    # $3, the time zone, is always a parameter: named here when no dimension uses it.
    where = [f"{moment} >= $1", f"{moment} < $2", "$3::text IS NOT NULL"]
    for name, values in spec.filters.items():
        expr = _dimension_sql(name, row, moment)
        where.append(f"{expr} = any({query.param(list(values), _cast(name))})")
    for name, values in spec.excludes.items():
        expr = _dimension_sql(name, row, moment)
        values_param = query.param(list(values), _cast(name))
        where.append(f"({expr} IS NULL OR NOT {expr} = any({values_param}))")
    return where


def _needs_offers(spec: ReportSpec) -> bool:
    return "affiliate_network" in (*spec.group_by, *spec.filters, *spec.excludes)


def report_path(spec: ReportSpec, zones: frozenset[str] = frozenset()) -> str:
    """Where the report's clicks and conversions are read: "<click table>+<conversion
    table>" (`clicks` and `conversions` for the raw rows)."""
    zoned = zone_rollup(spec, zones)
    if zoned is not None:
        return f"{zoned[0]}+{zoned[1] if not spec.events else 'conversions'}"
    if uses_rollups(spec):
        return "click_rollups+conversions"
    if uses_hourly(spec):
        return "click_hourly+conversions"
    return "clicks+conversions"


def build_report(
    spec: ReportSpec,
    zones: frozenset[str] = frozenset(),
    grain_rows: Mapping[str, float] = BLOCK_ROWS,
    booking: bool = True,
) -> tuple[str, list[Any]]:
    """(SQL, parameters) of one report: its first row the totals, then the page. Names
    come from the catalogue in `domain.reports`, values are parameters. `zones` are those
    whose per-zone daily rollups are whole (`rollup_zones`); `grain_rows` the rows a block
    of each grain holds (`block_rows`); `booking` whether any campaign books a cost per
    conversion (`BOOKING_EXISTS`: without one, no conversion row looks its campaign up)."""
    query = _Query(spec)
    dims = [f"d{i}" for i in range(len(spec.group_by))]
    offers_join = " JOIN offers o ON o.id = {row}.offer_id" if _needs_offers(spec) else ""
    zoned = zone_rollup(spec, zones)
    # The same days and weeks for the click and the conversion rollups (both have weeks).
    blocks = zone_blocks(spec, zoned[0], grain_rows) if zoned is not None else None

    if zoned is not None and not spec.events:
        grouped = _merged_zone_groups(spec, query, zoned, dims, offers_join, blocks, booking)
        return _assemble(spec, query, dims, grouped=grouped)
    if zoned is not None:
        select = ", ".join(
            f"{_zone_dimension_sql(n)} AS {d}" for n, d in zip(spec.group_by, dims, strict=True)
        )
        where = _zone_conditions(spec, query, days=blocks is None)
        if blocks is None:
            source = f"{zoned[0]} r" + offers_join.format(row="r")
            clicks = _rolled_clicks(source, "r", select, where, dims)
        else:
            fact = CLICK_ROLLUPS[zoned[0]][0]
            keys = ", ".join(zone_rollup_keys(fact))
            rows = _blocks_source(zoned[0], keys, ROLLUP_COUNTERS, blocks, query)
            source = f"(\n        {rows}\n    ) r" + offers_join.format(row="r")
            clicks = _rolled_clicks(source, "r", select, where, dims)
    elif uses_rollups(spec):
        select = ", ".join(
            f"{_dimension_sql(n, 'r', '') if n != 'day' else 'r.day'} AS {d}"
            for n, d in zip(spec.group_by, dims, strict=True)
        )
        where = [
            "r.day >= ($1 AT TIME ZONE 'UTC')::date",
            "r.day < ($2 AT TIME ZONE 'UTC')::date",
        ]
        for name, values in spec.filters.items():
            column = _ID_COLUMNS[name][0]
            where.append(f"r.{column} = any({query.param(list(values), 'bigint[]')})")
        for name, values in spec.excludes.items():
            column = _ID_COLUMNS[name][0]
            where.append(f"NOT r.{column} = any({query.param(list(values), 'bigint[]')})")
        clicks = _rolled_clicks("click_rollups r", "r", select, where, dims)
    elif uses_hourly(spec):
        select = ", ".join(
            f"{_dimension_sql(n, 'h', 'h.hour')} AS {d}"
            for n, d in zip(spec.group_by, dims, strict=True)
        )
        where = _conditions(spec, query, "h", "h.hour")
        source = "click_hourly h" + offers_join.format(row="h")
        clicks = _rolled_clicks(source, "h", select, where, dims)
    else:
        select = ", ".join(
            f"{_dimension_sql(n, 'k', 'k.created_at')} AS {d}"
            for n, d in zip(spec.group_by, dims, strict=True)
        )
        where = _conditions(spec, query, "k", "k.created_at")
        clicks = f"""
    SELECT {select + "," if select else ""}
           count(*) FILTER (WHERE NOT k.is_bot) AS clicks,
           count(*) FILTER (WHERE k.is_unique AND NOT k.is_bot) AS unique_clicks,
           count(*) FILTER (WHERE k.is_bot) AS bots,
           count(*) FILTER (WHERE k.lander_id IS NOT NULL AND NOT k.is_bot) AS lp_views,
           count(*) FILTER (WHERE k.lp_clicked_at IS NOT NULL AND NOT k.is_bot) AS lp_clicks,
           sum(k.cost) AS click_cost
    FROM clicks k{offers_join.format(row="k")}
    WHERE {" AND ".join(where)}
    {"GROUP BY " + ", ".join(dims) if dims else ""}"""

    conversions = _raw_conversions(spec, query, dims, offers_join, booking)
    return _assemble(spec, query, dims, clicks, conversions)


# The click rollups' counters but their cost (which the conversion rows fill with booked cost).
_ROLLED_CLICKS = tuple(c for c in ROLLUP_COUNTERS if c != "cost")
_ROLLED_CONVERSIONS = ("conversions", "leads", "pending", "rejected", "chargebacks", "unconverted")


def _merged_zone_groups(
    spec: ReportSpec,
    query: _Query,
    zoned: tuple[str, str],
    dims: list[str],
    offers_join: str,
    blocks: list[Block] | None,
    booking: bool,
) -> str:
    """The groups of a report on the per-zone rollups in one pass: the click rows and the
    conversion rows (and the changes not folded yet) side by side, each with the other's
    counters NULL (a conversion row's cost is what its campaign books for it), summed by
    the dimensions at once. A group is one the clicks or the conversions make (their net
    clicks or conversions are not zero), as in the raw rows;
    the sums of a side that makes no group are zero, so its counters read 0 as before."""
    click_table, conversion_table = zoned
    fact = CONVERSION_ROLLUPS[conversion_table][0]
    keys = ", ".join(zone_rollup_keys(fact))
    click_counters = [
        *ROLLUP_COUNTERS,
        *(f"NULL::bigint AS {c}" for c in _ROLLED_CONVERSIONS),
        "NULL::numeric AS revenue",
    ]
    conversion_counters = [
        *(f"NULL::bigint AS {c}" for c in _ROLLED_CLICKS),
        "NULL::numeric AS cost",
        *_ROLLED_CONVERSIONS,
        "revenue",
    ]
    basis = query.param("click" if spec.conversion_time == "click" else "postback", "text")
    moment = f"CASE WHEN {basis} = 'click' THEN c.click_time ELSE c.created_at END"
    if blocks is None:
        clicks = f"SELECT {keys}, {', '.join(click_counters)} FROM {click_table}"
        conversions = (
            f"SELECT {keys}, {', '.join(conversion_counters)} FROM {conversion_table}"
            f" WHERE basis = {basis}"
        )
        changes_in_range = ""
    else:
        clicks = _blocks_source(click_table, keys, click_counters, blocks, query)
        conversions = _blocks_source(
            conversion_table, keys, conversion_counters, blocks, query, f" AND basis = {basis}"
        )
        changes_in_range = f"WHERE {moment} >= $1 AND {moment} < $2"
    # The conversion rollup rows, and the changes the sink has not folded into them yet.
    conversion_rows = f"""{conversions}
        UNION ALL
        SELECT $3::text, ({moment} AT TIME ZONE $3::text)::date,
               c.campaign_id, c.offer_id, c.traffic_source_id, c.{fact},
               {", ".join("NULL::bigint" for _ in _ROLLED_CLICKS)}, NULL::numeric,
               CASE c.status WHEN 'approved' THEN c.sign ELSE 0 END,
               CASE c.status WHEN 'lead' THEN c.sign ELSE 0 END,
               CASE c.status WHEN 'pending' THEN c.sign ELSE 0 END,
               CASE c.status WHEN 'rejected' THEN c.sign ELSE 0 END,
               CASE c.status WHEN 'chargeback' THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'approved' AND c.payout IS NULL THEN c.sign ELSE 0 END,
               CASE WHEN c.status = 'approved' THEN c.sign * (c.payout - c.refunded) END
        FROM conversion_changes c {changes_in_range}"""
    if booking:
        # The cost their campaigns book per conversion, as the conversion rows' cost: the
        # click rows (the most) look no campaign up.
        conversion_rows = f"""SELECT {", ".join(f"u.{k}" for k in zone_rollup_keys(fact))},
               {", ".join(f"u.{c}" for c in _ROLLED_CLICKS)},
               {_booked_cost("u.conversions", "u.revenue")} AS cost,
               {", ".join(f"u.{c}" for c in (*_ROLLED_CONVERSIONS, "revenue"))}
        FROM (
        {conversion_rows}
        ) u{_booking_join("u")}"""
    source = f"""(
        {clicks}
        UNION ALL
        {conversion_rows}
    )"""
    select = "".join(
        f"{_zone_dimension_sql(n)} AS {d}, " for n, d in zip(spec.group_by, dims, strict=True)
    )
    where = _zone_conditions(spec, query, days=blocks is None)
    named = {"bot_clicks": "bots"}
    offers_r = offers_join.format(row="r")
    # sum_bigint (migration 0019): a running bigint, no numeric per group and counter.
    counters = ", ".join(
        f"coalesce(sum_bigint(r.{c}), 0) AS {named.get(c, c)}"
        for c in (*_ROLLED_CLICKS, *_ROLLED_CONVERSIONS)
    )
    return f"""
    SELECT {select}{counters},
           coalesce(sum(r.revenue), 0) AS revenue,
           coalesce(sum(r.cost), 0) AS cost
    FROM {source} r{offers_r}
    WHERE {" AND ".join(where)}
    {"GROUP BY " + ", ".join(dims) if dims else ""}
    HAVING sum_bigint(r.clicks) + sum_bigint(r.bot_clicks) > 0
        OR sum_bigint(r.conversions) + sum_bigint(r.leads) + sum_bigint(r.pending)
           + sum_bigint(r.rejected) + sum_bigint(r.chargebacks) > 0"""


def _raw_conversions(
    spec: ReportSpec, query: _Query, dims: list[str], offers_join: str, booking: bool
) -> str:
    moment = "v.click_time" if spec.conversion_time == "click" else "v.created_at"
    select = ", ".join(
        f"{_dimension_sql(n, 'v', moment)} AS {d}" for n, d in zip(spec.group_by, dims, strict=True)
    )
    where = _conditions(spec, query, "v", moment)
    events = ", ".join(
        f"count(*) FILTER (WHERE v.status = 'approved' AND v.event = {query.param(name, 'text')})"
        f" AS event_{i}"
        for i, name in enumerate(spec.events)
    )
    offers_v = offers_join.format(row="v")
    booked, booking_join = "NULL::numeric", ""
    if booking:
        each = _booked_cost("1", "(v.payout - v.refunded)")  # one conversion's
        booked = f"sum({each}) FILTER (WHERE v.status = 'approved')"
        booking_join = _booking_join("v")
    conversions = f"""
    SELECT {select + "," if select else ""}
           count(*) FILTER (WHERE v.status = 'approved') AS conversions,
           count(*) FILTER (WHERE v.status = 'lead') AS leads,
           count(*) FILTER (WHERE v.status = 'pending') AS pending,
           count(*) FILTER (WHERE v.status = 'rejected') AS rejected,
           count(*) FILTER (WHERE v.status = 'chargeback') AS chargebacks,
           count(*) FILTER (WHERE v.status = 'approved' AND v.payout IS NULL) AS unconverted,
           sum(v.payout - v.refunded) FILTER (WHERE v.status = 'approved') AS revenue,
           {booked} AS booked_cost
           {", " + events if events else ""}
    FROM conversions v{booking_join}{offers_v}
    WHERE {" AND ".join(where)}
    {"GROUP BY " + ", ".join(dims) if dims else ""}"""
    return conversions


def _assemble(
    spec: ReportSpec,
    query: _Query,
    dims: list[str],
    clicks: str = "",
    conversions: str = "",
    grouped: str = "",
) -> tuple[str, list[Any]]:
    """The totals of the groups and their page: the click and the conversion sums merged by
    the dimensions, or the groups `grouped` gives already (dimensions, counters, revenue,
    cost)."""
    event_columns = [f"event_{i}" for i in range(len(spec.events))]
    lead = "".join(f"{d}, " for d in dims)
    zero_clicks = "".join(f"0 AS {c}, " for c in _CLICK_COUNTERS) + "0::numeric AS click_cost"
    zero_conversions = ", ".join(
        [
            *(f"0 AS {c}" for c in (*_CONVERSION_COUNTERS, *event_columns)),
            "0::numeric AS revenue",
            "0::numeric AS booked_cost",
        ]
    )
    click_part = ", ".join((*_CLICK_COUNTERS, "click_cost"))
    conversion_part = ", ".join((*_CONVERSION_COUNTERS, *event_columns, "revenue", "booked_cost"))
    sums = ", ".join(
        [f"sum({c})::bigint AS {c}" for c in (*COUNTERS, *event_columns)]
        + [
            "coalesce(sum(revenue), 0) AS revenue",
            "coalesce(sum(click_cost), 0) + coalesce(sum(booked_cost), 0) AS cost",
        ]
    )
    common = (
        f"""
WITH g AS ({grouped}
)"""
        if grouped
        else f"""
WITH k AS ({clicks}
), v AS ({conversions}
), u AS (
    SELECT {lead}{click_part}, {zero_conversions} FROM k
    UNION ALL
    SELECT {lead}{zero_clicks}, {conversion_part} FROM v
), g AS (
    SELECT {lead}{sums}
    FROM u
    {"GROUP BY " + ", ".join(dims) if dims else ""}
)"""
    )
    # The page: its groups sorted, and their names joined (a lookup per page row, by key).
    values = (*COUNTERS, *event_columns, "revenue", "cost")
    names, joins = [], []
    for name, d in zip(spec.group_by, dims, strict=True):
        if name in _ID_COLUMNS:
            names.append(f"n_{d}.name AS {d}_name")
            joins.append(f"LEFT JOIN {_ID_COLUMNS[name][1]} n_{d} ON n_{d}.id = p.{d}")
    order, sorts = [], {}  # sorts: a ratio's page column -> its SQL
    for i, (key, descending) in enumerate(spec.sort):
        if key in spec.group_by:
            column = dims[spec.group_by.index(key)]
        elif key in _RATIO_SQL:
            # A ratio is sorted on as a column of the page, so that the page and the
            # totals row can be sorted together by output columns.
            column = f"x_sort{i}"
            sorts[column] = _RATIO_SQL[key]
        elif key.startswith("event:"):
            column = f"event_{spec.events.index(key.removeprefix('event:'))}"
        else:
            column = key
        order.append(f"{column} {'DESC' if descending else 'ASC'} NULLS LAST")
    order += [f"{d} ASC NULLS LAST" for d in dims]
    order_by = f"ORDER BY {', '.join(order)}" if order else ""
    limit = query.param(spec.limit, "bigint")
    offset = query.param(spec.offset, "bigint")
    # The totals over every group come first, as a row of their own (x_part 0): one pass
    # over the groups, sent once rather than beside every row of the page. The union's
    # columns are named by its first part, the page.
    totals = ", ".join(
        ["count(*) AS groups"]
        + [f"coalesce(sum_bigint({c}), 0) AS {c}" for c in (*COUNTERS, *event_columns)]
        + ["coalesce(sum(revenue), 0) AS revenue", "coalesce(sum(cost), 0) AS cost"]
    )
    page_columns = ", ".join(
        ["1 AS x_part", *(f"p.{d}" for d in dims), *(f"p.{c}" for c in values), *names,
         *(f"p.{c}" for c in sorts), "NULL::bigint AS x_groups"]
    )  # fmt: skip
    total_columns = ", ".join(
        ["0", *("NULL" for _ in dims), *(f"t.{c}" for c in values), *("NULL" for _ in names),
         *("NULL" for _ in sorts), "t.groups"]
    )  # fmt: skip
    sql = f"""{common}, t AS (
    SELECT {totals} FROM g
)
SELECT {page_columns}
FROM (
    SELECT g.*{"".join(f", {sql} AS {c}" for c, sql in sorts.items())}
    FROM g
    {order_by}
    LIMIT {limit} OFFSET {offset}
) p
{chr(10).join(joins)}
UNION ALL
SELECT {total_columns} FROM t
ORDER BY x_part{"".join(", " + o for o in order)}"""
    return sql, query.args


async def _block_rows_for(
    conn: Conn, spec: ReportSpec, zones: frozenset[str]
) -> Mapping[str, float]:
    """`block_rows`, read only for a report that may read blocks."""
    zoned = zone_rollup(spec, zones)
    if zoned is None or not _may_read_blocks(spec, zoned[0]):
        return BLOCK_ROWS
    return await block_rows(conn)


# The columns of a report row that are sums (not dimensions, names or helpers).
_VALUE_PREFIXES = (*COUNTERS, "event_", "revenue", "cost")


async def fetch_report(
    pool: asyncpg.Pool, spec: ReportSpec, time_limit: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The page of groups the spec asks for, each with its sums, and the totals over
    every group (with `groups`, their number). TimeoutError past `time_limit` seconds."""
    # One snapshot for every read below: the zones, the statistics, whether a campaign
    # books a cost per conversion, and the report agree with each other.
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute(SET_REPORT_MEMORY)
        # Read in the report's transaction: a zone listed here has whole rollups.
        zones = await rolled_up_zones(conn)
        grain_rows = await _block_rows_for(conn, spec, zones)
        booking = bool(await conn.fetchval(BOOKING_EXISTS))
        sql, args = build_report(spec, zones, grain_rows, booking)
        found = await conn.fetch(sql, *args, timeout=time_limit)
    # The first row is the totals' (`build_report`), the page follows: the sums, then
    # each dimension under its own name (and its name's), by column position.
    columns = list(found[0].keys())
    sums = [(i, k) for i, k in enumerate(columns) if k.startswith(_VALUE_PREFIXES)]
    totals = {k: found[0][i] for i, k in sums}
    totals["groups"] = found[0]["x_groups"]
    picks = list(sums)
    for i, name in enumerate(spec.group_by):
        picks.append((columns.index(f"d{i}"), dimension_column(name)))
        if f"d{i}_name" in columns:
            picks.append((columns.index(f"d{i}_name"), f"{name}_name"))
    out = [{k: row[i] for i, k in picks} for row in found[1:]]
    return out, totals
