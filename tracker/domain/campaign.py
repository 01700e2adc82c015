"""In-memory view of the configuration the click and postback paths need."""

import ipaddress
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from tracker.domain.macros import Template
from tracker.domain.money import parse_money_or_none
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
    # After a token rotation the old token is accepted until this Unix time.
    previous_postback_token: str | None = None
    previous_token_expires_at: float | None = None
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
    # The traffic source's cap on a visitor-reported (`auto`) cost per click.
    max_click_cost: Decimal | None = None

    @property
    def ttl_seconds(self) -> int:
        return self.attribution_window_days * 86400

    def click_cost(self, reported: str | None) -> Decimal | None:
        """The cost stored with a click.

        `cpc`: the campaign's fixed cost. `auto`: the amount the traffic source put
        in the click URL, if it is a number from zero up to the source's cap; a
        malformed, negative or larger amount is stored as no cost (the click itself
        is always kept). Capping keeps one bad or hostile URL from inflating spend.
        """
        if self.cost_model == "cpc":
            return self.cost_value
        if self.cost_model != "auto":
            return None
        cost = parse_money_or_none(reported)
        if cost is None or cost < 0:
            return None
        if self.max_click_cost is not None and cost > self.max_click_cost:
            return None
        return cost


@dataclass(slots=True)
class ConfigSnapshot:
    """Active campaigns by key for clicks; every campaign, offer and network (archived
    too) by id for postbacks; exchange rates by currency."""

    campaigns: dict[str, CampaignRoute] = field(default_factory=dict)
    campaigns_by_id: dict[int, CampaignRoute] = field(default_factory=dict)
    offers: dict[int, OfferRoute] = field(default_factory=dict)
    networks: dict[int, NetworkRoute] = field(default_factory=dict)
    rates: dict[str, list[tuple[date, Decimal]]] = field(default_factory=dict)
