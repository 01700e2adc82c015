"""Validation errors reduced to what a client needs: which field, what is wrong."""

from pydantic import ValidationError


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    details = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(part) for part in err["loc"]) or "body"
        details.append({"field": field, "message": err["msg"]})
    return details
