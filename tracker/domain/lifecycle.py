"""Conversion statuses, how networks' words map onto them, and the allowed changes."""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

LEAD, PENDING, APPROVED, REJECTED, CHARGEBACK = (
    "lead",
    "pending",
    "approved",
    "rejected",
    "chargeback",
)
STATUSES = (LEAD, PENDING, APPROVED, REJECTED, CHARGEBACK)
SYNONYMS = {"sale": APPROVED, "refund": CHARGEBACK}

ALLOWED: dict[str, frozenset[str]] = {
    LEAD: frozenset({PENDING, APPROVED, REJECTED}),
    PENDING: frozenset({APPROVED, REJECTED}),
    APPROVED: frozenset({REJECTED, CHARGEBACK}),
    # A network may re-approve what it rejected; a chargeback is final.
    REJECTED: frozenset({APPROVED}),
    CHARGEBACK: frozenset(),
}


class UnknownStatus(ValueError):
    """A status word that neither the network's map nor ours knows."""


def normalize_status(raw: str | None, status_map: Mapping[str, str]) -> str:
    """The lifecycle status for what a network sent: its own mapping first, then ours."""
    if raw is None:
        return APPROVED
    value = raw.strip().lower()
    mapped = status_map.get(value, value).strip().lower()
    mapped = SYNONYMS.get(mapped, mapped)
    if mapped not in STATUSES:
        raise UnknownStatus(
            f"unknown status {raw[:40]!r}: use one of {', '.join(STATUSES)} "
            "or map it in the network's status_map"
        )
    return mapped


@dataclass(frozen=True, slots=True)
class Change:
    """What a postback does to an existing conversion."""

    new_status: str | None  # None: the status stays
    refund: Decimal  # amount taken back from revenue, in the conversion's currency


NO_CHANGE = Change(None, Decimal(0))


def decide_change(
    current: str, incoming: str, payout: Decimal | None, original: Decimal, refunded: Decimal
) -> Change:
    """The effect of a postback with status `incoming` on a conversion in status `current`.

    A chargeback carrying a payout smaller than what is left of the original is a
    partial refund: revenue drops by that amount and the conversion stays approved.
    """
    if current == APPROVED and incoming == CHARGEBACK and payout is not None:
        remaining = original - refunded
        if Decimal(0) < abs(payout) < remaining:
            return Change(None, abs(payout))
    if incoming == current or incoming not in ALLOWED[current]:
        return NO_CHANGE
    return Change(incoming, Decimal(0))


# Names under which a network may send a refund's own identifier.
REFUND_ID_PARAMS = ("refund_id", "refundid", "refund_txid", "chargeback_id")
REFUND_ID_MAX_LENGTH = 128


def normalized_amount(amount: Decimal) -> str:
    """An amount as one spelling: `5`, `5.0` and `-5.00` are all `5`."""
    return format(abs(amount).normalize(), "f")


def refund_key(
    params: Mapping[str, str], own_txid: str | None, amount: Decimal, currency: str, txid: str
) -> str:
    """The identity of one refund, so that a retried refund is applied once and two
    genuine refunds twice.

    In order: the refund id the network sent (`refund_id` or an alias); else the
    refund postback's own txid (a refund by `parent_txid`); else the amount as sent,
    normalised, with its currency and the txid of the postback.
    """
    for name in REFUND_ID_PARAMS:
        given = params.get(name, "").strip()
        if given:
            return "id:" + given[:REFUND_ID_MAX_LENGTH]
    if own_txid:
        return "txid:" + own_txid
    return f"amount:{currency}:{normalized_amount(amount)}:{txid}"
