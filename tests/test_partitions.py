"""Time partitions: the migration that made them, pruning, create-on-miss, maintenance and
retention."""

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import fresh_database, migrate_to, usd_conversion, wait_for_sink
from tests.test_cli import env_for
from tests.test_housekeeping import log_unmatched
from tests.test_postback import make_click
from tracker.devstack import PostgresServer, free_port
from tracker.domain.clickid import click_ms, click_time, new_click_id
from tracker.sink.clicks import ClickSink
from tracker.sink.housekeeping import Housekeeper
from tracker.sink.orphans import orphan_matcher
from tracker.store import keys
from tracker.store.clicks import SELECT_CLICK
from tracker.store.conversions import LOCK_CONVERSION, ConversionPostback, ConversionWriter
from tracker.store.db import create_pool, migrate
from tracker.store.partitions import (
    ensure_partitions,
    list_partitions,
    period_start,
    periods_ahead,
)
from tracker.store.postback_log import (
    SELECT_ORPHANS_WITH_CLICKS,
    Inbound,
    PostbackLog,
    unmatched_for,
    unmatched_query,
)
from tracker.store.retention import delete_finished_deliveries, maintain

NOW = datetime.now(UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def drop_partition(pool, table: str, moment: datetime) -> str:
    """Make sure the partition holding `moment` does not exist; return its name."""
    grain = "day" if table != "conversions" else "month"
    start = period_start(moment, grain)
    name = f"{table}_p{start:%Y%m%d}" if grain == "day" else f"{table}_p{start:%Y%m}"
    await pool.execute(f'DROP TABLE IF EXISTS "{name}"')
    return name


async def partition_names(pool, table: str) -> set[str]:
    return {p.name for p in await list_partitions(pool, table)}


# -- the click id's time, in Python and in Postgres ------------------------------------


async def test_sql_click_id_time_is_the_domain_click_time(pool):
    # Exact to the microsecond until about 2240 (to_timestamp takes a double).
    stamps = [0, 1, 999, 1_700_000_000_123, ms(NOW), 7_258_118_400_123]
    ids = [new_click_id(stamp) for stamp in stamps]
    rows = await pool.fetch(
        "SELECT id, click_id_time(id) AS t, click_created_at(id, 5) AS c"
        " FROM unnest($1::text[]) AS id",
        [*ids, "stored", "0" * 28, "W" * 29],
    )
    by_id = {row["id"]: (row["t"], row["c"]) for row in rows}
    for stamp, click_id in zip(stamps, ids, strict=True):
        assert click_time(click_id) == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            milliseconds=stamp
        )
        assert by_id[click_id] == (click_time(click_id), click_time(click_id))
        assert click_ms(click_id, 5) == stamp
    # Not click ids: no time from the id; the record's own time is used.
    assert by_id["stored"] == (None, datetime(1970, 1, 1, 0, 0, 0, 5000, tzinfo=UTC))
    assert click_time("stored") is None and click_ms("stored", 5) == 5


def test_periods_ahead_cross_month_and_year_ends():
    end_of_year = datetime(2026, 12, 30, 23, 59, tzinfo=UTC)
    assert [d.day for d in periods_ahead(end_of_year, "day", 3)] == [30, 31, 1, 2]
    assert [(m.year, m.month) for m in periods_ahead(end_of_year, "month", 2)] == [
        (2026, 12),
        (2027, 1),
        (2027, 2),
    ]


# -- the migration from unpartitioned tables ---------------------------------------------


