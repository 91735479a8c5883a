"""The REST API (JSON) and its OpenAPI document at ``/api/openapi.json``.

Each route is declared once with :func:`endpoint`: its path, scope, summary, query parameters and
response schema; the same declaration registers the bottle route and writes its OpenAPI
operation, so the document cannot drift from the server (and schemathesis checks one against the
other: tests/test_server_api.py).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import bottle

from actors.server.app import Server, json_response

OPENAPI_VERSION = "3.0.3"
ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
         "required": ["error", "status"]}
# JSON Schema pieces for the answers (OpenAPI 3.0: ``nullable`` for None)
INT = {"type": "integer"}
NINT = {"type": "integer", "nullable": True}
STR = {"type": "string"}
NSTR = {"type": "string", "nullable": True}
BOOL = {"type": "boolean"}
ANY: dict = {}


def obj(props: dict, optional=()) -> dict:
    """An object with these properties, all required but ``optional``."""
    return {"type": "object", "properties": props, "required": [k for k in props if k not in optional]}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


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


DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def as_of(server: Server) -> datetime.date:
    """The ``as_of`` query parameter (a UTC day), default today."""
    text = server.str_param("as_of", max_len=10)
    if text is None:
        return datetime.datetime.fromtimestamp(server.clock(), datetime.timezone.utc).date()
    try:
        if not DATE_RE.fullmatch(text):  # (fromisoformat takes 20260131 too: not an OpenAPI date)
            raise ValueError(text)
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise bottle.HTTPError(400, "as_of must be a date like 2026-01-31") from None


AS_OF = Param("as_of", {"type": "string", "format": "date"}, "the day (UTC) the report is for; default today")


class Api:
    """The endpoints, registered on the bottle app and described in the OpenAPI document."""

    def __init__(self, app: bottle.Bottle, server: Server):
        self.app, self.server = app, server
        self.endpoints: list[Endpoint] = []

    def endpoint(self, path: str, scope: str, summary: str, response: dict, params=(), recent_s: float = 0):
        """``recent_s``: the answer (the same for every token with ``scope``) may be that many
        seconds old: asked again within them, it is not computed again (:class:`Recent`)."""
        def register(fn):
            self.endpoints.append(Endpoint(path, scope, summary, tuple(params), response))

            query = tuple(p.name for p in params if not p.in_path)

            def handler(**kwargs):
                self.server.need(scope)
                for name in query:  # (the pages' forms may send empty fields; the API's callers do not)
                    if bottle.request.query.get(name) == "":
                        raise bottle.HTTPError(400, f"{name} is empty: give a value or leave it out")
                if not recent_s:
                    return json_response(fn(self.server, **kwargs))
                key = (bottle.request.path, bottle.request.query_string)
                body = self.server.recent(key, recent_s, lambda: json_response(fn(self.server, **kwargs)))
                bottle.response.content_type = "application/json"
                return body
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
            errors["503"] = "not ready: a table is missing (an actor has not started once on this database)"
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
HANDLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # (actors/member_data/models.py HANDLE_RE; machines' too)
NAME_SCHEMA = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"}
MAX_ID = 2**62  # database ids: anything larger is no row (and would overflow a BIGINT)
SCAN_MAX = 100_000  # records /api/events looks at in one request at most (then more: true)


def limit_param(server: Server, default: int = 100) -> int:
    """``limit``: 1 to ``[server] page_max`` (500), default 100; more is 400, not a silent cut."""
    page_max = int(server.config.get("page_max", 500))
    return server.int_param("limit", min(default, page_max), 1, page_max)


def path_id(text: str, what: str) -> int:
    """A row id from the path: digits only, 1..2^62; anything else is no such row (404)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 0 < int(text) <= MAX_ID):
        raise bottle.HTTPError(404, f"no such {what}")  # (the input is never echoed)
    return int(text)


def choice_param(server: Server, name: str, choices) -> str | None:
    value = server.str_param(name, max_len=32)
    if value is not None and value not in choices:
        raise bottle.HTTPError(400, f"{name} must be one of {', '.join(choices)}")
    return value


def time_param(server: Server, name: str) -> float | None:
    from actors.server.events import parse_time

    text = server.str_param(name, max_len=40)
    if text is None:
        return None
    try:
        return parse_time(text, server.clock())
    except (ValueError, OverflowError, OSError):
        raise bottle.HTTPError(400, f"{name}: unix seconds, an ISO 8601 time, or 15m/2h/1d ago") from None


