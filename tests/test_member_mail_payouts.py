"""MemberMail asks the co-signers to sign a payout (issue 13 item 6): PayoutMgr's
``payout.awaiting_signatures`` becomes one mail to each of ``[member_mail] cosigners`` (member
handles), keyed (payout, handle, payout:N); the payout's details read from PayoutMgr's table.

The actors on the fake runtime (actors/testing.py) on SQLite and PostgreSQL: MemberData writes
the members (its own commands), the real PayoutMgr (tests/test_payout_desk_unit.py's fake node
and helpers) makes the payouts and publishes the events, which the test delivers to MemberMail;
a real SMTP server on loopback (tests/smtp_sink.py) receives the mail.
"""

from __future__ import annotations

import os
from datetime import date

import pytest

from actors.member_data.actor import MemberData
from actors.member_data.models import seal_personal
from actors.member_mail import context
from actors.member_mail.actor import MemberMail
from actors.member_mail.models import DEFAULTS, MailCursor, MailOutbox, settings
from actors.member_mail.templates import SAMPLES, VARIANTS, TemplateError, check_templates
from actors.testing import FakeClock, FakeRuntime
from keys.registry import Registry
from proto.errors import ConfigError
from tests.smtp_sink import SmtpSink
from tests.test_payout_desk_unit import DEST, PRICE, Node, _cmd, _cosign, _fund, _payout, _request
from tests.test_payout_utxos_unit import Payouts
from tests.unit_db import add_admins, empty, unit_home

FROM = "DCTRL <members@dctrl.test>"
DAY = 86400


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    """A home per database kind, with admins alice, bob and carol besides `admin`."""
    with unit_home(request.param, tmp_path_factory.mktemp("mm_payouts") / "home", "mm_payouts") as h:
        add_admins(h)
        yield h


class Space:
    """MemberData, PayoutMgr and MemberMail on fake runtimes; the test carries PayoutMgr's
    events to MemberMail (or does not: an event missed)."""

    def __init__(self, home, sink, cosigners=("ada", "bea", "zed")):
        self.home, self.sink = home, sink
        self.desk = Payouts(home, Node())
        self.desk.run(0.5)  # discovery answered, every address watched
        self.desk.rt.send("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 2,
                                            "as_of": int(self.desk.clock.time() * 1000)}, sender="price_notifier")
        self.clock = FakeClock(wall=self.desk.clock.time())
        self.md = FakeRuntime(MemberData(home, clock=self.clock.time), name="member_data", clock=self.clock,
                              home=home).start()
        self.public = Registry.load(home.registry_path).current("member_data").curve
        self.config = {"smtp_port": sink.port, "from": FROM, "cosigners": list(cosigners)}
        self.mm = None
        self.carried = 0  # PayoutMgr's events up to here were carried (or dropped)
        self.member("regular")

    def member(self, plan=None, handle=None):
        if plan:
            return self.command("cmd.members.plan_set", name=plan, cad="40.00", period="month", grace_days=30,
                                confirmations=1)
        self.command("cmd.members.add", handle=handle, plan="regular", joined=date(2026, 12, 1).isoformat(),
                     personal=seal_personal(self.public, name=handle.title(), email=f"{handle}@example.org"))

    def command(self, topic, **body):
        body = {"id": os.urandom(16), "expires": int(self.clock.time()) + 60, **body}
        self.md.send(topic, body, sender="admin")
        (ack,) = self.md.bodies("members.ack", id=body["id"])
        assert ack["status"] == "done", ack

    def start_mail(self, **config):
        if self.mm is not None:
            self.mm.stop()
        self.mm = FakeRuntime(MemberMail(self.home, clock=self.clock.time, config={**self.config, **config}),
                              name="member_mail", clock=self.clock, home=self.home).start()
        return self.mm

    def stop_mail(self):
        self.mm.stop()
        self.mm = None

    @property
    def mail(self) -> MemberMail:
        return self.mm.actor

    def events(self, drop=False):
        """PayoutMgr's payout.awaiting_signatures published since the last call, delivered to
        MemberMail (``drop``: lost, as while member_mail is away)."""
        published = self.desk.rt.published[self.carried:]
        self.carried = len(self.desk.rt.published)
        out = [b for t, b in published if t == "payout.awaiting_signatures"]
        if not drop:
            for body in out:
                self.mm.send("payout.awaiting_signatures", body, sender="payout_mgr")
        return out

    def payout(self, sats=50_000, reason="refund of invoice 7 (overpaid)"):
        """A payout requested by alice, approved by bob: built, awaiting signatures."""
        pid = _request(self.desk, sats=sats, reason=reason)["payout"]
        assert _cmd(self.desk, "approve", "bob", payout=pid, reason=None)["status"] == "done"
        assert _payout(self.desk, pid).state == "awaiting_signatures"
        return pid

    def keys(self):
        q = (MailOutbox.select().where(MailOutbox.kind == "payout").order_by(MailOutbox.id)
             .bind(self.home_db))
        return [(r.kind, r.handle, r.period) for r in q]

    @property
    def home_db(self):
        return self.desk.db

    def sent(self, handle, pid):
        return [m for m in self.sink.to(f"{handle}@example.org") if f"payout {pid} waits" in m["Subject"]]

    def close(self):
        for rt in (self.mm, self.md):
            if rt is not None:
                rt.stop()
        self.desk.close()


