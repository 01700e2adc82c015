"""The outbox: deliveries of conversions to traffic sources, claimed by senders with a
lease, and every attempt made at them. Deliveries are written by a trigger in the
conversion change's transaction (migration 0010)."""

from datetime import datetime
from typing import Any

import asyncpg

from tracker.domain.click import FACT_COLUMNS, SUB_NAMES

CHANNEL = "tracker_deliveries"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATES = (PENDING, DELIVERED, DEAD)

# Due deliveries, oldest first, each taken by one sender only (SKIP LOCKED) and leased:
# until `lease` seconds pass nobody else takes it, and if the sender dies it is taken
# again after that. The claim counts the attempt, which is also the lease's identity.
CLAIM_DUE = """
WITH due AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND next_attempt_at <= clock_timestamp()
    ORDER BY next_attempt_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET attempts = d.attempts + 1,
    lease = d.lease + 1,
    next_attempt_at = clock_timestamp() + make_interval(secs => $2)
FROM due WHERE d.id = due.id
RETURNING d.id
"""
_CONVERSION_COLUMNS = ", ".join(
    f"c.{name}" for name in (*SUB_NAMES, *(name for name, _ in FACT_COLUMNS))
)
SELECT_CLAIMED = f"""
SELECT d.id, d.attempts, d.lease, d.created_at, d.status, d.payout, d.currency, d.conversion_id,
       d.traffic_source_id, d.campaign_id,
       c.created_at AS conversion_time, c.click_time, c.click_id, c.external_id, c.offer_id,
       nullif(c.txid, '') AS txid, c.event, c.ip, c.user_agent, c.click_params, c.cost,
       {_CONVERSION_COLUMNS},
       s.postback_preset, s.postback_url, s.postback_method, s.postback_body,
       s.postback_body_format, s.postback_status_map, s.postback_share,
       s.postback_credentials, s.postback_signing_secret,
       cp.postback_url AS campaign_postback_url,
       cp.postback_method AS campaign_postback_method,
       cp.postback_body AS campaign_postback_body,
       cp.postback_body_format AS campaign_postback_body_format
FROM deliveries d
-- Each delivery's conversion by its key (id, click_time), read from its month's partition
-- alone. The fence (OFFSET 0) keeps this a lookup per delivery whatever the planner
-- guesses of the batch: as a join it may read every month's partition (one a month, for
-- ever) to hash them.
CROSS JOIN LATERAL (
    SELECT * FROM conversions
    WHERE id = d.conversion_id AND click_time = d.conversion_click_time
    OFFSET 0
) c
JOIN traffic_sources s ON s.id = d.traffic_source_id
LEFT JOIN campaigns cp ON cp.id = d.campaign_id
WHERE d.id = any($1::bigint[])
ORDER BY d.id
"""
# The attempt, and what it decided, if the sender still holds the lease: a sender whose
# lease ran out records what it saw and changes nothing else.
FINISH_ATTEMPT = """
WITH attempt AS (
    INSERT INTO delivery_attempts
        (delivery_id, attempted_at, status_code, latency_ms, response, error)
    VALUES ($1, $6, $7, $8, $9, $10)
)
UPDATE deliveries
SET state = $3,
    next_attempt_at = coalesce($4, next_attempt_at),
    finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE clock_timestamp() END,
    last_error = $5
WHERE id = $1 AND lease = $2 AND state = 'pending'
"""
# Deliveries whose last allowed attempt was claimed and never recorded (its sender died
# each time): given up rather than claimed for ever.
GIVE_UP_UNRECORDED = """
UPDATE deliveries
SET state = 'dead', finished_at = clock_timestamp(),
    last_error = 'gave up: ' || attempts || ' attempts were made and never recorded'
WHERE state = 'pending' AND attempts >= $1 AND next_attempt_at <= clock_timestamp()
"""
NEXT_DUE_IN = """
SELECT extract(epoch FROM min(next_attempt_at) - clock_timestamp())
FROM deliveries WHERE state = 'pending'
"""
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"