def _day_iso(server: Server) -> str:
    return as_of(server).isoformat()


def limit_doc(page_max: int) -> Param:
    return Param("limit", {"type": "integer", "minimum": 1, "maximum": page_max},
                 f"rows in a page: 1 to [server] page_max ({page_max}), default {min(100, page_max)}")
BEFORE = Param("before", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, "the next page: ids below this (the last page's "
                                                            "next_before)")

# -- schemas of the answers --

INCOME_MONTH = obj({"month": STR, "total_sats": INT, "total_cents": INT,
                    "dues": {"type": "object", "additionalProperties": obj({"sats": INT, "cents": INT})},
                    "sales": array(obj({"machine": STR, "product": STR, "sats": INT, "cents": INT}))})
ACTIVITY_MONTH = obj({"month": STR, "end": STR, "active": INT, "joins": INT, "leaves": INT, "retention": NSTR,
                      "retention_permille": NINT})
STATUS_FIELDS = {"status": NSTR, "paid_through": NSTR, "balance_cents": NINT}
MEMBER_ROW = obj({"handle": STR, "plan": NSTR, "joined": STR, "left": NSTR, "groups": array(STR),
                  "forgotten": BOOL, **STATUS_FIELDS})
FACT = obj({"id": INT, "handle": STR, "kind": STR, "on": STR, "plan": NSTR, "group": NSTR, "detail": NSTR,
            "created": INT})
MEMBER_PAYMENT = obj({"id": INT, "handle": STR, "on": STR, "method": STR, "cents": INT, "note": NSTR,
                      "txid_vout": NSTR, "created": INT})
ADJUSTMENT = obj({"id": INT, "handle": STR, "on": STR, "cents": INT, "note": NSTR, "reverses": NINT, "created": INT})
DUES_ADDRESS = obj({"index": INT, "address": STR, "issued_at": INT, "watched": BOOL, "uri": STR})
CHAIN_PAYMENT = obj({"txid_vout": STR, "handle": NSTR, "address": STR, "sats": INT, "state": STR,
                     "confirmations": INT, "first_seen": INT, "payment": NINT, "reversal": NINT})
DUES = {"type": "object", "nullable": True, "properties": {
    "status": NSTR, "paid_through": NSTR, "balance_cents": NINT, "next_charge": NSTR, "next_charge_cents": NINT,
    "charged_cents": INT, "credited_cents": INT, "error": STR}, "required": ["status"]}
MEMBER = obj({"handle": STR, "name": NSTR, "email": NSTR, "joined": STR, "created": INT, "forgotten": NINT,
              "mail_opt_out": array(STR), "plan": NSTR, "left": NSTR, "groups": array(STR), "facts": array(FACT),
              "payments": array(MEMBER_PAYMENT), "adjustments": array(ADJUSTMENT),
              "dues_addresses": array(DUES_ADDRESS), "dues_address": NSTR, "chain_payments": array(CHAIN_PAYMENT),
              "dues": DUES})
INVOICE_FIELDS = {"invoice": INT, "mode": STR, "machine": STR, "slot": INT, "product": STR, "price_cents": INT,
                  "items": INT, "cad_per_btc": NSTR, "due_sats": NINT, "tolerance_sats": INT, "zero_conf": BOOL,
                  "confirmations": INT, "address": STR, "state": STR, "reason": NSTR, "created": INT, "expires": INT,
                  "paid_at": NINT, "closed_at": NINT, "received_sats": INT, "late_sats": INT, "credit_sats": INT,
                  "lost_sats": INT, "vended": INT, "refund_sats": INT}
INVOICE = obj({**INVOICE_FIELDS,
               "payments": array(obj({"txid": STR, "vout": INT, "sats": INT, "state": STR, "confirmations": INT,
                                      "late": BOOL, "counted": BOOL, "first_seen": INT})),
               "vends": array(obj({"id": STR, "item": INT, "state": STR, "attempts": INT, "created": INT,
                                   "expires": INT, "acked_at": NINT, "reason": NSTR, "pulsed_ms": NINT}))})
PAYOUT_FIELDS = {"id": INT, "kind": STR, "state": STR, "state_reason": NSTR, "destination": STR, "sats": INT,
                 "cad_cents": NINT, "rate": NSTR, "rate_as_of": NINT, "reason": STR, "invoice": NSTR,
                 "requested_by": STR, "requested_at": INT, "expires_at": INT, "updated_at": INT, "txid": NSTR,
                 "inputs": array(STR), "fee": NINT, "vsize": NINT, "change_sats": NINT, "replaces": NINT}
