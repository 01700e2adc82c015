"""Conversions and the postbacks that did not become one."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

SUB_FIELDS = tuple(f"sub{i}" for i in range(1, 11))

INSERT_CONVERSION = """
INSERT INTO conversions (
    click_id, txid, campaign_id, offer_id, traffic_source_id, external_id,
    sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10,
    click_time, payout, currency, status, event, params
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
    $17, $18, $19, $20, $21, $22
)
ON CONFLICT (click_id, txid) DO NOTHING
RETURNING id
"""
SELECT_CONVERSION_ID = "SELECT id FROM conversions WHERE click_id = $1 AND txid = $2"
INSERT_UNMATCHED = """
INSERT INTO unmatched_postbacks (click_id, reason, params) VALUES ($1, $2, $3)
"""


@dataclass(frozen=True, slots=True)
class NewConversion:
    click: dict[str, Any]
    click_time: datetime
    txid: str
    payout: Decimal
    currency: str
    status: str
    event: str | None
    params: dict[str, str]


async def record_conversion(pool: asyncpg.Pool, conv: NewConversion) -> tuple[bool, int]:
    """Insert the conversion unless (click, txid) already has one.

    Returns (created, conversion id). The unique constraint, not a prior read,
    decides: of two concurrent identical postbacks exactly one inserts.
    """
    click = conv.click
    args = [
        click["click_id"],
        conv.txid,
        click["campaign_id"],
        click["offer_id"],
        click["traffic_source_id"],
        click.get("external_id"),
        *(click.get(name) for name in SUB_FIELDS),
        conv.click_time,
        conv.payout,
        conv.currency,
        conv.status,
        conv.event,
        conv.params,
    ]
    async with pool.acquire() as conn:
        new_id = await conn.fetchval(INSERT_CONVERSION, *args)
        if new_id is not None:
            return True, int(new_id)
        existing = await conn.fetchval(SELECT_CONVERSION_ID, click["click_id"], conv.txid)
    return False, int(existing)


async def record_unmatched(
    pool: asyncpg.Pool, click_id: str | None, reason: str, params: dict[str, str]
) -> None:
    await pool.execute(INSERT_UNMATCHED, click_id, reason, params)
