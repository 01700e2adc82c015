"""The API document, its page, and a schemathesis run against the live app."""

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from pydantic import ValidationError
from redis.asyncio import Redis

from tests.conftest import API_KEY, Api, click_stream_length, start_client
from tracker.settings import Settings
from tracker.web.app import create_app
from tracker.web.openapi import ASSETS_PATH, DOCS_PATH, DOCUMENT_PATH, build_document
from tracker.web.reports import _KNOWN, ReportQuery
from tracker.web.responses import CampaignOut, PostbackOut, PostbackRefusalOut, shaped
from tracker.web.routes import documented


async def test_document_is_valid_openapi_3_1(client: TestClient[Any, Any]) -> None:
    resp = await client.get(DOCUMENT_PATH)  # no API key: the document holds no secret
    assert resp.status == 200
    assert resp.content_type == "application/json"
    document = await resp.json()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on anything not valid OpenAPI 3.1
    assert document == build_document(documented(), document["info"]["version"])


async def test_document_covers_every_route(client: TestClient[Any, Any]) -> None:
    document = await (await client.get(DOCUMENT_PATH)).json()
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    served = []
    subapps = [r._app for r in client.app.router.resources() if hasattr(r, "_app")]
    for app in (client.app, *subapps):
        for route in app.router.routes():
            path = route.resource.canonical if route.resource else ""  # with /api, once mounted
            # The dashboard's pages are for a browser, not part of the API; a route of
            # every method answers what no other route takes (404 or 405).
            if not path.startswith(("/api/docs", DOCUMENT_PATH, "/ui")) and route.method != "*":
                served.append((route.method, path, route.handler))
    # aiohttp's own HEAD beside a GET runs the GET handler: not an operation of its own.
    gets = {(path, handler) for method, path, handler in served if method == "GET"}
    routes = {
        (method, path)
        for method, path, handler in served
        if not (method == "HEAD" and (path, handler) in gets)
    }
    assert routes - operations == set()
    assert operations - routes == set()


async def test_document_money_is_a_decimal_string(client: TestClient[Any, Any]) -> None:
    schemas = (await (await client.get(DOCUMENT_PATH)).json())["components"]["schemas"]
    for name in ("OfferOut", "CostOut", "TrafficSourceOut"):
        money = [p for p in schemas[name]["properties"].values() if "pattern" in str(p)]
        assert money, name
    assert schemas["CostOut"]["properties"]["cost"]["type"] == "string"
    assert schemas["OfferOut"]["properties"]["payout"]["anyOf"][0]["type"] == "string"


