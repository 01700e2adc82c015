"""Click ids: a millisecond time prefix and 96 random bits, base32hex-encoded.

The base32hex alphabet (0-9, a-v) is in ASCII order, so ids sort by creation
time as plain strings, survive lower-casing by networks, and need no escaping.

The lowest 9 of the random bits (just above the zero pad bit, so the id's last two
characters) name the click's Redis shard, 0 to 511: the key of its record and its
stream are derivable from the id alone, whatever the number of shards in use.
"""

import os
import re
import time
import zlib
from datetime import UTC, datetime, timedelta

CLICK_ID_LENGTH = 29  # 144 bits / 5 bits per character, rounded up
_RANDOM_BYTES = 12  # 96 bits
_VALID = re.compile(r"[0-9a-v]{29}")
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
# Every pair of characters, indexed by the 10 bits they encode.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


class _RandomPool:
    """Random bytes from the OS, fetched in blocks: one syscall per 512 ids."""

    def __init__(self, block: int = _RANDOM_BYTES * 512) -> None:
        self._block = block
        self._buffer = b""
        self._pos = block

    def take(self) -> int:
        if self._pos >= self._block:
            self._buffer = os.urandom(self._block)
            self._pos = 0
        start = self._pos
        self._pos = start + _RANDOM_BYTES
        return int.from_bytes(self._buffer[start : self._pos], "big")


_random = _RandomPool()


MAX_SHARDS = 512  # the 9 bits of a click id that name its shard
_SHARD_MASK = MAX_SHARDS - 1


def new_click_id(now_ms: int | None = None, shard: int | None = None) -> str:
    """Return a new click id stamped with `now_ms` (default: the current time), in
    `shard` (0 to 511; default: the random bits decide).

    The same text as base32hex of the 6-byte time and 12 random bytes, built
    from 10-bit chunks because the standard library's base32 is pure Python.
    """
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    # 48 time bits, 96 random bits, and one zero bit to fill 29 characters.
    n = (now_ms << 97) | (_random.take() << 1)
    if shard is not None:
        if not 0 <= shard < MAX_SHARDS:
            raise ValueError(f"shard {shard} is not in 0..{MAX_SHARDS - 1}")
        n = (n & ~(_SHARD_MASK << 1)) | (shard << 1)
    pairs = _PAIRS
    return _ALPHABET[n >> 140] + "".join([pairs[(n >> shift) & 1023] for shift in _SHIFTS])


_SHIFTS = tuple(range(130, -1, -10))


def is_click_id(value: str) -> bool:
    """True when `value` has the shape of an id made by `new_click_id`."""
    return _VALID.fullmatch(value) is not None


_VALUES = {c: i for i, c in enumerate(_ALPHABET)}


def click_shard(click_id: str) -> int:
    """The shard (0 to 511) of a click id; for a text that is no click id, a stable
    hash of it, so that any text has one key."""
    if is_click_id(click_id):
        return ((_VALUES[click_id[-2]] << 5 | _VALUES[click_id[-1]]) >> 1) & _SHARD_MASK
    return zlib.crc32(click_id.encode(errors="surrogatepass")) & _SHARD_MASK


def visitor_shard(campaign_id: int, visitor_id: str, shards: int) -> int:
    """The shard, of `shards`, of a visitor's clicks on a campaign: its unique-click key
    and its click records then share a node."""
    return zlib.crc32(f"{campaign_id}:{visitor_id}".encode(errors="surrogatepass")) % shards


def click_id_time_ms(click_id: str) -> int:
    """The millisecond timestamp encoded in a click id."""
    # base32hex digits are int()'s base-32 digits: 10 characters hold the 48 time bits
    # and 2 more (the standard library's decoder is pure Python, ten times slower).
    return int(click_id[:10], 32) >> 2


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def click_time(click_id: str) -> datetime | None:
    """When the click was made, from its id's time prefix (its `created_at` in Postgres,
    which pins the click's partition); None for a text that is not a click id."""
    if not is_click_id(click_id):
        return None
    return _EPOCH + timedelta(milliseconds=click_id_time_ms(click_id))


def click_ms(click_id: str, created_ms: int) -> int:
    """A click's time in milliseconds: its id's, or `created_ms` for an id the click path
    did not make (the same rule as `click_created_at` in Postgres)."""
    return click_id_time_ms(click_id) if is_click_id(click_id) else created_ms
