"""The admin API's attack surface: token rotation, URL validation, authentication
failures and slow clients."""

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime
from types import SimpleNamespace

import orjson
import pytest

from tests.conftest import API_KEY, start_client
from tests.test_cli import env_for, wait_until_listening
from tests.test_lifecycle import prepared
from tracker.devstack import RedisServer, free_port
from tracker.domain.urls import url_problem
from tracker.web.app import create_app
from tracker.web.appkeys import CONFIG

GOOD_URLS = [
    "https://offer.example/lp?cid={clickid}&s={sub1}#{sub2}",
    "http://offer.example",
    "HTTPS://Offer.Example/x",
    "https://offer.example:8443/{sub1}/path",
    "http://203.0.113.7/lp",
    "http://[2001:db8::1]:8080/lp",
    "https://xn--exmple-cua.example/",
    "https://my_app.offer.example/",
    "https://offer.example/ünïcode-path?q=é",
    "https://offer.example/" + "a" * 3978,
]
BAD_URLS = [
    ("offer.example/lp", "must be an http:// or https:// URL"),
    ("ftp://offer.example/", "must be an http:// or https:// URL"),
    ("javascript:alert(1)//https://x", "must be an http:// or https:// URL"),
    ("https:/offer.example/", "must be an http:// or https:// URL"),
    ("https:offer.example", "must be an http:// or https:// URL"),
    ("{scheme}://offer.example/", "must be an http:// or https:// URL"),
    ("https:///lp", "must name a host"),
    ("https://:8080/lp", "must name a host"),
    ("https://{host}/lp", "macros are allowed only in the path"),
    ("https://offer.example{sub1}/", "macros are allowed only in the path"),
    ("https://offer.example:{port}/", "macros are allowed only in the path"),
    ("https://offer.example:99999/", "is not a valid URL"),
    ("https://offer.example:80a/", "is not a valid URL"),
    ("http://[2001:db8::1/lp", "is not a valid URL"),
    ("https://user:pw@offer.example/", "must not contain a user name or password"),
    ("https://evil.example\\@offer.example/", "must not contain a user name or password"),
    ("https://evil.example\\offer.example/", "is not a valid host name"),
    ("https://exämple.example/", "host must be ASCII"),
    ("https://-bad-.example/", "is not a valid host name"),
    ("https://offer.example/" + "a" * 3979, "must be at most 4000 characters"),
    (" https://offer.example/", "whitespace or control"),
    ("https://offer.example/ ", "whitespace or control"),
    ("https://offer.example/a b", "whitespace or control"),
    ("https://offer.example/\t", "whitespace or control"),
    ("https://offer.example/\n", "whitespace or control"),
    ("https://offer.example\r\nX-Injected: 1", "whitespace or control"),
    ("https://offer.example/\x00", "whitespace or control"),
    ("https://offer.example/\x7f", "whitespace or control"),
    ("https://offer.example/\x85", "whitespace or control"),
    ("https://offer.example/\u00a0", "whitespace or control"),
    ("https://offer.example/\u2028", "whitespace or control"),
    ("https://offer.example/\u2029", "whitespace or control"),
    ("https://offer.example/\u200b", "whitespace or control"),
    ("https://offer.example/\u202e", "whitespace or control"),
    ("https://offer.example/\ufeff", "whitespace or control"),
    ("https://offer.example/\u3000", "whitespace or control"),
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_acceptable_urls(url):
    assert url_problem(url) is None


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_unacceptable_urls(url, problem):
    found = url_problem(url)
    assert found is not None and problem in found, found


async def test_offer_and_traffic_source_urls_are_checked_by_the_api(api):
    setup = await api.setup_campaign()
    offer_path = f"/api/offers/{setup['offer']['id']}"
    source_path = f"/api/traffic-sources/{setup['source']['id']}"
    for url, problem in BAD_URLS[::3]:
        body = {"name": "O", "url": url, "affiliate_network_id": setup["network"]["id"]}
        error = await api.call("POST", "/api/offers", expect=400, json=body)
        assert problem in error["details"][0]["message"], error
        error = await api.call("PATCH", offer_path, expect=400, json={"url": url})
        assert problem in error["details"][0]["message"], error
        error = await api.call("PATCH", source_path, expect=400, json={"postback_url": url})
        assert problem in error["details"][0]["message"], error
    for url in GOOD_URLS[:3]:
        await api.call("PATCH", offer_path, json={"url": url})
    for url in GOOD_URLS[1:4]:
        await api.call("PATCH", source_path, json={"postback_url": url})
    # A postback is a request: a fragment would never reach the source.
    error = await api.call("PATCH", source_path, expect=400, json={"postback_url": GOOD_URLS[0]})
    assert error["details"][0]["message"] == "must not have a #fragment: it is never sent"
    offer = await api.call("GET", offer_path)
    assert offer["url"] == GOOD_URLS[2]


async def wait_until_refused(send, token: str, within: float = 10.0) -> dict:
    """Send postbacks with `token` until one is refused; the refusal's body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    while True:
        attempt += 1
        resp = await send(token, f"wait{attempt}")
        if resp.status == 403:
            return await resp.json()
        assert resp.status == 200, await resp.text()
        if loop.time() > deadline:
            raise AssertionError(f"token still accepted after {within} s")
        await asyncio.sleep(0.1)


async def test_rotated_token_keeps_working_for_the_grace_only(client, api, pool):
    setup, click_id, _ = await prepared(client, api)
    network_id = setup["network"]["id"]
    first = setup["network"]["postback_token"]

    async def send(token, txid):
        return await client.get(
            "/postback", params={"clickid": click_id, "token": token, "txid": txid}
        )

    rotated = await api.call(
        "POST", f"/api/affiliate-networks/{network_id}/rotate-token", json={"grace_seconds": 3600}
    )
    second = rotated["postback_token"]
    assert second != first
    assert rotated["postback_url"].endswith(f"&token={second}")
    assert rotated["previous_postback_token"] == first
    assert datetime.fromisoformat(rotated["previous_token_expires_at"]) > datetime.fromisoformat(
        rotated["updated_at"]
    )
    assert (await send(first, "a")).status == 200
    assert (await send(second, "b")).status == 200

    # A second rotation, with a grace of one second: the first token stops at once,
    # the second lasts the second, the third works.
    rotated = await api.call(
        "POST", f"/api/affiliate-networks/{network_id}/rotate-token", json={"grace_seconds": 1}
    )
    third = rotated["postback_token"]
    resp = await send(first, "c")
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden: wrong token"
    assert (await wait_until_refused(send, second))["error"] == "forbidden: wrong token"
    assert (await send(third, "d")).status == 200
    assert (
        await pool.fetchval("SELECT count(*) FROM postback_log WHERE result = 'rejected-auth'") == 2
    )


async def test_rotation_without_grace_refuses_the_old_token_at_once(client, api, pool):
    setup, click_id, send = await prepared(client, api)
    network_id = setup["network"]["id"]
    rotated = await api.call("POST", f"/api/affiliate-networks/{network_id}/rotate-token")
    assert rotated["previous_postback_token"] is None
    assert rotated["previous_token_expires_at"] is None
    assert (await send(expect=403, txid="x")) == "rejected-auth"
    resp = await client.get(
        "/postback",
        params={"clickid": click_id, "token": rotated["postback_token"], "txid": "y"},
    )
    assert resp.status == 200
    # The network's listing shows the token now in use.
    listed = await api.call("GET", f"/api/affiliate-networks/{network_id}")
    assert listed["postback_token"] == rotated["postback_token"]


async def test_rotation_requests_are_checked(client, api):
    setup = await api.setup_campaign()
    path = f"/api/affiliate-networks/{setup['network']['id']}/rotate-token"
    for body in ({"grace_seconds": -1}, {"grace_seconds": 30 * 86400 + 1}, {"grace": 5}):
        error = await api.call("POST", path, expect=400, json=body)
        assert error["details"], error
    error = await api.call("POST", path, expect=400, data=b"[1]")
    assert error == {"error": "request body must be a JSON object"}
    await api.call("POST", path, json={"grace_seconds": 30 * 86400})
    await api.call("POST", "/api/affiliate-networks/999/rotate-token", expect=404)
    resp = await client.post(path)
    assert resp.status == 401
    unchanged = await api.call("GET", f"/api/affiliate-networks/{setup['network']['id']}")
    assert unchanged["previous_token_expires_at"] is not None


async def test_archived_networks_are_marked_in_the_configuration(client, api):
    setup = await api.setup_campaign()
    network_id = setup["network"]["id"]
    config = client.app[CONFIG]
    assert config.snapshot.networks[network_id].archived is False
    await api.call("DELETE", f"/api/affiliate-networks/{network_id}")
    assert config.snapshot.networks[network_id].archived is True


async def raw_request(client, head: bytes) -> bytes:
    """Send `head` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe",
        b"Bearer " + API_KEY.encode() + b"\x80",
        "Bearer clé".encode(),
        "Bearer " + API_KEY + "\u00e9",
        b"Bearer",
        b"Bearer ",
        b"Basic " + API_KEY.encode(),
        API_KEY.encode(),
        b"\xc3\x28",
    ],
)
async def test_malformed_authorization_headers_are_401_json(client, authorization):
    if isinstance(authorization, str):
        authorization = authorization.encode()
    answer = await raw_request(
        client,
        b"GET /api/affiliate-networks HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Authorization: " + authorization + b"\r\n\r\n",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer
    assert b"Content-Type: application/json" in head
    assert orjson.loads(body) == {"error": "missing or wrong API key"}


async def test_the_bearer_scheme_is_case_insensitive(client):
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {API_KEY}"}
        resp = await client.get("/api/affiliate-networks", headers=headers)
        assert resp.status == 200, scheme


async def limited_client(settings, **changes):
    limited = settings.model_copy(
        update={"admin_auth_max_failures": 3, "trusted_proxies": ["127.0.0.1"], **changes}
    )
    return await start_client(create_app(limited), limited)


async def admin_get(client, address: str, key: str):
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": address}
    resp = await client.get("/api/affiliate-networks", headers=headers)
    return resp.status, resp.headers.get("Retry-After"), await resp.json()


async def test_repeated_failures_from_one_address_are_throttled(settings, redis):
    client = await limited_client(settings, admin_auth_window_seconds=1)
    try:
        for _ in range(10):  # successes are not counted
            assert (await admin_get(client, "198.51.100.1", API_KEY))[0] == 200
        for _ in range(3):
            assert (await admin_get(client, "198.51.100.1", "guess"))[0] == 401
        status, retry_after, body = await admin_get(client, "198.51.100.1", API_KEY)
        assert (status, retry_after) == (429, "1")
        assert body == {"error": "too many failed authentications from this address, retry later"}
        assert (await admin_get(client, "198.51.100.1", "guess"))[0] == 429
        # Another address is not affected.
        assert (await admin_get(client, "198.51.100.2", API_KEY))[0] == 200
        assert await redis.get("authfail:198.51.100.1") == b"3"
        # Once the window ends the address may try again.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (await admin_get(client, "198.51.100.1", API_KEY))[0] == 429:
            assert loop.time() < deadline, "still throttled after the window"
            await asyncio.sleep(0.1)
        assert (await admin_get(client, "198.51.100.1", API_KEY))[0] == 200
    finally:
        await client.close()


@pytest.mark.faults
@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_failure_counting_survives_a_redis_outage(settings, tmp_path, outage):
    own_redis = RedisServer(tmp_path / "redis", free_port(), persistent=False)
    own_redis.start()
    client = await limited_client(settings, redis_url=own_redis.url())
    try:
        assert (await admin_get(client, "203.0.113.5", API_KEY))[0] == 200
        assert own_redis.process is not None
        if outage == "stopped":
            own_redis.stop()
        else:
            os.kill(own_redis.process.pid, signal.SIGSTOP)
        answers = [await admin_get(client, "203.0.113.5", API_KEY) for _ in range(3)]
        answers += [await admin_get(client, "203.0.113.5", "guess") for _ in range(4)]
        answers.append(await admin_get(client, "203.0.113.5", API_KEY))
        statuses = [status for status, _, _ in answers]
        other_answer = await admin_get(client, "203.0.113.6", API_KEY)
        other = other_answer[0]
        print(
            f"redis {outage}: admin answers from the guessing address {statuses}, "
            f"from another address {other}"
        )
        assert statuses == [200, 200, 200, 401, 401, 401, 429, 429], answers
        assert other == 200, other_answer
    finally:
        if outage == "frozen" and own_redis.process is not None:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        await client.close()
        own_redis.stop()


async def trickle(client, data: bytes, pause: float, within: float) -> float | None:
    """Send `data` a byte at a time; the seconds after which the server hung up, or None."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = loop.time()
    closed = asyncio.ensure_future(reader.read())
    try:
        for byte in data:
            if closed.done() or loop.time() - started > within:
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.wait([closed], timeout=pause)
        try:
            answer = await asyncio.wait_for(closed, 0.5)
        except ConnectionError:
            answer = b""
        except TimeoutError:
            return None
        assert answer == b"", answer
        return loop.time() - started
    finally:
        closed.cancel()
        writer.close()


async def test_a_slowly_sent_request_head_is_cut_off(settings):
    quick = settings.model_copy(update={"header_read_timeout": 1.0})
    client = await start_client(create_app(quick), quick)
    try:
        head = b"GET /c/unknown HTTP/1.1\r\nHost: tracker.test\r\nX-Padding: " + b"a" * 200
        hung_up_after = await trickle(client, head, pause=0.1, within=8)
        print(f"a request head sent a byte every 0.1 s was cut off after {hung_up_after} s")
        assert hung_up_after is not None, "the server kept the slow connection open"
        # A silent connection is closed too, and prompt requests are still served.
        reader, writer = await asyncio.open_connection(client.host, client.port)
        assert await asyncio.wait_for(reader.read(), 8) == b""
        writer.close()
        resp = await client.get("/c/unknown", allow_redirects=False)
        assert resp.status == 404
    finally:
        await client.close()


async def test_a_slow_second_request_on_a_kept_alive_connection_is_cut_off(settings):
    quick = settings.model_copy(update={"header_read_timeout": 1.0})
    client = await start_client(create_app(quick), quick)
    try:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"GET /c/unknown HTTP/1.1\r\nHost: t\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert status_line.startswith(b"HTTP/1.1 404"), status_line
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /c/unkn")  # and nothing more
        rest = await asyncio.wait_for(reader.read(), 8)  # the first answer, then EOF
        assert b"HTTP/1.1" not in rest
        print(f"a stalled second request head was cut off after {loop.time() - started:.1f} s")
        writer.close()
    finally:
        await client.close()


async def test_tracker_serve_cuts_off_slow_request_heads(settings):
    port = free_port()
    env = {**env_for(settings, port), "TRACKER_HEADER_READ_TIMEOUT": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "serve"], env=env)
    try:
        await wait_until_listening(port)
        server = SimpleNamespace(host="127.0.0.1", port=port)
        head = b"POST /postback HTTP/1.1\r\nHost: tracker.test\r\nX-Padding: " + b"a" * 200
        hung_up_after = await trickle(server, head, pause=0.1, within=8)
        print(f"tracker serve cut off a trickled request head after {hung_up_after} s")
        assert hung_up_after is not None, "tracker serve kept the slow connection open"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
