"""The dashboard over HTTP: sign-in, session cookie, CSRF, headers, pages, editors."""

import asyncio
import json
import re
from decimal import Decimal

from pydantic import SecretStr

from tests.conftest import API_KEY
from tests.test_postback import make_click
from tracker.web.ui.chart import Series, line_chart, nice_step

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(client, password=API_KEY, expect=303):
    page = await client.get("/ui/login")
    assert page.status == 200
    token = CSRF.search(await page.text()).group(1)
    resp = await client.post(
        "/ui/login",
        data={"csrf": token, "password": password, "next": "/ui/"},
        allow_redirects=False,
    )
    assert resp.status == expect, await resp.text()
    return resp


async def csrf_of(client, path="/ui/"):
    page = await client.get(path)
    assert page.status == 200, await page.text()
    return CSRF.search(await page.text()).group(1)


async def test_pages_need_a_session(client):
    resp = await client.get("/ui/", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/ui/login?next=%2Fui%2F"
    resp = await client.post("/ui/offers/new", data={"name": "x"}, allow_redirects=False)
    assert resp.status == 401


async def test_sign_in_sets_a_strict_http_only_cookie(client):
    resp = await sign_in(client)
    assert resp.headers["Location"] == "/ui/"
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("tracker_ui="))
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/ui" in cookie
    assert "Secure" not in cookie  # the public URL is http in the tests
    page = await client.get("/ui/")
    assert page.status == 200
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "same-origin"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in await page.text()  # no inline script


async def test_wrong_password_is_refused_and_counted(client, redis):
    resp = await sign_in(client, password="wrong", expect=401)
    assert "Wrong key or password" in await resp.text()
    assert not any(c.key == "tracker_ui" for c in client.session.cookie_jar)
    assert await redis.keys("authfail:*")
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_sign_in_form_needs_its_token(client):
    await client.get("/ui/login")
    resp = await client.post("/ui/login", data={"password": API_KEY}, allow_redirects=False)
    assert resp.status == 403


async def test_form_without_csrf_token_is_refused(client, api):
    await sign_in(client)
    resp = await client.post("/ui/landers/new", data={"name": "L", "url": "https://lp.example"})
    assert resp.status == 403
    assert "security token" in await resp.text()
    resp = await client.post(
        "/ui/landers/new", data={"csrf": "forged", "name": "L", "url": "https://lp.example"}
    )
    assert resp.status == 403
    assert (await api.call("GET", "/api/landers"))["items"] == []


async def test_sign_out_ends_the_session(client, redis):
    await sign_in(client)
    token = await csrf_of(client)
    assert await redis.keys("ui:session:*")
    resp = await client.post("/ui/logout", data={"csrf": token}, allow_redirects=False)
    assert resp.status == 303
    assert await redis.keys("ui:session:*") == []
    assert (await client.get("/ui/", allow_redirects=False)).status == 303


async def test_editor_shows_api_errors_beside_their_fields(client, api):
    await sign_in(client)
    network = await api.create("/api/affiliate-networks", {"name": "Net"})
    token = await csrf_of(client, "/ui/offers/new")
    resp = await client.post(
        "/ui/offers/new",
        data={
            "csrf": token,
            "name": "",
            "url": "ftp://nope",
            "affiliate_network_id": str(network["id"]),
            "payout": "-1",
            "currency": "USD",
        },
    )
    assert resp.status == 400
    html = await resp.text()
    for field in ("name", "url", "payout"):
        block = re.search(rf'data-field="{field}".*?</div>', html, re.S).group(0)
        assert f'id="err-{field}"' in block, (field, block)
    assert (await api.call("GET", "/api/offers"))["items"] == []
    resp = await client.post(
        "/ui/offers/new",
        data={
            "csrf": token,
            "name": "Good offer",
            "url": "https://offer.example/?c={clickid}",
            "affiliate_network_id": str(network["id"]),
            "payout": "2.50",
            "currency": "EUR",
        },
        allow_redirects=False,
    )
    assert resp.status == 303
    [offer] = (await api.call("GET", "/api/offers"))["items"]
    assert (offer["name"], offer["payout"], offer["currency"]) == ("Good offer", "2.50", "EUR")


