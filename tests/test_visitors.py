from pathlib import Path

import pytest

from tracker.domain.visitor import Geo
from tracker.facts.geo import GeoLookup
from tracker.facts.visitors import FactsSettingsError, VisitorFacts, cdn_country_code
from tracker.settings import DATA_CENTER_ASNS, Settings

from .test_agents import CHROME_WINDOWS, GOOGLEBOT, SAFARI_IPHONE
from .test_geo import write_asn_db, write_city_db


def facts(**settings: object) -> VisitorFacts:
    return VisitorFacts(Settings(**settings))


def test_a_person():
    visitor = facts().visitor(
        "8.8.8.8", SAFARI_IPHONE, "https://news.example/", "de-CH,de;q=0.9,en;q=0.8"
    )
    assert visitor.ip == "8.8.8.8"
    assert visitor.user_agent == SAFARI_IPHONE
    assert visitor.referrer == "https://news.example/"
    assert visitor.language == "de"
    assert visitor.geo == Geo(country="US", isp="GOOGLE")
    assert (visitor.agent.device, visitor.agent.os, visitor.agent.browser) == (
        "mobile",
        "iOS",
        "Mobile Safari",
    )
    assert visitor.bot_reason is None and not visitor.is_bot


def test_nothing_known():
    visitor = facts().visitor(None, None, None, None)
    assert visitor.geo == Geo()
    assert visitor.language is None
    assert visitor.bot_reason == "empty-user-agent"


def test_crawler():
    assert facts().visitor("8.8.8.8", GOOGLEBOT, None, None).bot_reason == "crawler"
    assert facts().visitor("8.8.8.8", "curl/8.4.0", None, None).bot_reason == "crawler"


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        ("", "empty-user-agent"),
        ("  ", "empty-user-agent"),
        ("Mozilla/5.0", "absurd-user-agent"),
        ("x", "absurd-user-agent"),
        (CHROME_WINDOWS + " " * 900 + "x" * 200, "absurd-user-agent"),
    ],
)
def test_implausible_user_agent(user_agent, reason):
    assert facts().visitor("8.8.8.8", user_agent, None, None).bot_reason == reason


def test_over_long_user_agent_is_not_parsed_or_cached():
    service = facts()
    visitor = service.visitor("8.8.8.8", CHROME_WINDOWS + "x" * 2000, None, None)
    assert visitor.bot_reason == "absurd-user-agent"
    assert visitor.agent.browser is None
    assert service.agent_facts.cache_info().currsize == 0


def test_ip_range():
    service = facts(bot_ip_ranges=["203.0.113.0/24", "2001:db8::/32", "198.51.100.7", "8.8.8.8"])
    for ip in ("203.0.113.9", "::ffff:203.0.113.9", "2001:db8::5", "198.51.100.7", "8.8.8.8"):
        assert service.visitor(ip, CHROME_WINDOWS, None, None).bot_reason == "ip-range", ip
    for ip in ("203.0.114.1", "198.51.100.8", "2001:db9::1", "1.1.1.1", "garbage"):
        assert service.visitor(ip, CHROME_WINDOWS, None, None).bot_reason is None, ip
    # A listed public address keeps its GeoIP facts.
    assert service.visitor("8.8.8.8", CHROME_WINDOWS, None, None).geo.country == "US"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-address", "1.2.3", "::g"])
def test_bad_ip_range_fails_at_startup(bad):
    with pytest.raises(FactsSettingsError, match=f"TRACKER_BOT_IP_RANGES: '{bad}'"):
        facts(bot_ip_ranges=["10.0.0.0/8", bad])


def test_data_center_by_organisation_name():
    # The default list names AWS's network as the embedded data does.
    assert facts().visitor("18.130.0.1", CHROME_WINDOWS, None, None).bot_reason == "data-center"
    service = facts(bot_asns=["hetzner online gmbh"])  # case does not matter
    assert service.visitor("88.198.0.1", CHROME_WINDOWS, None, None).bot_reason == "data-center"
    assert service.visitor("18.130.0.1", CHROME_WINDOWS, None, None).bot_reason is None
    # Names match whole, not in part.
    assert (
        facts(bot_asns=["hetzner"]).visitor("88.198.0.1", CHROME_WINDOWS, None, None).bot_reason
        is None
    )


