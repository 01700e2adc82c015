"""The sink's metrics, served on `TRACKER_SINK_METRICS_PORT`: what it stored, applied and
delivered (counted by the sink's own parts), its pool, and the streams it reads."""

import contextlib
from collections.abc import AsyncIterator

import asyncpg
from redis.asyncio import Redis

from tracker.metrics import Metrics, serving_metrics
from tracker.settings import Settings
from tracker.sink.clicks import ClickSink
from tracker.sink.postbacks import PostbackQueueSink
from tracker.sink.sender import DeliverySender
from tracker.store import keys


def sink_metrics(
    pool: asyncpg.Pool,
    sink: ClickSink | None,
    queue: PostbackQueueSink | None,
    sender: DeliverySender,
    shards: int = keys.DEFAULT_SHARDS,
) -> Metrics:
    metrics = Metrics(shards=shards)
    watched = metrics
    watched.pools["sink"] = pool
    if sink is not None:
        watched.counts["tracker_sink_clicks_stored"] = (
            "Clicks the sink stored in Postgres",
            None,
            lambda: sink.stored,
        )
    if queue is not None:
        watched.counts["tracker_sink_postbacks_applied"] = (
            "Postbacks queued during a Postgres outage and applied by the sink",
            None,
            lambda: queue.applied,
        )
    watched.counts["tracker_deliveries"] = (
        "Delivery attempts to traffic sources and ad platforms, by what they led to",
        "outcome",
        lambda: sender.outcomes,
    )
    return metrics


@contextlib.asynccontextmanager
async def serving_sink_metrics(
    settings: Settings,
    redis: Redis,
    pool: asyncpg.Pool,
    sink: ClickSink | None,
    queue: PostbackQueueSink | None,
    sender: DeliverySender,
) -> AsyncIterator[None]:
    """Serve the sink's metrics while the block runs, if a port is set."""
    metrics = sink_metrics(pool, sink, queue, sender, settings.redis_shards)
    async with serving_metrics(metrics, redis, settings.metrics_host, settings.sink_metrics_port):
        yield
