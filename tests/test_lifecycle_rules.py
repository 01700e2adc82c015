"""The pure status rules (tests/test_lifecycle.py drives them over HTTP)."""

from decimal import Decimal

import pytest

from tracker.domain.lifecycle import (
    ALLOWED,
    APPROVED,
    CHARGEBACK,
    LEAD,
    NO_CHANGE,
    PENDING,
    REJECTED,
    STATUSES,
    Change,
    UnknownStatus,
    decide_change,
    normalize_status,
)


@pytest.mark.parametrize(
    ("raw", "status_map", "expected"),
    [
        (None, {}, APPROVED),
        (" Approved ", {}, APPROVED),
        ("sale", {}, APPROVED),
        ("refund", {}, CHARGEBACK),
        ("1", {"1": "approved"}, APPROVED),
        ("confirmed", {"confirmed": "Sale"}, APPROVED),
        ("0", {"0": "lead"}, LEAD),
        ("pending", {"pending": "rejected"}, REJECTED),  # the network's word wins
    ],
)
def test_normalize_status(raw, status_map, expected):
    assert normalize_status(raw, status_map) == expected


@pytest.mark.parametrize("raw", ["", "ok", "approved\x00", "2"])
def test_unknown_status(raw):
    with pytest.raises(UnknownStatus):
        normalize_status(raw, {"1": "approved"})


def test_chargeback_is_final_and_nothing_returns_to_lead():
    assert ALLOWED[CHARGEBACK] == frozenset()
    assert all(LEAD not in targets for targets in ALLOWED.values())
    assert set(ALLOWED) == set(STATUSES)


@pytest.mark.parametrize(
    ("current", "incoming", "payout", "refunded", "expected"),
    [
        (LEAD, APPROVED, None, "0", Change(APPROVED, Decimal(0))),
        (PENDING, LEAD, None, "0", NO_CHANGE),
        (APPROVED, APPROVED, None, "0", NO_CHANGE),
        (REJECTED, APPROVED, None, "0", Change(APPROVED, Decimal(0))),
        (CHARGEBACK, APPROVED, None, "0", NO_CHANGE),
        (APPROVED, CHARGEBACK, None, "0", Change(CHARGEBACK, Decimal(0))),
        (APPROVED, CHARGEBACK, "-4", "0", Change(None, Decimal(4))),  # partial refund
        (APPROVED, CHARGEBACK, "4", "5", Change(None, Decimal(4))),
        (APPROVED, CHARGEBACK, "5", "5", Change(CHARGEBACK, Decimal(0))),  # the rest: full
        (APPROVED, CHARGEBACK, "-10", "0", Change(CHARGEBACK, Decimal(0))),
        (PENDING, CHARGEBACK, "-4", "0", NO_CHANGE),
    ],
)
def test_decide_change(current, incoming, payout, refunded, expected):
    amount = None if payout is None else Decimal(payout)
    assert decide_change(current, incoming, amount, Decimal(10), Decimal(refunded)) == expected
