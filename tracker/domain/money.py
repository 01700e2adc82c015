"""Exact money: decimal strings in, `Decimal` everywhere, decimal strings out."""

from decimal import Decimal, InvalidOperation

MAX_DECIMALS = 6
PAYOUT_DECIMALS = 4
MAX_ABS = Decimal("1e12")
_CURRENCY_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class MoneyError(ValueError):
    pass


def parse_money(raw: str | int | Decimal, max_decimals: int = MAX_DECIMALS) -> Decimal:
    """Parse an amount such as "12.50"; raise `MoneyError` for anything else.

    Floats are refused on purpose: they cannot carry cents exactly.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
        raise MoneyError("must be a decimal number given as a string")
    try:
        value = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(raw)
    except InvalidOperation:
        raise MoneyError(f"{str(raw)[:40]!r} is not a decimal number") from None
    if not value.is_finite():
        raise MoneyError("must be a finite number")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -max_decimals:
        raise MoneyError(f"at most {max_decimals} decimal places")
    if abs(value) >= MAX_ABS:
        raise MoneyError("amount too large")
    return value


def parse_money_or_none(raw: str | None) -> Decimal | None:
    """Lenient form for click parameters: bad input gives None, never an error."""
    if not raw:
        return None
    try:
        return parse_money(raw)
    except MoneyError:
        return None


def parse_currency(raw: str) -> str:
    code = raw.strip().upper()
    if len(code) != 3 or not set(code) <= _CURRENCY_LETTERS:
        raise MoneyError(f"{raw[:20]!r} is not an ISO 4217 currency code")
    return code


def format_money(value: Decimal) -> str:
    """Render an amount with at least two decimals and no trailing noise."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"
