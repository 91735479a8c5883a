"""The report server's REST API against a real `dctrl serve` (waitress, a subprocess) on a home with
data, on SQLite and PostgreSQL (issue 14 items 1-3 and their hostile-input and OpenAPI tests).

The data is written straight into the components' tables (as the actors would: members, facts and
payments; machines and slots; invoices with payments and vends; payouts with approvals and
signatures) and into the event log with its writer (actors/eventlog.py), so no bus is needed.
Tokens are made with the token store; the CLI's token commands are tests/test_server_tokens.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgpack
import nacl.signing
import pytest

from actors.business_data.models import TABLES as BUSINESS_TABLES
from actors.business_mgr.models import TABLES as SALES_TABLES
from actors.db import connect, ensure_tables
from actors.eventlog import EventLog
from actors.member_data.models import TABLES as MEMBER_TABLES
from actors.payout_mgr import ledger
from actors.reporter.models import TABLES as REPORT_TABLES
from actors.server.tokens import TokenStore
from proto.wire import pack_payload, seal
from tests.harness import ROOT, free_port, home_on, wait_for

NOW = int(time.time())
SECRET_NAME, SECRET_EMAIL = "Ada Secretname", "ada.secret@example.org"
SEALED = bytes(range(7, 7 + 90))  # (a stand-in: the server must not show it, whatever it is)
SCOPED = {"all": ("members", "finance", "events"), "public": (), "members": ("members",),
          "finance": ("finance",), "events": ("events",)}


# -- the data ------------------------------------------------------------------------------------

def sql(database, text, *params):
    return database.execute_sql(text.replace("?", database.param), params)


def seed(database) -> None:
    for tables in (MEMBER_TABLES, SALES_TABLES, BUSINESS_TABLES, REPORT_TABLES, list(ledger.MODELS)):
        with database.bind_ctx(tables):
            ensure_tables(database, tables)
    sql(database, 'INSERT INTO "member_plan_version" ("name", "cents", "period", "grace_days", "confirmations", '
                  '"term_days", "created") VALUES (?, ?, ?, ?, ?, ?, ?)', "regular", 4000, "month", 30, 1, 7, NOW)
    for handle, name, email, joined in (("ada", SECRET_NAME, SECRET_EMAIL, "2026-01-05"),
                                        ("bob", "Bob Secretname", "bob.secret@example.org", "2026-02-01")):
        sql(database, 'INSERT INTO "member_member" ("handle", "name", "email", "joined", "created") '
                      'VALUES (?, ?, ?, ?, ?)', handle, name, email, joined, NOW)
        for kind, plan in (("joined", None), ("plan", "regular")):
            sql(database, 'INSERT INTO "member_fact" ("handle", "kind", "on", "plan", "command", "created") '
                          'VALUES (?, ?, ?, ?, ?, ?)', handle, kind, joined, plan, "t", NOW)
        sql(database, 'INSERT INTO "member_payment" ("handle", "on", "method", "cents", "command", "created") '
                      'VALUES (?, ?, ?, ?, ?, ?)', handle, joined, "cash", 4000, "t", NOW)
    sql(database, 'INSERT INTO "business_machine" ("name", "location", "created") VALUES (?, ?, ?)',
        "vm1", "front door", NOW)
    machine = sql(database, 'SELECT "id" FROM "business_machine"').fetchone()[0]
    sql(database, 'INSERT INTO "business_slot" ("machine_id", "number", "product", "price_cents", "relay", "stock", '
                  '"updated", "stock_set") VALUES (?, ?, ?, ?, ?, ?, ?, ?)', machine, 1, "Club-Mate", 350,
        "gpio:17", 12, NOW, NOW - 10)
    for state in ("vended", "expired"):
        sql(database, 'INSERT INTO "sales_invoice" ("mode", "machine", "slot", "product", "price_cents", "items", '
                      '"due_sats", "tolerance_sats", "zero_conf", "confirmations", "address", "state", "version", '
                      '"created", "expires", "paid_at", "received_sats", "late_sats", "credit_sats", "lost_sats", '
                      '"vended") VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 1, ?, ?, 0, ?, ?, ?, ?, 0, 0, 0, ?)',
            "invoice", "vm1", 1, "Club-Mate", 350, 1, 2726, True, f"bcrt1q{state}", state, NOW - 5, NOW + 900,
            NOW - 4 if state == "vended" else None, 2726 if state == "vended" else 0, 1 if state == "vended" else 0)
    inv = sql(database, 'SELECT "id" FROM "sales_invoice" WHERE "state" = ?', "vended").fetchone()[0]
    sql(database, 'INSERT INTO "sales_payment" ("txid", "vout", "invoice_id", "sats", "state", "confirmations", '
                  '"rbf", "late", "counted", "first_seen") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        "ab" * 32, 0, inv, 2726, "confirmed", 1, False, False, True, NOW - 4)
    sql(database, 'INSERT INTO "sales_vend" ("id", "invoice_id", "item", "machine", "slot", "state", "created", '
                  '"expires", "deadline", "attempts", "acked_at", "pulsed_ms") VALUES (?, ?, 0, ?, 1, ?, ?, ?, ?, 1, ?, ?)',
        "8d21" * 4, inv, "vm1", "vended", NOW - 3, NOW + 30, NOW + 300, NOW - 2, 500)
    with database.bind_ctx(ledger.MODELS):
        p = ledger.Payout.create(kind="refund", destination="bcrt1qrefund", sats=5000, cad_cents=642, rate="128400.00",
                                 rate_as_of=NOW * 1000, reason="refund of invoice 2", invoice="2", requested_by="admin",
                                 requested_at=NOW - 60, expires_at=NOW + 3600, state="awaiting_signatures",
                                 txid="cd" * 32, inputs=json.dumps(["ef" * 32 + ":1"]), fee=300, vsize=150,
                                 change_sats=1000, updated_at=NOW - 30)
        ledger.PayoutApproval.create(payout=p.id, identity="treasurer", decision="approve", at=NOW - 50)
        ledger.PayoutSignature.create(payout=p.id, fingerprint="0badf00d", identity="treasurer", at=NOW - 40)
        ledger.PayoutHistory.create(payout=p.id, state="requested", at=NOW - 60, by="admin", reason=None)
        ledger.PayoutHistory.create(payout=p.id, state="awaiting_signatures", at=NOW - 50, by="payout_mgr", reason=None)


def log_events(directory) -> None:
    """Heartbeats of a few actors (one fresh, one old), machine events and a refused record."""
    key = nacl.signing.SigningKey.generate()

    def frames(sender, topic, body, seq):
        return seal(key, topic, pack_payload(sender, 1, seq, b"tok", body, ts_ms=NOW * 1000))

    def beat(name, status="ok"):
        return {"name": name, "role": "actor", "version": "0.1.0", "pid": 4242, "uptime": 10, "interval": 1,
                "token_exp": None, "status": status, "detail": f"{name} detail", "counters": {"n": 1}}
    with EventLog(directory) as log:
        def append(logged_ms, fr, code=None, reason=None):
            log.append(msgpack.packb([logged_ms, fr[0], fr[1], code, reason], use_bin_type=True))
        # two hours and more ago: a member's name and email sealed to member_data, a sealed secret
        append((NOW - 8000) * 1000, frames("admin", "cmd.members.add", {
            "id": b"\x01" * 16, "expires": NOW, "handle": "ada", "personal": SEALED, "plan": "regular"}, 1))
        append((NOW - 7900) * 1000, frames("vault", "vault.secret.member_mail", {
            "rid": b"\x02" * 16, "secret": "smtp_password", "sealed": SEALED, "code": None, "reason": None}, 2))
        append((NOW - 3600) * 1000, frames("vault", "health.vault", beat("vault"), 1))
        for i in range(30):
            append((NOW - 600 + i) * 1000, frames("vm1", "machine.vm1.button", {"slot": 1, "pressed_at": i}, i + 1))
        append((NOW - 500) * 1000, frames("vm1", "machine.vm1.drop", {"slot": 1, "at": 1}, 40), "bad_token", "no")
        log.flush(force=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    """A home with data and `dctrl serve` on it: (base URL, home, tokens by scope name, database kind)."""
    with home_on(request.param, tmp_path_factory.mktemp(f"srv_{request.param}") / "home", "srv_api") as home:
        database = connect(home.database_url)
        seed(database)
        database.close()
        log_events(home.events_dir)
        store = TokenStore(home.server_tokens_path)
        tokens = {name: store.add(name, scopes, 3600)[0] for name, scopes in SCOPED.items()}
        tokens["expired"] = TokenStore(home.server_tokens_path, clock=lambda: time.time() - 100).add(
            "old", ("members", "finance", "events"), 10)[0]
        tokens["revoked"] = store.add("gone", ("members", "finance", "events"), 3600)[0]
        store.revoke("gone")
        port = free_port()
        log = open(home.root / "serve.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", "serve", "--home", str(home.root),
                                 "--listen", f"127.0.0.1:{port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _up(base, proc), timeout=20, what="dctrl serve to answer")
            yield base, home, tokens, request.param
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def _up(base, proc):
    if proc.poll() is not None:
        raise AssertionError(f"dctrl serve exited {proc.returncode}")
    try:
        urllib.request.urlopen(base + "/api/openapi.json", timeout=2).read()
        return True
    except (urllib.error.URLError, OSError):
        return False


def get(base, path, token=None, method="GET", headers=None):
    """(status, headers, body bytes) of one request; errors are answers too."""
    req = urllib.request.Request(base + path, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(base, path, token, status=200):
    code, _h, body = get(base, path, token)
    assert code == status, (path, code, body[:500])
    return json.loads(body)


# -- every endpoint with the right scope -------------------------------------------------------------

def test_reports_public(served):
    base, _home, tokens, _db = served
    members = get_json(base, "/api/reports/members", tokens["public"])
    assert members["total"] == 2 and sum(members["by_status"].values()) == 2
    income = get_json(base, "/api/reports/income", tokens["public"])
    sats = sum(m["total_sats"] for m in income["months"])
    cents = sum(m["total_cents"] for m in income["months"])
    assert cents >= 8000, income  # two dues payments of 40.00 CAD
    assert sats >= 0 and all(isinstance(m["total_cents"], int) for m in income["months"])
    activity = get_json(base, "/api/reports/activity?months=3", tokens["public"])
    assert len(activity["months"]) == 3
    text = json.dumps([members, income, activity])
    assert "ada" not in text and "Secretname" not in text and "example.org" not in text


def test_members(served):
    base, _home, tokens, _db = served
    page = get_json(base, "/api/members?limit=1", tokens["members"])
    assert [m["handle"] for m in page["members"]] == ["ada"] and page["next_after"] == "ada"
    assert page["members"][0]["plan"] == "regular" and page["members"][0]["status"]
    rest = get_json(base, "/api/members?limit=1&after=ada", tokens["members"])
    assert [m["handle"] for m in rest["members"]] == ["bob"]
    assert "Secretname" not in json.dumps(page)  # names and emails only in one member's record
    ada = get_json(base, "/api/members/ada", tokens["members"])
    assert ada["name"] == SECRET_NAME and ada["email"] == SECRET_EMAIL
    assert [p["cents"] for p in ada["payments"]] == [4000] and ada["dues"]["status"]
    assert get_json(base, "/api/members/nobody", tokens["members"], 404) == {"error": "no such member", "status": 404}


def test_invoices(served):
    base, _home, tokens, _db = served
    page = get_json(base, "/api/invoices", tokens["finance"])
    assert [i["state"] for i in page["invoices"]] == ["expired", "vended"] and page["next_before"] is None
    vended = get_json(base, "/api/invoices?state=vended", tokens["finance"])["invoices"]
    assert len(vended) == 1 and vended[0]["received_sats"] == 2726
    first = get_json(base, "/api/invoices?limit=1", tokens["finance"])
    assert len(first["invoices"]) == 1
    second = get_json(base, f"/api/invoices?limit=1&before={first['next_before']}", tokens["finance"])
    assert second["invoices"][0]["invoice"] < first["invoices"][0]["invoice"]
    one = get_json(base, f"/api/invoices/{vended[0]['invoice']}", tokens["finance"])
    assert one["payments"][0]["sats"] == 2726 and one["vends"][0]["state"] == "vended"
    get_json(base, "/api/invoices/999999", tokens["finance"], 404)


def test_payouts(served):
    base, _home, tokens, _db = served
    rows = get_json(base, "/api/payouts", tokens["finance"])["payouts"]
    assert len(rows) == 1 and rows[0]["approvals"] == 1 and rows[0]["signatures"] == 1 and rows[0]["sats"] == 5000
    one = get_json(base, f"/api/payouts/{rows[0]['id']}", tokens["finance"])
    assert one["signatures"] == [{"fingerprint": "0badf00d", "identity": "treasurer", "at": NOW - 40}]
    assert one["approvals"][0]["decision"] == "approve" and [h["state"] for h in one["history"]] == [
        "requested", "awaiting_signatures"]
    assert one["inputs"] == ["ef" * 32 + ":1"] and "psbt" not in one
    assert get_json(base, "/api/payouts?state=confirmed", tokens["finance"])["payouts"] == []
    get_json(base, "/api/payouts/424242", tokens["finance"], 404)


def test_machines(served):
    base, _home, tokens, _db = served
    machines = get_json(base, "/api/machines", tokens["public"])["machines"]
    assert [m["name"] for m in machines] == ["vm1"]
    slot = machines[0]["slots"][0]
    assert slot["product"] == "Club-Mate" and slot["price_cents"] == 350 and slot["stock"] == 12
    assert slot["stock_left"] == 11 and "relay" not in slot  # one vend since the stock was set
    assert get_json(base, "/api/machines/vm1", tokens["public"]) == machines[0]
    get_json(base, "/api/machines/vm9", tokens["public"], 404)


def test_events(served):
    base, _home, tokens, _db = served
    first = get_json(base, "/api/events?limit=10&topic=machine.vm1.button", tokens["events"])
    assert len(first["events"]) == 10 and first["more"] is True
    assert first["events"][0]["body"] == {"slot": 1, "pressed_at": 0}
    nxt = get_json(base, f"/api/events?limit=100&topic=machine.vm1&after={first['next_after']}", tokens["events"])
    assert [e["body"]["pressed_at"] for e in nxt["events"] if e["topic"] == "machine.vm1.button"] == list(range(10, 30))
    assert nxt["events"][-1]["verdict"] == "rejected" and nxt["more"] is False
    # time: since and until (unix seconds, ISO, relative)
    window = get_json(base, f"/api/events?since={NOW - 595}&until={NOW - 591}&topic=machine", tokens["events"])
    assert [e["body"]["pressed_at"] for e in window["events"]] == [5, 6, 7, 8, 9]
    recent = get_json(base, f"/api/events?since=2h&until={NOW}", tokens["events"])
    assert len(recent["events"]) == 32  # the heartbeat an hour ago, 30 presses, one refused
    assert len(get_json(base, f"/api/events?since=30m&until={NOW}", tokens["events"])["events"]) == 31
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 595))
    assert len(get_json(base, f"/api/events?since={iso}&topic=machine.vm1.button", tokens["events"])["events"]) == 25
    assert get_json(base, "/api/events?topic=nothing.here", tokens["events"])["events"] == []
    # sealed blobs and credentials in bodies: shown to be there, never what they are
    for topic, field in (("cmd.members.add", "personal"), ("vault.secret", "sealed")):
        code, _h, body = get(base, f"/api/events?topic={topic}", tokens["events"])
        assert code == 200 and SEALED.hex().encode() not in body
        (event,) = json.loads(body)["events"]
        assert event["body"][field] == "(withheld)", event
    assert get_json(base, "/api/events?after=100000", tokens["events"])["events"] == []


def test_health(served):
    base, home, tokens, _db = served
    with EventLog(home.events_dir) as log:  # (the fixture's writer is closed: a fresh heartbeat now)
        key = nacl.signing.SigningKey.generate()
        body = {"name": "broker", "role": "actor", "version": "0.1.0", "pid": 7, "uptime": 3, "interval": 5,
                "token_exp": None, "status": "ok", "detail": "fine", "counters": {"subscriptions": 3}}
        fr = seal(key, "health.broker", pack_payload("broker", 1, 1, b"tok", body))
        log.append(msgpack.packb([int(time.time() * 1000), fr[0], fr[1], None, None], use_bin_type=True))
    public = {r["name"]: r for r in get_json(base, "/api/health", tokens["public"])["actors"]}
    assert public["broker"]["status"] == "ok" and public["broker"]["age_s"] < 30
    assert public["vault"]["status"] == "stale" and public["vault"]["age_s"] > 3000  # an hour-old heartbeat
    assert public["member_data"]["status"] == "down" and public["member_data"]["last_seen"] is None  # never
    assert "detail" not in public["broker"] and "pid" not in public["broker"]
    assert public["vm1"]["role"] == "machine" and public["vm1"]["expected"] and public["vm1"]["status"] == "down"
    full = {r["name"]: r for r in get_json(base, "/api/health", tokens["events"])["actors"]}
    assert full["broker"]["detail"] == "fine" and full["broker"]["counters"] == {"subscriptions": 3}


# -- access ------------------------------------------------------------------------------------------

PATHS = {"/api/reports/members": "public", "/api/reports/income": "public", "/api/reports/activity": "public",
         "/api/members": "members", "/api/members/ada": "members", "/api/invoices": "finance",
         "/api/invoices/1": "finance", "/api/payouts": "finance", "/api/payouts/1": "finance",
         "/api/machines": "public", "/api/machines/vm1": "public", "/api/events": "events", "/api/health": "public"}
DATA_MARKERS = (b"ada", b"Secretname", b"example.org", b"Club-Mate", b"vm1", b"bcrt1q", b"2726", b"treasurer")


def _no_data(body: bytes):
    for marker in DATA_MARKERS:
        assert marker not in body, (marker, body[:300])


def test_access_needs_a_valid_token(served):
    base, home, tokens, _db = served
    wrong = "dctrl_00000000_" + "A" * 43
    tampered = tokens["all"][:-1] + ("A" if tokens["all"][-1] != "A" else "B")
    for path in PATHS:
        for token in (None, wrong, tampered, tokens["expired"], tokens["revoked"], "not a token", "x" * 5000):
            code, headers, body = get(base, path, token)
            assert code == 401, (path, token, code, body)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert json.loads(body) == {"error": "a valid token is needed (Authorization: Bearer TOKEN)",
                                        "status": 401}
        for name, scopes in SCOPED.items():
            code, _h, body = get(base, path, tokens[name])
            if PATHS[path] == "public" or PATHS[path] in scopes:
                assert code == 200, (path, name, code, body[:300])
            else:
                assert code == 403, (path, name, code)
                _no_data(body)
    # the cookie works as the header does
    code, _h, _b = get(base, "/api/members", headers={"Cookie": f"dctrl_token={tokens['members']}"})
    assert code == 200


def test_revocation_takes_effect_at_the_next_request(served):
    base, home, _tokens, _db = served
    store = TokenStore(home.server_tokens_path)
    token, _rec = store.add("short-lived", ("finance",), 3600)
    assert get(base, "/api/invoices", token)[0] == 200
    store.revoke("short-lived")
    code, _h, body = get(base, "/api/invoices", token)
    assert code == 401
    _no_data(body)
    token, rec = store.add("ttl", ("finance",), 4)
    assert get(base, "/api/invoices", token)[0] == 200  # (at least 3 s before it expires)
    time.sleep(max(0.0, rec.expires - time.time()) + 0.1)
    assert get(base, "/api/invoices", token)[0] == 401


# -- hostile input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND"])
def test_only_get_and_head(served, method):
    base, _home, tokens, _db = served
    for path in [*PATHS, "/api/openapi.json", "/api/nothing", "/", "/spaceapi.json", "/static/x.css"]:
        code, headers, body = get(base, path, tokens["all"], method=method)
        assert code == 405, (method, path, code)
        assert headers["Allow"] == "GET, HEAD"
        _no_data(body)


def test_head(served):
    base, _home, tokens, _db = served
    for path in PATHS:
        code, _h, body = get(base, path, tokens["all"], method="HEAD")
        assert code == 200 and body == b"", path
    assert get(base, "/api/members", None, method="HEAD")[0] == 401


HOSTILE = ["' OR 1=1 --", "'; DROP TABLE member_member; --", "\" OR \"\"=\"", "1 OR 1=1", "1; SELECT 1",
           "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%00", "\\x00", "ada' --", "-1", "1e9",
           "%FF", "%C0%AE%C0%AE%C0%AF", "a" * 5000, "99999999999999999999999999", "0x10", "--5", "+5", " 5", "5 ", "١٢", "²", "%27%20OR%201%3D1%20--", "*", "%", "_"]


def _quote(text):
    return urllib.request.quote(text, safe="%")


def test_hostile_path_parameters(served):
    base, _home, tokens, _db = served
    for prefix in ("/api/members/", "/api/invoices/", "/api/payouts/", "/api/machines/"):
        for value in HOSTILE + ["..%2f..%2fetc%2fpasswd", "..%2F..%2F..%2Fetc%2Fpasswd"]:
            path = prefix + (value if "%2" in value.lower() else _quote(value))
            code, _h, body = get(base, path, tokens["all"])
            assert code in (400, 404), (path, code, body[:300])
            _no_data(body)
    for path in ("/static/../../../etc/passwd", "/static/..%2f..%2f..%2fetc%2fpasswd", "/api/../../etc/passwd",
                 "/api/members/..", "/api/members/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/..%2f..%2fetc%2fpasswd"):
        code, _h, body = get(base, path, tokens["all"])
        assert code in (400, 404), (path, code)
        assert b"root:" not in body
        _no_data(body)


QUERY = {"/api/reports/members": ["as_of"], "/api/reports/income": ["as_of"],
         "/api/reports/activity": ["as_of", "months"], "/api/members": ["as_of", "limit", "after"],
         "/api/members/ada": ["as_of"], "/api/invoices": ["limit", "before", "state"],
         "/api/payouts": ["limit", "before", "state"], "/api/events": ["after", "limit", "topic", "since", "until"]}


def test_hostile_query_parameters(served):
    base, _home, tokens, db = served
    for path, names in QUERY.items():
        for name in names:
            for value in HOSTILE:
                code, _h, body = get(base, f"{path}?{name}={_quote(value)}", tokens["all"])
                assert code in (200, 400), (path, name, value, code, body[:300])
                if code == 400:
                    assert json.loads(body)["status"] == 400
                    _no_data(body)
                elif name == "after" and path == "/api/members":
                    assert all(m["handle"] > value for m in json.loads(body)["members"])  # a bound, not SQL
    # the tables are all there after all that (and the members too)
    assert len(get_json(base, "/api/members", tokens["members"])["members"]) == 2


def test_huge_pages_and_numbers_are_refused(served):
    base, _home, tokens, _db = served
    for path in ("/api/members", "/api/invoices", "/api/payouts", "/api/events"):
        for value in ("501", "100000", "99999999999999999999", "-1", "0"):
            code, _h, body = get(base, f"{path}?limit={value}", tokens["all"])
            assert code == 400 and b"limit must be a whole number from 1 to 500" in body, (path, value, code)
        assert get(base, f"{path}?limit=500", tokens["all"])[0] == 200
    assert get(base, "/api/reports/activity?months=121", tokens["all"])[0] == 400
    assert get(base, "/api/invoices?before=99999999999999999999", tokens["all"])[0] == 400
    assert get(base, "/api/members?after=" + "a" * 33, tokens["all"])[0] == 400
    assert get(base, "/api/events?topic=" + "a" * 300, tokens["all"])[0] == 400
    for day in ("20260131", "2026-02-30", "2026-1-31", "31/01/2026", "2026-01-31T00"):
        assert get(base, f"/api/reports/members?as_of={day}", tokens["all"])[0] == 400, day
    assert get(base, "/api/reports/members?as_of=2026-01-31", tokens["all"])[0] == 200
    doc = get_json(base, "/api/openapi.json", None)
    limits = [p["schema"]["maximum"] for item in doc["paths"].values() for p in item["get"]["parameters"]
              if p["name"] == "limit"]
    assert limits == [500] * 4  # [server] page_max, as enforced


def test_the_database_handle_is_read_only(served):
    """The server's connection (actors/server/database.py) refuses every write, on both databases."""
    from actors.server.database import open_read_only

    _base, home, _tokens, db = served
    database = open_read_only(home.database_url)
    try:
        for statement in ('INSERT INTO "business_machine" ("name", "location", "created") VALUES (\'x\', NULL, 1)',
                          'UPDATE "member_member" SET "email" = \'x\'', 'DELETE FROM "sales_invoice"',
                          'CREATE TABLE "evil" ("x" INTEGER)', 'DROP TABLE "member_member"'):
            with pytest.raises(Exception) as caught:
                with database.atomic():
                    database.execute_sql(statement)
            text = str(caught.value).lower()
            assert "read-only" in text or "readonly" in text or "read only" in text, (db, statement, text)
    finally:
        database.close()
    check = connect(home.database_url)
    try:
        assert sql(check, 'SELECT COUNT(*) FROM "member_member"').fetchone()[0] == 2
        assert not check.table_exists("evil")
    finally:
        check.close()


