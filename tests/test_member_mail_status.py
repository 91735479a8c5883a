"""MemberMail's status-driven mails (overdue, lapsed, reinstated on the Reporter's member.status),
its daily reminders and monthly statements, and the member's opt-out: the actors on the fake
runtime (actors/testing.py) on SQLite and PostgreSQL, with MemberData's own commands writing the
members and a real SMTP server on loopback (tests/smtp_sink.py); and one test of real processes
(broker, Vault, member_data, member_mail, reporter) where the Reporter's transition, published
from an old database's history, comes out as one overdue mail at the server.

Days are set on the fake clocks (never slept); waits are predicates with a deadline.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone

import pytest

from actors.member_data.actor import MemberData
from actors.member_data.models import seal_personal
from actors.member_mail import context
from actors.member_mail.actor import MemberMail
from actors.member_mail.models import MailCursor, MailOutbox
from actors.reporter.actor import Reporter
from actors.testing import FakeClock, FakeRuntime
from keys.registry import Registry
from tests.harness import Network, dctrl, home_on, wait_for
from tests.smtp_sink import SmtpSink
from tests.unit_db import empty, unit_home

FROM = "DCTRL <members@dctrl.test>"
DAY = 86400
EPOCH_DAY = date(1970, 1, 1)


def noon(day: date) -> float:
    return (day - EPOCH_DAY).days * DAY + 12 * 3600.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("mm_status") / "home", "mm_status") as h:
        yield h


class Space:
    """MemberData and MemberMail (and, when asked, the Reporter) on fake runtimes, one clock."""

    def __init__(self, home, sink, today=date(2027, 1, 15), **config):
        self.home, self.sink = home, sink
        self.clock = FakeClock(wall=noon(today))
        self.md = FakeRuntime(MemberData(home, clock=self.clock.time), name="member_data", clock=self.clock,
                              home=home).start()
        self.public = Registry.load(home.registry_path).current("member_data").curve
        self.config = {"smtp_port": sink.port, "from": FROM, **config}
        self.mm = None
        self.rep = None
        self.command("cmd.members.plan_set", name="regular", cad="40.00", period="month", grace_days=30,
                     confirmations=1)

    def start_mail(self):
        if self.mm is not None:
            self.mm.stop()
        self.mm = FakeRuntime(MemberMail(self.home, clock=self.clock.time, config=self.config), name="member_mail",
                              clock=self.clock, home=self.home).start()
        return self.mm

    @property
    def mail(self) -> MemberMail:
        return self.mm.actor

    def set_day(self, day: date):
        self.clock.wall = noon(day)

    def command(self, topic, **body):
        body = {"id": os.urandom(16), "expires": int(self.clock.time()) + 60, **body}
        self.md.send(topic, body, sender="admin")
        (ack,) = self.md.bodies("members.ack", id=body["id"])
        assert ack["status"] == "done", ack
        self.md.take()  # (member.changed: these tests are not about welcomes and receipts)

    def add(self, handle, joined):
        self.command("cmd.members.add", handle=handle, plan="regular", joined=joined.isoformat(),
                     personal=seal_personal(self.public, name=handle.title(), email=f"{handle}@example.org"))

    def pay(self, handle, on, cad="40.00"):
        self.command("cmd.members.pay", handle=handle, cad=cad, method="cash", note="at the door",
                     on=on.isoformat(), txid_vout=None)

    def opt(self, handle, opt_out=None, opt_in=None):
        self.command("cmd.members.set", handle=handle, personal=seal_personal(self.public, name=None, email=None),
                     opt_out=opt_out, opt_in=opt_in)

    def status(self, handle, previous, status, on):
        """The Reporter's member.status event, delivered to member_mail."""
        self.mm.send("member.status", {"event_id": os.urandom(32).hex(), "handle": handle, "status": status,
                                       "previous": previous, "on": on.isoformat()}, sender="reporter")

    def rows(self, **where):
        """The outbox's rows of the kinds these tests are about (not the welcomes and receipts
        member_mail's catch-up queues for the members and payments the test adds)."""
        q = (MailOutbox.select().where(MailOutbox.kind.not_in(["welcome", "receipt"])).order_by(MailOutbox.id)
             .bind(self.mail.database))
        return [r for r in q if all(getattr(r, k) == v for k, v in where.items())]

    def keys(self, kind=None):
        return [(r.kind, r.handle, r.period) for r in self.rows() if kind is None or r.kind == kind]

    def sent(self, handle, subject_part):
        return [m for m in self.sink.to(f"{handle}@example.org") if subject_part in m["Subject"]]

    def close(self):
        for rt in (self.rep, self.mm, self.md):
            if rt is not None:
                rt.stop()


