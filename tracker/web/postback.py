"""Inbound conversions: `GET|POST /postback` and `/postback/{token}`."""

import contextlib
import logging
from datetime import UTC, datetime

import orjson
from aiohttp import web

from tracker.domain.auth import client_address
from tracker.postbacks import INVALID, QUEUED, Outcome
from tracker.store.db import POSTGRES_UNAVAILABLE
from tracker.store.postback_log import Inbound, enqueue, new_receipt_id
from tracker.web.appkeys import POSTBACK_LOG, POSTBACKS, REDIS, TRUSTED_PROXIES
from tracker.web.errors import STORAGE_UNAVAILABLE, json_response, parse_json_object

log = logging.getLogger("tracker.web.postback")

MAX_PARAMS = 100
MAX_VALUE_LENGTH = 2048


async def _read(request: web.Request) -> tuple[dict[str, str], str]:
    """Query parameters merged with a form or JSON body (the body wins on a clash),
    and the raw text a signature covers. Raises ValueError on an unreadable body."""
    params: dict[str, str] = dict(request.query)
    raw = request.query_string
    if request.method == "POST" and request.can_read_body:
        body = await request.read()
        raw = body.decode(errors="replace")
        if request.content_type == "application/json":
            for name, value in parse_json_object(body).items():
                if isinstance(value, dict | list):
                    raise ValueError(f"parameter {name!r} must be a single value")
                # Numbers are kept as their JSON text so payouts stay exact.
                params[name] = value if isinstance(value, str) else orjson.dumps(value).decode()
        else:
            for name, value in (await request.post()).items():
                if isinstance(value, str):
                    params[name] = value
    if len(params) > MAX_PARAMS:
        raise ValueError(f"too many parameters (more than {MAX_PARAMS})")
    for name, value in params.items():
        if len(value) > MAX_VALUE_LENGTH:
            raise ValueError(f"parameter {name!r} longer than {MAX_VALUE_LENGTH} characters")
    return params, raw


async def postback(request: web.Request) -> web.Response:
    """Match a postback to its click and record the conversion; every postback is logged.

    While Postgres is unavailable the postback is queued in Redis (200, "queued") for
    the sink to apply; only when Redis is unavailable too is the answer a 503.
    """
    app = request.app
    headers = request.headers
    received_at = datetime.now(UTC)
    receipt_id = new_receipt_id()
    client_ip = client_address(request.remote, headers.get("X-Forwarded-For"), app[TRUSTED_PROXIES])
    try:
        params, raw = await _read(request)
    except ValueError as exc:
        outcome = Outcome(INVALID, 400, reason=str(exc))
        inbound = Inbound(
            {}, request.method, request.query_string, received_at, client_ip, receipt_id=receipt_id
        )
    else:
        inbound = Inbound(
            params=params,
            method=request.method,
            raw=raw,
            received_at=received_at,
            client_ip=client_ip,
            signature=headers.get("X-Signature"),
            signature_ts=headers.get("X-Timestamp"),
            path_token=request.match_info.get("token"),
            receipt_id=receipt_id,
        )
        try:
            outcome = await app[POSTBACKS].process(inbound)
        except POSTGRES_UNAVAILABLE as exc:
            return await _queue(app, inbound, exc)
        except Exception as exc:
            # Nothing was kept (the conversion and its log row roll back together):
            # give the signature back so the network's retry is not taken for a replay.
            await _release_signature(app, inbound)
            if isinstance(exc, STORAGE_UNAVAILABLE):  # Redis
                raise
            log.exception("postback %s not recorded", receipt_id)
            body = {"error": "postback not recorded, retry later", "receipt_id": receipt_id}
            return json_response(body, 503)
    if not outcome.logged:  # a conversion's log row is already written, with it
        try:
            await app[POSTBACK_LOG].append(inbound, outcome)
        except POSTGRES_UNAVAILABLE as exc:
            return await _queue(app, inbound, exc)
    return json_response(outcome.body(), outcome.http_status)


async def _queue(app: web.Application, inbound: Inbound, exc: BaseException) -> web.Response:
    """Postgres is unavailable: keep the postback for the sink, or ask for a retry."""
    try:
        await enqueue(app[REDIS], inbound)
    except Exception as redis_exc:
        log.error("postback %s not queued: %r after %r", inbound.receipt_id, redis_exc, exc)
        await _release_signature(app, inbound)
        body = {"error": "storage unavailable, retry later", "receipt_id": inbound.receipt_id}
        return json_response(body, 503)
    log.warning("Postgres unavailable (%r): postback %s queued", exc, inbound.receipt_id)
    return json_response({"result": QUEUED, "receipt_id": inbound.receipt_id})


async def _release_signature(app: web.Application, inbound: Inbound) -> None:
    with contextlib.suppress(Exception):
        await app[POSTBACKS].release_signature(inbound)
