"""Benchmark of the hot paths against a bare aiohttp baseline measured in the same run.

Starts its own Redis, PostgreSQL, tracker and sink, drives them with wrk, and
prints requests/s and latency percentiles as the median of several runs (with
min and max), plus ratios to the baseline. Results are also written as JSON to
bench/results/. Usage: python bench/run.py [--runs 3] [--duration 8] [--connections 50]
[--no-cluster] (the cluster phase, bench/cluster.py, after the others: one Redis against a
3-master, 3-replica Redis Cluster) [--reports CLICKS] (the report phase, bench/reports.py,
last; off by default: a million clicks take about a minute to load, ten million about eight)
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import reports as report_bench
from redis.asyncio import Redis

from tracker.demo import Demo, seed_demo
from tracker.devstack import PostgresServer, RedisServer, free_port, wait_for_port
from tracker.store import keys
from tracker.store.db import migrate
from tracker.store.health import streams_backlog

BENCH = Path(__file__).resolve().parent


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def wait_listening(port: int) -> None:
    await asyncio.to_thread(wait_for_port, port, "server")


def _stat_fields(pid: int) -> list[str]:
    # The fields after the command name, which may itself hold spaces and parentheses.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (from /proc): steadier than throughput
    on a shared machine."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants, found by each process's parent in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone since the listing
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each process of the tree under `pid`."""
    used = {}
    for member in process_tree(pid):
        try:
            used[member] = process_cpu_seconds(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return used


class CpuMeter:
    """CPU time a process and its descendants use from the meter's creation on.

    A process that exits in between takes its share with it (a worker that dies and is
    restarted); one that starts in between counts in full."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = tree_cpu_seconds(pid)

    def seconds(self) -> float:
        now = tree_cpu_seconds(self.pid)
        return sum(used - self.before.get(member, 0.0) for member, used in now.items())


async def wrk(
    url: str,
    script: str,
    args: list[str],
    duration: int,
    connections: int,
    cpu_pid: int | None = None,
) -> dict[str, Any]:
    """One wrk run; with `cpu_pid`, also the CPU time that process and its children (the
    workers of `serve --workers N`) used over the run, per request answered (`cpu_us`)."""
    meter = CpuMeter(cpu_pid) if cpu_pid is not None else None
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(BENCH / script),
        url,
        "--",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    line = [ln for ln in out.decode().splitlines() if ln.startswith("{")][-1]
    raw = json.loads(line)
    seconds = raw["duration_us"] / 1e6
    result = {
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["errors"],
        "bad_status": raw["non_2xx_3xx"],
    }
    if meter is not None:
        result["cpu_us"] = meter.seconds() / max(raw["requests"], 1) * 1e6
    return result


class Stack:
    """Redis, PostgreSQL, and the tracker processes, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.pg = PostgresServer(root / "postgres", free_port())
        self.redis_server = RedisServer(root / "redis", free_port())
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TRACKER_DATABASE_URL=self.pg.dsn(),
            TRACKER_REDIS_URL=self.redis_server.url(),
            TRACKER_HTTP_PORT=str(self.port),
            TRACKER_API_KEY="bench",
            # wrk is the proxy: facts.lua sends each visitor's address in X-Forwarded-For.
            TRACKER_TRUSTED_PROXIES='["127.0.0.1"]',
            # The delivery phase posts back to a receiver on this machine.
            TRACKER_OUTBOUND_ALLOW_PRIVATE="true",
        )
        return env

    def start_process(self, name: str, *args: str, **env: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tracker", *args],
            env={**self.env(), **env},
            stderr=subprocess.DEVNULL,
        )

    def stop_process(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_process(name)
        self.redis_server.stop()
        self.pg.stop()


@dataclass
class Running:
    """A started stack, with the clients and the demo data the phases use."""

    root: Path
    stack: Stack
    pool: asyncpg.Pool
    redis: Redis
    demo: Demo

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.stack.port}"

    @property
    def path(self) -> str:
        """The demo campaign's click path: the plain click."""
        return f"/c/{self.demo.campaign_key}"

    async def start_serve(self, workers: int = 1) -> int:
        """`tracker serve` (with workers beyond one, its supervisor); its pid once it
        listens and has settled."""
        args = ["serve", "--workers", str(workers)] if workers > 1 else ["serve"]
        self.stack.start_process("serve", *args)
        await wait_listening(self.stack.port)
        await asyncio.sleep(1.0 if workers == 1 else 2.0)
        return self.stack.procs["serve"].pid

    async def drain_sink(self, limit_s: float = 300.0) -> None:
        """Until the sink has moved every click on the streams into Postgres."""
        deadline = time.monotonic() + limit_s
        while await sink_backlog(self.redis) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def postback_args(self, limit: int = 200000) -> list[str]:
        """postback.lua's arguments: a file of click ids from Postgres (the sink must have
        stored them), the demo's postback token, and a run tag (keeps txids unique)."""
        ids_file = self.root / "clickids.txt"
        rows = await self.pool.fetch("SELECT click_id FROM clicks LIMIT $1", limit)
        if not rows:
            raise SystemExit("no clicks in Postgres to post back for")
        ids_file.write_text("\n".join(r["click_id"] for r in rows) + "\n")
        return [str(ids_file), self.demo.postback_token, "0"]


