"""The Redis client: hiredis packing, and the hot calls the batching services make."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.devstack import RedisServer, free_port
from tracker.domain.clickid import new_click_id
from tracker.settings import Settings
from tracker.store import keys
from tracker.store.clicks import ClickWriter
from tracker.store.redis import (
    HotCalls,
    PackedConnection,
    PackedUnixConnection,
    create_redis,
    pack,
)

ARGS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("CONFIG GET", "maxmemory"),
    (b"SCRIPT LOAD", b"return 1"),
    ("SET", "k\u00e9", b"\x00\xffv", "EX", 60),
    ("EVALSHA", "ab" * 20, 2, "a", "b", 1.5, -7, 2**70, 1e20, memoryview(b"mv")),
]


@pytest.mark.parametrize("args", ARGS)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    ours = b"".join(PackedConnection().pack_command(*args))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object()])
def test_a_value_redis_py_refuses_is_refused_as_it_does(bad: object) -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", bad)  # type: ignore[arg-type]


def test_another_encoding_packs_as_redis_py_does() -> None:
    latin = PackedConnection(encoding="latin-1")
    assert latin.pack_command("SET", "k", "\u00e9") == Connection(encoding="latin-1").pack_command(
        "SET", "k", "\u00e9"
    )


@pytest.fixture
async def packed(settings: Settings) -> AsyncIterator[Redis]:
    redis = create_redis(settings.redis_url)
    yield redis
    await redis.aclose()


async def test_the_client_packs_with_hiredis_and_parses_with_hiredis(packed: Redis) -> None:
    await packed.set("k", "v\u00e9")
    async with packed.pipeline(transaction=True) as pipe:
        replies = await pipe.incr("n").get("k").execute()
    assert replies == [1, "v\u00e9".encode()]
    conn = await packed.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert isinstance(conn, PackedConnection)
        assert isinstance(conn._parser, _AsyncHiredisParser)
    finally:
        await packed.connection_pool.release(conn)


async def test_hot_calls_answer_in_order_with_errors_in_place(packed: Redis) -> None:
    await packed.set("text", "x")
    hot = HotCalls(packed)
    try:
        replies = await hot.call(pack("SET", "a", 1) + pack("INCR", "text") + pack("GET", "a"), 3)
        assert replies[0] is not None and replies[2] == b"1"
        assert isinstance(replies[1], ResponseError)
        # The connection stayed in step: the next call reads its own reply.
        assert await hot.call(pack("MGET", "a", "missing")) == [[b"1", None]]
    finally:
        await hot.close()


async def test_a_hot_call_on_a_killed_connection_is_sent_again(packed: Redis) -> None:
    hot = HotCalls(packed)
    try:
        await hot.call(pack("CLIENT", "SETNAME", "hot"))
        await packed.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await hot.call(pack("PING")) == [b"PONG"]
    finally:
        await hot.close()


# Counts a call after keeping Redis busy for half a second.
SLOW_INCR = """
local start = redis.call('TIME')
local elapsed = 0
while elapsed < 0.5 do
    local now = redis.call('TIME')
    elapsed = (now[1] - start[1]) + (now[2] - start[2]) / 1e6
end
return redis.call('INCR', KEYS[1])
"""


async def test_a_hot_call_that_times_out_is_not_sent_again(settings: Settings) -> None:
    redis = create_redis(settings.redis_url, timeout=0.2)
    hot = HotCalls(redis)
    try:
        with pytest.raises(RedisTimeoutError):
            await hot.call(pack("EVAL", SLOW_INCR, 1, "calls"))
        await asyncio.sleep(0.8)
        assert await redis.get("calls") == b"1"
        # The connection that timed out was closed; the next call gets a fresh one.
        assert await hot.call(pack("GET", "calls")) == [b"1"]
    finally:
        await hot.close()
        await redis.aclose()


async def test_clicks_are_stored_after_redis_forgets_the_script(packed: Redis) -> None:
    writer = ClickWriter(packed)
    await writer.start()
    try:
        first = new_click_id()
        await writer.write(first, b'{"n":1}', 60)
        await packed.script_flush()
        second = new_click_id()
        await writer.write(second, b'{"n":2}', 60)
    finally:
        await writer.close()
    stored = [await packed.get(keys.click_key(click_id)) for click_id in (first, second)]
    assert [orjson.loads(value) for value in stored if value] == [{"n": 1}, {"n": 2}]


async def test_hot_calls_give_their_connections_back(tmp_path: Any) -> None:
    server = RedisServer(tmp_path / "redis", free_port(), persistent=False)
    server.start()
    try:
        redis = create_redis(server.url())
        hot = HotCalls(redis)
        await asyncio.gather(*(hot.call(pack("PING")) for _ in range(3)))
        await hot.close()
        pool: Any = redis.connection_pool
        assert not pool._in_use_connections
        assert len(pool._available_connections) == 3
        await redis.aclose()
    finally:
        server.stop()


async def test_hot_calls_close_after_the_pool_was_reset(packed: Redis) -> None:
    hot = HotCalls(packed)
    await hot.call(pack("PING"))
    (conn,) = hot._free
    packed.connection_pool.reset()
    await hot.close()  # the pool no longer knows the connection: closed, not handed back
    assert not conn.is_connected


async def test_tls_urls_keep_their_connection_class() -> None:
    single = create_redis("rediss://127.0.0.1:1/0")
    cluster: Any = create_redis("rediss://127.0.0.1:1/0", cluster=True)
    try:
        assert single.connection_pool.connection_class is SSLConnection
        assert all(node.connection_class is SSLConnection for node in cluster.startup_nodes)
    finally:
        await single.aclose()
        await cluster.aclose()


async def test_a_unix_socket_packs_too_and_stores_clicks(tmp_path: Any) -> None:
    server = RedisServer(tmp_path / "redis", free_port(), persistent=False)
    server.start()
    redis = create_redis(server.unix_url())
    writer = ClickWriter(redis)
    await writer.start()
    try:
        await redis.set("k", "v")
        conn = await redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            assert isinstance(conn, PackedUnixConnection)
            assert isinstance(conn, UnixDomainSocketConnection)
        finally:
            await redis.connection_pool.release(conn)
        hot = HotCalls(redis)
        assert await hot.call(pack("GET", "k") + pack("INCR", "n"), 2) == [b"v", 1]
        await hot.close()
        click_id = new_click_id()
        await writer.write(click_id, b'{"n":1}', 60)
        assert orjson.loads(await redis.get(keys.click_key(click_id))) == {"n": 1}
        # The same server over TCP sees what the socket wrote.
        tcp = create_redis(server.url())
        assert await tcp.get("k") == b"v"
        await tcp.aclose()
    finally:
        await writer.close()
        await redis.aclose()
        server.stop()
