import ipaddress
import time
from pathlib import Path
from random import Random

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tracker.domain.visitor import Geo
from tracker.facts import geo as geo_module
from tracker.facts.geo import GeoDataError, GeoLookup, embedded_data_date

LONDON = {
    "continent": {"code": "EU", "names": {"en": "Europe"}},
    "country": {
        "iso_code": "GB",
        "names": {"en": "United Kingdom", "de": "Vereinigtes Königreich"},
    },
    "subdivisions": [
        {"iso_code": "ENG", "names": {"en": "England"}},
        {"iso_code": "WSM", "names": {"en": "Westminster"}},
    ],
    "city": {"names": {"en": "London", "ru": "Лондон"}},
}
MUNICH = {
    "country": {"iso_code": "DE", "names": {"en": "Germany"}},
    "subdivisions": [{"iso_code": "BY", "names": {"en": "Bavaria"}}],
    "city": {"names": {"en": "Munich"}},
}
# A subdivision the data names only by code; a country with no subdivision or city.
CODE_ONLY = {"country": {"iso_code": "fr"}, "subdivisions": [{"iso_code": "IDF"}]}
COUNTRY_ONLY = {"country": {"iso_code": "JP", "names": {"en": "Japan"}}}
# GeoIP2 Enterprise style: the network in the City record's traits.
ENTERPRISE = {
    "country": {"iso_code": "US"},
    "subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}],
    "city": {"names": {"en": "San Francisco"}},
    "traits": {
        "autonomous_system_number": 13335,
        "autonomous_system_organization": "CLOUDFLARENET",
    },
}


def write_city_db(path: Path) -> str:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-City",
        languages=["en"],
        description="tracker test City database",
    )
    writer.insert_network(IPSet(["81.2.69.0/24"]), LONDON)
    writer.insert_network(IPSet(["2a02:ff00::/32"]), MUNICH)
    writer.insert_network(IPSet(["89.160.20.0/24"]), CODE_ONLY)
    writer.insert_network(IPSet(["175.16.199.0/24"]), COUNTRY_ONLY)
    writer.insert_network(IPSet(["216.160.83.0/24"]), ENTERPRISE)
    writer.to_db_file(str(path))
    return str(path)


def write_asn_db(path: Path) -> str:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-ASN",
        languages=["en"],
        description="tracker test ASN database",
    )
    writer.insert_network(
        IPSet(["81.2.69.0/24"]),
        {
            "autonomous_system_number": 20712,
            "autonomous_system_organization": "Andrews & Arnold Ltd",
        },
    )
    writer.insert_network(
        IPSet(["2a02:ff00::/32"]),
        {
            "autonomous_system_number": 24940,
            "autonomous_system_organization": "Hetzner Online GmbH",
        },
    )
    writer.to_db_file(str(path))
    return str(path)


@pytest.fixture
def city_db(tmp_path: Path) -> str:
    return write_city_db(tmp_path / "city.mmdb")


@pytest.fixture
def asn_db(tmp_path: Path) -> str:
    return write_asn_db(tmp_path / "asn.mmdb")


def test_city_database(city_db):
    lookup = GeoLookup(city_db)
    assert lookup.lookup("81.2.69.160") == Geo(country="GB", region="England", city="London")
    assert lookup.lookup("2a02:ff00::1") == Geo(country="DE", region="Bavaria", city="Munich")
    assert lookup.lookup("89.160.20.5") == Geo(country="FR", region="IDF")
    assert lookup.lookup("175.16.199.1") == Geo(country="JP")
    # Not in the database at all.
    assert lookup.lookup("8.8.8.8") == Geo()
    assert "GeoLite2-City" in lookup.description and city_db in lookup.description


def test_city_database_with_network_in_its_records(city_db):
    assert GeoLookup(city_db).lookup("216.160.83.56") == Geo(
        country="US", region="California", city="San Francisco", asn=13335, isp="CLOUDFLARENET"
    )


def test_city_and_asn_databases(city_db, asn_db):
    lookup = GeoLookup(city_db, asn_db)
    assert lookup.lookup("81.2.69.160") == Geo(
        country="GB", region="England", city="London", asn=20712, isp="Andrews & Arnold Ltd"
    )
    assert lookup.lookup("2a02:ff00::1") == Geo(
        country="DE", region="Bavaria", city="Munich", asn=24940, isp="Hetzner Online GmbH"
    )
    # The ASN database does not know it: the City record's own network stays.
    assert lookup.lookup("216.160.83.56").asn == 13335
    assert "GeoLite2-ASN" in lookup.description


def test_asn_database_beside_the_embedded_countries(asn_db):
    lookup = GeoLookup("", asn_db)
    assert lookup.lookup("81.2.69.160") == Geo(country="GB", asn=20712, isp="Andrews & Arnold Ltd")
    assert lookup.lookup("8.8.8.8") == Geo(country="US", isp="GOOGLE")