_FILTERS = """
WHERE ($1::text IS NULL OR d.state = $1)
  AND ($2::bigint IS NULL OR d.traffic_source_id = $2)
  AND ($3::bigint IS NULL OR d.campaign_id = $3)
  AND ($4::timestamptz IS NULL OR d.created_at >= $4)
  AND ($5::timestamptz IS NULL OR d.created_at < $5)
"""
LIST_DELIVERIES = f"""
SELECT d.id, d.conversion_id, d.traffic_source_id, d.campaign_id, d.status, d.payout,
       d.currency, d.state, d.attempts, d.next_attempt_at, d.created_at, d.finished_at,
       d.last_error,
       coalesce((
           SELECT jsonb_agg(jsonb_build_object(
               'attempted_at', a.attempted_at, 'status_code', a.status_code,
               'latency_ms', a.latency_ms, 'response', a.response, 'error', a.error
           ) ORDER BY a.id)
           FROM delivery_attempts a WHERE a.delivery_id = d.id
       ), '[]'::jsonb) AS attempt_log
FROM deliveries d
{_FILTERS}
ORDER BY d.id DESC
LIMIT $6 OFFSET $7
"""
# A dead or delivered delivery sent again, with a fresh count of attempts (its earlier
# attempts stay in its log).
RETRY = """
UPDATE deliveries
SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(),
    finished_at = NULL
WHERE id = $1 AND state <> 'pending'
RETURNING id
"""
# The same filters, on dead deliveries only ($1 is NULL).
REPLAY_DEAD = f"""
UPDATE deliveries d
SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp(), finished_at = NULL
{_FILTERS}
  AND d.state = 'dead'
RETURNING d.id
"""


async def claim(
    pool: asyncpg.Pool, limit: int, lease_seconds: float, max_attempts: int
) -> list[asyncpg.Record]:
    """Take up to `limit` due deliveries, with everything needed to send them."""
    async with pool.acquire() as conn:
        await conn.execute(GIVE_UP_UNRECORDED, max_attempts)
        ids = [row["id"] for row in await conn.fetch(CLAIM_DUE, limit, lease_seconds)]
        if not ids:
            return []
        return list(await conn.fetch(SELECT_CLAIMED, ids))


async def finish(
    pool: asyncpg.Pool,
    delivery: asyncpg.Record,
    state: str,
    next_attempt_at: datetime | None,
    attempted_at: datetime,
    status_code: int | None,
    latency_ms: int | None,
    response: str | None,
    error: str | None,
) -> None:
    await pool.execute(
        FINISH_ATTEMPT,
        delivery["id"],
        delivery["lease"],
        state,
        next_attempt_at,
        error,
        attempted_at,
        status_code,
        latency_ms,
        response,
        error,
    )


async def next_due_in(pool: asyncpg.Pool) -> float | None:
    """Seconds until the next pending delivery is due (negative: overdue); None: none."""
    value = await pool.fetchval(NEXT_DUE_IN)
    return None if value is None else float(value)


def filter_args(
    state: str | None,
    traffic_source_id: int | None,
    campaign_id: int | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[Any, ...]:
    return (state, traffic_source_id, campaign_id, since, until)


async def list_deliveries(
    pool: asyncpg.Pool, filters: tuple[Any, ...], limit: int, offset: int
) -> list[asyncpg.Record]:
    return list(await pool.fetch(LIST_DELIVERIES, *filters, limit, offset))


async def retry(pool: asyncpg.Pool, delivery_id: int) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(RETRY, delivery_id) is not None
        if done:
            await conn.execute(NOTIFY)
    return done


async def replay_dead(pool: asyncpg.Pool, filters: tuple[Any, ...]) -> int:
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(REPLAY_DEAD, *filters)
        if rows:
            await conn.execute(NOTIFY)
    return len(rows)
