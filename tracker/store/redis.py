from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    """A client with a connection pool; responses stay bytes (click records are JSON bytes)."""
    client: Redis = Redis.from_url(url, decode_responses=False, health_check_interval=30)
    return client
