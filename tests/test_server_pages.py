"""The report server's HTML pages (issue 14, item 4): every page of a home with data (members,
invoices, payouts, events, heartbeats) on SQLite and PostgreSQL, each with the right and the
wrong scopes (no token: a redirect to /login; too small a scope: a 403 naming it); what is
escaped (a product, a payout reason, an event body holding markup); the static files; and a real
browser: Debian's headless Chromium, driven over the DevTools protocol, loads every page logged
in (the cookie /login's script sets) with no console error and no CSP violation, and the
dashboard's screenshot is kept in tests/artifacts/dashboard.png.

The rows are made cheaply: members by MemberData itself on the fake runtime (as
tests/test_reporter.py), invoices and payouts by their models, events and heartbeats appended to
the event log as the EventLogger does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wsgiref.util
from pathlib import Path

import msgpack
import nacl.signing
import pytest

from actors.server.app import make_app
from actors.server.database import open_read_only
from actors.server.tokens import TokenStore
from tests.unit_db import unit_home

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
XSS = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
NOW = time.time()
TODAY = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).date()
PAGES = {"/": "public", "/members": "members", "/invoices": "finance", "/payouts": "finance", "/events": "events",
         "/health": "events"}


def months_ago(n: int, day: int = 5) -> datetime.date:
    y, m = TODAY.year, TODAY.month - n
    while m < 1:
        y, m = y - 1, m + 12
    return datetime.date(y, m, min(day, 28))


def ts(d: datetime.date, hour: int = 12) -> int:
    return int(datetime.datetime(d.year, d.month, d.day, hour, tzinfo=datetime.timezone.utc).timestamp())


# -- the demo home ---------------------------------------------------------------------------------

def add_members(home):
    from actors.member_data.actor import MemberData
    from actors.member_data.models import seal_personal
    from actors.testing import FakeClock, FakeRuntime
    from keys.registry import Registry

    clock = FakeClock(wall=NOW)
    md = FakeRuntime(MemberData(home, clock=clock.time), name="member_data", clock=clock, home=home).start()
    public = Registry.load(home.registry_path).current("member_data").curve

    def cmd(topic, **body):
        body = {"id": os.urandom(16), "expires": int(clock.time()) + 60, **body}
        md.send(topic, body, sender="admin")
        (ack,) = md.bodies("members.ack", id=body["id"])
        assert ack["status"] == "done", ack

    try:
        cmd("cmd.members.plan_set", name="regular", cad="40.00", period="month", grace_days=30, confirmations=1)
        people = {"ada": 11, "bob": 9, "cyd": 7, "dee": 5, "eve": 3, "fay": 2, "gus": 1}
        for handle, joined in people.items():
            cmd("cmd.members.add", handle=handle, plan="regular", joined=months_ago(joined, 3).isoformat(),
                personal=seal_personal(public, name=f"{handle.title()} {XSS}", email=f"{handle}@example.org"))
        for handle, joined in people.items():
            paid = {"ada": joined + 1, "bob": joined - 3, "cyd": joined + 1, "dee": 2, "eve": joined + 2,
                    "fay": 1, "gus": 2}[handle]
            for i in range(paid):
                on = months_ago(max(joined - i, 0), 4)
                cmd("cmd.members.pay", handle=handle, cad="40.00", method="cash" if i % 2 else "etransfer",
                    note="dues", on=min(on, TODAY).isoformat(), txid_vout=None)
    finally:
        md.stop()
    return list(people)


def add_sales_and_payouts(database):
    from actors.business_mgr.models import TABLES as SALES
    from actors.business_mgr.models import SalesInvoice
    from actors.db import ensure_tables
    from actors.payout_mgr import ledger

    with database.bind_ctx(SALES):
        ensure_tables(database, SALES)
        n = 0
        for months in range(11, -1, -1):
            for machine, product, price, count in (("vm1", "Club-Mate", 350, 3 + months % 4),
                                                   ("vm1", "Chips", 200, 1 + months % 3),
                                                   ("vm2", "Club-Mate", 350, 2), ("vm2", XSS, 125, 1)):
                for k in range(count):
                    n += 1
                    paid = ts(months_ago(months, 1 + (k * 7) % 27))
                    if paid > NOW:
                        paid = int(NOW) - 3600
                    SalesInvoice.create(mode="invoice", machine=machine, slot=1 + k % 3, product=product,
                                        price_cents=price, items=1, cad_per_btc="128400.00",
                                        due_sats=price * 7, address=f"bcrt1qdemo{n}", state="vended",
                                        created=paid - 60, expires=paid + 900, paid_at=paid, closed_at=paid + 5,
                                        received_sats=price * 7, vended=1)
        SalesInvoice.create(mode="invoice", machine="vm1", slot=2, product="Chips", price_cents=200, items=1,
                            due_sats=1400, address="bcrt1qopen", state="open", created=int(NOW) - 30,
                            expires=int(NOW) + 870)
    with database.bind_ctx(ledger.MODELS):
        ensure_tables(database, ledger.MODELS)
        now = int(NOW)
        for i, (state, reason) in enumerate((("confirmed", "share of October"), ("awaiting_signatures", IMG),
                                             ("requested", "new soldering station"),
                                             ("awaiting_signatures", "refund of invoice 12"),
                                             ("cancelled", "typo"))):
            p = ledger.Payout.create(kind="manual", destination=f"bcrt1qpayout{i}xyz", sats=150_000 + i * 1000,
                                     cad_cents=19260 + i * 128, rate="128400.00", reason=reason,
                                     requested_by="admin", requested_at=now - 86400 * (5 - i),
                                     expires_at=now + 86400, state=state, updated_at=now)
            if state != "requested":
                ledger.PayoutApproval.create(payout=p.id, identity="treasurer", decision="approve", at=now)
            if state in ("awaiting_signatures", "confirmed"):
                ledger.PayoutSignature.create(payout=p.id, fingerprint=f"{i:08x}", identity="admin", at=now)
            if state == "confirmed":
                ledger.PayoutSignature.create(payout=p.id, fingerprint="deadbeef", identity="bob", at=now)


def add_events(home, stale=("price_notifier",)):
    """Heartbeats of every supervised actor and of vm1 (``stale`` ones a minute old), and a few
    events (one with markup in its body), appended as the EventLogger appends them."""
    from actors.eventlog import EventLog
    from actors.registry import supervised
    from proto import wire

    key = nacl.signing.SigningKey.generate()
    seq = {}

    def record(topic, body, sender, at):
        seq[sender] = seq.get(sender, 0) + 1
        frames = wire.seal(key, topic, wire.pack_payload(sender, 1, seq[sender], None, body, ts_ms=int(at * 1000)))
        return msgpack.packb([int(at * 1000), frames[0], frames[1], None, None], use_bin_type=True)

    log = EventLog(home.events_dir)
    try:
        for i in range(20):
            at = NOW - 200 + i * 5
            log.append(record("machine.vm1.button", {"slot": 1 + i % 3, "pressed_at": int(at * 1000)}, "vm1", at))
        log.append(record("note.demo", {"text": XSS}, "admin", NOW - 90))
        for name in (*supervised(), "vm1"):
            at = NOW - (60 if name in stale else 1)
            log.append(record(f"health.{name}", {
                "name": name, "role": "machine" if name == "vm1" else "actor", "version": "0.1.0", "pid": 4242,
                "uptime": 300, "interval": 5, "token_exp": None, "status": "ok",
                "detail": "door closed" if name == "vm1" else f"{name} fine", "counters": {}}, name, at))
    finally:
        log.close()


class Demo:
    """A home with data, its tokens (by scope: ``all``, ``public``, ``members``, ``finance``,
    ``events``; ``expired``, ``revoked``) and the report server's WSGI app on it."""

    def __init__(self, kind, home):
        self.kind, self.home = kind, home
        self.members = add_members(home)
        from actors.db import connect

        database = connect(home.database_url)
        try:
            add_sales_and_payouts(database)
        finally:
            database.close()
        add_events(home)
        store = TokenStore(home.server_tokens_path)
        self.tokens = {"all": store.add("all", ["members", "finance", "events"], 86400)[0]}
        for scope in ("public", "members", "finance", "events"):
            self.tokens[scope] = store.add(scope, [scope], 86400)[0]
        self.tokens["expired"] = TokenStore(home.server_tokens_path, lambda: NOW - 1000).add(
            "old", ["members", "finance", "events"], 10)[0]
        self.tokens["revoked"] = store.add("gone", ["members", "finance", "events"], 86400)[0]
        store.revoke("gone")
        self.database = open_read_only(home.database_url)
        # the server's clock stands at NOW, when the heartbeats were "1 s ago": a test that runs
        # minutes after the fixture (a loaded suite) still sees them ok, and price_notifier's stale
        self.app = make_app(home, database=self.database, clock=lambda: NOW)

    def get(self, path, token=None, method="GET"):
        """``(status, headers, body)`` of ``path`` with ``token`` as the cookie."""
        path, _, query = path.partition("?")
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                   "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
        if token:
            environ["HTTP_COOKIE"] = f"dctrl_token={self.tokens.get(token, token)}"
        wsgiref.util.setup_testing_defaults(environ)
        seen = {}

        def start(status, headers, exc_info=None):
            seen["status"], seen["headers"] = int(status.split()[0]), headers
        body = b"".join(self.app(environ, start))
        return seen["status"], dict(seen["headers"]), body.decode()


