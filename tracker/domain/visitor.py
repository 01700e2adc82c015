"""What the tracker knows about the visitor behind a click."""

from dataclasses import dataclass

from tracker.domain.addresses import Address

DEVICE_TYPES = ("desktop", "mobile", "tablet", "other")


@dataclass(frozen=True, slots=True)
class Geo:
    """Where an address is, as far as the GeoIP data knows."""

    country: str | None = None  # ISO 3166 alpha-2, upper case
    region: str | None = None
    city: str | None = None
    asn: int | None = None
    isp: str | None = None  # the network's organisation name


@dataclass(frozen=True, slots=True)
class Agent:
    """What a User-Agent says about the visitor's device and software."""

    device: str = "other"  # one of DEVICE_TYPES
    os: str | None = None
    os_version: str | None = None  # major version
    browser: str | None = None
    browser_version: str | None = None  # major version
    is_crawler: bool = False


NO_GEO = Geo()
NO_AGENT = Agent()


# Not frozen, though nothing changes it once built: one is built per click, and a frozen
# dataclass's __init__ (object.__setattr__ per field) costs three times as much.
@dataclass(slots=True)
class Visitor:
    """Every fact about one click's visitor, gathered before the route is chosen."""

    ip: str | None
    user_agent: str | None
    referrer: str | None
    language: str | None  # primary language subtag, lower case (`de`)
    geo: Geo = NO_GEO
    agent: Agent = NO_AGENT
    # Why the click is a bot (`crawler`, `empty-user-agent`, `ip-range`, `data-center`, ...).
    bot_reason: str | None = None
    # `ip` as parsed by whoever gathered the facts, so that rules need not parse it again;
    # None when it was not parsed or is not an address.
    address: Address | None = None

    @property
    def is_bot(self) -> bool:
        return self.bot_reason is not None