@asynccontextmanager
async def running_stack(prefix: str = "tracker-bench-") -> AsyncIterator[Running]:
    """Redis and PostgreSQL in a temporary directory, migrated and seeded with the demo
    campaign; every process started in it is stopped and the directory removed on exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    stack = Stack(root)
    try:
        stack.pg.start()
        stack.redis_server.start()
        await migrate(stack.pg.dsn())
        demo = await seed_demo(stack.pg.dsn())
        pool = await asyncpg.create_pool(stack.pg.dsn(), min_size=1, max_size=2)
        redis = Redis.from_url(stack.redis_server.url())
        try:
            yield Running(root, stack, pool, redis, demo)
        finally:
            await redis.aclose()
            await pool.close()
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


async def sink_backlog(redis: Redis) -> int:
    return await streams_backlog(redis, keys.click_streams(keys.DEFAULT_SHARDS), keys.SINK_GROUP)


async def stored_clicks(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval("SELECT coalesce(sum(clicks + bot_clicks), 0) FROM click_rollups")
    )


async def click_run(
    stack: Stack,
    redis: Redis,
    pool: asyncpg.Pool,
    path: str,
    duration: int,
    connections: int,
    script: str = "click.lua",
) -> dict[str, Any]:
    """One wrk click run, with the sink watched during and after it: the serve process's
    CPU per click answered (`cpu_us`), the sinks' per click stored (`sink_cpu_us`)."""
    before = await stored_clicks(pool)
    sinks = [CpuMeter(proc.pid) for name, proc in stack.procs.items() if name.startswith("sink")]
    started = time.monotonic()
    peak = 0
    task = asyncio.create_task(
        wrk(
            f"http://127.0.0.1:{stack.port}",
            script,
            [path],
            duration,
            connections,
            cpu_pid=stack.procs["serve"].pid,
        )
    )
    while not task.done():
        peak = max(peak, await sink_backlog(redis))
        await asyncio.sleep(0.5)
    result = await task
    backlog_at_end = await sink_backlog(redis)
    ended = time.monotonic()
    while await sink_backlog(redis) > 0:
        if time.monotonic() - ended > 60:
            break
        await asyncio.sleep(0.05)
    drained = time.monotonic()
    stored = await stored_clicks(pool) - before
    sink_seconds = sum(meter.seconds() for meter in sinks)
    result.update(
        sink_rows_per_s=stored / (drained - started),
        sink_cpu_us=sink_seconds / max(stored, 1) * 1e6,
        backlog_peak=peak,
        backlog_at_end=backlog_at_end,
        drain_s=drained - ended,
        stored=stored,
    )
    return result


