"""The HTML pages: server-rendered (bottle templates), usable on a phone, no CDN.

Every page but /login, /logout and /static/* needs a valid token, sent as the ``dctrl_token``
cookie that /login's script sets (the server answers GET and HEAD only: no form is posted, and
the token never goes in a URL). No token, or an expired or revoked one: a redirect (302) to
/login. A token without the page's scope: a 403 page naming the scope.

=============  ========  ======================================================================
page           scope     what
=============  ========  ======================================================================
/              public    charts (income by month and source, active members, sales per machine
                         and product), members by status; sections of the other scopes when the
                         token has them, else "needs the ... scope"
/members       members   every member: status, paid-through, balance, next charge
/invoices      finance   invoices, newest first, paged by number (``?before=ID``)
/payouts       finance   payouts awaiting signatures first, approvals and signatures counted
/events        events    the latest records of the event log, newest first; refreshes itself
/health        events    every actor's and machine's last heartbeat in the event log: ok or stale
=============  ========  ======================================================================

Charts are pygal's SVG, inlined: no JavaScript (pygal's config script is removed: the CSP allows
no inline script), labels escaped by pygal's XML writer. Everything else is escaped by the
templates (``{{ }}``). Database reads go through :meth:`Server.read`; the event log is read from
its newest segments only (:func:`latest_records`), the heartbeats by actors/server/events.py.
"""

from __future__ import annotations

import collections
import datetime
import re
from pathlib import Path

import bottle

from actors.server.app import COOKIE, Server

HERE = Path(__file__).resolve().parent
VIEWS = HERE / "views"
STATIC = HERE / "static"
REFRESH_S = 10  # /events reloads itself this often (<meta http-equiv="refresh">)
SEGMENTS_READ = 3  # /events and the dashboard's tail read at most the newest three segments of the log (16 MiB each)
PAGE = 50  # rows per page of /invoices and /payouts
NAV = (("/", "dashboard", "public"), ("/members", "members", "members"), ("/invoices", "invoices", "finance"),
       ("/payouts", "payouts", "finance"), ("/events", "events", "events"), ("/health", "health", "events"))


# -- formatting (for the templates) ------------------------------------------------------------------

def when(ts, ms: bool = False) -> str:
    """A unix time (seconds, or milliseconds) as UTC, or "-"."""
    if ts is None:
        return "-"
    ts = ts / 1000 if ms else ts
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cad(cents) -> str:
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def ago(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


HELPERS = {"when": when, "cad": cad, "ago": ago}


# -- charts ------------------------------------------------------------------------------------------

_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


def svg(chart) -> str:
    """A pygal chart as an SVG element to inline: no XML declaration, no script. pygal always adds
    a script with its config (for its tooltips), which the CSP (no inline script) would refuse
    with a console error; its text is XML-escaped, so the first ``</script>`` is its end."""
    out = _SCRIPT.sub("", chart.render(is_unicode=True))
    if "<script" in out:  # (never: but a script must not reach the page)
        raise ValueError("a script left in a chart")
    return out


def _chart(kind: str, title: str, **config):
    import pygal
    from pygal.style import Style

    style = Style(background="transparent", plot_background="#fff", foreground="#222", foreground_strong="#111",
                  foreground_subtle="#666", font_family="sans-serif", label_font_size=13, major_label_font_size=13,
                  legend_font_size=14, title_font_size=16, value_font_size=12,
                  colors=("#2b6cb0", "#dd6b20", "#2f855a", "#b83280", "#805ad5", "#c53030", "#319795", "#718096"))
    settings = dict(title=title, js=[], disable_xml_declaration=True, style=style, width=800, height=400,
                    legend_at_bottom=True, legend_at_bottom_columns=3, truncate_legend=40, truncate_label=24,
                    x_label_rotation=30, print_values=False, margin=10, no_data_text="no data yet")
    return getattr(pygal, kind)(**{**settings, **config})


def income_chart(months: list[dict]) -> str:
    c = _chart("StackedBar", "Income by month (CAD): dues and sales", value_formatter=lambda v: f"{v:,.2f}",
               legend_at_bottom=False)
    c.x_labels = [m["month"] for m in months]
    c.add("dues", [sum(a["cents"] for a in m["dues"].values()) / 100 for m in months])
    c.add("sales", [sum(s["cents"] for s in m["sales"]) / 100 for m in months])
    return svg(c)


def activity_chart(rows: list[dict]) -> str:
    c = _chart("Line", "Active members at each month's end", show_legend=False, include_x_axis=True,
               value_formatter=lambda v: f"{v:.0f}")
    c.x_labels = [r["month"] for r in rows]
    c.add("active", [r["active"] for r in rows])
    return svg(c)


def sales_chart(months: list[dict]) -> tuple[str, list[dict]]:
    """Sales per machine and product over ``months`` (CAD): the chart and its rows."""
    totals: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
    for m in months:
        for s in m["sales"]:
            t = totals[s["machine"], s["product"]]
            t[0] += s["cents"]
            t[1] += s["sats"]
    rows = [{"machine": mc, "product": pr, "cents": t[0], "sats": t[1]}
            for (mc, pr), t in sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))]
    c = _chart("HorizontalBar", "Sales per machine and product (CAD)", show_legend=False,
               value_formatter=lambda v: f"{v:,.2f}", x_label_rotation=0)
    c.x_labels = [f"{r['machine']} / {r['product']}" for r in rows]
    c.add("sales", [r["cents"] / 100 for r in rows])
    return svg(c), rows


