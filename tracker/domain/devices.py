"""Facts read from request headers: device type, versions, language, and User-Agents
no browser sends.

Everything here is pure; the User-Agent parser's names (`iOS`, `Android`, `iPad`,
`Spider`) are its input, not something this module computes.
"""

import re

from tracker.domain.visitor import DEVICE_TYPES

DESKTOP, MOBILE, TABLET, OTHER = DEVICE_TYPES

_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "Linux",
        "Chrome OS",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Red Hat",
        "SUSE",
        "openSUSE",
        "Mandriva",
        "Gentoo",
        "Slackware",
        "Arch Linux",
        "Linux Mint",
        "Kubuntu",
        "Xubuntu",
        "CentOS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
        "Solaris",
    }
)
_MOBILE_OS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "BlackBerry Tablet OS",
        "Symbian OS",
        "Symbian^3",
        "KaiOS",
        "Firefox OS",
        "HarmonyOS",
        "Tizen",
        "Bada",
        "webOS",
        "MeeGo",
        "Maemo",
        "Sailfish",
    }
)
_TABLET_DEVICES = frozenset({"iPad", "Kindle", "Kindle Fire", "Generic Tablet"})
_MOBILE_DEVICES = frozenset({"iPhone", "iPod", "Generic Smartphone", "Generic Feature Phone"})
# Devices with an OS the parser calls mobile or desktop that are neither (TVs, consoles).
_OTHER_MARKERS = ("SMART-TV", "SmartTV", "Smart TV", "PlayStation", "Xbox", "Nintendo", "CrKey")


def device_type(os_family: str | None, device_family: str | None, user_agent: str) -> str:
    """`desktop`, `mobile`, `tablet` or `other`, from the User-Agent parser's OS and device
    families and the User-Agent itself (for the `Mobile` and `Tablet` tokens)."""
    if device_family == "Spider":
        return OTHER
    if any(marker in user_agent for marker in _OTHER_MARKERS):
        return OTHER
    if device_family in _TABLET_DEVICES or "Tablet;" in user_agent or "iPad" in user_agent:
        return TABLET
    if os_family == "Android":
        # Android tablets' browsers leave out the `Mobile` token that phones send.
        # Apps' own HTTP clients (Dalvik) send neither: most of them are phones.
        if "Mobile" in user_agent or "Dalvik/" in user_agent:
            return MOBILE
        return TABLET
    if (
        os_family in _MOBILE_OS
        or device_family in _MOBILE_DEVICES
        or "Mobile" in user_agent
        or "Mobi/" in user_agent
    ):
        return MOBILE
    if os_family in _DESKTOP_OS or (os_family is not None and os_family.startswith("Windows")):
        return DESKTOP
    return OTHER


_MAX_VERSION = 16


def major_version(version: str | None) -> str | None:
    """The major part of a version as the parser gives it (`124` of `124.0.6367`), or
    None for an absent or empty one."""
    if not version:
        return None
    major = version.split(".", 1)[0].strip()
    return major[:_MAX_VERSION] or None


# How many list entries of an Accept-Language header are read; browsers send a handful.
_MAX_LANGUAGES = 16
_PRIMARY = re.compile(r"[A-Za-z]{2,3}")
_QVALUE = re.compile(r"\s*[qQ]\s*=\s*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\s*")


def primary_language(accept_language: str | None) -> str | None:
    """The primary subtag (`de`) of the language the visitor prefers most, from an
    Accept-Language header: the highest q wins, the first of equals; `*`, q=0 and
    malformed entries count for nothing. Reads at most the first 16 entries."""
    if not accept_language:
        return None
    best: str | None = None
    best_q = 0.0
    for entry in accept_language.split(",", _MAX_LANGUAGES)[:_MAX_LANGUAGES]:
        tag, _, params = entry.partition(";")
        tag = tag.strip()
        primary = tag.replace("_", "-").split("-", 1)[0]
        if not _PRIMARY.fullmatch(primary):
            continue
        q = 1.0
        if params:
            match = _QVALUE.fullmatch(params.split(";", 1)[0])
            if match is None:
                continue
            q = float(match.group(1))
        if q > best_q:
            best, best_q = primary.lower(), q
            if q == 1.0:
                break  # nothing after it can be preferred
    return best


# Longest User-Agent a browser plausibly sends; real ones stay well under 500 characters.
MAX_USER_AGENT = 1000
MIN_USER_AGENT = 10
# HTTP clients and automation that crawlerdetect (checked first) does not know. It does
# catch curl, Wget, python-requests, Go-http-client, okhttp, libwww, Java, Scrapy,
# HeadlessChrome and PhantomJS, so those are not repeated here.
_TOOLS = re.compile(
    r"^(?:Mozilla/\d+(?:\.\d+)?(?: \(compatible\))?|node(?:-fetch)?(?:/.*)?|Deno/.*|Bun/.*"
    r"|WinHttp.*|Mechanize/.*)$"
    r"|\b(?:Puppeteer|Playwright|Selenium|Cypress)\b",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def implausible_user_agent(user_agent: str | None) -> str | None:
    """Why no browser would send this User-Agent (`empty-user-agent`,
    `absurd-user-agent`), or None when it looks like one might."""
    if user_agent is None or not user_agent.strip():
        return "empty-user-agent"
    if (
        len(user_agent) > MAX_USER_AGENT
        or len(user_agent.strip()) < MIN_USER_AGENT
        or not any(c.isalpha() for c in user_agent)
        or _CONTROL.search(user_agent)
        or _TOOLS.search(user_agent.strip())
    ):
        return "absurd-user-agent"
    return None
