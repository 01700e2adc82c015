"""The admin API's attack surface: token rotation, URL validation, authentication
failures and slow clients."""

import asyncio
from datetime import datetime

from tests.test_lifecycle import prepared
from tracker.web.appkeys import CONFIG


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
