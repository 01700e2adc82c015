"""Text from the wire made safe to store: PostgreSQL text and JSON refuse NUL,
and UTF-8 encoders refuse lone surrogates.

aiohttp hands us both kinds of dirt: `%00` in a query decodes to NUL, and raw
non-UTF-8 bytes in a header decode to surrogate escapes (\\udc80-\\udcff).
Bad percent-escapes (`%FF`, an encoded surrogate) already arrive as U+FFFD.
"""

import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Free text as it can be stored: NULs dropped, lone surrogates made U+FFFD."""
    if value.isascii():
        return value.replace("\x00", "") if "\x00" in value else value
    return _SURROGATE.sub(REPLACEMENT, value.replace("\x00", ""))


def clean_optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def dirt_in(value: str) -> str | None:
    """Why `value` cannot be taken as an exact value (an id, an amount, a code, a
    token), or None when it is clean text."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii() and (REPLACEMENT in value or _SURROGATE.search(value)):
        return "is not valid UTF-8 text"
    return None
