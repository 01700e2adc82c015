"""Click records: group-committed writes to Redis, reads from Redis or Postgres."""

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from tracker.domain.click import CLICK_COLUMNS, ClickRecord
from tracker.domain.clickid import MAX_SHARDS, click_shard, visitor_shard
from tracker.settings import Settings
from tracker.store import keys
from tracker.store.batching import BatchedService, Batcher, BatchQueueFullError
from tracker.store.redis import HotCalls, is_cluster, pack
from tracker.store.spool import ClickSpool, SpoolFile, read_clicks, release

log = logging.getLogger("tracker.clicks")
T = TypeVar("T")

_SELECTED = [name for name, _ in CLICK_COLUMNS if name not in ("created_ms", "cost")]

SELECT_CLICK = f"""
SELECT {", ".join(_SELECTED)}, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
       cost::text AS cost, (extract(epoch FROM lp_clicked_at) * 1000)::bigint AS lp_ms
FROM clicks
-- The time in the id pins the click's partition; a text that is no click id finds none.
WHERE click_id = $1 AND created_at = click_id_time($1)
"""

# KEYS: three per click: the stream of its shard, its record and its visitor's
# unique-click key (the record's key again when there is none). ARGV: four per click:
# TTL, record, unique window in seconds (WRITTEN: a spooled copy of a click written
# before, see the script), and 1 to add it to the stream (0: the caller adds it, on a
# cluster when the stream is in another slot).
# A TTL of 0 (a replayed click whose attribution window has passed) skips the SET:
# the click still goes on the stream, so Postgres gets it. A unique window above 0
# decides `is_unique` here, in the same round trip: the visitor is unique unless the
# key was there (a click within the window, which the SET also renews), and the
# record's JSON, which then ends in `null}`, has that tail replaced. Returns per
# click 1 (unique), 0 (repeat) or -1 (not decided here).
STORE_CLICKS_SCRIPT = """
local decided = {}
for i = 1, #KEYS, 3 do
    local n = (i - 1) / 3 * 4
    local ttl = tonumber(ARGV[n + 1])
    local record = ARGV[n + 2]
    local unique_ttl = tonumber(ARGV[n + 3])
    local flag = -1
    if unique_ttl > 0 then
        -- The key holds the record's key of the click that set it: the same click
        -- stored again (a call sent again after a timeout, a spool replay of a write
        -- that did happen) is decided as it was the first time.
        local seen = redis.call('SET', KEYS[i + 2], KEYS[i + 1], 'EX', unique_ttl, 'GET')
        if seen and seen ~= KEYS[i + 1] then
            flag = 0
            record = string.sub(record, 1, -6) .. 'false}'
        else
            flag = 1
            record = string.sub(record, 1, -6) .. 'true}'
        end
    end
    local add = ARGV[n + 4] == '1'
    if unique_ttl < 0 then
        -- Written before (its replicas did not confirm it in time): the record is there
        -- unless a failover lost the whole write, and only then is it written again.
        if ttl > 0 and not redis.call('SET', KEYS[i + 1], record, 'EX', ttl, 'NX') then
            add = false
        end
    elseif ttl > 0 then
        redis.call('SET', KEYS[i + 1], record, 'EX', ttl)
    end
    if add then
        redis.call('XADD', KEYS[i], '*', 'd', record)
    end
    decided[#decided + 1] = flag
end
return decided
"""
# KEYS: one stream; ARGV: records to add to it, in order.
ADD_TO_STREAM_SCRIPT = """
for i = 1, #ARGV do
    redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
return #ARGV
"""
REPLAY_BATCH = 500
# The unique window a replay passes for a click written before but not confirmed by the
# replicas: set it again only where a failover lost it.
WRITTEN = -1
# How long a master's replica count (asked when a WAIT falls short) is believed.
REPLICA_COUNT_SECONDS = 1.0
# What a reader sees for a member the stored record left out: null, as Postgres answers
# (`path` too: a record rewritten from a Postgres row has no rule index to keep).
_ABSENT: dict[str, Any] = {field.name: None for field in dataclasses.fields(ClickRecord)}
# How often a running process looks for spool files left by processes that died.
ORPHAN_SCAN_SECONDS = 5.0