@pytest.fixture
def space(home):
    empty(home.database_url)
    with SmtpSink() as sink:
        sink.start()
        s = Space(home, sink)
        s.start_mail()
        try:
            yield s
        finally:
            s.close()


# -- status mails ----------------------------------------------------------------------------

def test_an_overdue_transition_is_mailed_once_also_after_a_restart_and_a_new_one_again(space):
    space.add("ada", date(2026, 12, 20))  # never paid: due 12-20, overdue from 12-27, lapses 2027-01-26
    space.status("ada", "due", "overdue", date(2027, 1, 14))
    (row,) = space.rows(kind="overdue")
    assert (row.handle, row.period) == ("ada", "2027-01-14")
    (msg,) = wait_for(lambda: space.sent("ada", "overdue"), what="the overdue mail at the server")
    text = msg.get_body(("plain",)).get_content()
    assert msg["Subject"] == "DCTRL: your dues are overdue"
    assert "were due on 2026-12-20; 40.00 CAD is outstanding" in text and "pay at the space" in text
    # the same transition again (redelivered, the Reporter's outbox resending), and after a restart
    space.status("ada", "due", "overdue", date(2027, 1, 14))
    space.start_mail()
    space.status("ada", "due", "overdue", date(2027, 1, 14))
    space.mm.advance(60)  # (the catch-up too)
    assert space.keys() == [("overdue", "ada", "2027-01-14")]
    # a later transition into overdue is a new one: mailed again
    space.status("ada", "due", "overdue", date(2027, 1, 15))
    assert space.keys() == [("overdue", "ada", "2027-01-14"), ("overdue", "ada", "2027-01-15")]
    space.mm.wait_for(lambda: len(space.mm.bodies("mail.sent", kind="overdue")) == 1, what="the second sent")
    assert len(space.sent("ada", "overdue")) == 2


def test_old_transitions_are_skipped_and_logged(space, caplog):
    caplog.set_level("INFO")
    space.add("ada", date(2026, 12, 20))
    space.status("ada", "due", "overdue", date(2027, 1, 11))  # 4 days ago: history, or published late
    assert space.rows() == []
    assert "transition due -> overdue is dated 2027-01-11, 4 days ago" in caplog.text
    space.status("ada", "due", "overdue", date(2027, 1, 12))  # 3 days: status_max_age_days
    assert space.keys() == [("overdue", "ada", "2027-01-12")]


def test_lapsed_then_reinstated_and_what_is_not_mailed(space):
    space.add("ada", date(2026, 11, 1))  # never paid: lapsed since 12-08 (due 11-08 + 30 days' grace)
    space.status("ada", "overdue", "lapsed", date(2027, 1, 14))
    (row,) = space.rows(kind="lapsed")
    assert row.period == "2027-01-14"
    msg = wait_for(lambda: space.sent("ada", "lapsed"), what="the lapsed mail")[0]
    assert "lapsed on 2027-01-14" in msg.get_body(("plain",)).get_content()
    # pays 4 periods (11-01 .. 02-01): prepaid; the Reporter's lapsed -> prepaid is "reinstated"
    space.pay("ada", date(2027, 1, 15), cad="160.00")
    space.status("ada", "lapsed", "prepaid", date(2027, 1, 15))
    (row,) = space.rows(kind="reinstated")
    assert row.period == "2027-01-15"
    msg = wait_for(lambda: space.sent("ada", "welcome back"), what="the reinstated mail")[0]
    assert "paid through 2027-02-28" in msg.get_body(("plain",)).get_content()
    # an overdue event for a member who has paid since: no mail (the state now says so)
    space.status("ada", "due", "overdue", date(2027, 1, 14))
    # no mail for the other transitions: overdue -> current (never lapsed), joining, due, current
    space.add("bob", date(2026, 12, 20))
    space.status("bob", "overdue", "current", date(2027, 1, 15))
    space.status("bob", None, "due", date(2027, 1, 15))
    space.status("bob", "due", "current", date(2027, 1, 15))
    assert sorted(space.keys()) == [("lapsed", "ada", "2027-01-14"), ("reinstated", "ada", "2027-01-15")]


