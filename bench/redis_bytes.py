"""Redis bytes per click: the record, the stream entry until the sink trims it, and the
visitor's unique-click key.

Starts its own Redis (no persistence), builds click records as the click path does
(the visitor facts, the campaign's plan, the same JSON), writes N of them through the
real click writer, and prints per click: `MEMORY USAGE` of a record and of a unique-
visitor key (averaged over a sample), of the stream key divided by N, and the growth of
`INFO memory` used_memory divided by N, before and after the stream is trimmed.

With `--lookups N` it also starts its own PostgreSQL, lets the sink store N plain clicks
and times the click look-up a postback makes (`ClickReader.fetch`), from Redis (in the
hot window) and from Postgres (the record expired), one at a time and 64 at once.
Usage: python bench/redis_bytes.py [--clicks 100000] [--lookups 5000] [--json]
"""

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tracker.devstack import PostgresServer, RedisServer, free_port
from tracker.domain.campaign import CampaignRoute, OfferRoute
from tracker.domain.click import ParamLimits, plan_click, stored_json, visitor_id
from tracker.domain.clickid import new_click_id
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.facts.visitors import VisitorFacts
from tracker.settings import Settings
from tracker.sink.clicks import ClickSink
from tracker.store import keys
from tracker.store.clicks import ClickReader, ClickWriter, hot_window_seconds
from tracker.store.db import create_pool, migrate

