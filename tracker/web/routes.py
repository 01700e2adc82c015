"""Every route, with what the API document says of it (tracker.web.openapi)."""

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from importlib import metadata

from aiohttp import web
from aiohttp.web_urldispatcher import DynamicResource
from pydantic import BaseModel

from tracker.postbacks import PostbackFields
from tracker.web import (
    click,
    costs,
    deliveries,
    health,
    ledger,
    metrics,
    pixel,
    postback,
    reports,
    upload,
)
from tracker.web.admin import RESOURCES, AffiliateNetworks, ListQuery, ResourceViews
from tracker.web.errors import UNMATCHED
from tracker.web.openapi import JSON, Answer, Documented, Method, Op, document_routes
from tracker.web.responses import (
    CostOut,
    CurrencyRateOut,
    CurrencyRateSetOut,
    DeliveryOut,
    DeliveryReplayOut,
    DeliveryRetryOut,
    HealthOut,
    Items,
    Page,
    PostbackLogOut,
    PostbackOut,
    PostbackRefusalOut,
    ReadyOut,
    ReportOut,
    UploadOut,
)
from tracker.web.schemas import CurrencyRateIn, RotateTokenIn

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def probe_postback(request: web.Request) -> web.StreamResponse:
    """HEAD on a postback URL: URL checkers get an answer; nothing is matched or logged."""
    return web.Response(status=200)


@dataclass(frozen=True, slots=True)
class Route:
    method: Method
    path: str
    handler: Handler
    op: Op


REDIRECT = Answer("Redirect", media=None, headers=("Location", "Set-Cookie"))
NO_BODY = Answer("OK (headers only)", media=None)
GIF = Answer("A 1x1 transparent GIF, whatever became of the hit", media="image/gif",
             schema={"type": "string", "contentMediaType": "image/gif"})  # fmt: skip
SCRIPT = Answer("A script that does nothing, whatever became of the hit",
                media="text/javascript", schema={"type": "string"})  # fmt: skip

CLICK_PARAMS = {
    "name": "params",
    "in": "query",
    "style": "form",
    "explode": True,
    "description": "Free-form click parameters (sub1..sub10, the source's external id and "
    "cost parameters, anything else), kept with the click and usable as macros",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}
LANDER_PARAMS = (
    {
        "name": "clickid",
        "in": "query",
        "description": "the click; default: the click cookie set by the redirect",
        "schema": {"type": "string"},
    },
    {
        "name": "offer",
        "in": "query",
        "description": "an offer id of the click's path; default: the one chosen at the click",
        "schema": {"type": "string"},
    },
)
SIGNATURE_HEADERS = (
    {
        "name": "X-Signature",
        "in": "header",
        "description": "sha256=<hex HMAC-SHA256 of '<X-Timestamp>.<raw>'>, for a network with "
        "a signing secret",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Timestamp",
        "in": "header",
        "description": "Unix seconds of the signature",
        "schema": {"type": "string"},
    },
)
POSTBACK_DESCRIPTION = """\
Records a conversion for a click. Parameters come from the query string, or the body
(form fields or a JSON object) of a POST; common aliases of each name are accepted
(`click_id`, `subid`, `sum`, `transaction_id`, ...). `payout` is a decimal string.

Authentication is the network's, in any combination it asks for:
* **token**: `token=<postback token>` (or in the path, `/postback/{token}`);
* **IP allowlist**: the sender's address (behind a trusted proxy, the forwarded one);
* **HMAC**: `X-Signature: sha256=<hex>` = HMAC-SHA256 with the signing secret over
  `<X-Timestamp>.<raw>`, raw being the query string as sent (GET) or the body (POST);
  a signature is accepted once, within 5 minutes of its timestamp.

While PostgreSQL is unavailable the postback is kept in Redis and answered
`{"result": "queued", "receipt_id": ...}`; the sink records it later.
"""
POSTBACK_ANSWERS = {
    200: Answer("Conversion created, updated or a duplicate; or queued", PostbackOut),
    400: Answer("Invalid postback", PostbackRefusalOut),
    403: Answer("Token, address or signature refused", PostbackRefusalOut),
    404: Answer("Unknown click", PostbackRefusalOut),
}
POSTBACK = Op(
    "Record a conversion (server-to-server postback)",
    "conversions",
    POSTBACK_ANSWERS,
    errors=(408, 413, 429, 503),
    description=POSTBACK_DESCRIPTION,
    query=PostbackFields,
    headers=SIGNATURE_HEADERS,
)
POSTBACK_POST = Op(
    POSTBACK.summary,
    "conversions",
    POSTBACK_ANSWERS,
    errors=POSTBACK.errors,
    description=POSTBACK_DESCRIPTION,
    query=PostbackFields,
    query_optional=True,
    headers=SIGNATURE_HEADERS,
    body=PostbackFields,
    body_media=(JSON, "application/x-www-form-urlencoded", "multipart/form-data"),
    body_required=False,
)
PIXEL_DESCRIPTION = (
    "A postback from the advertiser's page, for networks with `allow_pixel` on: the same "
    "parameters, no authentication, only lead, pending or approved conversions. The click id "
    "comes from `clickid`, else from the click cookie. What became of the hit is in the "
    "postback log."
)


