"""Pages of the dashboard: templates, security headers, static files, redirects."""

import functools
import gzip
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from tracker.web.ui.keys import SESSION

# Scripts and styles only from our own files: no inline script, no inline style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}


@functools.cache
def templates() -> jinja2.Environment:
    """The dashboard's templates, escaped by default."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tracker.web.ui", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["signed"] = sign_class
    return env


def sign_class(value: Any) -> str:
    """`pos`, `neg` or `zero` for a decimal string or number (None: empty)."""
    if value is None or value == "":
        return ""
    text = str(value)
    if text.startswith("-"):
        return "neg"
    return "zero" if text.strip("0.") == "" else "pos"


def render(
    request: web.Request, name: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A page from template `name`, with the session's CSRF token and the nav."""
    session = request.get(SESSION)
    page = (
        templates()
        .get_template(name)
        .render(
            csrf=session.csrf if session is not None else "",
            signed_in=session is not None,
            path=request.path,
            **context,
        )
    )
    response = web.Response(text=page, status=status, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.enable_compression()  # gzip or deflate when the browser accepts them
    return response


def redirect(location: str) -> web.Response:
    """See other: after a form, the browser GETs `location`."""
    return web.Response(status=303, headers={"Location": location})


@functools.cache
def static_file(name: str) -> tuple[bytes, bytes]:
    """A file of `static/`, whole and gzipped."""
    body = resources.files("tracker.web.ui").joinpath("static", name).read_bytes()
    return body, gzip.compress(body, 9)


async def static(request: web.Request) -> web.Response:
    """Our CSS and JS, cached by browsers for a day."""
    name = request.match_info["name"]
    kind = next((t for ext, t in STATIC_TYPES.items() if name.endswith(ext)), None)
    if kind is None or "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    try:
        body, packed = static_file(name)
    except FileNotFoundError:
        raise web.HTTPNotFound() from None
    response = web.Response(body=body, content_type=kind)
    response.headers["Cache-Control"] = "public, max-age=86400"
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        response.body = packed
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    return response
