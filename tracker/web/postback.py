"""Inbound conversions: `GET|POST /postback` and `/postback/{token}`."""

import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tracker.domain.auth import SIGNED_POST_QUERY_PARAMS
from tracker.domain.params import form_pairs, json_pairs, load_json_object, postback_params
from tracker.domain.text import clean_text, dirt_in
from tracker.metrics import Metrics
from tracker.postbacks import FAILED, INVALID, QUEUED, REJECTED_AUTH, Outcome
from tracker.store.conversions import CREATED, UPDATED
from tracker.store.db import POSTGRES_UNAVAILABLE
from tracker.store.postback_log import Inbound, enqueue, new_receipt_id
from tracker.store.ratelimit import Screened
from tracker.web.access import request_address
from tracker.web.appkeys import (
    CONFIG,
    METRICS,
    POSTBACK_GUARD,
    POSTBACK_LOG,
    POSTBACKS,
    REDIS,
)
from tracker.web.errors import STORAGE_UNAVAILABLE, json_response, read_body

log = logging.getLogger("tracker.web.postback")

MAX_PARAMS = 100
MAX_VALUE_LENGTH = 2048
MAX_NAME_LENGTH = 128
SIGNATURE_HEADERS = ("X-Signature", "X-Timestamp")
# Refusals decided without PostgreSQL: an outage changes nothing about them.
FINAL_REFUSALS = (REJECTED_AUTH, INVALID)


