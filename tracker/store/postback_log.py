"""The log of every inbound postback: what was sent and what became of it."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from tracker.store.batching import BatchedService, Batcher

INSERT_LOG = """
INSERT INTO postback_log (
    received_at, network_id, click_id, result, reason, conversion_id, client_ip, method, raw,
    signature, signature_ts, path_token, params
)
SELECT received_at, network_id, click_id, result, reason, conversion_id, client_ip, method, raw,
       signature, signature_ts, path_token, params
FROM jsonb_to_recordset($1::text::jsonb) AS r(
    received_at timestamptz, network_id bigint, click_id text, result text, reason text,
    conversion_id bigint, client_ip text, method text, raw text, signature text,
    signature_ts text, path_token text, params jsonb
)
"""
SELECT_UNMATCHED_FOR = """
SELECT id, received_at, client_ip, method, raw, signature, signature_ts, path_token, params
FROM postback_log
WHERE result = 'unmatched' AND click_id = any($1::text[])
ORDER BY id
"""
MARK_REMATCHED = """
UPDATE postback_log
SET result = $2, reason = $3, conversion_id = $4, network_id = $5, rematched_at = now()
WHERE id = $1
"""


@dataclass(frozen=True, slots=True)
class LogEntry:
    received_at: datetime
    result: str
    method: str
    raw: str
    params: dict[str, str]
    network_id: int | None = None
    click_id: str | None = None
    reason: str | None = None
    conversion_id: int | None = None
    client_ip: str | None = None
    signature: str | None = None
    signature_ts: str | None = None
    path_token: str | None = None


class PostbackLog(BatchedService):
    """Appends log entries, many concurrent postbacks per statement."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 500) -> None:
        self._pool = pool
        self.batcher: Batcher[LogEntry, None] = Batcher(self._flush, max_batch, "postback-log")

    async def append(self, entry: LogEntry) -> None:
        await self.batcher.submit(entry)

    async def _flush(self, entries: list[LogEntry]) -> list[BaseException | None]:
        # orjson serialises dataclasses itself, without the deep copy `asdict` makes.
        await self._pool.execute(INSERT_LOG, orjson.dumps(entries).decode())
        return [None] * len(entries)


async def unmatched_for(pool: asyncpg.Pool, click_ids: list[str]) -> list[dict[str, Any]]:
    """Logged postbacks still waiting for one of these clicks."""
    return [dict(row) for row in await pool.fetch(SELECT_UNMATCHED_FOR, click_ids)]


async def mark_rematched(
    pool: asyncpg.Pool,
    log_id: int,
    result: str,
    reason: str | None,
    conversion_id: int | None,
    network_id: int | None,
) -> None:
    await pool.execute(MARK_REMATCHED, log_id, result, reason, conversion_id, network_id)