def test_a_status_from_member_data_is_ignored(space):
    space.add("ada", date(2026, 12, 20))
    space.mm.send("member.status", {"event_id": os.urandom(32).hex(), "handle": "ada", "status": "overdue",
                                    "previous": "due", "on": "2027-01-14"}, sender="member_data")
    assert space.rows() == []


def test_a_reporter_on_an_old_database_publishes_history_and_only_the_recent_transition_is_mailed(space):
    """The real Reporter, first started on a database with members of long ago: it publishes every
    transition of each one's history, dated; member_mail mails the one of yesterday. The
    transitions missed while member_mail was away are read from report_transition."""
    space.add("ada", date(2026, 11, 1))  # lapsed 2026-12-08
    space.add("carol", date(2027, 1, 7))  # overdue on 2027-01-14 (due_on: 7 days' term)
    space.rep = FakeRuntime(Reporter(space.home, clock=space.clock.time, monotonic=space.clock.monotonic),
                            name="reporter", clock=space.clock, home=space.home).start()
    space.rep.actor.run()
    published = [(b["handle"], b["previous"], b["status"], b["on"]) for b in space.rep.bodies("member.status")]
    assert ("ada", "overdue", "lapsed", "2026-12-08") in published
    assert ("carol", "due", "overdue", "2027-01-14") in published
    for body in space.rep.bodies("member.status"):
        space.mm.send("member.status", body, sender="reporter")
    assert space.keys() == [("overdue", "carol", "2027-01-14")]
    # member_mail away; the next day's run publishes carol's nothing, dan's first transitions
    space.mm.stop()
    space.mm = None
    space.add("dan", date(2026, 12, 19))  # recorded late: overdue since 12-26, a new transition for the Reporter
    space.set_day(date(2027, 1, 16))
    space.add("eve", date(2027, 1, 8))  # overdue on 2027-01-15
    space.rep.actor.run()
    assert ("eve", "due", "overdue", "2027-01-15") in [
        (b["handle"], b["previous"], b["status"], b["on"]) for b in space.rep.bodies("member.status")]
    space.start_mail()  # never heard those events: the catch-up from report_transition finds them
    assert sorted(space.keys()) == [("overdue", "carol", "2027-01-14"), ("overdue", "eve", "2027-01-15")]
    cursor = MailCursor.get_by_id("report_transition")
    assert cursor.last_id > 0
    space.mm.advance(60)
    assert len(space.rows()) == 2


def test_the_first_start_does_not_mail_the_transitions_already_recorded(home):
    empty(home.database_url)
    with SmtpSink() as sink:
        s = Space(home, sink)
        try:
            s.add("carol", date(2027, 1, 7))
            s.rep = FakeRuntime(Reporter(home, clock=s.clock.time, monotonic=s.clock.monotonic), name="reporter",
                                clock=s.clock, home=home).start()
            s.rep.actor.run()  # carol's overdue of yesterday recorded before member_mail ever ran
            s.start_mail()
            s.mm.advance(60)
            assert s.rows() == []
        finally:
            s.close()


# -- reminders and statements ----------------------------------------------------------------

