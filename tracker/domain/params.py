"""Request parameters as the click and postback paths read them.

One rule for a repeated name, everywhere (click and postback, query string,
form body, JSON object keys): the FIRST occurrence wins and later ones are
ignored. A postback POST reads its body first and the query string after, so
a body value wins over a query value of the same name.

Cleaning: names and free-text values lose NUL characters and have lone
surrogates replaced by U+FFFD. Values of the fields a postback acts on (every
alias of clickid, payout, txid, parent_txid, currency, status, token) are not
repaired: a NUL or invalid UTF-8 there is a `ParamError` naming the parameter.
"""

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from tracker.domain.dialects import ALIASES
from tracker.domain.text import clean_text, dirt_in

# Names whose values are exact values, not free text.
VALUE_NAMES = frozenset(
    name for field, names in ALIASES.items() if field != "event" for name in names
)


class ParamError(ValueError):
    """A parameter that cannot be read; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"parameter {name!r} {message}")
        self.name = name


def first_wins(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each name with its first value; names are cleaned before they are compared."""
    out: dict[str, str] = {}
    for name, value in pairs:
        name = clean_text(name)
        if name not in out:
            out[name] = value
    return out


def clean_free_text(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Click parameters: first occurrence wins, every value cleaned, nothing refused."""
    return {name: clean_text(value) for name, value in first_wins(pairs).items()}


def plain_query(raw_query: str) -> dict[str, str] | None:
    """Click parameters read straight from a raw query string that needs neither
    decoding nor cleaning (ASCII, no percent escape, no NUL): the same as
    `clean_free_text` of its decoded pairs. None for any other query string."""
    if "%" in raw_query or "\x00" in raw_query or not raw_query.isascii():
        return None
    out: dict[str, str] = {}
    for pair in raw_query.replace("+", " ").split("&"):
        if pair:
            name, _, value = pair.partition("=")
            if name not in out:
                out[name] = value
    return out


def postback_params(*sources: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Postback parameters from `sources` in order of precedence (first wins across
    and within sources); free text cleaned, dirty exact values refused."""
    params = first_wins(pair for source in sources for pair in source)
    for name, value in params.items():
        if name in VALUE_NAMES:
            reason = dirt_in(value)
            if reason is not None:
                raise ParamError(name, reason)
        else:
            params[name] = clean_text(value)
    return params


def form_pairs(body: bytes, charset: str | None) -> list[tuple[str, str]]:
    """An application/x-www-form-urlencoded body; undecodable bytes become U+FFFD.
    An unknown `charset` is a ValueError."""
    encoding = charset or "utf-8"
    try:
        text = body.decode(encoding, errors="replace")
    except LookupError:
        raise ValueError(f"unknown charset {encoding[:40]!r} in Content-Type") from None
    return parse_qsl(
        text, keep_blank_values=True, encoding=encoding, errors="replace", max_num_fields=None
    )


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json_object(body: bytes, numbers_as_text: bool = False) -> dict[str, Any]:
    """A request body that must be a JSON object; ValueError says what is wrong.

    Duplicate keys: the first wins. With `numbers_as_text`, numbers stay the text
    they were sent as (so `0.1` is exact and `1e3` is seen as written).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("request body is not valid UTF-8") from None
    hooks: dict[str, Any] = {"parse_float": str, "parse_int": str} if numbers_as_text else {}
    try:
        data = json.loads(
            text, object_pairs_hook=_first_key_wins, parse_constant=_no_constants, **hooks
        )
    except RecursionError:
        raise ValueError("request body is nested too deeply") from None
    except ValueError:
        raise ValueError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


def json_pairs(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A postback's JSON object as parameters: strings as they are, numbers as their
    JSON text, null as absent; true/false only for free-text parameters."""
    pairs = []
    for name, value in data.items():
        if value is None:
            continue
        if isinstance(value, bool):
            if name in VALUE_NAMES:
                raise ParamError(name, "must be a string or a number, not true/false")
            value = "true" if value else "false"
        elif not isinstance(value, str):
            raise ParamError(name, "must be a single value")
        pairs.append((name, value))
    return pairs
