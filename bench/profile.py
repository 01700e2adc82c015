"""Where the serve process spends its CPU under the benchmark's loads.

Starts the same stack as bench/run.py (Redis, PostgreSQL, the demo campaign, the tracker and
its sink), drives `tracker serve` with wrk under each load in turn (the plain click, the click
with every visitor fact, and postbacks with unique txids), and samples it meanwhile with
py-spy. For each load it prints the top frames by self share (samples in which the function
itself was running) and by cumulative share (samples in which it was anywhere on the stack),
and writes py-spy's raw collapsed stacks and a flame graph (SVG) to bench/results/.

Usage: python bench/profile.py [--loads click,facts,postback] [--duration 10] [--rate 200]
[--top 25] [--connections 50]. Shares are of the samples in which the process was busy
(py-spy leaves out the ones where it waits for the network).
"""

import argparse
import asyncio
import html
import os
import shutil
import sys
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import run as bench_run

LOADS = ("click", "facts", "postback")

# A collapsed stack (outermost frame first) and the samples in which it was seen.
Stacks = dict[tuple[str, ...], int]


def read_collapsed(text: str) -> Stacks:
    """py-spy's raw output (`frame;frame;frame count` per line) as stacks and counts."""
    stacks: Stacks = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(stack.split(";"))
        stacks[frames] = stacks.get(frames, 0) + int(count)
    return stacks


@dataclass
class Shares:
    """Samples per frame: as the running frame (self) and anywhere on the stack."""

    total: int = 0
    self_samples: dict[str, int] = field(default_factory=dict)
    cumulative: dict[str, int] = field(default_factory=dict)

    def top(self, counts: dict[str, int], n: int) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [(frame, count / self.total) for frame, count in ranked]


# The serve process's event loop: every frame from the process's entry point down to it is
# on (nearly) every stack, so ranking them by cumulative share says nothing.
LOOP_FRAME = "run_app "


def frame_shares(stacks: Stacks, trunk: str = LOOP_FRAME) -> Shares:
    """Self and cumulative samples per frame. The cumulative ranking leaves out the trunk:
    a stack's frames down to its last one starting with `trunk` (with uvloop, stacks of
    callbacks the loop runs from native code are rooted above it and count in full)."""
    shares = Shares()
    for frames, count in stacks.items():
        shares.total += count
        leaf = frames[-1]
        shares.self_samples[leaf] = shares.self_samples.get(leaf, 0) + count
        below = 0
        for depth, frame in enumerate(frames):
            if frame.startswith(trunk):
                below = depth + 1
        for frame in set(frames[below:]):  # a recursive function counts once per sample
            shares.cumulative[frame] = shares.cumulative.get(frame, 0) + count
    return shares


def print_top(shares: Shares, n: int, width: int = 140) -> None:
    rankings = [
        ("self share (run_app's: the event loop's native code, uvloop)", shares.self_samples),
        ("cumulative share (below the event loop)", shares.cumulative),
    ]
    for title, counts in rankings:
        print(f"  top {n} by {title}", flush=True)
        for frame, share in shares.top(counts, n):
            print(f"    {100 * share:5.1f}%  {frame[:width]}", flush=True)


@dataclass
class _Node:
    samples: int = 0
    children: dict[str, "_Node"] = field(default_factory=dict)


def _colour(frame: str) -> str:
    # Warm hues, the same for the same function in every graph.
    h = zlib.crc32(frame.encode())
    return f"rgb({205 + h % 50},{80 + (h >> 8) % 130},{40 + (h >> 16) % 50})"


def flame_svg(stacks: Stacks, title: str, width: int = 1200, row: int = 16) -> str:
    """A flame graph of the stacks: the whole run at the bottom, each frame a box as wide as
    its share of the samples, its callees stacked on top; hovering a box names the frame."""
    root = _Node()
    depth = 0
    for frames, count in stacks.items():
        node = root
        node.samples += count
        for frame in frames:
            node = node.children.setdefault(frame, _Node())
            node.samples += count
        depth = max(depth, len(frames))
    top_margin = 2 * row
    height = top_margin + (depth + 1) * row
    per_sample = width / root.samples if root.samples else 0.0
    boxes: list[str] = []

    def draw(name: str, node: _Node, start: int, level: int) -> None:
        box_width = node.samples * per_sample
        if box_width < 0.5:
            return
        x, y = start * per_sample, height - (level + 1) * row
        share = 100 * node.samples / root.samples
        label = html.escape(f"{name} ({node.samples} samples, {share:.1f}%)")
        chars = int((box_width - 4) / 6.5)
        text = name if len(name) <= chars else name[: chars - 2] + ".." if chars > 3 else ""
        if text:
            text = f'<text x="{x + 3:.2f}" y="{y + row - 4}">{html.escape(text)}</text>'
        boxes.append(
            f'<g><title>{label}</title><rect x="{x:.2f}" y="{y}" width="{box_width:.2f}" '
            f'height="{row - 1}" fill="{_colour(name)}" rx="2"/>{text}</g>'
        )
        offset = start
        for child_name, child in sorted(node.children.items()):
            draw(child_name, child, offset, level + 1)
            offset += child.samples

    draw("all", root, 0, 0)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
            f'<rect width="{width}" height="{height}" fill="#fdfdf6"/>',
            f'<text x="{width / 2}" y="{row + 2}" text-anchor="middle" font-size="14">'
            f"{html.escape(title)}</text>",
            *boxes,
            "</svg>",
            "",
        ]
    )


