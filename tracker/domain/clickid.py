"""Click ids: a millisecond time prefix and 96 random bits, base32hex-encoded.

The base32hex alphabet (0-9, a-v) is in ASCII order, so ids sort by creation
time as plain strings, survive lower-casing by networks, and need no escaping.

The lowest 9 of the random bits (just above the zero pad bit, so the id's last two
characters) name the click's Redis shard, 0 to 511: the key of its record and its
stream are derivable from the id alone, whatever the number of shards in use.
"""

import os
import re
import secrets
import time
import zlib
from datetime import UTC, datetime, timedelta

CLICK_ID_LENGTH = 29  # 144 bits / 5 bits per character, rounded up
_VALID = re.compile(r"[0-9a-v]{29}")
_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
# Every pair of characters, indexed by the 10 bits they encode.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


MAX_SHARDS = 512  # the 9 bits of a click id that name its shard
_SHARD_MASK = MAX_SHARDS - 1


def new_click_id(now_ms: int | None = None, shard: int | None = None) -> str:
    """Return a new click id stamped with `now_ms` (default: the current time), in
    `shard` (0 to 511; default: a random one).

    The same text as base32hex of the 6-byte time and 12 random bytes, built from whole
    characters: the time's, cached for the millisecond; random ones straight from the
    pool; and the shard's tail."""
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    if shard is None:
        shard = secrets.randbelow(MAX_SHARDS)
    elif not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"shard {shard} is not in 0..{MAX_SHARDS - 1}")
    head = _heads.get(now_ms)
    if head is None:
        head = _time_head(now_ms)
    chars = _random_chars.take()
    # 45 time bits in 9 characters; 3 time bits and 2 random ones in the 10th; 85
    # random bits in the next 17; the shard's 9 bits and the zero pad bit in the last 2.
    return head[0] + head[1][chars[0]] + chars[1:] + _SHARD_TAILS[shard]


def _encode(n: int) -> str:
    """The 29 base32hex characters of a 145-bit number."""
    pairs = _PAIRS
    return _ALPHABET[n >> 140] + "".join([pairs[(n >> shift) & 1023] for shift in _SHIFTS])


_SHIFTS = tuple(range(130, -1, -10))
# The last two characters of an id in each shard.
_SHARD_TAILS = tuple(_ALPHABET[shard >> 4] + _ALPHABET[(shard & 15) << 1] for shard in range(512))
# A random alphabet character (from a random byte: 256 is a multiple of 32) to the
# character of 3 given time bits and its lowest 2 random bits.
_TENTHS = tuple(
    {char: _ALPHABET[(bits << 2) | (i & 3)] for i, char in enumerate(_ALPHABET)}
    for bits in range(8)
)
_BYTE_CHARS = bytes(ord(_ALPHABET[i & 31]) for i in range(256))


class _RandomChars:
    """Random alphabet characters from the OS, 18 at a time, fetched in blocks."""

    def __init__(self, block: int = 18 * 512) -> None:
        self._block = block
        self._chars = ""
        self._pos = block

    def take(self) -> str:
        if self._pos >= self._block:
            self._chars = os.urandom(self._block).translate(_BYTE_CHARS).decode("ascii")
            self._pos = 0
        start = self._pos
        self._pos = start + 18
        return self._chars[start : self._pos]


_random_chars = _RandomChars()
# The first 9 characters of the ids of the latest millisecond, and the 10th's map.
_heads: dict[int, tuple[str, dict[str, str]]] = {}


def _time_head(now_ms: int) -> tuple[str, dict[str, str]]:
    head = (_encode(now_ms << 97)[:9], _TENTHS[now_ms & 7])
    _heads.clear()
    _heads[now_ms] = head
    return head


def is_click_id(value: str) -> bool:
    """True when `value` has the shape of an id made by `new_click_id`."""
    return _VALID.fullmatch(value) is not None


def click_shard(click_id: str) -> int:
    """The shard (0 to 511) of a click id; for a text that is no click id, a stable
    hash of it, so that any text has one key."""
    if is_click_id(click_id):
        return (int(click_id[-2:], 32) >> 1) & _SHARD_MASK
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
