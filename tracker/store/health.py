"""Cheap probes of the stores for the readiness check: each is one or two round trips."""

import asyncio
from typing import Any

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


async def _group(redis: Redis, stream: str, group: str) -> dict[str, Any] | None:
    """`group`'s entry of XINFO GROUPS on `stream`, or None (no stream, or no such group)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None  # no stream yet: nothing was ever written
    return next((g for g in groups if g["name"] in (group, group.encode())), None)


async def streams_backlog(redis: Redis, streams: list[str], group: str) -> int:
    """`stream_backlog` summed over `streams` (the click shards), read concurrently."""
    counts = await asyncio.gather(*(stream_backlog(redis, s, group) for s in streams))
    return sum(counts)


async def streams_progress(redis: Redis, streams: list[str], group: str) -> tuple[int, float]:
    """`stream_progress` over `streams` (the click shards): the summed backlog and the
    age of the oldest entry not acknowledged in any of them."""
    figures = await asyncio.gather(*(stream_progress(redis, s, group) for s in streams))
    return sum(backlog for backlog, _ in figures), max((age for _, age in figures), default=0.0)


async def stream_backlog(redis: Redis, stream: str, group: str) -> int:
    """Entries of `stream` that `group` has not acknowledged: pending plus never read."""
    info = await _group(redis, stream, group)
    if info is None:
        return int(await redis.xlen(stream))  # 0 without a stream
    return _backlog(info)


def _backlog(info: dict[str, Any]) -> int:
    return int(info["pending"]) + int(info.get("lag") or 0)


async def stream_progress(redis: Redis, stream: str, group: str) -> tuple[int, float]:
    """The backlog of `stream` for `group` (see `stream_backlog`), and the age in seconds
    of its oldest entry that `group` has not acknowledged (0 if none), from one XINFO.

    Entry ids begin with the millisecond they were added, so the age needs no clock of
    ours: the oldest pending entry (read but not acknowledged: a consumer that
    died, or a batch being stored) and the first entry never read are the candidates."""
    info = await _group(redis, stream, group)
    backlog = _backlog(info) if info is not None else int(await redis.xlen(stream))
    after = info["last-delivered-id"] if info is not None else b"0-0"
    oldest: list[int] = []
    if info is not None and int(info["pending"]):
        pending = await redis.xpending(stream, group)
        oldest.append(_entry_ms(pending["min"]))
    unread = await redis.xrange(stream, min=b"(" + _as_bytes(after), count=1)
    if unread:
        oldest.append(_entry_ms(unread[0][0]))
    if not oldest:
        return backlog, 0.0
    seconds, micros = await redis.time()  # the clock that stamped the ids
    return backlog, max(0.0, seconds + micros / 1e6 - min(oldest) / 1000)


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
