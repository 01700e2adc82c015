"""Conversion corrections by CSV: `POST /api/conversions/upload`."""

import io
from decimal import Decimal

import aiohttp
import asyncpg

from tests.conftest import API_KEY
from tests.test_postback import make_click
from tracker.web import upload
from tracker.web.appkeys import POSTBACKS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CSV = {**AUTH, "Content-Type": "text/csv"}
URL = "/api/conversions/upload"


async def send(client, body, expect=200, headers=CSV):
    resp = await client.post(URL, data=body, headers=headers)
    answer = await resp.json()
    assert resp.status == expect, (resp.status, answer)
    return answer


def results(answer):
    return [(r["row"], r["result"]) for r in answer["rows"]]


async def prepared(client, api, clicks=2):
    setup = await api.setup_campaign(payout="3.00")
    ids = [await make_click(client, setup["campaign"]) for _ in range(clicks)]
    return setup, ids


async def test_a_good_file_creates_conversions(client, api, pool):
    setup, (a, b) = await prepared(client, api)
    # Columns in any order and case; an empty cell is not given (the offer's payout).
    body = f"TXID,clickid,Payout,status,currency\nT-1,{a},12.50,,EUR\nT-2,{b},,pending,\n"
    answer = await send(client, body)
    assert results(answer) == [(2, "created"), (3, "created")]
    assert answer["summary"] == {"created": 2}
    first = answer["rows"][0]
    assert (first["clickid"], first["txid"], first["error"]) == (a, "T-1", None)
    rows = await pool.fetch("SELECT * FROM conversions ORDER BY id")
    assert [r["id"] for r in rows] == [r["conversion_id"] for r in answer["rows"]]
    assert [(r["original_payout"], r["original_currency"], r["status"]) for r in rows] == [
        (Decimal("12.50"), "EUR", "approved"),
        (Decimal("3.00"), "USD", "pending"),
    ]
    assert {r["source"] for r in rows} == {"upload"}
    # The network's token, allowlist and signature are not asked for: the API key was.
    assert setup["network"]["require_token"] is True
    # Like any conversion, each goes through the outbox (nothing is configured here).
    assert await pool.fetchval("SELECT count(*) FROM conversions WHERE click_id = $1", a) == 1


async def test_status_changes_and_refunds_update(client, api, pool):
    _, (a, b) = await prepared(client, api)
    await send(client, f"clickid,txid,payout,status\n{a},T-1,50,approved\n{b},T-2,20,pending\n")
    body = (
        "clickid,txid,payout,status\n"
        f"{a},T-1,10,chargeback\n"  # a partial refund: stays approved, 40 left
        f"{b},T-2,25,approved\n"  # approved, repriced
        f"{b},T-2,,lead\n"  # the lifecycle refuses going back
    )
    answer = await send(client, body)
    assert results(answer) == [(2, "updated"), (3, "updated"), (4, "duplicate")]
    rows = await pool.fetch("SELECT txid, status, payout, refunded FROM conversions ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("T-1", "approved", Decimal("50"), Decimal("10")),
        ("T-2", "approved", Decimal("25"), Decimal("0")),
    ]
    answer = await send(client, f"clickid,txid,status\n{a},T-1,rejected\n")
    assert results(answer) == [(2, "updated")]
    assert await pool.fetchval("SELECT status FROM conversions WHERE txid = 'T-1'") == "rejected"


async def test_bad_rows_fail_alone_with_their_reason(client, api, pool):
    _, (a, b) = await prepared(client, api)
    body = (
        "clickid,txid,payout,status,currency\n"
        "nosuchclick,T-0,1,,\n"
        f"{a},T-1,abc,,\n"
        f"{a},T-2,1,won,\n"
        f"{a},T-3,1,,XXX\n"
        ",T-4,1,,\n"
        f"{a},T-5\x00,1,,\n"
        f"{a},T-6,1,approved,USD,extra\n"
        f"{b},T-7,7,,\n"
    ).encode() + f"{a},T-8,\xff1,,\n".encode("latin-1")
    answer = await send(client, body)
    assert results(answer) == [
        (2, "unmatched"),
        (3, "invalid"),
        (4, "invalid"),
        (5, "invalid"),
        (6, "invalid"),
        (7, "invalid"),
        (8, "invalid"),
        (9, "created"),
        (10, "invalid"),
    ]
    errors = [r["error"] for r in answer["rows"]]
    assert errors[0] == "unknown click id"
    assert errors[1].startswith("payout: ")
    assert "won" in errors[2]
    assert errors[3].startswith("currency: ")
    assert errors[4].startswith("clickid: ")
    assert errors[5] == "txid contains a NUL character"
    assert errors[6] == "6 cells where the header has 5"
    assert errors[7] is None
    assert errors[8] == "payout is not valid UTF-8 text"
    assert answer["summary"] == {"unmatched": 1, "invalid": 7, "created": 1}
    assert await pool.fetchval("SELECT txid FROM conversions") == "T-7"


