"""Validation errors reduced to what a client needs: which field, what is wrong;
and the value types query strings share."""

from datetime import date
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from tracker.domain.text import clean_text

INT64_MAX = 2**63 - 1


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        # Field names come from the request; a lone surrogate would break the JSON answer.
        details.append({"field": clean_text(field), "message": clean_text(err["msg"])})
    return details


def _ascii_int(value: Any) -> Any:
    """Query integers are plain ASCII digits: no sign, spaces, '_' or other scripts'
    digits, which `int()` would otherwise accept."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise ValueError("must be a whole number from 1 to 9223372036854775807")
        return int(value)
    return value


# A row id in a query string: what a BIGINT column can hold.
QueryId = Annotated[int, BeforeValidator(_ascii_int), Field(ge=1, le=INT64_MAX)]
# A page size in a query string.
QueryLimit = Annotated[int, BeforeValidator(_ascii_int), Field(ge=1, le=1000)]


def day_after(day: date) -> date | None:
    """The next day, or None past the last date Python represents (9999-12-31)."""
    return None if day == date.max else date.fromordinal(day.toordinal() + 1)
