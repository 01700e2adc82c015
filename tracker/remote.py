"""Commands that talk to a running tracker over its HTTP API: campaigns, offers, traffic
sources, networks and landers; reports; a campaign's URLs; the postback log as it arrives.

They work against any tracker the API key opens (`--url`, `--api-key`, or `TRACKER_URL` and
`TRACKER_API_KEY`). An API error prints one line and exits with status 1.
"""

import asyncio
import csv
import io
import json
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tracker.client import ApiError, Client

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"
API = "API access"


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="a table, or JSON or CSV for scripts")
]


def _client(ctx: typer.Context) -> Client:
    url, api_key = ctx.obj or (DEFAULT_URL, None)
    return Client(url, api_key)


def _run(ctx: typer.Context, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run `work` against the tracker; an API error is one line on stderr and exit 1."""

    async def with_client() -> T:
        async with _client(ctx) as client:
            return await work(client)

    try:
        return asyncio.run(with_client())
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def print_rows(rows: list[dict[str, Any]], columns: list[str], fmt: Format) -> None:
    """Rows as a table in the terminal, or as JSON or CSV with every field."""
    if fmt is Format.json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if fmt is Format.csv:
        fields = list(dict.fromkeys(key for row in rows for key in row)) or columns
        out = io.StringIO()
        writer = csv.DictWriter(out, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in fields} for row in rows)
        typer.echo(out.getvalue(), nl=False)
        return
    table = Table(*columns, show_lines=False)
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console(width=200).print(table)


def print_item(item: dict[str, Any], fmt: Format) -> None:
    if fmt is not Format.table:
        print_rows([item], list(item), fmt)
        return
    table = Table("field", "value", show_header=False)
    for key, value in item.items():
        table.add_row(key, _cell(value))
    Console(width=200).print(table)


def _parse_sets(values: Iterable[str]) -> dict[str, Any]:
    """`--set field=value` pairs; a value that reads as JSON (a number, true, a list) is
    taken as such, any other as text."""
    body: dict[str, Any] = {}
    for pair in values:
        field, sep, raw = pair.partition("=")
        if not sep or not field:
            raise typer.BadParameter(f"{pair!r}: use field=value", param_hint="--set")
        try:
            body[field] = json.loads(raw)
        except ValueError:
            body[field] = raw
    return body


SetOption = Annotated[
    list[str],
    typer.Option("--set", help="any other field of the API, as field=value (JSON values allowed)"),
]


class Resource:
    """`list`, `show` and `create` for one admin resource."""

    def __init__(self, name: str, path: str, columns: list[str], what: str) -> None:
        self.path = f"/api/{path}"
        self.columns = columns
        self.app = typer.Typer(
            name=name, help=what, no_args_is_help=True, rich_markup_mode="markdown"
        )
        self.app.command("list")(self.list_command())
        self.app.command("show")(self.show_command())

    def list_command(self) -> Callable[..., None]:
        path, columns = self.path, self.columns

        def list_items(
            ctx: typer.Context,
            archived: Annotated[bool, typer.Option(help="include archived ones")] = False,
            fmt: FormatOption = Format.table,
        ) -> None:
            """List them."""
            params = {"include_archived": "true"} if archived else {}
            rows = _run(ctx, lambda c: c.all_items(path, **params))
            print_rows(rows, columns, fmt)

        return list_items

    def show_command(self) -> Callable[..., None]:
        path = self.path

        def show(
            ctx: typer.Context,
            item_id: Annotated[int, typer.Argument(metavar="ID")],
            fmt: FormatOption = Format.table,
        ) -> None:
            """Show one, with every field."""
            print_item(_run(ctx, lambda c: c.get(f"{path}/{item_id}")), fmt)

        return show

    def create(self, ctx: typer.Context, body: dict[str, Any], fmt: Format) -> None:
        item = _run(ctx, lambda c: c.call("POST", self.path, json=body))
        print_item(item, fmt)


campaigns = Resource(
    "campaigns",
    "campaigns",
    ["id", "key", "name", "traffic_source_id", "cost_model", "cost_value", "click_url"],
    "Campaigns: list, show, create.",
)
offers = Resource(
    "offers",
    "offers",
    ["id", "name", "affiliate_network_id", "payout", "currency", "url"],
    "Offers: list, show, create.",
)
sources = Resource(
    "sources",
    "traffic-sources",
    ["id", "name", "postback_preset", "postback_url"],
    "Traffic sources: list, show, create.",
)
networks = Resource(
    "networks",
    "affiliate-networks",
    ["id", "name", "duplicate_policy", "postback_url"],
    "Affiliate networks: list, show, create.",
)
landers = Resource("landers", "landers", ["id", "name", "url"], "Landers: list, show, create.")


@campaigns.app.command("create")
def create_campaign(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="the campaign's name")],
    source: Annotated[int, typer.Option(help="traffic source id")],
    offer: Annotated[list[str], typer.Option(help="offer id, or id:weight; repeat for a rotation")],
    lander: Annotated[
        list[str] | None, typer.Option(help="lander id, or id:weight; repeat for several")
    ] = None,
    cost_model: Annotated[str, typer.Option(help="none, cpc, cpm, cpa, revshare or auto")] = "none",
    cost_value: Annotated[str | None, typer.Option(help="the cost model's amount")] = None,
    sets: SetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    fmt: FormatOption = Format.table,
) -> None:
    """Create a campaign; prints it, with its click URL."""
    body: dict[str, Any] = {
        "name": name,
        "traffic_source_id": source,
        "offers": [_weighted(value, "offer") for value in offer],
        "landers": [_weighted(value, "lander") for value in lander or []],
        "cost_model": cost_model,
    }
    if cost_value is not None:
        body["cost_value"] = cost_value
    campaigns.create(ctx, {**body, **_parse_sets(sets)}, fmt)


def _weighted(value: str, what: str) -> dict[str, Any]:
    item_id, _, weight = value.partition(":")
    try:
        entry: dict[str, Any] = {f"{what}_id": int(item_id)}
        if weight:
            entry["weight"] = int(weight)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: use ID or ID:WEIGHT", param_hint=f"--{what}"
        ) from None
    return entry


@offers.app.command("create")
def create_offer(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="the offer's name")],
    url: Annotated[str, typer.Option(help="the offer URL, with macros such as {clickid}")],
    network: Annotated[int, typer.Option(help="affiliate network id")],
    payout: Annotated[str | None, typer.Option(help="default payout")] = None,
    currency: Annotated[str | None, typer.Option(help="ISO 4217 code of the payout")] = None,
    sets: SetOption = [],  # noqa: B006
    fmt: FormatOption = Format.table,
) -> None:
    """Create an offer."""
    body: dict[str, Any] = {"name": name, "url": url, "affiliate_network_id": network}
    if payout is not None:
        body["payout"] = payout
    if currency is not None:
        body["currency"] = currency
    offers.create(ctx, {**body, **_parse_sets(sets)}, fmt)


@sources.app.command("create")
def create_source(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="the traffic source's name")],
    postback_url: Annotated[
        str | None, typer.Option(help="where conversions are posted back, with macros")
    ] = None,
    sets: SetOption = [],  # noqa: B006
    fmt: FormatOption = Format.table,
) -> None:
    """Create a traffic source."""
    body: dict[str, Any] = {"name": name}
    if postback_url is not None:
        body["postback_url"] = postback_url
    sources.create(ctx, {**body, **_parse_sets(sets)}, fmt)


@networks.app.command("create")
def create_network(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="the affiliate network's name")],
    sets: SetOption = [],  # noqa: B006
    fmt: FormatOption = Format.table,
) -> None:
    """Create an affiliate network; prints it, with its postback URL."""
    networks.create(ctx, {"name": name, **_parse_sets(sets)}, fmt)


@landers.app.command("create")
def create_lander(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="the lander's name")],
    url: Annotated[str, typer.Option(help="the lander URL, with macros such as {clickid}")],
    sets: SetOption = [],  # noqa: B006
    fmt: FormatOption = Format.table,
) -> None:
    """Create a lander."""
    landers.create(ctx, {"name": name, "url": url, **_parse_sets(sets)}, fmt)


# Columns of a report in the terminal, after its dimensions.
REPORT_COLUMNS = ["clicks", "conversions", "revenue", "cost", "profit", "roi", "cr", "epc"]


def report(
    ctx: typer.Context,
    start: Annotated[str, typer.Option("--from", help="first day (or date-time)")],
    end: Annotated[str, typer.Option("--to", help="last day (or date-time, excluded)")],
    group_by: Annotated[str, typer.Option(help="up to 3 dimensions, comma-separated")] = (
        "campaign"
    ),
    campaign: Annotated[int | None, typer.Option(help="only this campaign id")] = None,
    tz: Annotated[str | None, typer.Option(help="an IANA time zone for days and hours")] = None,
    sort: Annotated[str | None, typer.Option(help="e.g. -profit")] = None,
    limit: Annotated[int | None, typer.Option(help="rows at most")] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """ROI by campaign, offer, sub id, country, day… (GET /api/reports), with totals."""
    params = {"from": start, "to": end, "group_by": group_by}
    for key, value in (("campaign_id", campaign), ("tz", tz), ("sort", sort), ("limit", limit)):
        if value is not None:
            params[key] = str(value)
    if fmt is Format.csv:
        params["format"] = "csv"
        typer.echo(_run(ctx, lambda c: c.get("/api/reports", **params)), nl=False)
        return
    answer = _run(ctx, lambda c: c.get("/api/reports", **params))
    if fmt is Format.json:
        typer.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    rows = answer["rows"]
    dimensions = [c for c in (rows[0] if rows else {}) if c not in answer.get("totals", {})]
    columns = dimensions + REPORT_COLUMNS
    source = answer.get("source") or {}
    caption = None
    if source.get("database") == "replica":
        lag = source.get("lag_seconds")
        caption = "read from the reports replica, " + (
            "its lag unknown" if lag is None else f"{lag:g} s behind the primary"
        )
    table = Table(*columns, title=f"{start} to {end}", caption=caption, show_footer=True)
    totals = answer.get("totals", {})
    for index, column in enumerate(columns):
        table.columns[index].footer = "total" if index == 0 else _cell(totals.get(column))
        if column in REPORT_COLUMNS:
            table.columns[index].justify = "right"
    for row in rows:
        table.add_row(*(_cell(row.get(column)) for column in columns))
    Console(width=200).print(table)


def urls(
    ctx: typer.Context,
    campaign: Annotated[
        str,
        typer.Argument(
            help="the campaign's id or key (a key that begins with '-' goes after `--`)"
        ),
    ],
) -> None:
    """The campaign's click URL, and the postback URL of each network its offers belong to,
    ready to paste into the traffic source and the networks."""

    async def collect(client: Client) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if campaign.isdigit():
            found = await client.get(f"/api/campaigns/{campaign}")
        else:
            every = await client.all_items("/api/campaigns", include_archived="true")
            matches = [c for c in every if c.get("key") == campaign]
            if not matches:
                raise ApiError(f"no campaign with id or key {campaign!r}")
            found = matches[0]
        network_ids: dict[int, None] = {}
        for offer_id in dict.fromkeys(_offer_ids(found)):
            offer = await client.get(f"/api/offers/{offer_id}")
            network_ids[offer["affiliate_network_id"]] = None
        nets = [await client.get(f"/api/affiliate-networks/{n}") for n in network_ids]
        return found, nets

    found, nets = _run(ctx, collect)
    typer.echo(f"click URL ({found['name']}):")
    typer.echo(f"  {found['click_url']}")
    for network in nets:
        typer.echo(f"postback URL for {network['name']}:")
        typer.echo(f"  {network['postback_url']}")


def _offer_ids(value: Any) -> Iterable[int]:
    """Every offer a campaign can send to: its own, and its rules'."""
    if isinstance(value, dict):
        if isinstance(value.get("offer_id"), int):
            yield value["offer_id"]
        for inner in value.values():
            yield from _offer_ids(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _offer_ids(inner)


postbacks = typer.Typer(
    name="postbacks", help="The postback log.", no_args_is_help=True, rich_markup_mode="markdown"
)
LOG_COLUMNS = ["id", "received_at", "result", "network_id", "click_id", "reason"]


@postbacks.command("tail")
def tail(
    ctx: typer.Context,
    network: Annotated[int | None, typer.Option(help="only this network id")] = None,
    result: Annotated[str | None, typer.Option(help="only this result, e.g. unmatched")] = None,
    last: Annotated[int, typer.Option(min=0, max=500, help="log rows shown first")] = 10,
    interval: Annotated[float, typer.Option(min=0.2, help="seconds between polls")] = 1.0,
    follow: Annotated[
        bool, typer.Option(help="keep printing new rows as they arrive (Ctrl-C stops)")
    ] = True,
) -> None:
    """Print the postback log as it arrives: one line per postback, oldest first."""
    params = {"limit": "500"}
    if network is not None:
        params["network_id"] = str(network)
    if result is not None:
        params["result"] = result

    def line(row: dict[str, Any]) -> str:
        parts = [_cell(row.get(column)) for column in LOG_COLUMNS]
        return "  ".join(part for part in parts if part)

    async def watch(client: Client) -> None:
        newest = (await client.get("/api/postbacks", **params))["items"]
        for row in reversed(newest[:last]):
            typer.echo(line(row))
        seen = max((row["id"] for row in newest), default=0)
        while follow:
            await asyncio.sleep(interval)
            rows = (await client.get("/api/postbacks", **params))["items"]
            fresh = [row for row in rows if row["id"] > seen]
            for row in reversed(fresh):
                typer.echo(line(row))
            seen = max([seen, *(row["id"] for row in fresh)])

    try:
        _run(ctx, watch)
    except KeyboardInterrupt:
        pass


def connection(
    ctx: typer.Context,
    url: Annotated[
        str,
        typer.Option(
            envvar=["TRACKER_URL", "TRACKER_PUBLIC_URL"],
            help="the tracker the API commands talk to",
            rich_help_panel=API,
        ),
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="TRACKER_API_KEY", help="its API key", rich_help_panel=API),
    ] = None,
) -> None:
    ctx.obj = (url, api_key)


def register(app: typer.Typer) -> None:
    """Add the API commands, and the options saying which tracker they talk to, to `app`."""
    app.callback()(connection)
    panel = "Talk to a running tracker"
    for resource in (campaigns, offers, sources, networks, landers):
        app.add_typer(resource.app, rich_help_panel=panel)
    app.command(rich_help_panel=panel)(report)
    app.command(rich_help_panel=panel)(urls)
    app.add_typer(postbacks, rich_help_panel=panel)
