"""Reports by any dimension: metric formulas, time zones across DST, attribution time,
filters, sorting, paging, totals, CSV, and the rollup path agreeing with the raw one."""

import csv
import io
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from tests.conftest import wait_for_sink
from tests.test_reports import rebuild_rollups
from tracker.store.partitions import ensure_partitions

_ids = itertools.count(1)


async def click(pool, at: datetime, **facts):
    values = {
        "click_id": f"k{next(_ids)}",
        "created_at": at,
        "campaign_id": 1,
        "offer_id": 10,
        "traffic_source_id": 100,
        "cost": Decimal("0.10"),
        "is_bot": False,
        **facts,
    }
    columns = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await ensure_partitions(pool, "clicks", [at])
    await pool.execute(f"INSERT INTO clicks ({columns}) VALUES ({marks})", *values.values())
    # The rollup rows the sink writes with the click, for reports that read rollups.
    human = not values["is_bot"]
    await pool.execute(
        "INSERT INTO click_rollups AS r (day, campaign_id, offer_id, traffic_source_id, clicks,"
        " bot_clicks, unique_clicks, lp_views, lp_clicks, cost)"
        " VALUES (($1 AT TIME ZONE 'UTC')::date, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (day, campaign_id, offer_id, traffic_source_id) DO UPDATE SET"
        " clicks = r.clicks + EXCLUDED.clicks, bot_clicks = r.bot_clicks + EXCLUDED.bot_clicks,"
        " unique_clicks = r.unique_clicks + EXCLUDED.unique_clicks,"
        " lp_views = r.lp_views + EXCLUDED.lp_views, lp_clicks = r.lp_clicks + EXCLUDED.lp_clicks,"
        " cost = r.cost + EXCLUDED.cost",
        values["created_at"],
        values["campaign_id"],
        values["offer_id"],
        values["traffic_source_id"],
        int(human),
        int(not human),
        int(human and bool(values.get("is_unique"))),
        int(human and values.get("lander_id") is not None),
        int(human and values.get("lp_clicked_at") is not None),
        values["cost"] or 0,
    )
    await pool.execute(
        "INSERT INTO click_hourly AS h (hour, campaign_id, offer_id, traffic_source_id,"
        " lander_id, clicks, bot_clicks, unique_clicks, lp_views, lp_clicks, cost)"
        " VALUES (date_trunc('hour', $1::timestamptz, 'UTC'), $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10, $11)"
        " ON CONFLICT (hour, campaign_id, offer_id, traffic_source_id, lander_id) DO UPDATE SET"
        " clicks = h.clicks + EXCLUDED.clicks, bot_clicks = h.bot_clicks + EXCLUDED.bot_clicks,"
        " unique_clicks = h.unique_clicks + EXCLUDED.unique_clicks,"
        " lp_views = h.lp_views + EXCLUDED.lp_views, lp_clicks = h.lp_clicks + EXCLUDED.lp_clicks,"
        " cost = h.cost + EXCLUDED.cost",
        values["created_at"],
        values["campaign_id"],
        values["offer_id"],
        values["traffic_source_id"],
        values.get("lander_id") or 0,
        int(human),
        int(not human),
        int(human and bool(values.get("is_unique"))),
        int(human and values.get("lander_id") is not None),
        int(human and values.get("lp_clicked_at") is not None),
        values["cost"] or 0,
    )
    await rebuild_rollups(pool)
    return values["click_id"]


async def conversion(
    pool, click_at: datetime, at: datetime, payout: str, status="approved", **facts
):
    values = {
        "click_id": f"c{next(_ids)}",
        "dedupe_key": "",
        "campaign_id": 1,
        "offer_id": 10,
        "traffic_source_id": 100,
        "click_time": click_at,
        "created_at": at,
        "payout": Decimal(payout),
        "currency": "USD",
        "original_payout": Decimal(payout),
        "original_currency": "USD",
        "status": status,
        "params": {},
        **facts,
    }
    columns = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await ensure_partitions(pool, "conversions", [values["click_time"]])
    await pool.execute(f"INSERT INTO conversions ({columns}) VALUES ({marks})", *values.values())


T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


