"""Conversions: group-committed inserts, lifecycle updates, refunds and their history."""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import orjson

from tracker.domain.click import CLICK_COLUMNS, COPIED_TO_CONVERSION
from tracker.domain.clickid import click_ms
from tracker.domain.fx import RateTable, convert
from tracker.domain.lifecycle import CHARGEBACK, REJECTED, decide_change, refund_key
from tracker.domain.money import fits_amount_column
from tracker.store import partitions, signatures
from tracker.store.batching import BatchedService, Batcher, BatchQueueFullError
from tracker.store.postback_log import (
    INSERT_LOG,
    LOG_INBOUND_COLUMNS,
    PIXEL,
    POSTBACK,
    Inbound,
    dumps_with_log,
    log_fields,
)

log = logging.getLogger("tracker.conversions")

_CLICK_TYPES = dict(CLICK_COLUMNS)
_COPIED = ", ".join(COPIED_TO_CONVERSION)
_COPIED_TYPES = ", ".join(f"{name} {_CLICK_TYPES[name]}" for name in COPIED_TO_CONVERSION)

CREATED, UPDATED, DUPLICATE = "created", "updated", "duplicate"
# Clicks whose updates and refunds a writer applies at a time by default (a transaction,
# and a pool connection, each: keep it below the pool's size).
UPDATES_AT_ONCE = 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

_LOG_COLUMNS = ", ".join(LOG_INBOUND_COLUMNS)

# Signed postbacks spend their signature in the statement that writes them (see
# `_insert_conversions`), in signature order, the same in every batch like the keys.
_CLAIMS = """, claimed AS (
    INSERT INTO postback_signatures (signature, receipt_id)
    SELECT DISTINCT ON (signature) signature, claimant FROM input
    WHERE signature IS NOT NULL
    ORDER BY signature, idx
    ON CONFLICT (signature) DO NOTHING
    RETURNING signature, receipt_id
), replays AS (
    -- Held by another receipt, from before or from a row earlier in this batch; the
    -- same receipt applied again (from the queue, an orphan re-matched) is no replay.
    SELECT i.idx FROM input i
    WHERE i.signature IS NOT NULL
      AND NOT EXISTS (
          SELECT FROM claimed c WHERE c.signature = i.signature AND c.receipt_id = i.claimant
      )
      AND NOT EXISTS (
          SELECT FROM postback_signatures s
          WHERE s.signature = i.signature AND s.receipt_id = i.claimant
      )
)"""


