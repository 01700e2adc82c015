"""Inbound conversions: `GET|POST /postback`."""

import hmac
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from tracker.store.conversions import NewConversion, record_unmatched
from tracker.web.appkeys import CLICK_READER, CONFIG, CONVERSION_WRITER, PG_POOL
from tracker.web.errors import ApiError, json_response, validation_details
from tracker.web.schemas import Currency, OptionalMoney

log = logging.getLogger("tracker.postback")

MAX_PARAMS = 100
MAX_VALUE_LENGTH = 2048


def _lower(value: str) -> str:
    return value.strip().lower()


class PostbackParams(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    clickid: str = Field(min_length=1, max_length=64)
    payout: OptionalMoney = None
    txid: str = Field(default="", max_length=128)
    status: Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_lower)] = "approved"
    currency: Currency | None = None
    event: str | None = Field(default=None, max_length=64)
    token: str | None = Field(default=None, max_length=256)


async def _read_params(request: web.Request) -> dict[str, str]:
    """Query parameters merged with a form or JSON body; the body wins on a clash."""
    params: dict[str, str] = dict(request.query)
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                raise ApiError(400, "request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "JSON body must be an object")
            for name, value in body.items():
                if isinstance(value, dict | list):
                    raise ApiError(400, f"parameter {name!r} must be a single value")
                # Numbers are kept as their JSON text so payouts stay exact.
                params[name] = value if isinstance(value, str) else orjson.dumps(value).decode()
        else:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, str):
                    params[name] = value
    if len(params) > MAX_PARAMS:
        raise ApiError(400, f"too many parameters (more than {MAX_PARAMS})")
    for name, value in params.items():
        if len(value) > MAX_VALUE_LENGTH:
            raise ApiError(400, f"parameter {name!r} longer than {MAX_VALUE_LENGTH} characters")
    return params


def _click_time(click: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(click["created_ms"] / 1000, tz=UTC)


async def postback(request: web.Request) -> web.Response:
    """Match a postback to its click and store the conversion exactly once."""
    app = request.config_dict
    pool = app[PG_POOL]
    params = await _read_params(request)
    raw_click_id = params.get("clickid")
    stored_params = {k: v for k, v in params.items() if k != "token"}
    try:
        # An empty value (an unfilled network macro) means the parameter is absent.
        pb = PostbackParams.model_validate({k: v for k, v in params.items() if v != ""})
    except ValidationError as exc:
        details = validation_details(exc)
        await record_unmatched(pool, raw_click_id, "invalid", stored_params)
        raise ApiError(400, "invalid postback", details) from None

    click = await app[CLICK_READER].fetch(pb.clickid)
    if click is None:
        await record_unmatched(pool, pb.clickid, "unknown_click", stored_params)
        raise ApiError(404, "unknown click id", [{"field": "clickid", "message": "no such click"}])

    snapshot = app[CONFIG].snapshot
    offer = snapshot.offers.get(click["offer_id"])
    if offer is not None and offer.postback_token:
        if pb.token is None or not hmac.compare_digest(
            pb.token.encode(), offer.postback_token.encode()
        ):
            await record_unmatched(pool, pb.clickid, "bad_token", stored_params)
            log.warning("postback with a wrong or missing token for click %s", pb.clickid)
            raise ApiError(403, "wrong or missing token")

    click_time = _click_time(click)
    campaign = snapshot.campaigns_by_id.get(click["campaign_id"])
    if campaign is not None:
        window = timedelta(days=campaign.attribution_window_days)
        if datetime.now(UTC) - click_time > window:
            await record_unmatched(pool, pb.clickid, "outside_attribution_window", stored_params)
            raise ApiError(404, "click is older than the campaign's attribution window")

    if pb.payout is not None:
        payout = pb.payout
    elif offer is not None and offer.payout is not None:
        payout = offer.payout
    else:
        payout = Decimal(0)
    currency = pb.currency or (offer.currency if offer is not None else "USD")
    created, conversion_id = await app[CONVERSION_WRITER].record(
        NewConversion(
            click=click,
            txid=pb.txid,
            payout=payout,
            currency=currency,
            status=pb.status,
            event=pb.event,
            params=stored_params,
        ),
    )
    return json_response(
        {"result": "created" if created else "duplicate", "conversion_id": conversion_id}
    )
