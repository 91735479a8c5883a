"""Issue 12's "bad input and faults" that no other file covers, on SQLite and PostgreSQL:

- a dues payment reorged out after its receipt was mailed: MemberData (on the fake runtime, the
  test playing the chain notifier as tests/test_member_dues_unit.py does) reverses it once, the
  balance is back, and MemberMail (on the fake runtime, a real SMTP server on loopback) sends no
  second receipt and no mail about the reversal (no mail kind says it: docs/architecture.md);
- MemberMail killed with SIGKILL in the middle of a batch (the dispatcher in a process of its
  own, and member_mail as a real process on the bus): what the server answered is not sent
  again, the one it held is sent again flagged, the rest go once;
- two admins setting one member's email at once (as tests/test_member_data_unit.py's pay and
  leave).

Waits are predicates with a deadline, never sleeps.
"""

from __future__ import annotations

import datetime
import os
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from actors.db import connect
from actors.member_data.actor import MemberData
from actors.member_data.models import MemberAdjustment, MemberPayment
from actors.member_data.queries import chain_payments
from actors.member_mail.actor import MemberMail
from actors.member_mail.dispatcher import Dispatcher
from actors.member_mail.message import POSSIBLE_DUPLICATE
from actors.member_mail.models import MailOutbox
from actors.member_mail.outbox import Outbox
from actors.member_mail.templates import SAMPLES
from actors.reporter.reports import member_report
from actors.testing import FakeClock, FakeRuntime
from tests.harness import ROOT, Network, dctrl, home_on, wait_for
from tests.smtp_sink import Handler, SmtpSink
from tests.test_member_dues_unit import Dues
from tests.unit_db import empty, unit_home

FROM = "DCTRL <members@dctrl.test>"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("faults") / "home", "faults") as h:
        yield h


# -- a payment reorged out after its receipt was mailed ------------------------------------------

class World:
    """MemberData (Dues: the test is the chain and price notifiers and the admin) and MemberMail
    on fake runtimes over one database; MemberData's member.changed events are handed to
    MemberMail as the broker would."""

    def __init__(self, home):
        self.dues = Dues(home)
        self.sink = SmtpSink().start()
        self.mail_clock = FakeClock()
        self.mail = FakeRuntime(MemberMail(home, clock=self.mail_clock.time,
                                           config={"smtp_port": self.sink.port, "from": FROM}),
                                name="member_mail", clock=self.mail_clock, home=home).start()
        self.forwarded = 0  # how many of MemberData's publications were looked at

    def close(self):
        try:
            self.mail.stop()
            self.dues.close()
        finally:
            self.sink.stop()

    def forward(self) -> list[dict]:
        """Hand MemberMail every member.changed MemberData published since the last call."""
        published = self.dues.rt.published
        bodies = []
        while self.forwarded < len(published):
            topic, body = published[self.forwarded]
            self.forwarded += 1
            if topic == "member.changed":
                self.mail.send(topic, body, sender="member_data")
                bodies.append(body)
        return bodies

    def rows(self):
        return list(MailOutbox.select().order_by(MailOutbox.id).bind(self.mail.actor.database))

    def sent(self, n):
        """Wait until ``n`` mails are sent (the sender is a thread of MemberMail)."""
        self.mail.actor.wake()
        return self.mail.wait_for(lambda: len(self.mail.bodies("mail.sent")) >= n and self.mail.bodies("mail.sent"),
                                  timeout=15, what=f"{n} mail(s) sent")

    def balance(self):
        today = datetime.datetime.fromtimestamp(self.dues.clock.time(), datetime.timezone.utc).date()
        return member_report(self.dues.db, "ada", today)["balance_cents"]


@pytest.fixture
def world(home):
    empty(home.database_url)
    w = World(home)
    yield w
    w.close()