async def test_every_metric_to_the_cent(api, pool):
    for i in range(7):
        await click(
            pool,
            T0,
            country="DE",
            is_unique=i < 4,
            lander_id=1 if i < 5 else None,
            lp_clicked_at=T0 if i < 2 else None,
        )
    await click(pool, T0, country="DE", is_bot=True, cost=Decimal("0.50"))
    for status, payout in (
        ("approved", "2.50"),
        ("approved", "1.25"),
        ("lead", "0"),
        ("pending", "1"),
        ("rejected", "9"),
        ("chargeback", "3"),
    ):
        await conversion(pool, T0, T0, payout, status, country="DE", event="sale")
    await conversion(pool, T0, T0, "0.75", country="DE", event="upsell")
    report = await api.call(
        "GET",
        "/api/reports",
        params={
            "from": "2026-03-10",
            "to": "2026-03-10",
            "group_by": "country",
            "events": "sale,upsell,none",
        },
    )
    [row] = report["rows"]
    assert row["country"] == "DE"
    expected = {
        "clicks": 7,
        "unique_clicks": 4,
        "bots": 1,
        "lp_views": 5,
        "lp_clicks": 2,
        "conversions": 3,
        "leads": 1,
        "pending": 1,
        "rejected": 1,
        "chargebacks": 1,
        "revenue": "4.50",
        "cost": "1.20",
        "profit": "3.30",
        "roi": "275.00",  # 3.30 / 1.20
        "cr": "42.86",  # 3 / 7
        "epc": "0.6429",  # 4.50 / 7
        "cpc": "0.1714",  # 1.20 / 7
        "cpa": "0.4000",  # 1.20 / 3
        "lp_ctr": "40.00",  # 2 / 5
        "event:sale": 2,
        "event:upsell": 1,
        "event:none": 0,
    }
    assert {k: row[k] for k in expected} == expected
    assert {k: report["totals"][k] for k in expected} == expected
    assert report["total_rows"] == 1


async def test_zero_denominators_are_null(api, pool):
    await conversion(pool, T0, T0, "1")
    report = await api.call("GET", "/api/reports?from=2026-03-10&to=2026-03-10&group_by=day")
    [row] = report["rows"]
    assert (row["clicks"], row["cost"]) == (0, "0.00")
    assert row["roi"] is None and row["cr"] is None and row["epc"] is None
    assert row["cpc"] is None and row["lp_ctr"] is None and row["cpa"] == "0.0000"


async def test_a_23_hour_and_a_25_hour_day(api, pool):
    # One click at the start of every UTC hour around each change.
    for start in (datetime(2026, 3, 28, 20, tzinfo=UTC), datetime(2026, 10, 31, 23, tzinfo=UTC)):
        for hour in range(30):
            await click(pool, start + timedelta(hours=hour))
    for tz, day, hours in (
        ("Europe/Berlin", "2026-03-29", 23),
        ("America/New_York", "2026-11-01", 25),
    ):
        query = {"from": day, "to": day, "tz": tz, "group_by": "hour"}
        report = await api.call("GET", "/api/reports", params=query)
        assert len(report["rows"]) == hours, tz
        assert all(r["clicks"] == 1 for r in report["rows"])
        offsets = {r["hour"][-6:] for r in report["rows"]}
        assert len(offsets) == 2  # both sides of the change, told apart
        daily = await api.call("GET", "/api/reports", params={**query, "group_by": "day"})
        assert [(r["day"], r["clicks"]) for r in daily["rows"]] == [(day, hours)]
    berlin = await api.call(
        "GET",
        "/api/reports",
        params={
            "from": "2026-03-29",
            "to": "2026-03-29",
            "tz": "Europe/Berlin",
            "group_by": "hour",
            "limit": "3",
        },
    )
    assert [r["hour"] for r in berlin["rows"]] == [
        "2026-03-29T00:00+01:00",
        "2026-03-29T01:00+01:00",
        "2026-03-29T03:00+02:00",
    ]


async def test_click_time_or_postback_time_across_midnight(api, pool):
    clicked = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    await click(pool, clicked)
    await conversion(pool, clicked, clicked + timedelta(hours=1), "5")
    base = {"from": "2026-03-10", "to": "2026-03-11", "group_by": "day"}
    by_click = await api.call("GET", "/api/reports", params=base)
    assert [(r["day"], r["clicks"], r["conversions"]) for r in by_click["rows"]] == [
        ("2026-03-10", 1, 1)
    ]
    by_arrival = await api.call(
        "GET", "/api/reports", params={**base, "conversion_time": "postback"}
    )
    assert [(r["day"], r["clicks"], r["conversions"]) for r in by_arrival["rows"]] == [
        ("2026-03-10", 1, 0),
        ("2026-03-11", 0, 1),
    ]
    # In Berlin both are on the 11th.
    berlin = await api.call("GET", "/api/reports", params={**base, "tz": "Europe/Berlin"})
    assert [(r["day"], r["clicks"], r["conversions"]) for r in berlin["rows"]] == [
        ("2026-03-11", 1, 1)
    ]


