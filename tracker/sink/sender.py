"""The outbox sender: sends each delivery to its traffic source or ad platform, retries
what can succeed later, and records every attempt.

Runs in `tracker sink` or alone as `tracker sender`; any number of them share the work.
A sender takes due deliveries with a lease (see `store.deliveries.CLAIM_DUE`): killed
between the send and the record, its delivery is sent again once the lease ends, with
the same `Idempotency-Key`, and nothing else repeats.
"""

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import socket
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import asyncpg
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from tracker.domain.addresses import is_public, parse_ip
from tracker.domain.click import FACT_COLUMNS, SUB_NAMES
from tracker.outbound.payloads import (
    DeliveryFacts,
    OutboundRequest,
    PayloadError,
    PlatformUrls,
    SourcePostback,
    build_request,
)
from tracker.settings import Settings
from tracker.store import deliveries
from tracker.store.db import POSTGRES_UNAVAILABLE


def _about(row: asyncpg.Record) -> dict[str, Any]:
    """Log fields tying a line to its delivery and conversion."""
    return {"delivery_id": row["id"], "conversion_id": row["conversion_id"]}


log = logging.getLogger("tracker.sender")

RESPONSE_KEPT = 512
# Read of an answer: enough for a platform's error in a 200 (see `platform_refusal`).
ANSWER_READ = 64 * 1024
_CREDENTIAL_HEADERS = ("Authorization", "Access-Token", "developer-token", "login-customer-id")
MAX_REDIRECTS = 5
# Longest wait a Retry-After may ask for; beyond it the normal backoff applies.
MAX_RETRY_AFTER = 6 * 3600.0
# How often a sender looks for due deliveries when nothing wakes it.
POLL_SECONDS = 1.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
STORE_ERRORS: tuple[type[BaseException], ...] = (*POSTGRES_UNAVAILABLE, asyncpg.PostgresError)


class RefusedAddress(OSError):
    """A delivery's host is, or resolves to, an address deliveries may not go to."""


def refusal(host: str, address: str) -> str:
    return f"{host} is {address}, not a public address: deliveries to it are refused"


class GuardedResolver(AbstractResolver):
    """Name resolution that refuses loopback, private, link-local, metadata and other
    non-public answers, so the check holds for the address actually connected to."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            address = parse_ip(answer["host"])
            if address is None or not is_public(address):
                raise RefusedAddress(refusal(host, answer["host"]))
        return answers

    async def close(self) -> None:
        await self._inner.close()


def check_destination(url: URL, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or whose host is a non-public address literal
    (names are checked when resolved)."""
    if url.scheme not in ("http", "https") or not url.host:
        raise PayloadError(f"not an http(s) URL: {url.scheme}://…")
    if allow_private:
        return
    address = parse_ip(url.host)
    if address is not None and not is_public(address):
        raise RefusedAddress(refusal(url.host, url.host))


def backoff(attempts: int, base: float, rng: random.Random) -> float:
    """Seconds before attempt `attempts + 1`: base, twice that, four times… each drawn from its
    upper half, so that deliveries failed together do not come back together."""
    ceiling: float = base * 2.0 ** min(attempts - 1, 30)
    return ceiling / 2 + rng.random() * ceiling / 2


