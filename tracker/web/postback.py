"""Inbound conversions: `GET|POST /postback` and `/postback/{token}`."""

from datetime import UTC, datetime

import orjson
from aiohttp import web

from tracker.domain.auth import client_address
from tracker.postbacks import INVALID, Outcome
from tracker.store.postback_log import Inbound
from tracker.web.appkeys import CONFIG, POSTBACK_GUARD, POSTBACK_LOG, POSTBACKS, TRUSTED_PROXIES
from tracker.web.errors import json_response, parse_json_object

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
    """Match a postback to its click and record the conversion; every postback is logged."""
    app = request.app
    headers = request.headers
    received_at = datetime.now(UTC)
    client_ip = client_address(request.remote, headers.get("X-Forwarded-For"), app[TRUSTED_PROXIES])
    try:
        params, raw = await _read(request)
    except ValueError as exc:
        outcome = Outcome(INVALID, 400, reason=str(exc))
        inbound = Inbound({}, request.method, request.query_string, received_at, client_ip)
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
        )
        outcome = await app[POSTBACKS].process(inbound)
    screened = await app[POSTBACK_GUARD].screen(inbound, outcome, app[CONFIG].snapshot)
    if screened.refusal is not None:
        response = json_response(screened.refusal, 429)
        response.headers["Retry-After"] = str(screened.retry_after)
        return response
    await app[POSTBACK_LOG].append(screened.inbound, outcome)
    return json_response(outcome.body(), outcome.http_status)
