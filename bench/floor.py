"""How close the issue-14 goals sit to the floor: the bare 302, then bench/floor_app.py (the
click's durable batched write and the postback's batched read and one-statement write,
and nothing else), measured in the same run with the same loads as bench/run.py.

Prints, per load, requests/s, p99 and the app's CPU per request (median [min..max]), and
the floor's ratios to the bare app: what the tracker's own work has to fit under.
Usage: python bench/floor.py [--runs 3] [--duration 6] [--connections 50]
"""

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from floor_app import CLICK_KEY, CLICK_RECORD
from run import BENCH, few_connections, report_line, wait_listening, wrk

from tracker.devstack import PostgresServer, RedisServer, free_port
from tracker.store.redis import create_redis

FLOOR_CLICKS = 100_000
MEASURED = ["rps", "p99_ms", "cpu_us", "failed"]


async def store_clicks(redis_url: str, ids_file: Path) -> None:
    """Clicks for the floor's postbacks to convert, and their ids for postback.lua."""
    redis = create_redis(redis_url, timeout=10)
    record = orjson.dumps(CLICK_RECORD)
    ids = [f"floor{i:07d}" for i in range(FLOOR_CLICKS)]
    for start in range(0, len(ids), 5000):
        await redis.mset({CLICK_KEY + i: record for i in ids[start : start + 5000]})
    await redis.aclose()
    ids_file.write_text("\n".join(ids) + "\n")


async def measure(
    script_args: list[str],
    loads: list[tuple[str, str, list[str], int]],
    opts: argparse.Namespace,
) -> dict[str, Any]:
    """Start the app (`script_args` after its port), then per load (name, wrk script, its
    arguments, connections): warm, run, summarize."""
    port = free_port()
    app = subprocess.Popen([sys.executable, script_args[0], str(port), *script_args[1:]])
    results: dict[str, Any] = {}
    try:
        await wait_listening(port)
        url = f"http://127.0.0.1:{port}"
        for n, (name, script, args, connections) in enumerate(loads):
            # Each load and run its own tag: postback.lua makes its txids from it, and a
            # txid used before would make a duplicate, not a conversion.
            await wrk(url, script, [*args, f"w{n}"], 2, connections)
            runs = []
            for i in range(opts.runs):
                tag = f"l{n}r{i}"
                run = await wrk(url, script, [*args, tag], opts.duration, connections, app.pid)
                run["failed"] = run["errors"] + run["bad_status"]  # a floor that fails is none
                runs.append(run)
            results[name] = report_line(name, runs, MEASURED)
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=30)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=50)
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tracker-floor-"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when we are root
    redis = RedisServer(root / "redis", free_port())
    postgres = PostgresServer(root / "pg", free_port())
    redis.start()
    postgres.start()
    try:
        ids = root / "ids.txt"
        await store_clicks(redis.url(), ids)
        few = few_connections(opts.connections)
        print(f"runs={opts.runs} duration={opts.duration}s; median [min..max]", flush=True)
        bare = await measure(
            [str(BENCH / "baseline_app.py")],
            [("bare 302", "click.lua", ["/c/floor"], opts.connections)],
            opts,
        )
        floor = await measure(
            [str(BENCH / "floor_app.py"), redis.url(), postgres.dsn()],
            [
                ("floor click", "click.lua", ["/c/floor"], opts.connections),
                ("floor postback", "postback.lua", [str(ids), "floor"], opts.connections),
                (f"floor postback {few}", "postback.lua", [str(ids), "floor"], few),
            ],
            opts,
        )
    finally:
        redis.stop()
        postgres.stop()
    base, click = bare["bare 302"], floor["floor click"]
    cpu_ratio = click["cpu_us"]["median"] / base["cpu_us"]["median"]
    rps_ratio = click["rps"]["median"] / base["rps"]["median"]
    print(f"floor click / bare: cpu {cpu_ratio:.2f}x, requests/s {rps_ratio:.2f}x", flush=True)
    out = BENCH / "results" / f"floor-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**bare, **floor, "cpu_ratio": cpu_ratio, "rps_ratio": rps_ratio}))
    print(f"written {out}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
