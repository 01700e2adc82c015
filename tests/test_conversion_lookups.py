"""Statements that find a conversion by id also name its click time, so that Postgres reads
one monthly partition of `conversions` rather than every month ever kept (migration 0017)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import fresh_database, migrate_to, usd_conversion
from tests.test_partitions import click_record, scanned_partitions
from tracker.domain.clickid import click_ms
from tracker.store.conversions import (
    ADD_REFUND,
    INSERT_HISTORY,
    LOCK_PARENT,
    SET_CONVERTED,
    UPDATE_STATUS,
    ConversionWriter,
)
from tracker.store.db import migrate
from tracker.store.deliveries import SELECT_CLAIMED
from tracker.store.partitions import ensure_partitions, list_partitions, period_start

NOW = datetime.now(UTC)
# Forty days is more than any month: three different months, whatever today is.
MONTHS = [NOW - timedelta(days=d) for d in (0, 40, 80)]


def partition_of(moment: datetime) -> str:
    return f"conversions_p{period_start(moment, 'month'):%Y%m}"


async def conversions_in_three_months(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """One approved conversion in each of MONTHS, written by the conversion writer, for
    a source that is sent approved conversions (so each has a delivery)."""
    await pool.execute(
        "INSERT INTO traffic_sources (name, postback_url, postback_statuses)"
        " VALUES ('s', 'http://sent.test/', '{approved,chargeback}')"
    )
    await ensure_partitions(pool, "conversions", MONTHS)
    writer = ConversionWriter(pool)
    await writer.start()
    try:
        for i, moment in enumerate(MONTHS):
            result = await writer.record(usd_conversion(click_record(moment), f"T{i}"))
            assert result[0] == "created"
    finally:
        await writer.close()
    rows = await pool.fetch(
        "SELECT c.id, c.click_id, c.txid, c.click_time, d.id AS delivery_id,"
        "       d.conversion_click_time AS delivery_time, h.conversion_click_time AS history_time"
        " FROM conversions c"
        " JOIN deliveries d ON d.conversion_id = c.id"
        " JOIN conversion_history h ON h.conversion_id = c.id"
        " ORDER BY c.click_time DESC"
    )
    assert len(rows) == 3
    assert len({partition_of(row["click_time"]) for row in rows}) == 3
    for row in rows:  # every writer carries the time with the id
        assert row["delivery_time"] == row["history_time"] == row["click_time"]
    return rows


async def scanned_by(conn: Any, statement: str, *args: Any) -> set[str]:
    """The conversion partitions `statement` reads when run (rolled back afterwards)."""
    tx = conn.transaction()
    await tx.start()
    try:
        plan = orjson.loads(
            await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *args)
        )
    finally:
        await tx.rollback()
    return scanned_partitions(plan, "conversions_p")


async def conversion_scans(conn: Any) -> dict[str, int]:
    """Scans of each conversion partition this backend has counted and not yet reported
    (it reports them only between transactions), triggers included."""
    rows = await conn.fetch(
        "SELECT relname, seq_scan + coalesce(idx_scan, 0) AS scans"
        " FROM pg_stat_xact_user_tables WHERE relname LIKE 'conversions\\_p%'"
    )
    return {row["relname"]: row["scans"] for row in rows}


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_statements_on_one_conversion_read_its_month_only(pool, plan_mode):
    rows = await conversions_in_three_months(pool)
    middle = rows[1]
    month = partition_of(middle["click_time"])
    shapes = {
        "LOCK_PARENT": (
            LOCK_PARENT,
            middle["click_id"],
            middle["txid"],
            click_ms(middle["click_id"], 0),
        ),
        "UPDATE_STATUS": (
            UPDATE_STATUS,
            middle["id"],
            "chargeback",
            False,
            None,
            None,
            None,
            None,
            middle["click_time"],
        ),
        "ADD_REFUND": (ADD_REFUND, middle["id"], Decimal("0.5"), middle["click_time"]),
        "SET_CONVERTED": (SET_CONVERTED, middle["id"], Decimal("1.5"), middle["click_time"]),
        # The sender's claim: each claimed delivery's conversion, in its own month.
        "SELECT_CLAIMED": (SELECT_CLAIMED, [middle["delivery_id"]]),
    }
    async with pool.acquire() as conn:
        await conn.execute(f"SET plan_cache_mode = {plan_mode}")
        try:
            for name, (statement, *args) in shapes.items():
                assert await scanned_by(conn, statement, *args) == {month}, name
            claimed_all = [row["delivery_id"] for row in rows]
            assert await scanned_by(conn, SELECT_CLAIMED, claimed_all) == {
                partition_of(row["click_time"]) for row in rows
            }
        finally:
            await conn.execute("RESET plan_cache_mode")


async def test_the_deliveries_trigger_reads_the_changed_conversions_month_only(pool):
    """A status change's history row enqueues a delivery (a statement trigger joining the
    new history rows to their conversions): only that conversion's month is read."""
    rows = await conversions_in_three_months(pool)
    middle = rows[1]
    async with pool.acquire() as conn, conn.transaction():
        before = await conversion_scans(conn)
        history_id = await conn.fetchval(
            INSERT_HISTORY,
            middle["id"],
            "approved",
            "chargeback",
            Decimal("2.5"),
            Decimal(0),
            None,
            {},
            middle["click_time"],
        )
        after = await conversion_scans(conn)
    scanned = {name for name, scans in after.items() if scans > before.get(name, 0)}
    kept = await list_partitions(pool, "conversions")
    print(f"conversion partitions {len(kept)}, read to enqueue one delivery {len(scanned)}")
    assert scanned == {partition_of(middle["click_time"])}
    delivery = await pool.fetchrow(
        "SELECT conversion_id, conversion_click_time, status, payout FROM deliveries"
        " WHERE history_id = $1",
        history_id,
    )
    assert tuple(delivery) == (middle["id"], middle["click_time"], "chargeback", Decimal("-2.5"))


