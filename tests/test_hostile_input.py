"""Hostile and malformed input: always a JSON 4xx (or a clean success), never a 5xx,
never a lost click or postback log row."""

import asyncio
from decimal import Decimal
from typing import Any

import orjson
import pytest

from tests.conftest import API_KEY, wait_for_sink
from tests.test_click import click_path
from tests.test_postback import make_click
from tracker.store import keys

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def raw_request(client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes the client library would refuse to send; return status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    if body:
        head += b"\r\nContent-Length: %d" % len(body)
    writer.write(head + b"\r\nHost: t\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


def hostile_bodies() -> list[tuple[str, bytes, dict[str, str]]]:
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("empty JSON", b"", JSON),
        ("not JSON", b"{nope", JSON),
        ("array", b"[1, 2]", JSON),
        ("string", b'"x"', JSON),
        ("null", b"null", JSON),
        ("deep nesting", deep, JSON),
        ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, JSON),
        ("invalid UTF-8", b'{"name": "\xff\xfe"}', JSON),
        ("UTF-16", '{"name": "x"}'.encode("utf-16"), JSON),
        ("lone surrogate", b'{"name": "\\ud800", "clickid": "\\udfff"}', JSON),
        ("NUL escape", b'{"name": "a\\u0000b", "clickid": "a\\u0000"}', JSON),
        ("NaN", b'{"name": NaN, "payout": NaN}', JSON),
        ("huge int", b'{"name": 1' + b"0" * 5000 + b"}", JSON),
        ("BOM", b'\xef\xbb\xbf{"name": "x"}', JSON),
        ("form as JSON", b"name=x", JSON),
        (
            "bad charset",
            b"name=x&clickid=y",
            {"Content-Type": FORM["Content-Type"] + "; charset=bogus"},
        ),
        ("raw bytes in form", b"name=\xff\xfe&clickid=\xff", FORM),
        ("text/plain", b"clickid=x", {"Content-Type": "text/plain"}),
        ("xml", b"<a/>", {"Content-Type": "application/xml"}),
        (
            "bad multipart",
            b'--XX\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\x00\r\n--XX--\r\n',
            {"Content-Type": "multipart/form-data; boundary=XX"},
        ),
        ("multipart without boundary", b"abc", {"Content-Type": "multipart/form-data"}),
    ]


HOSTILE_QUERIES = [
    "limit=%00",
    "limit=\uff11\uff10",
    "limit=1_0",
    "limit=99999999999999999999999",
    "offset=-1",
    "network_id=99999999999999999999",
    "network_id=-1",
    "network_id=%D9%A1",
    "campaign_id=99999999999999999999&from=2024-01-01&to=2024-01-02",
    "campaign_id=%00&from=2024-01-01&to=2024-01-02",
    "from=0000-01-01&to=2024-01-01",
    "from=-2024-01-01&to=2024-01-01",
    "from=10000-01-01&to=10000-01-02",
    "from=2024-02-30&to=2024-03-01",
    "result=%00",
    "result=%ED%A0%80",
    "%00=1",
    "%FF=%FF",
    "group_by=%00",
    "include_archived=%00",
]