SAMPLE = 500
CHUNK = 2000
# Mobile browsers as an ad network's traffic brings them, at typical lengths.
AGENTS = (
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.6478.122 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
)
LANGUAGES = ("en-US,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "pt-BR,pt;q=0.9")


def campaign() -> CampaignRoute:
    offer = OfferRoute(17, compile_template("https://offer.example/?c={clickid}"), 1, None, "USD")
    return CampaignRoute(
        id=12,
        key="Zk3pQ9aBc1Dx",
        traffic_source_id=4,
        external_id_param="external_id",
        cost_param="cost",
        cost_model="auto",
        cost_value=None,
        attribution_window_days=30,
        report_currency="USD",
        offers=WeightedChoice([(offer, 1)]),
    )


def plain_query(rng: random.Random) -> dict[str, str]:
    """A push or native ad click: the source's click id, a zone, a creative and a cost."""
    return {
        "external_id": f"{rng.getrandbits(96):024x}",
        "sub1": f"zone-{rng.randrange(10**6)}",
        "sub2": f"creative-{rng.randrange(10**4)}",
        "cost": f"0.{rng.randrange(1000, 9999)}",
    }


def rich_query(rng: random.Random) -> dict[str, str]:
    """A search or social click: every sub id, a long platform click id and many free
    parameters (UTM tags, placement, device ids)."""
    query = plain_query(rng)
    query.update({f"sub{n}": f"value-{n}-{rng.getrandbits(40):010x}" for n in range(3, 11)})
    query["gclid"] = f"Cj0KCQjw{rng.getrandbits(480):0120x}"[:100]
    query.update(
        {
            "utm_source": "google",
            "utm_medium": "cpc",
            "utm_campaign": f"summer-sale-{rng.randrange(100)}",
            "utm_content": f"ad-{rng.randrange(10**6)}",
            "utm_term": "running shoes women",
            "placement": f"www.site{rng.randrange(1000)}.example",
            "matchtype": "b",
            "network": "g",
            "device": "m",
            "adposition": "1t1",
        }
    )
    query.update({f"p{n}": f"{rng.getrandbits(64):016x}" for n in range(10)})
    return query


def make_records(
    facts: VisitorFacts, settings: Settings, count: int, rich: bool
) -> list[tuple[str, bytes, str]]:
    """(click id, record JSON, unique-visitor key) for `count` distinct visitors."""
    rng = random.Random(13 if rich else 7)
    route = campaign()
    limits = ParamLimits(settings.click_max_params, settings.click_max_param_length)
    now_ms = int(time.time() * 1000)
    out = []
    for i in range(count):
        octets = (
            rng.randrange(1, 224),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(1, 255),
        )
        ip = ".".join(map(str, octets))
        agent = AGENTS[i % len(AGENTS)]
        visitor = facts.visitor(
            ip,
            agent,
            f"https://news{rng.randrange(100)}.example/article/{rng.randrange(10**6)}",
            LANGUAGES[i % len(LANGUAGES)],
        )
        query = rich_query(rng) if rich else plain_query(rng)
        click_id = new_click_id(now_ms + i)
        plan = plan_click(route, visitor, query, click_id, now_ms + i, limits)
        vid, _ = visitor_id(None, ip, agent)
        out.append((click_id, stored_json(plan.record), keys.unique_visitor_key(route.id, vid)))
    return out


async def used_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def mean_usage(redis: Redis, names: list[str]) -> float:
    sizes = [await redis.memory_usage(name, samples=0) for name in names]
    return statistics.mean(s for s in sizes if s is not None)


async def measure(
    redis: Redis, settings: Settings, records: list[tuple[str, bytes, str]]
) -> dict[str, Any]:
    await redis.flushall()
    streams = keys.click_streams(keys.DEFAULT_SHARDS)
    for stream in streams:
        await redis.xgroup_create(stream, keys.SINK_GROUP, id="0", mkstream=True)
    before = await used_memory(redis)
    writer = ClickWriter(redis, hot_seconds=hot_window_seconds(settings))
    await writer.start()
    try:
        unique_ttl = 24 * 3600
        for start in range(0, len(records), CHUNK):
            await asyncio.gather(
                *(
                    writer.write(click_id, record, 30 * 86400, unique_key, unique_ttl)
                    for click_id, record, unique_key in records[start : start + CHUNK]
                )
            )
    finally:
        await writer.close()
    written = await used_memory(redis)
    n = len(records)
    sample = records[:: max(1, n // SAMPLE)][:SAMPLE]
    stored = [await redis.get(keys.click_key(click_id)) for click_id, _, _ in sample[:50]]
    stream_bytes = sum([await redis.memory_usage(s, samples=0) or 0 for s in streams])
    result = {
        "clicks": n,
        "record_json_bytes": statistics.mean(len(r) for r in stored if r is not None),
        "record_memory_usage": await mean_usage(redis, [keys.click_key(c) for c, _, _ in sample]),
        "unique_key_memory_usage": await mean_usage(redis, [u for _, _, u in sample]),
        "stream_memory_usage_per_click": stream_bytes / n,
        "used_memory_per_click_with_stream": (written - before) / n,
    }
    # What stays once the sink has stored and acknowledged every entry and trimmed them.
    for stream in streams:
        await redis.xtrim(stream, maxlen=0, approximate=False)
    trimmed = await used_memory(redis)
    result["used_memory_per_click_trimmed"] = (trimmed - before) / n
    # The unique-visitor keys live for the unique window (24 h by default), not the
    # hot window: their share apart.
    for start in range(0, n, CHUNK):
        await redis.delete(*(u for _, _, u in records[start : start + CHUNK]))
    result["used_memory_per_record"] = (await used_memory(redis) - before) / n
    result["used_memory_per_unique_key"] = (trimmed - before) / n - result["used_memory_per_record"]
    return result


async def time_lookups(reader: ClickReader, ids: list[str]) -> dict[str, float]:
    """Microseconds per look-up, one at a time (median, p99), and look-ups/s 64 at once."""
    one: list[float] = []
    for click_id in ids:
        start = time.perf_counter()
        assert await reader.fetch(click_id) is not None
        one.append((time.perf_counter() - start) * 1e6)
    one.sort()
    start = time.perf_counter()
    for first in range(0, len(ids), 64):
        await asyncio.gather(*(reader.fetch(c) for c in ids[first : first + 64]))
    return {
        "median_us": statistics.median(one),
        "p99_us": one[int(len(one) * 0.99)],
        "per_second_64": len(ids) / (time.perf_counter() - start),
    }


async def measure_lookups(
    redis: Redis, root: Path, settings: Settings, count: int
) -> dict[str, Any]:
    """The postback's click look-up in the hot window (Redis) and after it (Postgres)."""
    pg = PostgresServer(root / "postgres", free_port())
    pg.start()
    try:
        await migrate(pg.dsn())
        pool = await create_pool(pg.dsn(), 2, 8)
        try:
            records = make_records(VisitorFacts(settings), settings, count, rich=False)
            ids = [click_id for click_id, _, _ in records]
            await redis.flushall()
            writer = ClickWriter(redis, hot_seconds=hot_window_seconds(settings))
            await writer.start()
            for start in range(0, count, CHUNK):
                part = records[start : start + CHUNK]
                await asyncio.gather(*(writer.write(c, r, 30 * 86400) for c, r, _ in part))
            await writer.close()
            sink = ClickSink(redis, pool, consumer="bench", block_ms=50)
            task = asyncio.create_task(sink.run())
            while await sink.backlog():
                await asyncio.sleep(0.1)
            sink.stop()
            await task
            reader = ClickReader(redis, pool)
            await reader.start()
            try:
                hot = await time_lookups(reader, ids)
                for start in range(0, count, CHUNK):
                    await redis.delete(*(keys.click_key(c) for c in ids[start : start + CHUNK]))
                cold = await time_lookups(reader, ids)
            finally:
                await reader.close()
            return {"lookups": count, "redis": hot, "postgres": cold}
        finally:
            await pool.close()
    finally:
        pg.stop()


async def run(clicks: int, lookups: int = 0) -> dict[str, Any]:
    settings = Settings()
    facts = VisitorFacts(settings)
    root = Path(tempfile.mkdtemp(prefix="tracker-redis-bytes-"))
    root.chmod(0o755)  # for the Postgres server of --lookups, which runs as its own user
    server = RedisServer(root, free_port(), persistent=False)
    server.start()
    redis = Redis.from_url(server.url())
    try:
        for _ in range(100):
            try:
                await redis.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        version = (await redis.info("server"))["redis_version"]
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "redis": version,
            "hot_window_hours": settings.redis_click_ttl_hours,
        }
        for name, rich in (("plain", False), ("many_params", True)):
            records = make_records(facts, settings, clicks, rich)
            results[name] = await measure(redis, settings, records)
        if lookups:
            results["lookup"] = await measure_lookups(redis, root / "pg", settings, lookups)
        return results
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict[str, Any]) -> None:
    print(
        f"Redis {results['redis']}, {results['date']}, hot window {results['hot_window_hours']} h"
    )
    rows = (
        ("record JSON (bytes)", "record_json_bytes"),
        ("record, MEMORY USAGE", "record_memory_usage"),
        ("unique-visitor key, MEMORY USAGE", "unique_key_memory_usage"),
        ("stream entry, MEMORY USAGE / N", "stream_memory_usage_per_click"),
        ("used_memory / N, stream untrimmed", "used_memory_per_click_with_stream"),
        ("used_memory / N, stream trimmed", "used_memory_per_click_trimmed"),
        ("  of which records", "used_memory_per_record"),
        ("  of which unique-visitor keys", "used_memory_per_unique_key"),
    )
    print(f"{'bytes per click':40} {'plain':>10} {'many params':>12}")
    for label, key in rows:
        print(f"{label:40} {results['plain'][key]:10.0f} {results['many_params'][key]:12.0f}")
    hours = results["hot_window_hours"]
    print("RAM held (records x hot window + unique keys x 24 h; stream trimmed):")
    for daily in (1_000_000, 10_000_000):
        for name in ("plain", "many_params"):
            figures = results[name]
            record = figures["used_memory_per_record"]
            held = daily * (hours / 24 * record + figures["used_memory_per_unique_key"])
            whole = daily * (30 * record + figures["used_memory_per_unique_key"])
            print(
                f"{daily:>12,} clicks/day, {name:11}: {held / 2**30:6.2f} GiB"
                f" (records kept the whole 30-day window: {whole / 2**30:6.1f} GiB)"
            )
    if "lookup" in results:
        print(f"postback click look-up ({results['lookup']['lookups']} clicks):")
        for where in ("redis", "postgres"):
            t = results["lookup"][where]
            print(
                f"  from {where:8}: median {t['median_us']:7.0f} us, p99 {t['p99_us']:7.0f} us,"
                f" {t['per_second_64']:8.0f}/s with 64 at once"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=0, help="time N click look-ups too")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    results = asyncio.run(run(args.clicks, args.lookups))
    report(results)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()


if __name__ == "__main__":
    main()
