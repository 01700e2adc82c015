from decimal import Decimal

import pytest

from tracker.domain.metrics import derive
from tracker.domain.money import MoneyError, format_money, parse_currency, parse_money


@pytest.mark.parametrize("raw", ["abc", "", "1e999", "NaN", "inf", "1.1234567", 1.5, True])
def test_bad_amounts_are_refused(raw):
    with pytest.raises(MoneyError):
        parse_money(raw)


def test_amounts_are_exact():
    assert parse_money(" 0.1 ") + parse_money("0.2") == Decimal("0.3")
    assert format_money(Decimal("12.5")) == "12.50"
    assert format_money(Decimal("0.123400")) == "0.1234"
    assert format_money(Decimal("1E+3")) == "1000.00"


def test_currency_codes():
    assert parse_currency("eur") == "EUR"
    with pytest.raises(MoneyError):
        parse_currency("EURO")


def test_metrics_with_zero_denominators_are_null():
    row = derive(0, 0, Decimal(0), Decimal(0))
    assert row["roi"] is None and row["cr"] is None and row["epc"] is None
    assert row["profit"] == "0.00"
