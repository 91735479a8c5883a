"""MemberMail on the bus: the actor on the fake runtime (actors/testing.py) fed by MemberData's own
events, with a real SMTP server on loopback (tests/smtp_sink.py), on SQLite and PostgreSQL; and
one test of real processes (broker, Vault, member_data, member_mail) with `dctrl` as a
subprocess, including a SIGKILL of member_mail while the server holds its 250.

Waits are predicates with a deadline (FakeRuntime.wait_for, harness.wait_for), never sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from actors.member_data.actor import MemberData
from actors.member_data.models import seal_personal
from actors.member_mail.actor import ACK, MemberMail
from actors.member_mail.message import POSSIBLE_DUPLICATE
from actors.member_mail.models import MailOutbox
from actors.member_mail.templates import PACKAGE_DIR, TemplateError
from actors.testing import FakeClock, FakeRuntime
from keys.registry import Registry
from tests.harness import Network, dctrl, home_on, wait_for
from tests.smtp_sink import SmtpSink
from tests.unit_db import empty, unit_home

FROM = "DCTRL <members@dctrl.test>"
TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("mm_unit") / "home", "mm_unit") as h:
        yield h


class Members:
    """MemberData on a fake runtime: commands as admin, its member.changed events kept."""

    def __init__(self, home):
        self.clock = FakeClock()
        self.rt = FakeRuntime(MemberData(home, clock=self.clock.time), name="member_data", clock=self.clock,
                              home=home).start()
        self.public = Registry.load(home.registry_path).current("member_data").curve

    def command(self, topic, **body):
        body = {"id": os.urandom(16), "expires": int(self.clock.time()) + 60, **body}
        self.rt.send(topic, body, sender="admin")
        (ack,) = self.rt.bodies("members.ack", id=body["id"])
        assert ack["status"] == "done", ack
        return [(t, b) for t, b in self.rt.take() if t == "member.changed"]

    def add(self, handle, email, name="Ada Lovelace"):
        return self.command("cmd.members.add", handle=handle, personal=seal_personal(self.public, name=name, email=email),
                            plan="regular", joined="2026-01-31")

    def pay(self, handle, **kw):
        body = {"cad": "40.00", "method": "cash", "note": "at the door", "on": None, "txid_vout": None, **kw}
        return self.command("cmd.members.pay", handle=handle, **body)


@pytest.fixture
def mail(home):
    """(members, member_mail's fake runtime, the SMTP sink, not started: refusing connections)."""
    empty(home.database_url)
    members = Members(home)
    members.command("cmd.members.plan_set", name="regular", cad="40.00", period="month", grace_days=30,
                    confirmations=1)
    sink = SmtpSink()
    clock = FakeClock()
    actor = MemberMail(home, clock=clock.time, config={"smtp_port": sink.port, "from": FROM})
    rt = FakeRuntime(actor, name="member_mail", clock=clock, home=home).start()
    rt.sink, rt.clock_ = sink, clock
    try:
        yield members, rt, sink
    finally:
        rt.stop()
        members.rt.stop()
        sink.stop()


def deliver(rt, events):
    for topic, body in events:
        rt.send(topic, body, sender="member_data")


def outbox(rt, **where):
    q = MailOutbox.select().bind(rt.actor.database)
    return [r for r in q if all(getattr(r, k) == v for k, v in where.items())]


def test_an_added_member_gets_one_welcome_and_the_same_event_again_queues_none(mail):
    members, rt, sink = mail
    sink.start()
    events = members.add("ada", "ada@example.org")
    assert [b["kind"] for _, b in events] == ["joined", "plan"]
    deliver(rt, events)
    sent = rt.wait_for(lambda: rt.bodies("mail.sent"), what="mail.sent")
    (row,) = outbox(rt)
    assert sent == [{"id": row.id, "kind": "welcome", "handle": "ada"}]  # no address, no text on the bus
    (msg,) = wait_for(lambda: sink.to("ada@example.org"), what="the welcome at the server")
    assert msg["Subject"] == "Welcome to DCTRL, Ada Lovelace" and msg["Message-ID"] == row.message_id
    assert "40.00 CAD per month" in msg.get_body(("plain",)).get_content()
    # the same events again (redelivered, replayed from the event log): the key (welcome, ada, "") holds
    deliver(rt, events)
    rt.actor.wake()
    rt.actor.dispatcher.drain()
    assert [(r.kind, r.handle, r.period, r.state) for r in outbox(rt)] == [("welcome", "ada", "", "sent")]
    assert len(sink.to("ada@example.org")) == 1 and len(rt.bodies("mail.sent")) == 1


def test_a_payment_gets_a_receipt_each_cash_and_bitcoin(mail):
    members, rt, sink = mail
    sink.start()
    members.add("ada", "ada@example.org")
    paid = members.pay("ada") + members.pay("ada", cad="50.00", method="bitcoin", note=None, txid_vout=f"{TXID}:1")
    assert [b["kind"] for _, b in paid] == ["paid", "paid"]
    deliver(rt, paid)
    rt.wait_for(lambda: len(rt.bodies("mail.sent", kind="receipt")) == 2, what="two receipts sent")
    cash, coin = sorted(outbox(rt, kind="receipt"), key=lambda r: r.id)
    assert cash.period.startswith("payment:") and coin.period == f"{TXID}:1"
    texts = {m["Message-ID"]: m.get_body(("plain",)).get_content() for m in sink.to("ada@example.org")}
    assert "40.00 CAD" in texts[cash.message_id] and "paid by       cash" in texts[cash.message_id]
    assert "50.00 CAD" in texts[coin.message_id] and f"{TXID}:1" in texts[coin.message_id]
    # the paid events again: no second receipt
    deliver(rt, paid)
    assert len(outbox(rt, kind="receipt")) == 2


def test_history_is_not_mailed_at_the_first_start_and_what_was_not_heard_later_is(home):
    empty(home.database_url)
    members = Members(home)
    members.command("cmd.members.plan_set", name="regular", cad="40.00", period="month", grace_days=30,
                    confirmations=1)
    members.add("old", "old@example.org")  # before member_mail ever ran: an existing member
    members.pay("old")
    with SmtpSink() as sink:
        sink.start()
        clock = FakeClock()
        config = {"smtp_port": sink.port, "from": FROM}
        rt = FakeRuntime(MemberMail(home, clock=clock.time, config=config), name="member_mail", clock=clock,
                         home=home).start()
        try:
            members.add("ada", "ada@example.org")  # events never delivered: member_mail did not hear them
            members.pay("ada")
            assert outbox(rt) == []
            rt.advance(60)  # the reconciliation finds them
            rt.wait_for(lambda: len(rt.bodies("mail.sent")) == 2, what="ada's welcome and receipt")
        finally:
            rt.stop()
        assert sorted((r.kind, r.handle) for r in outbox(rt)) == [("receipt", "ada"), ("welcome", "ada")]
        # stopped, a member added meanwhile, started again: found at start-up; the old ones still not
        members.add("bob", "bob@example.org")
        rt = FakeRuntime(MemberMail(home, clock=clock.time, config=config), name="member_mail", clock=clock,
                         home=home).start()
        try:
            rt.wait_for(lambda: rt.bodies("mail.sent"), what="bob's welcome")
            rt.advance(60)
            assert sorted((r.kind, r.handle) for r in outbox(rt)) == [
                ("receipt", "ada"), ("welcome", "ada"), ("welcome", "bob")]
        finally:
            rt.stop()
            members.rt.stop()
        assert sink.to("old@example.org") == [] and len(sink.to("bob@example.org")) == 1


def test_a_mail_queued_before_the_address_changed_goes_to_the_new_address(mail):
    members, rt, sink = mail  # the server is down: the welcome waits in the queue
    deliver(rt, members.add("ada", "ada@example.org"))
    rt.wait_for(lambda: (outbox(rt) or [None])[0] and outbox(rt)[0].last_error, what="a failed attempt")
    assert outbox(rt)[0].recipient == "ada@example.org" and outbox(rt)[0].state == "queued"
    members.command("cmd.members.set", handle="ada", personal=seal_personal(members.public, name=None,
                                                                             email="ada@new.example.org"))
    sink.start()
    rt.clock_.advance(3600)  # past the backoff
    rt.actor.wake()
    rt.wait_for(lambda: rt.bodies("mail.sent"), what="mail.sent")
    assert len(sink.to("ada@new.example.org")) == 1 and sink.to("ada@example.org") == []
    assert outbox(rt)[0].recipient == "ada@new.example.org"


def test_a_refused_recipient_fails_visibly_and_retry_sends_it_and_send_test_goes_through_the_actor(mail):
    members, rt, sink = mail
    sink.rcpt_replies["ada@example.org"] = "550 5.1.1 no such user"
    sink.start()
    deliver(rt, members.add("ada", "ada@example.org"))
    (failed,) = rt.wait_for(lambda: rt.bodies("mail.failed"), what="mail.failed")
    assert failed == {"id": outbox(rt)[0].id, "kind": "welcome", "handle": "ada"}
    del sink.rcpt_replies["ada@example.org"]

    def command(topic, **body):
        body = {"id": os.urandom(16), "expires": int(rt.clock_.time()) + 60, **body}
        rt.send(topic, body, sender="admin")
        (ack,) = rt.bodies(ACK, id=body["id"])
        return ack
    assert command("cmd.mail.retry", row=failed["id"])["status"] == "done"
    rt.wait_for(lambda: rt.bodies("mail.sent"), what="the retried mail sent")
    assert len(sink.to("ada@example.org")) == 1
    again = command("cmd.mail.retry", row=failed["id"])
    assert again["status"] == "refused" and "is sent" in again["reason"]
    ack = command("cmd.mail.send_test", to="ops@example.org")
    assert ack["status"] == "done"
    rt.wait_for(lambda: rt.bodies("mail.sent", kind="test"), what="the test mail sent")
    assert rt.bodies("mail.sent", kind="test") == [{"id": ack["row"], "kind": "test", "handle": None}]
    assert sink.to("ops@example.org")[0]["Subject"] == "DCTRL: a test mail"
    for topic, body in rt.published:  # no address on the bus, ever
        assert "example.org" not in json.dumps(body, default=repr), (topic, body)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # (the sink: loopback, a test)
def test_with_smtp_user_nothing_is_sent_until_the_vault_gives_the_password_never_logged(home, caplog):
    empty(home.database_url)
    members = Members(home)
    members.command("cmd.members.plan_set", name="regular", cad="40.00", period="month", grace_days=30,
                    confirmations=1)
    password = "s3cret-Pw-" + os.urandom(4).hex()
    caplog.set_level("DEBUG")
    credentials = {"mm": password}
    with SmtpSink(auth=credentials) as sink:
        sink.start()
        clock = FakeClock()
        actor = MemberMail(home, clock=clock.time, config={"smtp_port": sink.port, "from": FROM, "smtp_user": "mm"})
        rt = FakeRuntime(actor, name="member_mail", clock=clock, home=home).start()
        try:
            assert rt.secrets_requested == ["smtp_password"]
            deliver(rt, members.add("ada", "ada@example.org"))
            assert rt.health()[0] == "degraded" and "smtp_password" in rt.health()[1]
            actor.wake()
            assert outbox(rt)[0].state == "queued" and outbox(rt)[0].attempts == 0 and sink.received() == []
            rt.give_secret("smtp_password", error="not a reader")  # refused: asked again later
            rt.advance(31)
            assert rt.secrets_requested == ["smtp_password", "smtp_password"]
            rt.give_secret("smtp_password", password.encode())
            rt.wait_for(lambda: rt.bodies("mail.sent"), what="mail.sent after the password")
            assert sink.logins == ["mm"] and len(sink.to("ada@example.org")) == 1
            assert rt.health()[0] == "ok"
            # the password rotated at the server: AUTH refused, the Vault asked again, the new one used
            rotated = password + "-2"
            credentials["mm"] = rotated
            actor.dispatcher.transport.close()
            deliver(rt, members.pay("ada"))
            rt.wait_for(lambda: len(rt.secrets_requested) == 3, what="the secret asked for again")
            rt.give_secret("smtp_password", rotated.encode())
            rt.advance(120)  # past the server's backoff
            actor.wake()
            rt.wait_for(lambda: rt.bodies("mail.sent", kind="receipt"), what="the receipt with the new password")
            assert sink.logins == ["mm", "mm"]
        finally:
            rt.stop()
            members.rt.stop()
    assert password not in caplog.text and "s3cret" not in caplog.text


def test_a_broken_template_stops_start_up_before_anything_is_queued(home, tmp_path):
    empty(home.database_url)
    broken = tmp_path / "templates"
    shutil.copytree(PACKAGE_DIR, broken)
    (broken / "receipt.txt.tpl").write_text("Subject: receipt\n\n{{cad(no_such_name)}}\n")
    with pytest.raises(TemplateError, match="receipt.txt.tpl"):
        MemberMail(home, config={"templates_dir": str(broken), "from": FROM})
    # the same directory unbroken starts
    shutil.copy(PACKAGE_DIR / "receipt.txt.tpl", broken / "receipt.txt.tpl")
    actor = MemberMail(home, config={"templates_dir": str(broken), "from": FROM})
    actor.teardown()


def test_dctrl_run_member_mail_with_a_broken_template_exits_78_naming_it(tmp_path):
    """EX_CONFIG: supervisord does not restart it forever; the operator reads one line."""
    from scripts.cli.supervise import EX_CONFIG
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    broken = tmp_path / "templates"
    shutil.copytree(PACKAGE_DIR, broken)
    (broken / "welcome.html.tpl").write_text("<p>{{no_such_name}}</p>\n")
    text = (home.root / "config.toml").read_text()
    assert text.count("[member_mail]\n") == 1
    (home.root / "config.toml").write_text(text.replace("[member_mail]\n", f'[member_mail]\ntemplates_dir = "{broken}"\n'))
    out = dctrl(home, "run", "member_mail", check=False, timeout=30)
    assert out.returncode == EX_CONFIG, out.stdout + out.stderr
    assert "welcome.html.tpl" in out.stderr


# -- real processes -------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def mail_net(request, tmp_path):
    """Broker, Vault, member_data and member_mail as processes; member_mail sends to a sink here."""
    with home_on(request.param, tmp_path / "home", "mm_net") as home, SmtpSink() as sink:
        path = home.root / "config.toml"
        old = home.config["member_mail"]["smtp_port"]
        path.write_text(path.read_text().replace(f"smtp_port = {old}\n", f"smtp_port = {sink.port}\n"))
        sink.start()
        net = Network(home).start_healthy("broker", "vault", "member_data", "member_mail")
        try:
            yield home, net, sink
        finally:
            net.close()


def outbox_json(home):
    return json.loads(dctrl(home, "mail", "outbox", "--json").stdout)


@pytest.mark.slow
def test_members_add_mails_a_welcome_and_a_kill_during_delivery_resends_it_flagged(mail_net):
    home, net, sink = mail_net
    dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
    dctrl(home, "members", "add", "ada", "--name", "Ada Lovelace", "--email", "ada@example.org", "--plan", "regular")
    (msg,) = wait_for(lambda: sink.to("ada@example.org"), what="ada's welcome at the server")
    assert msg["Subject"] == "Welcome to DCTRL, Ada Lovelace"
    rows = wait_for(lambda: [r for r in outbox_json(home) if r["state"] == "sent"], what="outbox: sent")
    assert [(r["kind"], r["handle"], r["message_id"]) for r in rows] == [("welcome", "ada", msg["Message-ID"])]
    dctrl(home, "members", "pay", "ada", "--cad", "40.00", "--method", "cash", "--note", "at the door")
    receipt = wait_for(lambda: [m for m in sink.to("ada@example.org") if "receipt" in m["Subject"]],
                       what="ada's receipt at the server")[0]
    assert receipt["Subject"] == "DCTRL: receipt for 40.00 CAD" and receipt["X-Dctrl-Mail"] == "receipt ada payment:1"
    # the CLI's other actions: preview reads, retry and send-test ask member_mail over the bus
    html = home.root / "welcome.html"
    out = dctrl(home, "mail", "preview", "welcome", "ada", "--html", str(html)).stdout
    assert out.startswith("Subject: Welcome to DCTRL, Ada Lovelace") and "<b>ada</b>" in html.read_text()
    refused = dctrl(home, "mail", "retry", str(rows[0]["id"]), check=False)
    assert refused.returncode == 2 and f"refused: mail {rows[0]['id']} is sent" in refused.stderr
    out = dctrl(home, "mail", "send-test", "ops@example.org").stdout
    assert "sent to ops@example.org" in out and sink.to("ops@example.org")[0]["Subject"] == "DCTRL: a test mail"

    # the server takes bob's welcome and holds its 250; member_mail is killed meanwhile
    sink.stall = True
    dctrl(home, "members", "add", "bob", "--name", "Bob", "--email", "bob@example.org", "--plan", "regular")
    wait_for(sink.stalled.is_set, what="the server holding bob's mail")
    assert net.signal("member_mail", signal.SIGKILL) == -signal.SIGKILL
    (bob,) = [r for r in outbox_json(home) if r["handle"] == "bob"]
    assert bob["state"] == "sending"  # the server has it; member_mail never heard the 250
    sink.stall = False
    sink.release.set()
    net.start_healthy("member_mail")
    rows = wait_for(lambda: [r for r in outbox_json(home) if r["handle"] == "bob" and r["state"] == "sent"],
                    what="bob's welcome sent again")
    assert rows[0]["possible_duplicate"] is True and rows[0]["attempts"] == 2
    first, second = sink.to("bob@example.org")  # twice, and the second says so: never silently
    assert first["Message-ID"] == second["Message-ID"] == rows[0]["message_id"]
    assert first[POSSIBLE_DUPLICATE] is None and second[POSSIBLE_DUPLICATE] == "yes"
    assert len(sink.to("ada@example.org")) == 2  # ada's welcome and receipt, sent before the crash: not again
    assert "found in state 'sending' at start-up" in net.log("member_mail")