async def test_a_file_without_the_header_or_clickid_is_refused(client, api, pool):
    _, (a, _) = await prepared(client, api)
    for body, words in (
        (f"{a},T-1,5,approved,USD\n", "no header"),
        ("txid,payout\nT-1,5\n", "missing column 'clickid'"),
        ("clickid,txid,paoyut\nx,T-1,5\n", "unknown columns 'paoyut'"),
        ("clickid,txid,txid\nx,T-1,T-2\n", "columns named twice: 'txid'"),
        ("", "empty file"),
        (f'clickid,txid\n{a},"T-1\n', "line 2: unreadable CSV"),
    ):
        answer = await send(client, body, 400)
        assert words in answer["error"], answer
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == 0


async def test_uploading_a_file_twice_makes_no_second_conversion(client, api, pool):
    _, (a, b) = await prepared(client, api)
    body = f"clickid,txid,payout\n{a},T-1,5\n{b},T-2,6\n{a},T-1,5\n"
    first = await send(client, body)
    assert results(first) == [(2, "created"), (3, "created"), (4, "duplicate")]
    again = await send(client, body)
    assert results(again) == [(2, "duplicate"), (3, "duplicate"), (4, "duplicate")]
    assert [r["conversion_id"] for r in again["rows"]] == [
        r["conversion_id"] for r in first["rows"]
    ]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 2


async def test_bom_crlf_and_quoted_fields(client, api, pool):
    _, (a, b) = await prepared(client, api)
    body = (
        f'\ufeffclickid,txid,payout\r\n{a},"T-1, first",5\r\n\r\n"{b}","T ""2""",6\r\n'
    ).encode()
    answer = await send(client, body, headers={**AUTH, "Content-Type": "text/csv; charset=utf-8"})
    assert results(answer) == [(2, "created"), (4, "created")]
    assert [r["txid"] for r in answer["rows"]] == ["T-1, first", 'T "2"']
    txids = await pool.fetch("SELECT txid FROM conversions ORDER BY id")
    assert [r["txid"] for r in txids] == ["T-1, first", 'T "2"']


async def test_a_file_without_content_type_or_latin1_charset(client, api, pool):
    _, (a, _) = await prepared(client, api)
    body = f"clickid,txid\n{a},T-1\n".encode()
    answer = await send(client, body, headers={**AUTH, "Content-Type": ""})
    assert results(answer) == [(2, "created")]
    latin = {**AUTH, "Content-Type": "text/csv; charset=latin-1"}
    assert "UTF-8" in (await send(client, body, 400, headers=latin))["error"]
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert "text/csv" in (await send(client, b"{}", 415, headers=json_type))["error"]


async def test_multipart_upload(client, api, pool):
    _, (a, _) = await prepared(client, api)
    form = aiohttp.FormData()
    form.add_field("note", "ignored")
    form.add_field(
        "file", f"clickid,txid\n{a},T-1\n".encode(), filename="fix.csv", content_type="text/csv"
    )
    answer = await send(client, form, headers=AUTH)
    assert results(answer) == [(2, "created")]
    # A form of one field, whatever its name, is the file too.
    form = aiohttp.FormData()
    form.add_field("csv", f"clickid,txid\n{a},T-2\n".encode(), filename="fix.csv")
    assert results(await send(client, form, headers=AUTH)) == [(2, "created")]
    form = aiohttp.FormData()
    form.add_field("a", b"clickid\nx\n", filename="a.csv")
    form.add_field("b", b"clickid\nx\n", filename="b.csv")
    assert "field named 'file'" in (await send(client, form, 400, headers=AUTH))["error"]


