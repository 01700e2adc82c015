"""Where an address is: country, region, city and network (AS number, organisation).

Two sources. A MaxMind-format database the user points at (`TRACKER_GEOIP_DB`, a City or
Country `.mmdb`, plus `TRACKER_GEOIP_ASN_DB` for the network), read with `maxminddb`; or,
with none configured, the data that ships inside the `geoip2fast` package (GeoLite2
country and AS organisation, IPv4 and IPv6, no region, city or AS number).

Each data file is loaded once per process, however many apps the process creates.
"""

import bisect
import functools
from array import array
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from ipaddress import IPv4Address, IPv6Address
from itertools import chain
from typing import Any

import maxminddb

from tracker.domain.addresses import Address, is_public, parse_ip
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


# The embedded tables as geoip2fast loads them into its module: per table, the networks'
# first addresses, prefix lengths and name ids, in sorted chunks.
_COUNTRY_TABLE = ("mainListFirstIP", "mainListNetlength", "mainListIDCountryCodes")
_NETWORK_TABLE = ("mainListFirstIPASN", "mainListNetlengthASN", "mainListIDASN")
# geoip2fast's first country names are private and reserved networks, and "not found".
_PRIVATE_COUNTRY_IDS = 16
_V4_LIMIT = 1 << 32
_V4_SIZES = tuple(1 << (32 - length) for length in range(33))
_V6_SIZES = tuple(1 << (128 - length) for length in range(129))
_V4_BLOCK_BITS = 16  # the /16 index over the IPv4 part of each table
# Distinct (country, organisation) pairs whose Geo is kept for reuse.
_MAX_PLACES = 1 << 16


class NetworkTable:
    """One table of the embedded data (countries, or AS organisations): each network's
    first address, prefix length and name id in flat arrays sorted by first address.

    An IPv4 lookup bisects only the networks that start inside the address's /16 (an
    index of 65,537 positions), so it reads a few neighbouring entries rather than
    twenty scattered ones; geoip2fast's own lookup does two bisections over boxed
    integers per table and formats text it then drops (about 10 µs an address,
    against about 1 µs here)."""

    __slots__ = ("_block_starts", "_entries", "_v4_count", "_v4_starts", "_v6_starts")

    def __init__(self, firsts: list[int], lengths: Iterable[int], ids: Iterable[int]) -> None:
        self._v4_count = bisect.bisect_left(firsts, _V4_LIMIT)
        # IPv4 first addresses as 32-bit numbers; the IPv6 ones stay Python integers.
        self._v4_starts = array("I", firsts[: self._v4_count])
        self._v6_starts = firsts[self._v4_count :]
        # Name id and prefix length in one number (`id << 8 | length`): one array read.
        self._entries = array(
            "I", (i << 8 | length for i, length in zip(ids, lengths, strict=True))
        )
        if len(self._entries) != len(firsts):
            raise GeoDataError("the embedded GeoIP data's tables differ in length")
        self._block_starts = array(
            "I",
            (
                bisect.bisect_left(self._v4_starts, block << _V4_BLOCK_BITS)
                for block in range((_V4_LIMIT >> _V4_BLOCK_BITS) + 1)
            ),
        )

    def find(self, number: int) -> int:
        """The name id of the network holding the address `number`, or -1 for none.
        A number below 2**32 is an IPv4 address (as geoip2fast has it)."""
        if number < _V4_LIMIT:
            starts = self._v4_starts
            block = number >> _V4_BLOCK_BITS
            # Every network before the block starts below the address: when none in the
            # block does, the one before it is the candidate.
            at = (
                bisect.bisect_right(
                    starts, number, self._block_starts[block], self._block_starts[block + 1]
                )
                - 1
            )
            if at < 0:
                return -1
            entry = self._entries[at]
            return entry >> 8 if number - starts[at] < _V4_SIZES[entry & 0xFF] else -1
        at = bisect.bisect_right(self._v6_starts, number) - 1
        if at < 0:
            return -1
        entry = self._entries[self._v4_count + at]
        return entry >> 8 if number - self._v6_starts[at] < _V6_SIZES[entry & 0xFF] else -1


def _table(data: Any, names: tuple[str, str, str]) -> NetworkTable:
    firsts, lengths, ids = (getattr(data, name) for name in names)
    return NetworkTable(
        list(chain.from_iterable(firsts)), chain.from_iterable(lengths), chain.from_iterable(ids)
    )


class EmbeddedPlaces:
    """Country and AS organisation of an address, from the embedded data's two tables."""

    __slots__ = ("_countries", "_country_codes", "_isps", "_networks", "_places")

    def __init__(self, data: Any) -> None:
        self._countries = _table(data, _COUNTRY_TABLE)
        self._networks = _table(data, _NETWORK_TABLE)
        # Country names are `CODE:Name`; the first ids are private or reserved networks.
        self._country_codes = [
            None if i < _PRIVATE_COUNTRY_IDS else _country_code(entry.split(":", 1)[0])
            for i, entry in enumerate(data.mainListNamesCountry)
        ]
        self._isps = [
            None if name == _RESERVED_ORG else _text(name) for name in data.mainListNamesASN
        ]
        # The Geo of each (country, organisation) pair met so far, up to _MAX_PLACES of them.
        self._places: dict[int, Geo] = {}

    def place(self, address: Address) -> Geo:
        """Where a public address is; NO_GEO for one the data does not place or calls
        private or reserved."""
        number = address[1]
        country_id = self._countries.find(number)
        if country_id < _PRIVATE_COUNTRY_IDS:  # -1: in no network of the table
            return NO_GEO
        network_id = self._networks.find(number)
        key = country_id << 24 | network_id & 0xFFFFFF
        geo = self._places.get(key)
        if geo is None:
            geo = Geo(
                country=self._country_codes[country_id],
                isp=self._isps[network_id] if network_id >= 0 else None,
            )
            if len(self._places) < _MAX_PLACES:
                self._places[key] = geo
        return geo


@functools.cache
def _embedded_places() -> EmbeddedPlaces:
    _embedded()  # geoip2fast loads the data file into its module's globals
    from geoip2fast import geoip2fast as data

    try:
        return EmbeddedPlaces(data)
    except (AttributeError, TypeError, ValueError, OverflowError) as error:
        raise GeoDataError(
            f"the embedded GeoIP data of geoip2fast {version('geoip2fast')} is not laid out "
            f"as this tracker reads it ({error!r})"
        ) from error


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
        self._embedded: EmbeddedPlaces | None = None
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
            self._embedded = _embedded_places()
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
        if self._embedded is not None:
            geo = self._embedded.place(address)
        else:
            assert self._places is not None
            geo = place_from_record(_get(self._places, address))
        if self._networks is not None:
            asn, isp = _network(_map(_get(self._networks, address)))
            if asn is not None or isp is not None:
                geo = Geo(geo.country, geo.region, geo.city, asn, isp)
        return geo
