"""Loads campaign configuration into memory and keeps it fresh across processes.

The click path must not query Postgres, so every process holds a snapshot.
Admin writes bump a version key in Redis; every process polls that key
(one GET a second by default) and reloads when it moves. Polling rather than
pub/sub: nothing to miss on a reconnect, and it works the same on a cluster.
"""

import asyncio
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tracker.domain.campaign import (
    CampaignRoute,
    ConfigSnapshot,
    FlowPath,
    LanderRoute,
    NetworkRoute,
    OfferRoute,
)
from tracker.domain.macros import compile_template
from tracker.domain.routing import WeightedChoice
from tracker.domain.rules import Rule, RuleError, compile_rule
from tracker.store import keys

log = logging.getLogger("tracker.config")

CLOSE_TIMEOUT_SECONDS = 2.0
# A version no Redis reply equals, so the watcher reloads once Redis answers.
_UNKNOWN = object()

SELECT_NETWORKS = """
SELECT id, postback_token, require_token, ip_allowlist, signing_secret, status_map,
       duplicate_policy, previous_postback_token, previous_token_expires_at, archived_at,
       allow_pixel
FROM affiliate_networks
"""
SELECT_OFFERS = """
SELECT id, url, affiliate_network_id, payout, currency, archived_at FROM offers
"""
SELECT_CAMPAIGNS = """
SELECT c.id, c.key, c.traffic_source_id, c.cost_model, c.cost_value,
       c.attribution_window_days, c.report_currency, c.archived_at,
       c.rules, c.bot_action, c.bot_url, c.unique_window_hours, c.timezone,
       t.external_id_param, t.cost_param, t.max_click_cost
FROM campaigns c JOIN traffic_sources t ON t.id = c.traffic_source_id
"""
SELECT_RATES = "SELECT currency, valid_from, rate FROM currency_rates ORDER BY currency, valid_from"
SELECT_CAMPAIGN_OFFERS = """
SELECT co.campaign_id, co.offer_id, co.weight
FROM campaign_offers co
ORDER BY co.campaign_id, co.position
"""

SELECT_LANDERS = "SELECT id, url, archived_at FROM landers"
SELECT_CAMPAIGN_LANDERS = """
SELECT campaign_id, lander_id, weight
FROM campaign_landers
ORDER BY campaign_id, position
"""


async def load_snapshot(pool: asyncpg.Pool) -> ConfigSnapshot:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        network_rows = await conn.fetch(SELECT_NETWORKS)
        rate_rows = await conn.fetch(SELECT_RATES)
        offer_rows = await conn.fetch(SELECT_OFFERS)
        campaign_rows = await conn.fetch(SELECT_CAMPAIGNS)
        link_rows = await conn.fetch(SELECT_CAMPAIGN_OFFERS)
        lander_rows = await conn.fetch(SELECT_LANDERS)
        lander_link_rows = await conn.fetch(SELECT_CAMPAIGN_LANDERS)
    snapshot = ConfigSnapshot()
    for row in network_rows:
        snapshot.networks[row["id"]] = NetworkRoute(
            id=row["id"],
            postback_token=row["postback_token"],
            require_token=row["require_token"],
            ip_allowlist=tuple(ipaddress.ip_network(n, strict=False) for n in row["ip_allowlist"]),
            signing_secret=row["signing_secret"],
            status_map={str(k).lower(): str(v) for k, v in row["status_map"].items()},
            duplicate_policy=row["duplicate_policy"],
            previous_postback_token=row["previous_postback_token"],
            previous_token_expires_at=(
                row["previous_token_expires_at"].timestamp()
                if row["previous_token_expires_at"] is not None
                else None
            ),
            archived=row["archived_at"] is not None,
            allow_pixel=row["allow_pixel"],
        )
    for row in rate_rows:
        snapshot.rates.setdefault(row["currency"], []).append((row["valid_from"], row["rate"]))
    active_offers: set[int] = set()
    for row in offer_rows:
        snapshot.offers[row["id"]] = OfferRoute(
            id=row["id"],
            url=compile_template(row["url"]),
            affiliate_network_id=row["affiliate_network_id"],
            payout=row["payout"],
            currency=row["currency"],
        )
        if row["archived_at"] is None:
            active_offers.add(row["id"])
    links: dict[int, list[tuple[OfferRoute, int]]] = defaultdict(list)
    for row in link_rows:
        if row["offer_id"] in active_offers:
            links[row["campaign_id"]].append((snapshot.offers[row["offer_id"]], row["weight"]))
    for row in lander_rows:
        snapshot.landers[row["id"]] = LanderRoute(id=row["id"], url=compile_template(row["url"]))
    live_offers = {i: snapshot.offers[i] for i in active_offers}
    live_landers = {
        row["id"]: snapshot.landers[row["id"]] for row in lander_rows if row["archived_at"] is None
    }
    lander_links: dict[int, list[tuple[LanderRoute, int]]] = defaultdict(list)
    for row in lander_link_rows:
        if row["lander_id"] in live_landers:
            lander_links[row["campaign_id"]].append((live_landers[row["lander_id"]], row["weight"]))
    for row in campaign_rows:
        route = CampaignRoute(
            id=row["id"],
            key=row["key"],
            traffic_source_id=row["traffic_source_id"],
            external_id_param=row["external_id_param"],
            cost_param=row["cost_param"],
            cost_model=row["cost_model"],
            cost_value=row["cost_value"],
            attribution_window_days=row["attribution_window_days"],
            report_currency=row["report_currency"],
            offers=WeightedChoice(links[row["id"]]),
            max_click_cost=row["max_click_cost"],
            landers=WeightedChoice(lander_links[row["id"]]),
            rules=_compile_rules(row["id"], row["rules"], live_offers, live_landers),
            bot_action=row["bot_action"],
            bot_url=compile_template(row["bot_url"]) if row["bot_url"] else None,
            unique_window_hours=row["unique_window_hours"],
            timezone=_time_zone(row["id"], row["timezone"]),
        )
        snapshot.campaigns_by_id[route.id] = route
        if route.offers and row["archived_at"] is None:
            snapshot.campaigns[route.key] = route
    return snapshot


