import time
from datetime import UTC, datetime, timedelta

from tracker.domain.clickid import (
    CLICK_ID_LENGTH,
    click_id_time_ms,
    click_ms,
    click_time,
    is_click_id,
    new_click_id,
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
