"""An idempotent demo setup: one traffic source, network, offer and campaign."""

import secrets
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from tracker.domain.campaign import new_campaign_key
from tracker.store import keys

DEMO_SOURCE = "Demo traffic source"
DEMO_NETWORK = "Demo affiliate network"
DEMO_OFFER = "Demo offer"
DEMO_CAMPAIGN = "Demo campaign"
DEMO_OFFER_URL = "https://offer.example.com/lp?clickid={clickid}&campaign={campaign_id}&s1={sub1}"

FIND = "SELECT id FROM {table} WHERE name = $1 AND archived_at IS NULL ORDER BY id LIMIT 1"


@dataclass(frozen=True)
class Demo:
    campaign_key: str
    postback_token: str


async def _find(conn: asyncpg.Connection, table: str, name: str) -> int | None:
    found: int | None = await conn.fetchval(FIND.format(table=table), name)
    return found


async def seed_demo(dsn: str, redis_url: str | None = None) -> Demo:
    """Create the demo rows if missing; with `redis_url`, running processes are told to
    reload their configuration (the version bump every admin write makes)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # Serialise concurrent seeds so the demo is created once.
            await conn.execute("SELECT pg_advisory_xact_lock(7240612)")
            source = await _find(conn, "traffic_sources", DEMO_SOURCE)
            if source is None:
                source = await conn.fetchval(
                    "INSERT INTO traffic_sources (name) VALUES ($1) RETURNING id", DEMO_SOURCE
                )
            network = await _find(conn, "affiliate_networks", DEMO_NETWORK)
            if network is None:
                network = await conn.fetchval(
                    "INSERT INTO affiliate_networks (name, postback_token) VALUES ($1, $2) "
                    "RETURNING id",
                    DEMO_NETWORK,
                    secrets.token_urlsafe(18),
                )
            offer = await _find(conn, "offers", DEMO_OFFER)
            if offer is None:
                offer = await conn.fetchval(
                    "INSERT INTO offers (name, url, affiliate_network_id, payout, currency) "
                    "VALUES ($1, $2, $3, 2.50, 'USD') RETURNING id",
                    DEMO_OFFER,
                    DEMO_OFFER_URL,
                    network,
                )
            campaign = await _find(conn, "campaigns", DEMO_CAMPAIGN)
            if campaign is None:
                campaign = await conn.fetchval(
                    "INSERT INTO campaigns (key, name, traffic_source_id, cost_model, cost_value) "
                    "VALUES ($1, $2, $3, 'cpc', 0.10) RETURNING id",
                    new_campaign_key(),
                    DEMO_CAMPAIGN,
                    source,
                )
                await conn.execute(
                    "INSERT INTO campaign_offers (campaign_id, offer_id, weight, position) "
                    "VALUES ($1, $2, 100, 0)",
                    campaign,
                    offer,
                )
            key = await conn.fetchval("SELECT key FROM campaigns WHERE id = $1", campaign)
            token = await conn.fetchval(
                "SELECT postback_token FROM affiliate_networks WHERE id = $1", network
            )
    finally:
        await conn.close()
    if redis_url is not None:
        redis = Redis.from_url(redis_url)
        try:
            await redis.incr(keys.CONFIG_VERSION)
        finally:
            await redis.aclose()
    return Demo(campaign_key=key, postback_token=token)