@pytest.mark.faults
async def test_hostile_table_never_answers_5xx(client, api, pool):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    admin_paths = [
        "/api/traffic-sources",
        "/api/affiliate-networks",
        "/api/offers",
        "/api/campaigns",
        "/api/currency-rates",
    ]
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for _name, body, headers in hostile_bodies():
        for path in (*admin_paths, "/postback", f"/postback/{token}"):
            requests.append(("POST", path, {"data": body, "headers": {**AUTH, **headers}}))
        requests.append(("PATCH", "/api/offers/1", {"data": body, "headers": {**AUTH, **headers}}))
    for path in (*admin_paths[:4], "/api/postbacks", "/api/reports", "/api/currency-rates"):
        for query in HOSTILE_QUERIES:
            requests.append(("GET", f"{path}?{query}", {"headers": AUTH}))
    for bad_id in ("99999999999999999999", "-1", "0", "1e3", "%00", "\uff11", "9" * 5000):
        for path in admin_paths[:4]:
            for method in ("GET", "PATCH", "DELETE"):
                requests.append((method, f"{path}/{bad_id}", {"headers": AUTH, "json": {}}))
    hostile_values = ["%00", "%FF", "%ED%A0%80", "a%00b", "1e3", "%EF%BC%91", "-1", "NaN", "0x1"]
    for value in hostile_values:
        for field in ("clickid", "payout", "txid", "currency", "status", "token", "parent_txid"):
            query = f"clickid={click_id}&token={token}&{field}={value}"
            requests.append(("GET", f"/postback?{query}", {}))
            requests.append(("POST", "/postback", {"data": query, "headers": FORM}))
    for query in ("payout=99999999999999999999", "payout=-5", "currency=XYZ", "currency=ABC"):
        requests.append(("GET", f"/postback?clickid={click_id}&token={token}&{query}", {}))
    for payload in (
        {"clickid": click_id, "token": token, "payout": True},
        {"clickid": click_id, "token": token, "currency": False},
        {"clickid": click_id, "token": token, "txid": {"a": 1}},
        {"clickid": click_id, "token": token, "txid": [1]},
        {"clickid": 12345678901234567890, "token": token},
    ):
        requests.append(("POST", "/postback", {"data": orjson.dumps(payload), "headers": JSON}))
    requests.append(
        ("POST", "/postback", {"data": b'{"clickid":"x","payout":1e3}', "headers": JSON})
    )
    for payload in (
        {"name": "a\x00b"},
        {"name": "x", "url": "https://o.example/\x00", "affiliate_network_id": 1},
        {"name": "x", "url": "https://o.example/", "affiliate_network_id": 2**63},
        {"name": "x", "url": "https://o.example/", "affiliate_network_id": 1, "payout": "-1"},
        {"name": "x", "url": "https://o.example/", "affiliate_network_id": 1, "currency": "XYZ"},
        {"name": "x", "url": "https://o.example/", "affiliate_network_id": 1, "currency": 978},
        {"name": "x", "traffic_source_id": 2**63, "offers": [{"offer_id": 1}]},
        {"name": "x", "traffic_source_id": 1, "offers": [{"offer_id": 2**64}]},
        {"currency": "EUR", "rate": "1e3", "valid_from": "2024-01-01"},
        {"currency": "EUR", "rate": "1", "valid_from": "0000-01-01"},
        {"currency": "ABC", "rate": "1", "valid_from": "2024-01-01"},
        {"name": "x", "status_map": {"\x00": "approved"}},
    ):
        for path in admin_paths:
            requests.append(("POST", path, {"json": payload, "headers": AUTH}))
        requests.append(
            ("PATCH", f"/api/offers/{setup['offer']['id']}", {"json": payload, "headers": AUTH})
        )
    statuses: dict[int, int] = {}
    failures = []
    for method, path, kwargs in requests:
        resp = await client.request(method, path, allow_redirects=False, **kwargs)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        text = await resp.read()
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError:
            body = None
        ok_status = resp.status < 500
        ok_body = resp.status < 400 or (isinstance(body, dict) and "error" in body)
        if not (ok_status and ok_body):
            failures.append((method, path[:80], resp.status, text[:200]))
    conversions = await pool.fetchval("SELECT count(*) FROM conversions")
    print(
        f"hostile table: {len(requests)} requests, statuses {sorted(statuses.items())}, "
        f"failures {len(failures)}, conversions {conversions}"
    )
    assert not failures, failures
    assert 500 not in statuses and 503 not in statuses
    # Of all that, the hostile postbacks with clean fields may convert; none with dirt.
    bad = await pool.fetchval(
        "SELECT count(*) FROM conversions "
        "WHERE original_payout < 0 OR txid LIKE '%' || chr(65533) || '%'"
    )
    assert bad == 0


