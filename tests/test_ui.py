"""The dashboard over HTTP: sign-in, session cookie, CSRF, headers, pages, editors."""

import json
import re
from decimal import Decimal

from tests.conftest import API_KEY
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
