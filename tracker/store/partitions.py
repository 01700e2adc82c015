"""Time partitions of `clicks`, `postback_log` (UTC days) and `conversions` (UTC months).

Partitions are created ahead by `tracker maintain` and the sink's housekeeping, and by
any writer whose row meets none (a click replayed from a spool days later, a late
postback, a clock jump): the writer creates what its batch needs and writes again, so
no row is ever refused for want of a partition. Retention drops whole partitions.

Creating and dropping run under one advisory lock (`create_time_partition` in migration
0015 takes it too), so two sinks, or a sink and `tracker maintain`, never race.
"""

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("tracker.partitions")

Db = asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy

Grain = Literal["day", "month"]
# Each partitioned table and its grain.
TABLES: dict[str, Grain] = {"clicks": "day", "postback_log": "day", "conversions": "month"}
# The same number `create_time_partition` locks in Postgres.
PARTITION_LOCK_ID = 7_240_612
# How long maintenance waits for a table lock (creating or dropping a partition locks the
# parent table briefly) before giving up until its next round; writers wait meanwhile.
MAINTENANCE_LOCK_TIMEOUT = "2s"

CREATE_PARTITION = "SELECT create_time_partition($1, $2, $3)"
# The partitions of a table with their bounds, as Postgres reports them; each name as
# Postgres quotes it (and qualifies it when it is not on the search path).
SELECT_PARTITIONS = r"""
SELECT c.oid::regclass::text AS name, b[1]::timestamptz AS starts, b[2]::timestamptz AS ends
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(
    pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\) TO \(''([^'']*)''\)'
) AS b
WHERE i.inhparent = $1::regclass AND b IS NOT NULL
ORDER BY starts
"""
# The UTC days of a batch of click records, by the rule the sink stores them with.
CLICK_BATCH_DAYS = """
SELECT DISTINCT date_trunc('day', click_created_at(click_id, created_ms), 'UTC') AS day
FROM json_to_recordset($1::text::json) AS r(click_id text, created_ms bigint)
"""


@dataclass(frozen=True, slots=True)
class Partition:
    name: str  # quoted and qualified as SQL needs it
    starts: datetime
    ends: datetime


def is_missing_partition(exc: BaseException) -> bool:
    """Whether Postgres refused a row because no partition of one of our partitioned
    tables takes it: SQLSTATE 23514 naming the table and no constraint (a CHECK names
    its constraint). Not the message, which is in the server's language."""
    return (
        isinstance(exc, asyncpg.CheckViolationError)
        and exc.constraint_name is None
        and exc.table_name in TABLES
    )


def period_start(moment: datetime, grain: Grain) -> datetime:
    """The UTC day or month holding `moment`."""
    utc = moment.astimezone(UTC)
    if grain == "day":
        return datetime(utc.year, utc.month, utc.day, tzinfo=UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def periods_ahead(now: datetime, grain: Grain, ahead: int) -> list[datetime]:
    """The current period and the `ahead` after it."""
    start = period_start(now, grain)
    if grain == "day":
        return [start + timedelta(days=i) for i in range(ahead + 1)]
    found = []
    year, month = start.year, start.month
    for _ in range(ahead + 1):
        found.append(datetime(year, month, 1, tzinfo=UTC))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return found


async def ensure_partitions(conn: Db, table: str, moments: Iterable[datetime]) -> list[str]:
    """Create the partitions of `table` holding `moments` that do not exist; return the
    names created."""
    grain = TABLES[table]
    created = []
    for start in sorted({period_start(moment, grain) for moment in moments}):
        name = await conn.fetchval(CREATE_PARTITION, table, grain, start)
        if name is not None:
            log.info("created partition %s", name)
            created.append(name)
    return created


async def ensure_for_click_batch(pool: asyncpg.Pool, records_json: str) -> list[str]:
    """Create the `clicks` partitions a batch of click records (a JSON array) needs."""
    days = [row["day"] for row in await pool.fetch(CLICK_BATCH_DAYS, records_json)]
    return await ensure_partitions(pool, "clicks", days)


async def list_partitions(conn: Db, table: str) -> list[Partition]:
    """The partitions of `table`, oldest first, with their [starts, ends) bounds."""
    rows = await conn.fetch(SELECT_PARTITIONS, table)
    return [Partition(row["name"], row["starts"], row["ends"]) for row in rows]


async def create_ahead(pool: asyncpg.Pool, table: str, now: datetime, ahead: int) -> list[str]:
    """Create the partitions of `table` for the current period and `ahead` more; one that
    cannot get its table lock in time is left for the next round (writers create a
    partition they need themselves)."""
    created = []
    for start in periods_ahead(now, TABLES[table], ahead):
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{MAINTENANCE_LOCK_TIMEOUT}'")
                created += await ensure_partitions(conn, table, [start])
        except asyncpg.LockNotAvailableError:
            log.warning("partition of %s for %s not created now: %s is busy", table, start, table)
            break
    return created


async def drop_older_than(pool: asyncpg.Pool, table: str, cutoff: datetime) -> list[str]:
    """Drop the partitions of `table` whose every row is older than `cutoff` (a partition
    holding the cutoff, or anything after it, stays); return the names dropped. One that
    cannot get its table lock in time (a long report) is left for the next round."""
    dropped = []
    for partition in await list_partitions(pool, table):
        if partition.ends > cutoff:
            break
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{MAINTENANCE_LOCK_TIMEOUT}'")
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_ID)
                await conn.execute(f"DROP TABLE IF EXISTS {partition.name}")
        except asyncpg.LockNotAvailableError:
            log.warning("partition %s not dropped now: %s is busy", partition.name, table)
            break
        log.info("dropped partition %s (rows before %s)", partition.name, partition.ends)
        dropped.append(partition.name)
    return dropped


T = TypeVar("T")
# Writes tried again after creating partitions; more than one round only when a clock
# jumps between two tries.
PARTITION_TRIES = 3


async def creating_partitions(
    write: Callable[[], Awaitable[T]], make_room: Callable[[], Awaitable[list[str]]]
) -> T:
    """`write()`; when Postgres finds no partition for one of its rows, `make_room()`
    (which creates the partitions the write needs) and write again."""
    for _ in range(PARTITION_TRIES - 1):
        try:
            return await write()
        except asyncpg.CheckViolationError as exc:
            if not is_missing_partition(exc):
                raise
            created = await make_room()
            log.warning("a write met no partition (%s); created %s", exc, created or "none")
    return await write()