# -- the event log -----------------------------------------------------------------------------------

def latest_records(directory, n: int, keep=None, segments: int = SEGMENTS_READ) -> list[tuple[int, bytes]]:
    """The newest ``n`` records (``(seq, body)``, newest first) for which ``keep(body)`` is true,
    from the newest ``segments`` segments only (a page must not read the whole log)."""
    from actors.eventlog import read_records
    from actors.server.events import segments as log_segments

    bases = [base for base, _path in log_segments(directory)]
    found: list[tuple[int, bytes]] = []
    for i in range(len(bases) - 1, max(-1, len(bases) - 1 - segments), -1):
        stop = bases[i + 1] if i + 1 < len(bases) else None
        got: collections.deque = collections.deque(maxlen=n - len(found))
        try:
            for seq, body in read_records(directory, start_seq=bases[i]):
                if stop is not None and seq >= stop:
                    break
                if keep is None or keep(body):
                    got.append((seq, body))
        except FileNotFoundError:  # the directory went away
            break
        found.extend(reversed(got))
        if len(found) >= n:
            break
    return found[:n]


def _topic_of(body: bytes) -> bytes:
    from proto.wire import unpack

    try:
        return bytes(unpack(body)[1] or b"")
    except Exception:
        return b""


def topic_filter(prefix: str, with_health: bool):
    from proto.wire import prefix_frame

    want = prefix_frame(prefix) if prefix else b""

    def keep(body: bytes) -> bool:
        topic = _topic_of(body)
        if not with_health and topic.startswith(b"health."):
            return False
        return (topic if topic.endswith(b".") else topic + b".").startswith(want) if want else True
    return keep


def event_rows(home, n: int, prefix: str = "", with_health: bool = False) -> list[dict]:
    from actors.event_logger.queries import decode_record

    return [decode_record(seq, body) for seq, body in
            latest_records(home.events_dir, n, topic_filter(prefix, with_health))]


def health_rows(server: Server, now: float) -> list[dict]:
    """Every expected actor and machine with its judgement (actors/server/events.health, as
    ``/api/health``), in the keys the templates use."""
    from actors.server.events import health

    return [{**r, "judged": r["status"], "status": r["reported"], "seen": r["last_seen"], "age": r["age_s"]}
            for r in health(server.home, server.heartbeats().current(), now)]


# -- the pages ---------------------------------------------------------------------------------------

def needed_signatures(home) -> str | None:
    """"k of n" from [treasury] descriptor's sortedmulti(k, ...), or None."""
    spec = str((home.config.get("treasury") or {}).get("descriptor") or "")
    m = re.search(r"multi\((\d+),", spec)
    if not m:
        return None
    n = spec[m.end():].split(")")[0].count(",") + 1
    return f"{m[1]} of {n}"


DASHBOARD_RECENT_S = 2.0  # the dashboard may be this old (its tail and health too)


