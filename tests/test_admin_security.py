"""The admin API's attack surface: token rotation, URL validation, authentication
failures and slow clients."""

import asyncio
from datetime import datetime

import pytest

from tests.test_lifecycle import prepared
from tracker.web.appkeys import CONFIG
from tracker.web.schemas import url_problem

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
        await api.call("PATCH", source_path, json={"postback_url": url})
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