# (click id, JSON record, TTL in seconds, unique-click key, unique window in seconds,
# the shard the id names)
ClickWrite = tuple[str, bytes, int, str | None, int, int]
_DECIDED = {1: True, 0: False}


async def per_group(
    groups: list[list[int]], size: int, call: Callable[[list[int]], Awaitable[Sequence[T]]]
) -> list[T | BaseException | None]:
    """`call` on each group of positions (a shard's), concurrently; each position gets
    its own result, or the error of its group's call."""
    results: list[T | BaseException | None] = [None] * size

    async def one(indexes: list[int]) -> None:
        try:
            values = await call(indexes)
        except Exception as exc:
            for i in indexes:
                results[i] = exc
            return
        for i, value in zip(indexes, values, strict=True):
            results[i] = value

    await asyncio.gather(*(one(indexes) for indexes in groups))
    return results


class ClickWriteError(Exception):
    """The click could not be stored; the visitor must not be redirected as if it were."""


def _as_decided(record: bytes, unique: bool | None) -> bytes:
    """The record as the script stored it: its `null}` tail replaced by the decision."""
    if unique is None:
        return record
    return record[:-5] + (b"true}" if unique else b"false}")


def _colocated(unique_key: str, shard: int) -> str:
    """`unique_key` in `shard`'s slot: a key spooled before shards existed (`uv:5:v`)
    or for another shard is moved beside the click's record."""
    tag = keys.shard_tag(shard)
    rest = unique_key.removeprefix(keys.UNIQUE_VISITOR_PREFIX)
    if rest.startswith(tag):
        return unique_key
    if rest.startswith("{"):
        rest = rest.partition("}:")[2]
    return f"{keys.UNIQUE_VISITOR_PREFIX}{tag}:{rest}"


