"""The log of every inbound postback: what was sent and what became of it."""

from dataclasses import dataclass, fields
from datetime import datetime
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
