"""Request ids on log lines, and the optional access log, as JSON lines."""

import logging
import os
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from tracker.domain.auth import client_address, is_trusted
from tracker.logs import mask_secrets
from tracker.web.appkeys import TRUSTED_PROXIES

# What a proxy's X-Request-Id may be to be kept: anything else (too long, spaces,
# quotes, control characters) is replaced by an id of our own.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


class RequestTag:
    """A request's id: the X-Request-Id a trusted proxy sent, else 16 random hex digits,
    made the first time a line is logged.

    The tag is kept in the request and keeps nothing of it: a reference back would make a
    cycle of every request's objects, which only the garbage collector's passes could free
    (a pause of milliseconds under load, and CPU). A given id is judged when the tag is
    made, which costs one header lookup when there is none."""

    __slots__ = ("_value",)

    def __init__(self, request: web.Request) -> None:
        given = request.headers.get("X-Request-Id")
        self._value: str | None = (
            given
            if given is not None
            and _GIVEN_ID.fullmatch(given)
            and is_trusted(request.remote, request.config_dict[TRUSTED_PROXIES])
            else None
        )

    def __call__(self) -> str:
        if self._value is None:
            self._value = os.urandom(8).hex()
        return self._value


REQUEST_TAG = web.RequestKey("request_tag", RequestTag)


def request_address(request: web.Request) -> str | None:
    """The client's address: the peer's, or the one a trusted proxy forwarded."""
    forwarded = request.headers.getall("X-Forwarded-For", [])
    return client_address(request.remote, forwarded, request.config_dict[TRUSTED_PROXIES])


class JsonAccessLogger(AbstractAccessLogger):
    """One line a request (`TRACKER_ACCESS_LOG=true`), with the query's secrets masked."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        tag = request.get(REQUEST_TAG)
        # Not a web.Request when refused before it reached the app.
        client = request_address(request) if isinstance(request, web.Request) else request.remote
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "access": {
                    "request_id": tag() if tag is not None else None,
                    "method": request.method,
                    "path": mask_secrets(request.path_qs)[:2000],
                    "status": response.status,
                    "bytes": response.body_length,
                    "ms": round(time * 1000, 2),
                    "client": client,
                    "user_agent": request.headers.get("User-Agent", "")[:300],
                }
            },
        )


def access_logger() -> logging.Logger:
    return logging.getLogger("tracker.access")
