"""Cheap probes of the stores for the readiness check: each is one or two round trips."""

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tracker.store import db

SELECT_APPLIED_VERSIONS = "SELECT array_agg(version) FROM schema_migrations"


def _entry_ms(entry_id: bytes | str | None) -> int:
    assert entry_id is not None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def missing_migrations(pool: asyncpg.Pool) -> list[str]:
    """Bundled migrations this database has not applied, by file name."""
    try:
        applied = await pool.fetchval(SELECT_APPLIED_VERSIONS)
    except asyncpg.UndefinedTableError:
        applied = None
    done = set(applied or ())
    return [name for version, name, _ in db.list_migrations() if version not in done]


async def stream_lag_seconds(redis: Redis, stream: str, group: str) -> float:
    """Age of the oldest entry of `stream` that `group` has not acknowledged, 0 if none.

    Entry ids begin with the millisecond they were added, so the age needs no clock of
    ours: the oldest pending entry (read but not acknowledged: a consumer that
    died, or a batch being stored) and the first entry never read are the candidates."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0.0  # no stream yet: nothing was ever written
    info = next((g for g in groups if g["name"] in (group, group.encode())), None)
    after = info["last-delivered-id"] if info is not None else b"0-0"
    oldest: list[int] = []
    if info is not None and int(info["pending"]):
        pending = await redis.xpending(stream, group)
        oldest.append(_entry_ms(pending["min"]))
    unread = await redis.xrange(stream, min=b"(" + _as_bytes(after), count=1)
    if unread:
        oldest.append(_entry_ms(unread[0][0]))
    if not oldest:
        return 0.0
    seconds, micros = await redis.time()  # the clock that stamped the ids
    return max(0.0, seconds + micros / 1e6 - min(oldest) / 1000)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def stream_backlog(redis: Redis, stream: str, group: str) -> int:
    """Entries of `stream` that `group` has not acknowledged: pending plus never read."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return 0  # no stream yet
    for info in groups:
        if info["name"] in (group, group.encode()):
            return int(info["pending"]) + int(info.get("lag") or 0)
    return int(await redis.xlen(stream))
