"""The log of every inbound postback: what was sent and what became of it.

Also the Redis queue postbacks wait in while Postgres is unavailable.
"""

import dataclasses
import logging
import secrets
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
import orjson
from redis.asyncio import Redis

from tracker.domain.clickid import click_time, is_click_id
from tracker.domain.text import clean_optional, clean_text
from tracker.store import keys, partitions
from tracker.store.batching import BatchedService, Batcher
from tracker.store.db import POSTGRES_UNAVAILABLE

log = logging.getLogger("tracker.postback_log")


# What a conversion or a log row came from: a postback, a hit on the conversion pixel, or a
# row of a corrections CSV uploaded through the API.
POSTBACK, PIXEL, UPLOAD = "postback", "pixel", "upload"


def new_receipt_id() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A postback as received, with what authentication needs; field names are log columns."""

    params: dict[str, str]
    method: str
    raw: str  # the query string for GET, the body for POST: what a signature covers
    received_at: datetime
    client_ip: str | None = None
    signature: str | None = None
    signature_ts: str | None = None
    path_token: str | None = None
    truncated: bool = False  # cut to fit a log row; see `truncated_for_log`
    # Given at the edge; the unit of idempotency when a postback is applied again.
    receipt_id: str = dataclasses.field(default_factory=new_receipt_id)
    queued: bool = False  # applied by the sink from the Redis queue
    source: str = POSTBACK  # or PIXEL (/px.gif, /px.js), or UPLOAD (POST /api/conversions/upload)


class Result(Protocol):
    """What became of a postback; field names are log columns."""

    @property
    def result(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def conversion_id(self) -> int | None: ...
    @property
    def network_id(self) -> int | None: ...
    @property
    def click_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    inbound: Inbound
    outcome: Result


_INBOUND = tuple(f.name for f in fields(Inbound))
_RESULT = ("result", "reason", "conversion_id", "network_id", "click_id")

# Each entry is {"inbound": {...}, "outcome": {...}}; both objects' keys are column names,
# so the merged object populates a postback_log row (other keys are ignored).
INSERT_LOG = f"""
INSERT INTO postback_log ({", ".join(_INBOUND + _RESULT)})
SELECT {", ".join(f"p.{column}" for column in _INBOUND + _RESULT)}
FROM jsonb_array_elements($1::text::jsonb) AS e,
     jsonb_populate_record(NULL::postback_log, (e -> 'inbound') || (e -> 'outcome')) AS p
ON CONFLICT (receipt_id, received_at) DO NOTHING
"""
LOG_INBOUND_COLUMNS = _INBOUND
# $2: received from then on, which bounds the daily partitions searched.
SELECT_UNMATCHED_FOR = f"""
SELECT id, {", ".join(_INBOUND)}
FROM postback_log
WHERE result = 'unmatched' AND click_id = any($1::text[]) AND received_at >= $2
ORDER BY id
"""
# A postback comes after its click; the hosts that stamped the two may disagree a little.
# One that seems older still is found by the sink's periodic orphan sweep, which looks
# back as far as SELECT_ORPHANS_WITH_CLICKS does (ORPHAN_HORIZON).
ORPHAN_CLOCK_SLACK = timedelta(days=1)
ORPHAN_HORIZON = timedelta(days=365)
MARK_REMATCHED = """
UPDATE postback_log
SET result = $2, reason = $3, conversion_id = $4, network_id = $5, rematched_at = now()
WHERE id = $1 AND received_at = $6
"""


class PostbackLog(BatchedService):
    """Appends log entries, many concurrent postbacks per statement."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500, max_pending: int = 20000) -> None:
        self._pool = pool
        self.batcher: Batcher[_Entry, None] = Batcher(
            self._flush, max_batch, "postback-log", max_pending=max_pending
        )

    async def append(self, inbound: Inbound, outcome: Result) -> None:
        """Log a postback and what became of it; return once it is stored."""
        await self.batcher.submit(_Entry(inbound, outcome))

    async def _flush(self, entries: list[_Entry]) -> list[BaseException | None]:
        try:
            # orjson serialises the dataclasses itself, without the deep copy `asdict` makes.
            await self._insert(orjson.dumps(entries).decode(), entries)
            return [None] * len(entries)
        except POSTGRES_UNAVAILABLE:
            raise
        except (orjson.JSONEncodeError, asyncpg.PostgresError) as exc:
            # One row Postgres (or JSON) refuses, e.g. a NUL byte, spoils the statement.
            log.warning("postback log batch refused (%s); writing one by one", exc)
        return [await self._insert_alone(entry) for entry in entries]

    async def _insert(self, rows_json: str, entries: list[_Entry]) -> None:
        """INSERT_LOG, creating the daily partitions its rows need if missing."""
        await partitions.creating_partitions(
            lambda: self._pool.execute(INSERT_LOG, rows_json),
            lambda: partitions.ensure_partitions(
                self._pool, "postback_log", [e.inbound.received_at for e in entries]
            ),
        )

    async def _insert_alone(self, entry: _Entry) -> BaseException | None:
        """Store one row; a row refused as it is is stored with its text sanitised."""
        try:
            await self._insert(orjson.dumps([entry]).decode(), [entry])
            return None
        except POSTGRES_UNAVAILABLE as exc:
            return exc
        except (orjson.JSONEncodeError, asyncpg.PostgresError) as exc:
            log.warning("postback %s refused (%s); logged sanitised", entry.inbound.receipt_id, exc)
        outcome = {
            name: clean_text(value) if isinstance(value, str) else value
            for name in _RESULT
            if (value := getattr(entry.outcome, name)) is not None
        }
        clean = {"inbound": log_fields(entry.inbound), "outcome": outcome}
        try:
            await self._insert(orjson.dumps([clean]).decode(), [entry])
            return None
        except Exception as exc:
            return exc


