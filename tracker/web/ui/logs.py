"""The URLs page, the postback log and the delivery log, on the API's own queries."""

import json
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from pydantic import ValidationError

from tracker.domain.params import first_wins
from tracker.domain.validation import field_errors
from tracker.store import admin as sql
from tracker.store import deliveries
from tracker.web.admin import RESOURCES
from tracker.web.appkeys import PG_POOL, SETTINGS
from tracker.web.deliveries import DeliveryQuery, ReplayIn
from tracker.web.deliveries import _item as delivery_item
from tracker.web.ledger import SELECT_POSTBACKS, PostbackQuery
from tracker.web.ledger import _masked as masked_postback
from tracker.web.ui.render import redirect, render

RESULTS = ("created", "updated", "duplicate", "unmatched", "invalid", "rejected-auth")


def _presenter(path: str) -> Any:
    return next(r for r in RESOURCES if r.path == path)


async def urls_page(request: web.Request) -> web.Response:
    """Click URLs to paste into the ad platform, postback URLs for the networks, and
    the pixel snippet for advertisers who cannot send server-to-server."""
    base = request.config_dict[SETTINGS].base_url()
    async with request.config_dict[PG_POOL].acquire() as conn:
        campaigns = await _presenter("campaigns").present(
            request, conn, await sql.list_rows(conn, "campaigns", False, 1000, 0)
        )
        networks = await _presenter("affiliate-networks").present(
            request, conn, await sql.list_rows(conn, "affiliate_networks", False, 1000, 0)
        )
    pixel = (
        f'<img src="{base}/px.gif?clickid={{clickid}}&amp;payout={{payout}}&amp;txid={{txid}}" '
        'width="1" height="1" alt="">'
    )
    script = f'<script async src="{base}/px.js?clickid={{clickid}}&amp;payout={{payout}}"></script>'
    return render(
        request,
        "urls.html",
        {
            "title": "URLs",
            "campaigns": campaigns,
            "networks": networks,
            "pixel": pixel,
            "pixel_script": script,
        },
    )


def _raw_request(row: dict[str, Any]) -> str:
    return json.dumps(
        {
            "method": row.get("method"),
            "source": row.get("source"),
            "client_ip": row.get("client_ip"),
            "params": row.get("params"),
            "truncated": row.get("truncated"),
            "queued": row.get("queued"),
        },
        indent=2,
        ensure_ascii=False,
        default=str,
    )


async def postbacks_page(request: web.Request) -> web.Response:
    """Inbound postbacks, newest first, filtered by network and result; each with the
    request as received (its token masked)."""
    wanted = {k: v for k, v in first_wins(request.query.items()).items() if v}
    problems: list[dict[str, str]] = []
    items: list[dict[str, Any]] = []
    pool = request.config_dict[PG_POOL]
    try:
        query = PostbackQuery.model_validate(wanted)
    except ValidationError as exc:
        problems = field_errors(exc)
    else:
        start = datetime.combine(query.start or date(1970, 1, 1), time(), tzinfo=UTC)
        rows = await pool.fetch(
            SELECT_POSTBACKS, query.network_id, query.result, start, None, query.limit
        )
        items = [masked_postback(dict(row)) for row in rows]
        for item in items:
            item["raw_request"] = _raw_request(item)
    networks = await pool.fetch("SELECT id, name FROM affiliate_networks ORDER BY id")
    names = {row["id"]: row["name"] for row in networks}
    return render(
        request,
        "postbacks.html",
        {
            "title": "Postback log",
            "items": items,
            "problems": problems,
            "networks": networks,
            "names": names,
            "results": RESULTS,
            "chosen_network": wanted.get("network_id", ""),
            "chosen_result": wanted.get("result", ""),
        },
    )


async def deliveries_page(request: web.Request) -> web.Response:
    """Conversions sent back to traffic sources, with every attempt; retry and replay."""
    wanted = {k: v for k, v in first_wins(request.query.items()).items() if v and k != "done"}
    problems: list[dict[str, str]] = []
    items: list[dict[str, Any]] = []
    try:
        query = DeliveryQuery.model_validate(wanted)
    except ValidationError as exc:
        problems = field_errors(exc)
    else:
        rows = await deliveries.list_deliveries(
            request.config_dict[PG_POOL], query.args(query.status), query.limit, query.offset
        )
        items = [delivery_item(row) for row in rows]
    return render(
        request,
        "deliveries.html",
        {
            "title": "Delivery log",
            "items": items,
            "problems": problems,
            "status": wanted.get("status", ""),
            "done": request.query.get("done", ""),
        },
    )


async def retry_delivery(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise web.HTTPNotFound()
    pool = request.config_dict[PG_POOL]
    if await deliveries.retry(pool, int(raw)):
        done = f"Delivery {raw} will be sent again."
    else:
        done = f"Delivery {raw} is pending already (or gone)."
    return redirect("/ui/deliveries?" + urlencode({"done": done}))


async def replay_deliveries(request: web.Request) -> web.Response:
    form = await request.post()
    try:
        replay = ReplayIn.model_validate(
            {k: str(form.get(k, "")) for k in ("from", "to") if form.get(k)}
        )
    except ValidationError as exc:
        done = "Replay refused: " + "; ".join(
            f"{d['field']}: {d['message']}" for d in field_errors(exc)
        )
    else:
        count = await deliveries.replay_dead(request.config_dict[PG_POOL], replay.args(None))
        done = f"{count} dead deliveries will be sent again."
    return redirect("/ui/deliveries?" + urlencode({"done": done}))
