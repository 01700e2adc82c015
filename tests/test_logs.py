"""Logs: a recurring failure is a few lines, not one per event; request ids on every
line of a request; secrets masked; the access log."""

import contextlib
import gc
import ipaddress
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from tracker.domain.addresses import AddressRanges
from tracker.logs import JsonFormatter, OncePerInterval, Throttled, mask_secrets
from tracker.metrics import Metrics
from tracker.web.access import JsonAccessLogger, RequestTag, access_logger
from tracker.web.app import create_app, handler_args
from tracker.web.appkeys import TRUSTED_PROXIES
from tracker.web.errors import error_middleware


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def collecting(name: str) -> tuple[logging.Logger, Collect]:
    logger = logging.getLogger(name)
    logger.propagate = False
    handler = Collect()
    logger.handlers[:] = [handler]
    return logger, handler


def test_throttled_reports_once_per_interval_and_counts_the_rest():
    logger, seen = collecting("tracker.test.throttled")
    throttled = Throttled(logger, interval=0)
    throttled.warning("down: %s", "a")
    assert [r.getMessage() for r in seen.records] == ["down: a"]
    quiet = Throttled(logger, interval=3600)
    for i in range(5):
        quiet.warning("down: %s", i)
    assert [r.getMessage() for r in seen.records] == ["down: a", "down: 0"]
    quiet._next = 0.0  # the interval has passed
    quiet.warning("down: %s", "again")
    assert seen.records[-1].getMessage() == "down: again (and 4 more like it since the last report)"


def test_once_per_interval_drops_repeats_and_tracebacks():
    logger, seen = collecting("tracker.test.pool")
    logger.addFilter(OncePerInterval(interval=3600))
    for _ in range(10):
        try:
            raise ConnectionRefusedError("connect failed")
        except ConnectionRefusedError:
            logger.exception("Failed to restore the pool connection floor")
    [record] = seen.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor: ConnectionRefusedError('connect failed')"
    )


