"""The Reporter: its actor on the fake runtime (SQLite and PostgreSQL), its closed-form fast path
against the core, `dctrl report` on a small fixture, and one run with real processes.

Members are made by MemberData itself (on the fake runtime, on the same database), so the
Reporter reads the tables as MemberData writes them. The clock is a FakeClock; the Reporter's
runs take their day as an argument (judge(now), snapshot(as_of)) or from that clock.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
from datetime import date, datetime, timedelta, timezone

import pytest

from actors.member_data.actor import MemberData
from actors.member_data.models import seal_personal
from actors.reporter.actor import Reporter
from actors.reporter.dues import (Adjustment, MemberBook, MemberHistory, Payment, PlanChange, Plans, PlanVersion)
from actors.reporter.fast import fast_state
from actors.reporter.models import ReportMemberStatus, ReportOutage, ReportSnapshot, ReportTransition
from actors.testing import FakeClock, FakeRuntime
from keys.registry import Registry
from tests.harness import Network, dctrl, home_on, wait_for
from tests.unit_db import empty, unit_home

D = date.fromisoformat
DAY = 86400.0
T0_DAY = date(2027, 1, 15)  # the FakeClock's first day (UTC)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("rep_unit") / "home", "rep_unit") as h:
        yield h


class World:
    """MemberData and the Reporter on fake runtimes, one clock, one database."""

    def __init__(self, home):
        self.home = home
        self.clock = FakeClock()
        self.md = FakeRuntime(MemberData(home, clock=self.clock.time), name="member_data", clock=self.clock,
                              home=home).start()
        self.public = Registry.load(home.registry_path).current("member_data").curve
        self.rep = None
        self.start_reporter()

    def start_reporter(self):
        if self.rep is not None:
            self.rep.stop()
        self.rep = FakeRuntime(Reporter(self.home, clock=self.clock.time, monotonic=self.clock.monotonic),
                               name="reporter", clock=self.clock, home=self.home).start()
        return self.rep

    @property
    def reporter(self) -> Reporter:
        return self.rep.actor

    def set_day(self, day: date):
        """Move the wall clock to noon of ``day`` (no jobs run: the tests call the runs)."""
        self.clock.wall = (day - T0_DAY).days * DAY + 1_800_000_000.0 + 12 * 3600

    def member_cmd(self, topic, **body):
        body = {"id": os.urandom(16), "expires": int(self.clock.time()) + 60, **body}
        self.md.send(topic, body, sender="admin")
        (ack,) = self.md.bodies("members.ack", id=body["id"])
        assert ack["status"] == "done", ack

    def plan(self, name="regular", cad="40.00", grace_days=30):
        self.member_cmd("cmd.members.plan_set", name=name, cad=cad, period="month", grace_days=grace_days,
                        confirmations=1)

    def add(self, handle, joined):
        self.member_cmd("cmd.members.add", handle=handle, plan="regular", joined=joined,
                        personal=seal_personal(self.public, name=handle.title(), email=f"{handle}@example.org"))

    def pay(self, handle, on, cad="40.00"):
        self.member_cmd("cmd.members.pay", handle=handle, cad=cad, method="cash", note="at the door", on=on,
                        txid_vout=None)

    def statuses(self, handle=None):
        """What the Reporter published on member.status, as (handle, on, previous, status)."""
        return [(b["handle"], b["on"], b["previous"], b["status"]) for b in self.rep.bodies("member.status")
                if handle is None or b["handle"] == handle]

    def send(self, topic, body, sender):
        self.rep.send(topic, body, sender=sender)

    def close(self):
        self.rep.stop()
        self.md.stop()


@pytest.fixture
def world(home):
    empty(home.database_url)
    w = World(home)
    yield w
    w.close()


def chain_health(status="ok", detail="backend bitcoind, tip 100, lag 0, watching 3"):
    return {"name": "chain_notifier", "role": "actor", "version": "t", "pid": 1, "uptime": 10, "interval": 5,
            "token_exp": None, "status": status, "detail": detail, "counters": {}}


STALE = {"reason": "1 fresh source of 2 needed", "fresh": 1, "needed": 2, "sources": []}
PRICE = {"cad_per_btc": "90000.00", "sources": [], "used": 2, "as_of": 1}


# -- the actor ---------------------------------------------------------------------------

def test_each_transition_is_published_once_also_across_a_restart(world):
    world.plan()  # 40.00 a month, 7 days' term (the core's default), 30 days' grace
    world.add("ada", "2027-01-15")
    world.set_day(D("2027-01-15"))
    assert world.reporter.judge(D("2027-01-14"))["published"] == 0  # not a member yet
    world.reporter.flush()
    assert world.statuses() == []
    world.reporter.judge(D("2027-01-20"))
    world.reporter.flush()
    assert world.statuses() == [("ada", "2027-01-15", None, "due")]
    world.reporter.judge(D("2027-01-20"))
    world.reporter.judge(D("2027-01-21"))
    world.start_reporter()  # a restart: a new Reporter on the same tables
    world.reporter.judge(D("2027-01-21"))
    world.reporter.flush()
    assert world.statuses() == []  # (the new runtime's record) nothing again
    world.reporter.judge(D("2027-02-25"))
    world.reporter.flush()
    assert world.statuses() == [("ada", "2027-01-22", "due", "overdue"), ("ada", "2027-02-21", "overdue", "lapsed")]
    db = world.reporter.database
    assert [(t.on, t.status) for t in ReportTransition.select().order_by(ReportTransition.id).bind(db)] == [
        ("2027-01-15", "due"), ("2027-01-22", "overdue"), ("2027-02-21", "lapsed")]
    row = ReportMemberStatus.select().bind(db).get()
    assert (row.status, row.on, row.judged_through) == ("lapsed", "2027-02-21", "2027-02-25")


def test_an_event_recorded_but_not_sent_goes_out_after_a_restart_once(world):
    world.plan()
    world.add("bob", "2027-01-15")
    world.rep.connected = False  # no broker: the outbox keeps the event
    world.reporter.judge(D("2027-01-16"))
    world.reporter.flush()
    assert world.statuses() == []
    world.start_reporter()
    world.reporter.flush()
    world.reporter.judge(D("2027-01-16"))
    world.reporter.flush()
    assert world.statuses() == [("bob", "2027-01-15", None, "due")]


def test_price_stale_holds_the_overdue_then_a_payment_made_meanwhile_counts(world):
    world.plan()
    world.add("ada", "2027-01-15")
    world.add("cyd", "2027-01-15")
    world.set_day(D("2027-01-16"))
    world.reporter.judge(D("2027-01-16"))
    world.reporter.flush()
    assert len(world.statuses()) == 2  # both due from the 15th
    world.set_day(D("2027-01-20"))
    world.send("price.stale", STALE, sender="price_notifier")  # the price feed breaks on the 20th
    world.send("price.stale", STALE, sender="price_notifier")  # (news that is not new: nothing written)
    world.start_reporter()  # a restart during the outage: it is still open
    world.set_day(D("2027-01-25"))
    j = world.reporter.judge(D("2027-01-24"))
    world.reporter.flush()
    assert world.statuses() == [] and j["held"] == 2  # overdue on the 22nd: not while the feed is down
    world.pay("ada", on="2027-01-21")  # paid during the outage, entered late
    world.set_day(D("2027-01-26"))
    world.send("price.btc_cad", PRICE, sender="price_notifier")  # back on the 26th (its last bad day)
    assert [(o.feed, o.start, o.end) for o in ReportOutage.select().bind(world.reporter.database)] == [
        ("price", "2027-01-20", "2027-01-26")]
    world.reporter.judge(D("2027-01-26"))
    world.reporter.flush()
    assert world.statuses() == []  # the 26th is not over: still held
    world.set_day(D("2027-01-27"))
    world.reporter.judge(D("2027-01-27"))
    world.reporter.flush()
    assert sorted(world.statuses()) == [("ada", "2027-01-21", "due", "current"),  # dated the day it happened
                                        ("cyd", "2027-01-22", "due", "overdue")]


def test_chain_notifier_behind_or_silent_is_an_outage(world):
    world.plan()
    world.add("ada", "2027-01-15")
    world.reporter.judge(D("2027-01-16"))
    world.reporter.flush()
    world.set_day(D("2027-01-21"))
    world.send("health.chain_notifier", chain_health(detail="backend bitcoind, tip 90, lag 10, watching 3"),
               sender="chain_notifier")
    world.set_day(D("2027-01-23"))
    world.rep.take()
    assert world.reporter.judge(D("2027-01-22"))["held"] == 1
    world.send("health.chain_notifier", chain_health(), sender="chain_notifier")  # caught up on the 23rd
    world.set_day(D("2027-01-24"))
    world.reporter.judge(D("2027-01-24"))
    world.reporter.flush()
    assert world.statuses() == [("ada", "2027-01-22", "due", "overdue")]
    # silent: no heartbeat for chain_timeout seconds opens an outage
    world.rep.advance(world.reporter.cfg["chain_timeout"] + 10)
    assert [(o.feed, o.end) for o in world.reporter.outages()][-1] == ("chain", None)


def test_a_backdated_payment_after_a_published_transition_is_corrected(world):
    world.plan()
    world.add("dee", "2027-01-15")
    world.reporter.judge(D("2027-01-25"))
    world.pay("dee", on="2027-01-20")  # recorded on the 26th, paid on the 20th
    world.reporter.judge(D("2027-01-26"))
    world.reporter.flush()
    assert world.statuses() == [("dee", "2027-01-15", None, "due"), ("dee", "2027-01-22", "due", "overdue"),
                                ("dee", "2027-01-25", "overdue", "current")]


def test_a_plans_term_days_sets_when_its_dues_are_overdue(world):
    """MemberData's plan term (cmd.members.plan_set term_days) is the core's: due_on = start + term."""
    from actors.reporter.reports import member_report

    for name, term in (("prompt", 0), ("fortnight", 14), ("regular", None)):  # None: the default, 7
        world.member_cmd("cmd.members.plan_set", name=name, cad="40.00", period="month", grace_days=30,
                         confirmations=1, **({} if term is None else {"term_days": term}))
    for handle, plan in (("amy", "prompt"), ("bea", "fortnight"), ("cal", "regular")):
        world.member_cmd("cmd.members.add", handle=handle, plan=plan, joined="2027-01-15",
                         personal=seal_personal(world.public, name=handle.title(), email=f"{handle}@example.org"))
    db = world.reporter.database
    assert {h: member_report(db, h, D("2027-01-15"))["first_unpaid"]["due_on"] for h in ("amy", "bea", "cal")} == {
        "amy": "2027-01-15", "bea": "2027-01-29", "cal": "2027-01-22"}
    world.reporter.judge(D("2027-01-31"))
    world.reporter.flush()
    assert sorted(world.statuses()) == [
        ("amy", "2027-01-15", None, "overdue"),  # a term of 0: overdue from the period's first day
        ("bea", "2027-01-15", None, "due"), ("bea", "2027-01-29", "due", "overdue"),
        ("cal", "2027-01-15", None, "due"), ("cal", "2027-01-22", "due", "overdue")]


def test_on_demand_commands_are_answered_and_snapshots_stored(world):
    world.plan()
    world.add("ada", "2027-01-01")
    world.pay("ada", on="2027-01-01", cad="80.00")
    world.set_day(D("2027-01-15"))
    cid = os.urandom(16)
    world.send("cmd.report.member", {"id": cid, "expires": int(world.clock.time()) + 60, "handle": "ada",
                                     "as_of": "2027-01-15"}, sender="admin")
    (ack,) = world.rep.bodies("report.ack", id=cid)
    assert ack["status"] == "done"
    assert (ack["result"]["status"], ack["result"]["paid_through"], ack["result"]["balance_cents"]) == (
        "prepaid", "2027-02-28", 4000)
    cid = os.urandom(16)
    world.send("cmd.report.member", {"id": cid, "expires": int(world.clock.time()) + 60, "handle": "nobody",
                                     "as_of": None}, sender="admin")
    assert world.rep.bodies("report.ack", id=cid)[0]["reason"] == "unknown member nobody"
    cid = os.urandom(16)
    world.send("cmd.report.run", {"id": cid, "expires": int(world.clock.time()) + 60, "as_of": None}, sender="admin")
    (ack,) = world.rep.bodies("report.ack", id=cid)
    assert ack["status"] == "done" and ack["result"]["counts"] == {"prepaid": 1}
    assert world.rep.last("report.members") ["counts"] == {"prepaid": 1}
    assert world.rep.last("report.income")["months"] == [
        {"month": "2027-01", "dues_cents": 8000, "dues_sats": 0, "sales_cents": 0, "sales_sats": 0}]
    snaps = {s.kind: json.loads(s.body) for s in ReportSnapshot.select().bind(world.reporter.database)}
    assert snaps["members"][0]["status"] == "prepaid" and snaps["income"][0]["dues"]["cash"]["cents"] == 8000
    assert world.statuses() == [("ada", "2027-01-01", None, "prepaid")]
    cid = os.urandom(16)  # expired
    world.send("cmd.report.run", {"id": cid, "expires": int(world.clock.time()) - 1, "as_of": None}, sender="admin")
    assert world.rep.bodies("report.ack", id=cid)[0]["status"] == "refused"
    # a run folds what has settled into the kept totals (actors/reporter/totals.py); the reports stay the same
    from actors.reporter.reports import member_rows
    from actors.reporter.totals import cursor, kept_rows

    db = world.reporter.database
    before = member_rows(db, D("2027-01-16"))
    world.set_day(D("2027-01-16"))
    world.reporter.run()
    assert cursor(db).payment > 0 and cursor(db).fact > 0
    assert list(kept_rows(db, D("2027-01-16"))[0]) == ["ada"]
    assert member_rows(db, D("2027-01-16")) == before


# -- the fast path agrees with the core ---------------------------------------------------

def test_the_closed_form_agrees_with_the_core_on_random_histories():
    rnd = random.Random(12)
    used = 0
    for _ in range(3000):
        plans = Plans((PlanVersion("p", rnd.choice([1, 1000, 4000, 3333]), rnd.choice(["month", "quarter", "year"]),
                                   rnd.choice([0, 3, 30]), term_days=rnd.choice([0, 7, 40])),))
        joined = date(2024, 1, 1) + timedelta(days=rnd.randrange(800))  # month ends, leap days included
        pays = tuple(Payment(joined + timedelta(days=rnd.randrange(-5, 900)), rnd.choice([1000, 4000, 500, 12000]))
                     for _ in range(rnd.randrange(6)))
        adjs = tuple(Adjustment(joined + timedelta(days=rnd.randrange(900)), rnd.choice([-1000, 500]))
                     for _ in range(rnd.randrange(2)))
        h = MemberHistory("a", joined, (PlanChange(joined, "p"),), pays, adjs)
        as_of = joined + timedelta(days=rnd.randrange(1200))
        fast = fast_state(h, plans, as_of)
        if fast is not None:
            used += 1
            assert fast == MemberBook(h, plans).state(as_of), (h, as_of)
    assert used > 2500
    # not the simple case: the core answers
    h = MemberHistory("a", D("2025-01-31"), (PlanChange(D("2025-01-31"), "p"),), leaves=(D("2025-03-01"),))
    assert fast_state(h, Plans((PlanVersion("p", 4000, "month", 30),)), D("2025-04-01")) is None


# -- the CLI -----------------------------------------------------------------------------

def run_cli(capsys, *argv):
    from scripts.cli import main

    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_cli_reports_members_income_and_one_member_as_json_and_csv(world, capsys):
    world.plan()
    world.add("ada", "2027-01-31")
    world.add("bob", "2027-01-31")
    world.pay("ada", on="2027-01-31", cad="40.00")
    world.pay("ada", on="2027-02-10", cad="40.00")
    root = str(world.home.root)
    rows = json.loads(run_cli(capsys, "report", "members", "--home", root, "--as-of", "2027-03-05", "--json"))
    assert [(r["handle"], r["status"], r["paid_through"], r["balance_cents"]) for r in rows] == [
        ("ada", "current", "2027-03-30", 0),  # joined on the 31st: February's period starts on the 28th
        ("bob", "overdue", "2027-01-30", -8000)]  # due on Feb 7, lapses on Mar 9
    out = run_cli(capsys, "report", "members", "--home", root, "--as-of", "2027-03-05", "--csv")
    assert list(csv.reader(io.StringIO(out))) == [
        ["handle", "status", "paid_through", "balance_cad", "next_charge", "next_charge_cad"],
        ["ada", "current", "2027-03-30", "0.00", "2027-03-31", "40.00"],
        ["bob", "overdue", "2027-01-30", "-80.00", "2027-03-31", "40.00"]]
    one = json.loads(run_cli(capsys, "report", "member", "ada", "--home", root, "--as-of", "2027-02-01", "--json"))
    assert (one["status"], one["paid_through"], one["first_unpaid"]["start"]) == ("current", "2027-02-27",
                                                                                    "2027-02-28")
    income = json.loads(run_cli(capsys, "report", "income", "--home", root, "--as-of", "2027-03-05", "--json"))
    assert [(m["month"], m["dues"]["cash"]["cents"]) for m in income] == [("2027-01", 4000), ("2027-02", 4000)]
    out = run_cli(capsys, "report", "income", "--home", root, "--as-of", "2027-01-31", "--csv")
    assert out == "month,kind,what,sats,cad\n2027-01,dues,cash,0,40.00\n"


@pytest.mark.parametrize("ack, rc, said", [
    ({"status": "refused", "reason": "command expired", "result": None}, 2, "the reporter refused: command expired"),
    ({"status": "done", "reason": None, "result": {"as_of": "2027-01-15",
                                                   "waiting": "member_data has not made its tables yet"}},
     2, "the reporter did not run: member_data has not made its tables yet"),
    (None, 2, "no answer from the reporter within 0.5 s"),
])
def test_report_run_says_why_when_the_reporter_refuses_waits_or_is_silent(tmp_path, monkeypatch, capsys, ack, rc,
                                                                         said):
    """`dctrl report run`'s answers other than a run (the real Reporter's run: the test below)."""
    import actors.runtime
    from scripts.cli import main
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    sent = []

    class Answering:  # the runtime stand-in: the command is "sent" and answered (or not) at once
        def __init__(self, actor, settings):
            self.actor = actor

        def run(self, handle_signals=True):
            for topic, body in self.actor.commands:
                sent.append((topic, body))
                if ack is not None:
                    self.actor.acks[body["id"]] = {"id": body["id"], **ack}
    monkeypatch.setattr(actors.runtime, "Runtime", Answering)
    assert main(["report", "run", "--home", str(home.root), "--as-of", "2027-01-15", "--timeout", "0.5"]) == rc
    assert said in capsys.readouterr().err
    assert [(t, b["as_of"]) for t, b in sent] == [("cmd.report.run", "2027-01-15")]


# -- real processes ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_members_add_and_pay_then_report_member_shows_current(tmp_path, database):
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(home_on(database, tmp_path / "home", "rep_int"))
        net = stack.enter_context(contextlib.closing(Network(home)))
        net.start_healthy("broker", "vault", "member_data", "reporter")
        dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
        dctrl(home, "members", "add", "ada", "--name", "Ada Lovelace", "--email", "ada@example.org",
              "--plan", "regular")
        dctrl(home, "members", "pay", "ada", "--cad", "40.00", "--method", "cash", "--note", "at the door")

        def shown():
            r = dctrl(home, "report", "member", "ada", "--json", check=False)
            return json.loads(r.stdout) if r.returncode == 0 else None
        found = wait_for(lambda: (shown() or {}).get("status") == "current" and shown(), what="ada current")
        today = datetime.now(timezone.utc).date()
        # joined and paid today: the period runs to the day before the same day next month
        from actors.reporter.dues import add_months
        assert found["paid_through"] == (add_months(today, 1) - timedelta(days=1)).isoformat()
        listed = json.loads(dctrl(home, "members", "list", "--status", "current", "--json").stdout)
        assert [(m["handle"], m["status"]) for m in listed] == [("ada", "current")]
        assert json.loads(dctrl(home, "members", "list", "--status", "lapsed", "--json").stdout) == []
        assert "status:  current (paid through " in dctrl(home, "members", "show", "ada").stdout
        assert net.alive("reporter")

        # `dctrl report run`: cmd.report.run to the running Reporter, its counts printed
        result = json.loads(dctrl(home, "report", "run", "--as-of", today.isoformat(), "--json").stdout)
        assert (result["as_of"], result["members"], result["counts"]) == (today.isoformat(), 1, {"current": 1})
        assert result["judged_through"] == (today - timedelta(days=1)).isoformat()
        assert "1 member(s): 1 current" in dctrl(home, "report", "run").stdout
        from actors.db import connect
        db = connect(home.database_url)
        try:
            (n,) = db.execute_sql("SELECT COUNT(*) FROM report_snapshot WHERE kind = 'members' AND as_of = "
                                  + ("%s" if database == "postgresql" else "?"), (today.isoformat(),)).fetchone()
        finally:
            db.close()
        assert n == 1
        # no Reporter: a clear error and a non-zero exit once the deadline has passed
        net.signal("reporter")
        r = dctrl(home, "report", "run", "--timeout", "2", check=False)
        assert r.returncode != 0 and "no answer from the reporter within 2 s" in r.stderr, (r.stdout, r.stderr)


def test_income_counts_vending_sales_by_machine_and_product_in_their_month(world):
    from actors.business_mgr.models import TABLES as SALES_TABLES, SalesInvoice
    from actors.db import ensure_tables
    from actors.reporter.reports import income_rows

    db = world.reporter.database
    with db.bind_ctx(SALES_TABLES):
        ensure_tables(db, SALES_TABLES)
        jan31 = int(datetime(2027, 1, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp())  # its last second (UTC)
        for product, items, vended, paid_at in (("cola", 2, 2, jan31), ("cola", 2, 1, jan31 + 1),
                                                ("chips", 1, 0, jan31), ("chips", 1, 1, None)):
            SalesInvoice.create(mode="invoice", machine="vm1", slot=1, product=product, price_cents=350, items=items,
                                due_sats=1000 * items, address="bc1q", state="vended", created=jan31, expires=jan31,
                                paid_at=paid_at, vended=vended)
    world.plan()
    world.add("ada", "2027-01-15")
    world.pay("ada", on="2027-02-01")
    rows = income_rows(db, D("2027-02-28"))
    assert [(m["month"], m["sales"], m["dues"]) for m in rows] == [
        ("2027-01", [{"machine": "vm1", "product": "cola", "sats": 2000, "cents": 700}], {}),
        ("2027-02", [{"machine": "vm1", "product": "cola", "sats": 1000, "cents": 350}],
         {"cash": {"sats": 0, "cents": 4000}})]
    assert [m["month"] for m in income_rows(db, D("2027-01-31"))] == ["2027-01"]


def test_runs_are_scheduled_daily_and_wait_for_member_data_tables(tmp_path):
    from actors.db import connect
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    database = connect(f"sqlite:///{tmp_path}/empty.sqlite3")
    clock = FakeClock()
    rep = FakeRuntime(Reporter(home, database=database, clock=clock.time, monotonic=clock.monotonic),
                      name="reporter", clock=clock, home=home).start()
    (job,) = rep.actor.scheduler.jobs
    assert (job.unit, job.at_time.strftime("%H:%M")) == ("days", "00:05")
    assert rep.actor.run()["waiting"] == "member_data has not made its tables yet"
    rep.advance(5)  # the tick runs too, without an error
    assert rep.errors == []
    rep.stop()
    database.close()


def test_bench_members_reports_each_measure_and_its_baseline():
    from actors.db import connect
    from scripts.bench.members import measure

    database = connect("sqlite:///:memory:")
    out = measure(database, 60, 1, sales=120)
    assert out["sales"] == 120 and out["sales_cents"] == 10 * sum(150 + 25 * i for i in range(12))
    assert out["members"] == 60 and out["payments"] == 60 * 60 - 2 * 12  # two of them stopped a year ago
    assert out["counts"]["current"] >= 50 and out["counts"].get("lapsed") == 2
    for key in ("full_status_ms", "full_status_computed_ms", "baseline_ms", "one_member_ms", "income_ms",
                "income_baseline_ms", "activity_ms", "groups_ms"):
        assert out[key] > 0
    assert out["ratio"] == round(out["full_status_ms"] / out["baseline_ms"], 2)
    # the Reporter's fold on the bench's day kept the rows of all but the members with money dated later
    assert out["fold_first_states"] == 60  # (m00020 and m00040 pay a month late: kept until their next payment)
    assert out["behind"]["payments"] == 2 and out["behind"]["full_status_ms"] > 0
    # the one-pass, summed, closed-form path gives what the core gives from every row
    from actors.reporter.inputs import load
    from actors.reporter.reports import member_rows

    as_of = D(out["as_of"])
    # activity from the kept totals and the months summed by the database, as the pure functions say
    from actors.reporter.business import active_members

    full = load(database, as_of)
    assert out["activity_active"] == list(active_members(full.histories, full.plans, D("2025-01-01"), as_of).values())
    assert out["activity_active"][-1] == 58 and out["groups"] == {"keyholders": 0}  # (no group keys in the bench)
    for day in (as_of, as_of - timedelta(days=400), D("2021-01-15")):
        full = load(database, day)
        assert full.simple == [] and len(full.histories) == 60
        assert member_rows(database, day) == sorted((MemberBook(h, full.plans).state(day).summary()
                                                     for h in full.histories), key=lambda r: r["handle"])
