"""The log of every inbound postback: what was sent and what became of it."""

from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg
import orjson

from tracker.store.batching import BatchedService, Batcher


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
"""
SELECT_UNMATCHED_FOR = f"""
SELECT id, {", ".join(_INBOUND)}
FROM postback_log
WHERE result = 'unmatched' AND click_id = any($1::text[])
ORDER BY id
"""
MARK_REMATCHED = """
UPDATE postback_log
SET result = $2, reason = $3, conversion_id = $4, network_id = $5, rematched_at = now()
WHERE id = $1
"""


class PostbackLog(BatchedService):
    """Appends log entries, many concurrent postbacks per statement."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500) -> None:
        self._pool = pool
        self.batcher: Batcher[_Entry, None] = Batcher(self._flush, max_batch, "postback-log")

    async def append(self, inbound: Inbound, outcome: Result) -> None:
        """Log a postback and what became of it; return once it is stored."""
        await self.batcher.submit(_Entry(inbound, outcome))

    async def _flush(self, entries: list[_Entry]) -> list[BaseException | None]:
        # orjson serialises the dataclasses itself, without the deep copy `asdict` makes.
        await self._pool.execute(INSERT_LOG, orjson.dumps(entries).decode())
        return [None] * len(entries)


async def unmatched_for(pool: asyncpg.Pool, click_ids: list[str]) -> list[tuple[int, Inbound]]:
    """Logged postbacks (log id, postback) still waiting for one of these clicks."""
    rows = await pool.fetch(SELECT_UNMATCHED_FOR, click_ids)
    return [(row["id"], Inbound(**{name: row[name] for name in _INBOUND})) for row in rows]


async def mark_rematched(pool: asyncpg.Pool, log_id: int, outcome: Result) -> None:
    await pool.execute(
        MARK_REMATCHED,
        log_id,
        outcome.result,
        outcome.reason,
        outcome.conversion_id,
        outcome.network_id,
    )


FAILED_RESULTS = ("unmatched", "invalid", "rejected-auth")
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
DELETE_EXPIRED = """
DELETE FROM postback_log WHERE id IN (
    SELECT id FROM postback_log
    WHERE received_at < $1 OR (received_at < $2 AND result = any($3::text[]))
    LIMIT $4
)
"""


async def delete_expired(
    pool: asyncpg.Pool, now: datetime, keep_days: int, keep_failed_days: int, batch: int
) -> int:
    """Delete log rows older than `keep_days`, failed ones older than `keep_failed_days`,
    `batch` rows per statement; return how many were deleted."""
    deleted = 0
    while True:
        status = await pool.execute(
            DELETE_EXPIRED,
            now - timedelta(days=keep_days),
            now - timedelta(days=keep_failed_days),
            list(FAILED_RESULTS),
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
JOIN clicks c ON c.click_id = l.click_id
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
