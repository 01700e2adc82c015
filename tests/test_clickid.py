import time
from datetime import UTC, datetime, timedelta

import pytest

from tracker.domain.clickid import (
    CLICK_ID_LENGTH,
    MAX_SHARDS,
    click_id_time_ms,
    click_ms,
    click_shard,
    click_time,
    is_click_id,
    new_click_id,
    visitor_shard,
)


def test_shape():
    click_id = new_click_id()
    assert len(click_id) == CLICK_ID_LENGTH <= 32
    assert is_click_id(click_id)
    assert set(click_id) <= set("0123456789abcdefghijklmnopqrstuv")


def test_unique_over_100k():
    ids = {new_click_id() for _ in range(100_000)}
    assert len(ids) == 100_000


def test_time_prefix_round_trips_and_sorts():
    now = time.time_ns() // 1_000_000
    assert click_id_time_ms(new_click_id(now)) == now
    stamps = [now + delta for delta in (0, 1, 2, 1000, 86_400_000, 10**10)]
    ids = [new_click_id(stamp) for stamp in stamps]
    assert ids == sorted(ids)
    assert [click_id_time_ms(i) for i in ids] == stamps


def test_ids_made_later_sort_later():
    earlier = new_click_id()
    time.sleep(0.002)
    assert new_click_id() > earlier


def test_click_time_is_the_id_prefix_or_none():
    stamp = 1_764_460_800_123
    click_id = new_click_id(stamp)
    assert click_time(click_id) == datetime(2025, 11, 30, tzinfo=UTC) + timedelta(milliseconds=123)
    assert click_ms(click_id, 5) == stamp
    assert click_time("not-a-click") is None and click_ms("not-a-click", 5) == 5


def test_shard_round_trips_and_keeps_time_and_order():
    now = time.time_ns() // 1_000_000
    for shard in (0, 1, 7, 8, 255, 256, 511):
        click_id = new_click_id(now, shard)
        assert is_click_id(click_id)
        assert click_shard(click_id) == shard
        assert click_id_time_ms(click_id) == now
    assert new_click_id(now, 511) < new_click_id(now + 1, 0)


def test_shard_out_of_range_is_refused():
    for shard in (-1, MAX_SHARDS):
        with pytest.raises(ValueError):
            new_click_id(shard=shard)


def test_ids_without_a_shard_spread_over_all_and_other_text_has_a_stable_one():
    assert len({click_shard(new_click_id()) for _ in range(20_000)}) == MAX_SHARDS
    assert click_shard("not-a-click") == click_shard("not-a-click")
    assert 0 <= click_shard("not-a-click") < MAX_SHARDS


def test_visitor_shard_is_stable_and_spread():
    assert visitor_shard(5, "visitor", 8) == visitor_shard(5, "visitor", 8)
    assert {visitor_shard(5, f"v{i}", 8) for i in range(200)} == set(range(8))
    assert {visitor_shard(5, "v", 1)} == {0}


def test_ids_in_a_shard_are_the_base32hex_of_time_random_bits_and_shard():
    """Ids in a shard are built from whole characters; they read back as the same
    layout: 48 time bits, 87 random bits, the 9 shard bits, a zero pad bit."""
    stamps = [0, 1, 7, 8, 1_764_460_800_123, 2**48 - 1]
    for stamp in stamps:
        ids = {new_click_id(stamp, shard) for shard in range(MAX_SHARDS) for _ in range(2)}
        assert len(ids) == 2 * MAX_SHARDS
        for click_id in ids:
            assert is_click_id(click_id) and click_id_time_ms(click_id) == stamp
            n = int(click_id, 32)  # base32hex digits are base 32's
            assert n >> 97 == stamp and n & 1 == 0  # the time, and the zero pad bit
        assert sorted(click_shard(i) for i in ids) == sorted(list(range(MAX_SHARDS)) * 2)
    # Every random character position takes every value.
    ids = [new_click_id(1_764_460_800_123, 5) for _ in range(4000)]
    for position in range(10, 27):
        assert len({i[position] for i in ids}) == 32
    assert len({i[9] for i in ids}) == 4  # 3 time bits, 2 random ones
