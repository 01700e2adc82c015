"""PostgreSQL access: the pool and the migration runner."""

import logging
from importlib import resources
from typing import Any

import asyncpg
import orjson

log = logging.getLogger("tracker.db")

# Any constant works; it only has to be the same in every process running migrations.
MIGRATION_LOCK_ID = 7_240_611

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT version FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


# Failures that mean "Postgres cannot be reached right now", not "this row is wrong":
# refused or dropped connections, server shutting down or starting, timeouts (a query,
# a connection attempt, or waiting for a pooled connection), a closed pool.
POSTGRES_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError and ConnectionRefusedError included
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.TooManyConnectionsError,
    # A connection left mid-operation by a timeout or a dropped server, reused too soon.
    asyncpg.InternalClientError,
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release without the default reset query, a round trip per release. Nothing here
    changes session state on pooled connections (no SET, LISTEN, cursors or session locks)."""


async def create_pool(
    dsn: str, min_size: int = 2, max_size: int = 10, pg_timeout: float = 5.0
) -> asyncpg.Pool:
    """The process's pool; `pg_timeout` bounds every query and every new connection, so a
    Postgres that hangs fails like one that is down (see POSTGRES_UNAVAILABLE)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=keep_session,
        command_timeout=pg_timeout,
        timeout=pg_timeout,
    )
    assert pool is not None
    return pool


def list_migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every bundled migration, in order."""
    folder = resources.files("tracker") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations once each, under an advisory lock; return the names applied."""
    conn = await asyncpg.connect(dsn)
    applied_now = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            done = {row["version"] for row in await conn.fetch(SELECT_APPLIED)}
            for version, name, sql in list_migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(INSERT_APPLIED, version, name)
                log.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied_now
