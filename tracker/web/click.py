"""The click redirect `GET /c/{campaign_key}` and the lander click-through `GET /lp/click`."""

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter, time_ns
from types import SimpleNamespace

from aiohttp import web

from tracker.domain.addresses import AddressRanges
from tracker.domain.auth import forwarded_client, is_trusted
from tracker.domain.click import (
    ParamLimits,
    plan_click,
    stored_json,
    visitor_id,
)
from tracker.domain.clickid import is_click_id, new_click_id
from tracker.domain.params import clean_free_text, plain_query
from tracker.domain.text import clean_optional
from tracker.facts.visitors import VisitorFacts
from tracker.logs import REQUEST_ID
from tracker.metrics import Metrics
from tracker.settings import Settings
from tracker.store import keys
from tracker.store.clicks import ClickWriteError, ClickWriter
from tracker.store.config import ConfigCache
from tracker.web.access import REQUEST_TAG, RequestTag
from tracker.web.appkeys import (
    CLICK_READER,
    CLICK_SERVICES,
    CLICK_WRITER,
    CONFIG,
    COOKIE_ATTRIBUTES,
    ERRORS,
    METRICS,
    SETTINGS,
    TRUSTED_PROXIES,
    VISITOR_FACTS,
)
from tracker.web.errors import ApiError, JsonErrors

# First-party cookies: the visitor's last click (read by the lander click-through
# when its link has no clickid), and a visitor id for counting unique clicks.
CLICK_COOKIE = "tk_click"
VISITOR_COOKIE = "tk_visitor"
VISITOR_COOKIE_SECONDS = 400 * 86400
_VISITOR_MAX_AGE = f"; Max-Age={VISITOR_COOKIE_SECONDS}"
CF_COUNTRY_HEADER = "CF-IPCountry"
# The click route, as the metrics name it.
CLICK_ROUTE = "/c/{campaign_key}"


def cookie_attributes(settings: Settings) -> str:
    """Attributes shared by the tracker's cookies.

    Over https, `SameSite=None; Secure`: the conversion pixel on the advertiser's page
    is a cross-site request, which a Lax cookie does not go with. Browsers refuse
    `SameSite=None` without `Secure`, so over plain http the cookies stay Lax (and
    the pixel needs the click id in its URL)."""
    if settings.base_url().lower().startswith("https:"):
        return "; Path=/; HttpOnly; SameSite=None; Secure"
    return "; Path=/; HttpOnly; SameSite=Lax"


@dataclass(frozen=True, slots=True)
class ClickServices:
    """What the click handler reads from the app, looked up once at startup rather than
    key by key on every click."""

    errors: JsonErrors
    metrics: Metrics
    config: ConfigCache
    # A CDN's country header besides Cloudflare's, read from a trusted proxy ("": none).
    country_header: str
    trusted: AddressRanges
    facts: VisitorFacts
    writer: ClickWriter
    cookie_attributes: str
    limits: ParamLimits
    # Where each click's duration goes.
    timer: Callable[[float], None]


async def click_services(app: web.Application) -> None:
    """Startup: gather the click handler's services, once every one is open."""
    settings = app[SETTINGS]
    app[CLICK_SERVICES] = ClickServices(
        errors=app[ERRORS],
        metrics=app[METRICS],
        config=app[CONFIG],
        country_header=settings.country_header,
        trusted=app[TRUSTED_PROXIES],
        facts=app[VISITOR_FACTS],
        writer=app[CLICK_WRITER],
        cookie_attributes=app[COOKIE_ATTRIBUTES],
        limits=ParamLimits(settings.click_max_params, settings.click_max_param_length),
        timer=app[METRICS].route_timer(CLICK_ROUTE, "GET"),
    )