class ClickWriter(BatchedService):
    """Stores click records with group commit, and spools them when Redis fails.

    Clicks that arrive while a write is in flight go out together in the next
    one: a single script call that, per click, sets the record with its TTL and
    appends it to the sink stream. One command per batch instead of two per
    click is what keeps the client library's per-command cost off the click path.
    Each caller resumes only when the script has returned.

    With a `spool`, a click whose batch fails or takes longer than
    `write_timeout` is appended to the local spool file instead (fsynced before
    the caller resumes), and the writer goes into degraded mode: later clicks go
    straight to the spool until Redis answers a PING, when a background task
    replays the spool into Redis in order and the writer returns to Redis.

    With `hot_seconds`, no record stays in Redis longer than that (the hot window):
    readers find older clicks in Postgres. The stream entry does not expire: it
    stays until the sink has stored the click and acknowledged it.
    """

    def __init__(
        self,
        redis: Redis,
        spool: ClickSpool | None = None,
        max_batch: int = 1000,
        max_in_flight: int = 1,
        write_timeout: float = 0.25,
        probe_seconds: float = 0.5,
        max_pending: int = 20000,
        hot_seconds: int | None = None,
        shards: int = keys.DEFAULT_SHARDS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self._redis = redis
        self.hot_seconds = hot_seconds
        self.shards = shards
        self._cluster = is_cluster(redis)
        self._next_shard = itertools.cycle(range(shards))
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._store_batch = redis.register_script(STORE_CLICKS_SCRIPT)
        self._add_to_stream = redis.register_script(ADD_TO_STREAM_SCRIPT)
        # On a single Redis, the batch script goes out as one packed EVALSHA on
        # connections of the writer's own (a cluster client routes per node instead).
        self._hot = None if self._cluster else HotCalls(redis)
        # The stream key of each shard a click id can name (see `_stream_shard`).
        self.batcher: Batcher[ClickWrite, bool | None] = Batcher(
            self._flush, max_batch, "click-writer", max_in_flight, max_pending
        )
        self._stream_keys = [keys.click_stream(self._stream_shard(n)) for n in range(MAX_SHARDS)]
        self.spool = spool
        self._write_timeout = write_timeout if spool is not None else None
        self._probe_seconds = probe_seconds
        self.degraded = False
        # Spool files (sealed ones of ours, or left by dead processes) waiting for replay.
        self._held: list[SpoolFile] = []
        self._replayer: asyncio.Task[None] | None = None
        self._closing = False
        self._replay_failing = False
        self.spooled = 0
        self.replayed = 0
        # Clicks stored but not confirmed by `wait_replicas` replicas in time (also spooled).
        self.unconfirmed = 0
        # Per node: when its replicas were counted, and how many it had.
        self._replicas_seen: dict[str, tuple[float, int]] = {}

    def shard_for(self, campaign_id: int, visitor_id: str, by_visitor: bool) -> int:
        """The shard of a new click: its visitor's on the campaign when the click's
        uniqueness is decided (the unique-click key must share the record's slot),
        else the next in turn, which spreads clicks evenly."""
        if by_visitor:
            return visitor_shard(campaign_id, visitor_id, self.shards)
        return next(self._next_shard)

    async def start(self) -> None:
        self.batcher.start()
        if self.spool is None:
            return
        await self.spool.start()
        orphans = await asyncio.to_thread(self.spool.claim_orphans)
        if orphans:
            log.info("replaying %d spool file(s) left by stopped processes", len(orphans))
            self._held.extend(orphans)
        self._replayer = asyncio.create_task(self._replay_loop(), name="click-replay")

    async def close(self) -> None:
        """Write what is queued; with Redis up, replay the spool so none is left behind."""
        await self.batcher.close()
        if self.spool is not None:
            await self._close_spool(self.spool)
        if self._hot is not None:
            await self._hot.close()

    async def _close_spool(self, spool: ClickSpool) -> None:
        if self._replayer is not None:
            self._closing = True  # a cancellation turned into another error still ends it
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        await spool.batcher.close()
        if self._held or spool.has_clicks:
            try:
                await asyncio.wait_for(self._ping_and_replay(), 5)
            except Exception as exc:
                log.warning("spooled clicks left for the next start: %r", exc)
        await spool.close()
        for spool_file in self._held:
            release(spool_file, remove=False)
        self._held.clear()

    async def _ping_and_replay(self) -> None:
        await self._redis.ping()
        await self._replay_held()

    async def write(
        self,
        click_id: str,
        record: bytes,
        ttl_seconds: int,
        unique_key: str | None = None,
        unique_ttl: int = 0,
        shard: int | None = None,
    ) -> bool | None:
        """Store one click; return once it is in Redis and on the stream, or in the spool.
        `record`: its JSON, best without null members (`stored_json`).
        `shard`: the one the id was made for, when the caller knows it.

        With `unique_key` and a `unique_ttl` above 0, the record's `is_unique` (its JSON
        must end in `null}`) is decided in the same round trip and returned; None when
        it was not (the click was spooled, and is decided when it is replayed).
        The record's TTL in Redis is `ttl_seconds` cut to the hot window."""
        ttl_seconds = self.redis_ttl(ttl_seconds)
        if shard is None:
            shard = click_shard(click_id)
        write = (click_id, record, ttl_seconds, unique_key, unique_ttl, shard)
        if not self.degraded or self.spool is None:
            try:
                return await self.batcher.submit(write, self._write_timeout)
            except Exception as exc:  # failed, timed out, queue full, or the writer is closed
                if self.spool is None:
                    raise ClickWriteError(repr(exc)) from exc
                self._degrade(exc)
        try:
            await self.spool.append(click_id, record, ttl_seconds, unique_key, unique_ttl)
        except Exception as exc:
            raise ClickWriteError(repr(exc)) from exc
        self.spooled += 1
        return None

    def redis_ttl(self, ttl_seconds: int) -> int:
        """How long a record meant to live `ttl_seconds` stays in Redis."""
        if self.hot_seconds is None:
            return ttl_seconds
        return min(ttl_seconds, self.hot_seconds)

    async def check_unique(
        self, unique_key: str, unique_ttl: int, click_id: str, shard: int | None = None
    ) -> bool | None:
        """Whether the visitor's click is unique, decided ahead of the write (for rules
        that read it); None when Redis does not answer in time. Like the store script,
        the key holds the deciding click's record key, so a call sent again decides the
        same."""
        mine = keys.click_key(click_id, shard)
        try:
            # A deadline, not a task around the call (as `wait_for` makes); on a single
            # Redis the command goes packed on the writer's own connections.
            async with asyncio.timeout(self._write_timeout):
                if self._hot is not None:
                    command = pack(b"SET", unique_key, mine, b"EX", unique_ttl, b"GET")
                    (seen,) = await self._hot.call(command)
                    if isinstance(seen, ResponseError):
                        return None
                else:
                    seen = await self._redis.set(unique_key, mine, ex=unique_ttl, get=True)
        except (RedisError, RedisClusterException, OSError, TimeoutError):
            return None
        return seen is None or seen == mine.encode()

    async def record_lander_click(
        self, record: dict[str, Any], attribution_seconds: int, now_ms: int
    ) -> None:
        """Store a click again as its visitor went on from the lander to `offer_id`.

        The record, with `lp_ms` last, replaces the one in Redis for the rest of its
        attribution window (at most the hot window from now: a click-through is a sign
        of a conversion to come) and goes on the stream, where the sink counts the
        click-through and moves the click to the offer reached. The first
        click-through's time is kept."""
        first = record.pop("lp_ms", None)
        record["lp_ms"] = first if first is not None else now_ms
        remaining = int(record["created_ms"]) // 1000 + attribution_seconds - now_ms // 1000
        # Without null members, as `stored_json` writes a new click.
        stored = {name: value for name, value in record.items() if value is not None}
        await self.write(str(record["click_id"]), orjson.dumps(stored), max(0, remaining))

    def _degrade(self, exc: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            assert self.spool is not None
            log.warning(
                "redis unavailable for clicks (%r); spooling them under %s until it answers",
                exc,
                self.spool.directory,
            )

    async def _flush(self, batch: list[ClickWrite]) -> list[bool | BaseException | None]:
        """Store a batch: one script call per shard (on a single Redis, one in all),
        concurrently; each click gets its own shard's result or error."""
        if not self._cluster:
            return cast(list[bool | BaseException | None], await self._store(batch))
        groups = self._by_slot(batch)

        async def store(indexes: list[int]) -> list[bool | None]:
            return await self._store([batch[i] for i in indexes])

        return await per_group(groups, len(batch), store)

    def _by_slot(self, writes: list[ClickWrite]) -> list[list[int]]:
        """Indexes of `writes` grouped by the shard of their keys (one group on a
        single Redis, where a call may hold keys of any shard)."""
        if not self._cluster:
            return [list(range(len(writes)))]
        groups: dict[int, list[int]] = {}
        for i, write in enumerate(writes):
            groups.setdefault(write[5], []).append(i)
        return list(groups.values())

    def _stream_shard(self, shard: int) -> int:
        # A click id made for more shards than are now in use (or before shards
        # existed) keeps its record's key; its entry goes to a stream the sink reads.
        return shard % self.shards

    async def _store(self, writes: list[ClickWrite]) -> list[bool | None]:
        """Store clicks whose keys share a slot (any clicks on a single Redis); return
        their `is_unique` as decided. With `wait_replicas`, a batch the replicas do not
        confirm in time is spooled too (without a spool, an error)."""
        if self._cluster:
            click_keys, args, strays = self._cluster_script_args(writes)
        else:
            click_keys, args = self._script_args(writes)
            strays = []
        flags, confirmed = await self._call(STORE_CLICKS_SCRIPT, click_keys, args, click_keys[1])
        decided = [_DECIDED.get(flag) for flag in flags]
        if strays:
            stream = self._stream_keys[writes[strays[0]][5]]
            records: list[bytes | int] = [_as_decided(writes[i][1], decided[i]) for i in strays]
            _, stray_confirmed = await self._call(ADD_TO_STREAM_SCRIPT, [stream], records, stream)
            confirmed = confirmed and stray_confirmed
        if not confirmed:
            self.unconfirmed += len(writes)
            if self.spool is None:
                raise ClickWriteError(
                    f"fewer than {self._wait_replicas} replica(s) confirmed the clicks"
                )
            # As decided: a replay must not decide the visitor's uniqueness again.
            await asyncio.gather(
                *(
                    self.spool.append(click_id, _as_decided(record, flag), ttl, written=True)
                    for (click_id, record, ttl, *_), flag in zip(writes, decided, strict=True)
                )
            )
            self.spooled += len(writes)
        return decided

    def _script_args(self, writes: list[ClickWrite]) -> tuple[list[str], list[bytes | int]]:
        """The store script's keys and arguments for clicks on a single Redis, where
        one call holds keys of any shard (see STORE_CLICKS_SCRIPT)."""
        stream_keys = self._stream_keys
        tags = keys.SHARD_TAGS
        click_keys: list[str] = []
        args: list[bytes | int] = []
        for click_id, record, ttl, unique_key, unique_ttl, shard in writes:
            key = f"{keys.CLICK_PREFIX}{tags[shard]}:{click_id}"
            if unique_key is not None and unique_ttl > 0:
                click_keys += (stream_keys[shard], key, unique_key or key)
                args += (ttl, record, unique_ttl, 1)
            else:
                click_keys += (stream_keys[shard], key, key)
                args += (ttl, record, WRITTEN if unique_ttl == WRITTEN else 0, 1)
        return click_keys, args

    def _cluster_script_args(
        self, writes: list[ClickWrite]
    ) -> tuple[list[str], list[bytes | int], list[int]]:
        """As `_script_args`, for clicks of one slot on a cluster: the unique-click key
        moved beside the record, and the positions of clicks whose stream is in
        another slot (added to it by a second call: "strays")."""
        click_keys: list[str] = []
        args: list[bytes | int] = []
        strays: list[int] = []
        for i, (click_id, record, ttl, unique_key, unique_ttl, shard) in enumerate(writes):
            stream_shard = self._stream_shard(shard)
            key = keys.click_key(click_id, shard)
            click_keys.append(self._stream_keys[shard])
            click_keys.append(key)
            unique = unique_key is not None and unique_ttl > 0
            if unique_key and unique:
                unique_key = _colocated(unique_key, shard)
            click_keys.append(unique_key if unique_key and unique else key)
            args.extend((ttl, record, unique_ttl if unique or unique_ttl == WRITTEN else 0))
            if stream_shard != shard:
                strays.append(i)
                click_keys[-3] = key
                args.append(0)
            else:
                args.append(1)
        return click_keys, args, strays

    async def _call(
        self, script: str, script_keys: list[str], args: list[bytes | int], node_key: str
    ) -> tuple[Any, bool]:
        """Run a script on the node of its keys; with `wait_replicas`, follow it with a
        WAIT on the same connection. Returns its reply and whether enough replicas hold
        the writes.

        A master with fewer replicas than `wait_replicas` (a replica promoted after its
        master died, until a new replica joins) waits for those it has: no failover can
        then lose its writes to a replica that lacks them, and clicks are not held up
        for replicas that do not exist. Its replica count is asked again each second."""
        registered = self._store_batch if script is STORE_CLICKS_SCRIPT else self._add_to_stream
        if self._hot is not None:
            return await self._call_single(script, registered.sha, script_keys, args)
        node: Any = None
        if self._wait_replicas and self._cluster:
            await self._redis.initialize()  # slots known (typed as Redis)
            node = self._redis.get_node_from_key(node_key)  # type: ignore[attr-defined]
        wanted = self._wanted_replicas(node)
        if not wanted:
            return await registered(keys=script_keys, args=args), True
        # WAIT counts the writes of its own connection: a pipeline keeps both on one.
        wait_args = ("WAIT", wanted, self._wait_timeout_ms)
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", registered.sha, len(script_keys), *script_keys, *args)
            if node is not None:
                pipe.execute_command(*wait_args, target_nodes=node)
            else:
                pipe.execute_command(*wait_args)
            try:
                reply, acknowledged = await pipe.execute()
                break
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(script)
        if int(acknowledged) >= wanted:
            return reply, True
        replicas = await self._count_replicas(node)
        return reply, int(acknowledged) >= min(wanted, replicas)

    async def _call_single(
        self, script: str, sha: str, script_keys: list[str], args: list[bytes | int]
    ) -> tuple[Any, bool]:
        """`_call` on a single Redis: EVALSHA (and WAIT) packed in one write on a
        connection of the writer's; the script's text only when Redis lacks it."""
        assert self._hot is not None
        wanted = self._wanted_replicas(None)
        wait = pack(b"WAIT", wanted, self._wait_timeout_ms) if wanted else b""
        command = pack(b"EVALSHA", sha, len(script_keys), *script_keys, *args)
        replies = await self._hot.call(command + wait, 2 if wanted else 1)
        if isinstance(replies[0], NoScriptError):  # Redis restarted or flushed its scripts
            command = pack(b"EVAL", script, len(script_keys), *script_keys, *args)
            replies = await self._hot.call(command + wait, 2 if wanted else 1)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        if not wanted:
            return replies[0], True
        acknowledged = int(replies[1])
        if acknowledged >= wanted:
            return replies[0], True
        return replies[0], acknowledged >= min(wanted, await self._count_replicas(None))

    def _wanted_replicas(self, node: Any) -> int:
        if not self._wait_replicas:
            return 0
        name = node.name if node is not None else ""
        seen = self._replicas_seen.get(name)
        if seen is not None and time.monotonic() - seen[0] < REPLICA_COUNT_SECONDS:
            return min(self._wait_replicas, seen[1])
        return self._wait_replicas

    async def _count_replicas(self, node: Any) -> int:
        """The replicas the master has now. On a cluster, every replica the cluster
        lists for `node` and has not marked failed: one that is syncing again (after a
        restart) is not connected yet but could still be promoted, so its master's
        writes are waited for (and spooled) meanwhile. On a single Redis, those ROLE
        shows connected."""
        if node is not None:
            run: Any = self._redis.execute_command  # typed as Redis
            me = await run("CLUSTER", "MYID", target_nodes=node)
            lines = await run("CLUSTER", "REPLICAS", me, target_nodes=node)
            count = sum(1 for line in lines if "fail" not in _text(line).split()[2].split(","))
        else:
            role: Any = await self._redis.execute_command("ROLE")  # type: ignore[no-untyped-call]
            count = len(role[2]) if role and role[0] in (b"master", "master") else 0
        self._replicas_seen[node.name if node is not None else ""] = (time.monotonic(), count)
        return count

    async def _replay_loop(self) -> None:
        assert self.spool is not None
        next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        while not self._closing:
            await asyncio.sleep(self._probe_seconds)
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
                self._held.extend(await asyncio.to_thread(self.spool.claim_orphans))
            if not (self.degraded or self._held or self.spool.has_clicks):
                continue
            try:
                await self._ping_and_replay()
            except Exception as exc:
                if not self._replay_failing:
                    self._replay_failing = True
                    log.warning("spooled clicks not replayed yet: %r", exc)
                continue
            self._replay_failing = False
            if self.degraded:
                # Clicks spooled since the file was sealed are replayed on the next round.
                self.degraded = False
                log.info("redis back; clicks go to redis again (%d replayed)", self.replayed)

    async def _replay_held(self) -> None:
        """Replay every held spool file, then our current one, oldest first; remove each."""
        assert self.spool is not None
        sealed = await self.spool.seal()
        if sealed is not None:
            self._held.append(sealed)
        while self._held:
            spool_file = self._held[0]
            await self._replay_file(spool_file)
            self._held.pop(0)
            await asyncio.to_thread(release, spool_file, True)

    async def _replay_file(self, spool_file: SpoolFile) -> None:
        chunks = read_clicks(spool_file)
        while (clicks := await asyncio.to_thread(next, chunks, None)) is not None:
            now = time.time()
            for start in range(0, len(clicks), REPLAY_BATCH):
                part = clicks[start : start + REPLAY_BATCH]
                writes: list[ClickWrite] = [
                    (
                        click.click_id,
                        click.record,
                        # Files spooled before a hot window was set still hold the full window.
                        self.redis_ttl(click.remaining_ttl(now)),
                        None if click.written else click.unique_key,
                        WRITTEN if click.written else click.unique_ttl if click.unique_key else 0,
                        click_shard(click.click_id),
                    )
                    for click in part
                ]
                groups = self._by_slot(writes)
                # Not confirmed by the replicas: spooled again as written, so that the
                # next replay neither decides uniqueness again nor overwrites the record.
                await asyncio.gather(
                    *(self._store([writes[i] for i in indexes]) for indexes in groups)
                )
                self.replayed += len(part)


class ClickReader(BatchedService):
    """Reads click records for concurrent postbacks with one MGET per batch.

    When Redis fails or takes longer than `timeout`, the click is read from
    Postgres instead, so postbacks still match clicks the sink has stored.
    """

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        max_batch: int = 500,
        timeout: float = 0.5,
        max_pending: int = 20000,
    ) -> None:
        self._redis = redis
        self._pool = pool
        self._timeout = timeout
        self._cluster = is_cluster(redis)
        # On a single Redis, each batch's MGET goes out packed on connections of its own.
        self._hot = None if self._cluster else HotCalls(redis)
        self.batcher: Batcher[str, bytes | None] = Batcher(
            self._flush, max_batch, "click-reader", 1, max_pending
        )

    async def close(self) -> None:
        await self.batcher.close()
        if self._hot is not None:
            await self._hot.close()

    async def _flush(self, click_keys: list[str]) -> list[bytes | BaseException | None]:
        """One MGET per batch; on a cluster one per shard, concurrently."""
        if self._hot is not None:
            (values,) = await self._hot.call(pack(b"MGET", *click_keys))
            if isinstance(values, ResponseError):
                raise values
            return cast(list[bytes | BaseException | None], values)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(click_keys):
            groups.setdefault(key.partition("}")[0], []).append(i)

        async def read(indexes: list[int]) -> list[Any]:
            found: list[Any] = await self._redis.mget([click_keys[i] for i in indexes])
            return found

        return await per_group(list(groups.values()), len(click_keys), read)

    async def fetch(self, click_id: str) -> dict[str, Any] | None:
        """The click record from Redis, or from Postgres once the Redis key is gone
        or Redis does not answer."""
        try:
            raw = await self.batcher.submit(keys.click_key(click_id), self._timeout)
        except (RedisError, RedisClusterException, OSError, BatchQueueFullError):  # and timeouts
            raw = None
        if raw is not None:
            record: dict[str, Any] = {**_ABSENT, **orjson.loads(raw)}
            return record
        row = await self._pool.fetchrow(SELECT_CLICK, click_id)
        return dict(row) if row is not None else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def click_writer_for(redis: Redis, settings: Settings) -> ClickWriter:
    """The web process's click writer, spooling to a file of its own under `spool_dir`."""
    spool = ClickSpool(settings.spool_dir, max_pending=settings.batch_max_pending)
    return ClickWriter(
        redis,
        spool,
        write_timeout=settings.click_write_timeout,
        probe_seconds=settings.spool_probe_seconds,
        max_pending=settings.batch_max_pending,
        hot_seconds=hot_window_seconds(settings),
        shards=settings.redis_shards,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )


def hot_window_seconds(settings: Settings) -> int:
    """The hot window in whole seconds (at least one)."""
    return max(1, round(settings.redis_click_ttl_hours * 3600))


def click_reader_for(redis: Redis, pool: asyncpg.Pool, settings: Settings) -> ClickReader:
    return ClickReader(
        redis, pool, timeout=settings.redis_timeout, max_pending=settings.batch_max_pending
    )