@pytest.fixture(scope="module")
def sqlite_demo(tmp_path_factory):
    with unit_home("sqlite", tmp_path_factory.mktemp("pages") / "home", "pages") as home:
        yield Demo("sqlite", home)


@pytest.fixture(scope="module")
def postgresql_demo(tmp_path_factory):
    with unit_home("postgresql", tmp_path_factory.mktemp("pages_pg") / "home", "pages") as home:
        d = Demo("postgresql", home)
        yield d
        d.database.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def demo(request):
    return request.getfixturevalue(f"{request.param}_demo")


# -- plain HTTP ------------------------------------------------------------------------------------

def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_page_with_every_scope(demo):
    for path, scope in PAGES.items():
        status, headers, body = demo.get(path)
        assert status == 302 and headers["Location"].endswith("/login"), (path, status)
        for bad in ("expired", "revoked", "dctrl_00000000_" + "A" * 43, "nonsense"):
            status, headers, _ = demo.get(path, bad)
            assert status == 302 and headers["Location"].endswith("/login"), (path, bad, status)
        for token in ("public", "members", "finance", "events", "all"):
            status, headers, body = demo.get(path, token)
            allowed = token == "all" or scope in ("public", token)
            if allowed:
                assert status == 200, (path, token, status, body[:300])
                assert headers["Content-Type"].startswith("text/html")
                assert '<meta name="viewport"' in body and "/static/style.css" in body
            else:
                assert status == 403, (path, token, status)
                assert f"needs the {scope} scope" in body
                assert "ada" not in body and "Club-Mate" not in body
        assert demo.get(path, "all", method="HEAD")[0] == 200
        assert demo.get(path, "all", method="POST")[0] == 405


