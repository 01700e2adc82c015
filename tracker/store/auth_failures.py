"""Failed admin authentications per client address, counted in fixed windows.

Counted in Redis so that every process sees the same count; when Redis does not
answer within a moment, each process counts on its own in memory instead, so an
outage neither opens the door to guessing nor makes the API fail.
"""

import asyncio
import logging
import time

from redis.asyncio import Redis

from tracker.logs import Throttled
from tracker.store import keys

log = logging.getLogger("tracker.auth")

REDIS_TIMEOUT_SECONDS = 0.5
# Addresses tracked in memory at most; beyond that the oldest windows are forgotten.
MAX_LOCAL_ADDRESSES = 10_000


class AuthFailures:
    """At most `limit` failures per address per window of `window_seconds`."""

    def __init__(self, limit: int, window_seconds: int) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._local: dict[str, tuple[int, float]] = {}  # address: (failures, window ends)
        self._outage = Throttled(log)

    async def retry_after(self, redis: Redis, address: str) -> int | None:
        """Seconds until `address` may try again, or None if it may try now."""
        key = keys.auth_failures_key(address)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.get(key)
                    pipe.ttl(key)
                    failures, ttl = await pipe.execute()
        except Exception as exc:  # a limiter must never fail the request it limits
            self._outage.warning(
                "auth failure count unavailable in Redis (%r); counting in memory", exc
            )
            return self._local_retry_after(address)
        if failures is None or int(failures) < self.limit:
            return None
        return max(int(ttl), 1)

    async def record(self, redis: Redis, address: str) -> None:
        """Count one failed authentication from `address`."""
        key = keys.auth_failures_key(address)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                async with redis.pipeline(transaction=False) as pipe:
                    # The first failure starts the window; INCR keeps the expiry.
                    pipe.set(key, 0, ex=self.window_seconds, nx=True)
                    pipe.incr(key)
                    await pipe.execute()
        except Exception:  # a limiter must never fail the request it limits
            self._local_record(address)

    def _local_retry_after(self, address: str) -> int | None:
        failures, ends = self._local.get(address, (0, 0.0))
        now = time.monotonic()
        if now >= ends or failures < self.limit:
            return None
        return max(int(ends - now + 0.999), 1)

    def _local_record(self, address: str) -> None:
        now = time.monotonic()
        failures, ends = self._local.pop(address, (0, 0.0))
        if now >= ends:
            failures, ends = 0, now + self.window_seconds
        if len(self._local) >= MAX_LOCAL_ADDRESSES:
            self._local = {a: v for a, v in self._local.items() if v[1] > now}
            while len(self._local) >= MAX_LOCAL_ADDRESSES:
                del self._local[next(iter(self._local))]
        self._local[address] = (failures + 1, ends)