def unmatched_query(
    click_ids: list[str], since: datetime | None = None
) -> tuple[str, tuple[Any, ...]] | None:
    """The query `unmatched_for` runs, with its arguments: postbacks for those of
    `click_ids` that are click ids (no other can match a click), received since `since`
    (default: a little before the oldest of the clicks was made); None when there is
    none."""
    ids = [click_id for click_id in click_ids if is_click_id(click_id)]
    if not ids:
        return None
    if since is None:
        # Click ids sort as their times do: one decoded time, not one per id (a sink batch).
        oldest = click_time(min(ids))
        assert oldest is not None
        since = oldest - ORPHAN_CLOCK_SLACK
    return SELECT_UNMATCHED_FOR, (ids, since)


async def unmatched_for(
    pool: asyncpg.Pool, click_ids: list[str], since: datetime | None = None
) -> list[tuple[int, Inbound]]:
    """Logged postbacks (log id, postback) still waiting for one of these clicks, received
    since `since` (default: see `unmatched_query`)."""
    found = unmatched_query(click_ids, since)
    if found is None:
        return []
    query, args = found
    rows = await pool.fetch(query, *args)
    return [(row["id"], Inbound(**{name: row[name] for name in _INBOUND})) for row in rows]


async def mark_rematched(
    pool: asyncpg.Pool, log_id: int, outcome: Result, received_at: datetime
) -> None:
    """Record what became of logged postback `log_id` (received at `received_at`, which
    pins its partition) when it was processed again."""
    await pool.execute(
        MARK_REMATCHED,
        log_id,
        outcome.result,
        outcome.reason,
        outcome.conversion_id,
        outcome.network_id,
        received_at,
    )


FAILED_RESULTS = ("unmatched", "invalid", "rejected-auth")
# Kept for the shorter retention: refused outright. Unmatched postbacks are not among
# them, since they wait for their click as long as an attribution window lasts.
REFUSED_RESULTS = ("invalid", "rejected-auth")
# Longest kept key and value of one parameter, and of the short header fields, in a cut row.
_KEY_BYTES, _VALUE_BYTES, _FIELD_BYTES = 64, 256, 256


def _cut(text: str, limit: int) -> str:
    # NUL cannot be stored in Postgres text; a cut may not split a UTF-8 sequence.
    return text.replace("\x00", "").encode()[:limit].decode(errors="ignore")


def _size(inbound: Inbound) -> int:
    params = sum(len(k.encode()) + len(v.encode()) + 6 for k, v in inbound.params.items())
    extra = (inbound.signature, inbound.signature_ts, inbound.path_token)
    return len(inbound.raw.encode()) + params + sum(len((v or "").encode()) for v in extra)


