"""GET /metrics on the web port: this process's metrics, behind the API key."""

from aiohttp import web

from tracker.web.apikey import api_key_refusal
from tracker.web.appkeys import METRICS, REDIS


async def scrape(request: web.Request) -> web.Response:
    refusal = await api_key_refusal(request)
    if refusal is not None:
        return refusal
    return await request.config_dict[METRICS].scrape(request.config_dict[REDIS])
