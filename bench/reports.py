"""Report benchmark: load a month of clicks through the sink's own statement, then time
the reports people open most.

Starts its own PostgreSQL (the devstack's settings), creates 50 campaigns with their
offers, sources and landers, and streams generated click records, in the sink's JSON
form and batches, through `tracker.sink.clicks.INSERT_CLICKS`, so that the daily,
hourly and per-zone daily rollups (UTC and America/New_York) are written as in
production. Conversions (1-3% of human clicks) are
then copied from their clicks in bulk SQL. Prints load rows/s, table sizes, and p50 and
p99 of each report over repeated runs through `tracker.store.reports.fetch_report`, with
the tables it read.

Usage: python bench/reports.py [--clicks 1000000] [--runs 20] [--days 30] [--keep DIR]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from multidict import MultiDict

from tracker.devstack import PostgresServer, free_port
from tracker.domain.click import COPIED_TO_CONVERSION, ClickRecord
from tracker.domain.clickid import new_click_id
from tracker.sink.clicks import INSERT_CLICKS
from tracker.store import partitions
from tracker.store import reports as report_store
from tracker.store.db import create_pool, migrate
from tracker.store.rollups import fold_conversion_changes, rolled_up_zones, sync_rollup_zones
from tracker.web.reports import parse_report_query

BENCH = Path(__file__).resolve().parent
HOUR_MS = 3_600_000
# The share of a day's clicks in each UTC hour: quiet nights, a peak in the evening.
DAILY_CURVE = (
    2, 1.5, 1.2, 1, 1, 1.2, 1.8, 2.6, 3.4, 4, 4.3, 4.5,
    4.6, 4.6, 4.5, 4.5, 4.7, 5, 5.5, 6, 6.2, 5.6, 4.4, 3,
)  # fmt: skip
# (country, weight, language, cities): the top few carry most of the traffic.
COUNTRIES = [
    ("US", 30, "en"), ("GB", 7, "en"), ("DE", 6, "de"), ("FR", 5, "fr"), ("CA", 4, "en"),
    ("BR", 4, "pt"), ("IN", 4, "en"), ("IT", 3, "it"), ("ES", 3, "es"), ("MX", 3, "es"),
    ("AU", 2.5, "en"), ("NL", 2, "nl"), ("PL", 2, "pl"), ("JP", 2, "ja"), ("ID", 2, "id"),
    ("TR", 1.5, "tr"), ("PH", 1.5, "en"), ("VN", 1.2, "vi"), ("TH", 1.2, "th"), ("SE", 1, "sv"),
    ("AR", 1, "es"), ("CO", 1, "es"), ("ZA", 1, "en"), ("BE", 0.8, "nl"), ("AT", 0.8, "de"),
    ("CH", 0.8, "de"), ("PT", 0.7, "pt"), ("RO", 0.7, "ro"), ("CZ", 0.6, "cs"),
    ("GR", 0.5, "el"), ("HU", 0.5, "hu"), ("IE", 0.5, "en"), ("NO", 0.5, "no"),
    ("DK", 0.5, "da"), ("FI", 0.4, "fi"), ("NZ", 0.4, "en"), ("CL", 0.4, "es"),
    ("MY", 0.4, "ms"), ("SG", 0.3, "en"), ("EG", 0.3, "ar"),
]  # fmt: skip
# (weight, User-Agent, device, os, os version, browser, browser version)
AGENTS = [
    (22, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
     "mobile", "iOS", "17.4", "Mobile Safari", "17.4"),
    (8, "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
     "mobile", "iOS", "16.6", "Mobile Safari", "16.6"),
    (20, "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Mobile Safari/537.36", "mobile", "Android", "14", "Chrome Mobile", "124"),
    (9, "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/123.0.0.0 Mobile Safari/537.36", "mobile", "Android", "13", "Chrome Mobile", "123"),
    (4, "Mozilla/5.0 (Linux; Android 12; SM-A515F) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36",
     "mobile", "Android", "12", "Samsung Internet", "24.0"),
    (15, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "desktop", "Windows", "10", "Chrome", "124"),
    (5, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0", "desktop", "Windows", "10", "Edge", "124"),
    (6, "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.4 Safari/605.1.15", "desktop", "Mac OS X", "10.15.7", "Safari", "17.4"),
    (3, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
     "desktop", "Windows", "10", "Firefox", "125"),
    (4, "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "tablet", "iOS", "17.4",
     "Mobile Safari", "17.4"),
    (2, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "desktop", "Linux", None, "Chrome", "124"),
]  # fmt: skip
BOT_AGENTS = [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "user_agent"),
    ("python-requests/2.31.0", "user_agent"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "datacenter"),
]  # fmt: skip
SUB1_VALUES = 5000  # per campaign
BOT_SHARE = 0.05
UNIQUE_SHARE = 0.6


def world(campaigns: int, seed: int) -> dict[str, Any]:
    """The configuration the clicks refer to: per campaign its source, offers (with
    weights), landers, cost per click and sub id pools. Ids are assigned in insert order."""
    rng = random.Random(seed)
    sources = 10
    plans = []
    offer_id = lander_id = 0
    for c in range(campaigns):
        offers = []
        for _ in range(rng.randint(3, 5)):
            offer_id += 1
            offers.append((offer_id, rng.choice((50, 30, 20, 10))))
        landers = []
        if c % 2 == 0:  # half the campaigns send visitors through landers
            for _ in range(2):
                lander_id += 1
                landers.append(lander_id)
        base = rng.choice((0.0012, 0.0042, 0.009, 0.015, 0.03, 0.12))
        costs = [f"{base * rng.uniform(0.7, 1.3):.4f}" for _ in range(16)]
        plans.append(
            {
                "id": c + 1,
                "source": c % sources + 1,
                "offers": offers,
                "landers": landers,
                "costs": costs,
                # Zone ids as sources send them: numbers, different in every campaign.
                "sub1": [str(rng.randrange(10**6, 10**7)) for _ in range(SUB1_VALUES)],
                "sub2": [f"cr{rng.randrange(10**5)}" for _ in range(200)],
                "sub3": [f"pl-{rng.randrange(1000)}" for _ in range(20)],
            }
        )
    return {"campaigns": plans, "sources": sources, "offers": offer_id, "landers": lander_id}


def campaign_weights(campaigns: int) -> list[float]:
    """Campaign sizes, mildly skewed: the largest has about 8% of the clicks of 50."""
    return [1 / (i + 1) ** 0.5 for i in range(campaigns)]


def hour_counts(total: int, days: int) -> list[int]:
    """Clicks in each hour of the period, following the daily curve, growing a little."""
    weights = [
        (1 + 0.3 * day / days) * DAILY_CURVE[hour] for day in range(days) for hour in range(24)
    ]
    scale = total / sum(weights)
    counts = [int(w * scale) for w in weights]
    for i in range(total - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def _cumulative(weights: list[float]) -> list[float]:
    out, acc = [], 0.0
    for w in weights:
        acc += w
        out.append(acc)
    return out


def generate(
    queue: Any, total: int, days: int, start_ms: int, batch: int, campaigns: int, seed: int
) -> None:
    """Put JSON batches of click records on `queue`, in time order, then None."""
    rng = random.Random(seed + 1)
    plans = world(campaigns, seed)["campaigns"]
    campaign_cum = _cumulative(campaign_weights(campaigns))
    zipf_cum = _cumulative([1 / (r + 1) for r in range(SUB1_VALUES)])
    sub2_cum = _cumulative([1 / (r + 1) ** 0.7 for r in range(200)])
    country_cum = _cumulative([c[1] for c in COUNTRIES])
    agent_cum = _cumulative([a[0] for a in AGENTS])
    cities = {c[0]: [(f"{c[0]}-R{i}", f"{c[0]} City {i}") for i in range(8)] for c in COUNTRIES}
    isps = [(rng.randrange(1000, 400000), f"ISP {i}") for i in range(100)]
    referrers = [f"https://news{i}.example.com/article/{rng.randrange(10**6)}" for i in range(500)]
    offer_cums = [
        ([o for o, _ in p["offers"]], _cumulative([w for _, w in p["offers"]])) for p in plans
    ]
    indexes = range(len(plans))
    pending: list[ClickRecord] = []
    choices, rand, bits = rng.choices, rng.random, rng.getrandbits
    for hour, count in enumerate(hour_counts(total, days)):
        hour_ms = start_ms + hour * HOUR_MS
        moments = sorted(hour_ms + int(rand() * HOUR_MS) for _ in range(count))
        cids = choices(indexes, cum_weights=campaign_cum, k=count)
        ranks = choices(range(SUB1_VALUES), cum_weights=zipf_cum, k=count)
        sub2s = choices(range(200), cum_weights=sub2_cum, k=count)
        countries = choices(COUNTRIES, cum_weights=country_cum, k=count)
        agents = choices(AGENTS, cum_weights=agent_cum, k=count)
        for i in range(count):
            plan = plans[cids[i]]
            offers, offer_cum = offer_cums[cids[i]]
            country, _, language = countries[i]
            region, city = cities[country][bits(3)]
            asn, isp = isps[bits(6) % 100]
            _, ua, device, os_, os_version, browser, browser_version = agents[i]
            bot_reason = None
            if rand() < BOT_SHARE:
                ua, bot_reason = BOT_AGENTS[bits(2) % 3]
                device = os_ = os_version = browser = browser_version = None
            ip = bits(32)
            landers = plan["landers"]
            moment = moments[i]
            pending.append(
                ClickRecord(
                    click_id=new_click_id(moment),
                    created_ms=moment,
                    campaign_id=plan["id"],
                    offer_id=choices(offers, cum_weights=offer_cum)[0],
                    traffic_source_id=plan["source"],
                    external_id=f"{bits(64):016x}" if rand() < 0.7 else None,
                    cost=plan["costs"][bits(4)],
                    sub1=plan["sub1"][ranks[i]],
                    sub2=plan["sub2"][sub2s[i]],
                    sub3=plan["sub3"][bits(5) % 20] if rand() < 0.8 else None,
                    ip=f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}",
                    user_agent=ua,
                    referrer=referrers[bits(9) % 500] if rand() < 0.4 else None,
                    country=country,
                    region=region,
                    city=city,
                    asn=asn,
                    isp=isp,
                    device=device,
                    os=os_,
                    os_version=os_version,
                    browser=browser,
                    browser_version=browser_version,
                    language=language,
                    is_bot=bot_reason is not None,
                    bot_reason=bot_reason,
                    lander_id=landers[bits(1)] if landers else None,
                    is_unique=rand() < UNIQUE_SHARE,
                )
            )
            if len(pending) == batch:
                queue.put(orjson.dumps(pending).decode())
                pending = []
    if pending:
        queue.put(orjson.dumps(pending).decode())
    queue.put(None)


async def create_world(pool: asyncpg.Pool, setup: dict[str, Any]) -> None:
    """Sources, a network, offers, landers and campaigns, their ids as `world` numbers them."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO traffic_sources (name) "
            "SELECT 'Source ' || n FROM generate_series(1, $1) n",
            setup["sources"],
        )
        await conn.execute(
            "INSERT INTO affiliate_networks (name, postback_token) VALUES ('Network', 'token')"
        )
        await conn.execute(
            "INSERT INTO offers (name, url, affiliate_network_id, payout) "
            "SELECT 'Offer ' || n, 'https://offer.example.com/?c={clickid}', 1, 5 "
            "FROM generate_series(1, $1) n",
            setup["offers"],
        )
        await conn.execute(
            "INSERT INTO landers (name, url) "
            "SELECT 'Lander ' || n, 'https://lander.example.com/' || n "
            "FROM generate_series(1, $1) n",
            setup["landers"],
        )
        for plan in setup["campaigns"]:
            await conn.execute(
                "INSERT INTO campaigns (key, name, traffic_source_id, cost_model, cost_value) "
                "VALUES ($1, $2, $3, 'cpc', $4)",
                f"bench{plan['id']}",
                f"Campaign {plan['id']}",
                plan["source"],
                Decimal(plan["costs"][0]),
            )
            await conn.executemany(
                "INSERT INTO campaign_offers (campaign_id, offer_id, weight, position) "
                "VALUES ($1, $2, $3, $4)",
                [(plan["id"], o, w, i) for i, (o, w) in enumerate(plan["offers"])],
            )
            await conn.executemany(
                "INSERT INTO campaign_landers (campaign_id, lander_id, weight, position) "
                "VALUES ($1, $2, 1, $3)",
                [(plan["id"], lander, i) for i, lander in enumerate(plan["landers"])],
            )


