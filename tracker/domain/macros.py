"""Offer URL templates: `{name}` macros replaced by URL-encoded click values."""

import re
from typing import Protocol
from urllib.parse import quote

_MACRO = re.compile(r"\{([A-Za-z0-9_.\-]{1,64})\}")

# A compiled template alternates literal text and macro names:
# ("https://o.example/?id=", "clickid", "&s=", "sub1", "").
Template = tuple[str, ...]


def compile_template(template: str) -> Template:
    """Split a URL template once so that rendering needs no regex."""
    return tuple(_MACRO.split(template))


class MacroValues(Protocol):
    def get(self, name: str, /) -> str | None: ...


def render(template: Template, values: MacroValues) -> str:
    """Substitute macros; unknown or empty macros become the empty string."""
    parts = list(template)
    for i in range(1, len(parts), 2):
        value = values.get(parts[i])
        parts[i] = quote(value, safe="") if value else ""
    return "".join(parts)
