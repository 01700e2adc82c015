"""Prometheus metrics: what moves after a click, a postback and a delivery; the key; the
sink's port; two workers whose counts add up."""

import asyncio
import socket
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_KEY, BROWSER, start_client
from tests.test_faults_postbacks import running_stack
from tests.test_flows import GOOGLEBOT
from tests.test_outbox import (  # noqa: F401 - receiver is a fixture
    converted,
    receiver,
    running_sender,
    wait_until,
)
from tracker.devstack import free_port, wait_for_port
from tracker.metrics import Metrics, serve_metrics
from tracker.sink.metrics import sink_metrics
from tracker.web.app import create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: Any) -> Samples:
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


async def test_metrics_need_the_api_key(client):
    resp = await client.get("/metrics")
    assert resp.status == 401
    assert (await resp.json())["error"] == "missing or wrong API key"


async def test_counters_move_after_a_click_and_a_postback(client, api):
    made = await api.setup_campaign()
    before = await scrape(client)
    resp = await client.get(
        f"/c/{made['campaign']['key']}", allow_redirects=False, headers={"User-Agent": BROWSER}
    )
    assert resp.status == 302
    click_id = resp.headers["Location"].rsplit("=", 1)[1]
    bot = await client.get(
        f"/c/{made['campaign']['key']}", allow_redirects=False, headers={"User-Agent": GOOGLEBOT}
    )
    assert bot.status == 302
    unknown = await client.get("/c/nope", allow_redirects=False)
    assert unknown.status == 404
    token = made["network"]["postback_token"]
    for txid in ("T1", "T1"):
        resp = await client.get(
            "/postback", params={"clickid": click_id, "txid": txid, "token": token}
        )
        assert resp.status == 200
    resp = await client.get("/postback", params={"clickid": click_id, "txid": "T2"})
    assert resp.status == 403
    after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tracker_clicks_total", result="offer", bot="false") == 1
    assert moved("tracker_clicks_total", result="offer", bot="true") == 1
    assert moved("tracker_clicks_total", result="unknown_campaign", bot="false") == 1
    assert moved("tracker_postbacks_total", source="postback", result="created") == 1
    assert moved("tracker_postbacks_total", source="postback", result="duplicate") == 1
    assert moved("tracker_postbacks_total", source="postback", result="rejected-auth") == 1
    assert moved("tracker_conversions_total", status="approved") == 1
    click_route = {"route": "/c/{campaign_key}", "method": "GET"}
    assert moved("tracker_request_seconds_count", **click_route) == 3
    assert moved("tracker_request_seconds_count", route="/postback", method="GET") == 3
    assert value(after, "tracker_request_seconds_bucket", le="+Inf", **click_route) >= 3
    assert moved("tracker_batch_size_count", writer="click-writer") >= 2
    assert moved("tracker_batch_size_sum", writer="click-writer") == 2
    assert value(after, "tracker_pg_pool_connections", pool="web") >= 1
    assert value(after, "tracker_clicks_spooled_total") == 0
    # No sink runs here: both clicks wait on the stream.
    assert value(after, "tracker_stream_backlog", stream="clicks") == 2
    assert value(after, "tracker_sink_lag_seconds", stream="clicks") >= 0
    assert value(after, "tracker_stream_backlog", stream="postbacks") == 0


async def test_the_sink_port_counts_deliveries(client, api, pool, redis, receiver, settings):  # noqa: F811
    await converted(client, api, receiver)
    async with running_sender(pool, settings) as sender:
        metrics = sink_metrics(pool, None, None, sender)
        port = free_port()
        runner = await serve_metrics(metrics, redis, "127.0.0.1", port)
        try:
            await wait_until(lambda: sender.delivered == 1)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                assert resp.status == 200
                samples = parse(await resp.text())
        finally:
            await runner.cleanup()
    assert value(samples, "tracker_deliveries_total", outcome="delivered") == 1
    assert value(samples, "tracker_pg_pool_connections", pool="sink") >= 1


def _two_free_ports() -> int:
    """A port that is free, and the one after it too."""
    for _ in range(100):
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two free ports in a row")


async def test_a_taken_metrics_port_does_not_stop_the_web_process(settings, api):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = settings.model_copy(update={"metrics_port": port})
        client = await start_client(create_app(busy), busy)
        try:
            resp = await client.get("/healthz")
            assert resp.status == 200
            assert await scrape(client)  # the web port still serves them, with the key
        finally:
            await client.close()


@pytest.mark.faults
def test_two_workers_each_serve_their_own_and_the_counts_add_up() -> None:
    base = _two_free_ports()
    with running_stack("tracker-metrics-", TRACKER_METRICS_PORT=str(base)) as stack:
        assert stack.web is not None
        stack.web.terminate()  # the stack's single worker: replaced by two
        stack.web.wait(timeout=20)
        stack.web = subprocess.Popen(
            [sys.executable, "-m", "tracker", "serve", "--workers", "2"], env=stack.env
        )
        wait_for_port(stack.port, "tracker serve --workers 2")
        wait_for_port(base, "worker 0 metrics")
        wait_for_port(base + 1, "worker 1 metrics")
        sent, per_worker, web_port_status = asyncio.run(_click_and_scrape(stack.port, base))
    print(f"\ntwo workers: clicks counted {per_worker}, sum {sum(per_worker)} of {sent}")
    assert web_port_status == 401  # the web port's /metrics needs the key
    assert sum(per_worker) == sent
    assert all(count > 0 for count in per_worker)


async def _click_and_scrape(port: int, base: int) -> tuple[int, list[float], int]:
    """Clicks on new connections (the kernel spreads them over the workers) until each
    worker has counted some; what was sent, what each counted, and the web port's answer."""
    sent = 0
    async with aiohttp.ClientSession() as http:
        while True:
            for _ in range(20):
                async with http.get(
                    f"http://127.0.0.1:{port}/c/unknown", headers={"Connection": "close"}
                ) as resp:
                    assert resp.status == 404
                sent += 1
            per_worker = []
            for metrics_port in (base, base + 1):
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    samples = parse(await resp.text())
                per_worker.append(
                    value(samples, "tracker_clicks_total", result="unknown_campaign", bot="false")
                )
            if all(per_worker) or sent >= 400:
                break
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return sent, per_worker, resp.status


def test_route_timer_is_made_once_per_route_and_counts_into_its_series() -> None:
    metrics = Metrics()
    timer = metrics.route_timer("/c/{campaign_key}", "GET")
    assert metrics.route_timer("/c/{campaign_key}", "GET") is timer
    timer(0.002)
    timer(0.02)
    metrics.route_timer("/postback", "GET")(0.002)
    series = metrics.requests[("/c/{campaign_key}", "GET")]
    assert sum(series.counts) == 2 and series.total == pytest.approx(0.022)
    assert sum(metrics.requests[("/postback", "GET")].counts) == 1
    metrics.count(metrics.clicks, "offer", "false")
    metrics.count(metrics.clicks, "offer", "false")
    assert metrics.clicks == {("offer", "false"): 2}


def test_disabled_metrics_keep_nothing() -> None:
    metrics = Metrics(enabled=False)
    metrics.route_timer("/c/{campaign_key}", "GET")(0.002)
    metrics.count(metrics.clicks, "offer", "false")
    assert metrics.requests == {} and metrics.clicks == {}
