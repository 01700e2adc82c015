"""The floor under the tracker's hot paths: an aiohttp app that does only the work the
issue's constraints leave no way around, with the tracker's own batching pieces.

- `GET /c/{campaign_key}`: a click id, a small JSON record, then the 302 once the record
  is in Redis and on a stream (the store script, batched on packed connections as the
  click writer sends it), with the click cookie.
- `GET /postback?clickid=&txid=&payout=&token=`: the click read from Redis (batched), then
  its conversion and a log row written by one statement per batch, committed before the
  200.

No campaign config, visitor facts, rules, uniqueness, validation models, metrics or logs.
Usage: python bench/floor_app.py PORT REDIS_URL DATABASE_URL
"""

import asyncio
import hmac
import os
import sys
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import orjson
import uvloop
from aiohttp import web

from tracker.store.batching import Batcher
from tracker.store.clicks import STORE_CLICKS_SCRIPT
from tracker.store.redis import HotCalls, create_redis, pack

LOCATION = "https://offer.example.com/lp?campaign=1&clickid="
TOKEN = "floor"
# The clicks the postback load converts (bench/floor.py stores them).
CLICK_KEY = "floor:click:"
CLICK_RECORD = {"campaign_id": 1, "offer_id": 1, "ip": "203.0.113.7"}
# What a click stores: its record under this prefix and id, and an entry on the stream.
RECORD_KEY = "floor:c:"
STREAM = "floor:stream"
SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_conversions (
    id bigserial PRIMARY KEY, click_id text NOT NULL, txid text NOT NULL,
    payout numeric NOT NULL, campaign_id bigint, offer_id bigint, click jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (click_id, txid)
);
CREATE TABLE IF NOT EXISTS floor_log (
    id bigserial PRIMARY KEY, received_at timestamptz NOT NULL DEFAULT now(),
    params jsonb, result text
);
"""
INSERT = """
WITH input AS (
    SELECT * FROM json_to_recordset($1::text::json) AS r(
        idx integer, click_id text, txid text, payout numeric, campaign_id bigint,
        offer_id bigint, click jsonb, params jsonb)
), inserted AS (
    INSERT INTO floor_conversions (click_id, txid, payout, campaign_id, offer_id, click)
    SELECT click_id, txid, payout, campaign_id, offer_id, click FROM input ORDER BY idx
    ON CONFLICT (click_id, txid) DO NOTHING
    RETURNING id, click_id, txid
), logged AS (
    INSERT INTO floor_log (params, result)
    SELECT i.params, CASE WHEN c.id IS NULL THEN 'duplicate' ELSE 'created' END
    FROM input i LEFT JOIN inserted c USING (click_id, txid)
)
SELECT id, click_id, txid FROM inserted
"""


async def create_floor(redis_url: str, database_url: str) -> web.Application:
    redis = create_redis(redis_url)
    sha = await redis.script_load(STORE_CLICKS_SCRIPT)
    hot = HotCalls(redis)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    await pool.execute(SCHEMA)

    async def store(batch: list[tuple[str, bytes]]) -> list[Any]:
        script_keys: list[str] = []
        args: list[bytes | int] = []
        for click_id, record in batch:
            key = RECORD_KEY + click_id
            script_keys += (STREAM, key, key)
            args += (86400, record, 0, 1)
        (flags,) = await hot.call(pack(b"EVALSHA", sha, len(script_keys), *script_keys, *args))
        return list(flags)

    async def read(click_ids: list[str]) -> list[Any]:
        (values,) = await hot.call(pack(b"MGET", *(CLICK_KEY + i for i in click_ids)))
        return list(values)

    async def write(rows: list[dict[str, Any]]) -> list[Any]:
        for idx, row in enumerate(rows):
            row["idx"] = idx
        made = {
            (r["click_id"], r["txid"]): r["id"]
            for r in await pool.fetch(INSERT, orjson.dumps(rows).decode())
        }
        # Of equal keys in one batch, only the first created.
        return [made.pop((row["click_id"], row["txid"]), None) for row in rows]

    clicks: Batcher[tuple[str, bytes], Any] = Batcher(store, 500, "floor-clicks")
    reads: Batcher[str, Any] = Batcher(read, 500, "floor-reads")
    writes: Batcher[dict[str, Any], Any] = Batcher(write, 500, "floor-writes")

    async def click(request: web.Request) -> web.Response:
        click_id = os.urandom(12).hex()
        record = orjson.dumps(
            {
                "click_id": click_id,
                "campaign_id": 1,
                "ip": request.remote,
                "user_agent": request.headers.get("User-Agent"),
                "is_unique": None,
            }
        )
        await clicks.submit((click_id, record), 0.25)
        response = web.Response(status=302)
        response.headers["Location"] = LOCATION + click_id
        response.headers["Set-Cookie"] = f"tk_click={click_id}; Max-Age=86400; Path=/"
        return response

    async def postback(request: web.Request) -> web.Response:
        query = request.query
        click_id, txid = query.get("clickid", ""), query.get("txid", "")
        try:
            payout = Decimal(query.get("payout", "0"))
        except InvalidOperation:
            return web.json_response({"error": "payout is not a number"}, status=400)
        if not click_id or not txid or not hmac.compare_digest(query.get("token", ""), TOKEN):
            return web.json_response({"error": "missing clickid, txid or token"}, status=400)
        raw = await reads.submit(click_id, 0.5)
        if raw is None:
            return web.json_response({"error": "unknown click id"}, status=404)
        stored = orjson.loads(raw)
        conversion_id = await writes.submit(
            {
                "click_id": click_id,
                "txid": txid,
                "payout": str(payout),
                "campaign_id": stored["campaign_id"],
                "offer_id": stored["offer_id"],
                "click": stored,
                "params": dict(query),
            }
        )
        result = "created" if conversion_id is not None else "duplicate"
        body = orjson.dumps({"result": result, "conversion_id": conversion_id})
        return web.Response(body=body, content_type="application/json")

    async def running(app: web.Application) -> Any:
        for batcher in (clicks, reads, writes):
            batcher.start()
        yield
        for batcher in (clicks, reads, writes):
            await batcher.close()
        await pool.close()
        await redis.aclose()

    app = web.Application()
    app.cleanup_ctx.append(running)
    app.router.add_get("/c/{campaign_key}", click)
    app.router.add_get("/postback", postback)
    return app


def main() -> None:
    port, redis_url, database_url = sys.argv[1:4]
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(
        create_floor(redis_url, database_url),
        host="127.0.0.1",
        port=int(port),
        access_log=None,
        print=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
