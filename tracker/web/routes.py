from aiohttp import web

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
from tracker.web.admin import RESOURCES


async def probe_postback(request: web.Request) -> web.StreamResponse:
    """HEAD on a postback URL: URL checkers get an answer; nothing is matched or logged."""
    return web.Response(status=200)


def setup_routes(app: web.Application, api: web.Application) -> None:
    """`app` serves clicks and postbacks; `api` is mounted at /api behind the API key."""
    app.router.add_get("/c/{campaign_key}", click.click, allow_head=False)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", metrics.scrape)
    app.router.add_route("HEAD", "/c/{campaign_key}", click.probe_campaign)
    app.router.add_get("/lp/click", click.lander_click, allow_head=False)
    # aiohttp would answer HEAD by running the GET handler: a probe must not convert.
    app.router.add_get("/postback", postback.postback, allow_head=False)
    app.router.add_route("HEAD", "/postback", probe_postback)
    app.router.add_post("/postback", postback.postback)
    app.router.add_get("/postback/{token}", postback.postback, allow_head=False)
    app.router.add_route("HEAD", "/postback/{token}", probe_postback)
    app.router.add_post("/postback/{token}", postback.postback)
    app.router.add_get("/px.gif", pixel.pixel_gif, allow_head=False)
    app.router.add_route("HEAD", "/px.gif", pixel.probe_gif)
    app.router.add_get("/px.js", pixel.pixel_js, allow_head=False)
    app.router.add_route("HEAD", "/px.js", pixel.probe_js)
    api.router.add_get("/reports", reports.report)
    api.router.add_post("/costs", costs.set_cost)
    api.router.add_get("/postbacks", ledger.list_postbacks)
    api.router.add_post("/conversions/upload", upload.upload_conversions)
    api.router.add_get("/deliveries", deliveries.list_deliveries)
    api.router.add_post("/deliveries/replay", deliveries.replay_deliveries)
    api.router.add_post("/deliveries/{id}/retry", deliveries.retry_delivery)
    api.router.add_get("/currency-rates", ledger.list_rates)
    api.router.add_post("/currency-rates", ledger.set_rate)
    for resource in RESOURCES:
        resource.add_routes(api)
