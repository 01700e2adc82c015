"""Click -> postback -> ROI report, through HTTP only."""

from datetime import UTC, datetime
from urllib.parse import urlsplit

from tests.conftest import clickid_from, wait_for_sink


async def test_click_postback_report(client, api, sink):
    setup = await api.setup_campaign(payout="3.00", cost_model="cpc", cost_value="0.05")
    campaign, network = setup["campaign"], setup["network"]
    token = network["postback_token"]
    click_path = urlsplit(campaign["click_url"]).path

    click_ids = []
    for i in range(10):
        resp = await client.get(
            click_path, params={"external_id": f"ext{i}", "sub1": "banner"}, allow_redirects=False
        )
        assert resp.status == 302
        click_ids.append(clickid_from(resp.headers["Location"]))
    assert len(set(click_ids)) == 10

    async def postback(**params):
        resp = await client.get("/postback", params={"token": token, **params})
        return resp.status, await resp.json()

    status, first = await postback(clickid=click_ids[0], payout="4.25", txid="t1")
    assert (status, first["result"]) == (200, "created")
    status, again = await postback(clickid=click_ids[0], payout="4.25", txid="t1")
    assert (status, again) == (
        200,
        {"result": "duplicate", "conversion_id": first["conversion_id"]},
    )
    status, upsell = await postback(clickid=click_ids[0], payout="10.10", txid="t2")
    assert (status, upsell["result"]) == (200, "created")
    # No payout in the postback: the offer's 3.00 applies.
    status, default = await postback(clickid=click_ids[1])
    assert (status, default["result"]) == (200, "created")
    status, unknown = await postback(clickid="0" * 29, payout="99")
    assert status == 404
    assert unknown["error"] == "unknown click id"

    await wait_for_sink(sink)
    today = datetime.now(UTC).date().isoformat()
    report = await api.call("GET", f"/api/reports?from={today}&to={today}&group_by=campaign,day")
    [row] = report["rows"]
    assert row["campaign_id"] == campaign["id"]
    assert row["campaign_name"] == "Campaign"
    assert row["day"] == today
    expected = {
        "clicks": 10,
        "conversions": 3,
        "revenue": "17.35",  # 4.25 + 10.10 + 3.00
        "cost": "0.50",  # 10 clicks at 0.05
        "profit": "16.85",
        "roi": "3370.00",
        "cr": "30.00",
        "epc": "1.7350",
        "cpc": "0.0500",
        "cpa": "0.1667",
    }
    assert {k: row[k] for k in expected} == expected
    assert {k: report["totals"][k] for k in expected} == expected
