"""Costs set after the fact: one amount spread over a slice of a campaign's stored clicks.

The amount is split in micro-units (the 6 decimal places of a click's cost): every
click of the slice gets floor(total / n) micro-units, and the remaining
total mod n micro-units go one each to the earliest clicks, in (created_at,
click_id) order. The clicks' costs then add up to exactly the amount, and so do
the rollups the reports read, which move by the per-(day or hour, ids, fact) difference
in the same statement.

Only clicks already stored in Postgres belong to a slice; clicks still on the Redis
stream keep the cost the click path gave them.
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from tracker.store.admin import Conn
from tracker.store.rollups import zone_rollup_upserts

# Filter key -> (clicks column, compared without regard to case). Sub ids and the
# source's external id are opaque and compared exactly; visitor facts are not.
FILTER_COLUMNS: dict[str, tuple[str, bool]] = {
    **{f"sub{i}": (f"sub{i}", False) for i in range(1, 11)},
    "offer_id": ("offer_id", False),
    "external_id": ("external_id", False),
    "lander_id": ("lander_id", False),
    "country": ("country", True),
    "region": ("region", True),
    "city": ("city", True),
    "device": ("device", True),
    "os": ("os", True),
    "browser": ("browser", True),
    "language": ("language", True),
}
MICROS = 1_000_000
# A slice can hold millions of clicks: more time than the pool's per-query bound.
SET_COST_TIMEOUT = 120.0

SELECT_CAMPAIGN_EXISTS = "SELECT EXISTS (SELECT 1 FROM campaigns WHERE id = $1)"

# $1 campaign, $2 from, $3 to (half-open), $4 total in micro-units, $5 filter (jsonb),
# $6 total; filter values from $7 on. Rows are locked in one fixed order (the
# slice's, then the rollups' key order, as the sink writes them), so two updates
# of overlapping slices wait for each other instead of deadlocking, and the later
# one reads the costs the earlier one committed: no difference is lost.
_SET_SLICE_COST = (
    """
WITH slice AS MATERIALIZED (
    SELECT click_id, created_at, offer_id, traffic_source_id, lander_id, country,
           coalesce(cost, 0) AS old_cost
    FROM clicks
    WHERE campaign_id = $1 AND created_at >= $2 AND created_at < $3{filters}
    ORDER BY created_at, click_id
    FOR UPDATE
), ranked AS (
    SELECT *, row_number() OVER (ORDER BY created_at, click_id) AS place,
           count(*) OVER () AS n
    FROM slice
), shares AS MATERIALIZED (
    SELECT click_id, created_at, offer_id, traffic_source_id, lander_id, country, old_cost,
           (div($4::bigint, n) + CASE WHEN place <= mod($4::bigint, n) THEN 1 ELSE 0 END)
               * 0.000001 AS new_cost
    FROM ranked
), updated AS (
    -- created_at pins each click's partition, the slice's range the partitions scanned.
    UPDATE clicks c SET cost = s.new_cost FROM shares s
    WHERE c.click_id = s.click_id AND c.created_at = s.created_at
      AND c.created_at >= $2 AND c.created_at < $3
), moved AS (
    INSERT INTO click_rollups AS r (day, campaign_id, offer_id, traffic_source_id, clicks, cost)
    SELECT (created_at AT TIME ZONE 'UTC')::date, $1, offer_id, traffic_source_id, 0,
           sum(new_cost - old_cost)
    FROM shares
    GROUP BY 1, 3, 4
    ORDER BY 1, 3, 4
    ON CONFLICT (day, campaign_id, offer_id, traffic_source_id) DO UPDATE
    SET cost = r.cost + EXCLUDED.cost
), moved_hourly AS (
    INSERT INTO click_hourly AS h (hour, campaign_id, offer_id, traffic_source_id, lander_id, cost)
    SELECT date_trunc('hour', created_at, 'UTC'), $1, offer_id, traffic_source_id,
           coalesce(lander_id, 0), sum(new_cost - old_cost)
    FROM shares
    GROUP BY 1, 3, 4, 5
    ORDER BY 1, 3, 4, 5
    ON CONFLICT (hour, campaign_id, offer_id, traffic_source_id, lander_id) DO UPDATE
    SET cost = h.cost + EXCLUDED.cost
), cost_moved AS (
    SELECT created_at, $1::bigint AS campaign_id, offer_id, traffic_source_id, lander_id, country,
           new_cost - old_cost AS cost
    FROM shares
)"""
    + zone_rollup_upserts("cost_moved", ("cost",))
    + """
INSERT INTO cost_updates (campaign_id, starts_at, ends_at, filter, cost, clicks)
SELECT $1, $2, $3, $5::jsonb, $6, count(*) FROM shares HAVING count(*) > 0
RETURNING id, clicks
"""
)


def set_slice_cost_query(filter_keys: list[str]) -> str:
    """SQL that sets a slice's cost; `filter_keys` are keys of FILTER_COLUMNS, whose
    values follow as parameters $7, $8, ... in the same order."""
    conditions = []
    for number, key in enumerate(filter_keys, start=7):
        column, any_case = FILTER_COLUMNS[key]
        if any_case:
            conditions.append(f" AND lower({column}) = lower(${number}::text)")
        elif column in ("offer_id", "lander_id"):
            conditions.append(f" AND {column} = ${number}::bigint")
        else:
            conditions.append(f" AND {column} = ${number}::text")
    return _SET_SLICE_COST.format(filters="".join(conditions))


async def campaign_exists(conn: Conn | asyncpg.Pool, campaign_id: int) -> bool:
    """Whether the campaign exists, archived or not (archived campaigns' clicks cost too)."""
    return bool(await conn.fetchval(SELECT_CAMPAIGN_EXISTS, campaign_id))


async def set_slice_cost(
    conn: Conn | asyncpg.Pool,
    campaign_id: int,
    start: datetime,
    end: datetime,
    cost: Decimal,
    slice_filter: dict[str, Any],
) -> tuple[int, int] | None:
    """Spread `cost` (at most 6 decimals, not negative) over the campaign's stored
    clicks created in [start, end) that match `slice_filter`, replacing their costs;
    return (cost update id, clicks), or None when the slice has no clicks (then
    nothing is written). One statement, so all of it or none of it happens."""
    micros = cost * MICROS
    if micros != micros.to_integral_value():
        raise ValueError("cost has more than 6 decimal places")
    keys = list(slice_filter)
    row = await conn.fetchrow(
        set_slice_cost_query(keys),
        campaign_id,
        start,
        end,
        int(micros),
        slice_filter,
        cost,
        *(slice_filter[key] for key in keys),
        timeout=SET_COST_TIMEOUT,
    )
    if row is None:
        return None
    return int(row["id"]), int(row["clicks"])
