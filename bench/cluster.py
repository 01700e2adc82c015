"""Clicks/s on one Redis against a 3-master, 3-replica Redis Cluster, in the same run.

Starts PostgreSQL, one Redis and a local cluster (tracker.devstack), then for each
phase a tracker web process and 1 or 2 sinks, driven by wrk on the click path:
one Redis; the cluster; the cluster with 2 sinks; the cluster with `WAIT 1` after
every click batch (TRACKER_REDIS_WAIT_REPLICAS=1). Prints requests/s, latency and the
sink's rows/s per phase (median of the runs) and writes JSON to bench/results/.
On a 2-core machine every server, the tracker, the sinks and wrk share the same two
cores: the cluster's six redis-servers cannot show what three machines would.
Usage: python bench/cluster.py [--runs 1] [--duration 5] [--connections 50]
"""

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import run as bench
from redis.asyncio import Redis

from tracker.demo import seed_demo
from tracker.devstack import RedisClusterServer
from tracker.store.db import migrate
from tracker.store.redis import create_redis

# (name, on the cluster, sinks, replicas each click batch waits for)
PHASES = [
    ("one_redis", False, 1, 0),
    ("cluster", True, 1, 0),
    ("cluster_2_sinks", True, 2, 0),
    ("cluster_wait_1", True, 1, 1),
]


async def phase(
    stack: bench.Stack,
    redis: Redis,
    pool: asyncpg.Pool,
    path: str,
    opts: argparse.Namespace,
    env: dict[str, str],
    sinks: int,
) -> list[dict[str, Any]]:
    for n in range(sinks):
        stack.start_process(f"sink{n}", "sink", **env)
    stack.start_process("serve", "serve", **env)
    try:
        await bench.wait_listening(stack.port)
        await asyncio.sleep(1.0)
        await bench.wrk(f"http://127.0.0.1:{stack.port}", "click.lua", [path], 2, opts.connections)
        return [
            await bench.click_run(stack, redis, pool, path, opts.duration, opts.connections)
            for _ in range(opts.runs)
        ]
    finally:
        for name in ["serve", *(f"sink{n}" for n in range(sinks))]:
            stack.stop_process(name)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    await run(parser.parse_args())


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Start the servers, run every phase, stop; the figures as a dict (also written to
    bench/results/). `bench/run.py` calls it as its cluster phase."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: run `make bench`, which installs it")
    root = Path(tempfile.mkdtemp(prefix="tracker-bench-cluster-"))
    root.chmod(0o755)
    stack = bench.Stack(root)
    cluster = RedisClusterServer(root / "cluster")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "runs": opts.runs,
        "duration_s": opts.duration,
        "connections": opts.connections,
    }
    print(f"cores={os.cpu_count()} runs={opts.runs} duration={opts.duration}s", flush=True)
    clients: list[Redis] = []
    try:
        stack.pg.start()
        stack.redis_server.start()
        cluster.start()
        await migrate(stack.pg.dsn())
        demo = await seed_demo(stack.pg.dsn())
        pool = await asyncpg.create_pool(stack.pg.dsn(), min_size=1, max_size=2)
        single = Redis.from_url(stack.redis_server.url())
        on_cluster = create_redis(cluster.url(), timeout=2.0, cluster=True)
        clients = [single, on_cluster]
        path = f"/c/{demo.campaign_key}"
        for name, clustered, sinks, wait in PHASES:
            env = {"TRACKER_REDIS_WAIT_REPLICAS": str(wait)}
            if clustered:
                env.update(TRACKER_REDIS_URL=cluster.url(), TRACKER_REDIS_CLUSTER="true")
            redis = on_cluster if clustered else single
            runs = await phase(stack, redis, pool, path, opts, env, sinks)
            label = f"{name} ({sinks} sink{'s' if sinks > 1 else ''}, WAIT {wait})"
            results[name] = bench.report_line(label, runs, ["rps", "p50_ms", "p99_ms"])
            results[name]["errors"] = sum(r["errors"] + r["bad_status"] for r in runs)
            results[f"sink_{name}"] = bench.report_line(
                "  sink", runs, ["sink_rows_per_s", "backlog_peak", "drain_s"]
            )
        one = results["one_redis"]["rps"]["median"]
        for name, *_ in PHASES[1:]:
            results[name]["ratio_to_one_redis"] = results[name]["rps"]["median"] / one
        out = bench.BENCH / "results"
        out.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = out / f"cluster-{stamp}.json"
        target.write_text(json.dumps(results, indent=2))
        print(f"written to {target}", flush=True)
        await pool.close()
    finally:
        for client in clients:
            await client.aclose()
        for name in list(stack.procs):
            stack.stop_process(name)
        cluster.stop()
        stack.redis_server.stop()
        stack.pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    asyncio.run(main())
