"""Prometheus metrics of one process: counters and histograms the paths update, and values
read when scraped (stream backlog, sink lag, pool use, writer counts).

Each process has its own registry and serves its own numbers (`serve --workers N` gives
each worker a metrics port of its own; see the README). Label values come from short fixed
sets, never from a campaign or an address, so the number of series stays small.
"""

import asyncio
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from tracker.store import keys
from tracker.store.batching import Batcher
from tracker.store.health import stream_backlog, stream_lag_seconds

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a click is a few milliseconds, a report can take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# A scrape waits this long for Redis; then the stream figures are reported as unknown.
STREAM_PROBE_SECONDS = 1.0


def _ignore(seconds: float) -> None:
    pass


class ScrapeTime(Collector):
    """Values read when scraped: the pools' use and the writers' counts of this process."""

    def __init__(self) -> None:
        self.pools: dict[str, asyncpg.Pool] = {}
        self.batchers: list[Batcher[Any, Any]] = []
        # Counters kept by the code that counts (a writer's `spooled`, a sender's
        # `outcomes`): name -> (help, label name or None, read). `read` returns the total,
        # or totals by label value.
        self.counts: dict[str, tuple[str, str | None, Callable[[], Any]]] = {}

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            "tracker_pg_pool_connections", "PostgreSQL connections open in a pool", labels=["pool"]
        )
        busy = GaugeMetricFamily(
            "tracker_pg_pool_busy", "PostgreSQL connections in use in a pool", labels=["pool"]
        )
        for name, pool in self.pools.items():
            size.add_metric([name], pool.get_size())
            busy.add_metric([name], pool.get_size() - pool.get_idle_size())
        yield size
        yield busy
        pending = GaugeMetricFamily(
            "tracker_batch_pending", "Items waiting for a writer's next batch", labels=["writer"]
        )
        for batcher in self.batchers:
            pending.add_metric([batcher.name], batcher.pending)
        yield pending
        for metric, (help_text, label, read) in self.counts.items():
            counter = CounterMetricFamily(metric, help_text, labels=[label] if label else None)
            if label is None:
                counter.add_metric([], read())
            else:
                for value, total in read().items():
                    counter.add_metric([value], total)
            yield counter


class Metrics:
    """The metrics of one process (a web worker, or a sink)."""

    def __init__(self, enabled: bool = True) -> None:
        # Off (TRACKER_METRICS_ENABLED=false), the paths count nothing: what the bench
        # compares with, to measure what counting costs a click.
        self.enabled = enabled
        self.registry = CollectorRegistry()
        r = self.registry
        self.clicks = Counter(
            "tracker_clicks",
            "Clicks answered, by what the visitor got and whether a bot was seen",
            ["result", "bot"],
            registry=r,
        )
        self.postbacks = Counter(
            "tracker_postbacks",
            "Postbacks and pixel hits answered, by outcome",
            ["source", "result"],
            registry=r,
        )
        self.conversions = Counter(
            "tracker_conversions",
            "Conversions created, and status changes, by the status they now have",
            ["status"],
            registry=r,
        )
        self.requests = Histogram(
            "tracker_request_seconds",
            "Time to answer a request, by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_sizes = Histogram(
            "tracker_batch_size",
            "Items per batch written (group commit), by writer",
            ["writer"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "tracker_stream_backlog",
            "Entries on a stream not yet stored by the sink",
            ["stream"],
            registry=r,
        )
        self.lag = Gauge(
            "tracker_sink_lag_seconds",
            "Age of the oldest entry on a stream the sink has not stored yet",
            ["stream"],
            registry=r,
        )
        self.scrape_time = ScrapeTime()
        r.register(self.scrape_time)
        # Children bound once: a label lookup per request costs more than the increment.
        self._route_timers: dict[tuple[str, str], Callable[[float], None]] = {}
        self._increments: dict[tuple[Counter, tuple[str, ...]], Callable[[], None]] = {}

    def count(self, counter: Counter, *labels: str) -> None:
        """Add one to `counter`'s series for `labels`."""
        if not self.enabled:
            return
        key = (counter, labels)
        increment = self._increments.get(key)
        if increment is None:
            increment = self._increments[key] = counter.labels(*labels).inc
        increment()

    def route_timer(self, route: str, method: str) -> Callable[[float], None]:
        if not self.enabled:
            return _ignore
        timer = self._route_timers.get((route, method))
        if timer is None:
            timer = self.requests.labels(route, method).observe
            self._route_timers[(route, method)] = timer
        return timer

    def watch_batchers(self, batchers: Iterable[Batcher[Any, Any]]) -> None:
        """Record each writer's batch sizes, and show its queue when scraped."""
        for batcher in batchers:
            if self.enabled:
                batcher.on_batch = self.batch_sizes.labels(batcher.name).observe
            self.scrape_time.batchers.append(batcher)

    async def read_streams(self, redis: Redis) -> None:
        """Set the backlog and lag of each stream the sink reads (NaN when Redis is out)."""
        for name, (stream, group) in keys.SINK_STREAMS.items():
            try:
                async with asyncio.timeout(STREAM_PROBE_SECONDS):
                    backlog = float(await stream_backlog(redis, stream, group))
                    lag = await stream_lag_seconds(redis, stream, group)
            except Exception:  # Redis unavailable: unknown, not zero
                backlog = lag = math.nan
            self.backlog.labels(name).set(backlog)
            self.lag.labels(name).set(lag)

    async def scrape(self, redis: Redis) -> web.Response:
        """The answer to a scrape: every metric, the streams read just now."""
        await self.read_streams(redis)
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE}
        )


async def serve_metrics(metrics: Metrics, redis: Redis, host: str, port: int) -> web.AppRunner:
    """A listener of its own for `metrics` (GET /metrics, no API key): for a process with
    no other HTTP port (the sink), or one of several workers sharing the web port."""

    async def scrape(request: web.Request) -> web.Response:
        return await metrics.scrape(redis)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
