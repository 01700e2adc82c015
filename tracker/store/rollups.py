"""Daily rollups in the zones reports are read in (migration 0016).

`rollup_zones` lists the zones whose local days are rolled up; every writer reads it in
its own statement: the sink and cost updates (`zone_rollup_upserts`) for the click
rollups, and the sink's fold of `conversion_changes` (which the triggers on
`conversions` append to) for the conversion rollups (`fold_conversion_changes`). A zone
is listed only once its past rows are backfilled, in the transaction that lists it, so a report that
finds its zone listed reads whole rollups: `sync_rollup_zones` makes the table match the
`TRACKER_ROLLUP_ZONES` setting (`tracker migrate` calls it).
"""

import logging
from collections.abc import Iterable

import asyncpg

from tracker.settings import Settings
from tracker.store.admin import Conn

log = logging.getLogger("tracker.rollups")

ROLLUP_COUNTERS = ("clicks", "bot_clicks", "unique_clicks", "lp_views", "lp_clicks", "cost")
# Click rollup table -> (the fact besides the ids (campaign, offer, source) it is keyed
# by, its grain: local days, local weeks from Monday, or local calendar months).
CLICK_ROLLUPS = {
    "click_daily": ("lander_id", "day"),
    "click_daily_geo": ("country", "day"),
    "click_weekly_geo": ("country", "week"),
    "click_monthly_geo": ("country", "month"),
}
CONVERSION_ROLLUPS = {
    "conversion_daily": ("lander_id", "day"),
    "conversion_daily_geo": ("country", "day"),
    "conversion_weekly_geo": ("country", "week"),
    "conversion_monthly_geo": ("country", "month"),
}
# Per-click counters, as the columns of a row of `clicks` give them.
CLICK_COUNTERS = """
    (NOT is_bot)::int AS clicks, is_bot::int AS bot_clicks,
    (coalesce(is_unique, false) AND NOT is_bot)::int AS unique_clicks,
    (lander_id IS NOT NULL AND NOT is_bot)::int AS lp_views,
    (lp_clicked_at IS NOT NULL AND NOT is_bot)::int AS lp_clicks,
    coalesce(cost, 0) AS cost
"""


def add_to_rollup(
    table: str,
    keys: dict[str, str],
    source: str = "counted",
    counters: Iterable[str] = ROLLUP_COUNTERS,
) -> str:
    """Upsert of the rows of `source` (with the per-click counters), summed by `keys`
    (rollup column -> expression), into `table`; rows are taken in key order, the same in
    every writer, so writers do not deadlock."""
    counters = tuple(counters)
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    return f"""
INSERT INTO {table} AS r ({", ".join(keys)}, {", ".join(counters)})
SELECT {", ".join(keys.values())}, {", ".join(f"sum({c})" for c in counters)}
FROM {source}
GROUP BY {positions}
ORDER BY {positions}
ON CONFLICT ({", ".join(keys)}) DO UPDATE
SET {", ".join(f"{c} = r.{c} + EXCLUDED.{c}" for c in counters)}"""


def zone_rollup_keys(fact: str, grain: str = "day") -> dict[str, str]:
    """Keys of a zone rollup keyed by `fact`, for rows of a source joined with zones z."""
    local = "(created_at AT TIME ZONE z.zone)"
    return {
        "zone": "z.zone",
        "day": f"{local}::date" if grain == "day" else f"date_trunc('{grain}', {local})::date",
        "campaign_id": "campaign_id",
        "offer_id": "offer_id",
        "traffic_source_id": "traffic_source_id",
        fact: fact,
    }


def zone_rollup_upserts(source: str = "counted", counters: Iterable[str] = ROLLUP_COUNTERS) -> str:
    """CTEs (each preceded by a comma) adding the rows of `source` (created_at, the ids,
    lander_id, country, counters) to every click rollup of every listed zone."""
    counters = tuple(counters)
    return "".join(
        f"\n, {table}_moved AS ("
        + add_to_rollup(
            table, zone_rollup_keys(*keyed), f"{source} CROSS JOIN rollup_zones z", counters
        )
        + "\n)"
        for table, keyed in CLICK_ROLLUPS.items()
    )


SELECT_ZONES = "SELECT zone FROM rollup_zones"
# Writers of clicks and conversions wait for this lock (and it for them): a zone is
# listed and backfilled with nothing written meanwhile.
_LOCK_WRITERS = "LOCK TABLE clicks, conversions IN SHARE MODE"
_INSERT_ZONE = "INSERT INTO rollup_zones (zone) VALUES ($1)"
# Changes pile up while no sink runs: folding them all may take longer than a query may.
FOLD_TIMEOUT = 600.0
_BACKFILL_CONVERSIONS = """
SELECT conversion_rollup_sql($1, $2, 'SELECT 1 AS sign, * FROM conversions',
                             format('SELECT %L::text AS zone', $3::text), $4)
"""


