"""The day, week and month blocks a long report reads: their signed sum covers exactly its
days, and no other cover reads fewer rows."""

import random
from collections import Counter
from datetime import date, timedelta

from tracker.domain.reports import BLOCK_ROWS, day_blocks

EVEN = {"day": 1.0, "week": 1.0, "month": 1.0}  # dense keys: a block is a block
WEEKS = {"day": 1.0, "week": 1.0}  # no months


def coverage(blocks: list[tuple[str, date, int]]) -> Counter[date]:
    days: Counter[date] = Counter()
    for grain, first, sign in blocks:
        if grain == "month":
            after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            length = (after - first).days
        else:
            length = 7 if grain == "week" else 1
        for i in range(length):
            days[first + timedelta(days=i)] += sign
    return days


def rows_read(blocks: list[tuple[str, date, int]], rows: dict[str, float]) -> float:
    return sum(rows[grain] for grain, _, _ in blocks)


def test_every_range_is_covered_exactly_by_the_fewest_rows():
    rng = random.Random(7)
    for n in range(600):
        first = date(2026, 1, 1) + timedelta(days=rng.randrange(700))
        length = rng.randrange(0, 200)
        end = first + timedelta(days=length)
        week = rng.uniform(0.5, 7)
        rows = (BLOCK_ROWS, EVEN, {"day": 1.0, "week": week, "month": week * rng.uniform(1, 5)})[
            n % 3
        ]
        blocks = day_blocks(first, end, rows)
        wanted = {first + timedelta(days=i) for i in range(length)}
        days = coverage(blocks)
        assert {d for d, k in days.items() if k} == wanted, (first, end, blocks)
        assert all(days[d] == 1 for d in wanted)
        assert all(b[1].isoweekday() == 1 for b in blocks if b[0] == "week")
        assert all(b[1].day == 1 for b in blocks if b[0] == "month")
        # No more rows than the days alone, or than days and weeks alone.
        assert rows_read(blocks, rows) <= length * rows["day"] + 1e-9
        weeks_only = day_blocks(first, end, {"day": rows["day"], "week": rows["week"]})
        assert not any(b[0] == "month" for b in weeks_only)
        assert rows_read(blocks, rows) <= rows_read(weeks_only, rows) + 1e-9
        if rows is EVEN:  # equal rows: the fewest blocks (a month or a week saves blocks)
            assert len(blocks) <= min(length, length // 7 + 7)


def test_known_ranges():
    # The last 30 days to a Monday, without months: two days, then four whole weeks.
    assert day_blocks(date(2026, 10, 31), date(2026, 11, 30), WEEKS) == [
        ("day", date(2026, 10, 31), 1),
        ("day", date(2026, 11, 1), 1),
        *(("week", date(2026, 11, 2) + timedelta(days=7 * i), 1) for i in range(4)),
    ]
    # With months: the day before, November, and its last day taken away.
    for rows in (EVEN, BLOCK_ROWS):
        assert day_blocks(date(2026, 10, 31), date(2026, 11, 30), rows) == [
            ("day", date(2026, 10, 31), 1),
            ("month", date(2026, 11, 1), 1),
            ("day", date(2026, 11, 30), -1),
        ]
    # Sparse keys (a month holds 30 days' rows): the weeks again.
    sparse = {"day": 1.0, "week": 7.0, "month": 30.0}
    assert day_blocks(date(2026, 10, 31), date(2026, 11, 30), sparse) == day_blocks(
        date(2026, 10, 31), date(2026, 11, 30), WEEKS
    )
    # A quarter is three months; across a year's end too.
    assert day_blocks(date(2026, 11, 1), date(2027, 2, 1), EVEN) == [
        ("month", date(2026, 11, 1), 1),
        ("month", date(2026, 12, 1), 1),
        ("month", date(2027, 1, 1), 1),
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
