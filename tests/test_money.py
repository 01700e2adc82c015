from datetime import date
from decimal import Decimal

import pytest

from tracker.domain.fx import convert
from tracker.domain.money import (
    ISO_4217,
    MoneyError,
    fits_amount_column,
    format_money,
    parse_currency,
    parse_money,
    payout_refusal,
)


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "",
        " ",
        "1e999",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "-Infinity",
        "0x10",
        "1_000",
        "+1",
        "1 000",
        "1 .5",
        "1.",
        ".5",
        "--1",
        "1.2.3",
        "\u0661\u0662\u0663",  # Arabic-Indic digits
        "\uff11\uff12\uff13",  # fullwidth digits
        "12\x00",
        "1.1234567",
        "10.0000001",
        "1" * 13,
        "9" * 100,
        1.5,
        True,
        None,
        [],
        Decimal("NaN"),
        Decimal("Infinity"),
    ],
)
def test_bad_amounts_are_refused(raw):
    with pytest.raises(MoneyError):
        parse_money(raw)


@pytest.mark.parametrize(
    ("raw", "places", "expected"),
    [
        ("12.50", 6, "12.50"),
        (" 0.1 ", 6, "0.1"),
        ("-3", 6, "-3"),
        ("-0", 6, "0"),
        ("-0.00", 4, "0.00"),
        ("007", 6, "7"),
        ("10.00000", 4, "10.0000"),
        ("10.0000000000", 4, "10.0000"),
        ("999999999999.999999", 6, "999999999999.999999"),
        (42, 6, "42"),
        (Decimal("1.5"), 6, "1.5"),
    ],
)
def test_good_amounts(raw, places, expected):
    value = parse_money(raw, places)
    assert value == Decimal(expected)
    assert str(value) == expected


def test_exactness_over_trailing_zeros():
    with pytest.raises(MoneyError, match="at most 4 decimal places"):
        parse_money("10.00001", 4)
    assert parse_money("10.00000", 4) == Decimal(10)


def test_amounts_are_exact():
    assert parse_money(" 0.1 ") + parse_money("0.2") == Decimal("0.3")
    assert format_money(Decimal("12.5")) == "12.50"
    assert format_money(Decimal("0.123400")) == "0.1234"
    assert format_money(Decimal("1E+3")) == "1000.00"


@pytest.mark.parametrize(("raw", "code"), [("eur", "EUR"), (" usd ", "USD"), ("JPY", "JPY")])
def test_currency_codes(raw, code):
    assert parse_currency(raw) == code


@pytest.mark.parametrize("raw", ["EURO", "XYZ", "ABC", "XXX", "XTS", "", "E U", "€", 978, None])
def test_unknown_currency_codes_are_refused(raw):
    with pytest.raises(MoneyError):
        parse_currency(raw)


def test_currency_list_is_iso_shaped():
    assert len(ISO_4217) > 150
    assert all(len(code) == 3 and code.isascii() and code.isupper() for code in ISO_4217)
    assert {"USD", "EUR", "GBP", "JPY", "CHF", "XAU"} <= ISO_4217


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        (Decimal("999999999999.999999"), True),
        (Decimal("-999999999999.999999"), True),
        (Decimal("1000000000000"), False),
        (Decimal("999999999999.9999996"), False),
        (Decimal("0"), True),
    ],
)
def test_amount_column_bounds(value, fits):
    assert fits_amount_column(value) is fits


def test_payout_rules():
    one = Decimal(1)
    assert payout_refusal(one, False, one, one) is None
    assert payout_refusal(None, False, Decimal(-1), None) is None  # the offer's own payout
    assert "negative payout" in (payout_refusal(-one, False, -one, -one) or "")
    assert payout_refusal(-one, True, -one, -one) is None
    huge = Decimal("99999999.9999") * Decimal("1e6")
    assert "converted" in (payout_refusal(one, False, one, huge) or "")
    assert payout_refusal(one, False, one, None) is None  # waiting for a rate


def test_conversion_of_extreme_amounts_does_not_raise():
    rates = {
        "AAA": [(date(2020, 1, 1), Decimal("1e-12"))],
        "BBB": [(date(2020, 1, 1), Decimal("999999999999"))],
    }
    amount = convert(Decimal("999999999999.9999"), "BBB", "AAA", date(2024, 1, 1), rates)
    assert amount is not None and not fits_amount_column(amount)
