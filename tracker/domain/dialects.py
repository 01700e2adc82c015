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


def canonical_params(params: Mapping[str, str]) -> dict[str, str]:
    """Our field names with their values, from whichever aliases were sent.

    Empty values count as absent (an unfilled macro). Two aliases of one field
    with different values raise `DialectConflict` naming both.
    """
    fields: dict[str, str] = {}
    for field, names in ALIASES.items():
        found = {name: params[name] for name in names if params.get(name, "") != ""}
        if not found:
            continue
        if len(set(found.values())) > 1:
            raise DialectConflict(field, found)
        fields[field] = next(iter(found.values()))
    return fields