def test_a_payment_reorged_out_after_its_receipt_was_mailed_is_reversed_once_without_another_mail(world, caplog):
    dues = world.dues
    dues.ready(confirmations=2)
    world.forward()
    world.sent(1)  # ada's welcome
    before = world.balance()
    address, sats = dues.address(), 80_000
    tx = dues.chain(address, sats, "seen")
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=2)
    assert [b["kind"] for b in world.forward()] == ["paid"]
    world.sent(2)
    (receipt,) = [m for m in world.sink.to("ada@example.org") if m["X-Dctrl-Mail"].startswith("receipt")]
    assert receipt["X-Dctrl-Mail"] == f"receipt ada {tx}:0" and "40.00" in receipt["Subject"]
    assert world.balance() == before + 4000  # 80,000 sats at 50,000 CAD/BTC

    # the reorg: back to the mempool first (still counted), then out of the chain for good
    dues.chain(address, sats, "seen", tx=tx)
    assert dues.count(MemberAdjustment) == 0
    dues.chain(address, sats, "removed", tx=tx)
    events = world.forward()
    assert [b["kind"] for b in events] == ["adjusted"]
    (adj,) = dues.shown()["adjustments"]
    (pay,) = dues.shown()["payments"]
    assert (adj["cents"], adj["reverses"]) == (-pay["cents"], pay["id"]) and "reorged out" in adj["note"]
    assert world.balance() == before
    # MemberMail queues nothing for the reversal, and its reconciliation over MemberData's rows
    # finds nothing to mail either: no second receipt, no mail about it (no kind says it)
    assert world.mail.actor.reconcile() == 0
    assert [(r.kind, r.state) for r in world.rows()] == [("welcome", "sent"), ("receipt", "sent")]

    # mined again after all (another reorg): not counted a second time, no receipt
    with caplog.at_level(logging.ERROR, logger=MemberData.__module__):
        dues.chain(address, sats, "confirmed", tx=tx, confirmations=1)
    assert world.forward() == []
    assert dues.count(MemberPayment) == 1 and dues.count(MemberAdjustment) == 1
    (cp,) = chain_payments(dues.db, "ada")
    assert (cp["state"], cp["payment"], cp["reversal"]) == ("confirmed", pay["id"], adj["id"])
    assert any("confirmed again after its reversal" in r.getMessage() for r in caplog.records)
    assert world.balance() == before
    assert world.mail.actor.reconcile() == 0 and len(world.rows()) == 2
    assert len(world.sink.to("ada@example.org")) == 2


# -- the dispatcher killed with SIGKILL in the middle of a batch ------------------------------------

class StallNth(Handler):
    """The server keeps the ``nth`` message it is given and holds its 250 (until ``release``)."""

    def __init__(self, sink, nth):
        super().__init__(sink)
        self.nth = nth

    async def handle_DATA(self, server, session, envelope):
        if self.sink.data_seen + 1 == self.nth:
            self.sink.stall = True
        return await super().handle_DATA(server, session, envelope)


_DISPATCHER = """
import sys
from actors.db import connect
from actors.member_mail.dispatcher import Dispatcher
url, port = sys.argv[1], int(sys.argv[2])
dispatcher = Dispatcher(connect(url), {"smtp_port": port, "from": "DCTRL <members@dctrl.test>",
                                      "rate_per_second": 0, "rate_per_minute": 0})
dispatcher.drain()
print("drained: the test should have killed this process", flush=True)
"""

HANDLES = ("alice", "bob", "carol", "dave", "erin")