async def click(request: web.Request) -> web.StreamResponse:
    """Record a click and redirect to the lander or offer its path chooses.

    The 302 goes out only after the click record is in Redis and on the sink
    stream, or (Redis failing or slow) fsynced to this process's spool for
    replay, so every visitor who reaches an offer has a click to convert on.

    The route runs no middleware: the handler answers its own failures, and tags and
    times its request, as `JsonErrors.wrap` does for every other route.
    """
    services = request.app[CLICK_SERVICES]
    errors = services.errors
    tag = request[REQUEST_TAG] = RequestTag(request)
    token = REQUEST_ID.set(tag)
    started = perf_counter()
    try:
        refusal = errors.too_long(request)
        if refusal is not None:
            return refusal
        metrics = services.metrics
        campaign = services.config.snapshot.campaigns.get(request.match_info["campaign_key"])
        if campaign is None:
            metrics.count(metrics.clicks, "unknown_campaign", "false")
            raise ApiError(404, "unknown campaign")
        headers = request.headers
        trusted = services.trusted
        peer = request.remote
        cdn_country = None
        ip = peer
        if trusted and is_trusted(peer, trusted):  # once per click: the peer is a proxy of ours
            country_header = services.country_header
            cdn_country = headers.get(CF_COUNTRY_HEADER) or (
                headers.get(country_header) if country_header else None
            )
            forwarded = headers.getall("X-Forwarded-For", ())
            if forwarded:
                ip = forwarded_client(peer, forwarded, trusted)
        user_agent = clean_optional(headers.get("User-Agent"))
        visitor = services.facts.visitor(
            ip,
            user_agent,
            clean_optional(headers.get("Referer")),
            headers.get("Accept-Language"),
            cdn_country,
        )
        query = plain_query(request.rel_url.raw_query_string)
        if query is None:
            query = clean_free_text(request.query.items())
        now_ms = time_ns() // 1_000_000
        # Cookies are parsed only when the request has some.
        cookie = request.cookies.get(VISITOR_COOKIE) if "Cookie" in headers else None
        vid, new_visitor = visitor_id(cookie, ip, user_agent)
        campaign_id = campaign.id
        unique_ttl = campaign.unique_window_hours * 3600
        writer = services.writer
        by_rules = campaign.uses_uniqueness_rules()
        # Decided uniqueness puts the click in its visitor's shard, beside the unique-click key.
        shard = writer.shard_for(campaign_id, vid, unique_ttl > 0 or by_rules)
        click_id = new_click_id(now_ms, shard)
        unique_key = keys.unique_visitor_key(campaign_id, vid, shard)
        is_unique = None
        if by_rules:
            # A rule reads it, so it is decided before the path: one more round trip.
            is_unique = await writer.check_unique(unique_key, unique_ttl, click_id, shard)
            unique_ttl = 0
        plan = plan_click(campaign, visitor, query, click_id, now_ms, services.limits, is_unique)
        record = plan.record
        ttl = campaign.ttl_seconds
        try:
            decided = await writer.write(
                click_id, stored_json(record), ttl, unique_key, unique_ttl, shard
            )
        except ClickWriteError:
            metrics.count(metrics.clicks, "failed", "true" if record.is_bot else "false")
            raise ApiError(503, "click could not be recorded, try again") from None
        if decided is not None:
            record.is_unique = decided

        if record.is_bot and campaign.bot_action != "offer":
            if campaign.bot_action == "404" or campaign.bot_click_url is None:
                metrics.count(metrics.clicks, "bot_404", "true")
                raise ApiError(404, "not found")
            metrics.count(metrics.clicks, "bot_url", "true")
            target = campaign.bot_click_url
        elif plan.lander is None:
            metrics.count(metrics.clicks, "offer", "true" if record.is_bot else "false")
            target = campaign.offer_url(plan.offer)
        else:
            metrics.count(metrics.clicks, "lander", "true" if record.is_bot else "false")
            target = campaign.lander_url(plan.lander)
        response = web.Response(status=302)
        response_headers = response.headers
        response_headers["Location"] = target.render(record, query.get(campaign.cost_param))
        attributes = services.cookie_attributes
        response_headers.add("Set-Cookie", f"{CLICK_COOKIE}={click_id}; Max-Age={ttl}{attributes}")
        if new_visitor:
            response_headers.add(
                "Set-Cookie",
                f"{VISITOR_COOKIE}={vid}{_VISITOR_MAX_AGE}{attributes}",
            )
        return response
    except Exception as exc:
        return errors.respond(request, exc)
    finally:
        REQUEST_ID.reset(token)
        services.timer(perf_counter() - started)


async def lander_click(request: web.Request) -> web.StreamResponse:
    """The lander's call to action: record the click-through, redirect to the offer.

    The click id comes from `clickid`, else from the cookie the click redirect set.
    `offer=N` picks offer N when it is one of the click's path; otherwise the offer
    chosen at the click. A click of an archived campaign still goes through: the
    visitor is mid-funnel."""
    app = request.app
    given = request.query.get("clickid")
    click_id = given if given is not None else request.cookies.get(CLICK_COOKIE)
    if not click_id:
        raise ApiError(400, "missing clickid, and no click cookie")
    click_id = click_id.strip().lower()
    if not is_click_id(click_id):
        raise ApiError(400, "clickid is not a click id of this tracker")
    record = await app[CLICK_READER].fetch(click_id)
    if record is None:
        raise ApiError(404, "unknown click")
    campaign = app[CONFIG].snapshot.campaigns_by_id.get(record["campaign_id"])
    if campaign is None:
        raise ApiError(404, "unknown campaign")
    wanted = request.query.get("offer", "")
    wanted_id = int(wanted) if wanted.isascii() and wanted.isdigit() and len(wanted) < 19 else None
    index = record.get("path")
    if index is None:  # read from Postgres (the hot window passed), which keeps no rule index
        path = campaign.path_of_stored_click(record["offer_id"], record["lander_id"], wanted_id)
    else:
        path = campaign.path_at(index)
    offer = path.offer_by_id(wanted_id) if wanted_id is not None else None
    if offer is None:
        offer = path.offer_by_id(record["offer_id"])
    if offer is None:
        if not path.offers:
            raise ApiError(404, "the campaign has no offer for this click")
        offer = path.offers.pick()
    if record.get("lp_ms") is None or record["offer_id"] != offer.id:
        record["offer_id"] = offer.id
        try:
            await app[CLICK_WRITER].record_lander_click(
                record, campaign.ttl_seconds, time_ns() // 1_000_000
            )
        except ClickWriteError:
            raise ApiError(503, "click could not be recorded, try again") from None
    # The campaign's bound template, as on the click: the record read back gives its fields.
    url = campaign.offer_url(offer).render(SimpleNamespace(**record), record.get("cost"))
    raise web.HTTPFound(url)


async def probe_campaign(request: web.Request) -> web.StreamResponse:
    """HEAD on a click URL: link checkers get an answer, and no click is recorded."""
    known = request.match_info["campaign_key"] in request.app[CONFIG].snapshot.campaigns
    return web.Response(status=200 if known else 404)