async def test_migration_keeps_every_row_and_id_sequence(servers, tmp_path):
    dsn = await fresh_database(servers, "migrate_partitions")
    await migrate_to(dsn, 14, tmp_path / "old")
    conn = await asyncpg.connect(dsn)
    try:
        # Clicks over 60 days, conversions over four months, log rows over 30 days; ids
        # used and given back, so the sequences are ahead of the rows.
        moments = [NOW - timedelta(days=d, hours=d) for d in range(0, 60, 3)]
        await conn.executemany(
            "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id,"
            " traffic_source_id, cost) VALUES ($1, $2, 1, 2, 3, 0.5)",
            [(new_click_id(ms(m)), m) for m in moments],
        )
        await conn.executemany(
            "INSERT INTO conversions (click_id, dedupe_key, txid, campaign_id, offer_id,"
            " traffic_source_id, click_time, payout, currency, original_payout,"
            " original_currency, status, params)"
            " VALUES ($1, $2, $2, 1, 2, 3, $3, 1.5, 'USD', 1.5, 'USD', 'approved', '{}')",
            [(f"c{i}", f"t{i}", NOW - timedelta(days=9 * i)) for i in range(14)],
        )
        await conn.execute("DELETE FROM conversions WHERE txid = 't13'")
        await conn.execute(
            "INSERT INTO conversion_history (conversion_id, new_status, params)"
            " SELECT id, status, '{}' FROM conversions"
        )
        await conn.executemany(
            "INSERT INTO postback_log (received_at, result, method, raw, params, receipt_id)"
            " VALUES ($1, 'created', 'GET', '', '{}', $2)",
            [(NOW - timedelta(days=d), f"r{d}") for d in range(30)],
        )
        await conn.execute("DELETE FROM postback_log WHERE receipt_id = 'r0'")
        before = {
            table: sorted(tuple(r) for r in await conn.fetch(f"SELECT {table}::text FROM {table}"))
            for table in ("clicks", "conversions", "postback_log")
        }
        next_ids = {
            table: await conn.fetchval(f"SELECT last_value FROM {table}_id_seq")
            for table in ("conversions", "postback_log")
        }
        applied = await migrate(dsn)  # 0015, and the later ones on the partitioned tables
        assert applied[0] == "0015_time_partitions.sql"
        for table, rows in before.items():
            after = sorted(tuple(r) for r in await conn.fetch(f"SELECT {table}::text FROM {table}"))
            assert after == rows, table
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE relname = $1", table
            )
            assert kind == "p"
        # The sequences go on from where they were, past ids given back.
        for table, last in next_ids.items():
            new_id = await conn.fetchval("SELECT nextval(pg_get_serial_sequence($1, 'id'))", table)
            assert new_id == last + 1
        # Every row has its partition, and the days ahead exist.
        clicks = await list_partitions(conn, "clicks")
        # (Months before this one are one partition each: see the test of years of history.)
        assert all(any(p.starts <= m < p.ends for p in clicks) for m in moments)
        assert {period_start(m, "day") for m in moments if m >= period_start(NOW, "month")} <= {
            p.starts for p in clicks
        }
        assert period_start(NOW + timedelta(days=7), "day") in {p.starts for p in clicks}
        months = {p.starts for p in await list_partitions(conn, "conversions")}
        assert {period_start(NOW - timedelta(days=9 * i), "month") for i in range(13)} <= months
        # The foreign keys a partitioned conversions table cannot have are gone.
        assert not await conn.fetchval(
            "SELECT count(*) FROM pg_constraint WHERE confrelid = 'conversions'::regclass"
        )
    finally:
        await conn.close()


# -- by-id lookups touch one partition ---------------------------------------------------