def test_the_dashboard_shows_aggregates_to_any_token_and_the_rest_by_scope(demo):
    _, _, body = demo.get("/", "public")
    assert body.count("<svg") == 3 and "<script" not in body.split("</main>")[0].replace(
        '<script src="/static/login.js"></script>', "")
    text = text_of(body)
    assert "Members by status" in text and f"{len(demo.members)} members" in text
    assert "Club-Mate" in body and "vm2" in body  # the sales chart's labels
    for scope in ("finance", "events", "members"):
        assert f"needs the {scope} scope" in text
    assert "ada" not in text  # no names without the members scope
    _, _, body = demo.get("/", "all")
    text = text_of(body)
    assert "needs the" not in text
    assert "2 awaiting signatures, 1 awaiting approval" in text
    assert "machine.vm1.button" in text and "stale price_notifier" in text
    assert "ok member_data" in text


def test_members_invoices_payouts_events_and_health_pages(demo):
    text = text_of(demo.get("/members", "members")[2])
    for handle in demo.members:
        assert f" {handle} " in text
    assert "current" in text and "paid through" in text
    assert text_of(demo.get("/members?status=current", "members")[2]).count(" current ") >= 2

    body = demo.get("/invoices", "finance")[2]
    text = text_of(body)
    assert "Club-Mate" in text and "vended" in text and "open" in text
    older = re.search(r'href="/invoices\?before=(\d+)"', body)
    assert older, "a second page"
    text2 = text_of(demo.get(f"/invoices?before={older[1]}", "finance")[2])
    first_ids = re.findall(r"<tr><td>(\d+)</td>", body)
    second_ids = re.findall(r"<tr><td>(\d+)</td>", demo.get(f"/invoices?before={older[1]}", "finance")[2])
    assert len(first_ids) == 50 and second_ids and max(map(int, second_ids)) < min(map(int, first_ids))
    assert "newest" in text2
    assert demo.get("/invoices?before=x", "finance")[0] == 400

    body = demo.get("/payouts", "finance")[2]
    states = re.findall(r'class="status s-(\w+)"', body)
    assert states[:2] == ["awaiting_signatures", "awaiting_signatures"] and states[2] == "requested"
    text = text_of(body)
    assert "5 payouts" in text and "2 awaiting_signatures" in text and "Approvals needed: 1" in text

    body = demo.get("/events", "events")[2]
    assert '<meta http-equiv="refresh" content="10">' in body
    seqs = [int(s) for s in re.findall(r'<tr class="v-accepted"><td>(\d+)</td>', body)]
    assert seqs and seqs == sorted(seqs, reverse=True)  # newest first
    assert "health." not in text_of(body)
    assert "health.vault" in text_of(demo.get("/events?health=1", "events")[2])
    assert "machine.vm1.button" not in text_of(demo.get("/events?topic=note", "events")[2])
    assert len(re.findall(r'<tr class="v-', demo.get("/events?n=3", "events")[2])) == 3
    assert demo.get("/events?n=9999", "events")[0] == 400

    body = demo.get("/health", "events")[2]
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td>\w+</td><td><span class=\"status s-\w+\">(\w+)</span>", body))
    assert rows["price_notifier"] == "stale" and rows["vault"] == "ok" and rows["vm1"] == "ok", rows
    assert '<meta http-equiv="refresh"' in body


