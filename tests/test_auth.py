"""Postback authentication rules, without servers."""

import ipaddress

import pytest

from tracker.domain.auth import (
    canonical_signature,
    check_postback_auth,
    parse_timestamp,
    signature_for,
    signed_post_params,
    token_matches,
)
from tracker.domain.campaign import NetworkRoute

DIGEST = "ab" * 32
NOW = 1_700_000_000.0


def network(**changes) -> NetworkRoute:
    fields = {
        "id": 1,
        "postback_token": "current",
        "require_token": True,
        "ip_allowlist": (),
        "signing_secret": None,
        "status_map": {},
        "duplicate_policy": "txid",
    }
    return NetworkRoute(**{**fields, **changes})


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        (f"sha256={DIGEST}", f"sha256={DIGEST}"),
        (f"SHA256={DIGEST.upper()}", f"sha256={DIGEST}"),
        (DIGEST, f"sha256={DIGEST}"),
        (DIGEST.upper(), f"sha256={DIGEST}"),
        (f"  sha256={DIGEST} ", f"sha256={DIGEST}"),
        (None, None),
        ("", None),
        ("sha256=", None),
        (f"sha256={DIGEST[:-1]}", None),
        (f"sha256={DIGEST}0", None),
        (f"sha256=sha256={DIGEST}", None),
        (f"sha512={DIGEST}", None),
        (f"sha256={DIGEST[:-1]}g", None),
        (f"sha256={DIGEST[:-1]}\u0663", None),  # an Arabic-Indic digit
        (f"sha256={DIGEST[:-1]}\uff41", None),  # a full-width a
        (f"sha256={DIGEST[:32]} {DIGEST[32:]}", None),
        (f"sha256={DIGEST}\n", f"sha256={DIGEST}"),
        (f"sha256={DIGEST}\x00", None),
    ],
)
def test_canonical_signature(header, canonical):
    assert canonical_signature(header) == canonical


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1700000000", 1700000000),
        ("0", 0),
        ("999999999999", 999999999999),
        ("9999999999999", None),
        ("", None),
        ("+1700000000", None),
        ("-1700000000", None),
        (" 1700000000", None),
        ("1700000000 ", None),
        ("1700000000\n", None),
        ("1_700_000_000", None),
        ("1700000000.5", None),
        ("\u0661\u0667\u0660\u0660", None),  # Arabic-Indic digits, which int() accepts
        ("\uff11\uff17", None),  # full-width digits
    ],
)
def test_parse_timestamp(header, seconds):
    assert parse_timestamp(header) == seconds


def test_signed_post_keeps_only_the_token_of_its_query():
    query = {"token": "t", "payout": "5000", "clickid": "x"}
    assert signed_post_params(query) == {"token": "t"}
    assert signed_post_params({}) == {}


def test_token_matches_current_and_previous_in_grace():
    rotated = network(previous_postback_token="old", previous_token_expires_at=NOW + 10)
    assert token_matches(rotated, "current", NOW)
    assert token_matches(rotated, "old", NOW)
    assert token_matches(rotated, "old", NOW + 9.99)
    assert not token_matches(rotated, "old", NOW + 10)
    assert token_matches(rotated, "current", NOW + 10)
    assert not token_matches(rotated, "other", NOW)
    assert not token_matches(network(previous_postback_token="old"), "old", NOW)
    # Lone surrogates (undecodable bytes) compare as a wrong token, not an error.
    assert not token_matches(rotated, "\udcff\ud800", NOW)


def check(net: NetworkRoute, **given) -> str | None:
    args = {
        "token": "current",
        "client_ip": "127.0.0.1",
        "raw": "clickid=x",
        "signature": None,
        "signature_ts": None,
        "now": NOW,
        **given,
    }
    return check_postback_auth(net, **args)


def test_check_postback_auth_reasons():
    assert check(network()) is None
    assert check(network(), token=None) == "missing token"
    assert check(network(), token="old") == "wrong token"
    allow = network(ip_allowlist=(ipaddress.ip_network("10.0.0.0/8"),))
    assert check(allow) == "address 127.0.0.1 is not on the network's allowlist"
    assert check(allow, client_ip=None) == "client address unknown"
    assert check(allow, client_ip="10.1.1.1") is None

    signed = network(require_token=False, signing_secret="k" * 20)
    stamp = str(int(NOW))
    good = signature_for("k" * 20, stamp, "clickid=x")
    assert check(signed) == "missing X-Signature or X-Timestamp header"
    assert check(signed, signature=good, signature_ts=stamp) is None
    assert check(signed, signature=good.upper(), signature_ts=stamp) is None
    assert check(signed, signature=good[7:], signature_ts=stamp) is None
    assert check(signed, signature=good + "0", signature_ts=stamp) == (
        "X-Signature is not sha256=<64 hex digits>"
    )
    assert check(signed, signature=good, signature_ts="+" + stamp) == (
        "X-Timestamp is not a Unix time in seconds (ASCII digits only)"
    )
    late = str(int(NOW) - 301)
    assert check(
        signed, signature=signature_for("k" * 20, late, "clickid=x"), signature_ts=late
    ) == ("signature timestamp outside the 5-minute window")
    assert check(signed, signature=good, signature_ts=stamp, raw="clickid=y") == "bad signature"
    # The signature covers the text as sent: an encoded value is not its decoded form.
    encoded = signature_for("k" * 20, stamp, "payout=1%2E5")
    assert check(signed, signature=encoded, signature_ts=stamp, raw="payout=1.5") == (
        "bad signature"
    )
