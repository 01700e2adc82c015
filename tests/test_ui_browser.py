"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Signs in (after a refused wrong sign-in), is refused a form without its CSRF token,
creates a traffic source, a network, an offer and a campaign through the forms, makes a
click and a postback over HTTP, sees the campaign's row change, drills down by sub1,
opens the postback log. A screenshot of each page goes to tests/output/ui/; with
TRACKER_UI_SCREENSHOTS=docs/screenshots the campaigns page and the drill-down go there
too (the README's pictures).
"""

import gzip
import os
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import API_KEY, wait_for_sink

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(__file__).parent / "output" / "ui"
# The campaigns page's HTML, CSS and JS, compressed, must stay under this.
MAX_PAGE_BYTES = 300 * 1024
MAX_RENDER_MS = 1000


@pytest.fixture
def shots():
    OUTPUT.mkdir(parents=True, exist_ok=True)
    readme = os.environ.get("TRACKER_UI_SCREENSHOTS")
    readme_dir = Path(readme) if readme else None
    if readme_dir is not None:
        readme_dir.mkdir(parents=True, exist_ok=True)

    async def shoot(page, name, for_readme=False):
        await page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)
        if for_readme and readme_dir is not None:
            picture = readme_dir / f"dashboard-{name.split('-', 1)[1]}.png"
            await page.screenshot(path=str(picture), full_page=True)

    return shoot


def _row(page, campaign_id):
    return page.locator(f'#campaigns tr[data-campaign="{campaign_id}"]')


async def _cell(row, column):
    return (await row.locator(f'td[data-col="{column}"]').inner_text()).strip()


async def test_dashboard_in_chromium(client, sink, shots):
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the browser test needs Debian's chromium package "
            "(make setup installs it: apt-get install chromium)"
        )
    from playwright.async_api import async_playwright

    base = str(client.make_url("")).rstrip("/")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 860})
            page = await context.new_page()
            page.set_default_timeout(10_000)

            # A wrong sign-in is refused; the right one lands on the campaigns.
            await page.goto(f"{base}/ui/")
            assert "/ui/login" in page.url
            await page.get_by_label("API key or dashboard password").fill("not-the-key")
            async with page.expect_response(lambda r: r.url.endswith("/ui/login")) as refused:
                await page.get_by_role("button", name="Sign in").click()
            assert (await refused.value).status == 401
            assert await page.get_by_text("Wrong key or password.").is_visible()
            await shots(page, "01-login-refused")
            await page.get_by_label("API key or dashboard password").fill(API_KEY)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{base}/ui/")
            assert await page.get_by_role("heading", name="Campaigns").is_visible()

            # A form without its CSRF token is refused, and nothing is created.
            await page.goto(f"{base}/ui/landers/new")
            await page.get_by_label("Name").fill("Forged")
            await page.get_by_label("URL").fill("https://lp.example/")
            await page.eval_on_selector("form.editor input[name=csrf]", "e => e.remove()")
            async with page.expect_response(lambda r: "/ui/landers/new" in r.url) as forged:
                await page.get_by_role("button", name="Save").click()
            assert (await forged.value).status == 403
            assert await page.get_by_text("security token is missing or wrong").is_visible()
            await shots(page, "02-csrf-refused")
            await page.goto(f"{base}/ui/landers")
            assert await page.get_by_text("None yet.").is_visible()

            # The configuration, through the forms.
            await page.goto(f"{base}/ui/sources/new")
            await page.get_by_label("Name").fill("Push ads")
            await shots(page, "03-source-form")
            await page.get_by_role("button", name="Save").click()
            await page.wait_for_url(f"{base}/ui/sources?saved=*")
            await page.goto(f"{base}/ui/networks/new")
            await page.get_by_label("Name").fill("Affiliate One")
            await page.get_by_role("button", name="Save").click()
            await page.wait_for_url(f"{base}/ui/networks?saved=*")

            await page.goto(f"{base}/ui/offers/new")
            await page.get_by_label("Name").fill("Summer offer")
            await page.get_by_label("URL").fill("ftp://offer.example/")
            await page.get_by_label("Affiliate network").select_option(label="Affiliate One (#1)")
            await page.get_by_label("Payout").fill("4.50")
            await page.get_by_role("button", name="Save").click()
            url_error = page.locator("#err-url")
            assert "http" in (await url_error.inner_text())
            await shots(page, "04-offer-error-by-field")
            await page.get_by_label("URL").fill("https://offer.example/lp?cid={clickid}")
            await page.get_by_role("button", name="Save").click()
            await page.wait_for_url(f"{base}/ui/offers?saved=*")

            await page.goto(f"{base}/ui/campaigns/new")
            await page.get_by_label("Name").fill("Summer push")
            await page.get_by_label("Traffic source").select_option(label="Push ads (#1)")
            await page.locator("#f-offers-0").select_option(label="Summer offer (#1)")
            await page.locator("#f-offers-0-w").fill("100")
            await page.get_by_label("Cost model").select_option("cpc")
            await page.get_by_label("Cost value").fill("0.50")
            await shots(page, "05-campaign-form")
            await page.get_by_role("button", name="Save").click()
            await page.wait_for_url(f"{base}/ui/campaigns?saved=*")

            await page.goto(f"{base}/ui/")
            row = _row(page, 1)
            assert await _cell(row, "conversions") == "0"
            assert await _cell(row, "revenue") == "0.00"

            # The URLs page gives the click URL and the network's postback URL.
            await page.goto(f"{base}/ui/urls")
            click_url = await page.locator("#click-1").input_value()
            postback_url = await page.locator("#postback-1").input_value()
            assert await page.locator("#pixel").input_value()
            await shots(page, "06-urls")
            token = parse_qs(urlsplit(postback_url).query)["token"][0]

            # A click per sub1 and a postback for one of them, over HTTP.
            click_ids = {}
            for sub1 in ("banner", "native", "banner"):
                resp = await client.get(
                    urlsplit(click_url).path, params={"sub1": sub1}, allow_redirects=False
                )
                assert resp.status == 302
                location = resp.headers["Location"]
                click_ids[sub1] = parse_qs(urlsplit(location).query)["cid"][0]
            resp = await client.get(
                "/postback",
                params={"clickid": click_ids["banner"], "payout": "4.50", "token": token},
            )
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["result"] == "created"
            await wait_for_sink(sink)

            # The campaign row changed; profit and ROI are coloured by sign.
            started = time.perf_counter()
            await page.goto(f"{base}/ui/")
            load_ms = (time.perf_counter() - started) * 1000
            timing = await page.evaluate(
                """() => new Promise(resolve => {
                  const nav = performance.getEntriesByType('navigation')[0];
                  const done = fcp => resolve({dcl: nav.domContentLoadedEventEnd,
                                               load: nav.loadEventEnd, fcp: fcp});
                  new PerformanceObserver(list => {
                    const paint = list.getEntriesByName('first-contentful-paint')[0];
                    if (paint) done(paint.startTime);
                  }).observe({type: 'paint', buffered: true});
                  setTimeout(() => done(null), 2000);
                })"""
            )
            row = _row(page, 1)
            assert await _cell(row, "clicks") == "3"
            assert await _cell(row, "conversions") == "1"
            assert await _cell(row, "revenue") == "4.50"
            assert await _cell(row, "cost") == "1.50"
            assert await _cell(row, "profit") == "3.00"
            assert "pos" in (await row.locator('td[data-col="profit"]').get_attribute("class"))
            totals = page.locator("#campaigns tfoot tr")
            assert await _cell(totals, "revenue") == "4.50"
            await shots(page, "07-campaigns", for_readme=True)

            # Weight: the page, its stylesheet and script, gzipped as served.
            sizes = {}
            for path in ("/ui/", "/ui/static/ui.css", "/ui/static/ui.js"):
                fetched = await page.request.get(f"{base}{path}")
                assert fetched.ok
                sizes[path] = len(gzip.compress(await fetched.body(), 6))
            total = sum(sizes.values())
            render_ms = timing["fcp"] or timing["dcl"]
            print(
                f"\ncampaigns page: {total} bytes gzipped ({sizes}); first contentful paint "
                f"{timing['fcp']} ms, DOMContentLoaded {timing['dcl']:.0f} ms, load "
                f"{timing['load']:.0f} ms, navigation seen by the test {load_ms:.0f} ms"
            )
            assert total < MAX_PAGE_BYTES
            # Printed, not asserted: a shared machine's load is no property of the page.
            if render_ms >= MAX_RENDER_MS:
                print(f"first render took {render_ms:.0f} ms, over {MAX_RENDER_MS} ms")

            # Sort by a column with the keyboard: a link in the header.
            await page.get_by_role("link", name="Revenue").focus()
            await page.keyboard.press("Enter")
            await page.wait_for_url("**sort=-revenue*")

            # Drill down by sub1, then into the banner row, and back by the breadcrumbs.
            await page.get_by_role("link", name="Summer push").click()
            await page.wait_for_url("**/ui/campaigns/1?**")
            table = page.locator("#drilldown")
            banner = table.locator("tbody tr", has_text="banner")
            assert await _cell(banner, "clicks") == "2"
            assert await _cell(banner, "conversions") == "1"
            assert await _cell(banner, "revenue") == "4.50"
            native = table.locator("tbody tr", has_text="native")
            assert await _cell(native, "conversions") == "0"
            assert await page.locator("svg.chart").count() == 2
            assert await page.locator("svg.chart polyline").count() == 4
            await shots(page, "08-drilldown", for_readme=True)
            await banner.get_by_role("link", name="banner").click()
            crumbs = page.get_by_role("navigation", name="Breadcrumbs")
            assert await crumbs.get_by_role("link", name="sub1 = banner").is_visible()
            assert "by sub1=" not in page.url and "v=banner" in page.url
            offer_row = page.locator("#drilldown tbody tr", has_text="Summer offer")
            assert await _cell(offer_row, "conversions") == "1"
            await shots(page, "09-drilldown-level-2")
            await crumbs.get_by_role("link", name="Summer push").click()
            assert await page.locator("#drilldown tbody tr", has_text="native").is_visible()

            # The postback log, filtered, with the raw request.
            await page.goto(f"{base}/ui/postbacks")
            await page.get_by_label("Result").select_option("created")
            await page.get_by_role("button", name="Filter").click()
            await page.wait_for_url("**result=created*")
            logged = page.locator("#postbacks tbody tr", has_text="created")
            assert await logged.count() == 1
            await logged.locator("summary").click()
            raw = await logged.locator("pre").inner_text()
            assert '"payout": "4.50"' in raw and token not in raw
            await shots(page, "10-postback-log")

            await page.goto(f"{base}/ui/deliveries")
            assert await page.get_by_text("No deliveries.").is_visible()
            await shots(page, "11-delivery-log")

            # Sign out: the pages ask for a sign-in again.
            await page.get_by_role("button", name="Sign out").click()
            await page.wait_for_url("**/ui/login")
            await page.goto(f"{base}/ui/")
            assert "/ui/login" in page.url
        finally:
            await browser.close()