def test_markup_in_the_data_is_escaped(demo):
    for path in ("/", "/invoices", "/payouts", "/events"):
        body = demo.get(path, "all")[2]
        assert XSS not in body and IMG not in body, path
        assert "onerror=" not in body.replace("onerror=&quot;", "").replace('&lt;img src=x onerror=', ""), path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in demo.get("/invoices", "all")[2]
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in demo.get("/payouts", "all")[2]
    dashboard = demo.get("/", "all")[2]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dashboard  # the sales chart's label, escaped by pygal
    assert "<script" not in dashboard  # and pygal's own config script removed
    assert "alert(1)" in text_of(demo.get("/events", "all")[2])


def test_login_logout_and_static_files(demo):
    status, headers, body = demo.get("/login")
    assert status == 200 and '<script src="/static/login.js"></script>' in body
    assert "<script>" not in body and 'name="token"' not in body  # nothing of the form goes in a URL
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = demo.get("/logout", "all")
    assert status == 200 and re.search(r"dctrl_token=.*Max-Age=0", headers["Set-Cookie"]), headers
    status, headers, js = demo.get("/static/login.js")
    assert status == 200 and "SameSite=Strict" in js and "Max-Age=86400" in js and "Secure" in js
    assert "javascript" in headers["Content-Type"]
    assert demo.get("/static/style.css")[0] == 200
    for bad in ("/static/../pages.py", "/static/..%2Fpages.py", "/static/nothere.css", "/static/%2e%2e/app.py",
                "/static/views/login.tpl"):
        assert demo.get(bad)[0] in (403, 404), bad


def test_the_templates_and_static_files_are_package_data():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    data = cfg["options.package_data"]["actors.server"]
    assert "views/*.tpl" in data and "static/*" in data
    here = Path(__file__).resolve().parent.parent / "actors" / "server"
    assert {p.name for p in (here / "static").iterdir()} >= {"style.css", "login.js"}


# -- the browser -----------------------------------------------------------------------------------