async def test_campaign_editor_names_the_offer_row_and_rule(client, api):
    await sign_in(client)
    setup = await api.setup_campaign()
    campaign = setup["campaign"]
    token = await csrf_of(client, f"/ui/campaigns/{campaign['id']}/edit")
    resp = await client.post(
        f"/ui/campaigns/{campaign['id']}/edit",
        data={
            "csrf": token,
            "name": "Renamed",
            "traffic_source_id": str(setup["source"]["id"]),
            "offers.id": ["999", ""],
            "offers.weight": ["10", ""],
            "rules": json.dumps(
                [
                    {
                        "conditions": [{"field": "country", "op": "nope", "values": ["DE"]}],
                        "offers": [{"offer_id": setup["offer"]["id"]}],
                    }
                ]
            ),
            "cost_model": "none",
            "cost_value": "",
            "bot_action": "offer",
        },
    )
    assert resp.status == 400
    html = await resp.text()
    offers = re.search(r'data-field="offers".*?</fieldset>.*?</div>', html, re.S).group(0)
    assert "no active offers row 999" in offers
    rules = re.search(r'data-field="rules".*?</div>', html, re.S).group(0)
    assert 'id="err-rules"' in rules
    # Checked first, as by the API: the body's own validation.
    resp = await client.post(
        f"/ui/campaigns/{campaign['id']}/edit",
        data={"csrf": token, "name": "Renamed", "cost_model": "cpc", "cost_value": ""},
    )
    assert resp.status == 400
    html = await resp.text()
    cost = re.search(r'data-field="cost_value".*?</div>', html, re.S).group(0)
    assert "needs a cost_value" in cost
    assert (await api.call("GET", f"/api/campaigns/{campaign['id']}"))["name"] == "Campaign"


async def test_report_errors_come_from_the_report_api(client, api):
    await sign_in(client)
    page = await client.get("/ui/?preset=custom&from=2026-02-01&to=2026-01-01&tz=Mars/Base")
    assert page.status == 200
    html = await page.text()
    assert "is not an IANA time zone" in html


