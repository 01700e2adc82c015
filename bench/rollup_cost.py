"""What a block rollup costs the sink: its click statement with and without the upsert of
one rollup (`click_monthly_geo` by default, `--table click_weekly_geo` for the weeks), on
the same batches' kind, alternating, in one run.

Starts its own PostgreSQL (the devstack's settings), rolls up UTC and America/New_York,
creates the report bench's 50 campaigns, and sends generated click batches (the report
bench's generator: 30 days in time order) through `tracker.sink.clicks.INSERT_CLICKS`,
every other batch through the same statement without that upsert. Prints the median
time per batch of each and their ratio.

Usage: python bench/rollup_cost.py [--clicks 400000] [--batch 5000]
"""

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import reports as rb

from tracker.devstack import PostgresServer, free_port
from tracker.sink.clicks import INSERT_CLICKS
from tracker.store import partitions
from tracker.store.db import create_pool, migrate
from tracker.store.rollups import (
    CLICK_ROLLUPS,
    ROLLUP_COUNTERS,
    add_to_rollup,
    sync_rollup_zones,
    zone_rollup_keys,
)


def without_upsert(table: str) -> str:
    """The sink's click statement without the upsert of `table`."""
    fact, grain = CLICK_ROLLUPS[table]
    upsert = (
        f"\n, {table}_moved AS ("
        + add_to_rollup(
            table,
            zone_rollup_keys(fact, grain),
            "counted CROSS JOIN rollup_zones z",
            ROLLUP_COUNTERS,
        )
        + "\n)"
    )
    assert upsert in INSERT_CLICKS
    return INSERT_CLICKS.replace(upsert, "")


class Batches(list[str]):
    def put(self, body: str | None) -> None:
        if body is not None:
            self.append(body)


async def run(opts: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="tracker-rcost-"))
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port())
    first = datetime.now(UTC).date() - timedelta(days=30)
    start_ms = int(datetime.combine(first, datetime.min.time(), UTC).timestamp() * 1000)
    batches = Batches()
    rb.generate(batches, opts.clicks, 30, start_ms, opts.batch, 50, 1)
    try:
        pg.start()
        await migrate(pg.dsn())
        pool = await create_pool(pg.dsn(), min_size=1, max_size=2, pg_timeout=600)
        await sync_rollup_zones(pool, rb.ZONES)
        await rb.create_world(pool, rb.world(50, 1))
        moments = [datetime.combine(first + timedelta(days=d), datetime.min.time(), UTC)
                   for d in range(31)]  # fmt: skip
        await partitions.ensure_partitions(pool, "clicks", moments)
        without = without_upsert(opts.table)
        times: dict[str, list[float]] = {"with": [], "without": []}
        async with pool.acquire() as conn:
            for i, body in enumerate(batches):
                name, statement = ("with", INSERT_CLICKS) if i % 2 else ("without", without)
                started = time.perf_counter()
                await conn.execute(statement, body, timeout=None)
                times[name].append((time.perf_counter() - started) * 1000)
        await pool.close()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    medians: dict[str, Any] = {k: statistics.median(v) for k, v in times.items()}
    for name, ms in medians.items():
        print(f"{name:<12} {len(times[name])} batches of {opts.batch:,}: median {ms:7.1f} ms, "
              f"{opts.batch / ms * 1000:,.0f} clicks/s")  # fmt: skip
    print(f"with / without {opts.table}: {medians['with'] / medians['without']:.3f} x the time "
          "per batch")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--table", default="click_monthly_geo", choices=sorted(CLICK_ROLLUPS))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
