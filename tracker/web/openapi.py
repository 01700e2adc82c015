"""The API document (OpenAPI 3.1) at `/api/openapi.json` and its page at `/api/docs`.

Each route is registered with an `Op` (routes.py) naming the pydantic models that
validate its input and shape its answer; the document is built from those models the
first time it is asked for, then served from memory. The page's assets come from the
installed `swagger-ui-py` package: nothing is fetched from another host.
"""

import copy
import importlib.util
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from tracker.web.responses import ErrorOut

JSON = "application/json"
REF = "#/components/schemas/{model}"
DOCUMENT_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
ASSETS_PATH = "/api/docs/assets"
# The files of the page, of those the package ships.
PAGE_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")

ERRORS = {
    400: "Invalid input: `error` says what, `details` names each field and why",
    401: "Missing or wrong API key",
    403: "The postback failed its network's token, address or signature check",
    404: "Not found",
    408: "The request body did not arrive in time",
    409: "Conflict with the current state",
    412: "`If-Match` names an older version of the row",
    413: "Request body too large",
    414: "Request URL too long",
    415: "Unsupported Content-Type",
    429: "Too many failures from this address: retry after `Retry-After` seconds",
    503: "Storage unavailable: retry later",
    504: "The report took too long: narrow it",
}


TEXT = {"type": "string"}
# A row id in a path: other text is a 404.
PATH_SCHEMAS = {"id": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}


@dataclass(frozen=True, slots=True)
class Answer:
    """A documented answer: a JSON body shaped by `model`, or another `media` type."""

    description: str
    model: type[BaseModel] | None = None
    media: str | None = JSON
    schema: dict[str, Any] | None = None
    headers: tuple[str, ...] = ()
    # Operations (by id) whose `id` path parameter is this answer's `id`.
    links: tuple[str, ...] = ()
    # Other media types the same answer may come in (a report as CSV).
    also: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclass(frozen=True, slots=True)
class Op:
    """What the API document says of one operation."""

    summary: str
    tag: str
    answers: dict[int, Answer]
    errors: tuple[int, ...] = ()
    description: str = ""
    query: type[BaseModel] | None = None
    # The query's fields may come in the body instead (a postback's POST): none required.
    query_optional: bool = False
    # Query parameters the handler reads by hand, as OpenAPI parameter objects.
    parameters: tuple[dict[str, Any], ...] = ()
    body: type[BaseModel] | None = None
    body_media: tuple[str, ...] = (JSON,)
    body_schema: dict[str, Any] | None = None
    body_required: bool = True
    # The body is a PATCH of `body`: every field optional.
    partial: bool = False
    bearer: bool = False
    headers: tuple[dict[str, Any], ...] = ()
    # Else made from the method and path.
    operation_id: str | None = None


Method = Literal["GET", "HEAD", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True, slots=True)
class Documented:
    method: Method
    path: str
    op: Op


@dataclass
class _Schemas:
    """Collects every model the operations use, then renders them once."""

    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = field(default_factory=dict)
    # Models also wanted as PATCH bodies (kept in order: the document is the same each time).
    partial: dict[type[BaseModel], None] = field(default_factory=dict)
    # Definitions nested in query models.
    extra_defs: dict[str, Any] = field(default_factory=dict)

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        self.wanted[(model, mode)] = None
        return {"$ref": f"__{id(model)}_{mode}__"}

    def render(self) -> tuple[dict[str, str], dict[str, Any]]:
        keys = list(self.wanted)
        refs, top = models_json_schema(keys, ref_template=REF)
        names = {f"__{id(model)}_{mode}__": ref["$ref"] for (model, mode), ref in refs.items()}
        components: dict[str, Any] = top.get("$defs", {})
        for model in self.partial:
            name = names[f"__{id(model)}_validation__"].rpartition("/")[2]
            patch = copy.deepcopy(components[name])
            patch.pop("required", None)
            patch["title"] = f"{patch.get('title', name)} (changes)"
            components[f"{name}Patch"] = patch
            names[f"__{id(model)}_patch__"] = REF.format(model=f"{name}Patch")
        return names, components


def _query_parameters(model: type[BaseModel], schemas: _Schemas) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation", ref_template=REF)
    schemas.extra_defs.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _content(answer: Answer, schemas: _Schemas) -> dict[str, Any] | None:
    if answer.media is None:
        return None
    if answer.model is not None:
        schema = schemas.ref(answer.model, "serialization")
    else:
        schema = answer.schema or {}
    return {answer.media: {"schema": schema}, **{m: {"schema": s} for m, s in answer.also}}


