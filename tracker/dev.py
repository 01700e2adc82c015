"""`tracker dev` (what `make run` starts): the whole tracker on one machine.

Starts Redis and PostgreSQL under ./var (unless TRACKER_REDIS_URL /
TRACKER_DATABASE_URL point elsewhere), migrates, seeds the demo, runs the web
app and the sink, prints the URLs to try, and stops everything on Ctrl-C.
"""

import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

from tracker.demo import seed_demo
from tracker.devstack import PostgresServer, RedisServer
from tracker.processes import StopSignal, run_processes
from tracker.settings import Settings
from tracker.store.db import migrate

DEV_PG_PORT = 54329
DEV_REDIS_PORT = 63799


def _api_key(var: Path) -> str:
    path = var / "api_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def run_dev() -> int:
    var = Path(os.environ.get("TRACKER_VAR_DIR", "var")).resolve()
    var.mkdir(exist_ok=True)
    env = dict(os.environ)
    started: list[PostgresServer | RedisServer] = []
    stop = StopSignal()  # before the servers start, so Ctrl-C during start-up stops them too
    try:
        if "TRACKER_DATABASE_URL" not in env:
            pg = PostgresServer(var / "postgres", DEV_PG_PORT)
            pg.start()
            started.append(pg)
            env["TRACKER_DATABASE_URL"] = pg.dsn()
        if "TRACKER_REDIS_URL" not in env:
            rd = RedisServer(var / "redis", DEV_REDIS_PORT)
            rd.start()
            started.append(rd)
            env["TRACKER_REDIS_URL"] = rd.url()
        env.setdefault("TRACKER_API_KEY", _api_key(var))
        env.setdefault("TRACKER_SPOOL_DIR", str(var / "spool"))
        os.environ.update(env)
        settings = Settings()
        asyncio.run(migrate(settings.database_url))
        demo = asyncio.run(seed_demo(settings.database_url))

        base = settings.base_url()
        key = env["TRACKER_API_KEY"]
        click_url = f"{base}/c/{demo.campaign_key}?external_id=demo-1&sub1=banner1"
        postback = (
            f"{base}/postback?clickid=CLICKID&payout=2.50&txid=order-1&token={demo.postback_token}"
        )
        today = time.strftime("%Y-%m-%d", time.gmtime())
        report_url = f"{base}/api/reports?from={today}&to={today}&group_by=campaign,day"
        follow = "curl -s -o /dev/null -w '%{redirect_url}'"
        extract = "sed 's/.*clickid=\\([^&]*\\).*/\\1/'"
        try_it = "\n".join(
            [
                f"  CLICKID=$({follow} '{click_url}' | {extract})",
                f'  curl "{postback.replace("CLICKID", "$CLICKID")}"',
                f"  curl -H 'Authorization: Bearer {key}' '{report_url}'",
            ]
        )
        print(
            f"""
tracker is running at {base}  (Ctrl-C stops everything)

API key:      {key}
click URL:    {click_url}
postback URL: {postback}
              (put the click id from the redirect's clickid= in place of CLICKID)
report URL:   {report_url}

Try it:
{try_it}
""",
            flush=True,
        )
        commands = [[sys.executable, "-m", "tracker", command] for command in ("serve", "sink")]
        return run_processes(commands, stop, env=env, stop_timeout=15)
    finally:
        for server in reversed(started):
            server.stop()