# -- the OpenAPI document against the server ---------------------------------------------------------

def test_openapi_document(served):
    base, _home, _tokens, _db = served
    doc = get_json(base, "/api/openapi.json", None)
    assert doc["openapi"] == "3.0.3"
    assert set(doc["paths"]) == {p.replace("ada", "{handle}").replace("/1", "/{number}").replace("vm1", "{name}")
                                 for p in PATHS}
    for path, item in doc["paths"].items():
        assert item["get"]["x-scope"] in ("public", "members", "finance", "events"), path


ST_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
             "response_schema_conformance", "negative_data_rejection", "ignored_auth", "unsupported_method")


def test_schemathesis(served):
    """Property-based: schemathesis (its CLI, on hypothesis) generates requests from the document,
    valid and invalid, for every operation and parameter, with an all-scopes token, and checks
    that the server never fails (5xx), that every answer conforms to the document (status code
    documented, content type, body matching the schema), that invalid input is refused (4xx),
    that the token is really needed, and that other methods are 405 with Allow. At most 20
    examples per operation and phase (about half a minute)."""
    base, home, tokens, _db = served
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "schemathesis") if (ROOT / ".venv" / "bin" / "schemathesis").exists()
         else "schemathesis", "run", base + "/api/openapi.json", "--header", f"Authorization: Bearer {tokens['all']}",
         "--checks", ",".join(ST_CHECKS), "--max-examples", os.environ.get("DCTRL_ST_EXAMPLES", "20"), "--seed", os.environ.get("DCTRL_ST_SEED", "14"), "--workers", "2",
         "--generation-database", "none", "--no-color", "--request-timeout", "20",
         "--report", "junit", "--report-dir", str(home.root / "st")],
        capture_output=True, text=True, timeout=300, cwd=home.root)
    out = proc.stdout + proc.stderr
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or "error" in line]
    print(f"schemathesis in {time.monotonic() - started:.1f} s: {summary[-1] if summary else out[-300:]}")
    assert proc.returncode == 0, out[-6000:]


