"""SIGTERM under load: every click that got a 302 is stored."""

import asyncio
import re
import signal
import subprocess
import sys

import aiohttp
from redis.asyncio import Redis

from tests.conftest import click_entries
from tests.test_cli import env_for, run_tracker, wait_until_listening
from tracker.devstack import free_port
from tracker.store import keys


async def test_sigterm_under_load_loses_no_redirected_click(settings):
    port = free_port()
    env = env_for(settings, port)
    demo = run_tracker(env, "seed-demo").stdout
    click_url = re.search(r"click URL:\s+(\S+)", demo)[1]
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "serve"], env=env)
    redirected: list[str] = []
    stop = asyncio.Event()

    async def clicker(http):
        while not stop.is_set():
            try:
                async with http.get(click_url, allow_redirects=False) as resp:
                    if resp.status == 302:
                        found = re.search(r"clickid=([0-9a-v]+)", resp.headers["Location"])
                        redirected.append(found[1])
            except aiohttp.ClientError:
                await asyncio.sleep(0.01)

    try:
        await wait_until_listening(port)
        async with aiohttp.ClientSession() as http:
            workers = [asyncio.create_task(clicker(http)) for _ in range(20)]
            await asyncio.sleep(1.0)
            before_signal = len(redirected)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 20)
            stop.set()
            await asyncio.gather(*workers)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert before_signal > 50
    redis = Redis.from_url(settings.redis_url)
    try:
        stream_ids = set()
        for _, fields in await click_entries(redis):
            stream_ids.add(re.search(rb'"click_id":"([0-9a-v]+)"', fields[b"d"])[1].decode())
        missing_keys = [c for c in redirected if not await redis.exists(keys.click_key(c))]
    finally:
        await redis.aclose()
    assert missing_keys == []
    assert set(redirected) <= stream_ids


async def test_workers_share_the_port_and_stop_on_sigterm(settings):
    port = free_port()
    env = env_for(settings, port)
    demo = run_tracker(env, "seed-demo").stdout
    click_url = re.search(r"click URL:\s+(\S+)", demo)[1]
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "serve", "--workers", "2"], env=env)
    try:
        await wait_until_listening(port)
        await asyncio.sleep(1.0)  # both workers up
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.get(
                    click_url, allow_redirects=False, headers={"Connection": "close"}
                ) as resp:
                    assert resp.status == 302
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