async def test_api_routes_need_the_key_but_not_the_document(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/api/campaigns")).status == 401
    document = await (await client.get(DOCUMENT_PATH)).json()
    assert document["paths"]["/api/campaigns"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/postback"]["get"]
    assert "401" in document["paths"]["/api/campaigns"]["get"]["responses"]


def test_report_parameters_match_the_parser() -> None:
    documented_names = {field.alias or name for name, field in ReportQuery.model_fields.items()}
    assert documented_names == set(_KNOWN)


def test_a_field_the_response_model_lacks_fails() -> None:
    row = {
        "id": 1, "key": "k", "click_url": "http://t/c/k", "name": "n", "traffic_source_id": 1,
        "offers": [], "landers": [], "rules": [], "cost_model": "none", "cost_value": None,
        "attribution_window_days": 30, "report_currency": "USD", "bot_action": "offer",
        "bot_url": None, "unique_window_hours": 24, "timezone": "UTC", "postback_url": None,
        "postback_method": None, "postback_body": None, "postback_body_format": None,
        "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
        "archived_at": None,
    }  # fmt: skip
    assert shaped(CampaignOut, row)["key"] == "k"
    with pytest.raises(ValidationError):
        shaped(CampaignOut, {**row, "secret_column": "x"})


async def test_docs_page_loads_its_assets_from_the_tracker(client: TestClient[Any, Any]) -> None:
    resp = await client.get(DOCS_PATH)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    references = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert references, page
    # Every asset from this tracker: no other host, no protocol-relative URL.
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in references)
    assert "http://" not in page and "https://" not in page
    expected_types = {
        ".css": "text/css",
        ".js": "text/javascript",
        ".png": "image/png",
    }
    for ref in references:
        asset = await client.get(ref)
        assert asset.status == 200, ref
        wanted = expected_types[Path(ref).suffix]
        got = asset.content_type
        assert got == wanted or (wanted == "text/javascript" and got == "application/javascript")
        assert len(await asset.read()) > 0
    assert any(
        ref.startswith(ASSETS_PATH) and ref.endswith("swagger-ui-bundle.js") for ref in references
    )
    start = await (await client.get(f"{DOCS_PATH}/start.js")).text()
    assert DOCUMENT_PATH in start
    assert "validatorUrl: null" in start  # no badge from a public validator
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_postback_answers_match_their_documented_models(api: Api) -> None:
    """The postback path answers without a model (it is a hot path): its answers are
    held to the documented ones here, each with every field it may carry."""
    made = await api.setup_campaign()
    click = await api.client.get(
        urlsplit(made["campaign"]["click_url"]).path, allow_redirects=False
    )
    click_id = click.headers["Location"].split("cid=")[1]
    token = made["network"]["postback_token"]
    answers = []
    for params, status in (
        ({"clickid": click_id, "txid": "t1", "payout": "2.50", "token": token}, 200),
        ({"clickid": click_id, "txid": "t1", "payout": "2.50", "token": token}, 200),
        ({"clickid": "0" * 26, "token": token}, 404),
        ({"clickid": click_id, "token": "wrong"}, 403),
        ({"clickid": click_id, "payout": "1e3", "token": token}, 400),
    ):
        resp = await api.client.get("/postback", params=params)
        assert resp.status == status, await resp.text()
        answers.append((status, await resp.json()))
    assert [body.get("result") for _, body in answers] == [
        "created", "duplicate", "unmatched", "rejected-auth", "invalid"
    ]  # fmt: skip
    for status, body in answers:
        model = PostbackOut if status == 200 else PostbackRefusalOut
        model.model_validate(body)  # extra fields are refused
    assert any(body.get("details") for _, body in answers)


async def test_an_empty_multipart_upload_is_a_400(api: Api) -> None:
    """Found by schemathesis: a multipart body whose only part has no headers was a 500."""
    body = b"--4bea\r\n--4bea--\r\n"
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=4bea"}
    resp = await api.client.post("/api/conversions/upload", data=body, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith("unreadable multipart body")


SCHEMATHESIS_CHECKS = (
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance,ignored_auth"
)


@pytest.mark.timeout(240)
async def test_schemathesis_finds_no_error(settings: Settings, tmp_path: Path) -> None:
    """Every operation, positive and negative inputs, deterministic: no 500, every
    answer documented and matching its schema. The per-address failure limits are
    lifted: with them, most requests would test only the 429 of the lockout."""
    settings = settings.model_copy(
        update={"admin_auth_max_failures": 10**6, "postback_failures_per_minute": 10**6}
    )
    client = await start_client(create_app(settings), settings)
    try:
        made = await Api(client).setup_campaign()
        # Real values for the click and postback paths, so that their logic runs too.
        (tmp_path / "schemathesis.toml").write_text(
            "[parameters]\n"
            f'"path.campaign_key" = "{made["campaign"]["key"]}"\n'
            f'"path.token" = "{made["network"]["postback_token"]}"\n'
        )
        await run_schemathesis(client, tmp_path)
    finally:
        await client.close()
    redis = Redis.from_url(settings.redis_url)
    try:
        clicks = await click_stream_length(redis)
    finally:
        await redis.aclose()
    print(f"clicks recorded during the run: {clicks}")
    assert clicks > 0


async def run_schemathesis(client: TestClient[Any, Any], tmp_path: Path) -> None:
    base = str(client.make_url("/")).rstrip("/")
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}{DOCUMENT_PATH}",
        "--url", base,
        "--checks", SCHEMATHESIS_CHECKS,
        "--header", f"Authorization: Bearer {API_KEY}",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "5",
        "--generation-deterministic",
        "--workers", "1",
        "--max-redirects", "0",
        "--request-timeout", "10",
        "--no-color",
        "--suppress-health-check", "all",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    text = output.decode(errors="replace")
    print(text[-3000:])
    assert process.returncode == 0, text[-20000:]
    # The run reached the handlers, rather than the lockout of a failing address.
    assert "Rate limited" not in text, text[-5000:]


@pytest.mark.parametrize("path", ["/api/conversions/upload", "/postback"])
async def test_a_multipart_part_with_a_broken_header_is_a_400(api: Api, path: str) -> None:
    body = b"--4bea\r\nno colon here\r\n\r\nx\r\n--4bea--\r\n"
    headers = {**api.headers, "Content-Type": "multipart/form-data; boundary=4bea"}
    resp = await api.client.post(path, data=body, headers=headers)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]