def scanned_partitions(plan: list[dict], prefix: str) -> set[str]:
    found = set()

    def walk(node: dict) -> None:
        name = node.get("Relation Name", "")
        if name.startswith(prefix) and node.get("Actual Loops", 1) > 0:
            found.add(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_lookups_by_id_touch_one_partition(pool, plan_mode):
    moments = [NOW - timedelta(days=d) for d in (0, 1, 2, 35, 70)]
    await ensure_partitions(pool, "clicks", moments)
    await ensure_partitions(pool, "conversions", moments)
    assert len(await list_partitions(pool, "clicks")) > 5
    click_id = new_click_id(ms(moments[3]))
    await pool.execute(
        "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id, traffic_source_id)"
        " VALUES ($1, click_id_time($1), 1, 2, 3)",
        click_id,
    )
    async with pool.acquire() as conn:
        await conn.execute(f"SET plan_cache_mode = {plan_mode}")
        try:
            explain = "EXPLAIN (ANALYZE, FORMAT JSON) "
            plan = orjson.loads(await conn.fetchval(explain + SELECT_CLICK, click_id))
            assert scanned_partitions(plan, "clicks_p") == {
                f"clicks_p{period_start(moments[3], 'day'):%Y%m%d}"
            }
            plan = orjson.loads(
                await conn.fetchval(explain + LOCK_CONVERSION, click_id, "", click_ms(click_id, 0))
            )
            assert scanned_partitions(plan, "conversions_p") == {
                f"conversions_p{period_start(moments[3], 'month'):%Y%m}"
            }
            # The orphan sweep probes each orphan's click in its partition only.
            await conn.execute(
                "INSERT INTO postback_log (click_id, result, method, raw, params)"
                " VALUES ($1, 'unmatched', 'GET', '', '{}')",
                click_id,
            )
            plan = orjson.loads(
                await conn.fetchval(explain + SELECT_ORPHANS_WITH_CLICKS, NOW, 10, [])
            )
            assert scanned_partitions(plan, "clicks_p") == {
                f"clicks_p{period_start(moments[3], 'day'):%Y%m%d}"
            }
        finally:
            await conn.execute("RESET plan_cache_mode")


# -- a row never lost for want of a partition ---------------------------------------------


def click_record(moment: datetime, **extra) -> dict:
    return {
        "click_id": new_click_id(ms(moment)),
        "created_ms": ms(moment),
        "campaign_id": 1,
        "offer_id": 1,
        "traffic_source_id": 1,
        "is_bot": False,
        "lander_id": None,
        "is_unique": True,
        **extra,
    }


@pytest.mark.faults
async def test_clicks_far_in_the_past_or_future_land(redis, pool, sink):
    """A click replayed from a spool 40 days late, one from a clock 10 days ahead, and a
    lander click-through of a click whose day has no partition: all stored."""
    past, future, other = (
        NOW - timedelta(days=40),
        NOW + timedelta(days=10),
        NOW - timedelta(days=41),
    )
    dropped = [await drop_partition(pool, "clicks", m) for m in (past, future, other)]
    records = [click_record(past), click_record(future)]
    through = {**click_record(other, lander_id=3), "lp_ms": ms(other) + 5000}
    for record in [*records, through]:
        await redis.xadd(keys.CLICK_STREAM, {"d": orjson.dumps(record)})
    await wait_for_sink(sink)
    stored = {
        row["click_id"]: row["created_at"]
        for row in await pool.fetch("SELECT click_id, created_at FROM clicks")
    }
    sent = [*records, through]
    lost = [r["click_id"] for r in sent if r["click_id"] not in stored]
    dead = await pool.fetchval("SELECT count(*) FROM click_dead_letters")
    print(f"clicks sent {len(sent)}, stored {len(stored)}, lost {len(lost)}, dead letters {dead}")
    assert lost == [] and dead == 0
    for record in sent:
        assert stored[record["click_id"]] == click_time(record["click_id"])
    assert set(dropped) <= await partition_names(pool, "clicks")
    assert await pool.fetchval("SELECT sum(lp_clicks) FROM click_rollups") == 1


def postback(click: dict, txid: str, received_at: datetime) -> ConversionPostback:
    inbound = Inbound(params={"txid": txid}, method="GET", raw="", received_at=received_at)
    return usd_conversion(click, txid, inbound=inbound)


@pytest.mark.faults
async def test_conversions_and_log_rows_without_a_partition_land(pool):
    """A late postback for a click whose month has no partition, logged on a day that has
    none either; an update of it; and a log row from a clock 20 days ahead."""
    old_click = NOW - timedelta(days=130)
    ahead = NOW + timedelta(days=20)
    await drop_partition(pool, "conversions", old_click)
    await drop_partition(pool, "postback_log", ahead)
    click = click_record(old_click)
    writer = ConversionWriter(pool)
    log = PostbackLog(pool)
    await writer.start()
    await log.start()
    try:
        created = await writer.record(postback(click, "T1", ahead))
        rejection = postback(click, "T1", ahead + timedelta(seconds=1))
        updated = await writer.record(replace(rejection, status="rejected"))
        await drop_partition(pool, "postback_log", ahead + timedelta(days=1))
        await log.append(
            Inbound(params={}, method="GET", raw="", received_at=ahead + timedelta(days=1)),
            _Outcome(),
        )
    finally:
        await writer.close()
        await log.close()
    assert created[0] == "created" and updated == ("updated", created[1])
    row = await pool.fetchrow("SELECT status, click_time FROM conversions")
    assert (row["status"], row["click_time"]) == ("rejected", click_time(click["click_id"]))
    logged = await pool.fetchval("SELECT count(*) FROM postback_log")
    conversions = await pool.fetchval("SELECT count(*) FROM conversions")
    print(f"conversions written {conversions} of 1, log rows {logged} of 3")
    assert (conversions, logged) == (1, 3)


@dataclass(frozen=True)
class _Outcome:
    # A dataclass, as the processor's outcomes are: the log serialises it as it is.
    result: str = "unmatched"
    reason: str = "unknown click id"
    conversion_id: int | None = None
    network_id: int | None = None
    click_id: str = "nothing"


async def test_writers_racing_for_one_missing_partition_all_succeed(pool):
    moment = NOW + timedelta(days=33)
    name = await drop_partition(pool, "clicks", moment)
    made = await asyncio.gather(*(ensure_partitions(pool, "clicks", [moment]) for _ in range(4)))
    assert sorted(len(m) for m in made) == [0, 0, 0, 1] and made[made.index([name])] == [name]


# -- maintenance and retention ------------------------------------------------------------


async def insert_click(pool, moment: datetime) -> str:
    await ensure_partitions(pool, "clicks", [moment])
    click_id = new_click_id(ms(moment))
    await pool.execute(
        "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id, traffic_source_id)"
        " VALUES ($1, click_id_time($1), 1, 2, 3)",
        click_id,
    )
    return click_id


async def test_maintain_creates_ahead_and_drops_only_what_is_old(settings, pool):
    settings = settings.model_copy(update={"click_retention_days": 90})
    ahead_day = NOW + timedelta(days=settings.partition_days_ahead)
    ahead_month = periods_ahead(NOW, "month", settings.partition_months_ahead)[-1]
    await drop_partition(pool, "clicks", ahead_day)
    await drop_partition(pool, "postback_log", ahead_day)
    await drop_partition(pool, "conversions", ahead_month)
    old = await insert_click(pool, NOW - timedelta(days=92))  # its whole day is past
    inside = await insert_click(pool, NOW - timedelta(days=89))  # one day inside: kept
    # Rollups and conversions of old clicks stay whatever happens to the clicks.
    await pool.execute(
        "INSERT INTO click_rollups (day, campaign_id, offer_id, traffic_source_id, clicks, cost)"
        " VALUES ($1, 1, 2, 3, 1, 0)",
        (NOW - timedelta(days=92)).date(),
    )
    await ensure_partitions(pool, "conversions", [NOW - timedelta(days=400)])
    await pool.execute(
        "INSERT INTO conversions (click_id, dedupe_key, campaign_id, offer_id, traffic_source_id,"
        " click_time, payout, currency, original_payout, original_currency, status, params)"
        " VALUES ($1, '', 1, 2, 3, click_id_time($1), 1, 'USD', 1, 'USD', 'approved', '{}')",
        new_click_id(ms(NOW - timedelta(days=400))),
    )
    conversion_months = await partition_names(pool, "conversions")

    done = await maintain(pool, settings, NOW)

    old_day = f"clicks_p{NOW - timedelta(days=92):%Y%m%d}"
    assert old_day in done.dropped and not done.clamped and done.click_days == 90
    assert f"clicks_p{ahead_day:%Y%m%d}" in done.created
    assert f"postback_log_p{ahead_day:%Y%m%d}" in done.created
    assert f"conversions_p{ahead_month:%Y%m}" in done.created
    clicks = await list_partitions(pool, "clicks")
    assert all(p.ends > NOW - timedelta(days=90) for p in clicks)
    assert [r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")] == [inside]
    assert old not in {r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")}
    assert await pool.fetchval("SELECT count(*) FROM click_rollups") == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    assert conversion_months <= await partition_names(pool, "conversions")
    # A second round has nothing left to do.
    again = await maintain(pool, settings, NOW)
    assert (again.created, again.dropped) == ([], [])


async def test_click_retention_never_beats_an_attribution_window(settings, pool, api):
    setup = await api.setup_campaign()
    await api.call(
        "PATCH", f"/api/campaigns/{setup['campaign']['id']}", json={"attribution_window_days": 120}
    )
    settings = settings.model_copy(update={"click_retention_days": 30})
    kept = await insert_click(pool, NOW - timedelta(days=100))
    await insert_click(pool, NOW - timedelta(days=125))
    done = await maintain(pool, settings, NOW)
    assert done.clamped and done.click_days == 121
    assert any("raised to 121 days" in line for line in done.lines())
    assert [r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")] == [kept]
    # 0 keeps clicks for ever.
    forever = await maintain(pool, settings.model_copy(update={"click_retention_days": 0}), NOW)
    assert forever.click_days == 0 and not any(d.startswith("clicks_") for d in forever.dropped)


async def test_the_sink_maintains_periodically(settings, pool, redis):
    settings = settings.model_copy(update={"maintain_seconds": 0.05})
    async with orphan_matcher(pool, redis, settings) as matcher:
        keeper = Housekeeper(pool, matcher, settings)
        await keeper.start()
        try:
            for round_ in range(2):  # at start, and again later
                await insert_click(pool, NOW - timedelta(days=300 + round_))
                deadline = time.monotonic() + 10
                while await pool.fetchval("SELECT count(*) FROM clicks"):
                    assert time.monotonic() < deadline, "old clicks were not dropped"
                    await asyncio.sleep(0.05)
        finally:
            await keeper.close()
    ahead = f"clicks_p{NOW + timedelta(days=settings.partition_days_ahead):%Y%m%d}"
    assert ahead in await partition_names(pool, "clicks")


async def test_finished_deliveries_are_deleted_and_pending_ones_stay(pool):
    def delivery(n: int, state: str, age_days: int | None, finished_days: int | None):
        created = NOW - timedelta(days=age_days or 0)
        finished = None if finished_days is None else NOW - timedelta(days=finished_days)
        return (n, n, state, created, finished)

    rows = [
        delivery(1, "pending", 100, None),  # still trying: stays
        delivery(2, "delivered", 50, 45),  # gone
        delivery(3, "dead", 50, 40),  # gone
        delivery(4, "delivered", 20, 10),  # recent: stays
        delivery(5, "dead", 40, 20),  # finished recently: stays
    ]
    await pool.executemany(
        "INSERT INTO deliveries (conversion_id, conversion_click_time, history_id,"
        " traffic_source_id, campaign_id, status, currency, state, created_at, finished_at)"
        " VALUES ($1, $4, $2, 1, 1, 'approved', 'USD', $3, $4, $5)",
        rows,
    )
    await pool.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempted_at)"
        " SELECT id, created_at FROM deliveries"
    )
    assert await delete_finished_deliveries(pool, NOW - timedelta(days=30), batch=1) == 2
    left = [r["conversion_id"] for r in await pool.fetch("SELECT * FROM deliveries ORDER BY 1")]
    assert left == [1, 4, 5]
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 3


async def test_tracker_maintain_prints_what_it_did(settings, pool):
    ahead = NOW + timedelta(days=3)
    name = await drop_partition(pool, "clicks", ahead)
    await insert_click(pool, NOW - timedelta(days=200))
    old = f"clicks_p{NOW - timedelta(days=200):%Y%m%d}"
    env = env_for(settings, free_port())
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "maintain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"created partition {name}" in lines
    assert f"dropped partition {old}" in lines
    assert lines[-1].startswith("created ") and "deleted 0 finished deliveries" in lines[-1]
    print(done.stdout)


# -- review: create-on-miss whatever language the server speaks ---------------------------


@pytest.fixture
async def german_postgres(monkeypatch):
    """A Postgres of this test's own whose messages are in German, as on a server set up
    with a German locale (its `lc_messages`); the suite's servers speak English."""
    root = Path(tempfile.mkdtemp(prefix="tracker-german-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port(), fast_unsafe=True)
    monkeypatch.setenv("LANGUAGE", "de")  # gettext's choice when lc_messages is not plain C
    try:
        await asyncio.to_thread(pg.start)
        monkeypatch.delenv("LANGUAGE")
        conn = await asyncpg.connect(pg.dsn())
        try:
            await conn.execute("ALTER DATABASE tracker SET lc_messages = 'C.UTF-8'")
        finally:
            await conn.close()
        await migrate(pg.dsn())
        yield pg
    finally:
        await asyncio.to_thread(pg.stop)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.faults
async def test_rows_land_without_a_partition_on_a_server_speaking_german(german_postgres, redis):
    """A click, a conversion and log rows that meet no partition are stored even when the
    server words its errors in another language than English."""
    pool = await create_pool(german_postgres.dsn(), 1, 4)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError, match="Division durch Null"):
            await pool.execute("SELECT 1 / 0")
        far = NOW + timedelta(days=40)  # past every partition made ahead
        click = click_record(far)
        sink = ClickSink(redis, pool, consumer="german")
        await sink.store([(b"1-0", {b"d": orjson.dumps(click)})])
        writer, log = ConversionWriter(pool), PostbackLog(pool)
        await writer.start()
        await log.start()
        failures = []
        try:
            old_click = click_record(NOW - timedelta(days=130))  # a month with no partition
            for write in (
                writer.record(postback(old_click, "T1", far)),
                log.append(
                    Inbound(params={}, method="GET", raw="", received_at=far + timedelta(days=1)),
                    _Outcome(),
                ),
            ):
                try:
                    await write
                except Exception as exc:
                    failures.append(exc)
        finally:
            await writer.close()
            await log.close()
        clicks = await pool.fetchval("SELECT count(*) FROM clicks")
        dead = await pool.fetchval("SELECT count(*) FROM click_dead_letters")
        conversions = await pool.fetchval("SELECT count(*) FROM conversions")
        logged = await pool.fetchval("SELECT count(*) FROM postback_log")
    finally:
        await pool.close()
    print(
        f"german server: clicks stored {clicks} of 1 (dead letters {dead}), conversions "
        f"{conversions} of 1, log rows {logged} of 2, failed writes {len(failures)}"
    )
    assert (clicks, dead, conversions, logged, failures) == (1, 0, 1, 2, [])


# -- review: the orphans of a stored batch are looked up in their clicks' days only -------


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_orphans_of_stored_clicks_are_looked_up_from_their_clicks_day_on(pool, plan_mode):
    """After each batch of clicks it stores, the sink looks for postbacks that came before
    them: in the log's partitions from the clicks' days on, not in every day kept."""
    await ensure_partitions(pool, "postback_log", [NOW - timedelta(days=d) for d in range(40)])
    clicked = NOW - timedelta(days=3)
    click_id = new_click_id(ms(clicked))
    other = new_click_id(ms(NOW))
    await pool.executemany(
        "INSERT INTO postback_log (click_id, received_at, result, method, raw, params)"
        " VALUES ($1, $2, 'unmatched', 'GET', '', '{}')",
        [(click_id, clicked + timedelta(minutes=5)), (other, NOW)],
    )
    found = await unmatched_for(pool, [click_id, other, "not-a-click-id"])
    assert sorted(inbound.received_at for _, inbound in found) == [
        clicked + timedelta(minutes=5),
        NOW,
    ]
    assert unmatched_query(["not-a-click-id"]) is None
    async with pool.acquire() as conn:
        await conn.execute(f"SET plan_cache_mode = {plan_mode}")
        try:
            found_query = unmatched_query([click_id, other])
            assert found_query is not None
            query, args = found_query
            plan = orjson.loads(
                await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + query, *args)
            )
        finally:
            await conn.execute("RESET plan_cache_mode")
    scanned = scanned_partitions(plan, "postback_log_p")
    kept = await list_partitions(pool, "postback_log")
    print(f"postback log partitions kept {len(kept)}, scanned for a batch's orphans {len(scanned)}")
    # None before the day before the oldest click (clocks of two hosts may differ).
    since = click_time(click_id) - timedelta(days=1)
    assert scanned and all(p.ends > since for p in kept if p.name in scanned)
    assert len([p for p in kept if p.ends <= since]) >= 30


# -- review: a long history migrates into few partitions ---------------------------------


async def test_migration_of_years_of_history_makes_monthly_partitions_before_this_month(
    servers, settings, tmp_path
):
    """Clicks were kept for ever before 0015: three years of them in daily partitions are
    thousands of tables made in one transaction, more locks than Postgres holds by default
    ("out of shared memory"). Months before the current one get one partition each, which
    retention drops once the whole month is past."""
    dsn = await fresh_database(servers, "migrate_history")
    await migrate_to(dsn, 14, tmp_path / "old")
    moments = [datetime.fromtimestamp(ms(NOW - timedelta(days=d)) / 1000, UTC) for d in range(1095)]
    pool = await create_pool(dsn, 1, 2)
    try:
        await pool.executemany(
            "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id,"
            " traffic_source_id) VALUES ($1, $2, 1, 2, 3)",
            [(new_click_id(ms(m)), m) for m in moments],
        )
        await pool.executemany(
            "INSERT INTO postback_log (received_at, result, method, raw, params, receipt_id)"
            " VALUES ($1, 'created', 'GET', '', '{}', $2)",
            [(m, f"r{i}") for i, m in enumerate(moments)],
        )
        applied = await migrate(dsn)  # 0015, and the later ones on the partitioned tables
        assert applied[0] == "0015_time_partitions.sql"
        this_month = period_start(NOW, "month")
        for table in ("clicks", "postback_log"):
            found = await list_partitions(pool, table)
            count = await pool.fetchval(f"SELECT count(*) FROM {table}")
            print(f"{table}: {count} rows over {len(moments)} days in {len(found)} partitions")
            assert count == len(moments)
            assert len(found) <= 37 + 31 + 8
            # Whole months before this one; days from its first on (and a week ahead).
            for p in found:
                if p.starts < this_month:
                    assert p.ends <= this_month and p.starts == period_start(p.starts, "month")
                else:
                    assert p.ends - p.starts == timedelta(days=1)
        # Today's rows go to today's partition.
        click_id = new_click_id(ms(NOW))
        await pool.execute(
            "INSERT INTO clicks (click_id, created_at, campaign_id, offer_id, traffic_source_id)"
            " VALUES ($1, click_id_time($1), 1, 2, 3)",
            click_id,
        )
        day = await pool.fetchval(
            "SELECT tableoid::regclass::text FROM clicks WHERE click_id = $1", click_id
        )
        assert day == f"clicks_p{NOW:%Y%m%d}"
        # A writer making room for a day of a month of history finds it has a partition.
        history_day = NOW - timedelta(days=400)
        assert await ensure_partitions(pool, "clicks", [history_day, NOW]) == []
        # Retention drops the months wholly past it, and keeps every row it should keep.
        keep = settings.model_copy(
            update={"click_retention_days": 90, "postback_log_retention_days": 90}
        )
        await maintain(pool, keep, NOW)
        cutoff = NOW - timedelta(days=90)
        for table, column in (("clicks", "created_at"), ("postback_log", "received_at")):
            left = await pool.fetchval(f"SELECT min({column}) FROM {table}")
            kept = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {column} >= $1", cutoff)
            assert kept == len([m for m in moments if m >= cutoff]) + (table == "clicks")
            # What is left older than the cutoff is in the cutoff's own (monthly) partition.
            assert period_start(cutoff, "month") <= left <= cutoff
    finally:
        await pool.close()


async def test_a_clock_far_ahead_drops_nothing_the_databases_clock_keeps(settings, pool):
    """A sink whose clock jumped a year ahead must not drop a year of clicks and log rows:
    retention is measured by the older of its clock and the database's."""
    settings = settings.model_copy(
        update={"click_retention_days": 30, "postback_log_retention_days": 30}
    )
    recent = await insert_click(pool, NOW - timedelta(days=2))
    await ensure_partitions(pool, "postback_log", [NOW - timedelta(days=2)])
    await pool.execute(
        "INSERT INTO postback_log (received_at, result, method, raw, params)"
        " VALUES ($1, 'unmatched', 'GET', '', '{}')",
        NOW - timedelta(days=2),
    )
    done = await maintain(pool, settings, NOW + timedelta(days=365))
    clicks = [r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")]
    logged = await pool.fetchval("SELECT count(*) FROM postback_log")
    print(f"clock a year ahead: dropped {done.dropped}; clicks {clicks}, log rows {logged}")
    assert clicks == [recent] and logged == 1


async def test_a_clock_far_ahead_deletes_no_recent_refused_log_row(settings, pool, redis):
    await ensure_partitions(pool, "postback_log", [NOW - timedelta(days=2)])
    await pool.execute(
        "INSERT INTO postback_log (received_at, result, method, raw, params)"
        " VALUES ($1, 'invalid', 'GET', '', '{}')",
        NOW - timedelta(days=2),
    )
    async with orphan_matcher(pool, redis, settings) as matcher:
        ahead = Housekeeper(pool, matcher, settings, clock=lambda: NOW + timedelta(days=365))
        assert await ahead.purge_log() == 0
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 1


async def test_sweep_converts_an_orphan_stamped_days_before_its_click(
    client, api, pool, redis, sink, settings
):
    """The batch hook looks for orphans from a day before their clicks on; one stamped
    earlier still (its host's clock two days behind) is converted by the periodic sweep."""
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    await wait_for_sink(sink)
    behind = datetime.now(UTC) - timedelta(days=2)
    await log_unmatched(pool, click_id, token, received_at=behind)
    await redis.delete(keys.click_key(click_id))
    async with orphan_matcher(pool, redis, settings) as matcher:
        await matcher.rematch([click_id])  # what the sink does after a batch: not found
        assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
        keeper = Housekeeper(pool, matcher, settings)
        assert await keeper.sweep_orphans() == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    assert await pool.fetchval("SELECT result FROM postback_log") == "created"


async def test_retention_drops_a_partition_an_operator_moved_to_another_schema(settings, pool):
    """Partitions are dropped by their catalog identity, quoted by Postgres, not by a name
    put between quotes: one moved to an archive schema was reported dropped and kept."""
    old = NOW - timedelta(days=200)
    await insert_click(pool, old)
    name = f"clicks_p{old:%Y%m%d}"
    await pool.execute("CREATE SCHEMA IF NOT EXISTS archive")
    try:
        await pool.execute(f"ALTER TABLE {name} SET SCHEMA archive")
        done = await maintain(pool, settings, NOW)
        assert f"archive.{name}" in done.dropped
        assert await pool.fetchval("SELECT to_regclass($1)", f"archive.{name}") is None
        assert await pool.fetchval("SELECT count(*) FROM clicks") == 0
    finally:
        await pool.execute("DROP SCHEMA archive CASCADE")
