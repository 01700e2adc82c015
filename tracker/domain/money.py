"""Exact money: decimal strings in, `Decimal` everywhere, decimal strings out.

The grammar of an amount is plain ASCII: an optional leading "-", digits, and
optionally "." followed by digits (surrounding spaces are ignored). Anything
else -- "+", exponents, "_" separators, non-ASCII digits, NaN, Infinity, hex,
spaces inside -- is refused, because each of them is a way for two systems to
read one text as two different amounts.
"""

import re
from decimal import Decimal, InvalidOperation

MAX_DECIMALS = 6
PAYOUT_DECIMALS = 4
MAX_ABS = Decimal("1e12")
# NUMERIC(18, 6), the type of every amount column, holds magnitudes below 10^12.
COLUMN_LIMIT = Decimal("1e12")
# What rounds (to 6 places) to below COLUMN_LIMIT; worked out once, not per amount.
_LARGEST_ROUNDED = COLUMN_LIMIT - Decimal("0.0000005")
_MAX_TEXT = 64
_AMOUNT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_SPACES = " \t\r\n"

# ISO 4217 codes in use, funds and precious metals included; the codes reserved
# for testing and for "no currency" are left out on purpose. Withdrawn codes that
# networks still send during a changeover (SLL, ZWL, ANG) are kept.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV
    BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE
    CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD
    HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD
    KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV
    MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
    RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF
    XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW ZWG ZWL
    """.split()
)


class MoneyError(ValueError):
    """An amount or currency code that cannot be taken; the message says why."""


def parse_money(raw: str | int | Decimal, max_decimals: int = MAX_DECIMALS) -> Decimal:
    """Parse an amount such as "12.50"; raise `MoneyError` for anything else.

    Trailing zeros past `max_decimals` are accepted when the value stays exact
    ("10.00000" with 4 places), refused when they are not ("10.00001").
    Floats are refused on purpose: they cannot carry cents exactly.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
        raise MoneyError("must be a decimal number given as a string")
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            raise MoneyError("must be a finite number")
        value = raw
    else:
        text = raw.strip(_SPACES) if isinstance(raw, str) else str(raw)
        if len(text) > _MAX_TEXT or not _AMOUNT.fullmatch(text):
            raise MoneyError(
                f"{text[:40]!r} is not a plain decimal number (digits, an optional "
                "leading '-' and an optional '.' with digits)"
            )
        value = Decimal(text)
    if abs(value) >= MAX_ABS:
        raise MoneyError("amount too large")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -max_decimals:
        places = Decimal(1).scaleb(-max_decimals)
        try:
            exact = value.quantize(places)
        except InvalidOperation:  # pragma: no cover - bounded by MAX_ABS above
            raise MoneyError("amount too large") from None
        if exact != value:
            raise MoneyError(f"at most {max_decimals} decimal places")
        value = exact
    # "-0" is zero; without this a refund check would see a negative sign.
    return value + 0 if value.is_zero() else value


def parse_money_or_none(raw: str | None) -> Decimal | None:
    """Lenient form for click parameters: bad input gives None, never an error."""
    if not raw:
        return None
    try:
        return parse_money(raw)
    except MoneyError:
        return None


def parse_currency(raw: object) -> str:
    """An active ISO 4217 code, upper-cased; `MoneyError` for anything else."""
    if not isinstance(raw, str):
        raise MoneyError("must be a three-letter ISO 4217 currency code")
    code = raw.strip(_SPACES).upper()
    if code not in ISO_4217:
        raise MoneyError(f"{raw[:20]!r} is not an ISO 4217 currency code")
    return code


def format_money(value: Decimal) -> str:
    """Render an amount with at least two decimals and no trailing noise."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


def fits_amount_column(value: Decimal) -> bool:
    """True when `value`, rounded to 6 places, fits a NUMERIC(18, 6) column."""
    return value.is_finite() and abs(value) < _LARGEST_ROUNDED


def payout_refusal(
    given: Decimal | None, is_refund: bool, original: Decimal, converted: Decimal | None
) -> str | None:
    """Why a postback's payout cannot be recorded, or None when it can.

    A negative payout is only meaningful as a refund (a parent txid, or a
    chargeback/refund status). `original` and its conversion into the report
    currency must both fit the amount columns.
    """
    if given is not None and given < 0 and not is_refund:
        return "a negative payout needs parent_txid or a chargeback/refund status"
    if not fits_amount_column(original):
        return "payout too large"
    if converted is not None and not fits_amount_column(converted):
        return "payout too large once converted into the report currency"
    return None