async def load_clicks(pool: asyncpg.Pool, opts: argparse.Namespace, start_ms: int) -> float:
    """Stream the generated batches into the sink's statement; returns seconds taken.
    The generator runs in a process of its own, a few batches ahead (bounded memory)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue(maxsize=4)
    args = (queue, opts.clicks, opts.days, start_ms, opts.batch, opts.campaigns, opts.seed)
    producer = ctx.Process(target=generate, args=args, daemon=True)
    producer.start()
    started = time.monotonic()
    loaded, last_report = 0, started
    try:
        async with pool.acquire() as conn:
            while (body := await asyncio.to_thread(queue.get)) is not None:
                await conn.execute(INSERT_CLICKS, body, timeout=None)
                loaded += opts.batch
                now = time.monotonic()
                if now - last_report >= 30:
                    last_report = now
                    rate = min(loaded, opts.clicks) / (now - started)
                    print(f"  ... {min(loaded, opts.clicks):,} clicks, {rate:,.0f}/s", flush=True)
    finally:
        producer.join(timeout=10)
        if producer.is_alive():
            producer.terminate()
    return time.monotonic() - started


_COPIED = ", ".join(COPIED_TO_CONVERSION)
# 1-3% of each campaign's human clicks convert (the rate varies by campaign), some
# minutes to a day after the click; mostly approved, some pending or rejected.
INSERT_CONVERSIONS = f"""
INSERT INTO conversions (click_id, dedupe_key, txid, {_COPIED}, click_params, click_time,
    created_at, payout, currency, original_payout, original_currency, status, params)
