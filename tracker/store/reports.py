"""The ROI report query: clicks and cost from the rollups, revenue from conversions.

Cost has two parts. What clicks cost (`cpc`, `auto`, `cpm`, and costs set with
`POST /api/costs`) is stored with each click and summed in the rollups. What
conversions cost (`cpa`, `revshare`) is booked from the approved conversions,
on the conversion's day, campaign, offer and source, like revenue, with the
campaign's current `cost_value`. Both are exact NUMERIC sums: nothing is rounded.
"""

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


# Campaigns whose conversions carry a cost; names chosen to clash with no conversions column.
BOOKING_CAMPAIGNS = """(
    SELECT id AS booking_campaign_id, cost_model AS booking_model, cost_value AS booking_value
    FROM campaigns WHERE cost_model IN ('cpa', 'revshare')
) m"""
# Per approved conversion: `cpa` books cost_value; `revshare` books cost_value percent
# of the revenue kept (payout less refunds), exactly (the product of two 6-place
# amounts and 0.01 has 14 places; NULL while the payout awaits an exchange rate).
BOOKED_COST = """CASE m.booking_model
    WHEN 'cpa' THEN m.booking_value
    WHEN 'revshare' THEN m.booking_value * 0.01 * (payout - refunded)
END"""


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
    SELECT {click_select}, sum(clicks) AS clicks, sum(bot_clicks) AS bot_clicks,
           sum(unique_clicks) AS unique_clicks, sum(lp_views) AS lp_views,
           sum(lp_clicks) AS lp_clicks, sum(cost) AS cost
    FROM click_rollups
    WHERE day BETWEEN $1 AND $2{where_campaign}
    GROUP BY {positions}
), v AS (
    SELECT {conv_select},
           count(*) FILTER (WHERE status = 'approved') AS conversions,
           sum(payout - refunded) FILTER (WHERE status = 'approved') AS revenue,
           sum({BOOKED_COST}) FILTER (WHERE status = 'approved') AS booked_cost,
           count(*) FILTER (WHERE status = 'lead') AS leads,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'approved' AND payout IS NULL) AS unconverted
    FROM conversions
    LEFT JOIN {BOOKING_CAMPAIGNS} ON m.booking_campaign_id = campaign_id
    WHERE created_at >= ($1::date)::timestamp AT TIME ZONE 'UTC'
      AND created_at < ($2::date + 1)::timestamp AT TIME ZONE 'UTC'{where_campaign}
    GROUP BY {positions}
), r AS (
    SELECT {click_select},
           coalesce(c.clicks, 0)::bigint AS clicks,
           coalesce(c.bot_clicks, 0)::bigint AS bot_clicks,
           coalesce(c.unique_clicks, 0)::bigint AS unique_clicks,
           coalesce(c.lp_views, 0)::bigint AS lp_views,
           coalesce(c.lp_clicks, 0)::bigint AS lp_clicks,
           coalesce(c.cost, 0) + coalesce(v.booked_cost, 0) AS cost,
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
    """One row per group: the counters and sums that `derive` turns into metrics."""
    query = build_report_query(group_by, campaign_id is not None)
    args: list[Any] = [start, end]
    if campaign_id is not None:
        args.append(campaign_id)
    return [dict(row) for row in await pool.fetch(query, *args)]