def _backfill_clicks(table: str, fact: str, grain: str) -> str:
    counted = (
        "(SELECT created_at, campaign_id, offer_id, traffic_source_id,"
        f" {fact}, {CLICK_COUNTERS} FROM clicks) AS k"
    )
    return add_to_rollup(
        table,
        zone_rollup_keys(fact, grain),
        f"{counted} CROSS JOIN (SELECT $1::text AS zone) AS z",
    )


_FOLD_INTO = """
SELECT conversion_rollup_sql($1, $2, 'SELECT * FROM moved', 'SELECT zone FROM rollup_zones', $3)
"""


async def fold_conversion_changes(conn: Conn | asyncpg.Pool) -> int:
    """Add the conversion changes recorded so far to the conversion rollups of every
    listed zone, and delete them, in one statement: a report sees each change once,
    recorded or folded. Returns the number of changes folded."""
    parts = [
        await conn.fetchval(_FOLD_INTO, table, *keyed)
        for table, keyed in CONVERSION_ROLLUPS.items()
    ]
    ctes = "".join(f", fold_{i} AS ({sql})" for i, sql in enumerate(parts))
    statement = (
        f"WITH moved AS (DELETE FROM conversion_changes RETURNING *){ctes} "
        "SELECT count(*) FROM moved"
    )
    return int(await conn.fetchval(statement, timeout=FOLD_TIMEOUT))


async def rolled_up_zones(conn: Conn | asyncpg.Pool) -> frozenset[str]:
    """The zones whose rollups are whole."""
    return frozenset(row["zone"] for row in await conn.fetch(SELECT_ZONES))


async def add_rollup_zone(pool: asyncpg.Pool, zone: str) -> None:
    """List `zone` and backfill its rollups from the stored clicks and conversions.
    Click and conversion writers wait meanwhile (the sink keeps its entries on the
    stream) for one pass over the stored clicks and conversions."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_WRITERS)
        if zone in await rolled_up_zones(conn):
            return
        # Changes recorded before are in the stored conversions the backfill reads: they
        # go to the zones listed before, not to this one.
        await fold_conversion_changes(conn)
        await conn.execute(_INSERT_ZONE, zone)
        await _fill(conn, zone)


async def _fill(conn: Conn, zone: str) -> None:
    for table, (fact, grain) in CLICK_ROLLUPS.items():
        await conn.execute(_backfill_clicks(table, fact, grain), zone)
    for table, (fact, grain) in CONVERSION_ROLLUPS.items():
        statement = await conn.fetchval(_BACKFILL_CONVERSIONS, table, fact, zone, grain)
        await conn.execute(statement)


async def rebuild_rollup_zone(pool: asyncpg.Pool, zone: str) -> None:
    """Recompute a listed zone's rollups from the stored clicks and conversions (a repair:
    the writers keep them whole on their own)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_WRITERS)
        await fold_conversion_changes(conn)
        for table in (*CLICK_ROLLUPS, *CONVERSION_ROLLUPS):
            await conn.execute(f"DELETE FROM {table} WHERE zone = $1", zone)
        await _fill(conn, zone)


async def drop_rollup_zone(pool: asyncpg.Pool, zone: str) -> None:
    """Stop rolling up `zone` and delete its rows."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_WRITERS)
        await conn.execute("DELETE FROM rollup_zones WHERE zone = $1", zone)
        for table in (*CLICK_ROLLUPS, *CONVERSION_ROLLUPS):
            await conn.execute(f"DELETE FROM {table} WHERE zone = $1", zone)


async def sync_rollup_zones(
    pool: asyncpg.Pool, zones: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Make the listed zones `zones`: add (with backfill) the missing, drop the others.
    Returns (added, dropped)."""
    wanted = set(zones)
    listed = await rolled_up_zones(pool)
    added = sorted(wanted - listed)
    dropped = sorted(listed - wanted)
    for zone in added:
        log.info("rolling up zone %s (backfilling its past days)", zone)
        await add_rollup_zone(pool, zone)
    for zone in dropped:
        log.info("no longer rolling up zone %s", zone)
        await drop_rollup_zone(pool, zone)
    return added, dropped


async def sync_zones_from_settings(settings: Settings) -> str:
    """`sync_rollup_zones` to `TRACKER_ROLLUP_ZONES`; a line saying what changed."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        added, dropped = await sync_rollup_zones(pool, settings.rollup_zone_names())
    finally:
        await pool.close()
    return (
        f"rollup zones: {', '.join(settings.rollup_zone_names())}"
        + (f"; added (backfilled) {', '.join(added)}" if added else "")
        + (f"; dropped {', '.join(dropped)}" if dropped else "")
    )
