"""In-memory view of the configuration the click and postback paths need."""

import functools
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, tzinfo
from decimal import Decimal

from tracker.domain.macros import ClickTemplate, Template, compile_click_template
from tracker.domain.money import parse_money_or_none
from tracker.domain.routing import WeightedChoice
from tracker.domain.rules import ClickFacts, Rule
from tracker.domain.visitor import Visitor


def new_campaign_key() -> str:
    """A fresh campaign key for the click URL `/c/{key}`: 12 URL-safe characters that begin
    with a letter or digit, so the key is never mistaken for an option on a command line."""
    while True:
        key = secrets.token_urlsafe(9)
        if key[0].isalnum():
            return key


@dataclass(frozen=True, slots=True)
class OfferRoute:
    id: int
    url: Template
    affiliate_network_id: int
    payout: Decimal | None
    currency: str


@dataclass(frozen=True, slots=True)
class LanderRoute:
    id: int
    url: Template


NO_LANDERS: WeightedChoice[LanderRoute] = WeightedChoice(())


@dataclass(frozen=True, slots=True)
class FlowPath:
    """Where a click goes: to a lander and on to an offer, or (no landers) straight to
    an offer."""

    offers: WeightedChoice[OfferRoute]
    landers: WeightedChoice[LanderRoute] = NO_LANDERS

    def offer_by_id(self, offer_id: int) -> OfferRoute | None:
        """The path's offer with this id (weight above zero), or None."""
        for offer in self.offers:
            if offer.id == offer_id:
                return offer
        return None


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
    # Whether the conversion pixel may convert this network's clicks (it has no auth).
    allow_pixel: bool = False


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
    offers: WeightedChoice[OfferRoute]  # the default path's
    # The traffic source's cap on a visitor-reported (`auto`) cost per click.
    max_click_cost: Decimal | None = None
    landers: WeightedChoice[LanderRoute] = NO_LANDERS  # the default path's
    # In the stored order; a rule whose offers are all archived or weigh zero is passed over.
    rules: tuple[Rule[FlowPath], ...] = ()
    bot_action: str = "offer"  # offer | url | 404
    bot_url: Template | None = None
    unique_window_hours: int = 24
    timezone: tzinfo = UTC
    default_path: FlowPath = field(init=False, repr=False, compare=False)
    _live_rules: tuple[Rule[FlowPath], ...] = field(init=False, repr=False, compare=False)
    _paths: dict[int, FlowPath] = field(init=False, repr=False, compare=False)
    _default_choice: tuple[int, FlowPath] = field(init=False, repr=False, compare=False)
    _uses_uniqueness: bool = field(init=False, repr=False, compare=False)
    _fixed_click_cost: Decimal | None = field(init=False, repr=False, compare=False)
    # The offer, lander and bot URLs bound to this campaign's parameter names.
    _offer_urls: dict[int, ClickTemplate] = field(init=False, repr=False, compare=False)
    _lander_urls: dict[int, ClickTemplate] = field(init=False, repr=False, compare=False)
    bot_click_url: ClickTemplate | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once per configuration load, so a click pays for none of it.
        default = FlowPath(self.offers, self.landers)
        live = tuple(rule for rule in self.rules if rule.path.offers)
        fixed = None
        if self.cost_value is not None and self.cost_model == "cpc":
            fixed = self.cost_value
        elif self.cost_value is not None and self.cost_model == "cpm":
            # A thousandth, exactly: scaleb moves the exponent and never rounds here.
            fixed = self.cost_value.scaleb(-3)
        set_ = object.__setattr__
        set_(self, "default_path", default)
        set_(self, "_live_rules", live)
        set_(self, "_paths", {rule.index: rule.path for rule in live})
        set_(self, "_default_choice", (-1, default))
        set_(self, "_uses_uniqueness", any(rule.uses_uniqueness for rule in live))
        set_(self, "_fixed_click_cost", fixed)
        paths = (default, *(rule.path for rule in live))
        bind = self._bind
        offers = {offer.id: offer for path in paths for offer in path.offers}
        landers = {lander.id: lander for path in paths for lander in path.landers}
        set_(self, "_offer_urls", {i: bind(o.url) for i, o in offers.items()})
        set_(self, "_lander_urls", {i: bind(lp.url) for i, lp in landers.items()})
        set_(self, "bot_click_url", bind(self.bot_url) if self.bot_url is not None else None)

    @property
    def ttl_seconds(self) -> int:
        return self.attribution_window_days * 86400

    def uses_uniqueness_rules(self) -> bool:
        """Whether a rule tests `is_unique`, so uniqueness must be known before the path
        is chosen."""
        return self._uses_uniqueness

    def choose_path(
        self, visitor: Visitor, params: Mapping[str, str], is_unique: bool | None, now_ms: int
    ) -> tuple[int, FlowPath]:
        """The path of the first rule whose conditions all hold, with that rule's index
        in the stored list; (-1, the default path) when none does.

        `params` are the click URL's parameters; `is_unique` is None when not (yet)
        known, which fails `is_unique in` and passes `is_unique not_in`."""
        if not self._live_rules:
            return self._default_choice
        facts = ClickFacts(visitor, params, is_unique, now_ms, self.timezone)
        for rule in self._live_rules:
            if rule.matches(facts):
                return rule.index, rule.path
        return self._default_choice

    def offer_url(self, offer: OfferRoute) -> ClickTemplate:
        """The URL template of one of the campaign's offers, bound to its parameters."""
        # Bound at load; an offer from elsewhere (not on a path of this campaign) now.
        return self._offer_urls.get(offer.id) or self._bind(offer.url)

    def lander_url(self, lander: LanderRoute) -> ClickTemplate:
        """The URL template of one of the campaign's landers, bound to its parameters."""
        return self._lander_urls.get(lander.id) or self._bind(lander.url)

    def _bind(self, template: Template) -> ClickTemplate:
        return compile_click_template(template, self.external_id_param, self.cost_param)

    def path_at(self, index: int) -> FlowPath:
        """The path that `choose_path` answered with `index`, for a click that has come
        back from its lander; the default path if that rule is gone or has no offers
        left (the configuration changed in between)."""
        return self._paths.get(index, self.default_path)

    def path_of_stored_click(
        self, offer_id: int, lander_id: int | None, wanted: int | None
    ) -> FlowPath:
        """The path of a click read back without its rule index (Postgres keeps none):
        of the paths (rules in order, then the default) that hold the click's offer and
        lander, the first that also holds the `wanted` offer, else the first; the
        default path when none does."""
        holding = [
            path
            for path in (*(rule.path for rule in self._live_rules), self.default_path)
            if path.offer_by_id(offer_id) is not None
            and (lander_id is None or any(lander.id == lander_id for lander in path.landers))
        ]
        if wanted is not None:
            for path in holding:
                if path.offer_by_id(wanted) is not None:
                    return path
        return holding[0] if holding else self.default_path

    def click_cost(self, reported: str | None) -> Decimal | None:
        """The cost stored with a click.

        `cpc`: the campaign's fixed cost. `cpm`: a thousandth of `cost_value`, exactly.
        `cpa` and `revshare` cost nothing per click: their cost follows from conversions,
        and reports book it there. `auto`: the amount the traffic source put
        in the click URL, if it is a number from zero up to the source's cap; a
        malformed, negative or larger amount is stored as no cost (the click itself
        is always kept). Capping keeps one bad or hostile URL from inflating spend.
        """
        if self.cost_model != "auto":
            return self._fixed_click_cost
        cost = _reported_cost(reported)
        if cost is None or cost < 0:
            return None
        if self.max_click_cost is not None and cost > self.max_click_cost:
            return None
        return cost


@functools.lru_cache(maxsize=4096)
def _reported_cost(text: str | None) -> Decimal | None:
    # A source sends a few bid amounts over and over; a Decimal is immutable.
    return parse_money_or_none(text)


@dataclass(slots=True)
class ConfigSnapshot:
    """Active campaigns by key for clicks; every campaign, offer, lander and network
    (archived too) by id for postbacks and lander click-throughs; exchange rates by currency."""

    campaigns: dict[str, CampaignRoute] = field(default_factory=dict)
    campaigns_by_id: dict[int, CampaignRoute] = field(default_factory=dict)
    offers: dict[int, OfferRoute] = field(default_factory=dict)
    landers: dict[int, LanderRoute] = field(default_factory=dict)
    networks: dict[int, NetworkRoute] = field(default_factory=dict)
    rates: dict[str, list[tuple[date, Decimal]]] = field(default_factory=dict)
