"""The benchmark's own arithmetic: CPU time of a process tree from /proc, and issue 14's
goals worked out from a run's figures."""

import copy
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import asyncpg
import orjson
import pytest

from tests.conftest import fresh_database
from tracker.devstack import free_port, wait_for_port
from tracker.store.redis import create_redis

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import run as bench_run  # noqa: E402
from floor_app import CLICK_KEY, CLICK_RECORD, RECORD_KEY, STREAM, TOKEN  # noqa: E402

# A parent that only sleeps, and its child that spins until told to stop.
SPINNER = """
import os, sys, time
open(sys.argv[1], "w").write(str(os.getpid()))
stop = sys.argv[2]
while not os.path.exists(stop):
    for _ in range(100000):
        pass
"""
SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
child.wait()
"""


def test_cpu_meter_counts_the_children(tmp_path: Path) -> None:
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    parent = subprocess.Popen([sys.executable, "-c", SLEEPER, SPINNER, str(ready), str(stop)])
    try:
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = int(ready.read_text())
        assert bench_run.process_tree(parent.pid) == [parent.pid, child]

        meter = bench_run.CpuMeter(parent.pid)
        own_before = bench_run.process_cpu_seconds(parent.pid)
        while (used := meter.seconds()) < 0.3:
            assert time.monotonic() < deadline, f"only {used:.2f} s of CPU counted"
            time.sleep(0.05)
        own = bench_run.process_cpu_seconds(parent.pid) - own_before
        # The sleeping parent used next to nothing: what was counted is the child's.
        assert own < 0.1
        assert used - own >= 0.2
    finally:
        stop.touch()
        parent.wait(timeout=20)


def test_cpu_meter_of_a_process_without_children() -> None:
    meter = bench_run.CpuMeter(bench_run.os.getpid())
    deadline = time.monotonic() + 20
    while meter.seconds() < 0.05:
        assert time.monotonic() < deadline
        sum(range(100000))
    assert bench_run.process_tree(bench_run.os.getpid())[0] == bench_run.os.getpid()


def phase(**figures: float) -> dict[str, Any]:
    return {name: {"median": v, "min": v, "max": v} for name, v in figures.items()}


# Every goal met, by a margin.
MEETING: dict[str, Any] = {
    "connections": 50,
    "baseline": phase(rps=27000, p99_ms=3.0, cpu_us=43.0),
    "clicks_workers_1": phase(rps=16000, p99_ms=8.0, cpu_us=60.0),
    "clicks_workers_1_sink_stopped": phase(rps=17000, p99_ms=9.0, cpu_us=58.0),
    "clicks_full_facts": phase(rps=14400, p99_ms=9.5, cpu_us=66.0),
    "postbacks": phase(rps=6500, p99_ms=20.0, cpu_us=100.0),
    "postbacks_few_connections": {**phase(rps=5000, p99_ms=6.0, cpu_us=95.0), "connections": 16},
}


def with_median(phase_name: str, figure: str, value: float) -> dict[str, Any]:
    results = copy.deepcopy(MEETING)
    results[phase_name][figure]["median"] = value
    return results


def test_goals_all_met() -> None:
    rows = bench_run.issue_14_goals(MEETING)
    assert len(rows) == 9
    assert [row["met"] for row in rows] == [True] * 9
    assert rows[0]["value"] == pytest.approx(60.0 / 43.0)


@pytest.mark.parametrize(
    ("phase_name", "figure", "value", "missed"),
    [
        ("clicks_workers_1", "cpu_us", 65.0, 0),  # 1.51x the baseline's 43 us
        ("clicks_workers_1_sink_stopped", "rps", 16100, 1),  # 0.596x
        ("clicks_workers_1", "rps", 14800, 2),  # 0.548x (and facts 0.97x: still met)
        ("clicks_workers_1", "p99_ms", 10.1, 3),
        ("clicks_workers_1_sink_stopped", "p99_ms", 10.1, 4),
        ("clicks_full_facts", "rps", 13500, 5),  # 0.84x of plain
        ("postbacks", "rps", 5999, 6),
        ("postbacks", "p99_ms", 25.1, 7),
        ("postbacks_few_connections", "p99_ms", 10.1, 8),
    ],
)
def test_each_goal_missed_alone(phase_name: str, figure: str, value: float, missed: int) -> None:
    rows = bench_run.issue_14_goals(with_median(phase_name, figure, value))
    assert [i for i, row in enumerate(rows) if row["met"] is not True] == [missed]
    assert rows[missed]["met"] is False


def test_goals_on_the_limit_are_met() -> None:
    results = with_median("clicks_workers_1", "cpu_us", 43.0 * 1.5)
    results["postbacks"]["rps"]["median"] = 6000
    results["postbacks"]["p99_ms"]["median"] = 25
    assert all(row["met"] for row in bench_run.issue_14_goals(results))


def test_goals_at_other_connection_counts_are_not_measured() -> None:
    results = copy.deepcopy(MEETING)
    results["connections"] = 100
    results["postbacks_few_connections"]["connections"] = 33
    rows = bench_run.issue_14_goals(results)
    unmeasured = [row["goal"] for row in rows if row["met"] is None]
    assert len(unmeasured) == 5
    assert all("connections" in goal for goal in unmeasured)
    assert [row["met"] for row in rows if row["met"] is not None] == [True] * 4


def test_goals_need_the_single_worker_phases(capsys: pytest.CaptureFixture[str]) -> None:
    results = copy.deepcopy(MEETING)
    del results["clicks_full_facts"]
    assert bench_run.issue_14_goals(results) == []
    bench_run.print_goals([])
    assert "not worked out" in capsys.readouterr().out


def test_goals_table_printed(capsys: pytest.CaptureFixture[str]) -> None:
    bench_run.print_goals(bench_run.issue_14_goals(with_median("postbacks", "rps", 3400)))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "issue 14 goals, from this run's medians: 8 of 9 met"
    assert "3400/s" in out[7] and "MISSED" in out[7]
    assert "1.40x" in out[1] and out[1].rstrip().endswith("(60.0 / 43.0 us)")


def load_profile_module() -> Any:
    # Not importable as `profile`: the standard library has a module of that name.
    spec = importlib.util.spec_from_file_location("bench_profile", BENCH / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_profile = load_profile_module()

COLLAPSED = """\
<module> (a.py:1);serve (a.py:10);handle (b.py:5);dumps (c.py:2) 6
<module> (a.py:1);serve (a.py:10);handle (b.py:5) 2
<module> (a.py:1);serve (a.py:10);walk (d.py:1);walk (d.py:1);walk (d.py:1) 2
garbage line
"""


def test_collapsed_stacks_and_shares() -> None:
    stacks = bench_profile.read_collapsed(COLLAPSED + COLLAPSED.splitlines()[0] + "\n")
    assert stacks[("<module> (a.py:1)", "serve (a.py:10)", "handle (b.py:5)")] == 2
    assert (
        stacks[("<module> (a.py:1)", "serve (a.py:10)", "handle (b.py:5)", "dumps (c.py:2)")] == 12
    )
    shares = bench_profile.frame_shares(stacks)
    assert shares.total == 16
    assert shares.top(shares.self_samples, 2) == [
        ("dumps (c.py:2)", 0.75),
        ("handle (b.py:5)", 0.125),
    ]
    cumulative = dict(shares.top(shares.cumulative, 10))
    assert cumulative["serve (a.py:10)"] == 1.0
    assert cumulative["handle (b.py:5)"] == 14 / 16
    assert cumulative["walk (d.py:1)"] == 2 / 16  # recursion counted once per sample
    # The trunk down to the event loop is left out of the cumulative ranking only.
    shares = bench_profile.frame_shares(stacks, trunk="serve ")
    assert shares.total == 16
    assert shares.top(shares.cumulative, 10) == [
        ("handle (b.py:5)", 14 / 16),
        ("dumps (c.py:2)", 12 / 16),
        ("walk (d.py:1)", 2 / 16),
    ]
    stacks[("<module> (a.py:1)", "serve (a.py:10)")] = 4  # the loop's own work
    shares = bench_profile.frame_shares(stacks, trunk="serve ")
    assert shares.top(shares.cumulative, 1) == [("handle (b.py:5)", 14 / 20)]
    assert ("serve (a.py:10)", 4 / 20) in shares.top(shares.self_samples, 3)


def test_flame_graph_is_svg_with_a_box_per_frame() -> None:
    stacks = bench_profile.read_collapsed(COLLAPSED)
    svg = bench_profile.flame_svg(stacks, "a <test> & more", width=1000)
    root = ElementTree.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    boxes = {
        g.find(f"{ns}title").text.split(" (")[0]: g.find(f"{ns}rect") for g in root.iter(f"{ns}g")
    }
    # all, <module>, serve, handle, dumps, and walk three times over (one box per depth).
    assert len(list(root.iter(f"{ns}g"))) == 8
    assert float(boxes["all"].get("width")) == 1000
    assert float(boxes["dumps"].get("width")) == 600
    assert float(boxes["handle"].get("width")) == 800
    # Callees sit above their callers.
    assert float(boxes["dumps"].get("y")) < float(boxes["handle"].get("y"))
    assert "a &lt;test&gt; &amp; more" in svg


BUSY = """
import time
def spin_in_a_named_function():
    end = time.monotonic() + 30
    while time.monotonic() < end:
        sum(range(1000))
