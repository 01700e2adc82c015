"""The outbox: deliveries written with their conversion, sent by the sender to a real
local receiver, retried, given up, replayed; several senders; a sender killed mid-send."""

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.test_postback import make_click
from tracker.settings import Settings
from tracker.sink import sender as sender_module
from tracker.sink.sender import DeliverySender, backoff, retry_after


class Receiver:
    """A traffic source's postback endpoint: records every request; answers what the
    test scripts per request number (default 200)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: Callable[[int, web.Request], Any] = lambda n, request: 200
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": body,
                "at": time.monotonic(),
            }
        )
        answer = self.script(len(self.requests), request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        if isinstance(answer, web.StreamResponse):
            return answer
        return web.Response(status=answer, text=f"answer {answer}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def keys(self) -> list[str]:
        return [r["headers"]["Idempotency-Key"] for r in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    await r.server.close()


def sender_settings(settings: Settings, **changes: Any) -> Settings:
    values = {
        "outbound_allow_private": True,
        "outbound_retry_base_seconds": 0.05,
        "outbound_timeout": 1.0,
        "outbound_connect_timeout": 0.5,
        **changes,
    }
    return settings.model_copy(update=values)


@contextlib.asynccontextmanager
async def running_sender(pool, settings: Settings, **changes: Any) -> AsyncIterator[DeliverySender]:
    sender = DeliverySender(pool, sender_settings(settings, **changes))
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.stop()
        await asyncio.wait_for(task, 10)


async def wait_until(check: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def delivery_states(pool) -> list[str]:
    return [r["state"] for r in await pool.fetch("SELECT state FROM deliveries ORDER BY id")]


async def converted(client, api, receiver: Receiver, source: dict[str, Any] | None = None,
                    txid: str = "T1", **postback: str) -> dict[str, Any]:  # fmt: skip
    """A campaign whose source posts back to `receiver`, a click, and its postback."""
    setup = await api.setup_campaign()
    body = source or {
        "postback_url": receiver.url("/pb?cid={external_id}&p={payout}&s={status}&d={delivery_id}")
    }
    await api.call("PATCH", f"/api/traffic-sources/{setup['source']['id']}", json=body)
    click_id = await make_click(client, setup["campaign"], external_id="ext-1", sub1="zone 7")
    resp = await client.get(
        "/postback",
        params={
            "clickid": click_id,
            "payout": "2.50",
            "txid": txid,
            "token": setup["network"]["postback_token"],
            **postback,
        },
    )
    assert resp.status == 200, await resp.text()
    setup["click_id"] = click_id
    return setup


async def test_a_conversion_is_delivered_within_a_second(client, api, pool, receiver, settings):
    await converted(client, api, receiver)
    # The delivery was written with the conversion, before any sender runs.
    [row] = await pool.fetch("SELECT * FROM deliveries")
    assert (row["state"], row["status"], row["payout"]) == ("pending", "approved", Decimal("2.5"))
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: receiver.requests)
        await wait_until(lambda: sender.delivered == 1)
    [request] = receiver.requests
    assert request["method"] == "GET"
    assert request["query"] == {"cid": "ext-1", "p": "2.5", "s": "approved", "d": str(row["id"])}
    assert request["headers"]["Idempotency-Key"] == str(row["id"])
    delivered = await pool.fetchrow("SELECT * FROM deliveries")
    assert delivered["state"] == "delivered"
    assert delivered["finished_at"] - delivered["created_at"] < timedelta(seconds=1)
    [attempt] = await pool.fetch("SELECT * FROM delivery_attempts")
    assert (attempt["status_code"], attempt["response"], attempt["error"]) == (
        200,
        "answer 200",
        None,
    )
    assert attempt["latency_ms"] >= 0


async def test_the_sender_is_woken_by_new_deliveries(client, api, pool, receiver, settings):
    # A sender that would otherwise look only every 30 s still sends at once.
    async with running_sender(pool, settings) as sender:
        await asyncio.sleep(0.3)  # idle, listening
        started = time.monotonic()
        await converted(client, api, receiver)
        await wait_until(lambda: sender.delivered == 1, within=1.0)
    assert receiver.requests[0]["at"] - started < 1.0


async def test_server_errors_are_retried_then_delivered(client, api, pool, receiver, settings):
    receiver.script = lambda n, request: 500 if n <= 2 else 200
    await converted(client, api, receiver)
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 1)
    assert len(receiver.requests) == 3
    assert len(set(receiver.keys())) == 1  # one delivery, its key on every attempt
    attempts = await pool.fetch("SELECT status_code, error FROM delivery_attempts ORDER BY id")
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert attempts[0]["error"] == "answered 500"
    row = await pool.fetchrow("SELECT state, attempts FROM deliveries")
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 1


async def test_a_timeout_is_retried(client, api, pool, receiver, settings):
    async def slow_first(n, request):
        if n == 1:
            await asyncio.sleep(1.5)
        return 200

    receiver.script = slow_first
    await converted(client, api, receiver)
    async with running_sender(pool, settings, outbound_timeout=0.5) as sender:
        await wait_until(lambda: sender.delivered == 1)
    attempts = await pool.fetch("SELECT status_code, error FROM delivery_attempts ORDER BY id")
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"] == "no answer within 0.5 s"
    assert attempts[-1]["status_code"] == 200


async def test_too_many_requests_waits_for_retry_after(client, api, pool, receiver, settings):
    receiver.script = lambda n, request: (
        web.Response(status=429, headers={"Retry-After": "1"}) if n == 1 else 200
    )
    await converted(client, api, receiver)
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 1, within=5)
    first, second = receiver.requests
    # The backoff alone would have retried after ~0.05 s.
    assert second["at"] - first["at"] >= 0.95
    assert [a["status_code"] for a in await pool.fetch("SELECT * FROM delivery_attempts")] == [
        429,
        200,
    ]


async def test_a_client_error_is_final_at_once(client, api, pool, receiver, settings):
    receiver.script = lambda n, request: 404
    await converted(client, api, receiver)
    async with running_sender(pool, settings):
        await wait_until(lambda: delivery_states(pool), within=5)
        await wait_until(lambda: _state_is(pool, "dead"))
        await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1
    row = await pool.fetchrow("SELECT * FROM deliveries")
    assert (row["attempts"], row["last_error"]) == (1, "answered 404")


async def _state_is(pool, state: str) -> bool:
    return await delivery_states(pool) == [state]


async def test_dead_after_the_attempt_limit_then_retried_by_api(
    client, api, pool, receiver, settings
):
    receiver.script = lambda n, request: 503
    setup = await converted(client, api, receiver)
    async with running_sender(pool, settings, outbound_max_attempts=3):
        await wait_until(lambda: _state_is(pool, "dead"))
        assert len(receiver.requests) == 3
        row = await pool.fetchrow("SELECT * FROM deliveries")
        assert row["last_error"] == "gave up after 3 attempts: answered 503"

        listed = await api.call("GET", "/api/deliveries", params={"status": "dead"})
        [item] = listed["items"]
        assert item["id"] == row["id"] and item["state"] == "dead"
        assert [a["status_code"] for a in item["attempts_log"]] == [503, 503, 503]
        assert item["attempts_log"][0]["response"] == "answer 503"
        assert (await api.call("GET", "/api/deliveries", params={"status": "delivered"}))[
            "items"
        ] == []
        by_source = {"traffic_source_id": str(setup["source"]["id"]), "status": "dead"}
        assert len((await api.call("GET", "/api/deliveries", params=by_source))["items"]) == 1

        receiver.script = lambda n, request: 200
        await api.call("POST", f"/api/deliveries/{row['id']}/retry")
        await wait_until(lambda: _state_is(pool, "delivered"))
    assert len(receiver.requests) == 4
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 4


async def test_retry_and_replay_answer_clearly(client, api, pool, receiver, settings):
    await api.call("POST", "/api/deliveries/999/retry", expect=404)
    await api.call("POST", "/api/deliveries/abc/retry", expect=404)
    await converted(client, api, receiver)
    delivery_id = await pool.fetchval("SELECT id FROM deliveries")
    body = await api.call("POST", f"/api/deliveries/{delivery_id}/retry", expect=409)
    assert body["error"] == f"delivery {delivery_id} is pending already"
    bad = await api.call("POST", "/api/deliveries/replay", expect=400, json={"from": "2026-01-01"})
    assert bad["details"][0]["field"] == "to"
    await api.call(
        "GET", "/api/deliveries", expect=400, params={"status": "lost", "from": "yesterday"}
    )


async def test_replay_sends_dead_deliveries_of_a_range_again(client, api, pool, receiver, settings):
    receiver.script = lambda n, request: 410
    await converted(client, api, receiver, txid="A")
    async with running_sender(pool, settings):
        await wait_until(lambda: _state_is(pool, "dead"))
        today = datetime.now(UTC).date()
        receiver.script = lambda n, request: 200
        old = {"from": "2020-01-01", "to": "2020-01-31"}
        assert (await api.call("POST", "/api/deliveries/replay", json=old))["replayed"] == 0
        now = {"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))}
        assert (await api.call("POST", "/api/deliveries/replay", json=now))["replayed"] == 1
        await wait_until(lambda: _state_is(pool, "delivered"))
        # Only dead ones are replayed.
        assert (await api.call("POST", "/api/deliveries/replay", json=now))["replayed"] == 0


async def test_duplicates_make_no_delivery_and_listed_changes_fire_again(
    client, api, pool, receiver, settings
):
    source = {
        "postback_url": receiver.url("/pb?s={status}&p={payout}"),
        "postback_statuses": ["approved", "chargeback"],
        "postback_status_map": {"approved": "1", "chargeback": "-1"},
    }
    setup = await converted(client, api, receiver, source=source, status="pending")
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 0  # pending is not listed
    token = setup["network"]["postback_token"]
    base = {"clickid": setup["click_id"], "txid": "T1", "token": token}
    for status in ("approved", "approved", "chargeback", "chargeback"):
        resp = await client.get("/postback", params={**base, "status": status})
        assert resp.status == 200
    rows = await pool.fetch("SELECT status, payout FROM deliveries ORDER BY id")
    assert [(r["status"], r["payout"]) for r in rows] == [
        ("approved", Decimal("2.5")),
        ("chargeback", Decimal("-2.5")),
    ]
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 2)
    assert sorted((r["query"]["s"], r["query"]["p"]) for r in receiver.requests) == [
        ("-1", "-2.5"),
        ("1", "2.5"),
    ]


async def test_a_source_without_postback_gets_no_deliveries(client, api, pool):
    setup = await api.setup_campaign()
    click_id = await make_click(client, setup["campaign"])
    params = {"clickid": click_id, "token": setup["network"]["postback_token"]}
    assert (await client.get("/postback", params=params)).status == 200
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_a_campaign_template_overrides_its_sources(client, api, pool, receiver, settings):
    setup = await api.setup_campaign()
    await api.call(
        "PATCH",
        f"/api/traffic-sources/{setup['source']['id']}",
        json={"postback_url": receiver.url("/source?c={clickid}")},
    )
    await api.call(
        "PATCH",
        f"/api/campaigns/{setup['campaign']['id']}",
        json={
            "postback_url": receiver.url("/campaign"),
            "postback_method": "POST",
            "postback_body": '{"click": "{clickid}", "amount": {payout}}',
        },
    )
    click_id = await make_click(client, setup["campaign"])
    params = {"clickid": click_id, "payout": "1.10", "token": setup["network"]["postback_token"]}
    assert (await client.get("/postback", params=params)).status == 200
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 1)
    [request] = receiver.requests
    assert (request["method"], request["path"]) == ("POST", "/campaign")
    assert request["body"] == f'{{"click": "{click_id}", "amount": 1.1}}'.encode()
    assert request["headers"]["Content-Type"] == "application/json"


async def test_a_rolled_back_conversion_leaves_no_delivery(client, api, pool, receiver):
    setup = await converted(client, api, receiver)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await insert_conversions(conn, setup["source"]["id"], setup["campaign"]["id"], 3)
        assert await conn.fetchval("SELECT count(*) FROM deliveries") == 4  # seen inside
        await tx.rollback()
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1


async def insert_conversions(db, source_id: int, campaign_id: int, count: int) -> None:
    """`count` approved conversions written as the conversion writer does, in one go."""
    await db.execute(
        """
        WITH c AS (
            INSERT INTO conversions (click_id, dedupe_key, txid, campaign_id, offer_id,
                traffic_source_id, click_time, payout, currency, original_payout,
                original_currency, status, params)
            SELECT 'bulk' || n, 'k' || n, 't' || n, $2, 1, $1, now(), 1.5, 'USD', 1.5, 'USD',
                   'approved', '{}'
            FROM generate_series(1, $3) n
            RETURNING id, status, payout
        )
        INSERT INTO conversion_history (conversion_id, old_status, new_status, payout, params)
        SELECT id, NULL, status, payout, '{}' FROM c
        """,
        source_id,
        campaign_id,
        count,
    )


async def test_two_senders_never_send_one_delivery_twice(client, api, pool, receiver, settings):
    setup = await api.setup_campaign()
    await api.call(
        "PATCH",
        f"/api/traffic-sources/{setup['source']['id']}",
        json={"postback_url": receiver.url("/pb?d={delivery_id}")},
    )
    await insert_conversions(pool, setup["source"]["id"], setup["campaign"]["id"], 400)
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 400
    async with (
        running_sender(pool, settings, outbound_concurrency=20) as one,
        running_sender(pool, settings, outbound_concurrency=20) as two,
    ):
        await wait_until(lambda: one.delivered + two.delivered == 400, within=30)
    keys = receiver.keys()
    assert len(keys) == 400 and len(set(keys)) == 400
    assert one.delivered > 0 and two.delivered > 0
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 400


async def test_a_sender_killed_mid_send_is_followed_by_one_resend(
    client, api, pool, receiver, settings
):
    hold = asyncio.Event()

    async def held_first(n, request):
        if n == 1:
            await hold.wait()
        return 200

    receiver.script = held_first
    await converted(client, api, receiver)
    env = {
        **os.environ,
        "TRACKER_DATABASE_URL": settings.database_url,
        "TRACKER_REDIS_URL": settings.redis_url,
        "TRACKER_OUTBOUND_ALLOW_PRIVATE": "true",
        "TRACKER_OUTBOUND_TIMEOUT": "1",
    }
    process = subprocess.Popen([sys.executable, "-m", "tracker", "sender"], env=env)
    try:
        await wait_until(lambda: receiver.requests, within=15)
        process.send_signal(signal.SIGKILL)  # sent, not recorded
        process.wait(5)
    finally:
        if process.poll() is None:
            process.kill()
    hold.set()
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 0
    async with running_sender(pool, settings) as sender:
        # Its lease (twice 1 s, plus 1 s) runs out; then another sender sends it again.
        await wait_until(lambda: sender.delivered == 1, within=10)
    first, second = receiver.requests
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"]
    assert first["query"] == second["query"]
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await pool.fetchval("SELECT count(*) FROM conversions") == 1
    row = await pool.fetchrow("SELECT state, attempts FROM deliveries")
    assert (row["state"], row["attempts"]) == ("delivered", 2)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/pb",
        "http://localhost:{port}/pb",
        "http://[::1]:{port}/pb",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/pb",
        "http://100.64.0.1/pb",
    ],
)
async def test_private_destinations_are_refused(client, api, pool, receiver, settings, url):
    source = {"postback_url": url.format(port=receiver.server.port)}
    await converted(client, api, receiver, source=source)
    async with running_sender(pool, settings, outbound_allow_private=False):
        await wait_until(lambda: _state_is(pool, "dead"))
    assert receiver.requests == []
    row = await pool.fetchrow("SELECT attempts, last_error FROM deliveries")
    assert row["attempts"] == 1
    assert "not a public address: deliveries to it are refused" in row["last_error"]


async def test_a_redirect_to_a_private_address_is_refused(
    client, api, pool, receiver, settings, monkeypatch
):
    # Every hop is checked: a public host that redirects inward is refused. The local
    # receiver stands for the public host: only its own address is let through.
    receiver.script = lambda n, request: web.Response(
        status=302, headers={"Location": "http://169.254.169.254/latest/"}
    )
    real = sender_module.check_destination

    def check(url, allow_private):
        return None if url.host == "127.0.0.1" else real(url, allow_private)

    monkeypatch.setattr(sender_module, "check_destination", check)
    await converted(client, api, receiver)
    async with running_sender(pool, settings, outbound_allow_private=False):
        await wait_until(lambda: _state_is(pool, "dead"))
    assert len(receiver.requests) == 1
    error = await pool.fetchval("SELECT last_error FROM deliveries")
    assert "169.254.169.254 is 169.254.169.254, not a public address" in error


def test_backoff_doubles_with_jitter():
    rng = random.Random(1)
    for attempts, ceiling in ((1, 5), (2, 10), (3, 20), (6, 160)):
        waits = [backoff(attempts, 5, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4  # spread out, not in lockstep


def test_retry_after_reads_seconds_and_dates():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("120", now) == 120
    assert retry_after(" 7 ", now) == 7
    assert retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60
    assert retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0
    assert retry_after("99999999999", now) == 6 * 3600
    for bad in (None, "", "soon", "-5", "1.5", "\uff11\uff12"):
        assert retry_after(bad, now) is None


async def test_a_meta_preset_is_sent_with_the_clicks_fbclid(client, api, pool, receiver, settings):
    source = {
        "postback_preset": "meta",
        "postback_credentials": {
            "pixel_id": "1234567890",
            "access_token": "EAAB-secret-token-9876",
        },
    }
    setup = await api.setup_campaign()
    await api.call("PATCH", f"/api/traffic-sources/{setup['source']['id']}", json=source)
    click_id = await make_click(client, setup["campaign"], fbclid="IwAR-abc")
    params = {"clickid": click_id, "payout": "12.5", "token": setup["network"]["postback_token"]}
    assert (await client.get("/postback", params=params)).status == 200
    conversion = await pool.fetchrow("SELECT * FROM conversions")
    assert conversion["click_params"]["fbclid"] == "IwAR-abc"
    assert conversion["user_agent"] and conversion["ip"] == "127.0.0.1"
    async with running_sender(pool, settings, meta_api_url=receiver.url("/v21.0")) as sender:
        await wait_until(lambda: sender.delivered == 1)
    [request] = receiver.requests
    assert (request["method"], request["path"]) == ("POST", "/v21.0/1234567890/events")
    assert request["query"] == {"access_token": "EAAB-secret-token-9876"}
    [event] = orjson.loads(request["body"])["data"]
    delivery_id = await pool.fetchval("SELECT id FROM deliveries")
    assert event["event_id"] == str(delivery_id)
    assert event["event_name"] == "Purchase"
    assert event["action_source"] == "website"
    assert event["event_time"] == int(conversion["created_at"].timestamp())
    click_ms = int(conversion["click_time"].timestamp() * 1000)
    assert event["user_data"]["fbc"] == f"fb.1.{click_ms}.IwAR-abc"
    assert event["user_data"]["client_ip_address"] == "127.0.0.1"
    assert event["user_data"]["client_user_agent"] == conversion["user_agent"]
    assert event["custom_data"] == {"value": 12.5, "currency": "USD"}


async def test_a_google_preset_without_gclid_is_dead_with_the_reason(
    client, api, pool, receiver, settings
):
    source = {
        "postback_preset": "google_ads",
        "postback_credentials": {
            "customer_id": "123-456-7890",
            "conversion_action_id": "555",
            "developer_token": "dev-token-abcdefgh",
            "access_token": "ya29.access-token-xyz",
        },
    }
    await converted(client, api, receiver, source=source)
    async with running_sender(pool, settings, google_ads_api_url=receiver.url("/v18")):
        await wait_until(lambda: _state_is(pool, "dead"))
    assert receiver.requests == []
    error = await pool.fetchval("SELECT last_error FROM deliveries")
    assert error == "cannot build the request: the click has no gclid parameter"


async def test_source_postback_settings_are_checked_and_secrets_masked(api, pool):
    setup = await api.setup_campaign()
    path = f"/api/traffic-sources/{setup['source']['id']}"
    bad = await api.call(
        "PATCH", path, expect=400, json={"postback_url": "https://ts.example/pb?x={nonsense}"}
    )
    assert bad["details"][0]["field"] == "postback_url"
    assert "nonsense" in bad["details"][0]["message"]
    bad = await api.call(
        "PATCH", path, expect=400, json={"postback_preset": "tiktok", "postback_credentials": {}}
    )
    fields = {d["field"] for d in bad["details"]}
    assert {"postback_credentials.pixel_code", "postback_credentials.access_token"} <= fields
    for body, field in (
        ({"postback_statuses": ["approved", "paid"]}, "postback_statuses"),
        ({"postback_share": "0"}, "postback_share"),
        ({"postback_share": "101"}, "postback_share"),
        ({"postback_status_map": {"won": "1"}}, "postback_status_map"),
        ({"postback_method": "PUT"}, "postback_method"),
        ({"postback_signing_secret": "short"}, "postback_signing_secret"),
        ({"postback_body": '{"a": 1}'}, "postback_url"),
    ):
        bad = await api.call("PATCH", path, expect=400, json=body)
        assert bad["details"][0]["field"] == field, (body, bad)

    secret = "whsec-0123456789abcdef"
    token = "tt-access-token-0000-wxyz"
    saved = await api.call(
        "PATCH",
        path,
        json={
            "postback_preset": "tiktok",
            "postback_credentials": {"pixel_code": "C123ABC", "access_token": token},
            "postback_signing_secret": secret,
            "postback_share": "62.5",
            "postback_statuses": ["Approved", "chargeback"],
        },
    )
    assert saved["postback_credentials"] == {"pixel_code": "C123ABC", "access_token": "…wxyz"}
    assert saved["postback_signing_secret"] == "…cdef"
    assert Decimal(saved["postback_share"]) == Decimal("62.5")
    assert saved["postback_statuses"] == ["approved", "chargeback"]
    # What the API showed, sent back, keeps the stored secrets.
    shown = {k: v for k, v in saved.items() if k.startswith("postback_credentials")}
    shown["postback_signing_secret"] = saved["postback_signing_secret"]
    again = await api.call("PATCH", path, json={**shown, "name": "Renamed"})
    assert again["postback_credentials"]["access_token"] == "…wxyz"
    row = await pool.fetchrow("SELECT * FROM traffic_sources WHERE id = $1", saved["id"])
    assert row["postback_credentials"]["access_token"] == token
    assert row["postback_signing_secret"] == secret
    listed = await api.call("GET", "/api/traffic-sources")
    assert token not in str(listed) and secret not in str(listed)


async def test_campaign_postback_template_is_checked(api):
    setup = await api.setup_campaign()
    path = f"/api/campaigns/{setup['campaign']['id']}"
    bad = await api.call(
        "PATCH",
        path,
        expect=400,
        json={
            "postback_url": "https://ts.example/pb",
            "postback_method": "POST",
            "postback_body": '{"a": {payout}',
        },
    )
    assert bad["details"][0]["field"] == "postback_body"
    ok = await api.call("PATCH", path, json={"postback_url": "https://ts.example/pb?c={clickid}"})
    assert ok["postback_url"] == "https://ts.example/pb?c={clickid}"


async def test_a_pixel_conversion_is_delivered_once_with_its_postback(
    client, api, pool, receiver, settings
):
    setup = await converted(client, api, receiver, txid="order-9")
    await api.call(
        "PATCH", f"/api/affiliate-networks/{setup['network']['id']}", json={"allow_pixel": True}
    )
    pixel = await client.get("/px.gif", params={"clickid": setup["click_id"], "txid": "order-9"})
    assert pixel.status == 200
    # Another order of the same click, by pixel only.
    pixel = await client.get("/px.gif", params={"clickid": setup["click_id"], "txid": "order-10"})
    assert pixel.status == 200
    rows = await pool.fetch(
        "SELECT c.txid, c.source FROM deliveries d JOIN conversions c ON c.id = d.conversion_id "
        "ORDER BY d.id"
    )
    assert [(r["txid"], r["source"]) for r in rows] == [
        ("order-9", "postback"),
        ("order-10", "pixel"),
    ]
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 2)
    assert len(receiver.requests) == 2


async def test_google_ads_access_tokens_are_refreshed_and_kept(
    client, api, pool, receiver, settings
):
    tokens = iter(["ya29.first-token", "ya29.second-token"])

    def answer(n, request):
        if request.path == "/token":
            return web.json_response({"access_token": next(tokens), "expires_in": 3599})
        return web.json_response({"results": [{}]})

    receiver.script = answer
    source = {
        "postback_preset": "google_ads",
        "postback_credentials": {
            "customer_id": "123-456-7890",
            "conversion_action_id": "555",
            "developer_token": "dev-token-abcdefgh",
            "client_id": "1234.apps.example",
            "client_secret": "oauth-client-secret",
            "refresh_token": "1//refresh-token-value",
        },
    }
    setup = await api.setup_campaign()
    await api.call("PATCH", f"/api/traffic-sources/{setup['source']['id']}", json=source)
    for txid in ("A", "B"):
        click_id = await make_click(client, setup["campaign"], gclid=f"gclid-{txid}")
        params = {"clickid": click_id, "txid": txid, "token": setup["network"]["postback_token"]}
        assert (await client.get("/postback", params=params)).status == 200
    async with running_sender(
        pool,
        settings,
        google_ads_api_url=receiver.url("/v18"),
        google_oauth_url=receiver.url("/token"),
    ) as sender:
        await wait_until(lambda: sender.delivered == 2)
    token_requests = [r for r in receiver.requests if r["path"] == "/token"]
    assert len(token_requests) == 1  # kept for the second delivery
    form = dict(item.split("=") for item in token_requests[0]["body"].decode().split("&"))
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == "1234.apps.example"
    uploads = [r for r in receiver.requests if r["path"] != "/token"]
    assert [r["path"] for r in uploads] == ["/v18/customers/1234567890:uploadClickConversions"] * 2
    assert {r["headers"]["Authorization"] for r in uploads} == {"Bearer ya29.first-token"}
    assert {orjson.loads(r["body"])["conversions"][0]["gclid"] for r in uploads} == {
        "gclid-A",
        "gclid-B",
    }


async def test_a_refused_refresh_token_is_dead_with_the_reason(
    client, api, pool, receiver, settings
):
    receiver.script = lambda n, request: web.json_response({"error": "invalid_grant"}, status=400)
    source = {
        "postback_preset": "google_ads",
        "postback_credentials": {
            "customer_id": "1234567890",
            "conversion_action_id": "555",
            "developer_token": "dev-token-abcdefgh",
            "client_id": "1234.apps.example",
            "client_secret": "oauth-client-secret",
            "refresh_token": "1//revoked-refresh-token",
        },
    }
    await converted(client, api, receiver, source=source)
    async with running_sender(pool, settings, google_oauth_url=receiver.url("/token")):
        await wait_until(lambda: _state_is(pool, "dead"))
    row = await pool.fetchrow("SELECT attempts, last_error FROM deliveries")
    assert (row["attempts"], row["last_error"]) == (
        1,
        "Google OAuth refused the refresh token: invalid_grant",
    )
    listed = await api.call("GET", "/api/deliveries")
    assert "revoked-refresh-token" not in str(listed)


async def test_signed_postbacks_verify_at_the_receiver(client, api, pool, receiver, settings):
    secret = "source-signing-secret-0042"
    source = {
        "postback_url": receiver.url("/pb?c={sub1}&p={payout}"),
        "postback_signing_secret": secret,
    }
    await converted(client, api, receiver, source=source)
    async with running_sender(pool, settings) as sender:
        await wait_until(lambda: sender.delivered == 1)
    [request] = receiver.requests
    fields = dict(part.split("=", 1) for part in request["headers"]["X-Signature"].split(","))
    # The URL exactly as it arrived: the receiver's own origin, then the raw path and query.
    sent = receiver.url(request["raw_path"])
    expected = hmac.new(secret.encode(), f"{fields['t']}.{sent}".encode(), hashlib.sha256)
    assert hmac.compare_digest(fields["v1"], expected.hexdigest())
    assert abs(int(fields["t"]) - time.time()) < 60
    assert request["query"]["c"] == "zone 7"
    assert "zone%207" in request["raw_path"]


@pytest.mark.parametrize(
    ("answer", "state", "error"),
    [
        # A 200 is delivered whatever nonsense comes with it.
        (
            lambda: web.Response(
                status=200, headers={"Retry-After": "Mon, 01 Jan 99999999999999 00:00:00 GMT"}
            ),
            "delivered",
            None,
        ),
        (
            lambda: web.Response(status=302, headers={"Location": "http://[::1"}),
            "dead",
            "redirected to an invalid URL",
        ),
        (
            lambda: web.Response(status=302, headers={"Location": "http://h:99999/"}),
            "dead",
            "redirected to an invalid URL",
        ),
        (
            lambda: web.Response(status=302, headers={"Location": "/pb?again=1"}),
            "dead",
            "more than 5 redirects",
        ),
        (lambda: web.Response(status=503, headers={"Retry-After": "soon"}), "pending", None),
    ],
)
async def test_odd_answers_are_recorded_not_looped(
    client, api, pool, receiver, settings, answer, state, error
):
    receiver.script = lambda n, request: answer()
    await converted(client, api, receiver)
    async with running_sender(pool, settings, outbound_retry_base_seconds=60) as sender:
        await wait_until(lambda: sender.sent == 1)
    row = await pool.fetchrow("SELECT state, attempts, last_error FROM deliveries")
    assert (row["state"], row["attempts"]) == (state, 1)
    if error is not None:
        assert row["last_error"] == error
    assert await pool.fetchval("SELECT count(*) FROM delivery_attempts") == 1


@pytest.mark.parametrize(
    ("preset", "credentials", "click", "answer", "error"),
    [
        (
            "google_ads",
            {
                "customer_id": "1234567890",
                "conversion_action_id": "555",
                "developer_token": "dev-token-abcdefgh",
                "access_token": "ya29.fixed-access-token",
            },
            {"gclid": "bad-gclid"},
            {"partialFailureError": {"code": 3, "message": "The gclid could not be decoded."}},
            "Google Ads refused the conversion: The gclid could not be decoded.",
        ),
        (
            "tiktok",
            {"pixel_code": "C123ABC", "access_token": "tt-access-token-0000"},
            {"ttclid": "E.C.P.xyz"},
            {"code": 40001, "message": "Invalid access token", "data": {}},
            "TikTok refused the event: code 40001: Invalid access token",
        ),
    ],
)
async def test_a_platform_refusal_inside_a_200_is_not_delivered(
    client, api, pool, receiver, settings, preset, credentials, click, answer, error
):
    receiver.script = lambda n, request: web.json_response(answer)
    setup = await api.setup_campaign()
    source = {"postback_preset": preset, "postback_credentials": credentials}
    await api.call("PATCH", f"/api/traffic-sources/{setup['source']['id']}", json=source)
    click_id = await make_click(client, setup["campaign"], **click)
    params = {"clickid": click_id, "payout": "3", "token": setup["network"]["postback_token"]}
    assert (await client.get("/postback", params=params)).status == 200
    urls = {"google_ads_api_url": receiver.url("/g"), "tiktok_api_url": receiver.url("/t")}
    async with running_sender(pool, settings, **urls):
        await wait_until(lambda: _state_is(pool, "dead"))
    row = await pool.fetchrow("SELECT last_error FROM deliveries")
    assert row["last_error"] == error
    attempt = await pool.fetchrow("SELECT status_code FROM delivery_attempts")
    assert attempt["status_code"] == 200


async def test_attempts_never_recorded_are_given_up(client, api, pool, receiver, settings):
    await converted(client, api, receiver)
    # As if every allowed attempt was claimed by a sender that died before recording it.
    await pool.execute("UPDATE deliveries SET attempts = 3, lease = 3")
    async with running_sender(pool, settings, outbound_max_attempts=3):
        await wait_until(lambda: _state_is(pool, "dead"))
    assert receiver.requests == []
    error = await pool.fetchval("SELECT last_error FROM deliveries")
    assert error == "gave up: 3 attempts were made and never recorded"


def test_secrets_are_redacted_as_written_and_as_url_encoded():
    secret = "EAAB|a/b+c=d"
    quoted = "EAAB%7Ca%2Fb%2Bc%3Dd"
    text = f"400, url='https://x/events?access_token={quoted}' {secret}"
    assert secret not in sender_module.redact(text, [secret])
    assert "%7C" not in sender_module.redact(text, [secret])


async def test_a_chargeback_after_a_partial_refund_reports_what_is_left(
    client, api, pool, receiver
):
    source = {
        "postback_url": receiver.url("/pb?s={status}&p={payout}"),
        "postback_statuses": ["approved", "chargeback"],
    }
    setup = await converted(client, api, receiver, source=source, payout="100")
    token = setup["network"]["postback_token"]
    refund = {"clickid": setup["click_id"], "txid": "R1", "parent_txid": "T1", "payout": "-30"}
    assert (await client.get("/postback", params={**refund, "token": token})).status == 200
    chargeback = {"clickid": setup["click_id"], "txid": "T1", "status": "chargeback"}
    assert (await client.get("/postback", params={**chargeback, "token": token})).status == 200
    rows = await pool.fetch("SELECT status, payout FROM deliveries ORDER BY id")
    assert [(r["status"], r["payout"]) for r in rows] == [
        ("approved", Decimal("100")),
        ("chargeback", Decimal("-30")),
        ("chargeback", Decimal("-70")),
    ]