def _postback_paths() -> list[Route]:
    def tokened(op: Op) -> Op:
        return replace(op, summary=op.summary + ", the token in the path")

    probe = Op("Check a postback URL (nothing is recorded)", "conversions", {200: NO_BODY})
    return [
        Route("GET", "/postback", postback.postback, POSTBACK),
        Route("HEAD", "/postback", probe_postback, probe),
        Route("POST", "/postback", postback.postback, POSTBACK_POST),
        Route("GET", "/postback/{token}", postback.postback, tokened(POSTBACK)),
        Route("HEAD", "/postback/{token}", probe_postback, probe),
        Route("POST", "/postback/{token}", postback.postback, tokened(POSTBACK_POST)),
    ]


PUBLIC: tuple[Route, ...] = (
    Route("GET", click.CLICK_ROUTE, click.click, Op(
        "Record a click and redirect to its lander or offer", "clicks",
        {302: REDIRECT}, errors=(404, 503), parameters=(CLICK_PARAMS,),
        description="A bot may instead get the campaign's bot URL or a 404.",
    )),
    Route("HEAD", click.CLICK_ROUTE, click.probe_campaign, Op(
        "Check a click URL (no click is recorded)", "clicks",
        {200: NO_BODY, 404: Answer("Unknown campaign", media=None)},
    )),
    Route("GET", "/lp/click", click.lander_click, Op(
        "A lander's click-through: record it and redirect to the offer", "clicks",
        {302: REDIRECT}, errors=(400, 404, 503), parameters=LANDER_PARAMS,
    )),
    *_postback_paths(),
    Route("GET", "/px.gif", pixel.pixel_gif, Op(
        "Conversion pixel (image)", "conversions", {200: GIF},
        description=PIXEL_DESCRIPTION, query=PostbackFields,
    )),
    Route("HEAD", "/px.gif", pixel.probe_gif, Op(
        "Check the image pixel (nothing is recorded)", "conversions",
        {200: Answer("Headers of the GIF", media="image/gif", schema={"type": "string"})},
    )),
    Route("GET", "/px.js", pixel.pixel_js, Op(
        "Conversion pixel (script)", "conversions", {200: SCRIPT},
        description=PIXEL_DESCRIPTION, query=PostbackFields,
    )),
    Route("HEAD", "/px.js", pixel.probe_js, Op(
        "Check the script pixel (nothing is recorded)", "conversions",
        {200: Answer("Headers of the script", media="text/javascript", schema={"type": "string"})},
    )),
    Route("GET", "/healthz", health.healthz, Op(
        "Liveness: the process serves requests", "health", {200: Answer("Alive", HealthOut)},
    )),
    Route("GET", "/readyz", health.readyz, Op(
        "Readiness: Redis, PostgreSQL, migrations and the sink's lag", "health",
        {200: Answer("Ready", ReadyOut), 503: Answer("Not ready: `checks` says why", ReadyOut)},
    )),
    Route("GET", "/metrics", metrics.scrape, Op(
        "Prometheus metrics of the process that answers", "health",
        {200: Answer("Metrics in Prometheus's text format", media="text/plain",
                     schema={"type": "string"})},
        bearer=True,
    )),
)  # fmt: skip

