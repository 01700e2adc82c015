"""Authentication of inbound postbacks: token, address allowlist, HMAC signature."""

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

from tracker.domain.campaign import IpNetwork, NetworkRoute

REPLAY_WINDOW_SECONDS = 300


def signature_for(secret: str, timestamp: str, raw: str) -> str:
    """The `X-Signature` value for a request: HMAC-SHA256 over "<timestamp>.<raw>"."""
    digest = hmac.new(secret.encode(), f"{timestamp}.{raw}".encode(), hashlib.sha256)
    return "sha256=" + digest.hexdigest()


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
        if not hmac.compare_digest(token.encode(), network.postback_token.encode()):
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
        try:
            sent_at = int(signature_ts)
        except ValueError:
            return "X-Timestamp is not a Unix time in seconds"
        if abs(now - sent_at) > REPLAY_WINDOW_SECONDS:
            return "signature timestamp outside the 5-minute window"
        expected = signature_for(network.signing_secret, signature_ts, raw)
        if not hmac.compare_digest(signature.strip().lower().encode(), expected.encode()):
            return "bad signature"
    return None


def client_address(
    peer: str | None, forwarded_for: str | Sequence[str] | None, trusted: Sequence[IpNetwork]
) -> str | None:
    """The client's address: the socket peer, or, when the peer is a trusted proxy,
    the nearest untrusted address in X-Forwarded-For.

    `forwarded_for` is every X-Forwarded-For header line (or one line); several
    lines are one list, in order, as if joined with commas.
    """
    if not forwarded_for or not trusted or not _is_trusted(peer, trusted):
        return peer
    joined = forwarded_for if isinstance(forwarded_for, str) else ",".join(forwarded_for)
    hops = [hop.strip() for hop in joined.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str | None, trusted: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)
