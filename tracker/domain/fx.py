"""Currency conversion with dated rates, each quoted against one pivot currency."""

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

PIVOT = "USD"
_PLACES = Decimal("0.000001")

# currency -> [(valid_from, units of PIVOT for one unit of currency)], sorted by date
RateTable = Mapping[str, Sequence[tuple[date, Decimal]]]


def rate_on(rates: RateTable, currency: str, day: date) -> Decimal | None:
    if currency == PIVOT:
        return Decimal(1)
    history = rates.get(currency)
    if not history:
        return None
    i = bisect_right([valid_from for valid_from, _ in history], day)
    return history[i - 1][1] if i else None


def convert(
    amount: Decimal, source: str, target: str, day: date, rates: RateTable
) -> Decimal | None:
    """`amount` in `source` expressed in `target` with the rates in force on `day`;
    None when a rate is missing."""
    if source == target:
        return amount
    from_rate = rate_on(rates, source, day)
    to_rate = rate_on(rates, target, day)
    if from_rate is None or to_rate is None:
        return None
    # Wide enough for any amount and rate the columns hold, so that an absurd
    # result is a number the caller can refuse, not an InvalidOperation.
    with localcontext() as ctx:
        ctx.prec = 80
        return (amount * from_rate / to_rate).quantize(_PLACES, ROUND_HALF_EVEN)