def py_spy() -> str:
    """py-spy from this interpreter's environment, else from the PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: `make setup` installs it (dev dependencies)")
    return found


def record_command(pid: int, seconds: int, rate: int, raw: Path) -> list[str]:
    """py-spy sampling `pid` for `seconds` into `raw` as collapsed stacks."""
    return [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--function",  # one entry per function, not per line
        "--nonblocking",  # sampling without pausing the process: less of it in its figures
        "--output",
        str(raw),
    ]


async def profile_load(
    url: str,
    pid: int,
    script: str,
    args: list[str],
    opts: argparse.Namespace,
    raw: Path,
) -> dict[str, Any]:
    """wrk with the load while py-spy samples `pid` (after a warm-up); wrk's figures."""
    # The warm-up's postbacks get txids of their own: repeats would take the cheaper path.
    warm = [*args[:2], args[2] + "w"] if script == "postback.lua" else args
    await bench_run.wrk(url, script, warm, 2, opts.connections)
    spy = await asyncio.create_subprocess_exec(
        *record_command(pid, opts.duration, opts.rate, raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    # wrk runs two seconds longer than py-spy samples, so that the load covers every sample.
    result = await bench_run.wrk(url, script, args, opts.duration + 2, opts.connections, pid)
    _, err = await spy.communicate()
    if spy.returncode != 0 or not raw.exists():
        raise SystemExit(f"py-spy failed ({spy.returncode}): {err.decode().strip()[-500:]}")
    return result


def report(name: str, stacks: Stacks, result: dict[str, Any], opts: argparse.Namespace) -> None:
    shares = frame_shares(stacks)
    expected = opts.duration * opts.rate
    print(
        f"{name}: rps {result['rps']:.0f}  p99_ms {result['p99_ms']:.1f}  cpu_us "
        f"{result['cpu_us']:.1f} (under py-spy); {shares.total} busy samples of about "
        f"{expected} taken ({100 * shares.total / expected:.0f}%)",
        flush=True,
    )
    if shares.total:
        print_top(shares, opts.top)


def loads(value: str) -> list[str]:
    chosen = [load.strip() for load in value.split(",") if load.strip()]
    unknown = sorted(set(chosen) - set(LOADS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"loads are among {', '.join(LOADS)}: not {unknown}")
    return chosen


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=loads, default=list(LOADS), help=",".join(LOADS))
    parser.add_argument("--duration", type=int, default=10, help="seconds sampled per load")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25, help="frames listed per ranking")
    parser.add_argument("--connections", type=int, default=50)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: run `make profile`, which installs it")
    py_spy()
    results = bench_run.BENCH / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    print(
        f"cores={os.cpu_count()} duration={opts.duration}s rate={opts.rate}/s "
        f"connections={opts.connections}; py-spy on the serve process, sink running",
        flush=True,
    )
    written: list[Path] = []
    async with bench_run.running_stack("tracker-profile-") as bench:
        bench.stack.start_process("sink", "sink")
        pid = await bench.start_serve()
        clicks_made = False
        for name in opts.loads:
            await bench_run.settle(bench.redis, bench.pool)
            if name == "click":
                script, args = "click.lua", [bench.path]
                clicks_made = True
            elif name == "facts":
                flows_path = await bench_run.create_flows_campaign(bench.stack.port, bench.pool)
                await asyncio.sleep(1.0)  # the configuration reaches the worker
                script, args = "facts.lua", [flows_path]
                clicks_made = True
            else:
                if not clicks_made:  # clicks to convert
                    await bench_run.wrk(bench.url, "click.lua", [bench.path], 3, opts.connections)
                await bench.drain_sink()
                script, args = "postback.lua", await bench.postback_args()
                args[2] = f"profile{stamp}"
            raw = results / f"profile-{stamp}-{name}.txt"
            result = await profile_load(bench.url, pid, script, args, opts, raw)
            stacks = read_collapsed(raw.read_text())
            report(name, stacks, result, opts)
            svg = raw.with_suffix(".svg")
            title = f"tracker serve, {name} load, {stamp} ({sum(stacks.values())} samples)"
            svg.write_text(flame_svg(stacks, title))
            written += [raw, svg]
    print(f"written {', '.join(str(p.relative_to(bench_run.BENCH.parent)) for p in written)}")


if __name__ == "__main__":
    asyncio.run(main())