def install(app: bottle.Bottle, server: Server) -> None:
    lookup = [str(VIEWS)]

    def render(name: str, http_status: int = 200, **values):
        record = server.token()
        bottle.response.status = http_status
        bottle.response.content_type = "text/html; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-store")
        return bottle.template(name, template_lookup=lookup, token=record, nav=NAV, path=bottle.request.path,
                               **HELPERS, **values)

    def page(scope: str):
        """The request's token for a page of ``scope``: else to /login, or a 403 page."""
        record = server.token()
        if record is None:
            bottle.response.set_header("Cache-Control", "no-store")
            bottle.redirect("/login", 302)
        if scope not in record.scopes:
            body = render("forbidden", http_status=403, scope=scope, title="403 forbidden")
            answer = bottle.response.copy(cls=bottle.HTTPResponse)
            answer.body = body
            raise answer
        return server.need(scope)

    def today() -> datetime.date:
        return datetime.datetime.fromtimestamp(server.clock(), datetime.timezone.utc).date()

    def section(fn, *args, **kwargs):
        """A dashboard section's data, or the reason it is not there (a table not made yet)."""
        try:
            return server.read(fn, *args, **kwargs), None
        except bottle.HTTPError as err:
            if err.status_code != 503:
                raise
            return None, err.body

    @app.route("/static/<name:path>", ["GET"])
    def static(name):
        if not re.fullmatch(r"[A-Za-z0-9_-]+\.(css|js|png|svg|ico)", name):
            raise bottle.HTTPError(404, "not found")
        return bottle.static_file(name, root=str(STATIC))

    @app.route("/login", ["GET"])
    def login():
        return render("login", title="log in")

    @app.route("/logout", ["GET"])
    def logout():
        bottle.response.set_cookie(COOKIE, "", path="/", max_age=0, expires=0, samesite="strict")
        return render("logout", title="logged out")

    @app.route("/", ["GET"])
    def dashboard():
        record = page("public")
        # Many phones on one dashboard: drawn once per DASHBOARD_RECENT_S for each set of scopes.
        body = server.recent(("dashboard", record.scopes), DASHBOARD_RECENT_S, lambda: draw_dashboard(record))
        bottle.response.content_type = "text/html; charset=utf-8"  # (render sets them only when it draws)
        bottle.response.set_header("Cache-Control", "no-store")
        return body

    def draw_dashboard(record):
        from actors.reporter.reports import activity_rows, counts, income_rows, member_rows

        day = today()
        members, members_why = section(member_rows, day)
        activity, activity_why = section(activity_rows, day, 12)
        income, income_why = section(income_rows, day)
        charts = {}
        if income is not None:  # the last 12 months, those without income too
            months = [(day.year * 12 + day.month - 1 - i) for i in range(11, -1, -1)]
            by_month = {m["month"]: m for m in income}
            income = [by_month.get(key, {"month": key, "dues": {}, "sales": []})
                      for key in (f"{k // 12:04d}-{k % 12 + 1:02d}" for k in months)]
            charts["income"] = income_chart(income)
            charts["sales"], sales = sales_chart(income)
        else:
            sales = []
        if activity is not None:
            charts["activity"] = activity_chart(activity)
        extra: dict = {}
        if "finance" in record.scopes:
            from actors.business_mgr.queries import invoices
            from actors.payout_mgr.queries import payouts

            extra["payouts"], extra["payouts_why"] = section(payouts, limit=5)
            extra["invoices"], extra["invoices_why"] = section(invoices, limit=5)
        if "events" in record.scopes:
            extra["health"] = health_rows(server, server.clock())
            extra["events"] = event_rows(server.home, 10)
        return render("dashboard", title="dashboard", day=day, charts=charts, sales=sales,
                      status_counts=None if members is None else counts(members),
                      member_total=None if members is None else len(members), activity=activity,
                      why={"members": members_why, "activity": activity_why, "income": income_why}, **extra)

    @app.route("/members", ["GET"])
    def members_page():
        page("members")
        from actors.reporter.reports import counts, member_rows

        day = today()
        status = server.str_param("status", max_len=20)
        rows = server.read(member_rows, day)
        shown = [r for r in rows if status is None or r["status"] == status]
        return render("members", title="members", day=day, rows=shown, status=status, status_counts=counts(rows),
                      total=len(rows))

    @app.route("/invoices", ["GET"])
    def invoices_page():
        page("finance")
        from actors.business_mgr.queries import invoices_before

        before = server.int_param("before", 0, 0, 2**53) or None
        rows = server.read(invoices_before, before=before, limit=PAGE + 1)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        return render("invoices", title="invoices", rows=rows, before=before,
                      older=rows[-1]["invoice"] if more and rows else None)

    @app.route("/payouts", ["GET"])
    def payouts_page():
        page("finance")
        from actors.payout_mgr.ledger import DEFAULTS
        from actors.payout_mgr.queries import payouts

        number = server.int_param("page", 1, 1, 100_000)
        data = server.read(payouts, limit=PAGE + 1, offset=(number - 1) * PAGE)
        more = len(data["payouts"]) > PAGE
        approvals = (server.home.config.get("payouts") or {}).get("approvals", DEFAULTS["approvals"])
        return render("payouts", title="payouts", rows=data["payouts"][:PAGE], pending=data["pending"],
                      total=data["total"], number=number, more=more, approvals=approvals,
                      signatures=needed_signatures(server.home))

    @app.route("/events", ["GET"])
    def events_page():
        page("events")
        n = server.int_param("n", 100, 1, 500)
        prefix = server.str_param("topic", "", max_len=100)
        with_health = server.str_param("health", max_len=1) == "1"
        rows = event_rows(server.home, n, prefix, with_health)
        return render("events", title="events", rows=rows, n=n, prefix=prefix, with_health=with_health,
                      refresh=REFRESH_S, now=server.clock())

    @app.route("/health", ["GET"])
    def health_page():
        page("events")
        rows = health_rows(server, server.clock())
        return render("health", title="health", rows=rows, refresh=REFRESH_S, now=server.clock())


__all__ = ["install", "latest_records", "health_rows", "event_rows", "svg"]
