"""The conversion pixel `GET /px.gif` and `GET /px.js`, for advertisers who cannot send S2S.

A hit is a postback (the same parameters and aliases) from a browser: it goes through
the postback pipeline (lifecycle, dedupe, log, queue while Postgres is unavailable),
marked `source = 'pixel'`. The click id comes from `clickid` (or an alias), else from
the click cookie. It has no auth: the network's `allow_pixel` must be on.

The answer never depends on the outcome: a 1x1 transparent GIF, or a script that does
nothing (the script's own request is the hit), uncached, even when the hit is refused
or storage is down. What became of it is in the postback log.
"""

import logging
from dataclasses import replace
from datetime import UTC, datetime

from aiohttp import web

from tracker.domain.dialects import DialectConflict, canonical_params
from tracker.domain.text import clean_text, dirt_in
from tracker.logs import Throttled
from tracker.postbacks import INVALID, Outcome
from tracker.store.postback_log import PIXEL, Inbound, new_receipt_id
from tracker.web.access import request_address
from tracker.web.appkeys import METRICS
from tracker.web.click import CLICK_COOKIE
from tracker.web.errors import STORAGE_UNAVAILABLE
from tracker.web.postback import (
    checked_params,
    count_outcome,
    log_outcome,
    receive,
)

log = logging.getLogger("tracker.web.pixel")

# The smallest transparent 1x1 GIF: a 2-colour table, a transparency extension, one pixel.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
SCRIPT = b"/* conversion recorded by the request for this script */\n"
GIF_TYPE = "image/gif"
SCRIPT_TYPE = "text/javascript"
NO_CLICK_ID = "no clickid in the URL and no click cookie"
_HEADERS = {
    # A cached pixel would record nothing the second time (a second purchase, say).
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


async def pixel_gif(request: web.Request) -> web.Response:
    """Record a conversion from an `<img>` on the advertiser's page; answer the GIF."""
    await _record(request)
    return _answer(GIF, GIF_TYPE)


async def pixel_js(request: web.Request) -> web.Response:
    """Record a conversion from a `<script>` on the advertiser's page; answer a no-op."""
    await _record(request)
    return _answer(SCRIPT, SCRIPT_TYPE)


async def probe_gif(request: web.Request) -> web.Response:
    """HEAD: the headers of the answer, and nothing recorded."""
    return _answer(GIF, GIF_TYPE)


async def probe_js(request: web.Request) -> web.Response:
    return _answer(SCRIPT, SCRIPT_TYPE)


def _answer(body: bytes, content_type: str) -> web.Response:
    charset = "utf-8" if content_type == SCRIPT_TYPE else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers=_HEADERS)


_failures = Throttled(log)


async def _record(request: web.Request) -> None:
    """Judge, record and log one hit. Every failure is swallowed: a browser can do
    nothing about it, and the page must get its image."""
    received_at = datetime.now(UTC)
    inbound = Inbound(
        {},
        request.method,
        clean_text(request.query_string),
        received_at,
        request_address(request),
        receipt_id=new_receipt_id(),
        source=PIXEL,
    )
    app = request.app
    try:
        try:
            params = checked_params(request.query.items())
        except ValueError as exc:
            await log_outcome(app, inbound, Outcome(INVALID, 400, reason=str(exc)))
            return
        inbound = replace(inbound, params=params)
        if not _click_id_given(params):
            cookie = request.cookies.get(CLICK_COOKIE, "").strip()
            if not cookie or dirt_in(cookie) is not None:
                await log_outcome(app, inbound, Outcome(INVALID, 400, reason=NO_CLICK_ID))
                return
            # In the logged parameters, not in the raw query: the log shows where it came from.
            inbound = replace(inbound, params={**params, "clickid": cookie})
        count_outcome(app[METRICS], inbound, await receive(app, inbound))
    except STORAGE_UNAVAILABLE as exc:  # Redis, when Postgres could not take it either
        _failures.warning("pixel hit %s not recorded: %r", inbound.receipt_id, exc)
    except Exception:
        log.exception(
            "pixel hit %s not recorded",
            inbound.receipt_id,
            extra={"receipt_id": inbound.receipt_id},
        )


def _click_id_given(params: dict[str, str]) -> bool:
    try:
        return bool(canonical_params(params).get("clickid"))
    except DialectConflict:
        return True  # refused as a postback would be, naming the aliases
