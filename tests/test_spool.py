"""The click spool: order, exact records, TTL on replay, file locks, torn last lines."""

import asyncio
import fcntl
import os
import signal
import time

import orjson
import pytest

from tests.conftest import click_entries
from tracker.devstack import RedisServer, free_port
from tracker.domain.clickid import new_click_id
from tracker.store import keys
from tracker.store.batching import Batcher, BatchQueueFullError
from tracker.store.clicks import ClickWriter
from tracker.store.redis import create_redis
from tracker.store.spool import ClickSpool, encode_click, read_clicks, release


def record(click_id):
    return orjson.dumps({"click_id": click_id, "created_ms": 1, "cost": "0.10", "sub1": 'é,"r":'})


async def replay_orphans(redis, directory, path):
    """Start a click writer, which replays the spool files left in `directory`; stop it
    once `path` is replayed and removed."""
    writer = ClickWriter(redis, ClickSpool(directory), probe_seconds=0.05)
    await writer.start()
    try:
        deadline = time.monotonic() + 10
        while path.exists():
            assert time.monotonic() < deadline, "orphan spool file was not replayed"
            await asyncio.sleep(0.05)
    finally:
        await writer.close()
    return writer


def all_clicks(spool_file):
    return [click for chunk in read_clicks(spool_file, chunk=64) for click in chunk]


async def test_appends_come_back_in_order_with_exact_records(tmp_path):
    spool = ClickSpool(tmp_path)
    await spool.start()
    try:
        await asyncio.gather(*(spool.append(f"c{i}", record(f"c{i}"), 3600) for i in range(50)))
        sealed = await spool.seal()
        assert sealed is not None and await spool.seal() is None
        await spool.append("later", record("later"), 60)  # goes to a new file
        clicks = all_clicks(sealed)
        assert [c.click_id for c in clicks] == [f"c{i}" for i in range(50)]
        assert all(c.record == record(c.click_id) for c in clicks)
        assert 3590 <= clicks[0].remaining_ttl(time.time()) <= 3600
        assert spool.batcher.batches < 50  # one write and fsync per batch
        release(sealed, remove=True)
        assert not sealed.path.exists()
    finally:
        await spool.close()
    # The unreplayed later click stays on disk for the next process.
    [left] = list(tmp_path.glob("clicks-*.jsonl"))
    assert b'"id":"later"' in left.read_bytes()


def test_torn_last_line_is_skipped_and_earlier_lines_kept(tmp_path):
    now = time.time()
    lines = [encode_click(f"c{i}", record(f"c{i}"), 60, now) for i in range(3)]
    path = tmp_path / "clicks-dead-1-1-1.jsonl"
    # A broken line in the middle (a write cut short) and a torn last line (a crash).
    path.write_bytes(lines[0] + b'{"id":"x","ex\n' + lines[1] + lines[2][:-9])
    [orphan] = ClickSpool(tmp_path).claim_orphans()
    try:
        assert [c.click_id for c in all_clicks(orphan)] == ["c0", "c1"]
    finally:
        release(orphan, remove=False)


def test_files_locked_by_a_live_process_are_left_alone(tmp_path):
    path = tmp_path / "clicks-live-1-1-1.jsonl"
    path.write_bytes(encode_click("c1", record("c1"), 60, time.time()))
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    spool = ClickSpool(tmp_path)
    assert spool.claim_orphans() == []
    os.close(holder)  # the process died
    [claimed] = spool.claim_orphans()
    # Another process looking now finds it locked by us.
    assert ClickSpool(tmp_path).claim_orphans() == []
    release(claimed, remove=True)
    assert spool.claim_orphans() == []


async def test_orphans_replay_with_remaining_ttl_and_expired_ones_only_on_stream(tmp_path, redis):
    now = time.time()
    path = tmp_path / "clicks-dead-1-1-1.jsonl"
    path.write_bytes(
        encode_click("fresh", record("fresh"), 1000, now - 400)
        + encode_click("expired", record("expired"), 10, now - 400)
    )
    writer = await replay_orphans(redis, tmp_path, path)
    assert 590 <= await redis.ttl(keys.click_key("fresh")) <= 600
    assert not await redis.exists(keys.click_key("expired"))
    stream = [orjson.loads(f[b"d"])["click_id"] for _, f in await click_entries(redis)]
    assert stream == ["fresh", "expired"]
    assert writer.replayed == 2


async def test_full_queue_refuses_at_once():
    release_flush = asyncio.Event()

    async def slow_flush(items):
        await release_flush.wait()
        return [None] * len(items)

    batcher = Batcher(slow_flush, 10, "slow", max_pending=2)
    batcher.start()
    first = asyncio.create_task(batcher.submit(1))  # in flight
    await asyncio.sleep(0.01)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    with pytest.raises(BatchQueueFullError):
        await batcher.submit(4)
    release_flush.set()
    await asyncio.gather(first, *queued)
    await batcher.close()