def test_chart_is_escaped_svg_with_axes():
    svg = line_chart(
        "<b>", ["a&b", "c"], [Series("x<y", [Decimal("1.5"), Decimal("-2")], "s-revenue")]
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "a&amp;b" in svg and "x&lt;y" in svg
    assert svg.count("<polyline") == 1
    assert nice_step(Decimal(10)) == Decimal("5") or nice_step(Decimal(10)) == Decimal("2.5")
    assert nice_step(Decimal(0)) == Decimal(1)


async def _dead_delivery(client, api, pool):
    """A conversion whose delivery to the traffic source has given up."""
    setup = await api.setup_campaign()
    await api.call(
        "PATCH",
        f"/api/traffic-sources/{setup['source']['id']}",
        json={"postback_url": "https://source.example/pb?cid={external_id}"},
    )
    click_id = await make_click(client, setup["campaign"], external_id="e1")
    resp = await client.get(
        "/postback",
        params={"clickid": click_id, "payout": "2", "token": setup["network"]["postback_token"]},
    )
    assert resp.status == 200, await resp.text()
    delivery_id = await pool.fetchval(
        "UPDATE deliveries SET state = 'dead', finished_at = now() RETURNING id"
    )
    assert delivery_id is not None
    return setup, delivery_id


async def test_delivery_log_retry_and_replay(client, api, pool):
    await sign_in(client)
    _, delivery_id = await _dead_delivery(client, api, pool)
    page = await client.get("/ui/deliveries?status=dead")
    html = await page.text()
    assert f'action="/ui/deliveries/{delivery_id}/retry"' in html
    token = CSRF.search(html).group(1)
    resp = await client.post(f"/ui/deliveries/{delivery_id}/retry", data={"csrf": token})
    assert resp.status == 200
    assert "will be sent again" in await resp.text()
    state = "SELECT state FROM deliveries WHERE id = $1"
    assert await pool.fetchval(state, delivery_id) == "pending"

    await pool.execute("UPDATE deliveries SET state = 'dead', finished_at = now()")
    today = (await pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")).isoformat()
    resp = await client.post(
        "/ui/deliveries/replay", data={"csrf": token, "from": today, "to": today}
    )
    assert "1 dead deliveries will be sent again" in await resp.text()
    assert await pool.fetchval(state, delivery_id) == "pending"
    resp = await client.post("/ui/deliveries/replay", data={"csrf": token, "from": today})
    assert "Replay refused" in await resp.text()


async def test_postback_log_filters_and_masks_the_token(client, api, pool):
    await sign_in(client)
    setup, _ = await _dead_delivery(client, api, pool)
    token = setup["network"]["postback_token"]
    await client.get("/postback", params={"clickid": "0" * 29, "token": token})
    deadline = asyncio.get_running_loop().time() + 10
    while await pool.fetchval("SELECT count(*) FROM postback_log") < 2:  # written in batches
        assert asyncio.get_running_loop().time() < deadline, "postback log not written"
        await asyncio.sleep(0.05)
    page = await client.get(f"/ui/postbacks?network_id={setup['network']['id']}")
    html = await page.text()
    assert page.status == 200
    assert html.count('class="result-created"') == 1
    assert 'class="result-unmatched"' not in html  # an unknown click names no network
    assert token not in html and "***" in html
    html = await (await client.get("/ui/postbacks?result=unmatched")).text()
    assert html.count('class="result-unmatched"') == 1
    assert 'class="result-created"' not in html
    page = await client.get("/ui/postbacks?network_id=abc")
    assert "network_id" in await page.text()


async def test_urls_page_lists_click_and_postback_urls(client, api):
    await sign_in(client)
    setup = await api.setup_campaign()
    html = await (await client.get("/ui/urls")).text()
    assert setup["campaign"]["click_url"] in html
    assert setup["network"]["postback_url"].replace("&", "&amp;") in html
    assert "/px.gif?clickid={clickid}" in html


async def test_session_expires_when_idle_and_dashboard_password_works(settings, redis):
    from tests.conftest import start_client
    from tracker.web.app import create_app
    from tracker.web.ui.session import _cookie_options

    own = settings.model_copy(
        update={
            "dashboard_password": SecretStr("a-dashboard-password"),
            "dashboard_session_idle_seconds": 600,
            "admin_auth_max_failures": 2,
        }
    )
    client = await start_client(create_app(own), own)
    try:
        await sign_in(client, password="a-dashboard-password")
        [key] = await redis.keys("ui:session:*")
        assert 590 <= await redis.ttl(key) <= 600
        await redis.expire(key, 5)
        assert (await client.get("/ui/")).status == 200
        assert await redis.ttl(key) > 5  # each request renews the idle expiry
        await redis.delete(key)
        assert (await client.get("/ui/", allow_redirects=False)).status == 303
        await sign_in(client, password="wrong", expect=401)
        await sign_in(client, password="wrong", expect=401)
        # The limit holds even for the right password until the window ends.
        resp = await sign_in(client, password="a-dashboard-password", expect=429)
        assert "Too many failed sign-ins" in await resp.text()
        # The same count as the API's: the API refuses this address too.
        wrong_key = {"Authorization": "Bearer x"}
        assert (await client.get("/api/campaigns", headers=wrong_key)).status == 429
    finally:
        await client.close()
    https = own.model_copy(update={"public_url": "https://track.example"})
    assert _cookie_options(https, None)["secure"] is True


async def test_editing_a_source_keeps_its_masked_secret(client, api, pool):
    await sign_in(client)
    secret = "s" * 20 + "tail"
    source = await api.create(
        "/api/traffic-sources", {"name": "Src", "postback_signing_secret": secret}
    )
    page = await client.get(f"/ui/sources/{source['id']}/edit")
    html = await page.text()
    assert secret not in html
    assert "…" in html  # shown masked, as the API shows it
    form = dict(re.findall(r'<input id="f-[^"]+" name="([^"]+)" value="([^"]*)"', html))
    form["postback_signing_secret"] = form["postback_signing_secret"].replace("&hellip;", "…")
    form.update(csrf=CSRF.search(html).group(1), name="Renamed source")
    form.update(postback_credentials="{}", postback_statuses="approved, pending")
    resp = await client.post(f"/ui/sources/{source['id']}/edit", data=form, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    row = await pool.fetchrow(
        "SELECT name, postback_signing_secret, postback_statuses FROM traffic_sources"
    )
    assert row["name"] == "Renamed source"
    assert row["postback_signing_secret"] == secret
    assert list(row["postback_statuses"]) == ["approved", "pending"]


async def test_hostile_input_gets_pages_not_errors(client, api):
    await sign_in(client)
    setup = await api.setup_campaign()
    token = await csrf_of(client, "/ui/landers/new")
    resp = await client.post(
        "/ui/landers/new", data={"csrf": token, "name": "bad\x00name", "url": "https://x.example"}
    )
    assert resp.status == 400
    assert 'id="err-name"' in await resp.text()
    campaign = setup["campaign"]["id"]
    for query in (
        "by=nonsense",
        "by=sub1&by=country&v=%00",
        "by=country&by=sub1&v=toolong",
        "tz=../../etc/passwd&preset=custom&from=x&to=y",
        "by=hour&interval=hour&preset=30d",
        "sort=-nothing",
        "by=sub1&by=sub2&by=sub3&by=sub4&v=a&v=b&v=c",
    ):
        page = await client.get(f"/ui/campaigns/{campaign}?{query}")
        assert page.status == 200, (query, page.status)
    for path in ("/ui/campaigns/99999", "/ui/offers/0/edit", "/ui/nothing", "/ui/static/x.py"):
        assert (await client.get(path)).status == 404, path
    page = await client.get("/ui/deliveries?limit=0&status=lost")
    assert page.status == 200
    assert "status" in await page.text()
