from datetime import date

import pytest
from pydantic import BaseModel, ValidationError

from tracker.domain.validation import INT64_MAX, QueryId, day_after, field_errors


class Query(BaseModel):
    id: QueryId


@pytest.mark.parametrize("raw", ["1", "42", str(INT64_MAX)])
def test_query_ids(raw):
    assert Query.model_validate({"id": raw}).id == int(raw)


@pytest.mark.parametrize(
    "raw", ["0", "-1", "+1", " 1", "1_0", "\u0661", "\uff11", str(INT64_MAX + 1), "9" * 5000, ""]
)
def test_bad_query_ids(raw):
    with pytest.raises(ValidationError) as exc:
        Query.model_validate({"id": raw})
    assert [d["field"] for d in field_errors(exc.value)] == ["id"]


def test_field_errors_are_storable_text():
    with pytest.raises(ValidationError) as exc:
        Query.model_validate({"id": "x", "\ud800": 1})
    for detail in field_errors(exc.value):
        detail["field"].encode("utf-8")


@pytest.mark.parametrize(
    ("day", "after"),
    [
        (date(2024, 2, 28), date(2024, 2, 29)),
        (date(2024, 12, 31), date(2025, 1, 1)),
        (date.max, None),
    ],
)
def test_day_after(day, after):
    assert day_after(day) == after