def test_the_dispatcher_killed_in_the_middle_of_a_batch_resends_only_the_mail_in_flight_flagged(home):
    empty(home.database_url)
    sink = SmtpSink()
    sink._controller.handler = StallNth(sink, 3)  # (before start: the server is made with it)
    sink.start()
    database = connect(home.database_url)
    try:
        config = {"smtp_port": sink.port, "from": FROM, "rate_per_second": 0, "rate_per_minute": 0}
        outbox = Outbox(database, config, clock=lambda: time.time() - 60)  # due now for the real clock
        ids = {h: outbox.enqueue("welcome", h, "", f"{h}@example.org", {**SAMPLES["welcome"], "name": h.title()})
               .message_id for h in HANDLES}
        proc = subprocess.Popen([sys.executable, "-c", _DISPATCHER, home.database_url, str(sink.port)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: sink.stalled.is_set() or proc.poll() is not None, what="the third DATA at the server")
            assert proc.poll() is None, proc.stdout.read()
            states = {r.handle: r.state for r in MailOutbox.select().bind(database)}
            assert states == {"alice": "sent", "bob": "sent", "carol": "sending", "dave": "queued",
                              "erin": "queued"}
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(15) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        sink.release.set()  # (the server still answers carol's DATA to nobody)

        with Dispatcher(database, config) as dispatcher:  # the restart
            assert dispatcher.stats["possible_duplicates"] == 1
            assert dispatcher.drain() == 3  # carol again, dave, erin
        by_handle = {r.handle: r for r in MailOutbox.select().bind(database)}
        assert {h: (r.state, r.possible_duplicate) for h, r in by_handle.items()} == {
            "alice": ("sent", False), "bob": ("sent", False), "carol": ("sent", True), "dave": ("sent", False),
            "erin": ("sent", False)}
        for h in HANDLES:
            got = sink.to(f"{h}@example.org")
            assert [m["Message-ID"] for m in got] == [ids[h]] * (2 if h == "carol" else 1), h
            assert [m[POSSIBLE_DUPLICATE] for m in got] == ([None, "yes"] if h == "carol" else [None]), h
    finally:
        database.close()
        sink.stop()


# -- MemberMail (the process) killed with SIGKILL in the middle of a batch ------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def mail_net(request, tmp_path):
    """Broker, Vault, member_data and member_mail as processes; member_mail sends to a server
    here that holds its 250 to the third message it is given."""
    with home_on(request.param, tmp_path / "home", "faults_net") as h, SmtpSink() as sink:
        sink._controller.handler = StallNth(sink, 3)
        path = h.root / "config.toml"
        old = h.config["member_mail"]["smtp_port"]
        path.write_text(path.read_text().replace(f"smtp_port = {old}\n", f"smtp_port = {sink.port}\n"))
        sink.start()
        net = Network(h).start_healthy("broker", "vault", "member_data", "member_mail")
        try:
            yield h, net, sink
        finally:
            net.close()


@pytest.mark.slow
def test_member_mail_killed_in_the_middle_of_a_batch_resends_only_the_mail_in_flight_flagged(mail_net, tmp_path):
    home, net, sink = mail_net

    def outbox():
        return {r["handle"]: r for r in json.loads(dctrl(home, "mail", "outbox", "--json").stdout)}

    dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
    assert net.signal("member_mail") == 0  # (it has run: what is recorded from now on is mailed at its start)
    members = tmp_path / "members.csv"
    members.write_text("handle,name,email,plan,joined\n"
                       + "".join(f"{h},{h.title()},{h}@example.org,regular,\n" for h in HANDLES))
    assert "imported 5 member(s)" in dctrl(home, "members", "import", str(members)).stdout
    net.start("member_mail")  # its reconciliation queues the five welcomes: one batch
    wait_for(sink.stalled.is_set, timeout=30, what="the server holding the third welcome")
    assert net.signal("member_mail", signal.SIGKILL) == -signal.SIGKILL
    assert {h: r["state"] for h, r in outbox().items()} == {"alice": "sent", "bob": "sent", "carol": "sending",
                                                            "dave": "queued", "erin": "queued"}
    sink.release.set()
    net.start_healthy("member_mail")
    def all_sent():
        o = outbox()
        return len(o) == 5 and all(r["state"] == "sent" for r in o.values()) and o
    rows = wait_for(all_sent, timeout=30, what="the five welcomes sent")
    assert {h: (r["possible_duplicate"], r["attempts"]) for h, r in rows.items()} == {
        "alice": (False, 1), "bob": (False, 1), "carol": (True, 2), "dave": (False, 1), "erin": (False, 1)}
    for h in HANDLES:
        got = sink.to(f"{h}@example.org")
        assert [m["Message-ID"] for m in got] == [rows[h]["message_id"]] * (2 if h == "carol" else 1), h
        assert [m[POSSIBLE_DUPLICATE] for m in got] == ([None, "yes"] if h == "carol" else [None]), h
    assert "found in state 'sending' at start-up" in net.log("member_mail")


# -- two admins changing one member's details at once ----------------------------------------------

def test_two_admins_setting_one_members_email_at_once_are_applied_in_turn(home, monkeypatch):
    """As tests/test_member_data_unit.py's two writers (pay, leave), for `members set`: each
    writer holds after reading the member until the other has read it too, or half a second.
    With the row locked the second reads what the first wrote: the same new address twice is
    applied once and refused once ("nothing to change"); two different ones are both applied, in
    turn, each a details fact. Without the lock both would read the old address."""
    import threading

    from actors.member_data.models import MemberFact, seal_personal
    from actors.member_data.queries import email_of

    empty(home.database_url)
    dues = Dues(home)
    try:
        dues.plan()
        dues.add("ada")
        actor = dues.actor
        original = MemberData._locked_member
        for emails, expect in ((("new@example.org", "new@example.org"), ["done", "refused"]),
                               (("one@example.org", "two@example.org"), ["done", "done"])):
            barrier = threading.Barrier(2)

            def locked_then_wait(self, handle):
                m = original(self, handle)
                try:
                    barrier.wait(0.5)  # both here at once only if the first did not lock the row
                except threading.BrokenBarrierError:
                    pass
                return m
            monkeypatch.setattr(MemberData, "_locked_member", locked_then_wait)
            acks = {}

            def run(email):
                body = {"id": os.urandom(16), "expires": int(dues.clock.time()) + 60, "handle": "ada",
                        "personal": seal_personal(dues.public, name=None, email=email)}
                ack = actor.execute("cmd.members.set", body)[0]
                acks[email] = acks.get(email, []) + [(ack["status"], ack["reason"])]
                actor.database.close()  # this thread's connection
            threads = [threading.Thread(target=run, args=(e,)) for e in emails]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(s for v in acks.values() for s, _ in v) == expect, acks
            assert barrier.broken, "the second writer read the member while the first held it"
            monkeypatch.setattr(MemberData, "_locked_member", original)
            if expect == ["done", "refused"]:
                assert any("nothing to change" in (r or "") for v in acks.values() for _, r in v)
                assert email_of(dues.db, "ada") == "new@example.org"
            else:
                assert email_of(dues.db, "ada") in emails
        details = [f for f in MemberFact.select().where(MemberFact.handle == "ada").bind(dues.db)
                   if f.kind == "details"]
        assert len(details) == 3 and all(f.detail == "email" for f in details)
    finally:
        dues.close()
