"""JSON-lines logging for every process: one object a line on stderr, with the request's
id on every line logged while handling it, and secrets masked."""

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

# The id of the request being handled, made only when a line is logged; set by the web
# layer for each request (a callable, so that a request that logs nothing costs nothing).
REQUEST_ID: ContextVar[Callable[[], str] | None] = ContextVar("request_id", default=None)
# Passed as `extra={...}` to tie a line to what it is about.
CONTEXT_FIELDS = ("click_id", "conversion_id", "receipt_id", "delivery_id")
MASK = "***"
# A parameter, header or JSON field whose value is a credential: `token=…`,
# `X-Signature: …`, `"api_key": "…"`, `postback_token=…` (an underscore or dash may join it to
# another word; letters and digits may not).
_SECRET_FIELD = re.compile(
    r"(?i)(?<![a-z0-9])"
    r"(token|access_token|refresh_token|developer_token|signature|sig|hmac|api[_-]?key"
    r"|secret|client_secret|signing_secret|password|passwd)"
    r"(?![a-z0-9])"
    r"(\"?\s*[=:]\s*\"?)"
    r"([^&\s\"',;}]+)"
)
_AUTHORIZATION = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]+")


def mask_secrets(text: str, literals: Iterable[str] = ()) -> str:
    """`text` with credential values replaced by `***`: named parameters and fields,
    Authorization schemes, and any of `literals` (the configured keys) wherever they appear."""
    for literal in literals:
        if literal and literal in text:
            text = text.replace(literal, MASK)
    text = _SECRET_FIELD.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
    return _AUTHORIZATION.sub(lambda m: f"{m[1]} {MASK}", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would mask innocent text; keys and passwords are long.
        self._secrets = tuple(s for s in secrets if len(s) >= 8)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_secrets(record.getMessage(), self._secrets),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id()
        fields = record.__dict__
        for name in CONTEXT_FIELDS:
            if name in fields:
                entry[name] = fields[name]
        access = fields.get("access")
        if access is not None:
            entry.update(access)
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info), self._secrets)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """JSON lines on stderr at `level`; `secrets` are masked wherever they appear."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # While Postgres is down, the pool retries its minimum of connections every second or
    # two and logs each failure with a traceback.
    logging.getLogger("asyncpg.pool").addFilter(OncePerInterval())


class OncePerInterval(logging.Filter):
    """Lets one record through per `interval` seconds, without its traceback."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self._interval = interval
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


class Throttled:
    """Logs a recurring condition at most once per `interval` seconds, saying how many
    occurrences were left out, so an outage is a few lines rather than one per request."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._next = 0.0
        self._skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += " (and %d more like it since the last report)"
            args = (*args, self._skipped)
        self._log.warning(message, *args)
        self._next = now + self._interval
        self._skipped = 0
