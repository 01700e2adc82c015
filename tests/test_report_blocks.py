"""The day and week blocks a long report reads: their signed sum covers exactly its days."""

import random
from collections import Counter
from datetime import date, timedelta

from tracker.domain.reports import day_blocks


def coverage(blocks: list[tuple[str, date, int]]) -> Counter[date]:
    days: Counter[date] = Counter()
    for grain, first, sign in blocks:
        for i in range(7 if grain == "week" else 1):
            days[first + timedelta(days=i)] += sign
    return days


def test_every_range_is_covered_exactly_by_few_blocks():
    rng = random.Random(7)
    for _ in range(400):
        first = date(2026, 1, 1) + timedelta(days=rng.randrange(400))
        length = rng.randrange(0, 120)
        end = first + timedelta(days=length)
        blocks = day_blocks(first, end)
        wanted = {first + timedelta(days=i) for i in range(length)}
        days = coverage(blocks)
        assert {d for d, n in days.items() if n} == wanted, (first, end, blocks)
        assert all(days[d] == 1 for d in wanted)
        assert all(b[1].isoweekday() == 1 for b in blocks if b[0] == "week")
        assert len(blocks) <= min(length, length // 7 + 7)


def test_known_ranges():
    # The last 30 days to a Monday: two days, then four whole weeks.
    assert day_blocks(date(2026, 10, 31), date(2026, 11, 30)) == [
        ("day", date(2026, 10, 31), 1),
        ("day", date(2026, 11, 1), 1),
        *(("week", date(2026, 11, 2) + timedelta(days=7 * i), 1) for i in range(4)),
    ]
    # Monday to Sunday is one week; a day is a day; nothing is nothing.
    assert day_blocks(date(2026, 11, 2), date(2026, 11, 9)) == [("week", date(2026, 11, 2), 1)]
    assert day_blocks(date(2026, 11, 3), date(2026, 11, 4)) == [("day", date(2026, 11, 3), 1)]
    assert day_blocks(date(2026, 11, 4), date(2026, 11, 4)) == []
    # Tuesday to Sunday: the week with its Monday taken away.
    assert day_blocks(date(2026, 11, 3), date(2026, 11, 9)) == [
        ("day", date(2026, 11, 2), -1),
        ("week", date(2026, 11, 2), 1),
    ]