spin_in_a_named_function()
"""


def test_py_spy_record_read_back(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    raw = tmp_path / "raw.txt"
    try:
        time.sleep(0.3)
        done = subprocess.run(
            bench_profile.record_command(busy.pid, 1, 100, raw), capture_output=True, timeout=30
        )
        assert done.returncode == 0, done.stderr.decode()
    finally:
        busy.kill()
        busy.wait()
    shares = bench_profile.frame_shares(bench_profile.read_collapsed(raw.read_text()))
    assert shares.total > 10
    cumulative = dict(shares.top(shares.cumulative, 5))
    [frame] = [f for f in cumulative if f.startswith("spin_in_a_named_function ")]
    assert cumulative[frame] > 0.9


async def test_the_floor_app_does_the_work_it_stands_for(servers: Any, tmp_path: Path) -> None:
    """bench/floor.py's figures mean something only if its app stores what it answers for."""
    _, redis_server = servers
    dsn = await fresh_database(servers, "floor_bench")
    redis = create_redis(redis_server.url())
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    port = free_port()
    app = None
    try:
        await redis.set(CLICK_KEY + "k1", orjson.dumps(CLICK_RECORD))
        app = subprocess.Popen(
            [sys.executable, str(BENCH / "floor_app.py"), str(port), redis_server.url(), dsn]
        )
        wait_for_port(port, "floor app")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/c/any", allow_redirects=False) as resp:
                assert resp.status == 302
                click_id = resp.headers["Location"].rpartition("=")[2]
            assert await redis.get(RECORD_KEY + click_id) is not None
            entries = [e for _, e in await redis.xrange(STREAM) if click_id.encode() in e[b"d"]]
            assert len(entries) == 1

            postback = f"{base}/postback?clickid=k1&txid=t1&payout=1.25&token={TOKEN}"
            async with http.get(postback) as resp:
                first = await resp.json()
                assert (resp.status, first["result"]) == (200, "created")
            async with http.get(postback) as resp:
                assert (resp.status, (await resp.json())["result"]) == (200, "duplicate")
            for query, status in [
                (f"clickid=nope&txid=t1&payout=1&token={TOKEN}", 404),
                ("clickid=k1&txid=t2&payout=1&token=wrong", 400),
                (f"clickid=k1&txid=t2&payout=lots&token={TOKEN}", 400),
            ]:
                async with http.get(f"{base}/postback?{query}") as resp:
                    assert resp.status == status, query
        row = await pool.fetchrow("SELECT id, payout FROM floor_conversions WHERE txid = 't1'")
        assert (row["id"], str(row["payout"])) == (first["conversion_id"], "1.25")
        logged = await pool.fetch("SELECT result FROM floor_log ORDER BY id")
        assert [r["result"] for r in logged] == ["created", "duplicate"]
    finally:
        if app is not None:
            app.terminate()
            try:
                app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()
        await pool.close()
        await redis.aclose()