async def test_uniqueness_of_spooled_clicks_is_decided_on_replay(tmp_path, redis):
    """A click spooled while Redis was down carries its visitor's key to the replay."""
    now = time.time()
    undecided = orjson.dumps({"click_id": "a", "is_unique": None})
    path = tmp_path / "clicks-dead-1-1-1.jsonl"
    path.write_bytes(
        encode_click("a", undecided, 600, now, "uv:1:visitor", 3600)
        + encode_click("b", undecided.replace(b'"a"', b'"b"'), 600, now, "uv:1:visitor", 3600)
        + encode_click("c", orjson.dumps({"click_id": "c", "is_unique": True}), 600, now)
    )
    await replay_orphans(redis, tmp_path, path)
    stream = [orjson.loads(f[b"d"]) for _, f in await click_entries(redis)]
    # Replayed in order (each click on the stream of its shard).
    assert sorted((r["click_id"], r["is_unique"]) for r in stream) == [
        ("a", True),
        ("b", False),
        ("c", True),
    ]
    assert orjson.loads(await redis.get(keys.click_key("b")))["is_unique"] is False
    assert 3590 <= await redis.ttl("uv:1:visitor") <= 3600


async def test_a_written_click_spooled_for_its_replicas_is_written_again_only_if_lost(
    tmp_path, redis
):
    """A click stored in Redis but spooled because too few replicas confirmed it: the
    replay leaves a record that is there (maybe newer: a lander click-through) and adds
    no second stream entry; a record a failover lost is written again, with its entry."""
    now = time.time()
    kept, lost = new_click_id(), new_click_id()
    spooled = {
        i: orjson.dumps({"click_id": i, "offer_id": 1, "is_unique": True}) for i in (kept, lost)
    }
    await redis.set(keys.click_key(kept), b'{"click_id":"newer","offer_id":2}')
    path = tmp_path / "clicks-dead-1-1-1.jsonl"
    path.write_bytes(
        b"".join(encode_click(i, r, 600, now, written=True) for i, r in spooled.items())
    )
    await replay_orphans(redis, tmp_path, path)
    assert await redis.get(keys.click_key(kept)) == b'{"click_id":"newer","offer_id":2}'
    assert await redis.get(keys.click_key(lost)) == spooled[lost]
    assert 590 <= await redis.ttl(keys.click_key(lost)) <= 600
    assert [orjson.loads(f[b"d"])["click_id"] for _, f in await click_entries(redis)] == [lost]


@pytest.mark.faults
async def test_a_uniqueness_check_on_a_frozen_redis_gives_up_in_time(tmp_path):
    """Undecided (None) within the write timeout while Redis is frozen, and decided again
    once it thaws: the connection that timed out is not reused half-read."""
    server = RedisServer(tmp_path / "redis", free_port(), persistent=False)
    server.start()
    redis = create_redis(server.url(), timeout=5.0)
    # With a spool, as the web app runs it: a click waits for Redis only so long.
    writer = ClickWriter(redis, ClickSpool(tmp_path / "spool"), write_timeout=0.25)
    await writer.start()
    try:
        first = new_click_id()
        assert await writer.check_unique("uv:1:f", 60, first) is True
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = await asyncio.gather(
                *(writer.check_unique("uv:1:f", 60, new_click_id()) for _ in range(5))
            )
            waited = time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        print(f"frozen redis: {frozen} after {waited:.2f} s")
        assert frozen == [None] * 5 and waited < 2.0
        # Thawed: decided again (the checks sent while frozen ran on the thaw, and each
        # set the key, as any later click of the visitor does).
        again = new_click_id()
        assert await writer.check_unique("uv:1:f", 60, again) is False
        assert await writer.check_unique("uv:1:g", 60, again) is True
    finally:
        await writer.close()
        await redis.aclose()
        server.stop()


async def test_a_click_stored_twice_keeps_its_first_uniqueness(redis):
    """The same click stored again (a call sent again after a timeout, or replayed) is
    decided as the first time; another click of the visitor is a repeat."""
    writer = ClickWriter(redis)
    await writer.start()
    try:
        first, second = new_click_id(), new_click_id()
        record = b'{"is_unique":null}'
        assert await writer.write(first, record, 60, "uv:1:v", 60) is True
        assert await writer.write(first, record, 60, "uv:1:v", 60) is True
        assert await writer.write(second, record, 60, "uv:1:v", 60) is False
        # Decided ahead of the write (for rules that read it), the same way.
        third = new_click_id()
        assert await writer.check_unique("uv:1:w", 60, third) is True
        assert await writer.check_unique("uv:1:w", 60, third) is True
        assert await writer.check_unique("uv:1:w", 60, new_click_id()) is False
    finally:
        await writer.close()