def _insert_conversions(signed: bool) -> str:
    """One statement per batch: insert the conversions whose (click, dedupe key) is new,
    with their first history row and the postback's log row (rows carrying `log`).
    Rows that meet an existing conversion are left out here and handled one by one,
    under a row lock, as possible updates.

    `signed`: rows carrying `signature` spend it for receipt `claimant` in the same
    statement; a replay writes nothing and comes back as its `replay` idx, and a
    statement that fails gives its signatures back with its rows. Batches without a
    signed postback use the statement without the claims, which costs less."""
    accepted = "input WHERE idx NOT IN (SELECT idx FROM replays)" if signed else "input"
    replays = "\nUNION ALL\nSELECT NULL, NULL, NULL, idx FROM replays" if signed else ""
    return f"""
WITH input AS (
    SELECT * FROM json_to_recordset($1::text::json) AS r(
        idx integer, click_id text, dedupe_key text, txid text, parent_txid text,
        network_id bigint, {_COPIED_TYPES}, click_params jsonb,
        click_ms bigint, payout numeric, currency text, original_payout numeric,
        original_currency text, status text, event text, params jsonb, source text,
        log jsonb{", signature text, claimant text" if signed else ""}
    )
){_CLAIMS if signed else ""}, inserted AS (
    INSERT INTO conversions (
        click_id, dedupe_key, txid, parent_txid, network_id, {_COPIED}, click_params,
        click_time, payout, currency, original_payout, original_currency, status, event, params,
        source
    )
    SELECT click_id, dedupe_key, txid, parent_txid, network_id, {_COPIED}, click_params,
           to_timestamp(click_ms / 1000.0), payout, currency, original_payout,
           original_currency, status, event, params, source
    FROM {accepted}
    -- Key order, the same in every batch and process, so that concurrent batches wait
    -- for each other's new rows in one order instead of deadlocking.
    ORDER BY click_id, dedupe_key, idx
    ON CONFLICT (click_id, dedupe_key, click_time) DO NOTHING
    RETURNING id, click_id, dedupe_key, status, payout, params, click_time
), history AS (
    INSERT INTO conversion_history
        (conversion_id, conversion_click_time, old_status, new_status, payout, params)
    SELECT id, click_time, NULL, status, payout, params FROM inserted
), creators AS (
    -- Of equal keys in one batch, the first (by idx) is the one inserted.
    SELECT DISTINCT ON (click_id, dedupe_key) click_id, dedupe_key, network_id, log
    FROM {accepted} ORDER BY click_id, dedupe_key, idx
), logged AS (
    INSERT INTO postback_log ({_LOG_COLUMNS}, result, conversion_id, network_id, click_id)
    SELECT {", ".join(f"p.{c}" for c in LOG_INBOUND_COLUMNS)}, 'created', i.id, c.network_id,
           i.click_id
    FROM inserted i
    JOIN creators c USING (click_id, dedupe_key),
         jsonb_populate_record(NULL::postback_log, c.log) AS p
    WHERE c.log IS NOT NULL
    ON CONFLICT (receipt_id, received_at) DO NOTHING
)
SELECT id, click_id, dedupe_key, NULL::integer AS replay FROM inserted{replays}
"""


INSERT_CONVERSIONS = _insert_conversions(signed=False)
INSERT_SIGNED_CONVERSIONS = _insert_conversions(signed=True)
_LOCKED_COLUMNS = "id, click_time, status, payout, refunded, original_payout, original_currency"
# $3: the click's time in ms, which pins the conversion's partition (the same expression
# as the insert's, so the two are equal to the microsecond).
LOCK_CONVERSION = f"""
SELECT {_LOCKED_COLUMNS} FROM conversions
WHERE click_id = $1 AND dedupe_key = $2 AND click_time = to_timestamp($3::bigint / 1000.0)
FOR UPDATE
"""
LOCK_PARENT = f"""
SELECT {_LOCKED_COLUMNS} FROM conversions
WHERE click_id = $1 AND txid = $2 AND click_time = to_timestamp($3::bigint / 1000.0)
ORDER BY id LIMIT 1
FOR UPDATE
"""
# With a new price ($3), payout, currency and original_* change together; payout may be
# NULL (no rate yet), and what was refunded never exceeds the new payout.
UPDATE_STATUS = """
UPDATE conversions
SET status = $2,
    payout = CASE WHEN $3 THEN $4::numeric ELSE payout END,
    currency = CASE WHEN $3 THEN $5 ELSE currency END,
    original_payout = CASE WHEN $3 THEN $6::numeric ELSE original_payout END,
    original_currency = CASE WHEN $3 THEN $7 ELSE original_currency END,
    refunded = CASE WHEN $3 THEN least(refunded, coalesce($4::numeric, refunded))
                    ELSE refunded END,
    updated_at = now()
WHERE id = $1 AND click_time = $8
"""
ADD_REFUND = """
UPDATE conversions SET refunded = refunded + $2, updated_at = now()
WHERE id = $1 AND click_time = $3
"""
# $8: the conversion's click_time, which pins its partition where the history row is
# joined to it (the deliveries trigger, migration 0017).
INSERT_HISTORY = """
INSERT INTO conversion_history (
    conversion_id, old_status, new_status, payout, refund, refund_key, params,
    conversion_click_time
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (conversion_id, refund_key) WHERE refund_key IS NOT NULL DO NOTHING
RETURNING id
"""