def truncated_for_log(inbound: Inbound, max_bytes: int) -> Inbound:
    """`inbound` as it may be logged: unchanged if it fits in `max_bytes`; else the raw
    text gets a quarter, each parameter a short key and value while the rest lasts, and
    the row is marked truncated."""
    if _size(inbound) <= max_bytes and "\x00" not in inbound.raw:
        return inbound
    raw = _cut(inbound.raw, max_bytes // 4)
    budget = max_bytes - len(raw.encode()) - 3 * _FIELD_BYTES
    params: dict[str, str] = {}
    for key, value in inbound.params.items():
        short_key, short_value = _cut(key, _KEY_BYTES), _cut(value, _VALUE_BYTES)
        budget -= len(short_key.encode()) + len(short_value.encode()) + 6
        if budget < 0:
            break
        params[short_key] = short_value
    return replace(
        inbound,
        params=params,
        raw=raw,
        signature=None if inbound.signature is None else _cut(inbound.signature, _FIELD_BYTES),
        signature_ts=None
        if inbound.signature_ts is None
        else _cut(inbound.signature_ts, _FIELD_BYTES),
        path_token=None if inbound.path_token is None else _cut(inbound.path_token, _FIELD_BYTES),
        truncated=True,
    )


# One small batch per statement, so the clean-up never holds many row locks at once.
# Rows past the general retention go with their whole daily partition (tracker maintain).
DELETE_EXPIRED = """
DELETE FROM postback_log WHERE (id, received_at) IN (
    SELECT id, received_at FROM postback_log
    WHERE received_at < $1 AND result = any($2::text[])
    LIMIT $3
)
"""


async def delete_expired(
    pool: asyncpg.Pool, now: datetime, keep_failed_days: int, batch: int
) -> int:
    """Delete refused log rows older than `keep_failed_days`, `batch` rows per statement;
    return how many were deleted."""
    deleted = 0
    while True:
        status = await pool.execute(
            DELETE_EXPIRED,
            now - timedelta(days=keep_failed_days),
            list(REFUSED_RESULTS),
            batch,
        )
        count = int(status.split()[-1])
        deleted += count
        if count < batch:
            return deleted


# Unmatched postbacks whose click is now in Postgres, within the campaign's window.
SELECT_ORPHANS_WITH_CLICKS = """
SELECT DISTINCT l.click_id
FROM postback_log l
-- One probe per orphan into its click's partition only (LIMIT keeps the subquery a
-- parameterised probe rather than a join over every partition).
CROSS JOIN LATERAL (
    SELECT c.campaign_id FROM clicks c
    WHERE c.click_id = l.click_id AND c.created_at = click_id_time(l.click_id)
    LIMIT 1
) AS c
JOIN campaigns k ON k.id = c.campaign_id
WHERE l.result = 'unmatched'
  AND l.received_at > $1::timestamptz - interval '365 days'
  AND l.received_at > $1::timestamptz - make_interval(days => k.attribution_window_days)
  AND l.click_id <> ALL($3::text[])
LIMIT $2
"""


async def orphans_with_clicks(
    pool: asyncpg.Pool, now: datetime, limit: int, skip: list[str]
) -> list[str]:
    """Click ids (other than `skip`) of unmatched logged postbacks whose click is stored."""
    rows = await pool.fetch(SELECT_ORPHANS_WITH_CLICKS, now, limit, skip)
    return [row["click_id"] for row in rows]


def sanitized(inbound: Inbound) -> Inbound:
    """The postback with every text field storable in Postgres."""
    return dataclasses.replace(
        inbound,
        params={clean_text(k): clean_text(v) for k, v in inbound.params.items()},
        method=clean_text(inbound.method),
        source=clean_text(inbound.source),
        raw=clean_text(inbound.raw),
        client_ip=clean_optional(inbound.client_ip),
        signature=clean_optional(inbound.signature),
        signature_ts=clean_optional(inbound.signature_ts),
        path_token=clean_optional(inbound.path_token),
    )


def log_fields(inbound: Inbound) -> dict[str, Any]:
    """The log columns for a postback, ready for JSON and Postgres."""
    clean = sanitized(inbound)
    return {name: getattr(clean, name) for name in _INBOUND}


def dumps_with_log(rows: list[dict[str, Any]]) -> str:
    """`rows` as a JSON array, each `log` member (an Inbound) as its log columns.

    orjson writes the dataclass itself; only when that text holds what Postgres or
    JSON refuses (a NUL, a lone surrogate) are the log fields cleaned, as `log_fields`
    does, and the rows written again."""
    try:
        data = orjson.dumps(rows)
        if b"\\u0000" not in data:
            return data.decode()
    except orjson.JSONEncodeError:
        pass
    rows = [
        {**row, "log": log_fields(entry)} if isinstance(entry := row.get("log"), Inbound) else row
        for row in rows
    ]
    return orjson.dumps(rows).decode()


def dump_inbound(inbound: Inbound) -> bytes:
    try:
        return orjson.dumps(inbound)
    except orjson.JSONEncodeError:  # a lone surrogate, say from a header
        return orjson.dumps(sanitized(inbound))


def load_inbound(data: bytes) -> Inbound:
    fields_ = orjson.loads(data)
    fields_["received_at"] = datetime.fromisoformat(fields_["received_at"])
    return Inbound(**{name: fields_[name] for name in _INBOUND if name in fields_})


async def enqueue(redis: Redis, inbound: Inbound) -> None:
    """Keep a postback in Redis for the sink to apply once Postgres is back."""
    queued = dataclasses.replace(inbound, queued=True)
    await redis.xadd(keys.POSTBACK_STREAM, {b"d": dump_inbound(queued)})
