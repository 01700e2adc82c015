from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tracker.settings import Settings


def create_redis(url: str, timeout: float = 0.5, connect_timeout: float = 1.0) -> Redis:
    """A client with a connection pool; responses stay bytes (click records are JSON bytes).

    Every command gives up after `timeout` seconds, so a frozen Redis costs a
    caller a bounded wait. A command that finds its pooled connection dead (Redis
    restarted) is retried once on a fresh one; a timed-out command is not retried,
    which would double the wait.
    """
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=30,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return client


def redis_for(settings: Settings, blocking_ms: int = 0) -> Redis:
    """The client for a process; `blocking_ms` widens the timeout for blocking reads
    (the sink's XREADGROUP), which must not count as a frozen Redis."""
    return create_redis(
        settings.redis_url,
        timeout=settings.redis_timeout + blocking_ms / 1000,
        connect_timeout=settings.redis_connect_timeout,
    )