SELECT k.click_id, 'tx' || k.click_id, 'tx' || k.click_id, {_COPIED}, k.params,
       k.created_at, k.created_at + random() * interval '1 day', k.payout, 'USD', k.payout,
       'USD', CASE WHEN k.pick < 0.85 THEN 'approved' WHEN k.pick < 0.95 THEN 'pending'
                   ELSE 'rejected' END,
       '{{}}'
FROM (
    -- Volatile outputs keep the subquery apart: one draw per click.
    SELECT *, round((0.5 + random() * 49.5)::numeric, 2) AS payout, random() AS pick
    FROM clicks
    WHERE campaign_id = $1 AND NOT is_bot AND random() < 0.01 + (campaign_id % 5) * 0.005
) k
"""


async def load_conversions(pool: asyncpg.Pool, campaigns: int) -> tuple[int, float]:
    started = time.monotonic()
    for campaign in range(1, campaigns + 1):
        await pool.execute(INSERT_CONVERSIONS, campaign, timeout=None)
    count = await pool.fetchval("SELECT count(*) FROM conversions")
    return int(count), time.monotonic() - started


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (p99 of 20 runs is near the max)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def report_cases(first: date, days: int, campaign: int) -> list[dict[str, Any]]:
    """(name, query, goal in ms) of each timed report."""
    last = first + timedelta(days=days - 1)
    week = last - timedelta(days=6)
    month = {"from": first.isoformat(), "to": last.isoformat()}
    one = {"campaign_id": str(campaign)}
    return [
        {"name": "campaign x day, 30 days", "query": {"group_by": "campaign,day", **month},
         "goal_ms": 50},
        {"name": "campaign x offer x country, 30 days",
         "query": {"group_by": "campaign,offer,country", **month}, "goal_ms": 50},
        {"name": "sub1 of one campaign, 7 days",
         "query": {"group_by": "sub1", "from": week.isoformat(), "to": last.isoformat(), **one},
         "goal_ms": 300},
        {"name": "campaign x day, 30 days, New York",
         "query": {"group_by": "campaign,day", "tz": "America/New_York", **month},
         "goal_ms": 50},
        {"name": "sub1 of one campaign, 30 days", "query": {"group_by": "sub1", **month, **one},
         "goal_ms": None},
        {"name": "country x device, 30 days", "query": {"group_by": "country,device", **month},
         "goal_ms": None},
    ]  # fmt: skip


def path_of(spec: Any, zones: frozenset[str], grain_rows: dict[str, float]) -> str:
    """The tables the report reads: clicks (or their rollup) + conversions (or theirs),
    and the day and week blocks when weekly blocks are read."""
    path = str(report_store.report_path(spec, zones))
    blocks = report_store.zone_blocks(spec, path.split("+")[0], grain_rows)
    if blocks is None:
        return path
    count = {g: sum(grain == g for grain, _, _ in blocks) for g in ("month", "week", "day")}
    return f"{path} ({', '.join(f'{n} {g}s' for g, n in count.items() if n)})"


async def time_reports(
    pool: asyncpg.Pool, opts: argparse.Namespace, first: date, campaign: int
) -> list[dict[str, Any]]:
    results = []
    zones = await rolled_up_zones(pool)
    grain_rows = await report_store.block_rows(pool)
    print("rows per block, relative to a day's:", {g: round(n, 2) for g, n in grain_rows.items()})
    for case in report_cases(first, opts.days, campaign):
        spec = parse_report_query(MultiDict(case["query"]), "UTC", 366)
        await report_store.fetch_report(pool, spec, opts.time_limit)  # warm the cache
        times: list[float] = []
        spent = time.monotonic()
        groups = 0
        for _ in range(opts.runs):
            started = time.perf_counter()
            _, totals = await report_store.fetch_report(pool, spec, opts.time_limit)
            times.append((time.perf_counter() - started) * 1000)
            groups = int(totals["groups"])
            # A slow report gets at least 3 runs, then stops at its time budget.
            if len(times) >= 3 and time.monotonic() - spent > opts.budget:
                break
        p50, p99 = quantile(times, 0.5), quantile(times, 0.99)
        goal = case["goal_ms"]
        verdict = (
            "" if goal is None else f"goal p50 <= {goal} ms: {'met' if p50 <= goal else 'MISSED'}"
        )
        path = path_of(spec, zones, grain_rows)
        print(
            f"{case['name']:<38} {path:<55} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms  "
            f"({len(times)} runs, {groups:,} groups)  {verdict}",
            flush=True,
        )
        results.append(
            {
                **case,
                "path": path,
                "runs": len(times),
                "groups": groups,
                "p50_ms": p50,
                "p99_ms": p99,
                "min_ms": min(times),
                "max_ms": max(times),
                "goal_met": None if goal is None else p50 <= goal,
            }
        )
    return results


# A partitioned table's size is its partitions' (a plain table has no partition tree).
TABLE_SIZE = """
SELECT coalesce(
    (SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree($1::regclass)),
    pg_total_relation_size($1::regclass)
)
"""
TABLES = (
    "clicks",
    "click_rollups",
    "click_hourly",
    "conversions",
    "click_daily",
    "click_daily_geo",
    "click_weekly_geo",
    "click_monthly_geo",
    "conversion_daily",
    "conversion_daily_geo",
    "conversion_weekly_geo",
    "conversion_monthly_geo",
)
# The zones rolled up by day: UTC and the zone of the New York report.
ZONES = ("UTC", "America/New_York")


async def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Start PostgreSQL, load, measure, stop; the figures as a dict."""
    root = Path(opts.keep) if opts.keep else Path(tempfile.mkdtemp(prefix="tracker-rbench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    pg = PostgresServer(root / "postgres", free_port())
    # A kept database loaded before: its month, timed again (after any new migration).
    loaded = root / "loaded.json"
    kept = json.loads(loaded.read_text()) if loaded.exists() else None
    today = date.fromisoformat(kept["today"]) if kept else datetime.now(UTC).date()
    first = today - timedelta(days=opts.days)
    start_ms = int(datetime.combine(first, datetime.min.time(), UTC).timestamp() * 1000)
    setup = world(opts.campaigns, opts.seed)
    out: dict[str, Any] = {"clicks_requested": opts.clicks, "days": opts.days, "runs": opts.runs}
    print(
        f"reports: {opts.clicks:,} clicks over {opts.days} days from {first}, "
        f"{opts.campaigns} campaigns, batches of {opts.batch:,}",
        flush=True,
    )
    try:
        pg.start()
        await migrate(pg.dsn())
        pool = await create_pool(pg.dsn(), min_size=1, max_size=2, pg_timeout=600)
        if kept:
            print(f"reusing the {kept['clicks']:,} clicks loaded in {root}", flush=True)
            # Tables a new migration filled have statistics (block weights) from the start.
            await pool.execute(f"ANALYZE {', '.join(TABLES[4:])}", timeout=None)
            out["reused"] = kept
            out["reports"] = await time_reports(pool, opts, first, kept["campaign"])
            await pool.close()
            return out
        await sync_rollup_zones(pool, ZONES)
        await create_world(pool, setup)
        # The days loaded, and their conversions' months, get their partitions first.
        moments = [
            datetime.combine(first + timedelta(days=d), datetime.min.time(), UTC)
            for d in range(opts.days + 1)
        ]
        await partitions.ensure_partitions(pool, "clicks", moments)
        await partitions.ensure_partitions(pool, "conversions", moments)

        seconds = await load_clicks(pool, opts, start_ms)
        clicks = int(await pool.fetchval("SELECT count(*) FROM clicks"))
        out["clicks"] = clicks
        out["clicks_per_s"] = clicks / seconds
        print(f"load clicks        {clicks:,} in {seconds:.1f} s: {clicks / seconds:,.0f} rows/s")
        conversions, seconds = await load_conversions(pool, opts.campaigns)
        out["conversions"] = conversions
        out["conversions_per_s"] = conversions / seconds
        print(
            f"load conversions   {conversions:,} in {seconds:.1f} s: "
            f"{conversions / seconds:,.0f} rows/s ({conversions / clicks:.2%} of clicks)"
        )
        started = time.monotonic()
        folded = await fold_conversion_changes(pool)
        out["fold_s"] = time.monotonic() - started
        print(f"fold conversions   {folded:,} changes in {out['fold_s']:.1f} s (the sink's fold)")
        started = time.monotonic()
        await pool.execute("VACUUM ANALYZE", timeout=None)
        print(f"VACUUM ANALYZE     {time.monotonic() - started:.1f} s", flush=True)

        sizes = {}
        for table in TABLES:
            size = await pool.fetchval(TABLE_SIZE, table)
            rows = await pool.fetchval(f"SELECT count(*) FROM {table}")
            sizes[table] = {"bytes": int(size), "rows": int(rows)}
            print(
                f"size {table:<20} {size / 2**20:9.1f} MB  {rows:>12,} rows  "
                f"{size / 2**20 / (clicks / 1e6):7.1f} MB per million clicks"
            )
        total = sum(s["bytes"] for s in sizes.values())
        out["sizes"] = sizes
        out["mb_per_million_clicks"] = total / 2**20 / (clicks / 1e6)
        print(f"size total {'':15} {total / 2**20:9.1f} MB, {out['mb_per_million_clicks']:.1f} "
              "MB per million clicks", flush=True)  # fmt: skip

        campaign, in_campaign = await pool.fetchrow(
            "SELECT campaign_id, sum(clicks + bot_clicks) FROM click_rollups "
            "GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        )
        out["drill_down_campaign"] = {"id": campaign, "clicks": int(in_campaign)}
        print(f"drill-downs on campaign {campaign}, the largest: {in_campaign:,} clicks")
        if opts.keep:
            kept = {"today": str(today), "clicks": clicks, "campaign": campaign}
            loaded.write_text(json.dumps(kept) + "\n")
        out["reports"] = await time_reports(pool, opts, first, campaign)
        await pool.close()
    finally:
        pg.stop()
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20, help="runs of each report")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--campaigns", type=int, default=50)
    parser.add_argument("--batch", type=int, default=5000, help="click records per statement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds of runs per report, at most"
    )
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per report")
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the loaded database in DIR; a later run with the same DIR times its reports"
        " again without loading (after applying new migrations)",
    )


def options(**overrides: Any) -> argparse.Namespace:
    """The defaults, with some changed: for `bench/run.py`."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = parser.parse_args([])
    for name, value in overrides.items():
        setattr(opts, name, value)
    return opts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    opts = parser.parse_args()
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        **asyncio.run(run(opts)),
    }
    out = BENCH / "results" / f"reports-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"written {out.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()
