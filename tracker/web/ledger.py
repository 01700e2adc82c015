"""Exchange rates (`/api/currency-rates`) and the postback log (`/api/postbacks`)."""

from datetime import UTC, date, datetime, time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from tracker.domain.params import first_wins
from tracker.domain.validation import QueryId, QueryLimit, day_after
from tracker.store.conversions import convert_pending
from tracker.web.admin import read_json_object
from tracker.web.appkeys import CONFIG, PG_POOL
from tracker.web.responses import (
    CurrencyRateOut,
    CurrencyRateSetOut,
    Items,
    PostbackLogOut,
    model_response,
)
from tracker.web.schemas import CurrencyRateIn

UPSERT_RATE = """
INSERT INTO currency_rates (currency, rate, valid_from) VALUES ($1, $2, $3)
ON CONFLICT (currency, valid_from) DO UPDATE SET rate = EXCLUDED.rate
RETURNING id, currency, rate, valid_from, created_at
"""
SELECT_RATES = """
SELECT id, currency, rate, valid_from, created_at FROM currency_rates ORDER BY currency, valid_from
"""
SELECT_POSTBACKS = """
SELECT id, receipt_id, received_at, network_id, click_id, result, reason, conversion_id,
       client_ip, method, source, params, queued, truncated, rematched_at
FROM postback_log
WHERE ($1::bigint IS NULL OR network_id = $1)
  AND ($2::text IS NULL OR result = $2)
  AND received_at >= $3 AND ($4::timestamptz IS NULL OR received_at < $4)
ORDER BY id DESC
LIMIT $5
"""


async def set_rate(request: web.Request) -> web.Response:
    """Set the rate a currency has from a date on; conversions waiting for it are converted."""
    item = CurrencyRateIn.model_validate(await read_json_object(request))
    pool = request.config_dict[PG_POOL]
    row: Any = await pool.fetchrow(UPSERT_RATE, item.currency, item.rate, item.valid_from)
    config = request.config_dict[CONFIG]
    await config.changed()
    converted = await convert_pending(pool, config.snapshot.rates)
    return model_response(CurrencyRateSetOut, {**_rate_item(row), "converted": converted}, 201)


async def list_rates(request: web.Request) -> web.Response:
    rows = await request.config_dict[PG_POOL].fetch(SELECT_RATES)
    return model_response(Items[CurrencyRateOut], {"items": [_rate_item(row) for row in rows]})


def _rate_item(row: Any) -> dict[str, Any]:
    # Rates carry 12 decimal places; show them without the trailing zeros.
    return {**dict(row), "rate": format(row["rate"].normalize(), "f")}


class PostbackQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    network_id: QueryId | None = None
    result: str | None = Field(default=None, max_length=32)
    start: date | None = Field(default=None, alias="from")
    end: date | None = Field(default=None, alias="to")
    limit: QueryLimit = 100


async def list_postbacks(request: web.Request) -> web.Response:
    """Recent inbound postbacks with their parameters, result and reason, newest first."""
    query = PostbackQuery.model_validate(first_wins(request.query.items()))
    start = datetime.combine(query.start or date(1970, 1, 1), time(), tzinfo=UTC)
    after = day_after(query.end) if query.end else None
    end = datetime.combine(after, time(), tzinfo=UTC) if after else None
    rows = await request.config_dict[PG_POOL].fetch(
        SELECT_POSTBACKS, query.network_id, query.result, start, end, query.limit
    )
    return model_response(Items[PostbackLogOut], {"items": [_masked(dict(row)) for row in rows]})


def _masked(item: dict[str, Any]) -> dict[str, Any]:
    if "token" in item["params"]:
        item["params"] = {**item["params"], "token": "***"}
    return item
