"""Postback parameter names as the major trackers spell them.

A network's postback URL can be moved to this tracker by changing only its
host: every alias below is read as the field it stands for.
"""

from collections.abc import Mapping

ALIASES: dict[str, tuple[str, ...]] = {
    "clickid": ("clickid", "cid", "subid", "sid", "cnv_id", "click_id", "hit"),
    "payout": ("payout", "amount", "sum", "revenue", "rev"),
    "txid": ("txid", "tid", "tx", "transaction_id", "order_id"),
    "status": ("status", "cnv_status"),
    "currency": ("currency", "cnv_currency"),
    "event": ("event", "et", "type", "ct"),
    "token": ("token",),
    "parent_txid": ("parent_txid",),
}


class DialectConflict(ValueError):
    def __init__(self, field: str, values: dict[str, str]) -> None:
        shown = ", ".join(f"{name}={value!r}" for name, value in values.items())
        super().__init__(f"conflicting values for {field}: {shown}")
        self.field = field
        self.names = list(values)


# Each alias with the field it stands for.
FIELD_OF: dict[str, str] = {name: field for field, names in ALIASES.items() for name in names}


def canonical_params(params: Mapping[str, str]) -> dict[str, str]:
    """Our field names with their values, from whichever aliases were sent.

    Empty values count as absent (an unfilled macro). Two aliases of one field
    with different values raise `DialectConflict` naming both.
    """
    # One pass over what was sent (a handful of names) rather than over every alias.
    fields: dict[str, str] = {}
    conflict = False
    for name, value in params.items():
        field = FIELD_OF.get(name)
        if field is None or value == "":
            continue
        seen = fields.get(field)
        if seen is None:
            fields[field] = value
        elif seen != value:
            conflict = True
    if conflict:
        _raise_conflict(params)
    return fields


def _raise_conflict(params: Mapping[str, str]) -> None:
    """Raise `DialectConflict` for the first field (in ALIASES order) whose aliases were
    sent with different values, naming them in ALIASES order."""
    for field, names in ALIASES.items():
        found = {name: params[name] for name in names if params.get(name, "") != ""}
        if len(set(found.values())) > 1:
            raise DialectConflict(field, found)
