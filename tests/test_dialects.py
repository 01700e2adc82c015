import pytest

from tracker.domain.dialects import ALIASES, DialectConflict, canonical_params


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"clickid": "c"}, {"clickid": "c"}),
        ({"cid": "c", "amount": "1", "tid": "t"}, {"clickid": "c", "payout": "1", "txid": "t"}),
        ({"subid": "c", "click_id": "c"}, {"clickid": "c"}),  # same value twice is fine
        ({"clickid": "", "cid": "c"}, {"clickid": "c"}),  # an unfilled macro is absent
        ({"payout": "", "currency": ""}, {}),
        ({"cnv_status": "sale", "cnv_currency": "eur"}, {"status": "sale", "currency": "eur"}),
        ({"unrelated": "x"}, {}),
    ],
)
def test_aliases_read_as_fields(params, expected):
    assert canonical_params(params) == expected


def test_conflicting_aliases_name_both():
    with pytest.raises(DialectConflict) as exc:
        canonical_params({"payout": "1", "sum": "2"})
    assert exc.value.field == "payout"
    assert exc.value.names == ["payout", "sum"]


def test_no_alias_belongs_to_two_fields():
    names = [name for aliases in ALIASES.values() for name in aliases]
    assert len(names) == len(set(names))