# -- reading the event log: bounded work per request -------------------------------------------------

def _beat_record(name, logged_ms, key):
    body = {"name": name, "role": "actor", "version": "0.1.0", "pid": 1, "uptime": 1, "interval": 5,
            "token_exp": None, "status": "ok", "detail": None, "counters": {}}
    fr = seal(key, f"health.{name}", pack_payload(name, 1, logged_ms, b"tok", body))
    return msgpack.packb([logged_ms, fr[0], fr[1], None, None], use_bin_type=True)


def test_heartbeats_read_the_newest_segments_then_only_what_is_new(tmp_path):
    from actors.server.events import Heartbeats

    key = nacl.signing.SigningKey.generate()
    directory = tmp_path / "events"
    with EventLog(directory, segment_bytes=4096) as log:
        for i in range(400):  # many small segments
            log.append(_beat_record("vault" if i < 10 else "broker", 1_000_000 + i, key))
    segments = sorted(directory.glob("*.seg"))
    assert len(segments) > 10
    beats = Heartbeats(directory)
    first = beats.current()
    total_in_last_two = 400 - int(segments[-2].name[:20])
    assert beats.read_records == total_in_last_two  # not the whole log
    assert first["broker"]["logged"] == (1_000_000 + 399) / 1000 and "vault" not in first  # older than those
    with EventLog(directory, segment_bytes=4096) as log:
        log.append(_beat_record("vault", 2_000_000, key))
    again = beats.current()
    assert beats.read_records == total_in_last_two + 1  # one request later: only the new record read
    assert again["vault"]["logged"] == 2000.0 and again["vault"]["body"]["status"] == "ok"


