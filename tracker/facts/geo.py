"""Where an address is: country, region, city and network (AS number, organisation).

Two sources. A MaxMind-format database the user points at (`TRACKER_GEOIP_DB`, a City or
Country `.mmdb`, plus `TRACKER_GEOIP_ASN_DB` for the network), read with `maxminddb`; or,
with none configured, the data that ships inside the `geoip2fast` package (GeoLite2
country and AS organisation, IPv4 and IPv6, no region, city or AS number).

Each data file is loaded once per process, however many apps the process creates.
"""

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import maxminddb

from tracker.domain.addresses import Address, address_text, is_public, parse_ip
from tracker.domain.visitor import NO_GEO, Geo

# The embedded file with country and AS organisation for IPv4 and IPv6.
EMBEDDED_DATA_FILE = "geoip2fast-asn-ipv6.dat.gz"
# geoip2fast names private and reserved networks' organisation so.
_RESERVED_ORG = "IANA.ORG"
_MAX_NAME = 200


class GeoDataError(RuntimeError):
    """A configured GeoIP database cannot be used; raised at startup, never per click."""


def public_address(ip: str) -> Address | None:
    """The address to locate, or None when `ip` is not one or is not public."""
    address = parse_ip(ip)
    return address if address is not None and is_public(address) else None


def _country_code(value: object) -> str | None:
    if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
        return value.upper()
    return None


def _text(value: object) -> str | None:
    return value[:_MAX_NAME] if isinstance(value, str) and value else None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _english_name(place: object) -> str | None:
    return _text(_map(_map(place).get("names")).get("en"))