def _operation(documented: Documented, schemas: _Schemas) -> dict[str, Any]:
    op = documented.op
    operation: dict[str, Any] = {
        "operationId": op.operation_id
        or re.sub(r"[^A-Za-z0-9]+", "_", f"{documented.method} {documented.path}")
        .strip("_")
        .lower(),
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.description:
        operation["description"] = op.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS.get(name, TEXT)}
        for name in re.findall(r"{(\w+)}", documented.path)
    ]
    if op.query is not None:
        in_path = {p["name"] for p in parameters}
        # A value the path carries is not read from the query (a postback's token).
        parameters += [
            {**p, "required": p["required"] and not op.query_optional}
            for p in _query_parameters(op.query, schemas)
            if p["name"] not in in_path
        ]
    parameters += [copy.deepcopy(p) for p in (*op.parameters, *op.headers)]
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None or op.body_schema is not None:
        if op.body is not None:
            if op.partial:
                schemas.ref(op.body, "validation")
                schemas.partial[op.body] = None
                body_schema = {"$ref": f"__{id(op.body)}_patch__"}
            else:
                body_schema = schemas.ref(op.body, "validation")
        else:
            body_schema = op.body_schema or {}
        operation["requestBody"] = {
            "required": op.body_required,
            "content": {media: {"schema": body_schema} for media in op.body_media},
        }
    responses: dict[str, Any] = {}
    for status, answer in op.answers.items():
        response: dict[str, Any] = {"description": answer.description}
        content = _content(answer, schemas)
        if content is not None:
            response["content"] = content
        if answer.links:
            response["links"] = {
                target: {"operationId": target, "parameters": {"id": "$response.body#/id"}}
                for target in answer.links
            }
        if answer.headers:
            response["headers"] = {name: {"schema": {"type": "string"}} for name in answer.headers}
        responses[str(status)] = response
    errors = set(op.errors) | {414}
    if op.bearer:
        errors |= {401, 429}
    for status in sorted(errors - set(op.answers)):
        error: dict[str, Any] = {
            "description": ERRORS[status],
            "content": {JSON: {"schema": schemas.ref(ErrorOut, "serialization")}},
        }
        if status == 429:
            error["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        responses[str(status)] = error
    operation["responses"] = responses
    if op.bearer:
        operation["security"] = [{"bearer": []}]
    return operation


def _resolve(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref in names:
            return {**value, "$ref": names[ref]}
        return {key: _resolve(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, names) for item in value]
    return value


API_DESCRIPTION = """\
Server-to-server postback conversion tracker.

* Clicks: `GET /c/{campaign_key}` records a click and redirects (302) to the lander or
  offer; a lander's call to action goes through `GET /lp/click`.
* Conversions: networks call `GET|POST /postback` (or `/postback/{token}`); browsers
  can use the pixel `/px.gif` or `/px.js`.
* Everything under `/api` (except this document and its page) needs
  `Authorization: Bearer <TRACKER_API_KEY>`.
* Money is a decimal string everywhere (`"3.00"`), never a JSON number.
* Errors are `{"error": "...", "details": [{"field": ..., "message": ...}]}`.
"""


def build_document(operations: Iterable[Documented], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`."""
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for documented in operations:
        path = paths.setdefault(documented.path, {})
        path[documented.method.lower()] = _operation(documented, schemas)
    names, components = schemas.render()
    components.update(schemas.extra_defs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tracker", "version": version, "description": API_DESCRIPTION},
        "servers": [{"url": "/"}],
        "paths": _resolve(paths, names),
        "components": {
            "schemas": _resolve(components, names),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key (TRACKER_API_KEY)",
                }
            },
        },
    }


def assets_dir() -> Path:
    """The Swagger UI files of the installed `swagger-ui-py` package (not imported: only
    its files are used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tracker API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/start.js"></script>
</body>
</html>
"""
START_SCRIPT = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: "{DOCUMENT_PATH}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
    // Swagger UI's default would show a badge fetched from a public validator.
    validatorUrl: null
  }});
}});
"""
# The page runs only its own scripts, and talks only to this tracker.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:"
)


def document_routes(
    app: web.Application, operations: Callable[[], Sequence[Documented]], version: str
) -> None:
    """Serve the document and its page on `app`, outside the API key: they hold no
    secret, and the page must be able to load the document before the key is given."""
    built: list[bytes] = []

    async def openapi_json(request: web.Request) -> web.Response:
        if not built:
            built.append(orjson.dumps(build_document(operations(), version)))
        return web.Response(body=built[0], content_type=JSON)

    async def docs_page(request: web.Request) -> web.Response:
        response = web.Response(text=PAGE, content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = PAGE_POLICY
        return response

    async def start_script(request: web.Request) -> web.Response:
        return web.Response(text=START_SCRIPT, content_type="text/javascript", charset="utf-8")

    app.router.add_get(DOCUMENT_PATH, openapi_json)
    app.router.add_get(DOCS_PATH, docs_page)
    app.router.add_get(f"{DOCS_PATH}/start.js", start_script)
    app.router.add_static(ASSETS_PATH, assets_dir(), append_version=False)