async def test_raw_bytes_in_headers_never_lose_a_click(client, api, redis, pool, sink):
    setup = await api.setup_campaign()
    path = click_path(setup["campaign"]).encode()
    status, _ = await raw_request(
        client,
        b"GET " + path + b"?sub1=a%00b&sub2=%ED%A0%80&zone=%FF%00 HTTP/1.1"
        b"\r\nUser-Agent: Mozilla\xff\xfe\x80\r\nReferer: http://r.example/\xc3\x28",
    )
    assert status == 302
    await wait_for_sink(sink)
    row = await pool.fetchrow("SELECT * FROM clicks")
    assert row["sub1"] == "ab"
    assert row["sub2"] == "\ufffd\ufffd\ufffd"
    assert row["params"] == {"zone": "\ufffd"}
    assert row["user_agent"] == "Mozilla\ufffd\ufffd\ufffd"
    assert row["referrer"] == "http://r.example/\ufffd("
    assert "\x00" not in orjson.dumps(dict(row), default=str).decode()


async def test_dirty_free_text_is_cleaned_and_dirty_values_are_refused(client, api, pool):
    setup = await api.setup_campaign(payout="3.00")
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    resp = await client.get(f"/postback?clickid={click_id}&token={token}&event=s%00ale&note=%FF")
    assert resp.status == 200, await resp.text()
    row = await pool.fetchrow("SELECT event, params FROM conversions")
    assert row["event"] == "sale"
    assert row["params"]["note"] == "\ufffd"
    for field, value in (("txid", "a%00"), ("payout", "%FF"), ("cid", "%ED%A0%80")):
        resp = await client.get(f"/postback?clickid={click_id}&token={token}&{field}={value}")
        assert resp.status == 400
        assert f"parameter '{field}'" in (await resp.json())["error"]
    status, body = await raw_request(
        client,
        b"GET /postback?clickid=" + click_id.encode() + b" HTTP/1.1\r\nX-Signature: \xff\xfe",
    )
    assert status == 400
    assert orjson.loads(body)["error"] == "header X-Signature is not valid UTF-8 text"
    logged = await pool.fetch("SELECT result, raw FROM postback_log ORDER BY id")
    assert [r["result"] for r in logged] == ["created"] + ["invalid"] * 4
    assert all("\x00" not in r["raw"] for r in logged)


async def test_repeated_parameters_first_occurrence_wins(client, api, pool, redis):
    setup = await api.setup_campaign(offer_url="https://o.example/?cid={clickid}&s={sub1}&z={zone}")
    resp = await client.get(
        click_path(setup["campaign"]) + "?sub1=first&sub1=second&zone=1&zone=2",
        allow_redirects=False,
    )
    location = resp.headers["Location"]
    assert location.endswith("&s=first&z=1")
    click_id = location.split("cid=")[1].split("&")[0]
    record = orjson.loads(await redis.get(keys.click_key(click_id)))
    assert (record["sub1"], record["params"]) == ("first", {"zone": "1"})

    token = setup["network"]["postback_token"]
    resp = await client.get(
        f"/postback?clickid={click_id}&token={token}&payout=1&payout=2&txid=a&txid=b"
    )
    assert resp.status == 200, await resp.text()
    # A form body comes before the query string; within the body the first wins too.
    resp = await client.post(
        f"/postback?clickid={click_id}&token={token}&payout=9&txid=q",
        data="payout=3&payout=4&txid=c",
        headers=FORM,
    )
    assert resp.status == 200, await resp.text()
    resp = await client.post(
        "/postback",
        data=f'{{"clickid":"{click_id}","token":"{token}","txid":"d","payout":"5","payout":"6"}}',
        headers=JSON,
    )
    assert resp.status == 200, await resp.text()
    rows = await pool.fetch("SELECT txid, original_payout FROM conversions ORDER BY id")
    assert [(r["txid"], r["original_payout"]) for r in rows] == [
        ("a", Decimal(1)),
        ("c", Decimal(3)),
        ("d", Decimal(5)),
    ]