READ, WRITE = (400, 503), (400, 408, 413, 503)
API: tuple[Route, ...] = (
    Route("GET", "/reports", reports.report, Op(
        "ROI report: clicks, conversions, revenue, cost and ratios by dimension", "reports",
        {200: Answer("The report; with `format=csv`, its rows as CSV", ReportOut,
                     also=(("text/csv", {"type": "string"}),),
                     headers=("X-Report-Database", "X-Report-Lag-Seconds", "X-Report-As-Of"))},
        errors=(*READ, 504), query=reports.ReportQuery,
        parameters=tuple(
            {"name": kind, "in": "query", "style": "deepObject", "explode": True,
             "description": f"{kind}[<dimension>]=<comma-separated values>",
             "schema": {"type": "object", "additionalProperties": {"type": "string"}}}
            for kind in ("filter", "exclude")
        ),
    )),
    Route("POST", "/costs", costs.set_cost, Op(
        "Set the cost of a slice of a campaign's stored clicks", "reports",
        {201: Answer("Cost spread over the slice's clicks", CostOut)},
        errors=WRITE, body=costs.CostIn,
    )),
    Route("GET", "/postbacks", ledger.list_postbacks, Op(
        "The postback log, newest first", "conversions",
        {200: Answer("Logged postbacks", Items[PostbackLogOut])},
        errors=READ, query=ledger.PostbackQuery,
    )),
    Route("POST", "/conversions/upload", upload.upload_conversions, Op(
        "Apply a CSV of conversion corrections (clickid,txid,payout,status,currency)",
        "conversions",
        {200: Answer("Each row's result", UploadOut)},
        errors=(400, 408, 413, 415, 503),
        body_media=("text/csv", "multipart/form-data"),
        body_schema={"type": "string"},
    )),
    Route("GET", "/deliveries", deliveries.list_deliveries, Op(
        "Outgoing postbacks (deliveries) with their attempts", "deliveries",
        {200: Answer("Deliveries, newest first", Page[DeliveryOut])},
        errors=READ, query=deliveries.DeliveryQuery,
    )),
    Route("POST", "/deliveries/replay", deliveries.replay_deliveries, Op(
        "Send again the dead deliveries of a range of days", "deliveries",
        {200: Answer("How many were sent again", DeliveryReplayOut)},
        errors=WRITE, body=deliveries.ReplayIn,
    )),
    Route("POST", "/deliveries/{id}/retry", deliveries.retry_delivery, Op(
        "Send one delivery again", "deliveries",
        {200: Answer("Pending again", DeliveryRetryOut)}, errors=(404, 409, 503),
    )),
    Route("GET", "/currency-rates", ledger.list_rates, Op(
        "Exchange rates to USD", "currency rates",
        {200: Answer("Every rate", Items[CurrencyRateOut])}, errors=(503,),
    )),
    Route("POST", "/currency-rates", ledger.set_rate, Op(
        "Set a currency's rate from a date on", "currency rates",
        {201: Answer("The rate", CurrencyRateSetOut)}, errors=WRITE, body=CurrencyRateIn,
    )),
)  # fmt: skip


def resource_routes(resource: ResourceViews) -> list[Route]:
    """The five routes of an admin resource (and a network's token rotation)."""
    base, label, tag = f"/{resource.path}", resource.label, resource.path.replace("-", " ")
    name = label.replace(" ", "_")
    one = Answer(f"The {label} (ETag: its version, for If-Match)", resource.out, headers=("ETag",))
    page: type[BaseModel] = Page[resource.out]  # type: ignore[name-defined]
    by_id = [f"get_{name}", f"update_{name}", f"archive_{name}"]
    if isinstance(resource, AffiliateNetworks):
        by_id.append("rotate_token")
    created = replace(one, description=f"Created: {one.description}", links=tuple(by_id))
    routes = [
        Route("POST", base, resource.create, Op(
            f"Create a {label}", tag, {201: created}, errors=WRITE, body=resource.model,
            operation_id=f"create_{name}",
        )),
        Route("GET", base, resource.list, Op(
            f"List {label}s", tag, {200: Answer(f"A page of {label}s", page)},
            errors=READ, query=ListQuery, operation_id=f"list_{name}s",
        )),
        Route("GET", base + "/{id}", resource.get, Op(
            f"Get a {label}", tag, {200: one}, errors=(404, 503), operation_id=f"get_{name}",
        )),
        Route("PATCH", base + "/{id}", resource.update, Op(
            f"Change a {label}: the fields given change, the others stay", tag, {200: one},
            errors=(*WRITE, 404, 412), body=resource.model, partial=True,
            headers=({"name": "If-Match", "in": "header", "schema": {"type": "string"},
                      "description": "only if the row is still at this ETag"},),
            operation_id=f"update_{name}",
        )),
        Route("DELETE", base + "/{id}", resource.archive, Op(
            f"Archive a {label}", tag, {200: one}, errors=(404, 503),
            operation_id=f"archive_{name}",
        )),
    ]  # fmt: skip
    if isinstance(resource, AffiliateNetworks):
        routes.append(Route("POST", base + "/{id}/rotate-token", resource.rotate_token, Op(
            "Issue a new postback token; the old one works for `grace_seconds` more", tag,
            {200: one}, errors=(*WRITE, 404), body=RotateTokenIn, body_required=False,
            operation_id="rotate_token",
        )))  # fmt: skip
    return routes


