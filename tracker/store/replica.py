"""Where reports read from: a streaming replica when one is configured, else the
primary; and how far behind the replica's figures are.

A replica's lag is not simply `now() - pg_last_xact_replay_timestamp()`: that is the
age of the last transaction replayed, which keeps growing on a primary with nothing to
write although the replica misses nothing. So a replica that is streaming and has
replayed everything it received counts as caught up (lag 0); only otherwise is the age
of the last replayed transaction its lag (then an upper bound: the primary may have
written nothing since).
"""

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from tracker.logs import Throttled
from tracker.store.db import POSTGRES_UNAVAILABLE, create_pool

# `pg_stat_wal_receiver` shows its row (the pid, at least, to any role) only while the
# WAL receiver runs, i.e. while the replica is connected to its primary.
SELECT_REPLICA_STATE = """
SELECT now() AS now,
       pg_is_in_recovery() AS in_recovery,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver) AS streaming,
       pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn() AS replayed_all,
       pg_last_xact_replay_timestamp() AS replayed_at
"""

# Failures of a reports query that mean "the replica cannot answer now": it is down or
# unreachable, it refuses our role or database (a setting that names the wrong one),
# or it cancelled the query to apply the primary's changes (a conflict with recovery,
# SQLSTATE 40001 on a hot standby).
REPLICA_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *POSTGRES_UNAVAILABLE,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.SerializationError,
)

Database = Literal["replica", "primary"]


@dataclass(frozen=True, slots=True)
class Freshness:
    """How current a report's figures are: the database they come from, how many
    seconds behind the primary it is (None: unknown), and the moment its data is
    complete up to (None: unknown)."""

    database: Database
    lag_seconds: float | None
    as_of: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {"database": self.database, "lag_seconds": self.lag_seconds, "as_of": self.as_of}


def replica_freshness(row: asyncpg.Record | dict[str, Any]) -> Freshness:
    """A replica's freshness from SELECT_REPLICA_STATE."""
    now: datetime = row["now"]
    if not row["in_recovery"]:
        # Promoted, or not a physical standby at all (a logical subscriber): its
        # distance from the primary is not something it can tell.
        return Freshness("replica", None, None)
    if row["streaming"] and row["replayed_all"]:
        return Freshness("replica", 0.0, now)
    replayed_at: datetime | None = row["replayed_at"]
    if replayed_at is None:  # nothing replayed since the replica started
        return Freshness("replica", None, None)
    lag = max(0.0, (now - replayed_at).total_seconds())
    return Freshness("replica", round(lag, 3), replayed_at)


@dataclass(frozen=True, slots=True)
class ReportSource:
    """The pool reports read from, and whether it is a replica's."""

    pool: asyncpg.Pool
    database: Database
    # One warning per interval while the replica is down, not one per report.
    outage: Throttled = field(
        default_factory=lambda: Throttled(logging.getLogger("tracker.reports")), compare=False
    )

    @property
    def is_replica(self) -> bool:
        return self.database == "replica"

    async def freshness(self) -> Freshness:
        """How current this database is; one query on a replica, none on the primary
        (which is current by definition)."""
        if not self.is_replica:
            return Freshness("primary", 0.0, datetime.now(UTC))
        row = await self.pool.fetchrow(SELECT_REPLICA_STATE)
        assert row is not None
        return replica_freshness(row)


async def open_replica_pool(dsn: str, max_size: int, pg_timeout: float) -> asyncpg.Pool:
    """A pool on the reports replica that opens no connection until a report asks for
    one: a replica that is down when the process starts must not keep clicks and
    postbacks from being served."""
    return await create_pool(dsn, 0, max_size, pg_timeout)
