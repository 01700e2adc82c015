"""Row-level SQL for the admin API. Table and column names come from code, never input."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of its own or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy

SELECT_CAMPAIGN_OFFERS = """
SELECT campaign_id, offer_id, weight FROM campaign_offers
WHERE campaign_id = any($1::bigint[]) ORDER BY campaign_id, position
"""
DELETE_CAMPAIGN_OFFERS = "DELETE FROM campaign_offers WHERE campaign_id = $1"
INSERT_CAMPAIGN_OFFER = """
INSERT INTO campaign_offers (campaign_id, offer_id, weight, position) VALUES ($1, $2, $3, $4)
"""
SELECT_CAMPAIGN_LANDERS = """
SELECT campaign_id, lander_id, weight FROM campaign_landers
WHERE campaign_id = any($1::bigint[]) ORDER BY campaign_id, position
"""
DELETE_CAMPAIGN_LANDERS = "DELETE FROM campaign_landers WHERE campaign_id = $1"
INSERT_CAMPAIGN_LANDER = """
INSERT INTO campaign_landers (campaign_id, lander_id, weight, position) VALUES ($1, $2, $3, $4)
"""
# Moves forward on every write, even two in one microsecond or under a clock step back,
# so that it can serve as the row's version (its ETag).
_NEXT_UPDATED_AT = "updated_at = greatest(clock_timestamp(), updated_at + interval '1 microsecond')"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def etag(row: asyncpg.Record) -> str:
    """The row's version as a strong HTTP entity tag."""
    micros = (row["updated_at"] - _EPOCH) // timedelta(microseconds=1)
    return f'"{row["id"]}-{micros}"'


def etag_matches(row: asyncpg.Record, if_match: str) -> bool:
    """Whether an If-Match header value (`*` or a list of tags) names the row's version."""
    wanted = {tag.strip() for tag in if_match.split(",")}
    return "*" in wanted or etag(row) in wanted


async def insert_row(conn: Conn, table: str, values: dict[str, Any]) -> asyncpg.Record:
    columns = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *"
    row: asyncpg.Record | None = await conn.fetchrow(query, *values.values())
    assert row is not None
    return row


async def update_row(
    conn: Conn, table: str, row_id: int, values: dict[str, Any]
) -> asyncpg.Record | None:
    sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(values, start=2))
    query = f"UPDATE {table} SET {sets}, {_NEXT_UPDATED_AT} WHERE id = $1 RETURNING *"
    row: asyncpg.Record | None = await conn.fetchrow(query, row_id, *values.values())
    return row


async def get_row(
    conn: Conn, table: str, row_id: int, for_update: bool = False
) -> asyncpg.Record | None:
    """The row; with `for_update`, locked until the transaction ends so that a concurrent
    read-merge-write of the same row waits for this one."""
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT * FROM {table} WHERE id = $1{lock}", row_id
    )
    return row


async def list_rows(
    conn: Conn, table: str, include_archived: bool, limit: int, offset: int
) -> list[asyncpg.Record]:
    where = "" if include_archived else "WHERE archived_at IS NULL"
    query = f"SELECT * FROM {table} {where} ORDER BY id LIMIT $1 OFFSET $2"
    return list(await conn.fetch(query, limit, offset))


async def archive_row(conn: Conn, table: str, row_id: int) -> asyncpg.Record | None:
    query = (
        f"UPDATE {table} SET archived_at = coalesce(archived_at, now()), {_NEXT_UPDATED_AT} "
        "WHERE id = $1 RETURNING *"
    )
    row: asyncpg.Record | None = await conn.fetchrow(query, row_id)
    return row


async def missing_ids(conn: Conn, table: str, ids: list[int]) -> list[int]:
    """Those of `ids` with no active (unarchived) row in `table`."""
    query = f"SELECT id FROM {table} WHERE id = any($1::bigint[]) AND archived_at IS NULL"
    found = {row["id"] for row in await conn.fetch(query, ids)}
    return [i for i in ids if i not in found]


async def fetch_campaign_offers(
    conn: Conn, campaign_ids: list[int]
) -> dict[int, list[dict[str, int]]]:
    result: dict[int, list[dict[str, int]]] = defaultdict(list)
    for row in await conn.fetch(SELECT_CAMPAIGN_OFFERS, campaign_ids):
        result[row["campaign_id"]].append({"offer_id": row["offer_id"], "weight": row["weight"]})
    return result


async def replace_campaign_offers(
    conn: Conn, campaign_id: int, offers: list[tuple[int, int]]
) -> None:
    await conn.execute(DELETE_CAMPAIGN_OFFERS, campaign_id)
    await conn.executemany(
        INSERT_CAMPAIGN_OFFER,
        [(campaign_id, offer_id, weight, pos) for pos, (offer_id, weight) in enumerate(offers)],
    )


async def fetch_campaign_landers(
    conn: Conn, campaign_ids: list[int]
) -> dict[int, list[dict[str, int]]]:
    """The landers of each campaign's default path, in their given order."""
    result: dict[int, list[dict[str, int]]] = defaultdict(list)
    for row in await conn.fetch(SELECT_CAMPAIGN_LANDERS, campaign_ids):
        result[row["campaign_id"]].append({"lander_id": row["lander_id"], "weight": row["weight"]})
    return result


async def replace_campaign_landers(
    conn: Conn, campaign_id: int, landers: list[tuple[int, int]]
) -> None:
    await conn.execute(DELETE_CAMPAIGN_LANDERS, campaign_id)
    await conn.executemany(
        INSERT_CAMPAIGN_LANDER,
        [(campaign_id, lander_id, weight, pos) for pos, (lander_id, weight) in enumerate(landers)],
    )


ROTATE_POSTBACK_TOKEN = f"""
UPDATE affiliate_networks
SET previous_postback_token = CASE WHEN $3 > 0 THEN postback_token END,
    previous_token_expires_at = CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) END,
    postback_token = $2,
    {_NEXT_UPDATED_AT}
WHERE id = $1
RETURNING *
"""


async def rotate_postback_token(
    conn: Conn, network_id: int, new_token: str, grace_seconds: int
) -> asyncpg.Record | None:
    """Give a network a new postback token; the old one keeps working for the grace."""
    row: asyncpg.Record | None = await conn.fetchrow(
        ROTATE_POSTBACK_TOKEN, network_id, new_token, grace_seconds
    )
    return row