def api_routes() -> list[Route]:
    return [*API, *(route for resource in RESOURCES for route in resource_routes(resource))]


def documented() -> Sequence[Documented]:
    """Every operation of the app, with its path as clients call it."""
    return [
        *(Documented(r.method, r.path, r.op) for r in PUBLIC),
        # Everything mounted under /api is behind the API key.
        *(Documented(r.method, "/api" + r.path, replace(r.op, bearer=True)) for r in api_routes()),
    ]


def _add(app: web.Application, route: Route, allow_head: bool = False) -> None:
    if route.method == "GET":
        # aiohttp would answer HEAD by running the GET handler: a probe must not convert,
        # nor a lander's click-through; a click URL's HEAD has its own handler.
        app.router.add_get(route.path, route.handler, allow_head=allow_head)
    else:
        app.router.add_route(route.method, route.path, route.handler)


def _version() -> str:
    try:
        return metadata.version("tracker")
    except metadata.PackageNotFoundError:
        return "0.1.0"


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
Wrapper = Callable[[Handler, str | None], Handler]


class AnyTarget(DynamicResource):
    """Every request target, those not starting with `/` too (`OPTIONS *`), which a
    `/{tail:.*}` pattern would leave to aiohttp's own plain-text 404."""

    def __init__(self) -> None:
        super().__init__("/{tail:.*}")

    def _match(self, path: str) -> dict[str, str] | None:
        return {"tail": path}


async def unrouted(request: web.Request) -> web.StreamResponse:
    """A request no other route of its app takes: 405 when the path is known for other
    methods, else 404, as aiohttp's router answers (routes answer errors themselves, so
    aiohttp's own answer, plain text, must not be reached)."""
    this = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not this and not isinstance(
            resource, web.PrefixedSubAppResource | AnyTarget
        ):
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _through(middleware: Middleware, handler: Handler) -> Handler:
    async def handled(request: web.Request) -> web.StreamResponse:
        return await middleware(request, handler)

    return handled


def answer_per_route(
    app: web.Application,
    wrap: Wrapper,
    middlewares: Sequence[Middleware] = (),
    bare: Collection[Handler] = (),
    mounted: bool = False,
) -> None:
    """Give every route of `app` (a sub-app, `mounted`, before it is) its middlewares,
    then `wrap`, in the route itself; `bare` handlers answer for themselves and get
    neither. Unmatched paths and methods get a route of their own, so that they too are
    answered through `wrap`. The app must have no middleware of its own: aiohttp then
    runs none for any route, the click's included.

    Done once every route is added, so that routes other modules add (the API
    document, the dashboard) are covered too."""
    if app.middlewares:
        raise RuntimeError("answer_per_route: the app's middlewares would run as well")
    if mounted:
        app.router.add_route("*", "", unrouted)
        app.router.add_route("*", "/{tail:.*}", unrouted)
    else:
        anywhere = AnyTarget()
        app.router.register_resource(anywhere)
        anywhere.add_route("*", unrouted)
    # One wrapped handler per handler: a GET and the HEAD aiohttp adds beside it stay one.
    wrapped: dict[Handler, Handler] = {}
    for route in app.router.routes():
        given = route.handler
        if given in bare:
            continue
        handler = wrapped.get(given)
        if handler is None:
            handler = given
            for middleware in reversed(middlewares):
                handler = _through(middleware, handler)
            handler = wrapped[given] = wrap(handler, UNMATCHED if given is unrouted else None)
        # aiohttp has no public setter for a route's handler; a static directory's
        # routes, added by the router, can be reached no other way.
        route._handler = handler  # type: ignore[assignment]  # an async def, as aiohttp wants


def setup_routes(app: web.Application, api: web.Application) -> None:
    """`app` serves clicks and postbacks; `api` is mounted at /api behind the API key.
    The API document and its page are on `app`, before /api is mounted, so that they
    need no key."""
    for route in PUBLIC:
        _add(app, route, allow_head=route.path in ("/healthz", "/readyz"))
    for route in api_routes():
        _add(api, route, allow_head=True)
    document_routes(app, documented, _version())
