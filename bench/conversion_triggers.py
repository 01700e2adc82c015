"""Cost of the conversion rollups (migration 0016) to the writers of conversions.

Starts its own PostgreSQL, rolls up UTC and America/New_York, and times transactions
that insert a batch of conversions and then approve them (what a postback and its status
change do), alternately with the triggers on `conversions` enabled and disabled; then
the sink's fold of the changes recorded into the rollups.
Usage: python bench/conversion_triggers.py [--batches 300] [--rounds 3]
"""

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from tracker.devstack import PostgresServer, free_port
from tracker.store.db import migrate
from tracker.store.rollups import fold_conversion_changes, sync_rollup_zones

# Conversions over 50 campaigns, 4 offers, 4 countries, clicks over the last 30 days.
INSERT = """
INSERT INTO conversions (
    click_id, dedupe_key, campaign_id, offer_id, traffic_source_id, click_time, payout,
    currency, original_payout, original_currency, status, params, country, lander_id
)
SELECT $1 || g, '', 1 + g % 50, 1 + g % 4, 1, now() - (g % 30) * interval '1 day', 1.5,
       'USD', 1.5, 'USD', 'pending', '{}', (ARRAY['US', 'DE', 'GB', 'FR'])[1 + g % 4],
       nullif(g % 3, 0)
FROM generate_series(1, $2) g
"""
APPROVE = "UPDATE conversions SET status = 'approved' WHERE click_id LIKE $1 || '%'"


async def timed(conn: asyncpg.Connection, label: str, batches: int, size: int) -> float:
    """Milliseconds per transaction."""
    started = time.perf_counter()
    for i in range(batches):
        async with conn.transaction():
            await conn.execute(INSERT, f"{label}{i}-", size)
            await conn.execute(APPROVE, f"{label}{i}-")
    return (time.perf_counter() - started) * 1000 / batches


async def run(opts: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="tracker-trigbench-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port())
    try:
        pg.start()
        await migrate(pg.dsn())
        conn = await asyncpg.connect(pg.dsn())
        pool = await asyncpg.create_pool(pg.dsn(), min_size=1, max_size=1)
        await sync_rollup_zones(pool, ("UTC", "America/New_York"))
        await pool.close()
        for size in (1, 20):
            extra = []
            for n in range(opts.rounds):
                on = await timed(conn, f"on{size}-{n}-", opts.batches, size)
                await conn.execute("ALTER TABLE conversions DISABLE TRIGGER USER")
                off = await timed(conn, f"off{size}-{n}-", opts.batches, size)
                await conn.execute("ALTER TABLE conversions ENABLE TRIGGER USER")
                extra.append(on - off)
                started = time.perf_counter()
                folded = await fold_conversion_changes(conn)
                fold_ms = (time.perf_counter() - started) * 1000
                print(f"fold of {folded:,} changes: {fold_ms:.0f} ms")
                print(f"batch of {size:2}: {on:6.2f} ms with rollups, {off:6.2f} ms without")
            median = statistics.median(extra)
            per = median / size
            print(
                f"batch of {size:2}: rollups add {median:.2f} ms per transaction (median), "
                f"{per:.3f} ms per conversion inserted and approved",
                flush=True,
            )
        await conn.close()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
