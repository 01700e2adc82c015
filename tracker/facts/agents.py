"""What a User-Agent says: device type, OS and browser (ua-parser with its Rust
accelerator, ua-parser-rs), and whether it is a known crawler (crawlerdetect)."""

import functools

from crawlerdetect import CrawlerDetect  # type: ignore[import-untyped]
from ua_parser import Domain, load_lazy_builtins

# Imported by name rather than through ua_parser's best-available choice: without the
# accelerator a parse costs about 40 times more, and that should fail loudly, not slowly.
from ua_parser.regex import Resolver as RegexResolver

from tracker.domain.devices import device_type, major_version
from tracker.domain.text import clean_text
from tracker.domain.visitor import Agent

# Family names come from the User-Agent text through the parser's patterns.
_MAX_NAME = 64


@functools.cache
def _resolver() -> RegexResolver:
    return RegexResolver(load_lazy_builtins())


@functools.cache
def _crawlers() -> CrawlerDetect:
    detector = CrawlerDetect()
    detector.is_crawler("warm-up")  # compiles its patterns now rather than on a click
    return detector


def load_agent_data() -> None:
    """Load the parser's and the crawler list's patterns (about 0.15 s, once per process)."""
    _resolver()
    _crawlers()


def _name(family: str | None) -> str | None:
    if not family or family == "Other":
        return None
    return family[:_MAX_NAME]


def parse_agent(user_agent: str) -> Agent:
    """Device type, OS and browser (family names as ua-parser gives them, versions as the
    major part) and crawlerdetect's verdict for one User-Agent. Not cached: callers keep
    their own cache (a crawlerdetect call costs about 0.4 ms)."""
    if not user_agent:
        return Agent()
    # Raw non-UTF-8 header bytes arrive as lone surrogates, which the Rust parser refuses.
    user_agent = clean_text(user_agent)
    parsed = _resolver()(user_agent, Domain.ALL)
    browser, os, device = parsed.user_agent, parsed.os, parsed.device
    os_family = _name(os.family) if os else None
    return Agent(
        device=device_type(os_family, device.family if device else None, user_agent),
        os=os_family,
        os_version=major_version(os.major) if os and os_family else None,
        browser=_name(browser.family) if browser else None,
        browser_version=major_version(browser.major) if browser and _name(browser.family) else None,
        is_crawler=bool(_crawlers().is_crawler(user_agent)),
    )
