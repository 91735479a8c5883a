"""The REST API (JSON) and its OpenAPI document at ``/api/openapi.json``.

Each route is declared once with :func:`endpoint`: its path, scope, summary, query parameters and
response schema; the same declaration registers the bottle route and writes its OpenAPI
operation, so the document cannot drift from the server (and schemathesis checks one against the
other: tests/test_server_api.py).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import bottle

from actors.server.app import Server, json_response

OPENAPI_VERSION = "3.0.3"
ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
         "required": ["error", "status"]}


@dataclass(frozen=True)
class Param:
    """A query (or path) parameter: its OpenAPI schema, and whether it is in the path."""

    name: str
    schema: dict
    description: str
    in_path: bool = False


@dataclass(frozen=True)
class Endpoint:
    path: str  # bottle's syntax: /api/members/<handle>
    scope: str
    summary: str
    params: tuple[Param, ...]
    response: dict  # the JSON schema of a 200 answer


def as_of(server: Server) -> datetime.date:
    """The ``as_of`` query parameter (a UTC day), default today."""
    text = server.str_param("as_of", max_len=10)
    if text is None:
        return datetime.datetime.fromtimestamp(server.clock(), datetime.timezone.utc).date()
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise bottle.HTTPError(400, "as_of must be a date like 2026-01-31") from None


AS_OF = Param("as_of", {"type": "string", "format": "date"}, "the day (UTC) the report is for; default today")


class Api:
    """The endpoints, registered on the bottle app and described in the OpenAPI document."""

    def __init__(self, app: bottle.Bottle, server: Server):
        self.app, self.server = app, server
        self.endpoints: list[Endpoint] = []

    def endpoint(self, path: str, scope: str, summary: str, response: dict, params=()):
        def register(fn):
            self.endpoints.append(Endpoint(path, scope, summary, tuple(params), response))

            def handler(**kwargs):
                self.server.need(scope)
                return json_response(fn(self.server, **kwargs))
            handler.__name__ = fn.__name__
            self.app.route(path, "GET", handler)
            return fn
        return register

    def openapi(self) -> dict:
        paths = {}
        for e in self.endpoints:
            path = e.path.replace("<", "{").replace(">", "}")
            errors = {"400": "bad parameter", "401": "no valid token", "403": f"the token lacks the {e.scope} scope"}
            if any(p.in_path for p in e.params):
                errors["404"] = "not found"
            paths[path] = {"get": {
                "summary": e.summary,
                "operationId": path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root",
                "security": [{"bearer": []}, {"cookie": []}],
                "x-scope": e.scope,
                "parameters": [{"name": p.name, "in": "path" if p.in_path else "query", "required": p.in_path,
                                "description": p.description, "schema": p.schema} for p in e.params],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": e.response}}},
                              **{code: {"description": what, "content": {"application/json": {"schema": ERROR}}}
                                 for code, what in errors.items()}},
            }}
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": "dctrl report server", "version": _version(),
                     "description": "Read-only reports of DCTRL's services network. GET and HEAD only. "
                                    "Scopes: public (aggregates), members (personal data), finance "
                                    "(invoices, payouts, income), events (the event log, health)."},
            "paths": paths,
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "dctrl server token add"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "dctrl_token"}}},
        }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dctrl")
    except PackageNotFoundError:
        return "0"


# -- the endpoints ---------------------------------------------------------------------------------

COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}


def install(app: bottle.Bottle, server: Server) -> Api:
    api = Api(app, server)

    @api.endpoint("/api/reports/members", "public", "members by status on a day (counts, no names)",
                  {"type": "object", "properties": {"as_of": {"type": "string"}, "total": {"type": "integer"},
                                                    "by_status": COUNTS},
                   "required": ["as_of", "total", "by_status"]}, params=[AS_OF])
    def report_members(server: Server):
        from actors.reporter.reports import counts, member_rows

        day = as_of(server)
        rows = server.read(member_rows, day)
        return {"as_of": day.isoformat(), "total": len(rows), "by_status": counts(rows)}

    document = api.openapi  # built at the first request: every endpoint is registered by then

    @app.route("/api/openapi.json", "GET")
    def openapi():
        return json_response(document())

    return api
