"""Costs set after the fact: `POST /api/costs`."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, model_validator

from tracker.domain.money import parse_money
from tracker.domain.validation import INT64_MAX
from tracker.store.costs import campaign_exists, set_slice_cost
from tracker.web.admin import read_json_object
from tracker.web.appkeys import PG_POOL
from tracker.web.errors import ApiError
from tracker.web.responses import CostOut, model_response
from tracker.web.schemas import Body, MoneyText

MAX_DAYS = 366


def _iso_time(value: Any) -> Any:
    # Numbers would be read as Unix times; a cost range is given as text, with its offset.
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 time with an offset, e.g. 2026-03-01T00:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie between the years 1 and 9999 in UTC") from None


def _cost(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must be zero or more")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_iso_time), AfterValidator(_in_utc)]
RowId = Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]
FilterText = Annotated[str, Field(min_length=1, max_length=2000)]


class CostFilter(Body):
    """Which of the range's clicks the cost covers; every given key must match."""

    sub1: FilterText | None = None
    sub2: FilterText | None = None
    sub3: FilterText | None = None
    sub4: FilterText | None = None
    sub5: FilterText | None = None
    sub6: FilterText | None = None
    sub7: FilterText | None = None
    sub8: FilterText | None = None
    sub9: FilterText | None = None
    sub10: FilterText | None = None
    offer_id: RowId | None = None
    external_id: FilterText | None = None
    lander_id: RowId | None = None
    country: FilterText | None = None
    region: FilterText | None = None
    city: FilterText | None = None
    device: FilterText | None = None
    os: FilterText | None = None
    browser: FilterText | None = None
    language: FilterText | None = None

    @model_validator(mode="before")
    @classmethod
    def refuse_nulls(cls, data: Any) -> Any:
        # A null would read as "no filter" and silently widen the slice.
        if isinstance(data, dict):
            nulls = [key for key, value in data.items() if value is None]
            if nulls:
                raise ValueError(f"filter values must not be null: {', '.join(map(str, nulls))}")
        return data


class CostIn(Body):
    campaign_id: RowId
    start: Time = Field(alias="from")
    end: Time = Field(alias="to")
    cost: Annotated[Decimal, BeforeValidator(parse_money), AfterValidator(_cost), MoneyText]
    filter: CostFilter = CostFilter()

    @model_validator(mode="after")
    def check_range(self) -> "CostIn":
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        if self.end - self.start > timedelta(days=MAX_DAYS):
            raise ValueError(f"at most {MAX_DAYS} days per cost update")
        return self


async def set_cost(request: web.Request) -> web.Response:
    """Set the total cost of a slice of a campaign's stored clicks, spread over them."""
    item = CostIn.model_validate(await read_json_object(request))
    pool = request.config_dict[PG_POOL]
    if not await campaign_exists(pool, item.campaign_id):
        raise ApiError(
            400,
            "invalid cost update",
            [{"field": "campaign_id", "message": f"no campaign {item.campaign_id}"}],
        )
    slice_filter = item.filter.model_dump(exclude_none=True)
    done = await set_slice_cost(
        pool, item.campaign_id, item.start, item.end, item.cost, slice_filter
    )
    if done is None:
        raise ApiError(
            400,
            "no stored clicks in that slice (clicks not yet moved from Redis to Postgres "
            "are not counted; retry in a moment if they were just made)",
        )
    cost_update_id, clicks = done
    return model_response(
        CostOut,
        {
            "campaign_id": item.campaign_id,
            "from": item.start,
            "to": item.end,
            "cost": item.cost,
            "clicks": clicks,
            "filter": slice_filter,
            "cost_update_id": cost_update_id,
        },
        201,
    )