def _network(record: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """AS number and organisation, from an ASN/ISP database's top level or from the
    `traits` of a City database that carries them (GeoIP2 Enterprise)."""
    for source in (record, _map(record.get("traits"))):
        number = source.get("autonomous_system_number")
        name = _text(source.get("autonomous_system_organization"))
        if isinstance(number, int) or name:
            return (number if isinstance(number, int) else None), name
    return None, None


def place_from_record(record: object) -> Geo:
    """The facts in one MaxMind City/Country/ASN record. The region is the English name
    of the first (largest) subdivision, `California` or `Bavaria`, as a buyer writes it
    in a rule; its ISO code where the data has no name."""
    data = _map(record)
    subdivisions = data.get("subdivisions")
    region = None
    if isinstance(subdivisions, list) and subdivisions:
        first = subdivisions[0]
        region = _english_name(first) or _text(_map(first).get("iso_code"))
    asn, isp = _network(data)
    return Geo(
        country=_country_code(_map(data.get("country")).get("iso_code")),
        region=region,
        city=_english_name(data.get("city")),
        asn=asn,
        isp=isp,
    )


@functools.cache
def open_mmdb(path: str) -> maxminddb.Reader:
    """A MaxMind-format database, opened once per process (memory-mapped)."""
    return maxminddb.open_database(path)


def _open(path: str, setting: str) -> maxminddb.Reader:
    try:
        return open_mmdb(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
        raise GeoDataError(
            f"{setting}={path}: cannot read it as a MaxMind .mmdb database ({error})"
        ) from error


def _database_type(reader: maxminddb.Reader) -> str:
    return str(reader.metadata().database_type)


def _describe(path: str, reader: maxminddb.Reader) -> str:
    metadata = reader.metadata()
    built = datetime.fromtimestamp(metadata.build_epoch, UTC).date().isoformat()
    return f"{metadata.database_type} of {built} from {path}"


@functools.cache
def _embedded() -> Any:
    # geoip2fast keeps its tables in module globals: one data file per process anyway.
    from geoip2fast import GeoIP2Fast  # type: ignore[import-untyped]

    return GeoIP2Fast(geoip2fast_data_file=EMBEDDED_DATA_FILE)


def embedded_data_date() -> str:
    """The date of the embedded data (`2024-06-18`), from its source line
    (`MAXMIND:GeoLite2-CountryASN-IPv4IPv6-en-20240618`)."""
    stamp = str(_embedded().source_info).rsplit("-", 1)[-1]
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"


@functools.cache
def _embedded_description() -> str:
    return (
        f"embedded GeoLite2 country and AS organisation data of {embedded_data_date()} "
        f"(geoip2fast {version('geoip2fast')})"
    )


def _in_network(address: Address, cidr: str) -> bool:
    """Whether `address` is inside `cidr` (`a.b.c.d/n`, as geoip2fast writes networks)."""
    text, _, length = cidr.partition("/")
    network = parse_ip(text)
    if network is None or network[0] != address[0] or not length.isdigit():
        return False
    host_bits = (32 if network[0] == 4 else 128) - int(length)
    return host_bits >= 0 and address[1] >> host_bits == network[1] >> host_bits


def _embedded_place(address: Address) -> Geo:
    found = _embedded().lookup(address_text(address))
    if found.is_private:
        return NO_GEO
    isp = _text(found.asn_name)
    # geoip2fast answers an IPv4 address that falls in a gap of its network table with
    # the network before the gap (it measures IPv4 ranges with IPv6 sizes), so the
    # organisation counts only when its network really holds the address.
    if isp == _RESERVED_ORG or not found.asn_cidr:
        isp = None
    elif isp is not None and not _in_network(address, found.asn_cidr):
        isp = None
    return Geo(country=_country_code(found.country_code), isp=isp)


def _get(reader: maxminddb.Reader, address: Address) -> object:
    version, number = address
    try:
        return reader.get(IPv4Address(number) if version == 4 else IPv6Address(number))
    except ValueError:  # an IPv6 address in an IPv4-only database
        return None


class GeoLookup:
    """Country, region, city and network of an address, from the configured MaxMind
    databases or the embedded data."""

    def __init__(self, geoip_db: str = "", geoip_asn_db: str = "") -> None:
        self._places: maxminddb.Reader | None = None
        self._networks: maxminddb.Reader | None = None
        if geoip_db:
            self._places = _open(geoip_db, "TRACKER_GEOIP_DB")
            kind = _database_type(self._places).lower()
            if ("asn" in kind or "isp" in kind) and not ("city" in kind or "country" in kind):
                raise GeoDataError(
                    f"TRACKER_GEOIP_DB={geoip_db} is a {_database_type(self._places)} "
                    "database: give it as TRACKER_GEOIP_ASN_DB, and a City or Country "
                    "database as TRACKER_GEOIP_DB"
                )
        else:
            _embedded()
        if geoip_asn_db:
            self._networks = _open(geoip_asn_db, "TRACKER_GEOIP_ASN_DB")
        self.description = self._description(geoip_db, geoip_asn_db)

    def _description(self, geoip_db: str, geoip_asn_db: str) -> str:
        if self._places is None:
            places = _embedded_description()
        else:
            places = _describe(geoip_db, self._places)
        if self._networks is not None:
            return f"{places}; networks: {_describe(geoip_asn_db, self._networks)}"
        if self._places is not None:
            # GeoIP2 Enterprise carries the network in its City records; GeoLite2 does not.
            return f"{places}; no TRACKER_GEOIP_ASN_DB: networks only where {geoip_db} has them"
        return places

    def lookup(self, ip: str) -> Geo:
        """Where `ip` is; an empty Geo for a private, reserved or invalid address."""
        address = public_address(ip)
        return NO_GEO if address is None else self.locate(address)

    def locate(self, address: Address) -> Geo:
        """Where a public address is (see `public_address`)."""
        if self._places is None:
            geo = _embedded_place(address)
        else:
            geo = place_from_record(_get(self._places, address))
        if self._networks is not None:
            asn, isp = _network(_map(_get(self._networks, address)))
            if asn is not None or isp is not None:
                geo = Geo(geo.country, geo.region, geo.city, asn, isp)
        return geo
