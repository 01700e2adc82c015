"""The click record: one type, built by one pure function, stored by one column list.

The web process builds the record, Redis keeps it for the attribution window,
the sink writes it to Postgres, and postbacks copy part of it onto their
conversions; every one of them reads the column lists below.
"""

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from operator import attrgetter

import orjson

from tracker.domain.campaign import CampaignRoute, LanderRoute, OfferRoute
from tracker.domain.visitor import Visitor

SUB_NAMES = tuple(f"sub{i}" for i in range(1, 11))

# Visitor facts, stored with the click and copied onto its conversions.
FACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("country", "text"),
    ("region", "text"),
    ("city", "text"),
    ("asn", "bigint"),
    ("isp", "text"),
    ("device", "text"),
    ("os", "text"),
    ("os_version", "text"),
    ("browser", "text"),
    ("browser_version", "text"),
    ("language", "text"),
    ("is_bot", "boolean"),
    ("is_unique", "boolean"),
    ("lander_id", "bigint"),
)
# The columns of `clicks` a record fills, with their types (`created_ms` becomes
# `created_at`). Conversions copy COPIED_TO_CONVERSION of them.
CLICK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("click_id", "text"),
    ("created_ms", "bigint"),
    ("campaign_id", "bigint"),
    ("offer_id", "bigint"),
    ("traffic_source_id", "bigint"),
    ("external_id", "text"),
    ("cost", "numeric"),
    *((name, "text") for name in SUB_NAMES),
    ("params", "jsonb"),
    ("ip", "text"),
    ("user_agent", "text"),
    ("referrer", "text"),
    *FACT_COLUMNS,
    ("bot_reason", "text"),
)
COPIED_TO_CONVERSION: tuple[str, ...] = (
    "campaign_id",
    "offer_id",
    "traffic_source_id",
    "external_id",
    *SUB_NAMES,
    *(name for name, _ in FACT_COLUMNS),
    # What ad platforms match a conversion on (with the click's parameters, which a
    # conversion keeps as `click_params`: its own `params` are the postback's).
    "ip",
    "user_agent",
    "cost",
)


_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")


def visitor_id(cookie: str | None, ip: str | None, user_agent: str | None) -> tuple[str, bool]:
    """Who is clicking, for counting unique clicks, and whether to set the cookie.

    The tracker's first-party cookie when the visitor brings a well-formed one;
    otherwise a hash of the address and User-Agent, which then becomes the
    cookie, so that the visitor stays the same one when the address changes."""
    if cookie is not None and _VISITOR_ID.fullmatch(cookie):
        return cookie, False
    digest = hashlib.blake2b(
        f"{ip}\x00{user_agent}".encode(errors="surrogatepass"), digest_size=16
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), True


@dataclass(slots=True)
class ClickRecord:
    """One click as stored. Serialised in field order, so `is_unique` comes last: the
    store decides it in the same round trip as the write, by patching the JSON tail."""

    click_id: str
    created_ms: int
    campaign_id: int
    offer_id: int
    traffic_source_id: int
    external_id: str | None
    cost: str | None
    sub1: str | None = None
    sub2: str | None = None
    sub3: str | None = None
    sub4: str | None = None
    sub5: str | None = None
    sub6: str | None = None
    sub7: str | None = None
    sub8: str | None = None
    sub9: str | None = None
    sub10: str | None = None
    params: dict[str, str] | None = None
    ip: str | None = None
    user_agent: str | None = None
    referrer: str | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    asn: int | None = None
    isp: str | None = None
    device: str | None = None
    os: str | None = None
    os_version: str | None = None
    browser: str | None = None
    browser_version: str | None = None
    language: str | None = None
    is_bot: bool = False
    bot_reason: str | None = None
    lander_id: int | None = None
    # The rule whose path the click took (-1: the default path), for the lander click.
    path: int = -1
    is_unique: bool | None = None


# Every member but `is_unique`, in the record's order, and a getter of their values.
_STORED_MEMBERS = tuple(f.name for f in fields(ClickRecord) if f.name != "is_unique")
_stored_values = attrgetter(*_STORED_MEMBERS)


def stored_json(record: ClickRecord) -> bytes:
    """The record as Redis and the stream keep it: JSON without its null members (about
    half a typical click's bytes; readers and the sink take a missing member as null),
    and `is_unique` last even when null, as the store decides it by that `null}` tail."""
    members = {
        name: value
        for name, value in zip(_STORED_MEMBERS, _stored_values(record), strict=True)
        if value is not None
    }
    members["is_unique"] = record.is_unique
    return orjson.dumps(members)


@dataclass(slots=True)
class ClickPlan:
    """A click's record and where its visitor goes."""

    record: ClickRecord
    offer: OfferRoute
    lander: LanderRoute | None


@dataclass(frozen=True, slots=True)
class ParamLimits:
    max_params: int
    max_length: int


def plan_click(
    campaign: CampaignRoute,
    visitor: Visitor,
    query: Mapping[str, str],
    click_id: str,
    now_ms: int,
    limits: ParamLimits,
    is_unique: bool | None = None,
) -> ClickPlan:
    """Build the click's record and choose its path, offer and lander.

    `query` is the click URL's parameters (cleaned, first value of each name);
    sub ids, the external id and the cost parameter have columns of their own,
    up to `limits.max_params` others are kept in `params`, every value cut to
    `limits.max_length` characters."""
    limit = limits.max_length
    external_id = query.get(campaign.external_id_param)
    if external_id is not None:
        external_id = external_id[:limit]
    cost = campaign.click_cost(query.get(campaign.cost_param))
    index, path = campaign.choose_path(visitor, query, is_unique, now_ms)
    offer = path.offers.pick()
    lander = path.landers.pick() if path.landers else None
    # One pass over the parameters: sub ids to their columns, others (the external id
    # and cost parameters aside) to `params`.
    subs: list[str | None] = [None] * 10
    params: dict[str, str] = {}
    skip = (campaign.external_id_param, campaign.cost_param)
    max_params = limits.max_params
    for name, value in query.items():
        sub = _SUB_INDEX.get(name)
        if sub is not None:
            subs[sub] = value[:limit]
        elif name not in skip and name not in params and len(params) < max_params:
            params[name[:64]] = value[:limit]
    geo, agent = visitor.geo, visitor.agent
    user_agent, referrer = visitor.user_agent, visitor.referrer
    # Positional, in field order: by keyword, the record's 37 fields cost several times
    # as much to fill (tests/test_click_record.py checks the order).
    record = ClickRecord(
        click_id,
        now_ms,
        campaign.id,
        offer.id,
        campaign.traffic_source_id,
        external_id,
        str(cost) if cost is not None else None,
        subs[0],
        subs[1],
        subs[2],
        subs[3],
        subs[4],
        subs[5],
        subs[6],
        subs[7],
        subs[8],
        subs[9],
        params or None,
        visitor.ip,
        user_agent[:limit] if user_agent is not None else None,
        referrer[:limit] if referrer is not None else None,
        geo.country,
        geo.region,
        geo.city,
        geo.asn,
        geo.isp,
        agent.device,
        agent.os,
        agent.os_version,
        agent.browser,
        agent.browser_version,
        visitor.language,
        visitor.bot_reason is not None,
        visitor.bot_reason,
        lander.id if lander is not None else None,
        index,
        is_unique,
    )
    return ClickPlan(record, offer, lander)


_SUB_INDEX = {name: i for i, name in enumerate(SUB_NAMES)}