def test_event_pages_stop_at_the_page_or_the_scan_budget(tmp_path):
    from actors.server.events import page, topic_prefix

    key = nacl.signing.SigningKey.generate()
    directory = tmp_path / "events"
    with EventLog(directory) as log:
        for i in range(1000):
            log.append(_beat_record("broker", 1_000_000 + i, key))
    got = page(directory, after=None, limit=10, prefix=topic_prefix("machine"), scan_max=300)
    assert got["events"] == [] and got["more"] and got["next_after"] == 299 and got["scanned"] == 300
    got = page(directory, after=got["next_after"], limit=10, prefix=topic_prefix("health.broker"), scan_max=300)
    assert [e["log_seq"] for e in got["events"]] == list(range(300, 310)) and got["more"]
    assert got["scanned"] == 10
    end = page(directory, after=995, limit=10, scan_max=300)
    assert [e["log_seq"] for e in end["events"]] == [996, 997, 998, 999] and not end["more"]
    assert page(tmp_path / "nothing", after=None, limit=10)["events"] == []
    with pytest.raises(ValueError):
        topic_prefix("' OR 1=1 --")


def call(app, path, token=None, method="GET"):
    """One request to the WSGI application in process: (status code, body)."""
    import io

    path, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "t",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    seen = {}
    body = b"".join(app(environ, lambda status, headers, exc=None: seen.update(status=int(status[:3]))))
    return seen["status"], body


