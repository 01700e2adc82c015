"""Admin API: create, list, get, update and archive the tracker's configuration."""

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar
from urllib.parse import quote

import asyncpg
from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tracker.domain.campaign import new_campaign_key
from tracker.domain.params import first_wins, load_json_object
from tracker.domain.rules import RuleError, compile_conditions
from tracker.domain.text import clean_text, dirt_in
from tracker.outbound.payloads import TEMPLATE, check_postback_config, masked_credentials
from tracker.store import admin as sql
from tracker.web.appkeys import CONFIG, PG_POOL, SETTINGS
from tracker.web.errors import ApiError, json_response, read_body
from tracker.web.responses import (
    AffiliateNetworkOut,
    CampaignOut,
    LanderOut,
    OfferOut,
    TrafficSourceOut,
    shaped,
)
from tracker.web.schemas import (
    AffiliateNetworkIn,
    Body,
    CampaignIn,
    LanderIn,
    OfferIn,
    RotateTokenIn,
    TrafficSourceIn,
)

INT64_MAX = 2**63 - 1


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body of an admin request; a 400 naming the field for text
    no column can store (NUL, invalid UTF-8)."""
    try:
        data = load_json_object(await read_body(request))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    details = [{"field": field, "message": reason} for field, reason in _dirty_strings(data, "")]
    if details:
        raise ApiError(400, "invalid text in request body", details)
    return data


def _dirty_strings(value: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        reason = dirt_in(value)
        return [(where or "body", reason)] if reason else []
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            reason = dirt_in(key)
            if reason:
                found.append((clean_text(path), f"name {reason}"))
            found.extend(_dirty_strings(item, clean_text(path)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.extend(_dirty_strings(item, f"{where}.{i}" if where else str(i)))
    return found


def _row_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not 0 < int(raw) <= INT64_MAX:
        raise ApiError(404, "not found")
    return int(raw)


def _whole_number(value: Any) -> Any:
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) < 20):
        raise ValueError("must be a whole number")
    return value


def _yes(value: Any) -> Any:
    return value.lower() in ("1", "true") if isinstance(value, str) else value


class ListQuery(BaseModel):
    """A page of rows, newest last; archived rows only when asked for."""

    model_config = ConfigDict(extra="ignore")

    include_archived: Annotated[bool, BeforeValidator(_yes)] = False
    limit: Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=1000)] = 100
    offset: Annotated[int, BeforeValidator(_whole_number), Field(ge=0, le=10**9)] = 0


def _with_etag(item: Any, tag: str, status: int = 200) -> web.Response:
    response = json_response(item, status)
    response.headers["ETag"] = tag
    return response


class ResourceViews:
    """CRUD handlers for one configuration table; subclasses add what differs."""

    path: ClassVar[str]
    table: ClassVar[str]
    label: ClassVar[str]
    model: ClassVar[type[Body]]
    # The answer's shape: every row presented passes through it.
    out: ClassVar[type[BaseModel]]
    # Body field holding the id of a row in another table that must exist and be active.
    references: ClassVar[dict[str, str]] = {}

    def columns(self, item: BaseModel) -> dict[str, Any]:
        """The table columns written from a validated body."""
        return item.model_dump()

    def creation_columns(self) -> dict[str, Any]:
        return {}

    async def referenced_ids(self, item: BaseModel) -> dict[str, tuple[str, list[int]]]:
        return {field: (table, [getattr(item, field)]) for field, table in self.references.items()}

    async def after_write(self, conn: sql.Conn, row_id: int, item: BaseModel) -> None:
        return None

    def merge_input(self, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """A PATCH body over the row's current values."""
        return {**current, **body}

    async def current_input(self, conn: sql.Conn, row: asyncpg.Record) -> dict[str, Any]:
        columns = set(row.keys())
        return {name: row[name] for name in self.model.model_fields if name in columns}

    async def present(
        self, request: web.Request, conn: sql.Conn, rows: list[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        return [dict(row) for row in rows]

    async def presented(
        self, request: web.Request, conn: sql.Conn, rows: list[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        return [shaped(self.out, item) for item in await self.present(request, conn, rows)]

    async def _check_references(self, conn: sql.Conn, item: BaseModel) -> None:
        details = []
        for field, (table, ids) in (await self.referenced_ids(item)).items():
            for missing in await sql.missing_ids(conn, table, ids):
                details.append({"field": field, "message": f"no active {table} row {missing}"})
        if details:
            raise ApiError(400, f"invalid {self.label}", details)

    async def _save(
        self,
        request: web.Request,
        row_id: int | None,
        body: dict[str, Any],
        if_match: str | None = None,
    ) -> tuple[Any, str]:
        """Create or update a row; the presented row and its ETag. An update merges `body`
        into the row read under a row lock, so concurrent updates of other fields survive,
        and applies only if `if_match` (when given) names the row's current version."""
        pool = request.config_dict[PG_POOL]
        async with pool.acquire() as conn, conn.transaction():
            if row_id is not None:
                row = await sql.get_row(conn, self.table, row_id, for_update=True)
                if row is None:
                    raise ApiError(404, f"{self.label} {row_id} not found")
                if if_match is not None and not sql.etag_matches(row, if_match):
                    raise ApiError(
                        412,
                        f"precondition failed: the {self.label} changed since it was read",
                        [{"field": "If-Match", "message": f"current ETag is {sql.etag(row)}"}],
                    )
                body = self.merge_input(await self.current_input(conn, row), body)
            item = self.model.model_validate(body)
            await self._check_references(conn, item)
            if row_id is None:
                values = {**self.columns(item), **self.creation_columns()}
                row = await sql.insert_row(conn, self.table, values)
            else:
                row = await sql.update_row(conn, self.table, row_id, self.columns(item))
            assert row is not None
            await self.after_write(conn, row["id"], item)
            [presented] = await self.presented(request, conn, [row])
        await request.config_dict[CONFIG].changed()
        return presented, sql.etag(row)

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        return _with_etag(*await self._save(request, None, body), status=201)

    async def update(self, request: web.Request) -> web.Response:
        """PATCH: the fields given change, the others keep their current values. With
        `If-Match: <ETag from a GET>`, only if nobody changed the row since (else 412)."""
        row_id = _row_id(request)
        body = await read_json_object(request)
        if_match = request.headers.get("If-Match")
        return _with_etag(*await self._save(request, row_id, body, if_match))

    async def get(self, request: web.Request) -> web.Response:
        row_id = _row_id(request)
        async with request.config_dict[PG_POOL].acquire() as conn:
            row = await sql.get_row(conn, self.table, row_id)
            if row is None:
                raise ApiError(404, f"{self.label} {row_id} not found")
            [presented] = await self.presented(request, conn, [row])
        return _with_etag(presented, sql.etag(row))

    async def list(self, request: web.Request) -> web.Response:
        query = ListQuery.model_validate(first_wins(request.query.items()))
        limit, offset = query.limit, query.offset
        async with request.config_dict[PG_POOL].acquire() as conn:
            rows = await sql.list_rows(conn, self.table, query.include_archived, limit, offset)
            items = await self.presented(request, conn, rows)
        return json_response({"items": items, "limit": limit, "offset": offset})

    async def archive(self, request: web.Request) -> web.Response:
        row_id = _row_id(request)
        return await self._write_row(
            request, row_id, lambda conn: sql.archive_row(conn, self.table, row_id)
        )

    async def _write_row(
        self,
        request: web.Request,
        row_id: int,
        write: Callable[[sql.Conn], Awaitable[asyncpg.Record | None]],
    ) -> web.Response:
        """Answer with the row `write` changed (404 when there is none), and announce
        the configuration change."""
        async with request.config_dict[PG_POOL].acquire() as conn:
            row = await write(conn)
            if row is None:
                raise ApiError(404, f"{self.label} {row_id} not found")
            [presented] = await self.presented(request, conn, [row])
        await request.config_dict[CONFIG].changed()
        return _with_etag(presented, sql.etag(row))

    def add_routes(self, app: web.Application) -> None:
        base = f"/{self.path}"
        app.router.add_post(base, self.create)
        app.router.add_get(base, self.list)
        app.router.add_get(base + "/{id}", self.get)
        app.router.add_patch(base + "/{id}", self.update)
        app.router.add_delete(base + "/{id}", self.archive)


def _problems(problems: list[tuple[str, str]], prefix: str) -> list[dict[str, str]]:
    return [{"field": f"{prefix}{field}", "message": message} for field, message in problems]


def _masked_secret(value: str | None) -> str | None:
    if value is None:
        return None
    return masked_credentials(TEMPLATE, {"secret": value})["secret"]


class TrafficSources(ResourceViews):
    """Traffic sources; their postback credentials and signing secret are never shown
    whole: the API shows `…` and the last characters, and a PATCH that sends back such
    a masked value keeps the stored one."""

    path = "traffic-sources"
    table = "traffic_sources"
    label = "traffic source"
    model = TrafficSourceIn
    out = TrafficSourceOut

    def merge_input(self, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        merged = super().merge_input(current, body)
        stored = current.get("postback_credentials") or {}
        given = body.get("postback_credentials")
        if isinstance(given, dict):
            merged["postback_credentials"] = {
                name: stored[name]
                if isinstance(value, str) and value.startswith("…") and name in stored
                else value
                for name, value in given.items()
            }
        secret = body.get("postback_signing_secret")
        if isinstance(secret, str) and secret.startswith("…"):
            merged["postback_signing_secret"] = current.get("postback_signing_secret")
        return merged

    async def _check_references(self, conn: sql.Conn, item: BaseModel) -> None:
        assert isinstance(item, TrafficSourceIn)
        await super()._check_references(conn, item)
        if item.postback_preset == TEMPLATE and item.postback_url is None:
            if item.postback_body is not None:
                raise ApiError(
                    400,
                    f"invalid {self.label}",
                    [{"field": "postback_url", "message": "a postback body needs a URL"}],
                )
            return  # no postback: nothing is sent back
        problems = check_postback_config(
            item.postback_preset,
            item.postback_method,
            item.postback_url,
            item.postback_body,
            item.postback_body_format,
            item.postback_credentials,
        )
        if problems:
            raise ApiError(400, f"invalid {self.label}", _problems(problems, "postback_"))

    async def present(
        self, request: web.Request, conn: sql.Conn, rows: list[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        items = []
        for row in rows:
            item = dict(row)
            item["postback_credentials"] = masked_credentials(
                row["postback_preset"], row["postback_credentials"] or {}
            )
            item["postback_signing_secret"] = _masked_secret(row["postback_signing_secret"])
            items.append(item)
        return items


class AffiliateNetworks(ResourceViews):
    path = "affiliate-networks"
    table = "affiliate_networks"
    label = "affiliate network"
    model = AffiliateNetworkIn
    out = AffiliateNetworkOut

    def creation_columns(self) -> dict[str, Any]:
        return {"postback_token": secrets.token_urlsafe(18)}

    async def rotate_token(self, request: web.Request) -> web.Response:
        """Issue a new postback token; the old one is accepted for `grace_seconds` more."""
        row_id = _row_id(request)
        body = await read_json_object(request) if await read_body(request) else {}
        grace = RotateTokenIn.model_validate(body).grace_seconds
        token = secrets.token_urlsafe(18)
        return await self._write_row(
            request, row_id, lambda conn: sql.rotate_postback_token(conn, row_id, token, grace)
        )

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_post(f"/{self.path}/{{id}}/rotate-token", self.rotate_token)

    async def present(
        self, request: web.Request, conn: sql.Conn, rows: list[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        base = request.config_dict[SETTINGS].base_url()
        items = []
        for row in rows:
            item = dict(row)
            item["postback_url"] = (
                f"{base}/postback?clickid={{clickid}}&payout={{payout}}&txid={{txid}}"
                f"&status={{status}}&token={quote(row['postback_token'], safe='')}"
            )
            items.append(item)
        return items


class Offers(ResourceViews):
    path = "offers"
    table = "offers"
    label = "offer"
    model = OfferIn
    out = OfferOut
    references: ClassVar[dict[str, str]] = {"affiliate_network_id": "affiliate_networks"}


class Landers(ResourceViews):
    path = "landers"
    table = "landers"
    label = "lander"
    model = LanderIn
    out = LanderOut


class Campaigns(ResourceViews):
    path = "campaigns"
    table = "campaigns"
    label = "campaign"
    model = CampaignIn
    out = CampaignOut
    references: ClassVar[dict[str, str]] = {"traffic_source_id": "traffic_sources"}

    def columns(self, item: BaseModel) -> dict[str, Any]:
        return item.model_dump(exclude={"offers", "landers"})

    def creation_columns(self) -> dict[str, Any]:
        return {"key": new_campaign_key()}

    async def _check_references(self, conn: sql.Conn, item: BaseModel) -> None:
        """Every rule compiles, and every offer and lander named (default path and rules)
        is active; one 400 naming each place (`rules.2.conditions.0.op`,
        `rules.0.offers.1.offer_id`, `landers.0.lander_id`)."""
        assert isinstance(item, CampaignIn)
        details = []
        for i, rule in enumerate(item.rules):
            try:
                compile_conditions([c.model_dump() for c in rule.conditions])
            except RuleError as exc:
                error = exc.within(f"rules.{i}")
                details.append({"field": error.place, "message": error.message})
        wanted: dict[str, list[tuple[str, int]]] = {"offers": [], "landers": []}
        paths = [("", item.offers, item.landers)]
        paths += [(f"rules.{i}.", r.offers, r.landers) for i, r in enumerate(item.rules)]
        for prefix, offers, landers in paths:
            for j, offer in enumerate(offers):
                wanted["offers"].append((f"{prefix}offers.{j}.offer_id", offer.offer_id))
            for j, lander in enumerate(landers):
                wanted["landers"].append((f"{prefix}landers.{j}.lander_id", lander.lander_id))
        for table, places in wanted.items():
            if not places:
                continue
            missing = set(await sql.missing_ids(conn, table, sorted({i for _, i in places})))
            for place, row_id in places:
                if row_id in missing:
                    details.append({"field": place, "message": f"no active {table} row {row_id}"})
        if item.postback_url is not None:
            problems = check_postback_config(
                TEMPLATE,
                item.postback_method or "GET",
                item.postback_url,
                item.postback_body,
                item.postback_body_format or "json",
                {},
            )
            details += _problems(problems, "postback_")
        elif item.postback_body is not None:
            details.append({"field": "postback_url", "message": "a postback body needs a URL"})
        try:
            await super()._check_references(conn, item)
        except ApiError as exc:
            details = (exc.details or []) + details
        if details:
            raise ApiError(400, f"invalid {self.label}", details)

    async def after_write(self, conn: sql.Conn, row_id: int, item: BaseModel) -> None:
        assert isinstance(item, CampaignIn)
        offers = [(o.offer_id, o.weight) for o in item.offers]
        await sql.replace_campaign_offers(conn, row_id, offers)
        landers = [(lander.lander_id, lander.weight) for lander in item.landers]
        await sql.replace_campaign_landers(conn, row_id, landers)

    async def current_input(self, conn: sql.Conn, row: asyncpg.Record) -> dict[str, Any]:
        current = await super().current_input(conn, row)
        current["offers"] = (await sql.fetch_campaign_offers(conn, [row["id"]]))[row["id"]]
        current["landers"] = (await sql.fetch_campaign_landers(conn, [row["id"]]))[row["id"]]
        return current

    async def present(
        self, request: web.Request, conn: sql.Conn, rows: list[asyncpg.Record]
    ) -> list[dict[str, Any]]:
        base = request.config_dict[SETTINGS].base_url()
        ids = [row["id"] for row in rows]
        offers = await sql.fetch_campaign_offers(conn, ids)
        landers = await sql.fetch_campaign_landers(conn, ids)
        items = []
        for row in rows:
            item = dict(row)
            item["offers"] = offers[row["id"]]
            item["landers"] = landers[row["id"]]
            item["click_url"] = f"{base}/c/{row['key']}"
            items.append(item)
        return items


RESOURCES: tuple[ResourceViews, ...] = (
    TrafficSources(),
    AffiliateNetworks(),
    Offers(),
    Landers(),
    Campaigns(),
)