def test_a_reminder_n_days_before_a_period_once_per_period_at_month_ends(space):
    space.add("dan", date(2026, 12, 20))
    space.pay("dan", date(2026, 12, 20))  # covers 12-20 .. 01-19: next charge 01-20, in 5 days
    space.add("eve", date(2026, 12, 25))
    space.pay("eve", date(2026, 12, 25))  # next 01-25, in 10 days: not yet
    space.add("may", date(2026, 10, 31))  # the 31st: 10-31, 11-30, 12-31, 01-31, 02-28
    space.pay("may", date(2026, 10, 31), cad="120.00")  # covers up to 01-30
    space.add("owe", date(2026, 12, 20))  # behind already: overdue mails speak, no reminder
    today = date(2027, 1, 15)
    assert space.mail.daily(today) == 1
    (row,) = space.rows(kind="reminder")
    assert (row.handle, row.period) == ("dan", "2027-01-20")
    msg = wait_for(lambda: space.sent("dan", "due in"), what="dan's reminder")[0]
    assert msg["Subject"] == "DCTRL: your dues are due in 5 days"
    assert "40.00 CAD are due on 2027-01-20" in msg.get_body(("plain",)).get_content()
    for part in ("plain", "html"):  # the member may turn these off: said once in each part
        assert msg.get_body((part,)).get_content().count("turn off these reminder mails") == 1, part
    # the job twice the same day, the next day, and after a restart: nothing new for dan
    assert space.mail.daily(today) == 0
    assert space.mail.reminders(today) == 0
    space.start_mail()
    assert space.mail.daily(today + timedelta(days=1)) == 0
    # eve 7 days before; the clock's own job (every 5 minutes, looks at the day)
    space.set_day(date(2027, 1, 18))
    space.mm.advance(300)
    assert sorted(space.keys("reminder")) == [("reminder", "dan", "2027-01-20"), ("reminder", "eve", "2027-01-25")]
    # may's period of the 31st, then of 28 February (the month's last day)
    assert space.mail.daily(date(2027, 1, 23)) == 0  # 8 days before 01-31
    assert space.mail.daily(date(2027, 1, 24)) == 1  # 7 days before
    space.pay("may", date(2027, 1, 30))
    assert space.mail.daily(date(2027, 2, 20)) == 0  # 8 days before 02-28
    assert space.mail.daily(date(2027, 2, 21)) == 1
    assert [r.period for r in space.rows(kind="reminder", handle="may")] == ["2027-01-31", "2027-02-28"]
    assert space.keys("overdue") == [] and not space.rows(handle="owe")


def test_opted_out_reminders_and_statements_are_skipped_never_status_mail_and_opt_in_again(space):
    space.add("dan", date(2026, 12, 20))
    space.pay("dan", date(2026, 12, 20))
    space.opt("dan", opt_out=["reminder", "statement"])
    assert context.members.member(space.mail.database, "dan")["mail_opt_out"] == ["reminder", "statement"]
    space.mail.daily(date(2027, 1, 15))
    space.mail.statements(date(2027, 2, 1))
    space.mm.wait_for(lambda: {r.state for r in space.rows()} == {"skipped"} and len(space.rows()) == 2,
                      what="both skipped")
    assert sorted(space.keys()) == [("reminder", "dan", "2027-01-20"), ("statement", "dan", "2027-01")]
    # status mails are not theirs to turn off
    space.set_day(date(2027, 1, 28))  # dan owes the period of 01-20: overdue from 01-27
    space.status("dan", "due", "overdue", date(2027, 1, 27))
    wait_for(lambda: space.sent("dan", "overdue"), what="the overdue mail despite the opt-out")
    # back in to statements: next month's goes; reminders still off
    space.opt("dan", opt_in=["statement"])
    assert context.members.member(space.mail.database, "dan")["mail_opt_out"] == ["reminder"]
    space.mail.statements(date(2027, 3, 1))
    wait_for(lambda: space.sent("dan", "statement for 2027-02"), what="the February statement")
    assert space.sink.to("dan@example.org") and not space.sent("dan", "due in")
    space.mm.wait_for(lambda: {r.period: r.state for r in space.rows(kind="statement")} == {
        "2027-01": "skipped", "2027-02": "sent"}, what="January's skipped, February's sent")


def test_monthly_statement_for_the_previous_month_once(space):
    space.add("ada", date(2026, 12, 20))
    space.pay("ada", date(2026, 12, 20))
    space.pay("ada", date(2027, 1, 3), cad="30.00")
    space.add("bob", date(2027, 2, 3))  # not a member in January: no statement
    assert space.mail.statements(date(2027, 1, 31)) == 0  # the 31st: December's statements were due by 01-07
    assert space.mail.statements(date(2027, 2, 1)) == 1
    (row,) = space.rows(kind="statement")
    assert (row.handle, row.period) == ("ada", "2027-01")
    msg = wait_for(lambda: space.sent("ada", "statement"), what="ada's statement")[0]
    assert msg["Subject"] == "DCTRL: your statement for 2027-01"
    text = msg.get_body(("plain",)).get_content()
    lines = [line.split() for line in text.splitlines() if line.startswith("    2027-")]
    assert lines == [["2027-01-03", "payment", "(cash)", "30.00", "CAD"],
                     ["2027-01-20", "dues,", "regular", "plan", "-40.00", "CAD"]]
    assert "balance -10.00 CAD; status overdue, paid through 2027-01-19" in text  # 70 paid, 80 charged
    # twice the same day, a later day of the first week, a restart: nothing new
    assert space.mail.statements(date(2027, 2, 1)) == 0
    space.start_mail()
    assert space.mail.daily(date(2027, 2, 7)) == 0
    assert space.mail.daily(date(2027, 2, 8)) == 0  # past the first week: the job does not look
    assert space.keys("statement") == [("statement", "ada", "2027-01")]
    # February (28 days): the dues of 02-20 on its statement, sent from 1 March
    assert space.mail.daily(date(2027, 3, 1)) == 2  # ada's and bob's
    _, data = context.statement(space.mail.database, "ada", "2027-02")
    assert data["lines"] == [{"date": "2027-02-20", "what": "dues, regular plan", "cad_cents": -4000}]


