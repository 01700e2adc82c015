"""IP addresses as (version, number) pairs, and membership in fixed sets of networks.

A click reads its visitor's address several times (proxy trust, GeoIP, bot ranges, rules).
`ipaddress` costs about 2 µs to parse an address and 4 µs to say whether it is public;
`inet_pton` and a binary search over merged ranges cost a tenth of that.
"""

import bisect
import ipaddress
import socket
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

# (4 or 6, the address as a number); an IPv4-mapped IPv6 address is the IPv4 it carries.
Address = tuple[int, int]

_V4_MAPPED = 0xFFFF


def parse_ip(text: str | None) -> Address | None:
    """`text` as an address, or None when it is not one (no spaces, no leading zeros)."""
    if not text:
        return None
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):  # ValueError: a NUL or a character not in ASCII
        pass
    try:
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError):
        if "%" not in text:
            return None
        # A zone (`fe80::1%eth0`): inet_pton refuses it; the zone does not change the number.
        try:
            number = int(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    if number >> 32 == _V4_MAPPED:
        return 4, number & 0xFFFFFFFF
    return 6, number


def address_text(address: Address) -> str:
    """The address in its usual text form (an IPv4 address as a dotted quad)."""
    version, number = address
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, number.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, number.to_bytes(16, "big"))


class AddressRanges:
    """A fixed set of networks; `address in ranges` by binary search over merged ranges."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network] = ()) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for network in networks:
            spans[network.version].append(
                (int(network.network_address), int(network.broadcast_address))
            )
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for version, found in spans.items():
            starts, ends = self._starts[version], self._ends[version]
            for low, high in sorted(found):
                if ends and low <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], high)
                else:
                    starts.append(low)
                    ends.append(high)

    @classmethod
    def of(cls, cidrs: Iterable[str]) -> "AddressRanges":
        """From CIDR blocks or single addresses in text; ValueError names a bad one."""
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError as error:
                raise ValueError(f"{cidr!r} is not an address or CIDR ({error})") from None
        return cls(networks)

    def __contains__(self, address: Address | None) -> bool:
        if address is None:
            return False
        version, number = address
        at = bisect.bisect_right(self._starts[version], number) - 1
        return at >= 0 and number <= self._ends[version][at]

    def __bool__(self) -> bool:
        return bool(self._starts[4] or self._starts[6])

    def __repr__(self) -> str:
        return f"AddressRanges({len(self._starts[4])} IPv4, {len(self._starts[6])} IPv6 ranges)"


# Addresses no GeoIP data places: IANA's special-purpose blocks that are not globally
# reachable (RFC 6890 and its updates), and multicast. 192.0.0.9 and 192.0.0.10 are
# global services inside 192.0.0.0/24.
_NOT_PUBLIC = AddressRanges.of(
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/29",
        "192.0.0.8/32",
        "192.0.0.11/32",
        "192.0.0.12/30",
        "192.0.0.16/28",
        "192.0.0.32/27",
        "192.0.0.64/26",
        "192.0.0.128/25",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/3",  # multicast 224/4, reserved 240/4 and the broadcast address
    ]
)


def _prefix(cidr: str) -> tuple[int, int]:
    network = ipaddress.IPv6Network(cidr)
    return int(network.network_address) >> (128 - network.prefixlen), 128 - network.prefixlen


# IPv6 forms that carry an IPv4 address, and where it sits (bits from the right): NAT64
# (well-known and local-use prefixes), 6to4, IPv4-compatible and IPv4-translated. Such an
# address is as public as the IPv4 address it reaches.
_CARRIES_V4 = tuple(
    (*_prefix(cidr), shift)
    for cidr, shift in (
        ("64:ff9b::/96", 0),
        ("64:ff9b:1::/48", 0),
        ("2002::/16", 80),
        ("::/96", 0),
        ("::ffff:0:0:0/96", 0),
    )
)
_SITE_LOCAL = _prefix("fec0::/10")  # deprecated, still routed inside some networks


def is_public(address: Address) -> bool:
    """False for private, reserved, loopback, link-local and multicast addresses, and for
    IPv6 addresses that carry such an IPv4 address."""
    version, number = address
    if version == 4:
        return address not in _NOT_PUBLIC
    for prefix, host_bits, shift in _CARRIES_V4:
        if number >> host_bits == prefix:
            return is_public((4, (number >> shift) & 0xFFFFFFFF))
    if number >> _SITE_LOCAL[1] == _SITE_LOCAL[0]:
        return False
    v6 = ipaddress.IPv6Address(number)
    return v6.is_global and not v6.is_multicast
