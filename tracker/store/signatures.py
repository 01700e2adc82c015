"""Signatures of signed postbacks already used: each is accepted once.

A signature is claimed by the receipt of the postback that carries it, in the
statement or transaction that records that postback (see store/conversions.py), so
a write that fails or is refused gives it back with it. The same receipt claiming
again (a queued postback applied later, an orphan re-matched) is not a replay;
another receipt is. A claim that a later, separate write fails after is given back
by `release`, so the network's retry is not taken for a replay. Kept in Postgres: a
postback can be recorded only when Postgres answers, so the guard is there whenever
it is needed, Redis or not.
"""

from datetime import datetime, timedelta

import asyncpg

from tracker.store.admin import Conn

# Twice the window in which a signature's timestamp is accepted at all.
KEEP_FOR = timedelta(seconds=600)

CLAIM = """
WITH claimed AS (
    INSERT INTO postback_signatures (signature, receipt_id) VALUES ($1, $2)
    ON CONFLICT (signature) DO NOTHING
    RETURNING receipt_id
)
SELECT receipt_id FROM claimed
UNION ALL
SELECT receipt_id FROM postback_signatures WHERE signature = $1
LIMIT 1
"""
RELEASE = "DELETE FROM postback_signatures WHERE signature = $1 AND receipt_id = $2"
DELETE_EXPIRED = "DELETE FROM postback_signatures WHERE claimed_at < $1"


async def claim(conn: Conn | asyncpg.Pool, signature: str, receipt_id: str) -> bool:
    """Claim `signature` for `receipt_id`; False when another receipt holds it."""
    holder = await conn.fetchval(CLAIM, signature, receipt_id)
    return bool(holder == receipt_id)


async def release(pool: asyncpg.Pool, signature: str, receipt_id: str) -> None:
    """Give the signature back, if `receipt_id` holds it."""
    await pool.execute(RELEASE, signature, receipt_id)


async def delete_expired(pool: asyncpg.Pool, now: datetime) -> int:
    status = await pool.execute(DELETE_EXPIRED, now - KEEP_FOR)
    return int(status.split()[-1])
