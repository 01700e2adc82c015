import ipaddress

import pytest

from tracker.domain.addresses import AddressRanges
from tracker.domain.auth import check_postback_auth, client_address, signature_for
from tracker.domain.campaign import NetworkRoute

NOW = 1_700_000_000


def network(**changes):
    values = dict(
        id=1,
        postback_token="tok",
        require_token=True,
        ip_allowlist=(),
        signing_secret=None,
        status_map={},
        duplicate_policy="txid",
    )
    values.update(changes)
    return NetworkRoute(**values)


def check(net, token="tok", ip="10.0.0.1", raw="a=1", sig=None, ts=None):
    return check_postback_auth(net, token, ip, raw, sig, ts, NOW)


def test_token():
    assert check(network()) is None
    assert check(network(), token=None) == "missing token"
    assert check(network(), token="nope") == "wrong token"
    assert check(network(require_token=False), token=None) is None


def test_allowlist():
    net = network(ip_allowlist=(ipaddress.ip_network("10.0.0.0/8"),))
    assert check(net) is None
    assert "not on the network's allowlist" in check(net, ip="192.168.1.1")
    assert check(net, ip=None) == "client address unknown"
    assert check(net, ip="not-an-ip") == "client address unknown"


@pytest.mark.parametrize(
    ("ts", "sig", "reason"),
    [
        (str(NOW), "good", None),
        (str(NOW), "sha256=00", "X-Signature is not sha256=<64 hex digits>"),
        (str(NOW), "sha256=" + "0" * 64, "bad signature"),
        (None, "good", "missing X-Signature or X-Timestamp header"),
        ("soon", "good", "X-Timestamp is not a Unix time in seconds (ASCII digits only)"),
        (str(NOW - 301), "good", "signature timestamp outside the 5-minute window"),
    ],
)
def test_signature(ts, sig, reason):
    net = network(signing_secret="s" * 16)
    if sig == "good":
        sig = signature_for("s" * 16, ts or "", "a=1").upper()
    assert check(net, sig=sig, ts=ts) == reason


def test_client_address_behind_trusted_proxies():
    trusted = AddressRanges.of(["127.0.0.1", "10.0.0.0/8", "fd00::/8"])
    assert client_address("1.2.3.4", "5.6.7.8", trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", "5.6.7.8, 10.0.0.2", trusted) == "5.6.7.8"
    assert client_address("127.0.0.1", "203.0.113.9, 10.0.0.2", trusted) == "203.0.113.9"
    assert client_address("10.0.0.1", ["1.1.1.1, 2.2.2.2", "10.9.9.9"], trusted) == "2.2.2.2"
    assert client_address("::ffff:10.0.0.1", "5.6.7.8", trusted) == "5.6.7.8"
    assert client_address("fd00::1", "2001:db8::1", trusted) == "2001:db8::1"
    assert client_address("10.0.0.1", "10.0.0.2, 10.0.0.3", trusted) == "10.0.0.2"
    assert client_address("10.0.0.1", None, trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", " , ", trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", "1.1.1.1", AddressRanges()) == "10.0.0.1"
    # A hop that is not an address is not a trusted proxy: it is what the client claims.
    assert client_address("10.0.0.1", "junk, 10.0.0.2", trusted) == "junk"
