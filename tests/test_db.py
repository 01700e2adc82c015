"""Migrations: applied once each, also when several runners start together."""

import asyncio

import asyncpg
import pytest

from tests.conftest import fresh_database
from tracker.store.db import (
    NO_TRANSACTION_MARKER,
    is_no_transaction,
    list_migrations,
    migrate,
    split_statements,
)


async def test_migrations_apply_once(settings):
    assert await migrate(settings.database_url) == []
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(servers):
    pg, _ = servers
    admin = await asyncpg.connect(pg.dsn("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS migrate_race")
        await admin.execute("CREATE DATABASE migrate_race")
    finally:
        await admin.close()
    dsn = pg.dsn("migrate_race")
    applied = await asyncio.gather(*(migrate(dsn) for _ in range(3)))
    names = [name for _, name, _ in list_migrations()]
    # Each file is applied by exactly one of the runners.
    assert sorted(name for names_applied in applied for name in names_applied) == sorted(names)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names)
    finally:
        await conn.close()


async def test_migrations_with_and_without_a_transaction(servers, tmp_path):
    """A plain file is all or nothing; a no-transaction file runs CONCURRENTLY statements,
    and when it fails half-way the next run repeats it from the top without harm."""
    dsn = await fresh_database(servers, "migrate_kinds")
    (tmp_path / "0001_table.sql").write_text(
        "CREATE TABLE things (id int PRIMARY KEY, name text);\n"
        "INSERT INTO things VALUES (1, 'a');\n"
    )
    (tmp_path / "0002_broken.sql").write_text(
        "INSERT INTO things VALUES (2, 'b');\nSELECT 1 / 0;\n"
    )
    assert is_no_transaction((tmp_path / "0001_table.sql").read_text()) is False
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(dsn, tmp_path)
    conn = await asyncpg.connect(dsn)
    try:
        # The broken file left nothing behind, and is not recorded.
        assert await conn.fetchval("SELECT count(*) FROM things") == 1
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
        (tmp_path / "0002_broken.sql").unlink()
        index = (
            f"{NO_TRANSACTION_MARKER}\n"
            "-- Built without blocking writers.\n"
            "DROP INDEX CONCURRENTLY IF EXISTS things_name;\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS things_name\n"
            "    ON things (name);\n"
            "SELECT 1 / (SELECT count(*) - 1 FROM things);\n"
        )
        (tmp_path / "0003_index.sql").write_text(index)
        assert is_no_transaction(index)
        # Fails after the index is built: the index stays, the file is not recorded.
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(dsn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('things_name') IS NOT NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
        await conn.execute("INSERT INTO things VALUES (2, 'b')")
        assert await migrate(dsn, tmp_path) == ["0003_index.sql"]
        assert await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'things_name'::regclass"
        )
        assert await migrate(dsn, tmp_path) == []
        assert [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")] == [1, 3]
    finally:
        await conn.close()


def test_no_transaction_files_are_split_into_statements():
    sql = (
        f"{NO_TRANSACTION_MARKER}\n-- why\nCREATE INDEX CONCURRENTLY a\n  ON t (x);\n\n"
        "DROP INDEX IF EXISTS b;\nSELECT 1"
    )
    assert split_statements(sql) == [
        "CREATE INDEX CONCURRENTLY a\n  ON t (x)",
        "DROP INDEX IF EXISTS b",
        "SELECT 1",
    ]