def checked_params(*sources: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Postback parameters from `sources`, first occurrence winning, within the limits
    on their number and size. Raises ValueError, naming the parameter, on unreadable input."""
    params = postback_params(*sources)
    if len(params) > MAX_PARAMS:
        raise ValueError(f"too many parameters (more than {MAX_PARAMS})")
    for name, value in params.items():
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"parameter name {name[:40]!r}... longer than {MAX_NAME_LENGTH}")
        if len(value) > MAX_VALUE_LENGTH:
            raise ValueError(f"parameter {name!r} longer than {MAX_VALUE_LENGTH} characters")
    return params


async def _read(request: web.Request) -> tuple[dict[str, str], str]:
    """Parameters from the body (form or JSON) then the query string, the first
    occurrence of a name winning, and the raw text a signature covers.
    Raises ValueError, naming the parameter or header, on unreadable input."""
    headers = request.headers
    for header in SIGNATURE_HEADERS:
        value = headers.get(header)
        reason = dirt_in(value) if value is not None else None
        if reason is not None:
            raise ValueError(f"header {header} {reason}")
    raw = request.raw_path.partition("?")[2]  # as sent: a signature covers the encoded form
    body_pairs: list[tuple[str, str]] = []
    query_pairs: list[tuple[str, str]] = list(request.query.items())
    if request.method == "POST" and request.can_read_body:
        if "X-Signature" in headers:
            # The signature covers only the body: unsigned query values must not add to it.
            query_pairs = [(n, v) for n, v in query_pairs if n in SIGNED_POST_QUERY_PARAMS]
        body = await read_body(request)
        raw = body.decode(errors="replace")
        content_type = request.content_type
        if content_type == "application/json":
            body_pairs = json_pairs(load_json_object(body, numbers_as_text=True))
        elif content_type == "application/x-www-form-urlencoded":
            body_pairs = form_pairs(body, request.charset)
        elif content_type == "multipart/form-data":
            try:
                form = await request.post()
            except (LookupError, UnicodeDecodeError, AssertionError, HttpProcessingError) as exc:
                why = getattr(exc, "message", None) or exc
                raise ValueError(f"unreadable multipart body: {why}") from None
            body_pairs = [(name, value) for name, value in form.items() if isinstance(value, str)]
        elif body:
            raise ValueError(
                f"unsupported Content-Type {content_type[:60]!r}: send form fields "
                "(application/x-www-form-urlencoded or multipart/form-data) or a JSON object"
            )
    return checked_params(body_pairs, query_pairs), clean_text(raw)


async def postback(request: web.Request) -> web.Response:
    """Match a postback to its click and record the conversion; every postback is logged.

    While Postgres is unavailable the postback is queued in Redis (200, "queued") for
    the sink to apply; only when Redis is unavailable too is the answer a 503.
    """
    app = request.app
    headers = request.headers
    received_at = datetime.now(UTC)
    receipt_id = new_receipt_id()
    client_ip = request_address(request)
    try:
        params, raw = await _read(request)
    except ValueError as exc:
        inbound = Inbound(
            {},
            request.method,
            clean_text(request.query_string),
            received_at,
            client_ip,
            receipt_id=receipt_id,
        )
        answer = await log_outcome(app, inbound, Outcome(INVALID, 400, reason=str(exc)))
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
        answer = await receive(app, inbound)
    count_outcome(app[METRICS], inbound, answer)
    if isinstance(answer, Screened):
        response = json_response(answer.refusal, 429)
        response.headers["Retry-After"] = str(answer.retry_after)
        return response
    if answer.result == QUEUED:
        return json_response({"result": QUEUED, "receipt_id": receipt_id})
    if answer.result == FAILED:
        return json_response({"error": answer.reason, "receipt_id": receipt_id}, 503)
    return json_response(answer.body(), answer.http_status)


def count_outcome(metrics: Metrics, inbound: Inbound, answer: Outcome | Screened) -> None:
    """Count a postback or pixel hit by outcome, and the conversion it wrote by status."""
    if isinstance(answer, Screened):
        metrics.count(metrics.postbacks, inbound.source, "throttled")
        return
    metrics.count(metrics.postbacks, inbound.source, answer.result)
    if answer.status is not None and answer.result in (CREATED, UPDATED):
        metrics.count(metrics.conversions, answer.status)


async def receive(app: web.Application, inbound: Inbound) -> Outcome | Screened:
    """Judge, record and log a postback (or pixel hit) that was read.

    The answer is the outcome (logged); an Outcome `queued` when Postgres is
    unavailable and it waits in Redis for the sink; an Outcome `failed` (503) when
    nothing could be kept; or, for an address over its failure limit, the Screened
    refusal (nothing logged). Raises the Redis errors that leave nothing to do.
    """
    # An address already over its failure limit costs no click lookup or write.
    early = app[POSTBACK_GUARD].refuse_early(inbound, app[CONFIG].snapshot)
    if early is not None:
        return early
    try:
        outcome = await app[POSTBACKS].process(inbound)
    except POSTGRES_UNAVAILABLE as exc:
        refused = await app[POSTBACK_GUARD].admit_unverified(inbound, app[CONFIG].snapshot)
        if refused is not None:
            return refused
        return await _queue(app, inbound, exc)
    except Exception as exc:
        # Nothing was kept (the conversion and its log row roll back together):
        # give the signature back so the network's retry is not taken for a replay.
        await _release_signature(app, inbound)
        if isinstance(exc, STORAGE_UNAVAILABLE):  # Redis
            raise
        log.exception(
            "postback %s not recorded",
            inbound.receipt_id,
            extra={"receipt_id": inbound.receipt_id},
        )
        return Outcome(FAILED, 503, reason="postback not recorded, retry later")
    return await log_outcome(app, inbound, outcome)


async def log_outcome(
    app: web.Application, inbound: Inbound, outcome: Outcome
) -> Outcome | Screened:
    """Log what became of a postback, unless it was logged with its conversion; the
    outcome, or what `receive` answers when the log row cannot be written."""
    if outcome.logged:  # a conversion's log row is already written, with it
        return outcome
    screened = await app[POSTBACK_GUARD].screen(inbound, outcome, app[CONFIG].snapshot)
    if screened.refusal is not None:
        return screened
    try:
        await app[POSTBACK_LOG].append(screened.inbound, outcome)
    except POSTGRES_UNAVAILABLE as exc:
        if outcome.result not in FINAL_REFUSALS:
            return await _queue(app, inbound, exc)
        # Only the (size-capped) log row waits: the sink logs the same refusal, judged
        # at receipt. The sender still hears the refusal, never a 200 for it.
        await _queue(app, screened.inbound, exc)
    return outcome


async def _queue(app: web.Application, inbound: Inbound, exc: BaseException) -> Outcome:
    """Postgres is unavailable: keep the postback for the sink (`queued`), or `failed`."""
    try:
        await enqueue(app[REDIS], inbound)
    except Exception as redis_exc:
        log.error(
            "postback %s not queued: %r after %r",
            inbound.receipt_id,
            redis_exc,
            exc,
            extra={"receipt_id": inbound.receipt_id},
        )
        await _release_signature(app, inbound)
        return Outcome(FAILED, 503, reason="storage unavailable, retry later")
    # The batchers log the outage once; one line per queued postback would flood the log.
    log.debug("Postgres unavailable (%r): postback %s queued", exc, inbound.receipt_id)
    return Outcome(QUEUED, 200)


async def _release_signature(app: web.Application, inbound: Inbound) -> None:
    with contextlib.suppress(Exception):
        await app[POSTBACKS].release_signature(inbound)
