"""PostgreSQL access: the pool and the migration runner.

Each migration file is applied in one transaction together with its row in
`schema_migrations`, so it is either wholly applied or not at all. A file whose
first line is `-- tracker:no-transaction` is for statements Postgres refuses to
run inside a transaction block (`CREATE INDEX CONCURRENTLY`, say): its statements
are run one at a time, each committed on its own, and the file is recorded only
after the last one. If the runner stops half-way through such a file, the
statements before the failure stay applied and the file is not recorded, so the
next `tracker migrate` runs it again from the top: every statement in such a file
must be safe to run twice (`IF NOT EXISTS`, `IF EXISTS`). An interrupted
`CREATE INDEX CONCURRENTLY` leaves an INVALID index behind, which `IF NOT EXISTS`
would then keep: write `DROP INDEX CONCURRENTLY IF EXISTS name;` before it.
"""

import logging
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
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
        # Our statements are short or read rollups: compiling them (JIT) costs more than
        # it saves. The sink's conversion fold compiled on every 2 s round (~0.9 s of CPU).
        server_settings={"jit": "off"},
    )
    assert pool is not None
    return pool


NO_TRANSACTION_MARKER = "-- tracker:no-transaction"


def list_migrations(folder: Traversable | Path | None = None) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every migration in `folder` (default: the bundled
    ones), in order."""
    if folder is None:
        folder = resources.files("tracker") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def split_statements(sql: str) -> list[str]:
    """The statements of a no-transaction migration, split at semicolons that end a line
    (such files hold plain DDL: no function bodies or strings spanning lines)."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    statements.append("\n".join(current).strip())
    return [statement for statement in statements if statement]


def is_no_transaction(sql: str) -> bool:
    first = sql.lstrip().split("\n", 1)[0].strip()
    return first == NO_TRANSACTION_MARKER


async def migrate(dsn: str, folder: Traversable | Path | None = None) -> list[str]:
    """Apply pending migrations once each, under an advisory lock; return the names applied.
    `folder` holds the migration files (default: the bundled ones)."""
    conn = await asyncpg.connect(dsn)
    applied_now = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            done = {row["version"] for row in await conn.fetch(SELECT_APPLIED)}
            for version, name, sql in list_migrations(folder):
                if version in done:
                    continue
                if is_no_transaction(sql):
                    for statement in split_statements(sql):
                        await conn.execute(statement)
                    await conn.execute(INSERT_APPLIED, version, name)
                else:
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
