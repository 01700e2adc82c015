"""Periodic chores of the sink: orphan postbacks that missed their click, old log rows,
and maintenance (partitions created ahead, retention; see tracker/store/retention.py).

Orphans are re-matched right after their click's batch is stored; one that missed
that moment (the sink died in between, or the postback was logged just after its
click was stored) is found here by joining the log with the stored clicks.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from tracker.postbacks import OrphanMatcher
from tracker.settings import Settings
from tracker.store import signatures
from tracker.store.postback_log import ORPHAN_HORIZON, delete_expired, orphans_with_clicks
from tracker.store.retention import Maintenance, maintain, retention_now

log = logging.getLogger("tracker.housekeeping")

# Clicks whose orphans one sweep step re-processes.
SWEEP_BATCH = 500


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Housekeeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        matcher: OrphanMatcher,
        settings: Settings,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._pool = pool
        self._matcher = matcher
        self._settings = settings
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def sweep_orphans(self) -> int:
        """Re-process unmatched postbacks whose click is stored; return the clicks seen."""
        seen: list[str] = []
        while True:
            now = self._clock()
            click_ids = await orphans_with_clicks(self._pool, now, SWEEP_BATCH, seen)
            if not click_ids:
                return len(seen)
            seen.extend(click_ids)
            await self._matcher.rematch(click_ids, since=now - ORPHAN_HORIZON)

    async def purge_log(self) -> int:
        """Delete expired refused postback log rows; return how many. (Older rows of every
        kind go with their partitions, in `maintain`.)"""
        s = self._settings
        deleted = await delete_expired(
            self._pool,
            await retention_now(self._pool, self._clock()),
            s.postback_log_failed_retention_days,
            s.postback_log_cleanup_batch,
        )
        if deleted:
            log.info("deleted %d expired refused postback log rows", deleted)
        await signatures.delete_expired(self._pool, self._clock())
        return deleted

    async def maintain(self) -> Maintenance:
        """Create partitions ahead and apply retention."""
        done = await maintain(self._pool, self._settings, self._clock())
        if done.created or done.dropped or done.deliveries_deleted:
            log.info("maintenance: %s", "; ".join(done.lines()))
        return done

    async def run(self) -> None:
        """Sweep and purge, each on its own period, until cancelled."""
        loop = asyncio.get_running_loop()
        chores: list[tuple[Callable[[], Awaitable[object]], float]] = [
            (self.maintain, self._settings.maintain_seconds),
            (self.sweep_orphans, self._settings.orphan_sweep_seconds),
            (self.purge_log, self._settings.postback_log_cleanup_seconds),
        ]
        due = [loop.time()] * len(chores)
        while True:
            for i, (chore, period) in enumerate(chores):
                if loop.time() >= due[i]:
                    due[i] = loop.time() + period
                    try:
                        await chore()
                    except Exception:
                        log.exception("housekeeping step %s failed", chore.__name__)
            await asyncio.sleep(max(0.0, min(due) - loop.time()))

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="housekeeping")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.asynccontextmanager
async def housekeeping(
    pool: asyncpg.Pool, matcher: OrphanMatcher, settings: Settings
) -> AsyncIterator[Housekeeper]:
    """The sink's housekeeping, running in the background while the context is open."""
    keeper = Housekeeper(pool, matcher, settings)
    await keeper.start()
    try:
        yield keeper
    finally:
        await keeper.close()
