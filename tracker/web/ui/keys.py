"""What the dashboard keeps on the request and its sub-application."""

from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the hash naming it in Redis and its CSRF token."""

    key: str
    csrf: str


SESSION = web.RequestKey("ui_session", Session)