PAYOUT_ROW = obj({**PAYOUT_FIELDS, "approvals": INT, "signatures": INT})
PAYOUT = obj({**PAYOUT_FIELDS,
              "approvals": array(obj({"identity": STR, "decision": STR, "at": INT})),
              "signatures": array(obj({"fingerprint": STR, "identity": STR, "at": INT})),
              "history": array(obj({"state": STR, "at": INT, "by": STR, "reason": NSTR}))})
SLOT = obj({"slot": INT, "product": STR, "price_cents": INT, "stock": NINT, "stock_left": NINT, "updated": INT,
            "sticker_address": NSTR})
MACHINE = obj({"name": STR, "location": NSTR, "created": INT, "slots": array(SLOT)})
EVENT = obj({"log_seq": INT, "logged": INT, "topic": NSTR, "sender": NSTR, "boot": NINT, "seq": NINT, "id": NSTR,
             "ts": NINT, "verdict": STR, "code": NSTR, "reason": NSTR, "body": ANY})
HEALTH_ROW = obj({"name": STR, "role": NSTR, "status": STR, "expected": BOOL, "last_seen": {"type": "number",
                                                                                             "nullable": True},
                  "age_s": {"type": "number", "nullable": True},
                  # with the events scope:
                  "reported": NSTR, "version": NSTR, "pid": NINT, "uptime": NINT, "interval": NINT,
                  "detail": NSTR, "counters": COUNTS},
                 optional=("reported", "version", "pid", "uptime", "interval", "detail", "counters"))


def _machine(database, m: dict) -> dict:
    """A machine with its slots: product, price, stock and what is left (no relay wiring)."""
    from actors.business_data.queries import slots, stock_left

    counted = database.table_exists("sales_vend")
    out = []
    for s in slots(database, m["name"]):
        left = stock_left(database, m["name"], s["slot"]) if counted else s["stock"]
        out.append({"slot": s["slot"], "product": s["product"], "price_cents": s["price_cents"],
                    "stock": s["stock"], "stock_left": left, "updated": s["updated"],
                    "sticker_address": s["sticker_address"]})
    return {"name": m["name"], "location": m["location"], "created": m["created"], "slots": out}


def _members_page(database, day, after: str | None, limit: int) -> list[dict]:
    from actors.member_data.queries import members
    from actors.reporter.reports import member_rows

    rows = [m for m in members(database, day.isoformat()) if after is None or m["handle"] > after][:limit]
    status = {r["handle"]: r for r in member_rows(database, day)} if rows else {}
    for m in rows:
        s = status.get(m["handle"], {})
        m.update(status=s.get("status"), paid_through=s.get("paid_through"), balance_cents=s.get("balance_cents"))
    return rows


def _member(database, handle: str, day) -> dict | None:
    from actors.member_data.queries import member
    from actors.reporter.reports import member_report

    found = member(database, handle, day.isoformat())
    if found is None:
        return None
    found.pop("dues_uri", None)  # (the address's URI without an amount: the address says it)
    for p in found["payments"] + found["adjustments"]:
        p.pop("cad", None)  # money as integer cents
    found["chain_payments"] = [{k: c[k] for k in ("txid_vout", "handle", "address", "sats", "state",
                                                  "confirmations", "first_seen", "payment", "reversal")}
                               for c in found["chain_payments"]]
    dues = member_report(database, handle, day)
    if dues is not None:
        dues = {k: v for k, v in dues.items() if k not in ("handle", "as_of", "current_period", "first_unpaid")}
    found["dues"] = dues
    return found


REPORTS_RECENT_S = 1.0  # the public reports may be a second old (many clients, one computation)


