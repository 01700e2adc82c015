import ua_parser.regex
import ua_parser_rs

from tracker.domain.visitor import Agent
from tracker.facts import agents
from tracker.facts.agents import parse_agent

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_WEBVIEW = (
    "Mozilla/5.0 (Linux; Android 13; SM-S911B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36"
)
FACEBOOK_ANDROID = ANDROID_WEBVIEW + " [FB_IAB/FB4A;FBAV/460.0.0.48.109;]"
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/124.0.6367.91 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html)"
)


def test_desktop_chrome_on_windows():
    assert parse_agent(CHROME_WINDOWS) == Agent(
        device="desktop", os="Windows", os_version="10", browser="Chrome", browser_version="124"
    )


def test_iphone_safari():
    assert parse_agent(SAFARI_IPHONE) == Agent(
        device="mobile", os="iOS", os_version="17", browser="Mobile Safari", browser_version="17"
    )


def test_android_app_webview():
    assert parse_agent(ANDROID_WEBVIEW) == Agent(
        device="mobile",
        os="Android",
        os_version="13",
        browser="Chrome Mobile WebView",
        browser_version="124",
    )


def test_facebook_in_app_browser_is_named_after_the_app():
    agent = parse_agent(FACEBOOK_ANDROID)
    assert (agent.device, agent.os, agent.browser, agent.browser_version) == (
        "mobile",
        "Android",
        "Facebook",
        "460",
    )
    assert not agent.is_crawler


def test_tablets():
    assert parse_agent(SAFARI_IPAD).device == "tablet"
    assert parse_agent(SAFARI_IPAD).os == "iOS"
    assert parse_agent(CHROME_ANDROID_TABLET).device == "tablet"


def test_googlebot_is_a_crawler():
    agent = parse_agent(GOOGLEBOT)
    assert agent.is_crawler
    assert (agent.device, agent.browser, agent.browser_version) == ("other", "Googlebot", "2")
    # The smartphone crawler looks like a phone, and is still a crawler.
    assert parse_agent(GOOGLEBOT_SMARTPHONE).is_crawler


def test_curl_is_a_crawler():
    assert parse_agent("curl/8.4.0") == Agent(
        device="other", browser="curl", browser_version="8", is_crawler=True
    )


def test_empty_user_agent():
    assert parse_agent("") == Agent()


def test_unknown_families_are_absent_not_other():
    agent = parse_agent("SomethingNobodyKnows v1")
    assert (agent.os, agent.browser, agent.browser_version) == (None, None, None)


def test_the_rust_accelerator_parses():
    # A silent fall-back to the pure-Python matchers would cost 40 times more a parse.
    assert isinstance(agents._resolver(), ua_parser.regex.Resolver)
    assert isinstance(agents._resolver().ua, ua_parser_rs.UserAgentExtractor)


def test_raw_header_bytes_do_not_break_the_parser():
    # Non-UTF-8 bytes in a header reach us as lone surrogates.
    agent = parse_agent(CHROME_WINDOWS + " \udcff\udcfe")
    assert (agent.device, agent.os, agent.browser) == ("desktop", "Windows", "Chrome")