class ParentNotFound(LookupError):
    """A refund names a parent transaction the click has no conversion for."""


class SignatureUsed(Exception):
    """The postback's signature was spent by another receipt: a replay, not written."""


@dataclass(frozen=True, slots=True)
class ConversionPostback:
    """A matched, authenticated and validated postback, ready to be written."""

    click: dict[str, Any]
    network_id: int | None
    dedupe_key: str
    txid: str
    parent_txid: str | None
    status: str
    payout: Decimal | None  # in the campaign's report currency; None when no rate
    currency: str  # the campaign's report currency
    original_payout: Decimal
    original_currency: str
    payout_given: bool
    event: str | None
    params: dict[str, str]
    # The postback as received: its log row is written in the conversion's transaction.
    inbound: Inbound | None = None
    # PIXEL: it may create a conversion but never changes one (see `_update`).
    source: str = POSTBACK
    # (canonical signature, receipt id) of a signed postback: spent with the write.
    signature_claim: tuple[str, str] | None = None

    @property
    def is_refund(self) -> bool:
        """A negative payout on its own txid, taken back from the parent conversion."""
        return self.parent_txid is not None and self.original_payout < 0

    @property
    def click_ms(self) -> int:
        """The click's time (ms), from its id: the conversion's `click_time`."""
        return click_ms(str(self.click["click_id"]), int(self.click["created_ms"]))

    def as_row(self, idx: int) -> dict[str, Any]:
        """The conversion as a member of INSERT_CONVERSIONS' input. Null members are left
        out (the recordset reads a missing key as null): a click carries mostly nulls,
        and Postgres parses a third less JSON without them."""
        click = self.click
        row = {
            name: value for name in COPIED_TO_CONVERSION if (value := click.get(name)) is not None
        }
        row["is_bot"] = bool(row.get("is_bot"))  # records older than the column lack it
        row.update(
            idx=idx,
            click_id=click["click_id"],
            dedupe_key=self.dedupe_key,
            txid=self.txid,
            network_id=self.network_id,
            click_params=click.get("params"),
            click_ms=self.click_ms,
            currency=self.currency,
            original_payout=str(self.original_payout),
            original_currency=self.original_currency,
            status=self.status,
            params=self.params,
            source=self.source,
        )
        if self.parent_txid is not None:
            row["parent_txid"] = self.parent_txid
        if self.payout is not None:
            row["payout"] = str(self.payout)
        if self.event is not None:
            row["event"] = self.event
        if self.signature_claim is not None:
            row["signature"], row["claimant"] = self.signature_claim
        return row


# (created | updated | duplicate, conversion id)
ConversionResult = tuple[str, int]