async def test_json_values_follow_the_money_rules(client, api, pool):
    setup = await api.setup_campaign(payout="7.00")
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])

    async def send(body: str) -> tuple[int, Any]:
        resp = await client.post("/postback", data=body, headers=JSON)
        return resp.status, await resp.json()

    base = f'"clickid":"{click_id}","token":"{token}"'
    assert (await send(f'{{{base},"txid":"n","payout":null,"currency":null}}'))[0] == 200
    assert (await send(f'{{{base},"txid":"e","payout":1e3}}'))[0] == 400
    assert (await send(f'{{{base},"txid":"t","payout":true}}'))[0] == 400
    status, body = await send(f'{{{base},"txid":"x","payout":12.345678901234}}')
    assert status == 400 and body["details"][0]["field"] == "payout"
    assert (await send(f'{{{base},"txid":"i","payout":12}}'))[0] == 200
    assert (await send(f'{{{base},"txid":"z","payout":10.00000}}'))[0] == 200
    rows = await pool.fetch("SELECT txid, original_payout, original_currency FROM conversions")
    assert sorted((r["txid"], r["original_payout"]) for r in rows) == [
        ("i", Decimal(12)),
        ("n", Decimal(7)),
        ("z", Decimal(10)),
    ]
    assert {r["original_currency"] for r in rows} == {"USD"}
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 6


async def test_payout_sign_and_overflow(client, api, pool):
    setup = await api.setup_campaign(payout="3.00")
    token = setup["network"]["postback_token"]
    await api.call(
        "POST",
        "/api/currency-rates",
        expect=201,
        json={"currency": "KWD", "rate": "1000000", "valid_from": "2000-01-01"},
    )
    click_id = await make_click(client, setup["campaign"])

    async def send(expect: int, **params: str) -> Any:
        resp = await client.get("/postback", params={"clickid": click_id, "token": token, **params})
        body = await resp.json()
        assert resp.status == expect, body
        return body

    body = await send(400, txid="neg", payout="-1")
    assert body["details"][0]["field"] == "payout"
    body = await send(400, txid="big", payout="99999999.9999", currency="KWD")
    assert "converted" in body["details"][0]["message"]
    await send(200, txid="ok", payout="10")
    await send(200, txid="ok", payout="-1", status="chargeback")
    await send(200, txid="r", payout="-2", parent_txid="ok")
    assert await pool.fetchval("SELECT refunded FROM conversions WHERE txid = 'ok'") == 3
    results = await pool.fetch("SELECT result FROM postback_log ORDER BY id")
    assert [r["result"] for r in results] == ["invalid", "invalid", "created", "updated", "updated"]
    await api.call(
        "POST",
        "/api/offers",
        expect=400,
        json={"name": "o", "url": "https://o.example/", "affiliate_network_id": 1, "payout": "-1"},
    )


async def test_head_on_the_postback_url_records_nothing(client, api, pool):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    click_id = await make_click(client, setup["campaign"])
    for path in (
        f"/postback?clickid={click_id}&token={token}",
        f"/postback/{token}?clickid={click_id}",
    ):
        resp = await client.head(path)
        assert resp.status == 200
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 0
    resp = await client.get(f"/postback?clickid={click_id}&token={token}")
    assert resp.status == 200  # GET still converts


async def test_extreme_dates_and_ids_in_filters(client, api):
    assert (await api.call("GET", "/api/postbacks?to=9999-12-31&from=0001-01-01"))["items"] == []
    body = await api.call("GET", "/api/reports?from=9999-12-01&to=9999-12-31")
    assert body["rows"] == []
    body = await api.call("GET", "/api/postbacks?network_id=99999999999999999999", expect=400)
    assert body["details"][0]["field"] == "network_id"
    await api.call("GET", "/api/offers/99999999999999999999", expect=404)
    body = await api.call("POST", "/api/traffic-sources", expect=400, json={"name": "a\x00"})
    assert body["details"] == [{"field": "name", "message": "contains a NUL character"}]