def test_data_center_by_as_number(tmp_path: Path):
    service = facts(
        geoip_db=write_city_db(tmp_path / "city.mmdb"),
        geoip_asn_db=write_asn_db(tmp_path / "asn.mmdb"),
        bot_asns=["24940", " ", "SOMETHING-ELSE"],
    )
    visitor = service.visitor("2a02:ff00::1", CHROME_WINDOWS, None, None)
    assert visitor.geo.asn == 24940
    assert visitor.bot_reason == "data-center"
    assert service.visitor("81.2.69.160", CHROME_WINDOWS, None, None).bot_reason is None


def test_first_signal_wins():
    service = facts(bot_ip_ranges=["18.130.0.0/16"])
    assert service.visitor("18.130.0.1", GOOGLEBOT, None, None).bot_reason == "crawler"
    assert service.visitor("18.130.0.1", "", None, None).bot_reason == "empty-user-agent"
    assert service.visitor("18.130.0.1", CHROME_WINDOWS, None, None).bot_reason == "ip-range"
    assert facts().visitor("18.130.0.1", CHROME_WINDOWS, None, None).bot_reason == "data-center"


def test_repeated_user_agent_and_address_come_from_the_cache():
    service = facts()
    first = service.visitor("8.8.8.8", CHROME_WINDOWS, None, None)
    second = service.visitor("8.8.8.8", CHROME_WINDOWS, "https://r.example/", "fr")
    assert second.agent is first.agent
    assert second.geo is first.geo
    assert (second.referrer, second.language) == ("https://r.example/", "fr")
    assert service.agent_facts.cache_info().hits == 1
    assert service.address_facts.cache_info().hits == 1


def test_parsed_address_goes_with_the_visitor():
    service = facts()
    assert service.visitor("8.8.8.8", CHROME_WINDOWS, None, None).address == (4, 0x08080808)
    assert service.visitor("::ffff:8.8.4.4", CHROME_WINDOWS, None, None).address == (4, 0x08080404)
    assert service.visitor("2001:db8::1", CHROME_WINDOWS, None, None).address == (
        6,
        0x20010DB8 << 96 | 1,
    )
    for unreadable in ("garbage", "", None, "1" * 100):
        assert service.visitor(unreadable, CHROME_WINDOWS, None, None).address is None


def test_repeated_accept_language_comes_from_the_cache():
    service = facts()
    for header, expected in [("de-DE,de;q=0.9", "de"), ("fr;q=0.5, pt;q=0.8", "pt")] * 3:
        assert service.visitor("8.8.8.8", CHROME_WINDOWS, None, header).language == expected
    assert service.language.cache_info().hits == 4
    assert service.language.cache_info().currsize == 2
    # A header longer than any browser sends is read, but not kept.
    long_header = ",".join(["x-private"] * 40) + ",es"
    assert service.visitor("8.8.8.8", CHROME_WINDOWS, None, long_header).language is None
    assert service.visitor("8.8.8.8", CHROME_WINDOWS, None, "x" * 300 + ",es").language == "es"
    assert (
        service.visitor("8.8.8.8", CHROME_WINDOWS, None, "en;q=0.1," * 30 + "it").language == "en"
    )
    assert service.language.cache_info().currsize == 2


def test_cache_is_bounded():
    service = facts(fact_cache_size=3)
    for n in range(10):
        service.visitor(f"8.8.{n}.1", f"{CHROME_WINDOWS} build/{n}", None, None)
    assert service.agent_facts.cache_info().currsize == 3
    assert service.address_facts.cache_info().currsize == 3


