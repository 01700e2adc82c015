"""Conversions and the postbacks that did not become one."""

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from tracker.store.batching import Batcher

log = logging.getLogger("tracker.conversions")

SUB_FIELDS = tuple(f"sub{i}" for i in range(1, 11))
_COPIED_FROM_CLICK = ("campaign_id", "offer_id", "traffic_source_id", "external_id", *SUB_FIELDS)

# One statement per batch of postbacks: insert what is new, and say for each
# input row whether it created the conversion and which conversion it is.
# Of several identical rows in one batch only the first counts as created.
INSERT_CONVERSIONS = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1::text::jsonb) AS r(
        idx integer, click_id text, txid text,
        campaign_id bigint, offer_id bigint, traffic_source_id bigint, external_id text,
        sub1 text, sub2 text, sub3 text, sub4 text, sub5 text,
        sub6 text, sub7 text, sub8 text, sub9 text, sub10 text,
        click_ms bigint, payout numeric, currency text, status text, event text, params jsonb
    )
), inserted AS (
    INSERT INTO conversions (
        click_id, txid, campaign_id, offer_id, traffic_source_id, external_id,
        sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10,
        click_time, payout, currency, status, event, params
    )
    SELECT click_id, txid, campaign_id, offer_id, traffic_source_id, external_id,
           sub1, sub2, sub3, sub4, sub5, sub6, sub7, sub8, sub9, sub10,
           to_timestamp(click_ms / 1000.0), payout, currency, status, event, params
    FROM input
    ORDER BY idx
    ON CONFLICT (click_id, txid) DO NOTHING
    RETURNING id, click_id, txid
), firsts AS (
    SELECT DISTINCT ON (click_id, txid) idx FROM input ORDER BY click_id, txid, idx
)
SELECT i.idx,
       coalesce(n.id, c.id) AS id,
       n.id IS NOT NULL AND i.idx IN (SELECT idx FROM firsts) AS created
FROM input i
LEFT JOIN inserted n ON n.click_id = i.click_id AND n.txid = i.txid
LEFT JOIN conversions c ON c.click_id = i.click_id AND c.txid = i.txid
"""
SELECT_CONVERSION_ID = "SELECT id FROM conversions WHERE click_id = $1 AND txid = $2"
INSERT_UNMATCHED = """
INSERT INTO unmatched_postbacks (click_id, reason, params) VALUES ($1, $2, $3)
"""


@dataclass(frozen=True, slots=True)
class NewConversion:
    click: dict[str, Any]
    txid: str
    payout: Decimal
    currency: str
    status: str
    event: str | None
    params: dict[str, str]

    def as_row(self, idx: int) -> dict[str, Any]:
        row = {name: self.click.get(name) for name in _COPIED_FROM_CLICK}
        row.update(
            idx=idx,
            click_id=self.click["click_id"],
            txid=self.txid,
            click_ms=self.click["created_ms"],
            payout=str(self.payout),
            currency=self.currency,
            status=self.status,
            event=self.event,
            params=self.params,
        )
        return row


# (created, conversion id)
ConversionResult = tuple[bool, int]


class ConversionWriter:
    """Stores conversions with group commit: concurrent postbacks share one statement
    and one commit, and each learns whether it created its conversion.

    The unique constraint on (click id, txid), not a prior read, decides which
    of two identical postbacks creates the conversion.
    """

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500, max_in_flight: int = 2) -> None:
        self._pool = pool
        self.batcher: Batcher[NewConversion, ConversionResult] = Batcher(
            self._flush, max_batch, "conversion-writer", max_in_flight
        )

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()

    async def record(self, conversion: NewConversion) -> ConversionResult:
        return await self.batcher.submit(conversion)

    async def _flush(self, batch: list[NewConversion]) -> list[ConversionResult | BaseException]:
        try:
            return list(await self._insert(batch))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # One bad row spoils the statement: write each alone so only it fails.
            log.warning("conversion batch refused (%s); writing one by one", exc)
        results: list[ConversionResult | BaseException] = []
        for conv in batch:
            try:
                results.extend(await self._insert([conv]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _insert(self, batch: list[NewConversion]) -> list[ConversionResult]:
        payload = orjson.dumps([conv.as_row(i) for i, conv in enumerate(batch)]).decode()
        rows = await self._pool.fetch(INSERT_CONVERSIONS, payload)
        results: list[ConversionResult] = [(False, 0)] * len(batch)
        for row in rows:
            conversion_id = row["id"]
            if conversion_id is None:
                # Committed by another process after this statement's snapshot was taken.
                conv = batch[row["idx"]]
                conversion_id = await self._pool.fetchval(
                    SELECT_CONVERSION_ID, conv.click["click_id"], conv.txid
                )
            results[row["idx"]] = (bool(row["created"]), int(conversion_id))
        return results


async def record_unmatched(
    pool: asyncpg.Pool, click_id: str | None, reason: str, params: dict[str, str]
) -> None:
    await pool.execute(INSERT_UNMATCHED, click_id, reason, params)
