"""Keeps failed postbacks from filling the log: a per-address limit and a row size cap.

A source that sends junk (unknown click ids, bad tokens, huge bodies) gets at most
`limit` log rows a minute, each cut to a few KB; beyond that it gets 429s. The
counter lives in Redis so that every web process shares it; should Redis be down
the count goes on in process, since a limiter must never fail a request.
"""

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tracker.domain.auth import token_matches
from tracker.domain.campaign import ConfigSnapshot, NetworkRoute
from tracker.logs import Throttled
from tracker.settings import Settings
from tracker.store import keys
from tracker.store.postback_log import (
    FAILED_RESULTS,
    UPLOAD,
    Inbound,
    Result,
    truncated_for_log,
)

log = logging.getLogger("tracker.ratelimit")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

WINDOW_SECONDS = 60
# How long the limiter waits for Redis before counting in process instead.
REDIS_TIMEOUT = 0.25
_LOCAL_MAX_ADDRESSES = 100_000


class FailureLimiter:
    """Counts events per address in fixed windows of `window` seconds."""

    def __init__(
        self,
        redis: Redis,
        limit: int,
        window: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.window = window
        self._redis = redis
        self.clock = clock
        self._local: dict[str, tuple[int, int]] = {}
        self._outage = Throttled(log)
        # Addresses this process saw go over the limit, until their window ends: later
        # requests from them are refused before any work, without asking Redis.
        self._blocked: dict[str, float] = {}

    def blocked_for(self, address: str) -> int | None:
        """Seconds until `address` may be heard again, if it is known to be over the limit."""
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._blocked[address]
            return None
        return max(1, math.ceil(left))

    async def hit(self, address: str) -> int | None:
        """Count one event from `address`; the seconds until its window ends if that
        puts it over the limit, else None."""
        now = self.clock()
        window = int(now // self.window)
        count = await self._count(address, window)
        if count <= self.limit:
            return None
        if count == self.limit + 1:
            log.warning(
                "more than %d failed postbacks in a minute from %s; refusing until the minute ends",
                self.limit,
                address,
            )
        until = (window + 1) * self.window
        if len(self._blocked) > _LOCAL_MAX_ADDRESSES:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        self._blocked[address] = until
        return max(1, math.ceil(until - now))

    async def _count(self, address: str, window: int) -> int:
        key = keys.failed_postback_key(address, window)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, self.window * 2)
                    replies: list[Any] = await pipe.execute()
            return int(replies[0])
        except Exception as exc:  # a limiter must never fail the request it limits
            self._outage.warning(
                "failed postbacks uncounted in Redis (%r); counting in memory", exc
            )
            return self._count_locally(address, window)

    def _count_locally(self, address: str, window: int) -> int:
        if len(self._local) > _LOCAL_MAX_ADDRESSES:
            self._local = {a: wc for a, wc in self._local.items() if wc[0] == window}
        seen_window, count = self._local.get(address, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._local[address] = (window, count)
        return count


def carries_network_token(inbound: Inbound, networks: Iterable[NetworkRoute]) -> bool:
    """Whether the postback names the token of one of our networks, or comes from an
    address one of them allows: a network's own postbacks are never throttled."""
    token = inbound.params.get("token") or inbound.path_token
    address = _ip(inbound.client_ip)
    now = time.time()
    for network in networks:
        if token and token_matches(network, token, now):
            return True
        if address is not None and any(address in allowed for allowed in network.ip_allowlist):
            return True
    return False


def _ip(text: str | None) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text or "")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Screened:
    inbound: Inbound  # what to log
    retry_after: int | None = None  # when set: answer 429 with `refusal`, log nothing
    refusal: dict[str, Any] | None = None


class PostbackGuard:
    """Decides how a postback is logged, or that it is refused for too many failures."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.limiter = FailureLimiter(redis, settings.postback_failures_per_minute)
        self._max_bytes = settings.postback_log_max_bytes

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def refuse_early(self, inbound: Inbound, config: ConfigSnapshot) -> Screened | None:
        """A refusal before any work, for an address already over its limit (unless the
        postback is a network's own); None to go on."""
        retry_after = self.limiter.blocked_for(inbound.client_ip or "unknown")
        if retry_after is None or carries_network_token(inbound, config.networks.values()):
            return None
        return Screened(inbound, retry_after, self._refusal(retry_after))

    async def admit_unverified(self, inbound: Inbound, config: ConfigSnapshot) -> Screened | None:
        """A postback that could not be checked (Postgres unavailable) and is about to be
        queued whole: unless it is a network's own, it counts against its address, so
        junk cannot fill Redis during an outage. A refusal when over the limit."""
        if carries_network_token(inbound, config.networks.values()):
            return None
        retry_after = await self.limiter.hit(inbound.client_ip or "unknown")
        if retry_after is None:
            return None
        return Screened(inbound, retry_after, self._refusal(retry_after))

    def _refusal(self, retry_after: int) -> dict[str, Any]:
        return {
            "error": "too many failed postbacks from this address",
            "details": [
                {
                    "field": "client_ip",
                    "message": f"more than {self.limiter.limit} failed postbacks "
                    f"a minute; retry after {retry_after} s",
                }
            ],
            "retry_after": retry_after,
        }

    async def screen(self, inbound: Inbound, outcome: Result, config: ConfigSnapshot) -> Screened:
        """Successful postbacks pass as they are. Failed ones are cut to the row size cap
        and, unless they passed authentication (an upload's rows did, by the API key) or
        carry a network's token, counted against their address."""
        if outcome.result not in FAILED_RESULTS:
            return Screened(inbound)
        # An upload's rows come with the API key: its failures are the buyer's typos.
        authenticated = inbound.source == UPLOAD or (
            outcome.network_id is not None and outcome.result != "rejected-auth"
        )
        if not authenticated and not carries_network_token(inbound, config.networks.values()):
            retry_after = await self.limiter.hit(inbound.client_ip or "unknown")
            if retry_after is not None:
                return Screened(inbound, retry_after, self._refusal(retry_after))
        return Screened(truncated_for_log(inbound, self._max_bytes))