@pytest.mark.faults
async def test_dirty_requests_never_fail_a_shared_batch(client, api, pool, sink):
    """Dirty and clean clicks and postbacks at once: each batch they share is written."""
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    path = click_path(setup["campaign"])
    dirty_click = "?sub1=%00&sub2=%ED%A0%80&x%00y=%FF&external_id=a%00b"

    async def click(query: str) -> int:
        resp = await client.get(path + query, allow_redirects=False)
        return resp.status

    statuses = await asyncio.gather(
        *(click(dirty_click if i % 2 else "?sub1=ok") for i in range(40))
    )
    await wait_for_sink(sink)
    stored = await pool.fetchval("SELECT count(*) FROM clicks")
    click_ids = [r["click_id"] for r in await pool.fetch("SELECT click_id FROM clicks")]

    async def postback(i: int) -> int:
        dirty = "&event=a%00&note=%ED%A0%80&%00=1" if i % 2 else ""
        if i % 4 == 3:
            dirty += "&txid=%00"  # comes first so it wins: refused, and still logged
        resp = await client.get(f"/postback?clickid={click_ids[i]}&token={token}{dirty}&txid=t{i}")
        return resp.status

    results = await asyncio.gather(*(postback(i) for i in range(40)))
    logged = await pool.fetchval("SELECT count(*) FROM postback_log")
    conversions = await pool.fetchval("SELECT count(*) FROM conversions")
    print(
        f"shared batches: clicks redirected {statuses.count(302)}/40, stored {stored}; "
        f"postbacks 200 {results.count(200)}, 400 {results.count(400)}, logged {logged}, "
        f"conversions {conversions}"
    )
    assert statuses == [302] * 40 and stored == 40
    assert results.count(200) == 30 and results.count(400) == 10
    assert logged == 40 and conversions == 30


async def test_undecodable_body_encoding_is_a_client_error(client, api):
    setup = await api.setup_campaign()
    token = setup["network"]["postback_token"]
    for encoding in (b"gzip", b"deflate"):
        for path in (b"/postback?token=" + token.encode(), b"/api/traffic-sources"):
            status, body = await raw_request(
                client,
                b"POST " + path + b" HTTP/1.1\r\nContent-Type: application/json"
                b"\r\nAuthorization: Bearer " + API_KEY.encode() + b"\r\nContent-Encoding: "
                b"" + encoding,
                b"not compressed at all",
            )
            assert status == 400, body
            error = orjson.loads(body)["error"]
            assert error == "request body could not be read: Can not decode content-encoding: " + (
                encoding.decode()
            )


async def test_malformed_requests_log_one_warning_not_a_traceback_each(client, caplog):
    malformed = [
        (b"GET /c/x y HTTP/1.1", b""),
        (b"GET /postback?clickid=\xd9\xa1 HTTP/1.1", b""),
        (b"GET /postback HTTP/1.1\r\nX-Timestamp: \x00", b""),
        (b"POST /postback HTTP/1.1\r\nContent-Encoding: gzip", b"not gzip"),
        (b"POST /postback HTTP/1.1\r\nContent-Encoding: deflate", b"not deflate"),
    ] * 4
    with caplog.at_level("DEBUG"):
        for head, body in malformed:
            status, _ = await raw_request(client, head, body)
            assert status == 400
        await asyncio.sleep(0.1)  # a drained body is logged after its answer
    errors = [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    assert errors == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    print(f"{len(malformed)} malformed requests logged {len(warnings)} warning(s)")
    # One per interval, and the interval may have begun in an earlier test.
    assert len(warnings) <= 1
    assert all(w.startswith("malformed request refused: ") for w in warnings)