class Lines(logging.Handler):
    """Formats each record as it is logged, in the context of the code that logs it."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(secrets))
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@contextlib.contextmanager
def lines_of(name: str, secrets: tuple[str, ...] = ()) -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger(name)
    handler = Lines(secrets)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET /postback?clickid=abc&token=s3cr3t&payout=1", "clickid=abc&token=***&payout=1"),
        ("/postback?postback_token=abcdef1234&x=1", "postback_token=***&x=1"),
        ("X-Signature: deadbeef01", "X-Signature: ***"),
        ('{"api_key": "zzz", "name": "n"}', '{"api_key": "***", "name": "n"}'),
        ('{"client_secret":"c1","developer_token" : "d2"}', '"client_secret":"***"'),
        ("Authorization: Bearer abc.def-1", "Authorization: Bearer ***"),
        ("sig=aa&campaign_key=k1", "sig=***&campaign_key=k1"),
        ("refresh_token=r1; access_token=a2", "refresh_token=***; access_token=***"),
        ("PASSWORD=hunter22", "PASSWORD=***"),
    ],
)
def test_secrets_are_masked(text, masked):
    assert masked in mask_secrets(text)


@pytest.mark.parametrize("text", ["tokenizer=1", "campaign_key=abc", "signatures_seen=3", "sign=1"])
def test_words_that_merely_contain_a_secret_name_are_kept(text):
    assert mask_secrets(text) == text


def test_configured_secrets_are_masked_anywhere_but_short_ones_are_not():
    logger = logging.getLogger("tracker.test.literal")
    with lines_of("tracker.test.literal", secrets=("the-api-key-123", "ab")) as lines:
        logger.warning("called with the-api-key-123 in a path, and ab")
    assert lines[0]["message"] == "called with *** in a path, and ab"


def test_context_fields_and_exceptions():
    logger = logging.getLogger("tracker.test.fields")
    with lines_of("tracker.test.fields") as lines:
        try:
            raise ValueError("bad token=abc123")
        except ValueError:
            logger.exception("failed", extra={"click_id": "c1", "receipt_id": "r1"})
    (line,) = lines
    assert line["click_id"] == "c1" and line["receipt_id"] == "r1"
    assert "request_id" not in line  # not inside a request
    assert "token=***" in line["exception"] and "abc123" not in line["exception"]


async def _failing(request: web.Request) -> web.Response:
    logging.getLogger("tracker.test.request").info("first line")
    raise RuntimeError("boom")


@pytest.fixture
async def failing_app(aiohttp_client: Any) -> Any:
    app = web.Application(middlewares=[error_middleware(16384, Metrics())])
    app[TRUSTED_PROXIES] = AddressRanges([ipaddress.ip_network("127.0.0.1/32")])
    app.router.add_get("/fail", _failing)
    return await aiohttp_client(app)


async def test_every_line_of_a_request_carries_its_id(failing_app):
    with lines_of("tracker") as lines:
        first = await failing_app.get("/fail")
        second = await failing_app.get("/fail")
    assert first.status == second.status == 500
    ids = [(await first.json())["request_id"], (await second.json())["request_id"]]
    assert ids[0] != ids[1] and all(len(i) == 16 for i in ids)
    assert [(line["message"], line["request_id"]) for line in lines] == [
        ("first line", ids[0]),
        ("unhandled error on GET /fail", ids[0]),
        ("first line", ids[1]),
        ("unhandled error on GET /fail", ids[1]),
    ]


@pytest.mark.parametrize(
    ("given", "kept"),
    [("req-42.a:b/c", True), ("has space", False), ("x" * 129, False), ('q"uote', False)],
)
async def test_a_trusted_proxys_request_id_is_kept_when_clean(failing_app, given, kept):
    with lines_of("tracker") as lines:
        resp = await failing_app.get("/fail", headers={"X-Request-Id": given})
    request_id = (await resp.json())["request_id"]
    assert (request_id == given) is kept
    assert {line["request_id"] for line in lines} == {request_id}


async def test_an_untrusted_peers_request_id_is_not_believed(aiohttp_client):
    app = web.Application(middlewares=[error_middleware(16384, Metrics())])
    app[TRUSTED_PROXIES] = AddressRanges([])
    app.router.add_get("/fail", _failing)
    client = await aiohttp_client(app)
    resp = await client.get("/fail", headers={"X-Request-Id": "forged-1"})
    assert (await resp.json())["request_id"] != "forged-1"


def test_a_tag_keeps_its_id_after_its_request_is_gone():
    """A line logged late (a task the request started) still carries the request's id,
    though the tag keeps nothing of the request."""
    app = web.Application()
    app[TRUSTED_PROXIES] = AddressRanges([ipaddress.ip_network("127.0.0.1/32")])
    given = make_mocked_request("GET", "/", headers={"X-Request-Id": "proxy-7"}, app=app)
    given._transport_peername = ("127.0.0.1", 1)
    forged = make_mocked_request("GET", "/", headers={"X-Request-Id": "forged"}, app=app)
    forged._transport_peername = ("10.0.0.9", 1)
    plain = make_mocked_request("GET", "/", app=app)
    tags = [RequestTag(request) for request in (given, forged, plain)]
    ref = weakref.ref(given)
    del given, forged, plain
    gc.collect()
    assert ref() is None
    ids = [tag() for tag in tags]
    assert ids[0] == "proxy-7"
    assert all(len(i) == 16 and i != "forged" for i in ids[1:]) and ids[1] != ids[2]
    assert [tag() for tag in tags] == ids  # made once


async def test_access_log_lines(settings, api):
    made = await api.setup_campaign()
    server = TestServer(create_app(settings))
    await server.start_server(
        **handler_args(settings), access_log=access_logger(), access_log_class=JsonAccessLogger
    )
    try:
        async with aiohttp.ClientSession() as http:
            with lines_of("tracker.access") as lines:
                url = server.make_url(f"/c/{made['campaign']['key']}?sub1=z&token=tok-secret-1")
                async with http.get(url, allow_redirects=False) as resp:
                    assert resp.status in (302, 404)
                async with http.get(server.make_url("/healthz")) as resp:
                    assert resp.status == 200
    finally:
        await server.close()
    click, health = lines
    assert click["method"] == "GET" and click["status"] in (302, 404)
    assert click["path"].endswith("sub1=z&token=***")
    assert "tok-secret-1" not in str(click)
    assert health["path"] == "/healthz" and health["status"] == 200
    assert health["client"] == "127.0.0.1" and health["bytes"] > 0
    assert len(click["request_id"]) == 16 and click["request_id"] != health["request_id"]
