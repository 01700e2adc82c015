"""Conversion corrections by CSV: `POST /api/conversions/upload`.

Each row (`clickid,txid,payout,status,currency`) is applied as an authenticated
postback would be: the same matching, lifecycle, dedupe, refunds and log, marked
`source = 'upload'`. The API key stands in for the network's token, address and
signature checks. A bad row fails alone; the file is refused whole only when it cannot
be read as a table.
"""

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from tracker.domain.corrections import CsvRefused, CsvRow, TooManyRows, read_corrections
from tracker.domain.text import clean_optional, clean_text
from tracker.postbacks import INVALID, Outcome
from tracker.store.postback_log import UPLOAD, Inbound
from tracker.web.access import request_address
from tracker.web.appkeys import CONFIG, POSTBACK_GUARD, POSTBACK_LOG, POSTBACKS
from tracker.web.errors import STORAGE_UNAVAILABLE, ApiError, json_response
from tracker.web.responses import UploadOut, model_response

log = logging.getLogger("tracker.web.upload")

MAX_BYTES = 5 * 1024 * 1024
# Rows are applied one after the other, about a thousand a second: a full file is
# answered within half a minute, before common proxy timeouts.
MAX_ROWS = 20_000
# A 5 MB file over a slow uplink takes longer than a postback body may.
READ_TIMEOUT = 60.0
FILE_FIELD = "file"
MULTIPART = "multipart/form-data"
# What browsers, spreadsheets and HTTP clients label a CSV file with; no type at all
# reads as application/octet-stream.
CSV_TYPES = frozenset(
    {"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"}
    | {"application/octet-stream"}
)
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_CHUNK = 64 * 1024


async def upload_conversions(request: web.Request) -> web.Response:
    """Apply every row of a corrections CSV, in file order; answer each row's result.

    Rows are applied one after the other, each in its own transaction. Should storage
    fail, the upload stops there: the answer (503) lists the rows applied, and says
    from which line on nothing was.
    """
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            data = await _read_file(request)
    except TimeoutError:
        raise ApiError(408, f"file not received within {READ_TIMEOUT:g} s") from None
    except RequestPayloadError as exc:
        reason = str(getattr(exc.__cause__, "message", exc))
        raise ApiError(400, f"request body could not be read: {reason[:200]}") from None
    try:
        rows = read_corrections(data, MAX_ROWS)
    except TooManyRows as exc:
        raise ApiError(413, f"{exc}: send at most {MAX_ROWS} rows per file") from None
    except CsvRefused as exc:
        raise ApiError(400, str(exc)) from None

    app = request.config_dict
    received_at = datetime.now(UTC)
    client_ip = request_address(request)
    answered: list[dict[str, Any]] = []
    summary: Counter[str] = Counter()
    for index, row in enumerate(rows):
        inbound = Inbound(
            params={name: clean_text(value) for name, value in row.params.items()},
            method="POST",
            raw=clean_text(row.text),
            received_at=received_at,
            client_ip=client_ip,
            source=UPLOAD,
        )
        try:
            outcome = await _apply(app, inbound, row)
        except Exception as exc:
            if isinstance(exc, STORAGE_UNAVAILABLE):
                log.warning("upload stopped at line %d: storage unavailable (%r)", row.line, exc)
                error, status = "storage unavailable", 503
            else:
                log.exception("upload stopped at line %d", row.line)
                error, status = "internal error", 500
            body = {
                "error": f"{error}: the rows from line {row.line} on were not applied; "
                "upload the file again later (rows already applied answer duplicate, unless "
                "the file changes one conversion more than once)",
                "rows": answered,
                "summary": summary,
                "not_applied": {"from_row": row.line, "rows": len(rows) - index},
            }
            return json_response(body, status)
        answered.append(_row_answer(row, outcome))
        summary[outcome.result] += 1
    return model_response(UploadOut, {"rows": answered, "summary": summary})