class ConversionWriter(BatchedService):
    """Writes conversions with group commit.

    New conversions from concurrent postbacks share one statement and one commit.
    A postback that meets an existing conversion is applied afterwards, outside the
    batches, in its own transaction under a row lock: a status change the lifecycle
    allows, a partial refund, or nothing (a duplicate). The unique constraint on
    (click id, dedupe key), not a prior read, decides which postback creates.

    One batch is written at a time: the next one grows meanwhile, and Postgres pays
    its per-statement and per-commit costs once for it. Two at a time made batches
    of 14 where one makes 22 (50 connections), and cost more CPU on both sides.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        max_batch: int = 500,
        max_in_flight: int = 1,
        max_pending: int = 20000,
        max_updates: int = UPDATES_AT_ONCE,
    ) -> None:
        self._pool = pool
        # A batch answers None for a postback it did not create a conversion for.
        self.batcher: Batcher[ConversionPostback, ConversionResult | None] = Batcher(
            self._flush, max_batch, "conversion-writer", max_in_flight, max_pending
        )
        self._updates = asyncio.Semaphore(max_updates)
        self._max_pending = max_pending
        # The updates applying or waiting: the writer's own tasks, so that a caller that
        # gives up (a handler cancelled at shutdown) does not take one down half done.
        self._applying: set[asyncio.Task[ConversionResult]] = set()
        # Per click with an update applying or waiting, the latest: the next waits for it.
        self._latest: dict[str, asyncio.Task[ConversionResult]] = {}

    @property
    def updates(self) -> int:
        """Updates (and refunds) applying or waiting."""
        return len(self._applying)

    async def close(self) -> None:
        """Write what is queued, and let the updates it leads to finish."""
        await self.batcher.close()
        while self._applying:
            await asyncio.wait(self._applying)

    async def record(self, postback: ConversionPostback) -> ConversionResult:
        created = await self.batcher.submit(postback)
        if created is not None:
            return created
        if len(self._applying) >= self._max_pending:
            raise BatchQueueFullError(f"{len(self._applying)} conversion updates already waiting")
        click_id = str(postback.click["click_id"])
        task = asyncio.create_task(self._update_after(self._latest.get(click_id), postback))
        self._latest[click_id] = task
        self._applying.add(task)
        task.add_done_callback(functools.partial(self._forget, click_id))
        return await asyncio.shield(task)

    def _forget(self, click_id: str, task: "asyncio.Task[ConversionResult]") -> None:
        self._applying.discard(task)
        if self._latest.get(click_id) is task:
            del self._latest[click_id]

    async def _update_after(
        self, before: "asyncio.Task[ConversionResult] | None", pb: ConversionPostback
    ) -> ConversionResult:
        """A postback that met a conversion, or a refund: in its own transaction, outside
        the batches, so that new conversions never wait for it. It waits for the update of
        its click before it (`before`), so that one click's go in the order the batches
        answered them (a refund and its parent's change share the click); other clicks'
        go side by side, up to `max_updates`."""
        if before is not None:
            await asyncio.wait((before,))
        async with self._updates:
            return await _retrying(
                lambda: self._with_partitions([pb], lambda: self._update_logged(pb))
            )

    async def _flush(
        self, batch: list[ConversionPostback]
    ) -> list[ConversionResult | BaseException | None]:
        """Create the batch's new conversions in one statement; None for each postback
        that met a conversion, and for refunds (see `_update_after`)."""
        results: list[ConversionResult | BaseException | None] = [None] * len(batch)
        inserts = [i for i, pb in enumerate(batch) if not pb.is_refund]
        if inserts:
            try:
                await _retrying(
                    lambda: self._with_partitions(
                        [batch[i] for i in inserts],
                        lambda: self._insert_new(batch, inserts, results),
                    )
                )
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # One bad row spoils the statement: write each alone so only it fails.
                log.warning("conversion batch refused (%s); writing one by one", exc)
                for i in inserts:
                    try:
                        await self._with_partitions(
                            [batch[i]],
                            lambda: self._insert_new(batch, [i], results),  # noqa: B023
                        )
                    except Exception as row_exc:
                        results[i] = row_exc
        return results

    async def _with_partitions(
        self, postbacks: list[ConversionPostback], write: Callable[[], Awaitable[T]]
    ) -> T:
        """`write()`, creating first, if it meets none, the partitions its conversions and
        their log rows need."""

        async def make_room() -> list[str]:
            months = [_EPOCH + timedelta(milliseconds=pb.click_ms) for pb in postbacks]
            days = [pb.inbound.received_at for pb in postbacks if pb.inbound is not None]
            return [
                *await partitions.ensure_partitions(self._pool, "conversions", months),
                *await partitions.ensure_partitions(self._pool, "postback_log", days),
            ]

        return await partitions.creating_partitions(write, make_room)

    async def _update_logged(self, pb: ConversionPostback) -> ConversionResult:
        """An update or refund and the postback's log row, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            # A refund's signature is spent with the change, or given back with it; any
            # other postback's was spent by the batch's statement that met the conversion.
            if pb.is_refund and pb.signature_claim is not None:
                if not await signatures.claim(conn, *pb.signature_claim):
                    raise SignatureUsed("signature already used")
            result, conversion_id = await (
                self._refund(conn, pb) if pb.is_refund else self._update(conn, pb)
            )
            if pb.inbound is not None:
                outcome = {
                    "result": result,
                    "conversion_id": conversion_id,
                    "network_id": pb.network_id,
                    "click_id": pb.click["click_id"],
                }
                entry = {"inbound": log_fields(pb.inbound), "outcome": outcome}
                await conn.execute(INSERT_LOG, orjson.dumps([entry]).decode())
        return result, conversion_id

    async def _insert_new(
        self,
        batch: list[ConversionPostback],
        indexes: list[int],
        results: list[ConversionResult | BaseException | None],
    ) -> None:
        rows_in = []
        for i in indexes:
            row = batch[i].as_row(i)
            if (inbound := batch[i].inbound) is not None:
                row["log"] = inbound
            rows_in.append(row)
        signed = any(batch[i].signature_claim is not None for i in indexes)
        statement = INSERT_SIGNED_CONVERSIONS if signed else INSERT_CONVERSIONS
        rows = await self._pool.fetch(statement, dumps_with_log(rows_in))
        created = {}
        for record in rows:
            if record["replay"] is None:
                created[(record["click_id"], record["dedupe_key"])] = record["id"]
            else:
                results[record["replay"]] = SignatureUsed("signature already used")
        for i in indexes:
            if results[i] is not None:
                continue
            key = (batch[i].click["click_id"], batch[i].dedupe_key)
            conversion_id = created.pop(key, None)  # only the first of equal keys created
            if conversion_id is not None:
                results[i] = (CREATED, conversion_id)

    async def _update(self, conn: Any, pb: ConversionPostback) -> ConversionResult:
        """A postback that met an existing conversion, in the caller's transaction."""
        lock = (LOCK_CONVERSION, pb.click["click_id"], pb.dedupe_key, pb.click_ms)
        row = await conn.fetchrow(*lock)
        if row is None:  # the conflicting row was rolled back: this one creates
            # Its signature was spent by the batch's statement that met that row.
            inserted = await conn.fetch(INSERT_CONVERSIONS, orjson.dumps([pb.as_row(0)]).decode())
            if inserted:
                return CREATED, int(inserted[0]["id"])
            row = await conn.fetchrow(*lock)
            if row is None:
                raise RuntimeError("conversion vanished while being updated")
        if pb.source == PIXEL:
            # Anyone who sees a click id can fire the pixel: it adds conversions, but a
            # status change or new price comes only from an authenticated postback.
            return DUPLICATE, int(row["id"])
        amount = _report_amount(row, pb) if pb.payout_given else None
        key = refund_key(pb.params, None, pb.original_payout, pb.original_currency, pb.txid)
        return await self._apply(conn, row, pb, pb.status, amount, key)

    async def _refund(self, conn: Any, pb: ConversionPostback) -> ConversionResult:
        """A refund by parent txid, in the caller's transaction."""
        row = await conn.fetchrow(LOCK_PARENT, pb.click["click_id"], pb.parent_txid, pb.click_ms)
        if row is None:
            raise ParentNotFound(f"no conversion with txid {pb.parent_txid!r} on this click")
        amount = _report_amount(row, pb)
        if amount is None:
            amount = pb.original_payout
        key = refund_key(
            pb.params, pb.txid, pb.original_payout, pb.original_currency, pb.parent_txid or ""
        )
        # The same as a chargeback of that amount on the parent, applied once per refund.
        return await self._apply(conn, row, pb, CHARGEBACK, -amount, key)

    async def _apply(
        self,
        conn: Any,
        row: asyncpg.Record,
        pb: ConversionPostback,
        status: str,
        payout: Decimal | None,
        key: str,
    ) -> ConversionResult:
        """Apply to the locked conversion `row` what the lifecycle allows for `status`
        with `payout` (report currency): a partial refund (once per refund `key`), a
        status change, or nothing."""
        base = row["payout"] if row["payout"] is not None else Decimal(0)
        change = decide_change(row["status"], status, payout, base, row["refunded"])
        conversion_id = int(row["id"])
        if change.refund:
            added = await conn.fetchval(
                INSERT_HISTORY,
                conversion_id,
                row["status"],
                row["status"],
                row["payout"],
                change.refund,
                key,
                pb.params,
                row["click_time"],
            )
            if added is None:  # this refund was applied before
                return DUPLICATE, conversion_id
            await conn.execute(ADD_REFUND, conversion_id, change.refund, row["click_time"])
            return UPDATED, conversion_id
        if change.new_status is None:
            return DUPLICATE, conversion_id
        # A rejection or chargeback carries no new price; any other status update that
        # names a payout sets payout, currency and original_* together.
        new_price = pb.payout_given and change.new_status not in (REJECTED, CHARGEBACK)
        await conn.execute(
            UPDATE_STATUS,
            conversion_id,
            change.new_status,
            new_price,
            pb.payout,
            pb.currency,
            pb.original_payout,
            pb.original_currency,
            row["click_time"],
        )
        await conn.fetchval(
            INSERT_HISTORY,
            conversion_id,
            row["status"],
            change.new_status,
            pb.payout if new_price else row["payout"],
            Decimal(0),
            None,
            pb.params,
            row["click_time"],
        )
        return UPDATED, conversion_id


def _report_amount(row: asyncpg.Record, pb: ConversionPostback) -> Decimal | None:
    """The postback's payout in the conversion's report currency: converted with today's
    rates, else in proportion to the conversion when both are in one original currency."""
    if pb.payout is not None:
        return pb.payout
    if (
        row["payout"] is not None
        and row["original_payout"]
        and row["original_currency"] == pb.original_currency
    ):
        share: Decimal = row["payout"] * pb.original_payout / row["original_payout"]
        return share.quantize(Decimal("0.000001"))
    return None


# Tries of a write that Postgres rolled back to break a deadlock or a serialization
# conflict with another writer: the write is whole again on the next try.
ROLLBACK_RETRIES = 3


async def _retrying(write: Callable[[], Awaitable[T]]) -> T:
    for attempt in range(ROLLBACK_RETRIES):
        try:
            return await write()
        except asyncpg.TransactionRollbackError as exc:
            if attempt == ROLLBACK_RETRIES - 1:
                raise
            log.info("conversion write rolled back (%s); trying again", exc)
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


SELECT_UNCONVERTED = """
SELECT id, click_time, original_payout, original_currency, currency, created_at
FROM conversions WHERE payout IS NULL AND id > $1 ORDER BY id LIMIT 5000
"""
SET_CONVERTED = """
UPDATE conversions SET payout = $2 WHERE id = $1 AND click_time = $3 AND payout IS NULL
"""


async def convert_pending(pool: asyncpg.Pool, rates: RateTable) -> int:
    """Fill in report-currency payouts that were waiting for an exchange rate."""
    converted = 0
    last_id = 0
    while True:
        rows = await pool.fetch(SELECT_UNCONVERTED, last_id)
        if not rows:
            return converted
        last_id = rows[-1]["id"]
        updates = []
        for row in rows:
            amount = convert(
                row["original_payout"],
                row["original_currency"],
                row["currency"],
                row["created_at"].date(),
                rates,
            )
            if amount is None:
                continue
            if not fits_amount_column(amount):
                log.warning("conversion %s stays unconverted: %s is too large", row["id"], amount)
                continue
            updates.append((row["id"], amount, row["click_time"]))
        if updates:
            await pool.executemany(SET_CONVERTED, updates)
            converted += len(updates)