async def test_three_levels_filters_excludes_sort_and_paging(api, pool):
    rows = [
        ("DE", "mobile", "z1", 3),
        ("DE", "mobile", "z2", 1),
        ("DE", "desktop", "z1", 2),
        ("AT", "mobile", "z1", 4),
        ("FR", "mobile", "z1", 5),
        ("DE", "mobile", None, 2),
    ]
    for country, device, sub1, count in rows:
        for _ in range(count):
            await click(pool, T0, country=country, device=device, sub1=sub1)
    await conversion(pool, T0, T0, "10", country="DE", device="mobile", sub1="z1")
    base = {"from": "2026-03-10", "to": "2026-03-10", "group_by": "country,device,sub1"}
    everything = await api.call("GET", "/api/reports", params=base)
    assert [(r["country"], r["device"], r["sub1"], r["clicks"]) for r in everything["rows"]] == [
        ("AT", "mobile", "z1", 4),
        ("DE", "desktop", "z1", 2),
        ("DE", "mobile", "z1", 3),
        ("DE", "mobile", "z2", 1),
        ("DE", "mobile", None, 2),
        ("FR", "mobile", "z1", 5),
    ]
    narrowed = await api.call(
        "GET",
        "/api/reports",
        params={**base, "filter[country]": "DE,AT", "exclude[sub1]": "z2", "sort": "-clicks"},
    )
    assert [(r["country"], r["device"], r["sub1"], r["clicks"]) for r in narrowed["rows"]] == [
        ("AT", "mobile", "z1", 4),
        ("DE", "mobile", "z1", 3),
        ("DE", "desktop", "z1", 2),
        ("DE", "mobile", None, 2),  # an exclude keeps rows without the value
    ]
    assert narrowed["totals"]["clicks"] == 11 and narrowed["total_rows"] == 4
    page = await api.call(
        "GET",
        "/api/reports",
        params={**base, "sort": "-revenue,country", "limit": "2", "offset": "1"},
    )
    assert [(r["country"], r["device"], r["sub1"]) for r in page["rows"]] == [
        ("AT", "mobile", "z1"),
        ("DE", "desktop", "z1"),
    ]
    assert page["total_rows"] == 6 and page["totals"]["clicks"] == 17
    assert page["totals"]["revenue"] == "10.00"
    # A ratio sorts, then the next key, then the dimensions.
    by_epc = await api.call(
        "GET", "/api/reports", params={**base, "sort": "-epc,clicks", "limit": "4"}
    )
    assert [(r["country"], r["device"], r["sub1"], r["epc"]) for r in by_epc["rows"]] == [
        ("DE", "mobile", "z1", "3.3333"),
        ("DE", "mobile", "z2", "0.0000"),
        ("DE", "desktop", "z1", "0.0000"),
        ("DE", "mobile", None, "0.0000"),
    ]
    # A page past the last group is empty; the totals are still every group's.
    past = await api.call("GET", "/api/reports", params={**base, "offset": "6"})
    assert past["rows"] == [] and past["total_rows"] == 6
    assert past["totals"]["clicks"] == 17 and past["totals"]["revenue"] == "10.00"


async def test_names_networks_and_the_campaign_filter(api, pool):
    setup = await api.setup_campaign()
    ids = {k: setup[k]["id"] for k in ("campaign", "offer", "source", "network")}
    await click(
        pool,
        T0,
        campaign_id=ids["campaign"],
        offer_id=ids["offer"],
        traffic_source_id=ids["source"],
    )
    await click(pool, T0, campaign_id=999, offer_id=ids["offer"], traffic_source_id=ids["source"])
    report = await api.call(
        "GET",
        "/api/reports",
        params={
            "from": "2026-03-10",
            "to": "2026-03-10",
            "group_by": "affiliate_network,campaign",
            "campaign_id": str(ids["campaign"]),
        },
    )
    [row] = report["rows"]
    assert (row["affiliate_network_id"], row["affiliate_network_name"]) == (
        ids["network"],
        "Network",
    )
    assert (row["campaign_id"], row["campaign_name"], row["clicks"]) == (
        ids["campaign"],
        "Campaign",
        1,
    )