async def _apply(app: Any, inbound: Inbound, row: CsvRow) -> Outcome:
    """Judge, record and log one row; storage errors propagate, with nothing kept of it."""
    if row.error is not None:
        click_id = clean_optional(row.params.get("clickid"))
        outcome = Outcome(INVALID, 400, reason=row.error, click_id=click_id)
    else:
        outcome = await app[POSTBACKS].process(inbound)
    if not outcome.logged:
        # Never refused for an upload (the API key authenticated it); failed rows are
        # cut to the log's row size like any failed postback.
        screened = await app[POSTBACK_GUARD].screen(inbound, outcome, app[CONFIG].snapshot)
        await app[POSTBACK_LOG].append(screened.inbound, outcome)
    return outcome


def _row_answer(row: CsvRow, outcome: Outcome) -> dict[str, Any]:
    return {
        "row": row.line,
        "clickid": clean_optional(row.params.get("clickid")),
        "txid": clean_optional(row.params.get("txid")),
        "result": outcome.result,
        "conversion_id": outcome.conversion_id,
        "error": None if outcome.http_status == 200 else _why(outcome),
    }


def _why(outcome: Outcome) -> str:
    """The reason for a failed row, naming the cell when the reason alone does not."""
    if outcome.details and outcome.reason in (None, "invalid postback"):
        return "; ".join(f"{d['field']}: {d['message']}" for d in outcome.details)
    return outcome.reason or outcome.result


async def _read_file(request: web.Request) -> bytes:
    """The CSV: the body itself, or the `file` part (or only part) of a multipart form."""
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise _too_large()
    content_type = request.content_type
    if content_type == MULTIPART:
        return await _read_form_file(request)
    if content_type not in CSV_TYPES:
        raise ApiError(
            415,
            f"unsupported Content-Type {content_type[:60]!r}: send the CSV as text/csv, "
            f"or as a multipart/form-data field named {FILE_FIELD!r}",
        )
    _check_charset(request.charset)
    data = bytearray()
    while chunk := await request.content.read(_CHUNK):
        data += chunk
        if len(data) > MAX_BYTES:
            raise _too_large()
    return bytes(data)


async def _read_form_file(request: web.Request) -> bytes:
    parts: list[tuple[str | None, bytes]] = []
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "unreadable multipart body: nested multipart")
            if len(parts) >= MAX_PARTS:
                raise ApiError(400, f"a form of at most {MAX_PARTS} fields: send the file alone")
            _check_charset(part.get_charset(default="utf-8"))
            # Part names count against the size cap too: a form is no way around it.
            size += len(part.name or "")
            data = bytearray()
            while chunk := await part.read_chunk(_CHUNK):
                data += chunk
                size += len(chunk)
                if size > MAX_BYTES:
                    raise _too_large()
            if size > MAX_BYTES:
                raise _too_large()
            parts.append((part.name, bytes(data)))
    except (ValueError, AssertionError, LookupError, HttpProcessingError) as exc:
        # A part's malformed headers come as HttpProcessingError, whose text is its
        # status and message.
        reason = getattr(exc, "message", None) or str(exc)
        raise ApiError(400, f"unreadable multipart body: {str(reason)[:200]}") from None
    files = [data for name, data in parts if name == FILE_FIELD]
    if len(files) == 1:
        return files[0]
    if len(parts) == 1 and not files:
        return parts[0][1]
    raise ApiError(400, f"send one CSV file, in a multipart field named {FILE_FIELD!r}")


MAX_PARTS = 10


def _check_charset(charset: str | None) -> None:
    if charset is not None and charset.lower() not in UTF8_CHARSETS:
        raise ApiError(400, f"unsupported charset {charset[:40]!r}: send the CSV in UTF-8")


def _too_large() -> ApiError:
    return ApiError(413, f"file larger than {MAX_BYTES // (1024 * 1024)} MB: split it")
