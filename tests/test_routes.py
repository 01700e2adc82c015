"""Every route answers its own failures, with no middleware on any app: the answers
aiohttp's middleware gave before, and the click route reaching its handler directly."""

import asyncio
import gc
import logging
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import API_KEY, Api
from tracker.web import click
from tracker.web.appkeys import METRICS, VISITOR_FACTS
from tracker.web.routes import UNMATCHED

KEY = {"Authorization": f"Bearer {API_KEY}"}


def subapps(app: web.Application) -> list[web.Application]:
    return [r.get_info()["app"] for r in app.router.resources() if "app" in r.get_info()]


async def test_no_app_has_middleware_and_the_click_route_is_its_handler(
    client: TestClient[Any, Any],
) -> None:
    app = client.app
    assert [list(a.middlewares) for a in (app, *subapps(app))] == [[], [], []]
    routes = [r for r in app.router.routes() if r.method == "GET"]
    clicks = [r for r in routes if r.resource and r.resource.canonical == "/c/{campaign_key}"]
    assert [r.handler for r in clicks] == [click.click]
    # Every other route is wrapped: none is a bare handler of a module.
    assert all(r.handler.__qualname__.endswith("answered") for r in routes if r not in clicks)


async def test_requests_leave_no_reference_cycles(
    client: TestClient[Any, Any], api: Api, sink: Any
) -> None:
    """A request's objects are freed when it ends, not left in a cycle for the garbage
    collector's passes (each such pass a pause every request waits through)."""
    setup = await api.setup_campaign()
    path = "/c/" + setup["campaign"]["key"]
    resp = await client.get(path, allow_redirects=False)
    click_id = urlsplit(resp.headers["Location"]).query.removeprefix("cid=")
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass finds unreachable is kept, to be looked at
    try:
        for _ in range(5):
            assert (await client.get(path, allow_redirects=False)).status == 302
        assert (await client.get("/c/nope", allow_redirects=False)).status == 404
        await api.call("GET", "/api/campaigns")
        await client.get("/api/campaigns")  # 401
        await client.get("/nope")  # 404
        params = {"clickid": click_id, "token": setup["network"]["postback_token"]}
        assert (await client.get("/postback", params=params)).status == 200
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, web.BaseRequest)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cyclic == []


async def test_unknown_paths_and_methods_are_json(client: TestClient[Any, Any]) -> None:
    cases = [
        ("GET", "/nope", {}, 404, "Not Found"),
        ("GET", "/", {}, 404, "Not Found"),
        ("POST", "/c/somekey", {}, 405, "Method Not Allowed"),
        ("PUT", "/healthz", {}, 405, "Method Not Allowed"),
        ("HEAD", "/lp/click", {}, 405, None),
        ("GET", "/api/nope", KEY, 404, "Not Found"),
        ("GET", "/api", KEY, 404, "Not Found"),
        ("DELETE", "/api/reports", KEY, 405, "Method Not Allowed"),
        ("GET", "/api/nope", {}, 401, "missing or wrong API key"),
        ("DELETE", "/api/reports", {}, 401, "missing or wrong API key"),
    ]
    for method, path, headers, status, error in cases:
        resp = await client.request(method, path, headers=headers, allow_redirects=False)
        assert (method, path, resp.status) == (method, path, status)
        if method != "HEAD":
            assert resp.content_type == "application/json"
            assert await resp.json() == {"error": error}
    # Timed as before: under the route they matched, else as unmatched.
    timed = client.app[METRICS].requests
    assert {(UNMATCHED, "GET"), (UNMATCHED, "DELETE"), ("/healthz", "GET")} - set(timed) == {
        ("/healthz", "GET")
    }


async def test_the_dashboard_still_answers_as_pages(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/ui/nope", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login?next=")
    resp = await client.put("/ui/login", allow_redirects=False)
    assert resp.status == 405 and resp.content_type == "text/html"
    assert resp.headers["X-Frame-Options"]  # the dashboard's own headers


async def test_too_long_urls_are_414_on_every_route(client: TestClient[Any, Any]) -> None:
    filler = "x" * 20_000
    for path in (f"/c/somekey?a={filler}", f"/nope?a={filler}", f"/api/reports?a={filler}"):
        resp = await client.get(path, headers=KEY, allow_redirects=False)
        assert resp.status == 414
        assert (await resp.json())["error"].startswith("request URL longer than")


async def test_a_click_failing_unexpectedly_is_a_json_500_without_traceback(
    client: TestClient[Any, Any], api: Api, caplog: Any, monkeypatch: Any
) -> None:
    setup = await api.setup_campaign()
    path = urlsplit(setup["campaign"]["click_url"]).path

    def broken(*args: Any) -> None:
        raise RuntimeError("facts broke")

    monkeypatch.setattr(client.app[VISITOR_FACTS], "visitor", broken)
    with caplog.at_level(logging.ERROR, logger="tracker.web"):
        resp = await client.get(path, allow_redirects=False)
    assert resp.status == 500
    body = await resp.json()
    assert body["error"] == "internal error" and len(body["request_id"]) == 16
    assert "Traceback" not in await resp.text()
    logged = [r for r in caplog.records if r.name == "tracker.web"]
    assert [r.getMessage() for r in logged] == [f"unhandled error on GET {path}"]
    assert logged[0].exc_info is not None  # the traceback goes to the log, not the client


async def test_request_targets_without_a_leading_slash_are_json(
    client: TestClient[Any, Any],
) -> None:
    """`OPTIONS *` (the one method the HTTP parser lets use that target) and targets in
    absolute form still get a JSON 404, not aiohttp's plain-text one."""
    url = urlsplit(str(client.make_url("/")))
    for target in ("*", "http://other.example/x"):
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            for _ in range(2):  # twice: the connection stays usable
                writer.write(f"OPTIONS {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                assert (target, head.split(b" ")[1]) == (target, b"404"), head
                assert b"application/json" in head, target
                assert orjson.loads(body) == {"error": "Not Found"}
        finally:
            writer.close()
            await writer.wait_closed()
