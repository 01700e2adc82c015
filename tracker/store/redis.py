from typing import cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tracker.settings import Settings


def create_redis(
    url: str, timeout: float = 0.5, connect_timeout: float = 1.0, cluster: bool = False
) -> Redis:
    """A client with a connection pool; responses stay bytes (click records are JSON bytes).

    Every command gives up after `timeout` seconds, so a frozen Redis costs a
    caller a bounded wait. A command that finds its pooled connection dead (Redis
    restarted) is retried once on a fresh one; a timed-out command is not retried,
    which would double the wait.

    With `cluster`, `url` names one node of a Redis Cluster and the client finds the
    others and follows slots as they move (a failover). It is typed as `Redis`: every
    call site uses the commands both share, with all keys of one call in one slot
    (see `is_cluster` for the few that differ).
    """
    if cluster:
        return cast(
            Redis,
            RedisCluster.from_url(
                url,
                decode_responses=False,
                health_check_interval=30,
                socket_timeout=timeout,
                socket_connect_timeout=connect_timeout,
                # A failover leaves slots uncovered for a moment; the client keeps going.
                require_full_coverage=False,
                # A node that went away: find the new owner of its slots, a few times.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3),
            ),
        )
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=30,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client


def is_cluster(redis: Redis) -> bool:
    """True for a Redis Cluster client (made by `create_redis(..., cluster=True)`)."""
    return isinstance(redis, RedisCluster)


def redis_for(settings: Settings, blocking_ms: int = 0) -> Redis:
    """The client for a process; `blocking_ms` widens the timeout for blocking reads
    (the sink's XREADGROUP), which must not count as a frozen Redis."""
    return create_redis(
        settings.redis_url,
        timeout=settings.redis_timeout + blocking_ms / 1000,
        connect_timeout=settings.redis_connect_timeout,
        cluster=settings.redis_cluster,
    )