def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def need_chromium() -> str:
    path = chromium_path()
    if path is None:
        why = ("Debian's chromium is not installed: `make browser` as root installs it "
               "(apt-get install -y chromium)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why + " (CI: the browser test must run)")
        pytest.skip(why)
    return path


@contextlib.contextmanager
def serve(app):
    """The WSGI app on waitress on a free loopback port, in a thread; yields its base URL."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(5)


class Browser:
    """Headless Chromium on the DevTools protocol: one page, its console errors collected."""

    def __init__(self, path: str):
        import websocket

        self.tmp = tempfile.mkdtemp(prefix="dctrl-chromium-")
        self.proc = subprocess.Popen(
            [path, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={self.tmp}", "--remote-debugging-port=0", "--remote-allow-origins=*",
             "--window-size=1280,2000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.tmp) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not start (exit {self.proc.returncode})")
            time.sleep(0.1)
        port = int(port_file.read_text().split("\n")[0])
        import urllib.request

        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.call(method)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e["method"] == method:
                return self.events.pop(i)
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise AssertionError(f"no {method} within {timeout} s")

    def load(self, url: str) -> str:
        """Load ``url``, wait for its load event and a moment more; its DOM as HTML."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        time.sleep(0.3)
        self.call("Runtime.evaluate", expression="1")  # (collects the events that came meanwhile)
        return self.evaluate("document.documentElement.outerHTML")

    def evaluate(self, expression: str):
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def errors(self) -> list[str]:
        """The console errors, uncaught exceptions, CSP violations and failed loads seen."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif e["method"] == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')} {p.get('blockedReason', '')}")
        return out

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def test_chromium_loads_every_page_with_no_console_error(sqlite_demo):
    path = need_chromium()
    demo = sqlite_demo
    with serve(demo.app) as base:
        browser = Browser(path)
        try:
            # not logged in: the dashboard sends the browser to /login; its script sets the cookie
            dom = browser.load(base + "/")
            assert browser.evaluate("location.pathname") == "/login" and 'id="login"' in dom
            assert browser.errors() == []
            browser.evaluate(f"document.getElementById('token').value = {json.dumps(demo.tokens['all'])};"
                             "document.getElementById('login').requestSubmit(); 1")
            browser.wait_event("Page.loadEventFired")
            time.sleep(0.3)
            assert browser.evaluate("location.pathname") == "/"
            assert browser.evaluate("location.search") == ""  # the token never in a URL
            cookies = browser.call("Network.getCookies", urls=[base + "/"])["cookies"]
            (cookie,) = [c for c in cookies if c["name"] == "dctrl_token"]
            assert cookie["value"] == demo.tokens["all"] and cookie["sameSite"] == "Strict"
            assert 80000 < cookie["expires"] - time.time() <= 86400
            # every page, logged in (the cookie as Network.setCookie would set it, here by the login)
            expect = {"/": ("Members by status", "Income by month", "awaiting signatures"),
                      "/members": ("ada", "paid through"), "/invoices": ("Club-Mate", "vended"),
                      "/payouts": ("awaiting_signatures", "Approvals needed"),
                      "/events": ("machine.vm1.button", "newest first"), "/health": ("price_notifier", "stale"),
                      "/login": ("API token",)}
            for page, words in expect.items():
                dom = browser.load(base + page)
                assert browser.errors() == [], (page, browser.errors())
                text = browser.evaluate("document.body.innerText")
                for w in words:
                    assert w in text, (page, w)
                assert browser.evaluate("document.querySelectorAll('script:not([src])').length") == 0
                assert "alert(" not in "".join(re.findall(r"<script[^>]*>", dom))
                if page == "/":
                    assert browser.evaluate("document.querySelectorAll('main svg').length") == 3
                    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                    ARTIFACTS.mkdir(exist_ok=True)
                    (ARTIFACTS / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
            # a phone: the dashboard fits its width (no horizontal scrolling of the page)
            browser.call("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2,
                         mobile=True)
            browser.load(base + "/")
            assert browser.errors() == []
            assert browser.evaluate("document.documentElement.scrollWidth") <= 390
            shot = browser.call("Page.captureScreenshot", format="png")
            (ARTIFACTS / "dashboard-phone.png").write_bytes(base64.b64decode(shot["data"]))
            browser.call("Emulation.clearDeviceMetricsOverride")
            # a token too small for a page: the 403 page (a page, not a console error)
            browser.call("Network.setCookie", name="dctrl_token", value=demo.tokens["public"], url=base + "/",
                         path="/", sameSite="Strict")
            dom = browser.load(base + "/payouts")
            assert "needs the finance scope" in browser.evaluate("document.body.innerText")
            # log out: the cookie is gone, the dashboard sends to /login again
            browser.load(base + "/logout")
            assert not [c for c in browser.call("Network.getCookies", urls=[base + "/"])["cookies"]
                        if c["name"] == "dctrl_token"]
            browser.load(base + "/")
            assert browser.evaluate("location.pathname") == "/login"
            # the collector sees what it must: a console error, and an inline script the CSP refuses
            browser.evaluate("console.error('seen'); 1")
            browser.evaluate("var s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                             "document.body.appendChild(s); 1")
            time.sleep(0.3)
            browser.call("Runtime.evaluate", expression="1")
            seen = browser.errors()
            assert any("seen" in e for e in seen) and any("Content Security Policy" in e for e in seen), seen
            assert browser.evaluate("window.ran === undefined")
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
