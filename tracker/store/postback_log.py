"""The log of every inbound postback: what was sent and what became of it.

Also the Redis queue postbacks wait in while Postgres is unavailable.
"""

import dataclasses
import logging
import secrets
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import orjson
from redis.asyncio import Redis

from tracker.store import keys
from tracker.store.batching import BatchedService, Batcher
from tracker.store.db import POSTGRES_UNAVAILABLE

log = logging.getLogger("tracker.postback_log")


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
    # Given at the edge; the unit of idempotency when a postback is applied again.
    receipt_id: str = dataclasses.field(default_factory=new_receipt_id)
    queued: bool = False  # applied by the sink from the Redis queue


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
ON CONFLICT (receipt_id) DO NOTHING
"""
LOG_INBOUND_COLUMNS = _INBOUND
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
        try:
            # orjson serialises the dataclasses itself, without the deep copy `asdict` makes.
            await self._pool.execute(INSERT_LOG, orjson.dumps(entries).decode())
            return [None] * len(entries)
        except POSTGRES_UNAVAILABLE:
            raise
        except (orjson.JSONEncodeError, asyncpg.PostgresError) as exc:
            # One row Postgres (or JSON) refuses, e.g. a NUL byte, spoils the statement.
            log.warning("postback log batch refused (%s); writing one by one", exc)
        return [await self._insert_alone(entry) for entry in entries]

    async def _insert_alone(self, entry: _Entry) -> BaseException | None:
        """Store one row; a row refused as it is is stored with its text sanitised."""
        try:
            await self._pool.execute(INSERT_LOG, orjson.dumps([entry]).decode())
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
            await self._pool.execute(INSERT_LOG, orjson.dumps([clean]).decode())
            return None
        except Exception as exc:
            return exc


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


def clean_text(value: str) -> str:
    """`value` without what Postgres text refuses: NUL bytes go, lone surrogates become U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value
    value = value.replace("\x00", "")
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def sanitized(inbound: Inbound) -> Inbound:
    """The postback with every text field storable in Postgres."""

    def clean(value: str | None) -> str | None:
        return None if value is None else clean_text(value)

    return dataclasses.replace(
        inbound,
        params={clean_text(k): clean_text(v) for k, v in inbound.params.items()},
        method=clean_text(inbound.method),
        raw=clean_text(inbound.raw),
        client_ip=clean(inbound.client_ip),
        signature=clean(inbound.signature),
        signature_ts=clean(inbound.signature_ts),
        path_token=clean(inbound.path_token),
    )


def log_fields(inbound: Inbound) -> dict[str, Any]:
    """The log columns for a postback, ready for JSON and Postgres."""
    clean = sanitized(inbound)
    return {name: getattr(clean, name) for name in _INBOUND}


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