def install(app: bottle.Bottle, server: Server) -> Api:
    api = Api(app, server)
    LIMIT = limit_doc(int(server.config.get("page_max", 500)))  # noqa: N806 (as the other Params)

    @api.endpoint("/api/reports/members", "public", "members by status on a day (counts, no names)",
                  {"type": "object", "properties": {"as_of": {"type": "string"}, "total": {"type": "integer"},
                                                    "by_status": COUNTS},
                   "required": ["as_of", "total", "by_status"]}, params=[AS_OF], recent_s=REPORTS_RECENT_S)
    def report_members(server: Server):
        from actors.reporter.reports import member_counts

        day = as_of(server)
        by_status = server.read(member_counts, day)
        return {"as_of": day.isoformat(), "total": sum(by_status.values()), "by_status": by_status}

    @api.endpoint("/api/reports/income", "public",
                  "income per month up to a day: totals, dues by method and sales by machine and product "
                  "(sats and CAD cents; aggregates, no names)",
                  obj({"as_of": STR, "months": array(INCOME_MONTH)}), params=[AS_OF], recent_s=REPORTS_RECENT_S)
    def report_income(server: Server):
        from actors.reporter.reports import income_rows

        day = as_of(server)
        return {"as_of": day.isoformat(), "months": server.read(income_rows, day)}

    @api.endpoint("/api/reports/activity", "public",
                  "members active, joins, leaves and retention per month (counts, no names)",
                  obj({"as_of": STR, "months": array(ACTIVITY_MONTH)}),
                  params=[AS_OF, Param("months", {"type": "integer", "minimum": 1, "maximum": 120},
                                       "how many months up to as_of's (default 12)")],
                  recent_s=REPORTS_RECENT_S)
    def report_activity(server: Server):
        from actors.reporter.reports import activity_json, activity_rows

        day = as_of(server)
        months = server.int_param("months", 12, 1, 120)
        return {"as_of": day.isoformat(), "months": activity_json(server.read(activity_rows, day, months))}

    @api.endpoint("/api/members", "members", "members by handle, with their dues status on a day (no name or email)",
                  obj({"as_of": STR, "members": array(MEMBER_ROW), "next_after": NSTR}),
                  params=[AS_OF, LIMIT, Param("after", {"type": "string", "maxLength": 32},
                                              "the next page: handles after this (the last page's next_after)")])
    def members_list(server: Server):
        day = as_of(server)
        limit = limit_param(server)
        after = server.str_param("after", max_len=32)
        rows = server.read(_members_page, day, after, limit)
        return {"as_of": day.isoformat(), "members": rows,
                "next_after": rows[-1]["handle"] if len(rows) == limit else None}

    @api.endpoint("/api/members/<handle>", "members",
                  "one member: name, email, plan, groups, facts, payments, dues addresses and status",
                  MEMBER, params=[Param("handle", NAME_SCHEMA, "the member's handle", in_path=True), AS_OF])
    def member_one(server: Server, handle: str):
        day = as_of(server)
        found = server.read(_member, handle, day) if HANDLE_RE.fullmatch(handle) else None
        if found is None:
            raise bottle.HTTPError(404, "no such member")
        return found

    @api.endpoint("/api/invoices", "finance", "sales invoices, newest first",
                  obj({"invoices": array(obj(INVOICE_FIELDS)), "next_before": NINT}),
                  params=[LIMIT, BEFORE, Param("state", {"type": "string", "enum": list(INVOICE_STATES)},
                                               "only invoices in this state")])
    def invoices_list(server: Server):
        from actors.business_mgr.queries import invoices

        limit = limit_param(server)
        before = server.int_param("before", None, 1, MAX_ID)
        state = choice_param(server, "state", INVOICE_STATES)
        rows = server.read(invoices, state=state, limit=limit, before=before)
        return {"invoices": rows, "next_before": rows[-1]["invoice"] if len(rows) == limit else None}

    @api.endpoint("/api/invoices/<number>", "finance", "one invoice with its payments and vend commands", INVOICE,
                  params=[Param("number", {"type": "integer", "minimum": 1}, "the invoice's number", in_path=True)])
    def invoice_one(server: Server, number: str):
        from actors.business_mgr.queries import invoice

        found = server.read(invoice, path_id(number, "invoice"))
        if found is None:
            raise bottle.HTTPError(404, "no such invoice")
        return found

    @api.endpoint("/api/payouts", "finance", "payouts, newest first, with how many approvals and signatures",
                  obj({"payouts": array(PAYOUT_ROW), "next_before": NINT}),
                  params=[LIMIT, BEFORE, Param("state", {"type": "string", "enum": list(PAYOUT_STATES)},
                                               "only payouts in this state")])
    def payouts_list(server: Server):
        from actors.payout_mgr.queries import payouts_before

        limit = limit_param(server)
        before = server.int_param("before", None, 1, MAX_ID)
        state = choice_param(server, "state", PAYOUT_STATES)
        rows = server.read(payouts_before, state=state, limit=limit, before=before)
        return {"payouts": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}

    @api.endpoint("/api/payouts/<number>", "finance",
                  "one payout: its transaction, approvals, co-signers' signatures and history", PAYOUT,
                  params=[Param("number", {"type": "integer", "minimum": 1}, "the payout's id", in_path=True)])
    def payout_one(server: Server, number: str):
        from actors.payout_mgr.queries import payout

        found = server.read(payout, path_id(number, "payout"))
        if found is None:
            raise bottle.HTTPError(404, "no such payout")
        return found

    @api.endpoint("/api/machines", "public", "the vending machines with their slots: products, prices, stock",
                  obj({"machines": array(MACHINE)}))
    def machines_list(server: Server):
        from actors.business_data.queries import machines

        def read(database):
            return [_machine(database, m) for m in machines(database)]
        return {"machines": server.read(read)}

    @api.endpoint("/api/machines/<name>", "public", "one vending machine with its slots", MACHINE,
                  params=[Param("name", NAME_SCHEMA, "the machine's name", in_path=True)])
    def machine_one(server: Server, name: str):
        from actors.business_data.queries import machines

        def read(database):
            found = [m for m in machines(database) if m["name"] == name]
            return _machine(database, found[0]) if found else None
        found = server.read(read) if HANDLE_RE.fullmatch(name) else None
        if found is None:
            raise bottle.HTTPError(404, "no such machine")
        return found

    @api.endpoint("/api/events", "events",
                  "the event log, oldest first, from a cursor: by topic prefix and time; stops at limit or "
                  "after 100,000 records looked at (more: true, go on from next_after)",
                  obj({"events": array(EVENT), "next_after": NINT, "more": BOOL}),
                  params=[Param("after", {"type": "integer", "minimum": -1, "maximum": MAX_ID},
                                "records after this log_seq (the last page's next_after); default from the start"),
                          LIMIT,
                          Param("topic", {"type": "string", "maxLength": 255}, "a topic prefix: machine.vm1, health"),
                          Param("since", {"type": "string", "maxLength": 40}, "logged at or after: unix s, ISO 8601 (UTC unless "
                                                             "an offset), or 15m/2h/1d ago"),
                          Param("until", {"type": "string", "maxLength": 40}, "logged at or before (as since)")])
    def events_page(server: Server):
        from actors.server.events import page, topic_prefix

        after = server.int_param("after", None, -1, MAX_ID)
        limit = limit_param(server)
        topic = server.str_param("topic", "", max_len=255)
        try:
            prefix = topic_prefix(topic)
        except ValueError:
            raise bottle.HTTPError(400, "topic: dot-separated segments of A-Z a-z 0-9 _ -") from None
        since, until = time_param(server, "since"), time_param(server, "until")
        got = page(server.home.events_dir, after=None if after is None or after < 0 else after, limit=limit,
                   prefix=prefix, since=since, until=until, scan_max=SCAN_MAX)
        return {"events": got["events"], "next_after": got["next_after"], "more": got["more"]}

    @api.endpoint("/api/health", "public",
                  "every actor's and machine's last heartbeat: status (ok, degraded, starting; stale, down, "
                  "revoked) and age; version, pid, uptime, detail and counters with the events scope",
                  obj({"now": {"type": "number"}, "actors": array(HEALTH_ROW)}))
    def health(server: Server):
        now = server.clock()
        detail = "events" in server.token().scopes
        return {"now": now, "actors": health_rows(server, now, detail)}

    document = api.openapi  # built at the first request: every endpoint is registered by then

    @app.route("/api/openapi.json", "GET")
    def openapi():
        return json_response(document())

    return api


INVOICE_STATES = ("open", "seen", "paid", "vending", "vended", "expired", "underpaid", "overpaid", "failed")
PAYOUT_STATES = ("requested", "awaiting_signatures", "signed", "broadcast", "confirmed", "cancelled", "expired",
                 "invalidated", "replaced")


def health_rows(server: Server, now: float, detail: bool) -> list[dict]:
    """``/api/health``'s rows: the judgement for every token, what the heartbeat says with ``events``."""
    from actors.server.events import health

    keep = ("name", "role", "status", "expected", "last_seen", "age_s")
    return [row if detail else {k: row[k] for k in keep}
            for row in health(server.home, server.heartbeats().current(), now)]