async def metrics_cost(stack: Stack, path: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Clicks with the metrics counted and with them off (TRACKER_METRICS_ENABLED=false),
    in alternating runs with the sink stopped, so that drift hits both alike; throughput,
    and the serve process's CPU time per click."""
    url = f"http://127.0.0.1:{stack.port}"
    by_mode: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(opts.runs):
        for mode in ("off", "on"):
            stack.stop_process("serve")
            stack.start_process("serve", "serve", TRACKER_METRICS_ENABLED=str(mode == "on"))
            await wait_listening(stack.port)
            await asyncio.sleep(1.0)
            await wrk(url, "click.lua", [path], 2, opts.connections)
            pid = stack.procs["serve"].pid
            run = await wrk(url, "click.lua", [path], opts.duration, opts.connections, pid)
            by_mode[mode].append(run)
    stack.stop_process("serve")
    stack.start_process("serve", "serve")
    await wait_listening(stack.port)
    figures = ["rps", "p50_ms", "p99_ms", "cpu_us"]
    line: dict[str, Any] = {
        "on": report_line("click, metrics on", by_mode["on"], figures),
        "off": report_line("click, metrics off", by_mode["off"], figures),
    }
    for figure in ("rps", "cpu_us"):
        pairs = [
            on[figure] / off[figure] for on, off in zip(by_mode["on"], by_mode["off"], strict=True)
        ]
        line[f"{figure}_on_over_off"] = summary = summarize(pairs)
        print(
            f"  {figure}, metrics on / off in paired runs: {summary['median']:.3f} "
            f"[{summary['min']:.3f}..{summary['max']:.3f}]",
            flush=True,
        )
    return line


async def settle(redis: Redis, pool: asyncpg.Pool) -> None:
    """Let background work left by the previous phase finish before measuring the next:
    Redis AOF rewrites and saves, Postgres autovacuum, and a checkpoint."""
    for _ in range(600):
        persistence = await redis.info("persistence")
        vacuums = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'autovacuum:%'"
        )
        busy = persistence.get("aof_rewrite_in_progress") or persistence.get(
            "rdb_bgsave_in_progress"
        )
        if not busy and not vacuums:
            break
        await asyncio.sleep(0.1)
    await pool.execute("CHECKPOINT")


async def create_flows_campaign(port: int, pool: asyncpg.Pool) -> str:
    """A campaign using every flow feature a direct link can: geo, device, parameter and
    hour rules, a second offer, bots sent elsewhere; its click path."""
    ids = await pool.fetchrow(
        "SELECT c.traffic_source_id, o.id AS offer_id, o.affiliate_network_id "
        "FROM campaigns c JOIN campaign_offers co ON co.campaign_id = c.id "
        "JOIN offers o ON o.id = co.offer_id ORDER BY c.id LIMIT 1"
    )
    headers = {"Authorization": "Bearer bench"}
    base = f"http://127.0.0.1:{port}/api"
    async with aiohttp.ClientSession(headers=headers) as http:
        offer_url = "https://offer2.example.com/?clickid={clickid}&geo={country}&os={os}"
        async with http.post(
            f"{base}/offers",
            json={
                "name": "Second offer",
                "url": offer_url,
                "affiliate_network_id": ids["affiliate_network_id"],
            },
        ) as resp:
            second = (await resp.json())["id"]
        body = {
            "name": "Flows campaign",
            "traffic_source_id": ids["traffic_source_id"],
            "offers": [
                {"offer_id": ids["offer_id"], "weight": 70},
                {"offer_id": second, "weight": 30},
            ],
            "cost_model": "auto",
            "bot_action": "url",
            "bot_url": "https://safe.example.com/?c={clickid}",
            "rules": [
                {
                    "name": "DACH iPhones",
                    "conditions": [
                        {"field": "country", "op": "in", "values": ["DE", "AT", "CH"]},
                        {"field": "os", "op": "in", "values": ["iOS"]},
                    ],
                    "offers": [{"offer_id": second, "weight": 1}],
                },
                {
                    "name": "Desktop zones at night",
                    "conditions": [
                        {"field": "device", "op": "in", "values": ["desktop"]},
                        {"field": "param:sub1", "op": "in", "values": ["zone1", "zone2", "zone3"]},
                        {"field": "hour", "op": "in", "values": [0, 1, 2, 3, 4, 5]},
                    ],
                    "offers": [{"offer_id": second, "weight": 1}],
                },
                {
                    "name": "Office networks",
                    "conditions": [{"field": "ip", "op": "in", "values": ["198.51.100.0/24"]}],
                    "offers": [{"offer_id": ids["offer_id"], "weight": 1}],
                },
            ],
        }
        async with http.post(f"{base}/campaigns", json=body) as resp:
            campaign = await resp.json()
            if resp.status != 201:
                raise SystemExit(f"flows campaign refused: {campaign}")
    return f"/c/{campaign['key']}"


