"""Maintenance: partitions created ahead, and what is old dropped or deleted.

Raw clicks and the postback log go by whole daily partitions, once a partition's last
day is older than its retention. Conversions, their history and the rollups are never
dropped. Finished deliveries (and their attempts) are deleted in small batches.

A click partition is never dropped while a postback could still need its clicks: the
click cutoff is at least the longest attribution window among campaigns, plus a day.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from tracker.settings import Settings
from tracker.store import partitions

log = logging.getLogger("tracker.retention")

SELECT_LONGEST_WINDOW = "SELECT coalesce(max(attribution_window_days), 0) FROM campaigns"
# One small batch per statement; a delivery's attempts go with it (ON DELETE CASCADE).
# `created_at` (indexed) is older still than `finished_at`, and narrows the scan.
DELETE_FINISHED_DELIVERIES = """
DELETE FROM deliveries WHERE id IN (
    SELECT id FROM deliveries
    WHERE created_at < $1 AND state <> 'pending' AND finished_at < $1
    LIMIT $2
)
"""
DELIVERY_DELETE_BATCH = 1000


@dataclass
class Maintenance:
    """What one round of maintenance did."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deliveries_deleted: int = 0
    # The click retention applied, in days (0: clicks kept for ever), after the clamp.
    click_days: int = 0
    clamped: bool = False

    def lines(self) -> list[str]:
        """A human summary, one line per fact."""
        found = [f"created partition {name}" for name in self.created]
        found += [f"dropped partition {name}" for name in self.dropped]
        if self.clamped:
            found.append(
                f"click retention raised to {self.click_days} days "
                "(the longest attribution window, plus a day)"
            )
        found.append(
            f"created {len(self.created)}, dropped {len(self.dropped)} partition(s); "
            f"deleted {self.deliveries_deleted} finished deliveries"
        )
        return found


async def click_retention_days(pool: asyncpg.Pool, settings: Settings) -> tuple[int, bool]:
    """(days raw clicks are kept, whether the setting was raised to that): never less than
    the longest attribution window plus one day; 0 keeps them for ever."""
    wanted = settings.click_retention_days
    if wanted == 0:
        return 0, False
    longest = int(await pool.fetchval(SELECT_LONGEST_WINDOW))
    if wanted < longest + 1:
        return longest + 1, True
    return wanted, False


async def delete_finished_deliveries(
    pool: asyncpg.Pool, cutoff: datetime, batch: int = DELIVERY_DELETE_BATCH
) -> int:
    """Delete delivered and dead deliveries finished before `cutoff`; pending ones stay."""
    deleted = 0
    while True:
        status = await pool.execute(DELETE_FINISHED_DELIVERIES, cutoff, batch)
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            return deleted


async def retention_now(pool: asyncpg.Pool, now: datetime) -> datetime:
    """The time retention is measured from: the older of `now` (this host's clock) and the
    database's, so that one host's clock jumping ahead drops nothing early."""
    database_now: datetime = await pool.fetchval("SELECT now()")
    return min(now, database_now)


async def maintain(pool: asyncpg.Pool, settings: Settings, now: datetime) -> Maintenance:
    """Create partitions ahead and apply retention; return what was done."""
    done = Maintenance()
    ahead = {
        "clicks": settings.partition_days_ahead,
        "postback_log": settings.partition_days_ahead,
        "conversions": settings.partition_months_ahead,
    }
    for table, count in ahead.items():
        done.created += await partitions.create_ahead(pool, table, now, count)
    done.click_days, done.clamped = await click_retention_days(pool, settings)
    if done.clamped:
        log.warning(
            "TRACKER_CLICK_RETENTION_DAYS=%d is shorter than the longest attribution window; "
            "clicks are kept %d days",
            settings.click_retention_days,
            done.click_days,
        )
    now = await retention_now(pool, now)
    if done.click_days:
        cutoff = now - timedelta(days=done.click_days)
        done.dropped += await partitions.drop_older_than(pool, "clicks", cutoff)
    log_cutoff = now - timedelta(days=settings.postback_log_retention_days)
    done.dropped += await partitions.drop_older_than(pool, "postback_log", log_cutoff)
    if settings.delivery_retention_days:
        delivery_cutoff = now - timedelta(days=settings.delivery_retention_days)
        done.deliveries_deleted = await delete_finished_deliveries(pool, delivery_cutoff)
    return done