def test_ipv6_address_in_an_ipv4_only_database(tmp_path):
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"])
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    path = str(tmp_path / "v4.mmdb")
    writer.to_db_file(path)
    lookup = GeoLookup(path)
    assert lookup.lookup("81.2.69.1") == Geo(country="GB")
    assert lookup.lookup("2a02:ff00::1") == Geo()


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", Geo(country="US", isp="GOOGLE")),
        ("1.1.1.1", Geo(country="AU", isp="CLOUDFLARENET")),
        ("2001:4860:4860::8888", Geo(country="US", isp="GOOGLE")),
        ("2606:4700:4700::1111", Geo(country="US", isp="CLOUDFLARENET")),
        ("::ffff:8.8.8.8", Geo(country="US", isp="GOOGLE")),
        ("18.130.0.1", Geo(country="GB", isp="AMAZON-02")),
        ("88.198.0.1", Geo(country="DE", isp="Hetzner Online GmbH")),
        # geoip2fast itself names the network before a gap in its table (Kcell JSC here,
        # a Kazakh carrier, for a Vultr address): a network that does not hold the
        # address is not taken.
        ("149.28.0.1", Geo(country="US")),
    ],
)
def test_embedded_data(ip, expected):
    assert GeoLookup().lookup(ip) == expected


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "100.64.0.1",
        "192.0.2.1",
        "169.254.1.1",
        "224.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "",
        "not an address",
        "8.8.8.8.8",
        "8.8.8.8/32",
        " 8.8.8.8",
    ],
)
def test_private_reserved_and_invalid_addresses_are_nowhere(ip, city_db):
    assert GeoLookup().lookup(ip) == Geo()
    assert GeoLookup(city_db).lookup(ip) == Geo()


def test_embedded_data_is_geolite2_of_2024_06_18():
    info = geo_module._embedded().get_database_info()
    assert info["source_info"] == "MAXMIND:GeoLite2-CountryASN-IPv4IPv6-en-20240618"
    assert info["database_content"] == "Country + ASN with IPv4 and IPv6"
    assert embedded_data_date() == "2024-06-18"
    assert GeoLookup().description.startswith(
        "embedded GeoLite2 country and AS organisation data of 2024-06-18"
    )


def test_each_data_file_is_loaded_once_per_process(city_db):
    GeoLookup()
    GeoLookup(city_db)
    started = time.perf_counter()
    for _ in range(50):
        GeoLookup()
        GeoLookup(city_db)
    assert time.perf_counter() - started < 0.5
    assert geo_module._embedded.cache_info().misses == 1


def test_missing_database_fails_at_startup(tmp_path):
    missing = str(tmp_path / "nowhere" / "GeoLite2-City.mmdb")
    with pytest.raises(GeoDataError, match=r"TRACKER_GEOIP_DB=.*nowhere/GeoLite2-City\.mmdb"):
        GeoLookup(missing)
    with pytest.raises(GeoDataError, match="TRACKER_GEOIP_ASN_DB="):
        GeoLookup("", missing)


def test_unreadable_database_fails_at_startup(tmp_path):
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"this is not a MaxMind database" * 100)
    with pytest.raises(GeoDataError, match=r"cannot read it as a MaxMind \.mmdb database"):
        GeoLookup(str(garbage))
    with pytest.raises(GeoDataError, match="cannot read it"):
        GeoLookup(str(tmp_path))  # a directory


def test_asn_database_given_as_the_city_database(asn_db):
    with pytest.raises(GeoDataError, match="give it as TRACKER_GEOIP_ASN_DB"):
        GeoLookup(asn_db)


def _geoip2fast_place(ip: str) -> Geo:
    """geoip2fast's own answer for a public address, read as the tracker reads it: the
    organisation only when its network holds the address (geoip2fast sizes IPv4
    networks as IPv6 ones, so past a gap it names the network before the gap)."""
    found = geo_module._embedded().lookup(ip)
    if found.is_private:
        return Geo()
    isp = found.asn_name or None
    if isp == "IANA.ORG" or not found.asn_cidr:
        isp = None
    elif isp is not None:
        network = ipaddress.ip_network(found.asn_cidr)
        if ipaddress.ip_address(ip) not in network:
            isp = None
    code = found.country_code
    country = code if len(code) == 2 and code.isalpha() else None
    return Geo(country=country, isp=isp)


def test_embedded_tables_answer_as_geoip2fast_does():
    """The tracker's own reading of the embedded tables against geoip2fast's lookup, for
    addresses spread over IPv4 and the IPv6 space in use, and at network edges."""
    random = Random(14)
    lookup = GeoLookup()
    addresses = [str(ipaddress.IPv4Address(random.getrandbits(32))) for _ in range(20_000)]
    addresses += [
        str(
            ipaddress.IPv6Address(
                (0x2000 + random.getrandbits(12)) << 112 | random.getrandbits(112)
            )
        )
        for _ in range(5_000)
    ]
    # The first and last address of networks, and the ones just outside them.
    for cidr in ("8.8.8.0/24", "1.0.0.0/24", "149.28.0.0/16", "2a02:ff00::/32", "18.130.0.0/16"):
        network = ipaddress.ip_network(cidr)
        for number in (-1, 0, network.num_addresses - 1, network.num_addresses):
            addresses.append(str(network.network_address + number))
    compared = placed = with_isp = 0
    for ip in addresses:
        if geo_module.public_address(ip) is None:
            continue
        expected = _geoip2fast_place(ip)
        assert lookup.lookup(ip) == expected, ip
        compared += 1
        placed += expected.country is not None
        with_isp += expected.isp is not None
    print(f"compared {compared} addresses: {placed} placed, {with_isp} with an organisation")
    # The sample reaches well into the data, so the comparison means something.
    assert compared > 20_000 and placed > 10_000 and with_isp > 8_000
