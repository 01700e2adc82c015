"""Liveness and readiness, for load balancers and orchestrators; no API key, no heavy work."""

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from tracker.store import keys
from tracker.store.health import missing_migrations, streams_progress
from tracker.web.appkeys import PG_POOL, REDIS, REPORT_SOURCE, SETTINGS
from tracker.web.responses import HealthOut, ReadyOut, model_response


async def healthz(request: web.Request) -> web.Response:
    """200 while the process serves requests: it touches no store."""
    return model_response(HealthOut, {"status": "ok"})


async def _timed(probe: Awaitable[Any], limit: float) -> tuple[Any, float, str | None]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            value = await probe
    except TimeoutError:
        return None, limit, f"no answer within {limit:g} s"
    except Exception as exc:  # any failure of a store is "not ready", said in the body
        return None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:300]
    return value, time.perf_counter() - started, None


async def readyz(request: web.Request) -> web.Response:
    """200 when Redis and Postgres answer, every migration is applied and the sink keeps
    up; else 503. The body names each check, its result and what is wrong. A reports
    replica, when set, is checked too (with its lag) but is not required."""
    app = request.app
    settings = app[SETTINGS]
    timeout = settings.ready_timeout
    redis, pool = app[REDIS], app[PG_POOL]
    probes: dict[str, Awaitable[Any]] = {
        "redis": redis.ping(),
        "postgres": pool.fetchval("SELECT 1"),
        "migrations": missing_migrations(pool),
        **{
            f"sink_{name}": streams_progress(redis, streams, group)
            for name, (streams, group) in keys.sink_streams(settings.redis_shards).items()
        },
    }
    source = app[REPORT_SOURCE]
    if source.is_replica:
        probes["reports_replica"] = source.freshness()
    results = await asyncio.gather(*(_timed(p, timeout) for p in probes.values()))
    checks: dict[str, dict[str, Any]] = {}
    problems = []
    for name, (value, seconds, error) in zip(probes, results, strict=True):
        check: dict[str, Any] = {"ok": error is None, "ms": round(seconds * 1000, 1)}
        if error is None and name == "migrations" and value:
            error = f"not applied: {', '.join(value)} (run `tracker migrate`)"
        if error is None and name.startswith("sink_"):
            _, lag = value
            check["lag_seconds"] = round(lag, 1)
            limit = settings.ready_max_sink_lag_seconds
            if limit and lag > limit:
                error = f"the sink is {lag:.0f} s behind (limit {limit:g} s): is it running?"
        if name == "reports_replica":
            # Only reports read the replica: its outage leaves clicks and postbacks
            # served, so it is shown here but does not make the process unready.
            check["required"] = False
            if error is None:
                check["lag_seconds"] = value.lag_seconds
        if error is not None:
            check.update(ok=False, error=error)
            if check.get("required", True):
                problems.append(f"{name}: {error}")
        checks[name] = check
    if problems:
        body = {"status": "not ready", "error": "; ".join(problems), "checks": checks}
        return model_response(ReadyOut, body, 503)
    return model_response(ReadyOut, {"status": "ready", "checks": checks})
