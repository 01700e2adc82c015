from datetime import date
from decimal import Decimal

import pytest

from tracker.domain.fx import PIVOT, convert, rate_on

RATES = {
    "EUR": [(date(2024, 1, 1), Decimal("1.10")), (date(2024, 6, 1), Decimal("1.20"))],
    "GBP": [(date(2024, 1, 1), Decimal("1.25"))],
}


@pytest.mark.parametrize(
    ("currency", "day", "rate"),
    [
        ("EUR", date(2023, 12, 31), None),
        ("EUR", date(2024, 1, 1), Decimal("1.10")),
        ("EUR", date(2024, 5, 31), Decimal("1.10")),
        ("EUR", date(2024, 6, 1), Decimal("1.20")),
        ("EUR", date(9999, 12, 31), Decimal("1.20")),
        ("JPY", date(2024, 6, 1), None),
        (PIVOT, date(1, 1, 1), Decimal(1)),
    ],
)
def test_rate_in_force_on_a_day(currency, day, rate):
    assert rate_on(RATES, currency, day) == rate


@pytest.mark.parametrize(
    ("amount", "source", "target", "day", "expected"),
    [
        ("10", "EUR", "USD", date(2024, 2, 1), "11.000000"),
        ("10", "USD", "EUR", date(2024, 7, 1), "8.333333"),
        ("10", "EUR", "GBP", date(2024, 7, 1), "9.600000"),
        ("10", "EUR", "EUR", date(2020, 1, 1), "10"),
        ("10", "EUR", "USD", date(2020, 1, 1), None),
        ("10", "USD", "JPY", date(2024, 7, 1), None),
        ("0.0000005", "EUR", "USD", date(2024, 7, 1), "0.000001"),
    ],
)
def test_convert(amount, source, target, day, expected):
    result = convert(Decimal(amount), source, target, day, RATES)
    assert result == (None if expected is None else Decimal(expected))


def test_convert_never_raises_on_extreme_rates():
    rates = {"TINY": [(date(2000, 1, 1), Decimal("0.000000000001"))]}
    big = convert(Decimal("999999999999.999999"), "USD", "TINY", date(2024, 1, 1), rates)
    assert big == Decimal("999999999999999999000000")