def test_no_cache():
    service = facts(fact_cache_size=0)
    first = service.visitor("8.8.8.8", CHROME_WINDOWS, None, None)
    second = service.visitor("8.8.8.8", CHROME_WINDOWS, None, None)
    assert second.agent == first.agent and second.agent is not first.agent
    assert service.agent_facts.cache_info().currsize == 0


def test_hostile_address_text_is_not_cached():
    service = facts()
    visitor = service.visitor("1" * 5000, CHROME_WINDOWS, None, None)
    assert visitor.geo == Geo()
    assert service.address_facts.cache_info().currsize == 0


def test_cdn_country_overrides_geoip(tmp_path: Path):
    service = facts(geoip_db=write_city_db(tmp_path / "city.mmdb"))
    london = "81.2.69.160"
    assert service.visitor(london, CHROME_WINDOWS, None, None, "gb").geo == Geo(
        country="GB", region="England", city="London"
    )
    # Another country: the GeoIP region and city are of the wrong country, so they go.
    assert service.visitor(london, CHROME_WINDOWS, None, None, "IE").geo == Geo(country="IE")
    for unknown in ("XX", "T1", "", None, "GBR", "1A", "é1"):
        assert service.visitor(london, CHROME_WINDOWS, None, None, unknown).geo.country == "GB"
    # The network stays whoever names the country.
    assert facts().visitor("8.8.8.8", CHROME_WINDOWS, None, None, "CH").geo == Geo(
        country="CH", isp="GOOGLE"
    )
    assert facts().visitor("10.0.0.1", CHROME_WINDOWS, None, None, "de").geo == Geo(country="DE")


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        (" us ", "US"),
        ("XX", None),
        ("T1", None),
        ("", None),
        ("DEU", None),
    ],
)
def test_cdn_country_code(value, code):
    assert cdn_country_code(value) == code


def test_one_geo_lookup_can_be_shared():
    lookup = GeoLookup()
    service = VisitorFacts(Settings(), geo=lookup)
    assert service.geo is lookup
    assert service.description == lookup.description


# A public address of each network that DATA_CENTER_ASNS names, and the name the embedded
# GeoLite2 data (and MaxMind's GeoLite2-ASN) gives it.
DATA_CENTER_ADDRESSES = {
    "AMAZON-02": "18.130.0.1",
    "AMAZON-AES": "54.80.0.1",
    "MICROSOFT-CORP-MSN-AS-BLOCK": "20.42.0.1",
    "GOOGLE-CLOUD-PLATFORM": "34.120.0.1",
    "DIGITALOCEAN-ASN": "167.99.0.1",
    "OVH SAS": "51.38.0.1",
    "Hetzner Online GmbH": "88.198.0.1",
    "Akamai Connected Cloud": "45.33.0.1",
    "AS-CHOOPA": "45.32.0.1",
    "Alibaba US Technology Co., Ltd.": "47.88.0.1",
    "Hangzhou Alibaba Advertising Co.,Ltd.": "39.96.0.1",
    "ORACLE-BMC-31898": "129.146.0.1",
    "M247 Europe SRL": "185.156.172.1",
    "Contabo GmbH": "173.212.192.1",
    "Scaleway S.a.s.": "51.15.0.1",
}


def test_data_center_names_are_the_embedded_datas():
    lookup = GeoLookup()
    for name, address in DATA_CENTER_ADDRESSES.items():
        assert lookup.lookup(address).isp == name


def test_default_data_center_names_are_all_known():
    names = {entry for entry in DATA_CENTER_ASNS if not entry.isdigit()}
    assert names == set(DATA_CENTER_ADDRESSES)


def test_hostile_text_in_every_header():
    visitor = facts().visitor(
        "8.8.8.8\udcff", CHROME_WINDOWS + "\udcff", "\x00\udcfe", "de\udcff,\x00;q=1"
    )
    assert visitor.geo == Geo()
    assert visitor.agent.browser == "Chrome"
    assert visitor.language is None
