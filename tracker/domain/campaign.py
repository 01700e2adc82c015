"""In-memory view of the configuration the click and postback paths need."""

from dataclasses import dataclass, field
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
    postback_token: str


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
    offers: WeightedChoice[OfferRoute]

    @property
    def ttl_seconds(self) -> int:
        return self.attribution_window_days * 86400


@dataclass(slots=True)
class ConfigSnapshot:
    """Active campaigns by key, and every offer (archived too) by id for postbacks."""

    campaigns: dict[str, CampaignRoute] = field(default_factory=dict)
    campaigns_by_id: dict[int, CampaignRoute] = field(default_factory=dict)
    offers: dict[int, OfferRoute] = field(default_factory=dict)