@pytest.fixture
def space(home):
    empty(home.database_url)
    with SmtpSink() as sink:
        sink.start()
        s = Space(home, sink)
        try:
            for handle in ("ada", "bea", "cat"):
                s.member(handle=handle)
            for index in range(3):  # (a coin per payout: a built payout claims its inputs)
                _fund(s.desk, 100_000, index=index)
            yield s
        finally:
            s.close()


def test_each_cosigner_gets_one_mail_per_payout_also_redelivered_and_after_a_restart(space, caplog):
    caplog.set_level("INFO")
    space.start_mail()
    assert space.mail.health() == ("degraded", "[member_mail] cosigners not mailed: zed: no such member")
    assert "[member_mail] cosigners: zed: no such member; no payout mail goes to them" in caplog.text
    pid = space.payout()
    (event,) = space.events()
    assert (event["payout"], event["needed"]) == (pid, 2)
    assert space.keys() == [("payout", "ada", f"payout:{pid}"), ("payout", "bea", f"payout:{pid}")]
    (msg,) = space.mm.wait_for(lambda: space.sent("ada", pid), what="ada's payout mail at the server")
    assert msg["Subject"] == f"DCTRL: payout {pid} waits for your signature (0.00050000 BTC)"
    assert msg["X-Dctrl-Mail"] == f"payout ada payout:{pid}"
    text = msg.get_body(("plain",)).get_content()
    p = _payout(space.desk, pid)
    for part in (f"payout        {pid} (manual)", "50000 sats = 0.00050000 BTC (50.00 CAD when requested)",
                 f"to            {DEST}", "reason        refund of invoice 7 (overpaid)",
                 "requested by  alice, ", "signatures: 2 are needed.", f"fee           {p.fee} sats",
                 f"transaction   {p.txid}", f"dctrl payouts show {pid}", f"dctrl payouts export {pid} --out",
                 f"dctrl payouts sign {pid} --key FILE"):
        assert part in text, part
    html = msg.get_body(("html",)).get_content()
    assert f"<code>{DEST}</code>" in html and "turn off" not in html  # a duty: no opt-out offered
    space.mm.wait_for(lambda: space.sent("bea", pid), what="bea's")
    assert not space.sink.to("cat@example.org")  # a member, not a co-signer
    space.mm.wait_for(lambda: len(space.mm.bodies("mail.sent", kind="payout")) == 2, what="both sent")
    # the same event again, a restart (its catch-up), the event after the restart: nothing new
    space.mm.send("payout.awaiting_signatures", event, sender="payout_mgr")
    space.start_mail()
    space.mm.send("payout.awaiting_signatures", event, sender="payout_mgr")
    space.mm.advance(60)
    assert space.keys() == [("payout", "ada", f"payout:{pid}"), ("payout", "bea", f"payout:{pid}")]
    assert len(space.sent("ada", pid)) == 1 and len(space.sent("bea", pid)) == 1
    # zed becomes a member: the health clears at the next look, and the next payout reaches zed too
    space.member(handle="zed")
    space.mm.advance(60)
    assert space.mail.health()[0] == "ok"
    pid2 = space.payout(sats=20_000)
    space.events()
    assert {h for _, h, period in space.keys() if period == f"payout:{pid2}"} == {"ada", "bea", "zed"}


def test_a_bumps_replacement_asks_the_cosigners_again_and_says_what_it_replaces(space):
    space.start_mail()
    pid = space.payout()
    space.events()
    _cosign(space.desk, pid, 1, "alice")
    _cosign(space.desk, pid, 3, "carol")
    space.desk.rt.wait_for(lambda: _payout(space.desk, pid).state == "broadcast", what="the broadcast")
    space.events()  # (signature, signed, broadcast: not mailed)
    ack = _cmd(space.desk, "bump", "alice", payout=pid, feerate="10")
    assert (ack["status"], ack["state"]) == ("done", "awaiting_signatures"), ack
    rid = ack["payout"]
    (event,) = space.events()
    assert event["payout"] == rid
    assert space.keys() == [("payout", h, f"payout:{n}") for n in (pid, rid) for h in ("ada", "bea")]
    (msg,) = space.mm.wait_for(lambda: space.sent("bea", rid), what="bea's mail for the replacement")
    text = msg.get_body(("plain",)).get_content()
    assert f"replaces      payout {pid}: a fee bump (RBF)" in text and "requested by  alice, " in text
    assert f"dctrl payouts sign {rid} --key FILE" in text


