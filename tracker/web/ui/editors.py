"""Create and edit forms for the configuration, saved through the admin API's own save
path, so the same validation answers and each error is shown beside its field."""

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
from aiohttp import web
from multidict import MultiDictProxy
from pydantic import ValidationError

from tracker.domain.money import format_money
from tracker.domain.validation import field_errors
from tracker.store import admin as sql
from tracker.web.admin import RESOURCES, ResourceViews, _dirty_strings
from tracker.web.appkeys import PG_POOL
from tracker.web.errors import ApiError
from tracker.web.ui.render import redirect, render

# Offer and lander rows shown beyond those a campaign has, for adding more.
SPARE_ROWS = 2


@dataclass(frozen=True, slots=True)
class Field:
    """One input. `kind`: text, textarea, int, money, select, ref (a row of `table`),
    checkbox, json, lines (one value a line), words (comma-separated), paths (offer
    or lander rows with weights). Left blank: `nullable` sends null, `required`
    sends it empty (for the API to refuse), others keep the API's default."""

    name: str
    label: str
    kind: str = "text"
    choices: tuple[str, ...] = ()
    table: str = ""
    required: bool = False
    nullable: bool = False
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Editor:
    slug: str  # /ui/{slug}
    title: str  # plural, for headings
    resource: ResourceViews
    fields: tuple[Field, ...]
    columns: tuple[str, ...]  # shown in the list


def _resource(path: str) -> ResourceViews:
    return next(r for r in RESOURCES if r.path == path)


NAME = Field("name", "Name", required=True)
EDITORS = {
    editor.slug: editor
    for editor in (
        Editor(
            "sources",
            "Traffic sources",
            _resource("traffic-sources"),
            (
                NAME,
                Field("external_id_param", "External id parameter"),
                Field("cost_param", "Cost parameter"),
                Field("max_click_cost", "Highest click cost accepted", "money"),
                Field(
                    "postback_preset",
                    "Postback kind",
                    "select",
                    ("template", "meta", "tiktok", "google_ads"),
                ),
                Field("postback_url", "Postback URL", nullable=True, hint="{clickid}, {payout}…"),
                Field("postback_method", "Postback method", "select", ("GET", "POST")),
                Field("postback_body", "Postback body", "textarea", nullable=True),
                Field("postback_body_format", "Body format", "select", ("json", "form")),
                Field("postback_statuses", "Statuses sent back", "words", hint="comma-separated"),
                Field("postback_share", "Share of payout sent (%)", "money", nullable=True),
                Field("postback_credentials", "Credentials (JSON object)", "json"),
                Field("postback_signing_secret", "Signing secret", nullable=True),
            ),
            ("name", "postback_preset", "postback_url"),
        ),
        Editor(
            "networks",
            "Affiliate networks",
            _resource("affiliate-networks"),
            (
                NAME,
                Field("status_map", "Status map (JSON object)", "json"),
                Field(
                    "duplicate_policy", "Duplicate policy", "select", ("txid", "ignore", "accept")
                ),
                Field("require_token", "Require the postback token", "checkbox"),
                Field("ip_allowlist", "IP allowlist", "lines", hint="one address or CIDR a line"),
                Field("signing_secret", "Signing secret", nullable=True),
                Field("allow_pixel", "Allow the conversion pixel", "checkbox"),
            ),
            ("name", "duplicate_policy", "require_token"),
        ),
        Editor(
            "offers",
            "Offers",
            _resource("offers"),
            (
                NAME,
                Field("url", "URL", required=True, hint="{clickid} is replaced"),
                Field(
                    "affiliate_network_id",
                    "Affiliate network",
                    "ref",
                    table="affiliate_networks",
                    required=True,
                ),
                Field("payout", "Payout", "money", nullable=True),
                Field("currency", "Currency"),
            ),
            ("name", "payout", "currency", "url"),
        ),
        Editor(
            "landers",
            "Landers",
            _resource("landers"),
            (NAME, Field("url", "URL", required=True)),
            ("name", "url"),
        ),
        Editor(
            "campaigns",
            "Campaigns",
            _resource("campaigns"),
            (
                NAME,
                Field(
                    "traffic_source_id",
                    "Traffic source",
                    "ref",
                    table="traffic_sources",
                    required=True,
                ),
                Field("offers", "Offers and weights", "paths", table="offers"),
                Field("landers", "Landers and weights", "paths", table="landers"),
                Field("rules", "Rules (JSON list)", "json"),
                Field(
                    "cost_model",
                    "Cost model",
                    "select",
                    ("none", "cpc", "cpm", "cpa", "revshare", "auto"),
                ),
                Field("cost_value", "Cost value", "money", nullable=True),
                Field("bot_action", "Bots go to", "select", ("offer", "url", "404")),
                Field("bot_url", "Bot URL", nullable=True),
                Field("attribution_window_days", "Attribution window (days)", "int"),
                Field("unique_window_hours", "Unique visitor window (hours)", "int"),
                Field("report_currency", "Report currency"),
                Field("timezone", "Time zone"),
                Field("postback_url", "Own postback URL", nullable=True),
                Field("postback_method", "Own postback method", "select", ("", "GET", "POST")),
            ),
            ("name", "cost_model", "cost_value", "bot_action"),
        ),
    )
}
ID_KEY = {"offers": "offer_id", "landers": "lander_id"}