async def test_a_history_row_without_the_time_gets_it_from_its_conversion(pool):
    """Written as processes from before migration 0017 write it: the time is filled in
    from the conversion (found by id); a row naming no conversion is refused."""
    rows = await conversions_in_three_months(pool)
    oldest = rows[2]
    history_id = await pool.fetchval(
        "INSERT INTO conversion_history (conversion_id, old_status, new_status, payout, params)"
        " VALUES ($1, 'approved', 'chargeback', 2.5, '{}') RETURNING id",
        oldest["id"],
    )
    filled = await pool.fetchval(
        "SELECT conversion_click_time FROM conversion_history WHERE id = $1", history_id
    )
    delivered = await pool.fetchval(
        "SELECT conversion_click_time FROM deliveries WHERE history_id = $1", history_id
    )
    assert filled == delivered == oldest["click_time"]
    # The conversion and its history row in one statement, as the writer wrote them then.
    new = await pool.fetchrow(
        """
        WITH c AS (
            INSERT INTO conversions (click_id, dedupe_key, txid, campaign_id, offer_id,
                traffic_source_id, click_time, payout, currency, original_payout,
                original_currency, status, params)
            VALUES ('old-writer', 'k', 'k', 1, 1, 1, $1, 1.5, 'USD', 1.5, 'USD', 'approved',
                    '{}')
            RETURNING id, status, payout
        )
        INSERT INTO conversion_history (conversion_id, old_status, new_status, payout, params)
        SELECT id, NULL, status, payout, '{}' FROM c
        RETURNING id, conversion_click_time
        """,
        MONTHS[1],
    )
    assert new["conversion_click_time"] == MONTHS[1]
    delivered = await pool.fetchval(
        "SELECT conversion_click_time FROM deliveries WHERE history_id = $1", new["id"]
    )
    assert delivered == MONTHS[1]
    with pytest.raises(asyncpg.NotNullViolationError):
        await pool.execute(
            "INSERT INTO conversion_history (conversion_id, new_status, params)"
            " VALUES (-1, 'approved', '{}')"
        )


async def test_migration_fills_the_time_of_existing_rows(servers, tmp_path):
    dsn = await fresh_database(servers, "migrate_conversion_time")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_to(dsn, 16, tmp_path / "to_0016")
        await ensure_partitions(conn, "conversions", MONTHS)
        await conn.executemany(
            "INSERT INTO conversions (click_id, dedupe_key, txid, campaign_id, offer_id,"
            " traffic_source_id, click_time, payout, currency, original_payout,"
            " original_currency, status, params)"
            " VALUES ($1, $1, $1, 1, 2, 3, $2, 1.5, 'USD', 1.5, 'USD', 'approved', '{}')",
            [(f"c{i}", moment) for i, moment in enumerate(MONTHS)],
        )
        await conn.execute(
            "INSERT INTO conversion_history (conversion_id, new_status, params)"
            " SELECT id, status, '{}' FROM conversions"
        )
        await conn.execute(
            "INSERT INTO deliveries (conversion_id, history_id, traffic_source_id, campaign_id,"
            " status, currency)"
            " SELECT conversion_id, id, 3, 1, 'approved', 'USD' FROM conversion_history"
        )
        # Rows whose conversion is gone (deleted by hand: the tracker deletes none).
        await conn.execute(
            "INSERT INTO conversion_history (conversion_id, new_status, params)"
            " VALUES (999, 'approved', '{}')"
        )
        await conn.execute(
            "INSERT INTO deliveries (conversion_id, history_id, traffic_source_id, campaign_id,"
            " status, currency) VALUES (999, 999, 3, 1, 'approved', 'USD')"
        )
        assert (await migrate(dsn))[0] == "0017_conversion_click_time.sql"  # then any later
        for table in ("conversion_history", "deliveries"):
            found = await conn.fetch(
                f"SELECT t.conversion_click_time AS carried, c.click_time,"
                f"       t.conversion_click_time = '-infinity' AS nowhere"
                f" FROM {table} t LEFT JOIN conversions c ON c.id = t.conversion_id"
            )
            assert len(found) == 4, table
            assert sorted(r["carried"] for r in found if r["click_time"] is not None) == sorted(
                MONTHS
            ), table
            assert [r["nowhere"] for r in found if r["click_time"] is None] == [True], table
            nullable = await conn.fetchval(
                "SELECT NOT attnotnull FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attname = 'conversion_click_time'",
                table,
            )
            assert nullable is False, table
    finally:
        await conn.close()
