"""Every object shared through the aiohttp application, keyed in one place."""

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from tracker.domain.addresses import AddressRanges
from tracker.facts.visitors import VisitorFacts
from tracker.metrics import Metrics
from tracker.postbacks import PostbackProcessor
from tracker.settings import Settings
from tracker.store.auth_failures import AuthFailures
from tracker.store.clicks import ClickReader, ClickWriter
from tracker.store.config import ConfigCache
from tracker.store.conversions import ConversionWriter
from tracker.store.postback_log import PostbackLog
from tracker.store.ratelimit import PostbackGuard
from tracker.store.replica import ReportSource

if TYPE_CHECKING:
    from tracker.web.click import ClickServices
    from tracker.web.errors import JsonErrors

SETTINGS = web.AppKey("settings", Settings)
PG_POOL = web.AppKey("pg_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
CLICK_WRITER = web.AppKey("click_writer", ClickWriter)
CONFIG = web.AppKey("config", ConfigCache)
CONVERSION_WRITER = web.AppKey("conversion_writer", ConversionWriter)
CLICK_READER = web.AppKey("click_reader", ClickReader)
POSTBACKS = web.AppKey("postbacks", PostbackProcessor)
POSTBACK_LOG = web.AppKey("postback_log", PostbackLog)
POSTBACK_GUARD = web.AppKey("postback_guard", PostbackGuard)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", AddressRanges)
VISITOR_FACTS = web.AppKey("visitor_facts", VisitorFacts)
# `; Path=/; HttpOnly; SameSite=Lax` (`SameSite=None; Secure` over https), for every cookie.
COOKIE_ATTRIBUTES = web.AppKey("cookie_attributes", str)
METRICS = web.AppKey("metrics", Metrics)
AUTH_FAILURES = web.AppKey("auth_failures", AuthFailures)
# Where reports read from: the reports replica's own pool, or the primary's.
REPORT_SOURCE = web.AppKey("report_source", ReportSource)
# How the app answers failures as JSON (the click handler answers its own with it).
ERRORS: web.AppKey["JsonErrors"] = web.AppKey("errors")
# What the click handler reads, gathered at startup.
CLICK_SERVICES: web.AppKey["ClickServices"] = web.AppKey("click_services")