async def test_csv_has_the_same_rows_and_no_formulas(client, api, pool):
    await click(pool, T0, sub1="=HYPERLINK(1)", country="DE")
    await click(pool, T0, sub1="plain", country="DE")
    params = {"from": "2026-03-10", "to": "2026-03-10", "group_by": "sub1", "format": "csv"}
    resp = await client.get("/api/reports", params=params, headers=api.headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(await resp.text())))
    header = lines[0]
    assert header[:3] == ["sub1", "clicks", "unique_clicks"]
    assert {line[0] for line in lines[1:]} == {"'=HYPERLINK(1)", "plain"}
    as_json = await api.call("GET", "/api/reports", params={**params, "format": "json"})
    for line, row in zip(lines[2:], as_json["rows"][1:], strict=True):
        cells = dict(zip(header, line, strict=True))
        assert cells == {k: "" if row[k] is None else str(row[k]) for k in header}


async def test_bad_report_queries_name_the_parameter(api):
    base = "from=2026-03-01&to=2026-03-02"
    for query, field in [
        (f"{base}&group_by=country,device,os,browser", "group_by"),
        (f"{base}&group_by=planet", "group_by"),
        (f"{base}&tz=Mars/Olympus", "tz"),
        ("from=2026-03-02&to=2026-03-01", "to"),
        ("from=2020-01-01&to=2026-01-01", "to"),
        (f"{base}&filter[planet]=x", "filter[planet]"),
        (f"{base}&filter[day]=2026-03-01", "filter[day]"),
        (f"{base}&filter[campaign]=abc", "filter[campaign]"),
        (f"{base}&filter[country]=Germany", "filter[country]"),
        (f"{base}&exclude[is_unique]=maybe", "exclude[is_unique]"),
        (f"{base}&sort=-planet", "sort"),
        (f"{base}&limit=0", "limit"),
        (f"{base}&offset=-1", "offset"),
        (f"{base}&conversion_time=later", "conversion_time"),
        (f"{base}&format=xml", "format"),
        (f"{base}&colour=red", "colour"),
        ("from=2026-03-01T25:00&to=2026-03-02", "from"),
    ]:
        body = await api.call("GET", f"/api/reports?{query}", expect=400)
        assert field in [d["field"] for d in body["details"]], (query, body)


async def test_rollups_and_raw_clicks_agree(client, api, pool, sink):
    # `UTC` reads the rollups; `Etc/UTC`, the same zone under another name, the raw clicks.
    setup = await api.setup_campaign()
    path = urlsplit(setup["campaign"]["click_url"]).path
    agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/126.0.0.0 Safari/537.36",
        "curl/8.5.0",
    ]
    for i in range(40):
        resp = await client.get(
            path,
            params={"sub1": f"z{i % 3}", "cost": "0.0125"},
            headers={"User-Agent": agents[i % 2]},
            allow_redirects=False,
        )
        assert resp.status == 302
    await wait_for_sink(sink)
    today = datetime.now(UTC).date().isoformat()
    reports = []
    for tz in ("UTC", "Etc/UTC"):
        params = {"from": today, "to": today, "tz": tz, "group_by": "campaign,offer,day"}
        reports.append(await api.call("GET", "/api/reports", params=params))
    assert reports[0]["rows"] == reports[1]["rows"]
    assert reports[0]["totals"] == reports[1]["totals"]
    assert (reports[0]["totals"]["clicks"], reports[0]["totals"]["bots"]) == (20, 20)


async def test_the_ends_of_time_in_any_zone_never_fail(api):
    for query in (
        "from=9999-12-30&to=9999-12-31&tz=America/New_York&group_by=day",
        "from=9999-12-31T23:00&to=9999-12-31&tz=Pacific/Kiritimati&group_by=hour",
        "from=0001-01-01&to=0001-01-02&tz=Asia/Tokyo&group_by=week",
        "from=0001-01-01&to=0001-01-01&tz=America/Los_Angeles&group_by=month",
    ):
        resp = await api.client.get(f"/api/reports?{query}", headers=api.headers)
        assert resp.status in (200, 400), (query, await resp.text())
        body = await resp.json()
        assert body.get("rows", []) == [], query


async def test_review_edge_cases(api, pool):
    await click(pool, T0, campaign_id=1)
    await click(pool, T0, campaign_id=2)
    base = {"from": "2026-03-10", "to": "2026-03-10", "group_by": "campaign", "tz": "Etc/UTC"}
    both = await api.call("GET", "/api/reports", params={**base, "filter[campaign]": "1,2"})
    assert both["totals"]["clicks"] == 2
    # campaign_id and filter[campaign] together: both must hold.
    one = await api.call(
        "GET", "/api/reports", params={**base, "filter[campaign]": "1,2", "campaign_id": "2"}
    )
    assert [r["campaign_id"] for r in one["rows"]] == [2]
    none = await api.call(
        "GET", "/api/reports", params={**base, "filter[campaign]": "1", "campaign_id": "2"}
    )
    assert none["rows"] == [] and none["totals"]["clicks"] == 0 and none["total_rows"] == 0
    # A compact date is a date: its whole day counts.
    compact = await api.call(
        "GET", "/api/reports", params={**base, "from": "20260310", "to": "20260310"}
    )
    assert compact["totals"]["clicks"] == 2
    for tz in ("localtime", "/etc/passwd", "posixrules ", ""):
        body = await api.call("GET", "/api/reports", params={**base, "tz": tz}, expect=400)
        assert body["details"][0]["field"] == "tz"
    # A year in Berlin is 366 days and an hour across a DST change: still one report.
    year = {"from": "2023-10-29", "to": "2024-10-28", "tz": "Europe/Berlin"}
    await api.call("GET", "/api/reports", params=year)


