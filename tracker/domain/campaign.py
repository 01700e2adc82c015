"""In-memory view of the configuration the click and postback paths need."""

import ipaddress
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from tracker.domain.macros import Template
from tracker.domain.routing import WeightedChoice


@dataclass(frozen=True, slots=True)
class OfferRoute:
    id: int
    url: Template
    affiliate_network_id: int
    payout: Decimal | None
    currency: str


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class NetworkRoute:
    """How postbacks from one affiliate network are authenticated and read."""

    id: int
    postback_token: str
    require_token: bool
    ip_allowlist: tuple[IpNetwork, ...]
    signing_secret: str | None
    status_map: dict[str, str]
    duplicate_policy: str
    archived: bool = False


@dataclass(frozen=True, slots=True)
class CampaignRoute:
    id: int
    key: str
    traffic_source_id: int
    external_id_param: str
    cost_param: str
    cost_model: str
    cost_value: Decimal | None
    attribution_window_days: int
    report_currency: str
    offers: WeightedChoice[OfferRoute]

    @property
    def ttl_seconds(self) -> int:
        return self.attribution_window_days * 86400


@dataclass(slots=True)
class ConfigSnapshot:
    """Active campaigns by key for clicks; every campaign, offer and network (archived
    too) by id for postbacks; exchange rates by currency."""

    campaigns: dict[str, CampaignRoute] = field(default_factory=dict)
    campaigns_by_id: dict[int, CampaignRoute] = field(default_factory=dict)
    offers: dict[int, OfferRoute] = field(default_factory=dict)
    networks: dict[int, NetworkRoute] = field(default_factory=dict)
    rates: dict[str, list[tuple[date, Decimal]]] = field(default_factory=dict)
