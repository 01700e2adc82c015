"""What makes a URL template acceptable: offer and lander URLs, postback templates."""

import ipaddress
import re
import unicodedata
from urllib.parse import urlsplit

MAX_URL_LENGTH = 4000
# Controls (NUL, tab, newlines, DEL, C1), invisible formatting (zero-width, bidi
# overrides), surrogates, and every kind of space and line or paragraph separator.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def url_problem(value: str, *, sent_as_written: bool = False) -> str | None:
    """Why `value` is not an acceptable absolute http(s) URL template, or None.

    Macros (`{name}`) may appear after the host only: the scheme, host and port are
    fixed when the URL is saved, whatever a click carries. A URL the tracker itself
    requests (`sent_as_written`, a postback template) must also be ASCII throughout, since a
    receiver refuses raw UTF-8 in a request line, and has no #fragment, which is never sent."""
    if len(value) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"must not contain whitespace or control characters (found {char!r})"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not value.lower().startswith(parts.scheme + "://"):
        return "must be an http:// or https:// URL"
    if "{" in parts.netloc or "}" in parts.netloc:
        where = "path and query" if sent_as_written else "path, query and fragment"
        return f"macros are allowed only in the {where}, not in the host"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if "@" in parts.netloc:
        return "must not contain a user name or password"
    if sent_as_written:
        if "#" in value:
            return "must not have a #fragment: it is never sent"
        if not value.isascii():
            return "must be ASCII: percent-encode other characters (%C3%BC for ü)"
    host = parts.hostname or ""
    if not host:
        return "must name a host"
    if not host.isascii():
        return "host must be ASCII (give an international name in its xn-- form)"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if parts.netloc.startswith("[") or not _HOST_NAME.fullmatch(host):
            return f"host {host[:60]!r} is not a valid host name"
    return None