def test_a_missing_table_is_503_saying_why(tmp_path):
    """A database no actor has started on: 503 "not ready" (no traceback, no SQL), not 500."""
    from actors.server.app import make_app
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    connect(home.database_url).close()  # (an empty SQLite file: opened read-only it must exist)
    token, _ = TokenStore(home.server_tokens_path).add("t", ("members", "finance", "events"), 60)
    app = make_app(home)
    try:
        _missing_tables(app, token)
    finally:  # (make_app points every component's proxy at its database: not for the next tests)
        import importlib

        from actors.server.app import PROXIES
        for name in PROXIES:
            importlib.import_module(name).db.initialize(None)


def _missing_tables(app, token):
    for path in ("/api/reports/members", "/api/members", "/api/members/ada", "/api/invoices", "/api/payouts/1",
                 "/api/machines"):
        code, body = call(app, path, token)
        assert code == 503, (path, code, body)
        assert json.loads(body)["error"].startswith("not ready: a table is missing"), body
    code, body = call(app, "/api/events", token)  # no log yet: an empty page
    assert code == 200 and json.loads(body)["events"] == []
    assert call(app, "/api/health", token)[0] == 200


def test_health_names_a_revoked_machine(tmp_path):
    """A machine whose keys are revoked is listed as revoked, not expected (as `dctrl status`)."""
    from actors.server.app import make_app
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    connect(home.database_url).close()
    registry = json.loads(home.registry_path.read_text())
    vm1 = registry["identities"]["vm1"]
    vm1["revoked_up_to"] = max(k["version"] for k in vm1["keys"])
    home.registry_path.write_text(json.dumps(registry))
    token, _ = TokenStore(home.server_tokens_path).add("t", (), 60)
    app = make_app(home)
    try:
        code, body = call(app, "/api/health", token)
    finally:
        import importlib

        from actors.server.app import PROXIES
        for name in PROXIES:
            importlib.import_module(name).db.initialize(None)
    rows = {r["name"]: r for r in json.loads(body)["actors"]}
    assert code == 200 and rows["vm1"]["status"] == "revoked" and not rows["vm1"]["expected"]
    assert rows["broker"]["status"] == "down" and rows["broker"]["expected"]

