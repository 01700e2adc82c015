import ipaddress
import random

import pytest

from tracker.domain.addresses import AddressRanges, address_text, is_public, parse_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", (4, 0x01020304)),
        ("255.255.255.255", (4, 0xFFFFFFFF)),
        ("::ffff:1.2.3.4", (4, 0x01020304)),
        ("::FFFF:0102:0304", (4, 0x01020304)),
        ("2001:db8::1", (6, 0x20010DB8 << 96 | 1)),
        ("fe80::1%eth0", (6, 0xFE80 << 112 | 1)),
        ("::", (6, 0)),
    ],
)
def test_parse_ip_reads_what_ipaddress_reads(text, expected):
    assert parse_ip(text) == expected
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    assert expected == (address.version, int(address))


@pytest.mark.parametrize(
    "text",
    [None, "", " 1.2.3.4", "1.2.3.4 ", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "::g",
     "1.2.3.4\x00", "\uff11.\uff12.\uff13.\uff14", "fe80::1%", "1.2.3.4/32", "localhost"],
)  # fmt: skip
def test_parse_ip_refuses_what_is_not_an_address(text):
    assert parse_ip(text) is None


def test_address_text_round_trips():
    for text in ["1.2.3.4", "0.0.0.0", "2001:db8::1", "::"]:
        parsed = parse_ip(text)
        assert parsed is not None
        assert address_text(parsed) == text
    assert address_text((4, 0x01020304)) == "1.2.3.4"


def test_address_ranges_merge_and_search():
    ranges = AddressRanges.of(
        ["10.0.0.0/9", "10.128.0.0/9", "10.1.2.3", "192.168.0.0/16", "::/128", " 11.0.0.5 "]
    )
    inside = ["10.0.0.0", "10.255.255.255", "192.168.77.1", "::", "11.0.0.5", "::ffff:10.1.1.1"]
    outside = ["9.255.255.255", "11.0.0.0", "11.0.0.6", "192.169.0.0", "::1", "0.0.0.0"]
    assert all(parse_ip(a) in ranges for a in inside)
    assert not any(parse_ip(a) in ranges for a in outside)
    assert None not in ranges
    assert parse_ip("1.1.1.1") not in AddressRanges()
    assert ranges and not AddressRanges()
    # Two /9s are one range after merging.
    assert repr(ranges) == "AddressRanges(3 IPv4, 1 IPv6 ranges)"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-address", "1.2.3", "::g"])
def test_address_ranges_name_a_bad_block(bad):
    with pytest.raises(ValueError, match=f"'{bad}' is not an address or CIDR"):
        AddressRanges.of(["10.0.0.0/8", bad])


def _stdlib_public(text: str) -> bool:
    address = ipaddress.ip_address(text)
    return address.is_global and not address.is_multicast


def test_is_public_agrees_with_the_standard_library():
    # Every edge of every special block, and a spread of random addresses. Inside
    # 192.0.0.0/24 Python's own table changed in 3.12.4 (it follows IANA from there);
    # ours follows IANA: only 192.0.0.9 and 192.0.0.10 are global there.
    rng = random.Random(7)
    edges = []
    for block in ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                  "172.16.0.0/12", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
                  "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"]:  # fmt: skip
        network = ipaddress.ip_network(block)
        for edge in (int(network.network_address), int(network.broadcast_address)):
            edges += [edge - 1, edge, edge + 1]
    samples = [n for n in edges if 0 <= n < 2**32]
    samples += [rng.getrandbits(32) for _ in range(20_000)]
    for number in samples:
        text = str(ipaddress.IPv4Address(number))
        if text.startswith("192.0.0."):
            continue
        assert is_public((4, number)) == _stdlib_public(text), text
    for text in ["2001:db8::1", "fe80::1", "::1", "ff02::1", "fc00::1", "2a00:1450::1"]:
        parsed = parse_ip(text)
        assert parsed is not None
        assert is_public(parsed) == _stdlib_public(text), text


def test_is_public_inside_the_protocol_block_follows_iana():
    assert is_public((4, int(ipaddress.IPv4Address("192.0.0.9"))))
    assert is_public((4, int(ipaddress.IPv4Address("192.0.0.10"))))
    for private in ["192.0.0.0", "192.0.0.8", "192.0.0.11", "192.0.0.170", "192.0.0.255"]:
        assert not is_public((4, int(ipaddress.IPv4Address(private)))), private
    assert is_public((4, int(ipaddress.IPv4Address("192.0.1.0"))))


@pytest.mark.parametrize(
    ("text", "public"),
    [
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::a00:1", False),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:808:808::1", True),
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::ffff:0:a9fe:a9fe", False),  # IPv4-translated 169.254.169.254
        ("fec0::1", False),
        ("2a00:1450:4001::1", True),
    ],
)
def test_ipv6_forms_carrying_an_ipv4_address_are_judged_by_it(text, public):
    parsed = parse_ip(text)
    assert parsed is not None
    assert is_public(parsed) is public