def _editor(request: web.Request) -> Editor:
    editor = EDITORS.get(request.match_info["kind"])
    if editor is None:
        raise web.HTTPNotFound()
    return editor


def _row_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) == 0:
        raise web.HTTPNotFound()
    return int(raw)


def _shown(value: Any, kind: str) -> Any:
    """A stored value as the form shows it."""
    if value is None:
        return ""
    if kind == "checkbox":
        return bool(value)
    if kind == "json":
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if kind == "lines":
        return "\n".join(str(v) for v in value)
    if kind == "words":
        return ", ".join(str(v) for v in value)
    if isinstance(value, Decimal):
        return format_money(value)
    return str(value)


def _values_from_row(editor: Editor, row: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in editor.fields:
        if f.kind == "paths":
            key = ID_KEY[f.name]
            values[f.name] = [(str(p[key]), str(p["weight"])) for p in row.get(f.name) or []]
        else:
            values[f.name] = _shown(row.get(f.name), f.kind)
    return values


def _values_from_form(editor: Editor, form: MultiDictProxy[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in editor.fields:
        if f.kind == "checkbox":
            values[f.name] = f.name in form
        elif f.kind == "paths":
            ids = form.getall(f"{f.name}.id", [])
            weights = form.getall(f"{f.name}.weight", [])
            values[f.name] = [(str(i), str(w)) for i, w in zip(ids, weights, strict=False)]
        else:
            values[f.name] = str(form.get(f.name, ""))
    return values


def _body(editor: Editor, values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The API request body the form's values make, and the problems found on the way
    (a JSON field that does not parse)."""
    body: dict[str, Any] = {}
    problems = []
    for f in editor.fields:
        value = values[f.name]
        if f.kind == "checkbox":
            body[f.name] = bool(value)
            continue
        if f.kind == "paths":
            key = ID_KEY[f.name]
            rows = []
            for raw_id, weight in value:
                if not raw_id.strip():
                    continue
                item: dict[str, Any] = {key: _int_or_text(raw_id)}
                if weight.strip():
                    item["weight"] = _int_or_text(weight)
                rows.append(item)
            body[f.name] = rows
            continue
        text = value.strip() if f.kind != "textarea" else value
        if not text.strip():
            if f.kind in ("lines", "words"):
                body[f.name] = []  # cleared: an empty list, not the current one kept
            elif f.required:
                body[f.name] = None if f.kind == "ref" else ""
            elif f.nullable or (f.kind == "select" and f.choices[:1] == ("",)):
                body[f.name] = None
            continue
        if f.kind in ("int", "ref"):
            body[f.name] = _int_or_text(text)
        elif f.kind == "json":
            try:
                body[f.name] = json.loads(text)
            except ValueError as exc:
                problems.append({"field": f.name, "message": f"not valid JSON: {exc}"})
        elif f.kind == "lines":
            body[f.name] = [line.strip() for line in text.splitlines() if line.strip()]
        elif f.kind == "words":
            body[f.name] = [word.strip() for word in text.split(",") if word.strip()]
        else:
            body[f.name] = text
    return body, problems


def _int_or_text(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else text


def errors_by_field(
    editor: Editor, details: list[dict[str, str]]
) -> tuple[dict[str, list[str]], list[str]]:
    """Each problem under the form field it names (`offers.0.offer_id` under offers,
    `rules.2.conditions.0.op` under rules); the rest apart, for the top of the form."""
    by_field: dict[str, list[str]] = {}
    other = []
    names = [f.name for f in editor.fields]
    for detail in details:
        place = str(detail.get("field", ""))
        owner = next((n for n in names if place == n or place.startswith(n + ".")), None)
        if owner is None:
            other.append(f"{place}: {detail.get('message', '')}" if place else detail["message"])
            continue
        message = str(detail.get("message", ""))
        if place != owner:
            message = f"{place.removeprefix(owner + '.')}: {message}"
        by_field.setdefault(owner, []).append(message)
    return by_field, other


async def _choices(request: web.Request, editor: Editor) -> dict[str, list[tuple[int, str]]]:
    """The rows a reference or path field may name: active rows of its table."""
    tables = {f.table for f in editor.fields if f.table}
    choices = {}
    async with request.config_dict[PG_POOL].acquire() as conn:
        for table in tables:
            rows = await sql.list_rows(conn, table, False, 1000, 0)
            choices[table] = [(row["id"], row["name"]) for row in rows]
    return choices


async def _form_page(
    request: web.Request,
    editor: Editor,
    row_id: int | None,
    values: dict[str, Any],
    details: list[dict[str, str]],
    status: int = 200,
) -> web.Response:
    errors, other = errors_by_field(editor, details)
    for f in editor.fields:
        if f.kind == "paths":
            rows = list(values[f.name])
            values[f.name] = rows + [("", "")] * SPARE_ROWS
    return render(
        request,
        "form.html",
        {
            "title": f"{'Edit' if row_id else 'New'} {editor.title.lower().rstrip('s')}",
            "editor": editor,
            "row_id": row_id,
            "values": values,
            "errors": errors,
            "other_errors": other,
            "choices": await _choices(request, editor),
        },
        status,
    )


async def list_page(request: web.Request) -> web.Response:
    editor = _editor(request)
    resource = editor.resource
    async with request.config_dict[PG_POOL].acquire() as conn:
        rows = await sql.list_rows(conn, resource.table, False, 1000, 0)
        items = await resource.present(request, conn, rows)
    return render(
        request,
        "list.html",
        {
            "title": editor.title,
            "editor": editor,
            "items": items,
            "saved": request.query.get("saved", ""),
        },
    )


async def new_form(request: web.Request) -> web.Response:
    editor = _editor(request)
    fields = editor.resource.model.model_fields
    defaults = {
        name: info.get_default(call_default_factory=True)
        for name, info in fields.items()
        if not info.is_required()
    }
    values = _values_from_row(editor, defaults)
    return await _form_page(request, editor, None, values, [])


async def edit_form(request: web.Request) -> web.Response:
    editor = _editor(request)
    row_id = _row_id(request)
    async with request.config_dict[PG_POOL].acquire() as conn:
        row = await sql.get_row(conn, editor.resource.table, row_id)
        if row is None:
            raise web.HTTPNotFound()
        [item] = await editor.resource.present(request, conn, [row])
    return await _form_page(request, editor, row_id, _values_from_row(editor, item), [])


async def save(request: web.Request) -> web.Response:
    """Create (no id) or update a row from the form; on a refusal, the form again with
    each of the API's messages beside the field it names."""
    editor = _editor(request)
    row_id = _row_id(request) if "id" in request.match_info else None
    form = await request.post()
    values = _values_from_form(editor, form)
    body, problems = _body(editor, values)
    # Text no column can store (NUL, lone surrogates), refused as the API refuses it.
    problems += [{"field": f, "message": m} for f, m in _dirty_strings(body, "")]
    if not problems:
        try:
            saved, _ = await editor.resource._save(request, row_id, body)
        except ApiError as exc:
            if exc.status == 404:
                raise
            problems = exc.details or [{"field": "", "message": exc.error}]
        except ValidationError as exc:
            problems = field_errors(exc)
        except asyncpg.DataError:
            problems = [{"field": "", "message": "a value is out of range or malformed"}]
        else:
            return redirect(f"/ui/{editor.slug}?saved={saved['id']}")
    return await _form_page(request, editor, row_id, values, problems, status=400)