def test_a_payout_no_longer_awaiting_signatures_is_not_mailed(space, caplog):
    caplog.set_level("INFO")
    space.start_mail()
    pid = space.payout()
    (event,) = space.events(drop=True)
    _cmd(space.desk, "cancel", "alice", payout=pid, reason="wrong address")
    space.mm.send("payout.awaiting_signatures", event, sender="payout_mgr")  # (late: cancelled since)
    assert space.keys() == []
    assert f"payout {pid} is cancelled: not awaiting signatures" in caplog.text


def test_payouts_awaiting_while_member_mail_was_away_are_mailed_by_the_catch_up(space):
    space.start_mail()
    space.stop_mail()
    pid = space.payout()
    cancelled = space.payout(sats=10_000)
    _cmd(space.desk, "cancel", "alice", payout=cancelled, reason="not needed")
    space.events(drop=True)  # member_mail away: never heard
    space.start_mail()  # the start's catch-up
    assert space.keys() == [("payout", "ada", f"payout:{pid}"), ("payout", "bea", f"payout:{pid}")]
    (msg,) = space.mm.wait_for(lambda: space.sent("ada", pid), what="ada's mail from the catch-up")
    assert "signatures: 2 are needed." in msg.get_body(("plain",)).get_content()  # ([treasury] descriptor's k)
    # and one missed while running: the 60 s look
    pid2 = space.payout(sats=20_000)
    space.events(drop=True)
    space.mm.advance(60)
    assert [k for k in space.keys() if k[2] == f"payout:{pid2}"] == [
        ("payout", "ada", f"payout:{pid2}"), ("payout", "bea", f"payout:{pid2}")]


def test_the_first_start_does_not_mail_payouts_already_waiting(space):
    old = space.payout()
    space.events(drop=True)
    space.start_mail()  # member_mail's first start: payout `old` is history
    space.mm.advance(60)
    assert space.keys() == []
    with space.home_db.bind_ctx([MailCursor]):
        assert MailCursor.get_by_id("payout").last_id == old
    new = space.payout(sats=20_000)
    space.events(drop=True)
    space.mm.advance(60)
    assert {period for _, _, period in space.keys()} == {f"payout:{new}"}
    # the event of the old payout, heard live (e.g. redelivered), is mailed: the mark is for the table
    # alone, and the payout still waits for its signatures
    assert context.payout(space.home_db, "ada", old)[0] == f"payout:{old}"


def test_cosigner_settings_and_templates(tmp_path):
    assert settings({"cosigners": ["ada", " bea ", "ada"]})["cosigners"] == ["ada", "bea"]
    assert settings({})["cosigners"] == [] == DEFAULTS["cosigners"]
    with pytest.raises(ConfigError, match="is a mail address; name the co-signer's member handle"):
        settings({"cosigners": ["ada@example.org"]})
    with pytest.raises(ConfigError, match="'Ada Lovelace' is not a member handle"):
        settings({"cosigners": ["Ada Lovelace"]})
    with pytest.raises(ConfigError, match="cosigners = 'ada': expected list"):
        settings({"cosigners": "ada"})
    # rendered at start with the sample data and the variants (a bump's replacement, no CAD value)
    templates = check_templates()
    for data in (SAMPLES["payout"], *VARIANTS["payout"]):
        rendered = templates.render("payout", data)
        assert rendered.subject.startswith("DCTRL: payout 12 waits for your signature")
    assert "replaces      payout 11: a fee bump (RBF)" in templates.render("payout", VARIANTS["payout"][0]).text
    html = templates.render("payout", {**SAMPLES["payout"], "reason": "<b>urgent</b>"}).html
    assert "&lt;b&gt;urgent&lt;/b&gt;" in html and "<b>" not in html  # a reason cannot inject markup
    # a broken copy in a space's templates_dir stops the start
    own = tmp_path / "templates"
    own.mkdir()
    from actors.member_mail.templates import PACKAGE_DIR
    for f in PACKAGE_DIR.iterdir():
        (own / f.name).write_text(f.read_text())
    (own / "payout.txt.tpl").write_text("Subject: payout {{payout}} {{no_such_name}}\n")
    with pytest.raises(TemplateError, match="payout.txt.tpl: NameError"):
        check_templates(own)
