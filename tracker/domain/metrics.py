"""Report metrics derived from counts and sums; pure arithmetic on `Decimal`."""

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from tracker.domain.money import format_money

_HUNDRED = Decimal(100)
_RATIO = Decimal("0.0001")
_PERCENT = Decimal("0.01")


def _ratio(numerator: Decimal, denominator: Decimal | int, places: Decimal) -> str | None:
    if not denominator:
        return None
    return str((numerator / Decimal(denominator)).quantize(places, ROUND_HALF_UP))


def derive(clicks: int, conversions: int, revenue: Decimal, cost: Decimal) -> dict[str, Any]:
    """The metrics a media buyer reads for one report row.

    roi and cr are percentages; epc, cpc and cpa are money per click or conversion.
    A metric whose denominator is zero is null rather than a made-up zero.
    """
    profit = revenue - cost
    return {
        "clicks": clicks,
        "conversions": conversions,
        "revenue": format_money(revenue),
        "cost": format_money(cost),
        "profit": format_money(profit),
        "roi": _ratio(profit * _HUNDRED, cost, _PERCENT),
        "cr": _ratio(Decimal(conversions) * _HUNDRED, clicks, _PERCENT),
        "epc": _ratio(revenue, clicks, _RATIO),
        "cpc": _ratio(cost, clicks, _RATIO),
        "cpa": _ratio(cost, conversions, _RATIO),
    }
