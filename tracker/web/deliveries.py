"""The delivery log: `GET /api/deliveries`, `POST /api/deliveries/{id}/retry`,
`POST /api/deliveries/replay`."""

from datetime import UTC, date, datetime, time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tracker.domain.params import first_wins
from tracker.domain.validation import INT64_MAX, QueryId, QueryLimit, day_after
from tracker.store import deliveries
from tracker.web.admin import read_json_object
from tracker.web.appkeys import PG_POOL
from tracker.web.errors import ApiError
from tracker.web.responses import (
    DeliveryOut,
    DeliveryReplayOut,
    DeliveryRetryOut,
    Page,
    model_response,
)
from tracker.web.schemas import Body


class DeliveryFilter(BaseModel):
    """Which deliveries; `from` and `to` are days (UTC, both included) of their creation."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    traffic_source_id: QueryId | None = None
    campaign_id: QueryId | None = None
    start: date | None = Field(default=None, alias="from")
    end: date | None = Field(default=None, alias="to")

    @model_validator(mode="after")
    def check_range(self) -> "DeliveryFilter":
        if self.start and self.end and self.end < self.start:
            raise ValueError("`to` is before `from`")
        return self

    def args(self, state: str | None) -> tuple[Any, ...]:
        since = datetime.combine(self.start, time(), tzinfo=UTC) if self.start else None
        after = day_after(self.end) if self.end else None
        until = datetime.combine(after, time(), tzinfo=UTC) if after else None
        return deliveries.filter_args(state, self.traffic_source_id, self.campaign_id, since, until)


class DeliveryQuery(DeliveryFilter):
    status: Literal["pending", "delivered", "dead"] | None = None
    limit: QueryLimit = 100
    offset: int = Field(default=0, ge=0, le=10**9)


class ReplayIn(Body, DeliveryFilter):
    """Dead deliveries created in a range of days, narrowed by source or campaign."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")


def _item(row: Any) -> dict[str, Any]:
    item = dict(row)
    item["payout"] = None if row["payout"] is None else format(row["payout"].normalize(), "f")
    item["currency"] = row["currency"].strip()
    item["attempts_log"] = item.pop("attempt_log")
    return item


async def list_deliveries(request: web.Request) -> web.Response:
    """Deliveries with every attempt, newest first; `status` is pending, delivered or dead."""
    query = DeliveryQuery.model_validate(first_wins(request.query.items()))
    rows = await deliveries.list_deliveries(
        request.config_dict[PG_POOL], query.args(query.status), query.limit, query.offset
    )
    return model_response(
        Page[DeliveryOut],
        {"items": [_item(row) for row in rows], "limit": query.limit, "offset": query.offset},
    )


async def retry_delivery(request: web.Request) -> web.Response:
    """Send a dead (or delivered) delivery again, with a fresh count of attempts."""
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= INT64_MAX:
        raise ApiError(404, "delivery not found")
    pool = request.config_dict[PG_POOL]
    if not await deliveries.retry(pool, int(raw)):
        state = await pool.fetchval("SELECT state FROM deliveries WHERE id = $1", int(raw))
        if state is None:
            raise ApiError(404, f"delivery {raw} not found")
        raise ApiError(409, f"delivery {raw} is pending already")
    return model_response(DeliveryRetryOut, {"id": int(raw), "state": deliveries.PENDING})


async def replay_deliveries(request: web.Request) -> web.Response:
    """Send again every dead delivery of a range of days (and source or campaign)."""
    replay = ReplayIn.model_validate(await read_json_object(request))
    count = await deliveries.replay_dead(request.config_dict[PG_POOL], replay.args(None))
    return model_response(DeliveryReplayOut, {"replayed": count})