def _compile_rules(
    campaign_id: int,
    stored: Any,
    offers: Mapping[int, OfferRoute],
    landers: Mapping[int, LanderRoute],
) -> tuple[Rule[FlowPath], ...]:
    """A campaign's rules, their paths made of its active offers and landers (an archived
    one drops out, as from the default path). The API validated every rule on save; one
    that still fails to compile is logged and skipped, never failing the whole load."""
    rules = []
    for index, raw in enumerate(stored if isinstance(stored, list) else []):
        try:
            path = FlowPath(
                offers=WeightedChoice(
                    [
                        (offers[link["offer_id"]], int(link["weight"]))
                        for link in raw["offers"]
                        if link["offer_id"] in offers
                    ]
                ),
                landers=WeightedChoice(
                    [
                        (landers[link["lander_id"]], int(link["weight"]))
                        for link in raw.get("landers", ())
                        if link["lander_id"] in landers
                    ]
                ),
            )
            rules.append(compile_rule(index, raw, path))
        except (RuleError, LookupError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "campaign %s: rule %d skipped, it does not compile: %s", campaign_id, index, exc
            )
    return tuple(rules)


def _time_zone(campaign_id: int, name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # The API checked the name; this machine's time zone data may still lack it.
        log.warning(
            "campaign %s: time zone %r unknown here (%r); using UTC", campaign_id, name, exc
        )
        return UTC


class ConfigCache:
    """The process's current configuration snapshot, swapped whole on reload."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis, refresh_seconds: float) -> None:
        self.snapshot = ConfigSnapshot()
        self._pool = pool
        self._redis = redis
        self._refresh_seconds = refresh_seconds
        self._version: Any = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._bump_pending = False

    async def reload(self) -> None:
        async with self._lock:
            version: Any
            try:
                version = await self._redis.get(keys.CONFIG_VERSION)
            except (RedisError, OSError) as exc:
                # Start (or reload) from Postgres anyway; the next good poll reloads again.
                log.warning("configuration version unreadable (%r); loading anyway", exc)
                version = _UNKNOWN
            self.snapshot = await load_snapshot(self._pool)
            self._version = version
        log.debug("configuration reloaded: %d campaigns", len(self.snapshot.campaigns))

    async def changed(self) -> None:
        """Reload here now; other processes see the new version on their next poll.

        The change is already committed in Postgres, so a Redis outage must not turn
        it into an error: the version is bumped by the watcher once Redis answers."""
        try:
            await self._redis.incr(keys.CONFIG_VERSION)
        except (RedisError, OSError) as exc:
            log.warning("configuration version not bumped yet (%r); will retry", exc)
            self._bump_pending = True
        await self.reload()

    async def start(self) -> None:
        """Load the configuration, then keep it fresh in the background."""
        await self.reload()
        self._watcher = asyncio.create_task(self.watch(), name="config-watch")

    async def close(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            # A Redis call being cancelled can take a while to let go (seen with a
            # reply in flight); stopping must not wait for it.
            await asyncio.wait({self._watcher}, timeout=CLOSE_TIMEOUT_SECONDS)
            self._watcher = None

    async def watch(self) -> None:
        """Reload whenever the shared version moves. Runs until cancelled."""
        failing = False
        while True:
            await asyncio.sleep(self._refresh_seconds)
            # Once closed, never a call more: the Redis client may be closed by now, and a
            # command would open a connection on it that nobody closes.
            if self._closing:
                return
            try:
                if self._bump_pending:
                    await self._redis.incr(keys.CONFIG_VERSION)
                    self._bump_pending = False
                if await self._redis.get(keys.CONFIG_VERSION) != self._version:
                    await self.reload()
            except Exception as exc:
                if self._closing:
                    # Cancelled by close(), in a call that let go with another error (a
                    # closed connection, say) instead of the cancellation: stop all the same.
                    return
                # One line per outage, not one a second: the snapshot in hand keeps serving.
                if not failing:
                    failing = True
                    log.warning("configuration refresh failing (%r); keeping the current one", exc)
                continue
            if failing:
                failing = False
                log.info("configuration refresh working again")
