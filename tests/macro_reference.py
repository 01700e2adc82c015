"""The macros' meaning, looked up by name on each render: the reference that the
compiled click templates (`tracker.domain.macros.ClickTemplate`) are checked against."""

from collections.abc import Callable
from typing import Protocol

from tracker.domain.macros import FIELD_MACROS, Template, encode


class MacroValues(Protocol):
    def get(self, name: str, /) -> str | None: ...


def render(template: Template, values: MacroValues) -> str:
    """Substitute macros; unknown or empty macros become the empty string."""
    parts = list(template)
    for i in range(1, len(parts), 2):
        value = values.get(parts[i])
        parts[i] = encode(value) if value else ""
    return "".join(parts)


class ClickMacros:
    """The macro values of one click, computed only for the macros a template names.

    Built-in names (`{clickid}`, `{country}`, ...) always mean the tracker's own
    value; any other name is a click URL parameter. `field` reads the stored
    record: a `ClickRecord`'s attribute or a decoded record's key."""

    __slots__ = ("_cost_param", "_external_id_param", "_field", "_raw_cost")

    def __init__(
        self,
        field: Callable[[str], object],
        external_id_param: str,
        cost_param: str,
        raw_cost: str | None,
    ) -> None:
        self._field = field
        self._external_id_param = external_id_param
        self._cost_param = cost_param
        self._raw_cost = raw_cost

    def get(self, name: str) -> str | None:
        column = FIELD_MACROS.get(name)
        if column is not None:
            return _text(self._field(column))
        if name == "timestamp":
            created_ms = self._field("created_ms")
            return str(created_ms // 1000) if isinstance(created_ms, int) else None
        if name == "is_unique":
            unique = self._field("is_unique")
            return None if unique is None else ("1" if unique else "0")
        if name == self._external_id_param:
            return _text(self._field("external_id"))
        if name == self._cost_param:
            return self._raw_cost
        params = self._field("params")
        if isinstance(params, dict):
            value = params.get(name)
            return value if isinstance(value, str) else None
        return None


def _text(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None if value is None else ("1" if value else "0")
    return str(value)
