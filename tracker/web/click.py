"""The click redirect: `GET /c/{campaign_key}`."""

import time
from typing import Any

import orjson
from aiohttp import web

from tracker.domain.auth import client_address
from tracker.domain.clickid import new_click_id
from tracker.domain.macros import render
from tracker.domain.params import clean_free_text
from tracker.domain.text import clean_optional
from tracker.store.clicks import ClickWriteError
from tracker.web.appkeys import CLICK_WRITER, CONFIG, SETTINGS, TRUSTED_PROXIES
from tracker.web.errors import ApiError

SUB_NAMES = tuple(f"sub{i}" for i in range(1, 11))
_RESERVED = frozenset(SUB_NAMES)


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value[:limit]


async def click(request: web.Request) -> web.StreamResponse:
    """Record a click and redirect to the chosen offer.

    The 302 goes out only after the click record is in Redis and on the sink
    stream, or (Redis failing or slow) fsynced to this process's spool for
    replay, so every visitor who reaches an offer has a click to convert on.
    """
    app = request.app
    campaign = app[CONFIG].snapshot.campaigns.get(request.match_info["campaign_key"])
    if campaign is None:
        raise ApiError(404, "unknown campaign")
    settings = app[SETTINGS]
    limit = settings.click_max_param_length
    query = clean_free_text(request.query.items())
    now_ms = time.time_ns() // 1_000_000
    click_id = new_click_id(now_ms)
    offer = campaign.offers.pick()

    external_id = _clip(query.get(campaign.external_id_param), limit)
    cost = campaign.click_cost(query.get(campaign.cost_param))
    cost_text = str(cost) if cost is not None else None

    record: dict[str, Any] = {
        "click_id": click_id,
        "created_ms": now_ms,
        "campaign_id": campaign.id,
        "offer_id": offer.id,
        "traffic_source_id": campaign.traffic_source_id,
        "external_id": external_id,
        "cost": cost_text,
    }
    params: dict[str, str] = {}
    skip = (campaign.external_id_param, campaign.cost_param)
    for name, value in query.items():
        if name in _RESERVED:
            record[name] = value[:limit]
        elif name not in skip and name not in params and len(params) < settings.click_max_params:
            params[name[:64]] = value[:limit]
    if params:
        record["params"] = params
    headers = request.headers
    record["ip"] = client_address(
        request.remote, headers.getall("X-Forwarded-For", ()), app[TRUSTED_PROXIES]
    )
    record["user_agent"] = _clip(clean_optional(headers.get("User-Agent")), limit)
    record["referrer"] = _clip(clean_optional(headers.get("Referer")), limit)

    try:
        await app[CLICK_WRITER].write(click_id, orjson.dumps(record), campaign.ttl_seconds)
    except ClickWriteError:
        raise ApiError(503, "click could not be recorded, try again") from None

    macros: dict[str, str | None] = dict(params)
    macros[campaign.external_id_param] = external_id
    macros[campaign.cost_param] = _clip(query.get(campaign.cost_param), limit)
    macros.update(
        clickid=click_id,
        campaign_id=str(campaign.id),
        offer_id=str(offer.id),
        traffic_source_id=str(campaign.traffic_source_id),
        external_id=external_id,
        cost=cost_text,
    )
    for name in SUB_NAMES:
        macros[name] = record.get(name)
    return web.Response(status=302, headers={"Location": render(offer.url, macros)})


async def probe_campaign(request: web.Request) -> web.StreamResponse:
    """HEAD on a click URL: link checkers get an answer, and no click is recorded."""
    known = request.match_info["campaign_key"] in request.app[CONFIG].snapshot.campaigns
    return web.Response(status=200 if known else 404)