def retry_after(value: str | None, now: datetime) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, min((when - now).total_seconds(), MAX_RETRY_AFTER))
    except (TypeError, ValueError, OverflowError):
        return None


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` without the secrets, as written or as they appear in a URL."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                text = text.replace(form, "…")
    return text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def delivery_facts(row: Mapping[str, Any]) -> DeliveryFacts:
    fields = {name: _text(row[name]) for name in SUB_NAMES}
    fields.update({name: _text(row[name]) for name, _ in FACT_COLUMNS})
    params = row["click_params"]
    return DeliveryFacts(
        delivery_id=row["id"],
        conversion_id=row["conversion_id"],
        conversion_time=row["conversion_time"],
        click_time=row["click_time"],
        click_id=row["click_id"],
        external_id=row["external_id"],
        campaign_id=row["campaign_id"],
        offer_id=row["offer_id"],
        traffic_source_id=row["traffic_source_id"],
        status=row["status"],
        payout=row["payout"],
        currency=row["currency"].strip(),
        cost=row["cost"],
        txid=row["txid"],
        event=row["event"],
        ip=row["ip"],
        user_agent=row["user_agent"],
        click_params={str(k): str(v) for k, v in params.items()}
        if isinstance(params, dict)
        else {},
        fields=fields,
    )


def source_postback(row: Mapping[str, Any]) -> SourcePostback:
    """The source's settings, with the campaign's own template in place of the source's
    URL, method and body when the campaign has one."""
    share = row["postback_share"]
    common: dict[str, Any] = {
        "status_map": dict(row["postback_status_map"] or {}),
        "share_percent": Decimal(share) if share is not None else None,
        "signing_secret": row["postback_signing_secret"],
    }
    if row["campaign_postback_url"]:
        return SourcePostback(
            preset="template",
            method=row["campaign_postback_method"] or "GET",
            url=row["campaign_postback_url"],
            body=row["campaign_postback_body"],
            body_format=row["campaign_postback_body_format"] or "json",
            credentials={},
            **common,
        )
    return SourcePostback(
        preset=row["postback_preset"],
        method=row["postback_method"],
        url=row["postback_url"],
        body=row["postback_body"],
        body_format=row["postback_body_format"],
        credentials=dict(row["postback_credentials"] or {}),
        **common,
    )


class TokenError(Exception):
    """No access token could be had; `retryable` when trying later may help."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class GoogleTokens:
    """Google Ads access tokens refreshed from a source's OAuth credentials (an access
    token lasts about an hour), kept in memory until a minute before they expire."""

    def __init__(self, url: str, allow_private: bool) -> None:
        self._url = URL(url)
        self._allow_private = allow_private
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def credentials(
        self, session: aiohttp.ClientSession, credentials: Mapping[str, str]
    ) -> dict[str, str]:
        """`credentials` with a current `access_token` when they carry a refresh token."""
        refresh = credentials.get("refresh_token")
        if not refresh:
            return dict(credentials)
        key = (credentials.get("client_id", ""), refresh)
        async with self._locks.setdefault(key, asyncio.Lock()):
            token, expires = self._tokens.get(key, ("", 0.0))
            if time.monotonic() >= expires:
                token, lifetime = await self._refresh(session, credentials)
                expires = time.monotonic() + max(lifetime - 60.0, lifetime / 2)
                self._tokens[key] = (token, expires)
        return {**credentials, "access_token": token}

    def forget(self, credentials: Mapping[str, str]) -> None:
        """Drop the kept token (the API refused it): the next attempt gets a new one."""
        self._tokens.pop(
            (credentials.get("client_id", ""), credentials.get("refresh_token", "")), None
        )

    async def _refresh(
        self, session: aiohttp.ClientSession, credentials: Mapping[str, str]
    ) -> tuple[str, float]:
        check_destination(self._url, self._allow_private)
        form = {
            "grant_type": "refresh_token",
            "client_id": credentials.get("client_id", ""),
            "client_secret": credentials.get("client_secret", ""),
            "refresh_token": credentials.get("refresh_token", ""),
        }
        try:
            async with session.post(self._url, data=form, allow_redirects=False) as resp:
                answer = await resp.read()
                status = resp.status
        except TimeoutError:
            raise TokenError("Google OAuth did not answer in time", retryable=True) from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise TokenError(str(exc.os_error), retryable=False) from None
            raise TokenError(f"cannot reach Google OAuth: {exc.os_error}", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TokenError(f"Google OAuth: {type(exc).__name__}", retryable=True) from None
        try:
            body = orjson.loads(answer)
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status != 200:
            reason = str(body.get("error", ""))[:100] or f"answered {status}"
            retryable = status == 429 or status >= 500
            raise TokenError(f"Google OAuth refused the refresh token: {reason}", retryable)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError("Google OAuth answered without an access token", retryable=True)
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 3600.0
        return token, seconds


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one attempt came to. `body` is the start of the answer, for the platforms'
    errors inside a 200; `refused`: a 2xx whose body says the platform took nothing."""

    status_code: int | None = None
    response: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    body: bytes = b""
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.refused


def platform_refusal(preset: str, body: bytes) -> str | None:
    """Why an ad platform's 2xx answer took nothing, or None. Google Ads reports a bad
    gclid or conversion action in `partialFailureError`; TikTok answers every error
    with 200 and a non-zero `code`; Meta with an `error` object."""
    if preset == "template" or not body:
        return None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if preset == "google_ads" and answer.get("partialFailureError"):
        failure = answer["partialFailureError"]
        message = failure.get("message") if isinstance(failure, dict) else failure
        return f"Google Ads refused the conversion: {str(message)[:300]}"
    if preset == "tiktok" and answer.get("code") not in (None, 0):
        message = str(answer.get("message"))[:300]
        return f"TikTok refused the event: code {answer.get('code')}: {message}"
    if preset == "meta" and answer.get("error"):
        error = answer["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return f"Meta refused the event: {str(message)[:300]}"
    return None


class DeliverySender:
    """Claims due deliveries and sends them, `outbound_concurrency` at a time."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, name: str = "sender") -> None:
        self._pool = pool
        self._settings = settings
        self._name = name
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.outbound_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._google = GoogleTokens(settings.google_oauth_url, settings.outbound_allow_private)
        self._urls = PlatformUrls(
            meta=settings.meta_api_url.rstrip("/"),
            tiktok=settings.tiktok_api_url.rstrip("/"),
            google_ads=settings.google_ads_api_url.rstrip("/"),
        )
        # An attempt never outlives its lease: another sender would send it again.
        self.lease_seconds = settings.outbound_timeout * 2 + 1
        self.sent = 0
        self.delivered = 0
        # Attempts recorded, by what they led to: delivered, retry (pending again), dead.
        self.outcomes: collections.Counter[str] = collections.Counter()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self, *_: object) -> None:
        self._wake.set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.outbound_concurrency,
            limit_per_host=self._settings.outbound_per_host,
            resolver=None if self._settings.outbound_allow_private else GuardedResolver(),
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=self._settings.outbound_timeout,
            connect=self._settings.outbound_connect_timeout,
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": "tracker-postback/1"},
            skip_auto_headers=("Content-Type",),
        ) as session:
            listener = asyncio.create_task(self._listen(), name="delivery-listener")
            try:
                await self._loop(session)
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=self._settings.outbound_timeout)

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            free = self._settings.outbound_concurrency - len(self._tasks)
            claimed: list[asyncpg.Record] = []
            wait = POLL_SECONDS
            if free > 0:
                try:
                    claimed = await deliveries.claim(
                        self._pool, free, self.lease_seconds, self._settings.outbound_max_attempts
                    )
                    if not claimed:
                        due_in = await deliveries.next_due_in(self._pool)
                        if due_in is not None:
                            wait = max(0.0, min(wait, due_in))
                except STORE_ERRORS as exc:
                    log.warning("%s: cannot claim deliveries (%r); trying again", self._name, exc)
            for row in claimed:
                task = asyncio.create_task(self._send(session, row))
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # maybe more are due; a finished task frees a slot
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: delivery task failed: %r", self._name, exc)

    async def _listen(self) -> None:
        """Wake on every NOTIFY of new or replayed deliveries; reconnect when the
        connection is lost (the loop polls meanwhile)."""
        delay = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._settings.database_url, timeout=self._settings.pg_timeout
                )
                await conn.add_listener(deliveries.CHANNEL, self.wake)
                self._wake.set()  # anything written while not listening
                delay = 0.5
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
                    await conn.execute("SELECT 1", timeout=self._settings.pg_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("%s: delivery listener lost (%r); reconnecting", self._name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()

    async def _send(self, session: aiohttp.ClientSession, row: asyncpg.Record) -> None:
        async with self._slots:
            started = datetime.now(UTC)
            clock = time.perf_counter()
            secrets = [str(v) for v in dict(row["postback_credentials"] or {}).values()]
            secrets.append(row["postback_signing_secret"] or "")
            try:
                # One deadline for the whole attempt (token, redirects), inside the lease.
                async with asyncio.timeout(self.lease_seconds - 1):
                    outcome = await self._prepare_and_send(session, row, started, secrets)
            except TimeoutError:
                outcome = Outcome(
                    error=f"no answer within {self.lease_seconds - 1:g} s", retryable=True
                )
            except TokenError as exc:
                outcome = Outcome(error=str(exc), retryable=exc.retryable)
            except PayloadError as exc:
                outcome = Outcome(error=f"cannot build the request: {exc}")
            except RefusedAddress as exc:
                outcome = Outcome(error=str(exc))
            except Exception as exc:  # recorded, so that the delivery cannot loop unseen
                log.exception(
                    "%s: delivery %s failed unexpectedly",
                    self._name,
                    row["id"],
                    extra=_about(row),
                )
                outcome = Outcome(error=f"unexpected error: {type(exc).__name__}")
            latency = int((time.perf_counter() - clock) * 1000)
            if outcome.error:
                outcome.error = redact(outcome.error, secrets)[:1000]
            if outcome.response:
                outcome.response = redact(outcome.response, secrets)
            await self._record(row, outcome, started, latency)

    async def _prepare_and_send(
        self,
        session: aiohttp.ClientSession,
        row: asyncpg.Record,
        started: datetime,
        secrets: list[str],
    ) -> "Outcome":
        values = dict(row.items())
        postback = source_postback(values)
        refreshed = False
        if postback.preset == "google_ads" and postback.credentials.get("refresh_token"):
            credentials = await self._google.credentials(session, postback.credentials)
            postback = dataclasses.replace(postback, credentials=credentials)
            secrets.append(credentials.get("access_token", ""))
            refreshed = True
        request = build_request(postback, delivery_facts(values), self._urls, started)
        outcome = await self._attempt(session, request)
        if outcome.status_code is not None and outcome.delivered:
            platform_error = platform_refusal(postback.preset, outcome.body)
            if platform_error is not None:
                outcome.error = platform_error
                outcome.refused = True
        if refreshed and outcome.status_code == 401:
            # An access token revoked before its time: the next attempt gets a new one.
            self._google.forget(postback.credentials)
            outcome.retryable = True
        return outcome

    async def _attempt(self, session: aiohttp.ClientSession, request: OutboundRequest) -> Outcome:
        url = URL(request.url, encoded=True)
        method, body = request.method, request.body
        headers = dict(request.headers)
        for _ in range(MAX_REDIRECTS + 1):
            check_destination(url, self._settings.outbound_allow_private)
            try:
                async with session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as resp:
                    head = await resp.content.read(ANSWER_READ)
                    status = resp.status
                    location = resp.headers.get("Location") if status in _REDIRECTS else None
                    wait = resp.headers.get("Retry-After")
            except TimeoutError:
                return Outcome(
                    error=f"no answer within {self._settings.outbound_timeout:g} s",
                    retryable=True,
                )
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, RefusedAddress):
                    return Outcome(error=str(exc.os_error))
                return Outcome(error=f"cannot connect: {exc.os_error}", retryable=True)
            except aiohttp.InvalidURL:
                return Outcome(error="the URL is not valid")
            except aiohttp.ClientResponseError as exc:
                # Its text names the URL, which may carry a token: the reason only.
                return Outcome(error=f"{type(exc).__name__}: {exc.message}", retryable=True)
            except (aiohttp.ClientError, OSError) as exc:
                return Outcome(error=f"{type(exc).__name__}: {exc}", retryable=True)
            if location is not None:
                try:
                    target = url.join(URL(location))
                    target_host = target.host
                except (ValueError, UnicodeError):
                    return Outcome(status_code=status, error="redirected to an invalid URL")
                if target_host != url.host:
                    # Credentials are for the host they were configured for.
                    for name in _CREDENTIAL_HEADERS:
                        headers.pop(name, None)
                url = target
                if status == 303 or (status in (301, 302) and method == "POST"):
                    method, body = "GET", None
                    headers.pop("Content-Type", None)
                continue
            text = head[:RESPONSE_KEPT].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
            retryable = status == 429 or status >= 500
            return Outcome(
                status_code=status,
                response=text,
                error=None if 200 <= status < 300 else f"answered {status}",
                retryable=retryable,
                retry_after=retry_after(wait, datetime.now(UTC)) if retryable else None,
                body=head,
            )
        return Outcome(error=f"more than {MAX_REDIRECTS} redirects")

    async def _record(
        self, row: asyncpg.Record, outcome: Outcome, started: datetime, latency: int
    ) -> None:
        settings = self._settings
        now = datetime.now(UTC)
        next_at: datetime | None = None
        error = outcome.error
        if outcome.delivered:
            state = deliveries.DELIVERED
        elif not outcome.retryable:
            state = deliveries.DEAD
        elif row["attempts"] >= settings.outbound_max_attempts:
            state = deliveries.DEAD
            error = f"gave up after {row['attempts']} attempts: {error}"
        else:
            wait = backoff(row["attempts"], settings.outbound_retry_base_seconds, self._rng)
            if outcome.retry_after is not None:
                wait = max(wait, outcome.retry_after)
            next_at = now + timedelta(seconds=wait)
            if next_at - row["created_at"] > timedelta(hours=settings.outbound_max_age_hours):
                state = deliveries.DEAD
                next_at = None
                error = f"gave up: older than {settings.outbound_max_age_hours:g} h: {error}"
            else:
                state = deliveries.PENDING
        for delay in (0.5, 1.0, 2.0, 4.0, None):
            try:
                await deliveries.finish(
                    self._pool,
                    row,
                    state,
                    next_at,
                    started,
                    outcome.status_code,
                    latency,
                    outcome.response,
                    error,
                )
                break
            except STORE_ERRORS as exc:
                if delay is None:
                    # The lease runs out and another attempt follows: sent twice at worst,
                    # with one Idempotency-Key.
                    log.error(
                        "%s: delivery %s not recorded (%r)",
                        self._name,
                        row["id"],
                        exc,
                        extra=_about(row),
                    )
                    return
                await asyncio.sleep(delay)
        self.sent += 1
        self.outcomes["retry" if state == deliveries.PENDING else state] += 1
        if state == deliveries.DELIVERED:
            self.delivered += 1
        elif state == deliveries.DEAD:
            log.warning(
                "%s: delivery %s is dead: %s",
                self._name,
                row["id"],
                error,
                extra=_about(row),
            )