# Conversions written as the conversion writer writes them (row and history row in one
# statement), each making one delivery through the outbox trigger.
INSERT_CONVERSIONS = """
WITH c AS (
    INSERT INTO conversions (click_id, dedupe_key, txid, campaign_id, offer_id,
        traffic_source_id, click_time, payout, currency, original_payout, original_currency,
        status, params, external_id)
    SELECT $1 || n, 'k', $1 || n, c.id,
           (SELECT offer_id FROM campaign_offers WHERE campaign_id = c.id LIMIT 1),
           c.traffic_source_id, now(), 1.25, 'USD', 1.25, 'USD', 'approved', '{}', 'ext' || n
    FROM generate_series(1, $2) n, campaigns c
    WHERE c.id = (SELECT min(id) FROM campaigns)
    RETURNING id, click_time, status, payout
)
INSERT INTO conversion_history
    (conversion_id, conversion_click_time, old_status, new_status, payout, params)
SELECT id, click_time, NULL, status, payout, '{}' FROM c
"""


async def delivered(pool: asyncpg.Pool, prefix: str) -> asyncpg.Record:
    return await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE d.state = 'delivered') AS done, count(*) AS total, "
        "extract(epoch FROM max(d.finished_at) - min(d.created_at)) AS span, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM "
        "d.finished_at - d.created_at)) AS p50, "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM "
        "d.finished_at - d.created_at)) AS p99 "
        "FROM deliveries d JOIN conversions c"
        " ON c.id = d.conversion_id AND c.click_time = d.conversion_click_time "
        "WHERE c.click_id LIKE $1 || '%'",
        prefix,
    )


async def deliveries_phase(pool: asyncpg.Pool, opts: argparse.Namespace) -> dict[str, Any]:
    """The sink's sender posting back to a local receiver: deliveries/s for a backlog
    written at once, and the delay from conversion to delivery at a steady rate."""
    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(BENCH / "baseline_app.py"), str(port)])
    try:
        await wait_listening(port)
        await pool.execute(
            "UPDATE traffic_sources SET postback_url = $1",
            f"http://127.0.0.1:{port}/pb?c={{external_id}}&p={{payout}}&d={{delivery_id}}",
        )
        rates = []
        for run in range(opts.runs):
            prefix, count = f"burst{run}-", 5000
            await pool.execute(INSERT_CONVERSIONS, prefix, count)
            while (row := await delivered(pool, prefix))["done"] < count:
                await asyncio.sleep(0.1)
            rates.append(count / float(row["span"]))
        # A steady 200 conversions/s, in 20 writes of 10 a second, for the run's duration.
        prefix = "steady-"
        writes = opts.duration * 20
        for i in range(writes):
            await pool.execute(INSERT_CONVERSIONS, f"{prefix}{i}-", 10)
            await asyncio.sleep(0.05)
        while (row := await delivered(pool, prefix))["done"] < writes * 10:
            await asyncio.sleep(0.1)
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(timeout=30)
    result = {
        "deliveries_per_s": summarize(rates),
        "steady_p50_ms": float(row["p50"]) * 1000,
        "steady_p99_ms": float(row["p99"]) * 1000,
    }
    rate = result["deliveries_per_s"]
    print(
        f"{'deliveries (5,000 at once)':<28}  per_s {rate['median']:.1f} "
        f"[{rate['min']:.1f}..{rate['max']:.1f}]",
        flush=True,
    )
    print(
        f"{'  conversion to delivery':<28}  at 200/s: p50_ms {result['steady_p50_ms']:.1f}  "
        f"p99_ms {result['steady_p99_ms']:.1f}",
        flush=True,
    )
    return result


# Issue 14's goals are stated at these connection counts.
GOAL_CONNECTIONS = 50
GOAL_FEW_CONNECTIONS = 16


