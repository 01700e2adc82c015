"""ROI reports: `GET /api/reports`."""

from datetime import date
from decimal import Decimal, localcontext
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tracker.domain.metrics import derive
from tracker.domain.params import first_wins
from tracker.domain.validation import QueryId
from tracker.store.reports import DIMENSIONS, fetch_report
from tracker.web.appkeys import PG_POOL
from tracker.web.errors import json_response

MAX_DAYS = 366
# Counts summed into the totals beside the money. `clicks` are human clicks only;
# bots are counted apart in `bot_clicks`, never as clicks.
COUNTERS = (
    "clicks",
    "bot_clicks",
    "unique_clicks",
    "lp_views",
    "lp_clicks",
    "leads",
    "pending",
    "unconverted",
)
# Enough for any sum of NUMERIC amounts below 10^12 with 14 decimal places.
EXACT_DIGITS = 60


class ReportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: date = Field(alias="from")
    end: date = Field(alias="to")
    group_by: list[str] = ["campaign"]
    campaign_id: QueryId | None = None

    @field_validator("group_by", mode="before")
    @classmethod
    def split_group_by(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not value:
            raise ValueError("give at least one of " + ", ".join(DIMENSIONS))
        unknown = [part for part in value if part not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown {unknown}; use {', '.join(DIMENSIONS)}")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def check_range(self) -> "ReportQuery":
        if self.end < self.start:
            raise ValueError("'to' is before 'from'")
        if (self.end - self.start).days >= MAX_DAYS:
            raise ValueError(f"at most {MAX_DAYS} days per report")
        return self


async def report(request: web.Request) -> web.Response:
    """Clicks, visitor counters, conversions, revenue, cost and the ratios, per group
    and in total."""
    query = ReportQuery.model_validate(first_wins(request.query.items()))
    rows = await fetch_report(
        request.config_dict[PG_POOL], query.start, query.end, query.group_by, query.campaign_id
    )
    counts = dict.fromkeys(COUNTERS, 0)
    conversions = 0
    # Revshare costs carry 14 decimal places; the default 28 digits could round their sums.
    with localcontext(prec=EXACT_DIGITS):
        revenue = cost = Decimal(0)
        out = []
        for row in rows:
            item: dict[str, Any] = {}
            for name in query.group_by:
                column = DIMENSIONS[name][0]
                item[column] = row[column]
                if f"{name}_name" in row:
                    item[f"{name}_name"] = row[f"{name}_name"]
            conversions += row["conversions"]
            revenue += row["revenue"]
            cost += row["cost"]
            for name in COUNTERS:
                counts[name] += row[name]
            item.update(derive(row["clicks"], row["conversions"], row["revenue"], row["cost"]))
            item.update((name, row[name]) for name in COUNTERS if name != "clicks")
            out.append(item)
        totals = derive(counts["clicks"], conversions, revenue, cost)
    totals.update((name, counts[name]) for name in COUNTERS if name != "clicks")
    return json_response(
        {
            "from": query.start,
            "to": query.end,
            "group_by": query.group_by,
            "rows": out,
            "totals": totals,
        }
    )
