import asyncio
from collections.abc import Callable, Iterable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from tracker.settings import Settings

# hiredis's packer, typed as it is (its stub allows one argument only).
_hiredis_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command


class _Packed(AbstractConnection):
    """redis-py's connection, with its two per-command costs in Python taken out:
    commands are packed by hiredis (C) in one buffer, and a write the socket takes
    at once is not wrapped in a timeout task. Replies are parsed by redis-py's
    hiredis parser as before; everything else (connect, health checks, errors,
    timeouts on reads and on writes that must wait) is redis-py's own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        encoder = self.encoder
        # hiredis encodes text as strict UTF-8; any other encoding packs as redis-py does.
        self._hiredis_packs = (
            encoder.encoding.lower().replace("-", "").replace("_", "") == "utf8"
            and encoder.encoding_errors == "strict"
        )

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        if not self._hiredis_packs:
            return super().pack_command(*args)
        head = args[0]
        # A command name with words in it ('CONFIG GET') goes as separate arguments.
        if isinstance(head, str):
            if " " in head:
                args = (*head.split(), *args[1:])
        elif isinstance(head, bytes) and b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except (TypeError, UnicodeError):
            # A bool, None or other type redis-py refuses: its own error.
            return super().pack_command(*args)

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if (
            writer is None
            or not self.is_connected
            or not isinstance(command, list)
            or writer.transport.is_closing()
            or writer.transport.get_write_buffer_size()
        ):
            # Not connected yet, or a write that may have to wait: redis-py's way.
            await super().send_packed_command(command, check_health)
            return
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        try:
            writer.writelines(command)
            if writer.transport.get_write_buffer_size():
                # The socket did not take it all: wait for room, within the timeout.
                async with asyncio.timeout(self.socket_timeout):
                    await writer.drain()
        except TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            raise RedisConnectionError(f"Error while writing to socket: {exc!r}") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class PackedConnection(_Packed, Connection):
    """A TCP connection (`redis://`) that packs and sends as `_Packed` does."""


class PackedUnixConnection(_Packed, UnixDomainSocketConnection):
    """A Unix socket connection (`unix://`) that packs and sends as `_Packed` does."""


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol (text as UTF-8), to concatenate with others
    for `HotCalls.call`."""
    return _hiredis_pack(args)


class HotCalls:
    """The hot commands of a batching service (a click batch's script, a batch read),
    sent packed on a single Redis on connections this object keeps: none of the
    client's per-command machinery (pool lock and checks, retry wrapper, response
    callbacks, telemetry) runs per call, and replies come back raw.

    As the client does (see `create_redis`): a call that finds its connection dead
    is sent once more on a fresh one, a timed-out call is not retried, and a
    connection that failed mid-call is closed (reconnected by the next call)."""

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._free: list[Connection] = []

    async def call(self, packed: bytes, replies: int = 1) -> list[Any]:
        conn = self._free.pop() if self._free else await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            try:
                return await _call_packed(conn, packed, replies)
            except RedisConnectionError:
                await conn.disconnect()
                return await _call_packed(conn, packed, replies)
        finally:
            self._free.append(conn)

    async def close(self) -> None:
        """Hand the connections back to the client's pool."""
        free, self._free = self._free, []
        for conn in free:
            try:
                await self._pool.release(conn)
            except KeyError:  # the pool was reset meanwhile: it no longer owns them
                await conn.disconnect()


async def _call_packed(conn: Connection, packed: bytes, replies: int) -> list[Any]:
    """Send commands packed already (`pack`) and read their `replies` replies, each a
    value or the `ResponseError` its command got; on any connection (a
    `PackedConnection` sends without its timeout task)."""
    await conn.send_packed_command([packed])
    answers: list[Any] = []
    for _ in range(replies):
        try:
            answers.append(await conn.read_response())
        except ResponseError as exc:  # the connection is still in step: read on
            answers.append(exc)
    return answers


def create_redis(
    url: str, timeout: float = 0.5, connect_timeout: float = 1.0, cluster: bool = False
) -> Redis:
    """A client with a connection pool; responses stay bytes (click records are JSON bytes).

    Every command gives up after `timeout` seconds, so a frozen Redis costs a
    caller a bounded wait. A command that finds its pooled connection dead (Redis
    restarted) is retried once on a fresh one; a timed-out command is not retried,
    which would double the wait. Its connections pack commands with hiredis
    (`PackedConnection` for `redis://`, `PackedUnixConnection` for `unix://`; `rediss://`
    keeps redis-py's own).

    With `cluster`, `url` names one node of a Redis Cluster and the client finds the
    others and follows slots as they move (a failover). It is typed as `Redis`: every
    call site uses the commands both share, with all keys of one call in one slot
    (see `is_cluster` for the few that differ).
    """
    if cluster:
        client = RedisCluster.from_url(
            url,
            decode_responses=False,
            health_check_interval=30,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            # A failover leaves slots uncovered for a moment; the client keeps going.
            require_full_coverage=False,
            # A node that went away: find the new owner of its slots, a few times.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3),
        )
        # The cluster client takes no connection class: set it where its nodes (the
        # startup ones, and those it finds later) read it; TLS (rediss://) keeps its own.
        if client.connection_kwargs.get("connection_class") is Connection:
            client.connection_kwargs["connection_class"] = PackedConnection
            for node in client.startup_nodes:
                node.connection_class = PackedConnection
        return cast(Redis, client)
    redis: Redis = Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=30,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        connection_class=PackedConnection,
    )
    pool = redis.connection_pool
    # The URL's scheme chose the class: a Unix socket's gets the same packing.
    if pool.connection_class is UnixDomainSocketConnection:
        pool.connection_class = PackedUnixConnection
    return redis


def is_cluster(redis: Redis) -> bool:
    """True for a Redis Cluster client (made by `create_redis(..., cluster=True)`)."""
    return isinstance(redis, RedisCluster)


def redis_for(settings: Settings, blocking_ms: int = 0) -> Redis:
    """The client for a process; `blocking_ms` widens the timeout for blocking reads
    (the sink's XREADGROUP), which must not count as a frozen Redis."""
    return create_redis(
        settings.redis_url,
        timeout=settings.redis_timeout + blocking_ms / 1000,
        connect_timeout=settings.redis_connect_timeout,
        cluster=settings.redis_cluster,
    )