def test_the_daily_job_before_member_data_ever_ran_does_nothing(tmp_path):
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    clock = FakeClock(wall=noon(date(2027, 2, 1)))
    rt = FakeRuntime(MemberMail(home, clock=clock.time, config={"from": FROM}), name="member_mail", clock=clock,
                     home=home).start()
    try:
        rt.advance(300)  # (a handler error would raise here: the fake runtime's raise_errors)
        assert rt.actor.daily() == 0 and rt.errors == []
    finally:
        rt.stop()


# -- real processes -------------------------------------------------------------------------

@pytest.mark.slow
def test_the_reporters_transition_is_one_mail_at_the_server_over_the_bus(tmp_path):
    """Broker, Vault, member_data, member_mail, reporter as processes (SQLite): two members
    added with join dates in the past; the Reporter's first run publishes their histories;
    only carol's overdue of yesterday becomes a mail. `members set --opt-out` over the bus."""
    today = datetime.now(timezone.utc).date()  # (the actors' days are UTC)
    with home_on("sqlite", tmp_path / "home", "mm_status_net") as home, SmtpSink() as sink:
        path = home.root / "config.toml"
        text = path.read_text()
        old = home.config["member_mail"]["smtp_port"]
        text = text.replace(f"smtp_port = {old}\n", f"smtp_port = {sink.port}\n")
        assert "[reporter]" not in text  # no chain notifier or price here: no outage may hold transitions
        text += "\n[reporter]\nchain_timeout = 3600\nprice_timeout = 3600\n"
        path.write_text(text)
        sink.start()
        net = Network(home).start_healthy("broker", "vault", "member_data", "member_mail")
        try:
            dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
            for handle, days in (("ada", 100), ("carol", 8)):  # ada lapsed long ago; carol overdue since yesterday
                dctrl(home, "members", "add", handle, "--name", handle.title(), "--email", f"{handle}@example.org",
                      "--plan", "regular", "--joined", (today - timedelta(days=days)).isoformat())
            out = dctrl(home, "members", "set", "carol", "--opt-out", "reminder,statement").stdout
            assert "opted out of reminder and statement mail" in out
            shown = json.loads(dctrl(home, "members", "show", "carol", "--json").stdout)
            assert shown["mail_opt_out"] == ["reminder", "statement"]
            assert "opted out of reminder and statement" in dctrl(home, "members", "show", "carol").stdout
            net.start_healthy("reporter")
            (msg,) = wait_for(lambda: [m for m in sink.to("carol@example.org") if "overdue" in m["Subject"]],
                              what="carol's overdue mail at the server")
            assert msg["X-Dctrl-Mail"] == f"overdue carol {(today - timedelta(days=1)).isoformat()}"
            rows = json.loads(dctrl(home, "mail", "outbox", "--json").stdout)
            kinds = sorted((r["kind"], r["handle"]) for r in rows)
            assert kinds == [("overdue", "carol"), ("welcome", "ada"), ("welcome", "carol")], kinds
            assert [m["Subject"] for m in sink.to("ada@example.org")] == ["Welcome to DCTRL, Ada"]
            wait_for(lambda: "transition overdue -> lapsed is dated" in net.log("member_mail"),
                     what="ada's lapse of long ago skipped")  # (her history, published with carol's)
            # the preview: carol's real arrears; a kind she is not in today, sample figures (said so)
            out = dctrl(home, "mail", "preview", "overdue", "carol")
            assert "40.00 CAD is outstanding" in out.stdout and out.stderr == ""
            out = dctrl(home, "mail", "preview", "reinstated", "carol")
            assert out.stdout.startswith("Subject: DCTRL: welcome back, Carol") and "sample data" in out.stderr
        finally:
            net.close()