async def test_a_report_past_its_time_limit_says_so(settings):
    from tests.conftest import start_client
    from tracker.web.app import create_app

    slow = settings.model_copy(update={"report_timeout": 0.0001})
    client = await start_client(create_app(slow), slow)
    try:
        resp = await client.get(
            "/api/reports?from=2026-03-01&to=2026-03-31&group_by=country,hour",
            headers={"Authorization": f"Bearer {settings.api_key.get_secret_value()}"},
        )
        body = await resp.json()
        assert resp.status == 504, body
        assert body["error"].startswith("the report took longer than 0.0001 s")
    finally:
        await client.close()


async def test_hourly_rollups_agree_with_raw_clicks_after_moves_and_costs(client, api, pool, sink):
    from tests.test_flows import click as flow_click
    from tests.test_flows import lander_campaign, query_of

    setup = await lander_campaign(api, offers=2, cost_model="cpc", cost_value="0.03")
    second = setup["offers"][1]
    for i in range(12):
        resp = await flow_click(client, setup["campaign"])
        assert resp.status == 302
        click_id = query_of(resp.headers["Location"])["cid"]
        if i % 3 == 0:  # a click-through, some of them to the second offer
            params = {"clickid": click_id, **({"offer": str(second)} if i % 2 else {})}
            through = await client.get("/lp/click", params=params, allow_redirects=False)
            assert through.status == 302
    await wait_for_sink(sink)
    now = datetime.now(UTC)
    await api.call(
        "POST",
        "/api/costs",
        expect=201,
        json={
            "campaign_id": setup["campaign"]["id"],
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(hours=1)).isoformat(),
            "cost": "1.00",
        },
    )
    day = datetime.now(UTC).date()
    base = {
        "from": str(day - timedelta(days=1)),
        "to": str(day + timedelta(days=1)),
        "group_by": "offer,lander,hour",
    }
    for tz in ("America/New_York", "Asia/Tokyo", "UTC"):
        hourly = await api.call("GET", "/api/reports", params={**base, "tz": tz})
        # A filter on a fact the rollups lack makes the same report read the raw clicks.
        raw = await api.call(
            "GET", "/api/reports", params={**base, "tz": tz, "exclude[country]": "ZZ"}
        )
        assert hourly["rows"] == raw["rows"], tz
        assert hourly["totals"] == raw["totals"], tz
    assert hourly["totals"]["clicks"] == 12 and hourly["totals"]["lp_clicks"] == 4
    assert hourly["totals"]["cost"] == "1.00"
    assert {r["offer_id"] for r in hourly["rows"]} == {setup["offers"][0], second}


def test_which_reports_the_hourly_rollups_answer():
    from tracker.domain.reports import ReportSpec
    from tracker.store.reports import uses_hourly, uses_rollups

    def spec(tz="America/New_York", start=datetime(2026, 3, 1, 5, tzinfo=UTC), **changes):
        values = {"start": start, "end": start + timedelta(days=30), "tz": tz,
                  "group_by": ("campaign", "day"), **changes}  # fmt: skip
        return ReportSpec(**values)

    assert uses_hourly(spec()) and not uses_rollups(spec())
    assert uses_rollups(spec(tz="UTC", start=datetime(2026, 3, 1, tzinfo=UTC)))
    assert not uses_hourly(spec(tz="Asia/Kolkata"))  # +05:30
    assert not uses_hourly(spec(tz="Australia/Adelaide"))  # +09:30 / +10:30
    assert not uses_hourly(spec(start=datetime(2026, 3, 1, 5, 30, tzinfo=UTC)))
    assert not uses_hourly(spec(group_by=("sub1",)))
    assert not uses_hourly(spec(filters={"country": ("DE",)}))
    assert uses_hourly(spec(filters={"lander": (1,)}, group_by=("affiliate_network", "weekday")))
