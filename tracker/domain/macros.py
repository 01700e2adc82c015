"""Offer URL templates: `{name}` macros replaced by URL-encoded click values."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

_MACRO = re.compile(r"\{([A-Za-z0-9_.\-]{1,64})\}")
# What `quote(value, safe="")` leaves as it is.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~\-]*")

# A compiled template alternates literal text and macro names:
# ("https://o.example/?id=", "clickid", "&s=", "sub1", "").
Template = tuple[str, ...]

# Built-in macros and the click record field each reads (text as stored). Any other
# name is a click URL parameter.
FIELD_MACROS: dict[str, str] = {
    "clickid": "click_id",
    "campaign_id": "campaign_id",
    "offer_id": "offer_id",
    "traffic_source_id": "traffic_source_id",
    "external_id": "external_id",
    "cost": "cost",
    "country": "country",
    "region": "region",
    "city": "city",
    "device": "device",
    "os": "os",
    "browser": "browser",
    "language": "language",
    "isp": "isp",
    "asn": "asn",
    "ip": "ip",
    "user_agent": "user_agent",
    "referrer": "referrer",
    "lander_id": "lander_id",
    **{f"sub{i}": f"sub{i}" for i in range(1, 11)},
}
# Built-in macros whose field is a whole number (or missing), never text to escape.
_NUMBER_FIELDS = frozenset({"campaign_id", "offer_id", "traffic_source_id", "asn", "lander_id"})


def compile_template(template: str) -> Template:
    """Split a URL template once so that rendering needs no regex."""
    return tuple(_MACRO.split(template))


def encode(value: str) -> str:
    """`quote(value, safe="")`, with the common value that needs no escaping let through
    on a quick check."""
    if (value.isascii() and value.isalnum()) or _UNRESERVED.fullmatch(value):
        return value
    return quote(value, safe="")


# Reads one macro's URL-encoded text off a click record, given the raw value of the
# source's cost parameter.
SlotReader = Callable[[Any, str | None], str]


@dataclass(frozen=True, slots=True)
class ClickTemplate:
    """A URL template bound to one campaign's parameter names: each macro knows where
    its value comes from, so a click fills the slots without asking by name."""

    parts: Template
    slots: tuple[tuple[int, SlotReader], ...]

    def render(self, record: Any, raw_cost: str | None) -> str:
        """The URL for `record` (a click record, or any object with its fields)."""
        if not self.slots:
            return self.parts[0]
        parts = list(self.parts)
        for index, read in self.slots:
            parts[index] = read(record, raw_cost)
        return "".join(parts)


def compile_click_template(
    template: Template, external_id_param: str, cost_param: str
) -> ClickTemplate:
    """Bind `template` to a campaign whose source names its external id and cost
    parameters so (`_slot_reader` says which source each macro reads)."""
    slots = tuple(
        (index, _slot_reader(template[index], external_id_param, cost_param))
        for index in range(1, len(template), 2)
    )
    return ClickTemplate(template if slots else ("".join(template),), slots)


def _slot_reader(name: str, external_id_param: str, cost_param: str) -> SlotReader:
    column = FIELD_MACROS.get(name)
    if column == "click_id":
        return _click_id
    if column is not None:
        return _number_field(column) if column in _NUMBER_FIELDS else _text_field(column)
    if name == "timestamp":
        return _timestamp
    if name == "is_unique":
        return _is_unique
    if name == external_id_param:
        return _text_field("external_id")
    if name == cost_param:
        return _raw_cost
    return _param(name)


def _text_field(column: str) -> SlotReader:
    def read(record: Any, raw_cost: str | None) -> str:
        value = getattr(record, column)
        return encode(value) if value else ""

    return read


def _number_field(column: str) -> SlotReader:
    def read(record: Any, raw_cost: str | None) -> str:
        value = getattr(record, column)
        return "" if value is None else str(value)

    return read


def _click_id(record: Any, raw_cost: str | None) -> str:
    # Base32hex (0-9, a-v): nothing in a click id needs escaping.
    return str(record.click_id)


def _timestamp(record: Any, raw_cost: str | None) -> str:
    return str(record.created_ms // 1000)


def _is_unique(record: Any, raw_cost: str | None) -> str:
    unique = record.is_unique
    return "" if unique is None else ("1" if unique else "0")


def _raw_cost(record: Any, raw_cost: str | None) -> str:
    return encode(raw_cost) if raw_cost else ""


def _param(name: str) -> SlotReader:
    def read(record: Any, raw_cost: str | None) -> str:
        params = record.params
        value = params.get(name) if params is not None else None
        return encode(value) if value else ""

    return read
