"""Migrations: applied once each, also when several runners start together."""

import asyncio

import asyncpg

from tracker.store.db import list_migrations, migrate


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
