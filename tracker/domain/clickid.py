"""Click ids: a millisecond time prefix and 96 random bits, base32hex-encoded.

The base32hex alphabet (0-9, a-v) is in ASCII order, so ids sort by creation
time as plain strings, survive lower-casing by networks, and need no escaping.
"""

import base64
import os
import re
import time

CLICK_ID_LENGTH = 29  # 144 bits / 5 bits per character, rounded up
_RANDOM_BYTES = 12  # 96 bits
_VALID = re.compile(r"[0-9a-v]{29}")


def new_click_id(now_ms: int | None = None) -> str:
    """Return a new click id stamped with `now_ms` (default: the current time)."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    raw = now_ms.to_bytes(6, "big") + os.urandom(_RANDOM_BYTES)
    return base64.b32hexencode(raw)[:CLICK_ID_LENGTH].decode().lower()


def is_click_id(value: str) -> bool:
    """True when `value` has the shape of an id made by `new_click_id`."""
    return _VALID.fullmatch(value) is not None


def click_id_time_ms(click_id: str) -> int:
    """The millisecond timestamp encoded in a click id."""
    padded = click_id[:CLICK_ID_LENGTH].upper() + "==="
    return int.from_bytes(base64.b32hexdecode(padded)[:6], "big")
