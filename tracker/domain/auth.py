"""Authentication of inbound postbacks: token, address allowlist, HMAC signature.

Signature rules: `X-Signature: sha256=<hex>` is HMAC-SHA256 keyed with the network's
signing secret over "<X-Timestamp>.<raw>", where raw is the query string exactly as
sent (after `?`, percent-encoding untouched) for a GET or a body-less POST, and the
body bytes for a POST with a body. The hex may come in either case and without the
prefix; replay protection keys on the canonical form, so a digest is usable once
however it is spelt. X-Timestamp is Unix seconds in plain ASCII digits.
"""

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping, Sequence

from tracker.domain.addresses import AddressRanges, parse_ip
from tracker.domain.campaign import NetworkRoute

REPLAY_WINDOW_SECONDS = 300
SIGNATURE_SCHEME = "sha256="
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# Unix seconds: 10 digits until the year 2286; a few more are harmless, thousands are not.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# The one query parameter a signed POST may still carry: it authenticates, it is not data.
SIGNED_POST_QUERY_PARAMS = frozenset({"token"})


def signature_for(secret: str, timestamp: str, raw: str) -> str:
    """The `X-Signature` value for a request: HMAC-SHA256 over "<timestamp>.<raw>"."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{raw}".encode(), hashlib.sha256)
    return SIGNATURE_SCHEME + digest.hexdigest()


def canonical_signature(header: str | None) -> str | None:
    """`sha256=<64 lowercase hex>` for a header carrying a SHA-256 digest in any case,
    with or without the prefix; None for anything else."""
    if header is None or not header.isascii():
        return None
    value = header.strip().lower()
    value = value.removeprefix(SIGNATURE_SCHEME)
    if not _HEX_DIGEST.fullmatch(value):
        return None
    return SIGNATURE_SCHEME + value


def parse_timestamp(header: str) -> int | None:
    """The X-Timestamp header as Unix seconds, or None unless it is 1 to 12 ASCII digits."""
    if not _TIMESTAMP.fullmatch(header):
        return None
    return int(header)


def signed_post_params(query: Mapping[str, str]) -> dict[str, str]:
    """What a signed POST keeps of its query string: the signature covers only the
    body, so unsigned query parameters must not add to or override the signed ones."""
    return {name: value for name, value in query.items() if name in SIGNED_POST_QUERY_PARAMS}


def token_matches(network: NetworkRoute, token: str, now: float) -> bool:
    """The network's current postback token, or its previous one while in grace."""
    given = token.encode("utf-8", "surrogatepass")
    if hmac.compare_digest(given, network.postback_token.encode()):
        return True
    previous = network.previous_postback_token
    expires_at = network.previous_token_expires_at
    return (
        previous is not None
        and expires_at is not None
        and now < expires_at
        and hmac.compare_digest(given, previous.encode())
    )


def check_postback_auth(
    network: NetworkRoute,
    token: str | None,
    client_ip: str | None,
    raw: str,
    signature: str | None,
    signature_ts: str | None,
    now: float,
) -> str | None:
    """Why the postback is refused, or None when every check the network asks for passes."""
    if network.require_token:
        if not token:
            return "missing token"
        if not token_matches(network, token, now):
            return "wrong token"
    if network.ip_allowlist:
        try:
            address = ipaddress.ip_address(client_ip or "")
        except ValueError:
            return "client address unknown"
        if not any(address in allowed for allowed in network.ip_allowlist):
            return f"address {address} is not on the network's allowlist"
    if network.signing_secret:
        if not signature or not signature_ts:
            return "missing X-Signature or X-Timestamp header"
        canonical = canonical_signature(signature)
        if canonical is None:
            return "X-Signature is not sha256=<64 hex digits>"
        sent_at = parse_timestamp(signature_ts)
        if sent_at is None:
            return "X-Timestamp is not a Unix time in seconds (ASCII digits only)"
        if abs(now - sent_at) > REPLAY_WINDOW_SECONDS:
            return "signature timestamp outside the 5-minute window"
        expected = signature_for(network.signing_secret, signature_ts, raw)
        if not hmac.compare_digest(canonical.encode(), expected.encode()):
            return "bad signature"
    return None


def client_address(
    peer: str | None, forwarded_for: str | Sequence[str] | None, trusted: AddressRanges
) -> str | None:
    """The client's address: the socket peer, or, when the peer is a trusted proxy,
    the nearest untrusted address in X-Forwarded-For.

    `forwarded_for` is every X-Forwarded-For header line (or one line); several
    lines are one list, in order, as if joined with commas.
    """
    if not forwarded_for or not trusted or not is_trusted(peer, trusted):
        return peer
    return forwarded_client(peer, forwarded_for, trusted)


def forwarded_client(
    peer: str | None, forwarded_for: str | Sequence[str], trusted: AddressRanges
) -> str | None:
    """The nearest untrusted address in X-Forwarded-For, for a peer already known to be a
    trusted proxy (see `client_address`)."""
    joined = forwarded_for if isinstance(forwarded_for, str) else ",".join(forwarded_for)
    hops = [hop.strip() for hop in joined.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def is_trusted(address: str | None, trusted: AddressRanges) -> bool:
    return parse_ip(address) in trusted


def bearer_key_matches(header: str, expected: str) -> bool:
    """An `Authorization: Bearer <key>` header carrying `expected`. Header text that is
    not ASCII (aiohttp hands undecodable bytes over as surrogates) never matches."""
    scheme, _, given = header.partition(" ")
    given = given.strip(" ")
    if scheme.lower() != "bearer" or not given.isascii():
        return False
    return hmac.compare_digest(given.encode("ascii"), expected.encode())