def issue_14_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's goals worked out from one run's medians, each with its figure, target
    and whether it is met (None: the run did not measure it, e.g. other connection
    counts). Empty when the run had no --workers 1 phases."""
    phases = ["baseline", "clicks_workers_1", "clicks_workers_1_sink_stopped"]
    phases += ["clicks_full_facts", "postbacks", "postbacks_few_connections"]
    if any(phase not in results for phase in phases):
        return []

    def median(phase: str, figure: str) -> float:
        return float(results[phase][figure]["median"])

    connections = int(results["connections"])
    few = int(results["postbacks_few_connections"].get("connections", 0))
    base_cpu, base_rps = median("baseline", "cpu_us"), median("baseline", "rps")
    click_cpu, click_rps = median("clicks_workers_1", "cpu_us"), median("clicks_workers_1", "rps")
    alone_rps = median("clicks_workers_1_sink_stopped", "rps")
    facts_rps = median("clicks_full_facts", "rps")
    rows: list[dict[str, Any]] = []

    def goal(
        text: str,
        value: float,
        op: str,
        limit: float,
        unit: str,
        detail: str = "",
        ran_at: int | None = None,
        wanted: int | None = None,
    ) -> None:
        met: bool | None = value <= limit if op == "<=" else value >= limit
        if ran_at != wanted:
            met, detail = None, f"ran at {ran_at} connections, the goal is at {wanted}"
        rows.append(
            {
                "goal": text,
                "value": value,
                "unit": unit,
                "target": f"{op} {limit:g}{unit}",
                "detail": detail,
                "met": met,
            }
        )

    goal(
        "plain click: serve CPU per click / baseline's per request",
        click_cpu / base_cpu,
        "<=",
        1.5,
        "x",
        f"{click_cpu:.1f} / {base_cpu:.1f} us",
    )
    goal(
        "plain click rps / baseline, sink stopped",
        alone_rps / base_rps,
        ">=",
        0.6,
        "x",
        f"{alone_rps:.0f} / {base_rps:.0f} per s",
    )
    goal(
        "plain click rps / baseline, sink running",
        click_rps / base_rps,
        ">=",
        0.55,
        "x",
        f"{click_rps:.0f} / {base_rps:.0f} per s",
    )
    for phase, label in [
        ("clicks_workers_1", "sink running"),
        ("clicks_workers_1_sink_stopped", "sink stopped"),
    ]:
        goal(
            f"plain click p99 at {GOAL_CONNECTIONS} connections, {label}",
            median(phase, "p99_ms"),
            "<=",
            10,
            " ms",
            ran_at=connections,
            wanted=GOAL_CONNECTIONS,
        )
    goal(
        "full facts click rps / plain click (sink running)",
        facts_rps / click_rps,
        ">=",
        0.85,
        "x",
        f"{facts_rps:.0f} / {click_rps:.0f} per s",
    )
    goal(
        f"postbacks per s at {GOAL_CONNECTIONS} connections",
        median("postbacks", "rps"),
        ">=",
        6000,
        "/s",
        ran_at=connections,
        wanted=GOAL_CONNECTIONS,
    )
    goal(
        f"postback p99 at {GOAL_CONNECTIONS} connections",
        median("postbacks", "p99_ms"),
        "<=",
        25,
        " ms",
        ran_at=connections,
        wanted=GOAL_CONNECTIONS,
    )
    goal(
        f"postback p99 at {GOAL_FEW_CONNECTIONS} connections",
        median("postbacks_few_connections", "p99_ms"),
        "<=",
        10,
        " ms",
        ran_at=few,
        wanted=GOAL_FEW_CONNECTIONS,
    )
    return rows


# Decimals shown per unit of a goal's figure.
GOAL_DIGITS = {"x": 2, " ms": 1, "/s": 0}


def print_goals(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("issue 14 goals: not worked out (they need the --workers 1 phases)", flush=True)
        return
    met = sum(1 for row in rows if row["met"])
    print(f"issue 14 goals, from this run's medians: {met} of {len(rows)} met", flush=True)
    for row in rows:
        status = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        digits = GOAL_DIGITS[row["unit"]]
        value = f"{row['value']:.{digits}f}{row['unit']}"
        detail = f"  ({row['detail']})" if row["detail"] else ""
        print(f"  {row['goal']:<58} {value:>10}  {row['target']:<10} {status}{detail}", flush=True)


def few_connections(connections: int) -> int:
    """The postback phase's low-load connection count: 16 beside the usual 50."""
    return max(1, connections // 3)


def report_line(label: str, runs: list[dict[str, Any]], keys_: list[str]) -> dict[str, Any]:
    summary = {k: summarize([r[k] for r in runs]) for k in keys_}
    parts = [f"{label:<28}"]
    for k in keys_:
        s = summary[k]
        parts.append(f"{k} {s['median']:.1f} [{s['min']:.1f}..{s['max']:.1f}]")
    print("  ".join(parts), flush=True)
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--label", default="")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--reports",
        type=int,
        default=0,
        metavar="CLICKS",
        help="then load this many clicks and time the reports (bench/reports.py)",
    )
    parser.add_argument("--reports-runs", type=int, default=20, help="runs of each report")
    parser.add_argument(
        "--no-cluster",
        dest="cluster",
        action="store_false",
        help="skip the cluster phase (bench/cluster.py: one Redis against a 3-master cluster,"
        " with 1 and 2 sinks and with WAIT 1)",
    )
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: run `make bench`, which installs it")

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "label": opts.label,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "runs": opts.runs,
        "duration_s": opts.duration,
        "connections": opts.connections,
    }
    print(
        f"cores={os.cpu_count()} runs={opts.runs} duration={opts.duration}s "
        f"connections={opts.connections}; figures are median [min..max]; cpu_us is the "
        "measured process's CPU time per request (the serve process and its workers, or the "
        "baseline app), sink_cpu_us the sink's per click stored",
        flush=True,
    )
    async with running_stack() as bench:
        stack, redis, pool, path = bench.stack, bench.redis, bench.pool, bench.path
        latency = ["rps", "p50_ms", "p90_ms", "p99_ms"]
        measured = [*latency, "cpu_us"]

        # Baseline: a bare aiohttp 302 on the same loop settings.
        baseline_port = free_port()
        baseline = subprocess.Popen(
            [sys.executable, str(BENCH / "baseline_app.py"), str(baseline_port)]
        )
        try:
            await wait_listening(baseline_port)
            baseline_url = f"http://127.0.0.1:{baseline_port}"
            await wrk(baseline_url, "click.lua", [path], 2, opts.connections)
            runs = [
                await wrk(
                    baseline_url, "click.lua", [path], opts.duration, opts.connections, baseline.pid
                )
                for _ in range(opts.runs)
            ]
        finally:
            baseline.send_signal(signal.SIGTERM)
            baseline.wait(timeout=30)
        results["baseline"] = report_line("baseline 302", runs, measured)
        base_rps = results["baseline"]["rps"]["median"]

        stack.start_process("sink", "sink")
        worker_counts = [int(w) for w in opts.workers.split(",")]
        for workers in worker_counts:
            serve_pid = await bench.start_serve(workers)
            await settle(redis, pool)
            await wrk(bench.url, "click.lua", [path], 2, opts.connections)
            runs = [
                await click_run(stack, redis, pool, path, opts.duration, opts.connections)
                for _ in range(opts.runs)
            ]
            name = f"clicks_workers_{workers}"
            results[name] = report_line(f"click, --workers {workers}", runs, measured)
            results[name]["ratio_to_baseline"] = results[name]["rps"]["median"] / base_rps
            results[name]["errors"] = sum(r["errors"] + r["bad_status"] for r in runs)
            results[f"sink_during_{name}"] = report_line(
                "  sink",
                runs,
                ["sink_rows_per_s", "sink_cpu_us", "backlog_peak", "backlog_at_end", "drain_s"],
            )
            print(
                f"  ratio to baseline {results[name]['ratio_to_baseline']:.2f}; "
                f"errors {results[name]['errors']}",
                flush=True,
            )
            if workers == 1:
                # The same run with every visitor fact at work: a User-Agent mix with bots,
                # 50,000 addresses (GeoIP, data-center and range checks), languages, rules,
                # and the unique check (which the plain run makes too).
                flows_path = await create_flows_campaign(stack.port, pool)
                await asyncio.sleep(1.0)  # the configuration reaches the worker
                await settle(redis, pool)
                await wrk(bench.url, "facts.lua", [flows_path], 2, opts.connections)
                runs = [
                    await click_run(
                        stack, redis, pool, flows_path, opts.duration, opts.connections, "facts.lua"
                    )
                    for _ in range(opts.runs)
                ]
                facts = report_line("click, full facts", runs, measured)
                facts["ratio_to_plain"] = facts["rps"]["median"] / results[name]["rps"]["median"]
                facts["ratio_to_baseline"] = facts["rps"]["median"] / base_rps
                facts["errors"] = sum(r["errors"] + r["bad_status"] for r in runs)
                results["clicks_full_facts"] = facts
                print(
                    f"  ratio to plain click {facts['ratio_to_plain']:.2f}; "
                    f"errors {facts['errors']}",
                    flush=True,
                )
                # The same clicks with the sink stopped: how much of the gap to the
                # baseline is the sink, Postgres and Redis sharing the cores.
                stack.stop_process("sink")
                await settle(redis, pool)
                runs = [
                    await wrk(
                        bench.url, "click.lua", [path], opts.duration, opts.connections, serve_pid
                    )
                    for _ in range(opts.runs)
                ]
                alone = report_line("click, sink stopped", runs, measured)
                alone["ratio_to_baseline"] = alone["rps"]["median"] / base_rps
                results["clicks_workers_1_sink_stopped"] = alone
                print(f"  ratio to baseline {alone['ratio_to_baseline']:.2f}", flush=True)
                results["metrics_cost"] = await metrics_cost(stack, path, opts)
                serve_pid = stack.procs["serve"].pid  # metrics_cost restarted it
                stack.start_process("sink", "sink")
                await bench.drain_sink()

                # Postbacks over the clicks just made, each with a new txid.
                await settle(redis, pool)
                args = await bench.postback_args()
                await wrk(bench.url, "postback.lua", args, 2, opts.connections)
                before = await pool.fetchval("SELECT count(*) FROM conversions")
                runs = []
                for run in range(1, opts.runs + 1):
                    args[2] = str(run)  # txids stay unique across runs
                    runs.append(
                        await wrk(
                            bench.url,
                            "postback.lua",
                            args,
                            opts.duration,
                            opts.connections,
                            serve_pid,
                        )
                    )
                stored = await pool.fetchval("SELECT count(*) FROM conversions") - before
                results["postbacks"] = report_line("postback (unique txid)", runs, measured)
                results["postbacks"]["errors"] = sum(r["errors"] + r["bad_status"] for r in runs)
                results["postbacks"]["stored_vs_answered"] = [
                    stored,
                    sum(r["requests"] for r in runs),
                ]
                print(
                    f"  conversions stored {stored} for {sum(r['requests'] for r in runs)} "
                    f"answered requests; errors {results['postbacks']['errors']}",
                    flush=True,
                )
                # Fewer connections: latency when the process is not saturated.
                await settle(redis, pool)
                few = few_connections(opts.connections)
                runs = []
                for run in range(1, opts.runs + 1):
                    args[2] = f"few{run}"
                    runs.append(
                        await wrk(bench.url, "postback.lua", args, opts.duration, few, serve_pid)
                    )
                results["postbacks_few_connections"] = report_line(
                    f"postback, {few} connections", runs, measured
                )
                results["postbacks_few_connections"]["connections"] = few
            stack.stop_process("serve")
        results["deliveries"] = await deliveries_phase(pool, opts)
        if "clicks_workers_2" in results:
            w1 = results["clicks_workers_1"]["rps"]["median"]
            w2 = results["clicks_workers_2"]["rps"]["median"]
            results["workers_2_over_1"] = w2 / w1
            print(f"--workers 2 / --workers 1 = {w2 / w1:.2f} on {os.cpu_count()} cores")
    if opts.cluster:
        # One Redis against a 3-master cluster (bench/cluster.py), after the stack is gone.
        import cluster as cluster_bench  # it imports this module: not at the top

        results["cluster"] = await cluster_bench.run(
            argparse.Namespace(runs=opts.runs, duration=opts.duration, connections=opts.connections)
        )
    if opts.reports:
        # Its own PostgreSQL, started after the other phases' stack is gone.
        results["reports"] = await report_bench.run(
            report_bench.options(clicks=opts.reports, runs=opts.reports_runs)
        )
    results["issue_14_goals"] = goals = issue_14_goals(results)
    print_goals(goals)
    out = BENCH / "results" / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    asyncio.run(main())