async def test_rows_are_in_the_postback_log_as_upload(client, api, pool):
    setup, (a, _) = await prepared(client, api)
    await send(client, f"clickid,txid,payout\n{a},T-1,5\nnosuchclick,T-2,1\n{a},T-3,abc\n")
    items = (await api.call("GET", "/api/postbacks"))["items"]
    assert [(i["source"], i["result"]) for i in reversed(items)] == [
        ("upload", "created"),
        ("upload", "unmatched"),
        ("upload", "invalid"),
    ]
    created = items[-1]
    assert created["params"] == {"clickid": a, "txid": "T-1", "payout": "5"}
    assert created["network_id"] == setup["network"]["id"]


async def test_failed_rows_do_not_count_against_the_address(client, api, pool, settings):
    await api.setup_campaign()
    rows = "".join(f"nosuchclick{i},T-{i}\n" for i in range(settings.postback_failures_per_minute))
    answer = await send(client, "clickid,txid\n" + rows + "nosuchclick,T-x\n")
    assert answer["summary"] == {"unmatched": settings.postback_failures_per_minute + 1}
    assert await pool.fetchval("SELECT count(*) FROM postback_log") == len(answer["rows"])


async def test_no_api_key_is_refused(client, api, pool):
    _, (a, _) = await prepared(client, api)
    resp = await client.post(URL, data=f"clickid\n{a}\n", headers={"Content-Type": "text/csv"})
    assert resp.status == 401
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0


async def test_too_large_a_file_is_refused(client, api, pool, monkeypatch):
    _, (a, _) = await prepared(client, api)
    big = b"clickid,txid\n" + b"x,y\n" * (upload.MAX_BYTES // 4)
    answer = await send(client, io.BytesIO(big), 413)  # refused on its Content-Length
    assert "larger than 5 MB" in answer["error"]

    async def chunks():
        yield big  # no Content-Length: the cap is checked as the body arrives

    answer = await send(client, chunks(), 413)
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(big), filename="big.csv")
    assert "larger than" in (await send(client, form, 413, headers=AUTH))["error"]
    monkeypatch.setattr(upload, "MAX_ROWS", 2)
    answer = await send(client, f"clickid\n{a}\n{a}\n{a}\n", 413)
    assert "more than 2 rows" in answer["error"]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 0


async def test_storage_failure_stops_the_upload_and_says_where(client, api, pool, monkeypatch):
    _, (a, b) = await prepared(client, api)
    processor = client.server.app[POSTBACKS]
    process = processor.process
    calls = 0

    async def failing(inbound):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise asyncpg.PostgresConnectionError("connection lost")
        return await process(inbound)

    monkeypatch.setattr(processor, "process", failing)
    body = f"clickid,txid\n{a},T-1\n{b},T-2\n{a},T-3\n"
    answer = await send(client, body, 503)
    assert results(answer) == [(2, "created")]
    assert answer["not_applied"] == {"from_row": 3, "rows": 2}
    assert "from line 3 on were not applied" in answer["error"]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    # Once storage is back, the same file applies the rest; the first row is no repeat.
    monkeypatch.setattr(processor, "process", process)
    answer = await send(client, body)
    assert results(answer) == [(2, "duplicate"), (3, "created"), (4, "created")]
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 3


async def test_network_checks_are_not_asked_for(client, api, pool):
    setup, (a, _) = await prepared(client, api)
    network_id = setup["network"]["id"]
    await api.call(
        "PATCH",
        f"/api/affiliate-networks/{network_id}",
        json={
            "signing_secret": "s" * 32,
            "ip_allowlist": ["203.0.113.0/24"],
            "status_map": {"2": "rejected"},
        },
    )
    answer = await send(client, f"clickid,txid,status\n{a},T-1,\n{a},T-1,2\n")
    assert results(answer) == [(2, "created"), (3, "updated")]
    assert await pool.fetchval("SELECT status FROM conversions") == "rejected"
    # A postback for the same click still needs them.
    resp = await client.get("/postback", params={"clickid": a, "txid": "T-2"})
    assert resp.status == 403
