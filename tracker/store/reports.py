"""The ROI report query: clicks and cost from the rollups, revenue from conversions."""

from datetime import date
from typing import Any

import asyncpg

# Report dimension -> (column in click_rollups, expression in conversions, name join).
DIMENSIONS: dict[str, tuple[str, str, str | None]] = {
    "campaign": ("campaign_id", "campaign_id", "campaigns"),
    "offer": ("offer_id", "offer_id", "offers"),
    "traffic_source": ("traffic_source_id", "traffic_source_id", "traffic_sources"),
    "day": ("day", "(created_at AT TIME ZONE 'UTC')::date", None),
}


def build_report_query(group_by: list[str], campaign_filter: bool) -> str:
    """SQL for one report; `group_by` holds names validated against DIMENSIONS."""
    columns = [DIMENSIONS[name][0] for name in group_by]
    click_select = ", ".join(columns)
    conv_select = ", ".join(f"{DIMENSIONS[n][1]} AS {DIMENSIONS[n][0]}" for n in group_by)
    positions = ", ".join(str(i + 1) for i in range(len(group_by)))
    where_campaign = " AND campaign_id = $3" if campaign_filter else ""
    name_joins = []
    name_columns = []
    for name in group_by:
        column, _, table = DIMENSIONS[name]
        if table is not None:
            alias = f"n_{name}"
            name_joins.append(f"LEFT JOIN {table} {alias} ON {alias}.id = r.{column}")
            name_columns.append(f"{alias}.name AS {name}_name")
    return f"""
WITH c AS (
    SELECT {click_select}, sum(clicks) AS clicks, sum(cost) AS cost
    FROM click_rollups
    WHERE day BETWEEN $1 AND $2{where_campaign}
    GROUP BY {positions}
), v AS (
    SELECT {conv_select},
           count(*) FILTER (WHERE status = 'approved') AS conversions,
           sum(payout - refunded) FILTER (WHERE status = 'approved') AS revenue,
           count(*) FILTER (WHERE status = 'lead') AS leads,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'approved' AND payout IS NULL) AS unconverted
    FROM conversions
    WHERE created_at >= ($1::date)::timestamp AT TIME ZONE 'UTC'
      AND created_at < ($2::date + 1)::timestamp AT TIME ZONE 'UTC'{where_campaign}
    GROUP BY {positions}
), r AS (
    SELECT {click_select},
           coalesce(c.clicks, 0)::bigint AS clicks,
           coalesce(c.cost, 0) AS cost,
           coalesce(v.conversions, 0)::bigint AS conversions,
           coalesce(v.revenue, 0) AS revenue,
           coalesce(v.leads, 0)::bigint AS leads,
           coalesce(v.pending, 0)::bigint AS pending,
           coalesce(v.unconverted, 0)::bigint AS unconverted
    FROM c FULL JOIN v USING ({click_select})
)
SELECT r.*{"".join(", " + c for c in name_columns)}
FROM r {" ".join(name_joins)}
ORDER BY {", ".join(f"r.{c}" for c in columns)}
"""


async def fetch_report(
    pool: asyncpg.Pool, start: date, end: date, group_by: list[str], campaign_id: int | None
) -> list[dict[str, Any]]:
    query = build_report_query(group_by, campaign_id is not None)
    args: list[Any] = [start, end]
    if campaign_id is not None:
        args.append(campaign_id)
    return [dict(row) for row in await pool.fetch(query, *args)]
