"""Dashboard sign-in: a random session id in an HttpOnly, SameSite=Strict cookie, the
session in Redis with an idle expiry, and a CSRF token checked on every POST."""

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import ValidationError

from tracker.settings import Settings
from tracker.store import keys
from tracker.web.access import request_address
from tracker.web.appkeys import AUTH_FAILURES, REDIS, SETTINGS
from tracker.web.errors import STORAGE_UNAVAILABLE, ApiError, Handler
from tracker.web.ui.keys import SESSION, Session
from tracker.web.ui.render import SECURITY_HEADERS, redirect, render

SESSION_COOKIE = "tracker_ui"
# Before sign-in: the token the sign-in form must carry back (double submit).
LOGIN_COOKIE = "tracker_ui_login"
# Pages anyone may fetch; every other page needs a session.
PUBLIC_PATHS = ("/ui/login", "/ui/static/")


def _hashed(session_id: str) -> str:
    # Redis holds only the hash: reading Redis does not give a usable cookie.
    return hashlib.sha256(session_id.encode()).hexdigest()


def _cookie_options(settings: Settings, max_age: int | None) -> dict[str, Any]:
    return {
        "path": "/ui",
        "httponly": True,
        "samesite": "Strict",
        "secure": settings.public_url.lower().startswith("https://"),
        "max_age": max_age,
    }


async def load_session(request: web.Request) -> Session | None:
    """The session the cookie names, its idle expiry renewed; None when there is none."""
    session_id = request.cookies.get(SESSION_COOKIE, "")
    if not session_id or len(session_id) > 100:
        return None
    key = keys.ui_session_key(_hashed(session_id))
    idle = request.config_dict[SETTINGS].dashboard_session_idle_seconds
    csrf = await request.config_dict[REDIS].getex(key, ex=idle)
    if csrf is None:
        return None
    return Session(key=key, csrf=csrf.decode() if isinstance(csrf, bytes) else str(csrf))


def password_matches(settings: Settings, given: str) -> bool:
    """Whether `given` is the API key or the dashboard password (compared in constant time)."""
    matched = False
    for secret in (settings.api_key, settings.dashboard_password):
        if secret is not None:
            expected = secret.get_secret_value().encode()
            matched |= hmac.compare_digest(given.encode(), expected)
    return matched


def _safe_next(value: str) -> str:
    # Only a path of the dashboard: never another site (`//evil`, `/\evil`).
    if value.startswith("/ui/") and not value.startswith(("//", "/\\")) and "\\" not in value:
        return value
    return "/ui/"


def _login_page(
    request: web.Request, token: str, error: str | None, status: int, next_path: str
) -> web.Response:
    response = render(
        request, "login.html", {"login_token": token, "error": error, "next": next_path}, status
    )
    options = _cookie_options(request.config_dict[SETTINGS], None)
    response.set_cookie(LOGIN_COOKIE, token, **options)
    return response


async def login_form(request: web.Request) -> web.Response:
    next_path = _safe_next(request.query.get("next", "/ui/"))
    return _login_page(request, secrets.token_urlsafe(24), None, 200, next_path)


async def login(request: web.Request) -> web.Response:
    """Sign in; failures count against the address like wrong API keys do."""
    form = await request.post()
    next_path = _safe_next(str(form.get("next", "/ui/")))
    expected_token = request.cookies.get(LOGIN_COOKIE, "")
    given_token = str(form.get("csrf", ""))
    fresh = secrets.token_urlsafe(24)
    if not expected_token or not hmac.compare_digest(given_token.encode(), expected_token.encode()):
        return _login_page(request, fresh, "The form expired: sign in again.", 403, next_path)
    settings = request.config_dict[SETTINGS]
    redis = request.config_dict[REDIS]
    address = request_address(request) or "unknown"
    failures = request.config_dict[AUTH_FAILURES]
    retry_after = await failures.retry_after(redis, address)
    if retry_after is not None:
        return _login_page(
            request,
            fresh,
            f"Too many failed sign-ins from this address: try again in {retry_after} s.",
            429,
            next_path,
        )
    if not password_matches(settings, str(form.get("password", ""))):
        await failures.record(redis, address)
        return _login_page(request, fresh, "Wrong key or password.", 401, next_path)
    session_id = secrets.token_urlsafe(32)
    key = keys.ui_session_key(_hashed(session_id))
    await redis.set(key, secrets.token_urlsafe(32), ex=settings.dashboard_session_idle_seconds)
    response = redirect(next_path)
    response.set_cookie(SESSION_COOKIE, session_id, **_cookie_options(settings, None))
    response.del_cookie(LOGIN_COOKIE, path="/ui")
    return response


async def logout(request: web.Request) -> web.Response:
    session = request[SESSION]
    await request.config_dict[REDIS].delete(session.key)
    response = redirect("/ui/login")
    response.del_cookie(SESSION_COOKIE, path="/ui")
    return response


def _refusal(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status)


def ui_middlewares() -> list[Callable[..., Any]]:
    """The dashboard's own middlewares: headers and HTML errors, then the session
    check, then CSRF. The click and postback paths never run them."""

    @web.middleware
    async def pages(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = _refusal(request, exc.status, exc.error)
        except ValidationError as exc:
            response = _refusal(request, 400, str(exc.errors()[0]["msg"]))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _refusal(request, exc.status, exc.reason)
        except STORAGE_UNAVAILABLE:
            response = _refusal(request, 503, "Storage is unavailable: retry in a moment.")
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
        session = await load_session(request)
        if session is not None:
            request[SESSION] = session
        elif not request.path.startswith(PUBLIC_PATHS):
            if request.method == "GET":
                target = request.path_qs if request.path != "/ui/" else "/ui/"
                return redirect("/ui/login?next=" + quote(target, safe=""))
            return _refusal(request, 401, "Not signed in.")
        return await handler(request)

    @web.middleware
    async def csrf_checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        session = request.get(SESSION)
        if request.method == "POST" and session is not None and request.path != "/ui/login":
            form = await request.post()
            given = str(form.get("csrf", ""))
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return _refusal(
                    request, 403, "The form's security token is missing or wrong: reload the page."
                )
        return await handler(request)

    return [pages, signed_in, csrf_checked]
