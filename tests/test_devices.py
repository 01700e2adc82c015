import time

import pytest

from tracker.domain.devices import (
    device_type,
    implausible_user_agent,
    major_version,
    primary_language,
)

IPAD = "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148 Safari/604.1"
ANDROID_PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/124.0.0.0 Mobile Safari/537.36"
ANDROID_TABLET = "Mozilla/5.0 (Linux; Android 13; SM-X700) Chrome/124.0.0.0 Safari/537.36"
WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0.0.0 Safari/537.36"


@pytest.mark.parametrize(
    ("os_family", "device_family", "user_agent", "expected"),
    [
        ("iOS", "iPad", IPAD, "tablet"),
        ("iOS", "iPhone", IPHONE, "mobile"),
        ("Android", "Pixel 8", ANDROID_PHONE, "mobile"),
        ("Android", "SM-X700", ANDROID_TABLET, "tablet"),
        ("Android", "Kindle", "Mozilla/5.0 (Linux; Android 11; KFTRWI) Silk/124.2.5", "tablet"),
        ("Android", None, "Mozilla/5.0 (Android 4.4; Tablet; rv:41.0) Firefox/41.0", "tablet"),
        ("Android", None, "Mozilla/5.0 (Android 4.4; Mobile; rv:41.0) Firefox/41.0", "mobile"),
        ("Android", "Samsung SM-A536B", "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B)", "mobile"),
        ("Windows Phone", "Lumia 950", "Mozilla/5.0 (Windows Phone 10.0) Mobile", "mobile"),
        (None, "Generic Feature Phone", "Opera/9.80 (J2ME/MIDP; Opera Mini/5.1)", "mobile"),
        ("Windows", None, WINDOWS, "desktop"),
        (
            "Windows",
            None,
            "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Tablet PC 2.0;)",
            "desktop",
        ),
        ("Mac OS X", "Mac", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)", "desktop"),
        ("Linux", None, "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Firefox/125.0", "desktop"),
        ("Chrome OS", None, "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) Chrome/124", "desktop"),
        ("Ubuntu", None, "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0)", "desktop"),
        (None, "Spider", "Mozilla/5.0 (compatible; Googlebot/2.1)", "other"),
        ("Tizen", "Samsung SMART-TV", "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0)", "other"),
        (None, "PlayStation 5", "Mozilla/5.0 (PlayStation 5 3.11) AppleWebKit/605.1.15", "other"),
        (None, None, "curl/8.4.0", "other"),
        (None, None, "", "other"),
    ],
)
def test_device_type(os_family, device_family, user_agent, expected):
    assert device_type(os_family, device_family, user_agent) == expected


@pytest.mark.parametrize(
    ("version", "major"),
    [
        ("124", "124"),
        ("124.0.6367", "124"),
        ("XP", "XP"),
        ("", None),
        (None, None),
        ("9" * 40, "9" * 16),
    ],
)
def test_major_version(version, major):
    assert major_version(version) == major


@pytest.mark.parametrize(
    ("header", "language"),
    [
        ("de-CH,de;q=0.9,en;q=0.8", "de"),
        ("en-US,en;q=0.9", "en"),
        ("EN-gb", "en"),
        ("fr;q=0.5, de;q=0.8", "de"),  # highest q wins, not the first
        ("fr;q=0.8,de;q=0.8", "fr"),  # the first of equals
        ("*", None),
        ("*;q=1, pt-BR;q=0.4", "pt"),
        ("en;q=0", None),
        ("en;q=0.000, es;q=0.001", "es"),
        ("zh-Hant-TW", "zh"),
        ("fil-PH", "fil"),
        ("en_US", "en"),
        ("x-klingon, i-navajo, de;q=0.1", "de"),
        ("en;q=1.5, it;q=0.3", "it"),  # q over 1 is malformed
        ("en;q=abc", None),
        ("en;q=nan", None),
        ("en; Q = 0.7 ", "en"),
        ("12-34, ;q=1, ,,", None),
        ("deutsch", None),
        ("", None),
        (None, None),
        ("\ufffd\x00", None),
    ],
)
def test_primary_language(header, language):
    assert primary_language(header) == language


def test_primary_language_reads_only_the_first_entries():
    header = ",".join(["xx;q=0.1"] * 15 + ["de;q=0.9"] + ["en"] * 100)
    assert primary_language(header) == "de"


@pytest.mark.parametrize(
    "header",
    [
        "a" * 8192,
        ",".join(["en-US;q=0.5"] * 700),
        ";" * 8192,
        "en;q=" + " " * 8180 + "x",
        "-" * 8192,
        ("de-" + "x" * 60 + ";q=0.9,") * 120,
    ],
)
def test_primary_language_bounded_on_hostile_headers(header):
    """Linear in what it reads: an 8 KB hostile header costs the same order as a plain one
    (CPU time of the same process, a ratio, so a busy machine does not fail it; a regex
    that backtracks would be thousands of times slower)."""

    def cost(value: str) -> float:
        started = time.process_time()
        for _ in range(200):
            primary_language(value)
        return time.process_time() - started

    plain = max(cost("de-DE,de;q=0.9,en;q=0.8"), 1e-4)
    assert cost(header) < plain * 200


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        (None, "empty-user-agent"),
        ("", "empty-user-agent"),
        ("   ", "empty-user-agent"),
        ("-", "absurd-user-agent"),
        ("Mozilla", "absurd-user-agent"),
        ("Mozilla/5.0", "absurd-user-agent"),
        ("Mozilla/4.0 (compatible)", "absurd-user-agent"),
        ("1234567890123", "absurd-user-agent"),
        ("Mozilla/5.0 (Windows NT 10.0)" + "x" * 1000, "absurd-user-agent"),
        ("Mozilla/5.0 (X11)\x01Chrome/1", "absurd-user-agent"),
        ("Deno/1.40.0", "absurd-user-agent"),
        ("node-fetch", "absurd-user-agent"),
        ("WinHttp.WinHttpRequest.5", "absurd-user-agent"),
        (WINDOWS + " Puppeteer", "absurd-user-agent"),
        (WINDOWS, None),
        (IPHONE, None),
        ("Opera/9.80 (J2ME/MIDP; Opera Mini/5.1.21214/28.2725; U; ru) Presto/2.8.119", None),
        ("MyApp/1.0 CFNetwork/1410.0.3 Darwin/22.6.0", None),
        ("Mozilla/5.0 (Nodes; Linux)", None),
    ],
)
def test_implausible_user_agent(user_agent, reason):
    assert implausible_user_agent(user_agent) == reason
