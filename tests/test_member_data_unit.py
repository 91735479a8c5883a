"""MemberData's handlers on the fake runtime (actors/testing.py), on SQLite and PostgreSQL.

Commands are built by the kit's message builder (schema-checked as the bus would, and
the sender's publish grant checked against the home's policy), the clock is a FakeClock.
"""

from __future__ import annotations

import os
import threading

import pytest

from actors.member_data.actor import MemberData
from actors.member_data.models import (MemberAdjustment, MemberCommand, MemberFact, MemberInputError, MemberMember,
                                       MemberPayment, check_term_days, format_cents, parse_cents, seal_personal)
from actors.member_data.queries import adjustments, member, members, payments, plan_versions, plans, today
from actors.testing import FakeClock, FakeRuntime
from keys.identity import IdentityKeys
from keys.registry import Registry
from proto.errors import NotGranted, SchemaError
from tests.unit_db import empty, unit_home

ACK = "members.ack"
NAME, EMAIL = "Ada Lovelace", "ada@example.org"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    """One home per database kind for the module; each test empties its database first."""
    with unit_home(request.param, tmp_path_factory.mktemp("md_unit") / "home", "md_unit") as h:
        yield h


@pytest.fixture
def md(home):
    """MemberData on a fake runtime; ``md.command(topic, **body)`` sends a command as admin and
    returns its body; ``md.answer(body)`` is its ack."""
    empty(home.database_url)
    clock = FakeClock()
    actor = MemberData(home, clock=clock.time)
    rt = FakeRuntime(actor, name="member_data", clock=clock, home=home).start()

    def send(topic, sender="admin", **body):
        body = {"id": os.urandom(16), "expires": int(clock.time()) + 60, **body}
        rt.send(topic, body, sender=sender)
        return body

    def answer(body):
        (ack,) = rt.bodies(ACK, id=body["id"]) or [None]
        return ack
    public = Registry.load(home.registry_path).current("member_data").curve

    def seal(name=None, email=None):  # as the CLI seals them (scripts/cli/members.py sealer)
        return seal_personal(public, name=name, email=email)
    rt.command, rt.answer, rt.seal = send, answer, seal
    yield rt
    rt.stop()


def done(md, topic, **body):
    sent = md.command(topic, **body)
    ack = md.answer(sent)
    assert ack == {"id": sent["id"], "status": "done", "reason": None}, ack
    return sent


def refused(md, topic, **body) -> str:
    sent = md.command(topic, **body)
    ack = md.answer(sent)
    assert ack["status"] == "refused", ack
    return ack["reason"]


def plan_set(md, name="regular", cad="40.00", period="month", grace_days=30, confirmations=1):
    return done(md, "cmd.members.plan_set", name=name, cad=cad, period=period, grace_days=grace_days,
                confirmations=confirmations)


def add(md, handle="ada", name=NAME, email=EMAIL, plan="regular", joined="2026-01-31"):
    return done(md, "cmd.members.add", handle=handle, personal=md.seal(name, email), plan=plan, joined=joined)


def pay(md, handle="ada", cad="40.00", method="cash", note="at the door", on=None, txid_vout=None):
    return md.command("cmd.members.pay", handle=handle, cad=cad, method=method, note=note, on=on,
                      txid_vout=txid_vout)


def rows(md, model):
    return model.select().bind(md.actor.database).count()


# -- money --------------------------------------------------------------------------

@pytest.mark.parametrize("text, cents", [("40.00", 4000), ("40", 4000), ("40.5", 4050), ("0.05", 5),
                                         ("999999999.99", 99999999999)])
def test_cad_strings_become_integer_cents(text, cents):
    assert parse_cents(text) == cents and type(parse_cents(text)) is int
    assert parse_cents(format_cents(cents)) == cents
    assert parse_cents("-" + text, signed=True) == -cents


@pytest.mark.parametrize("bad, why", [("40.001", "more than 2 decimals"), ("40.000", "more than 2 decimals"),
                                      ("-1", "negative"), ("1e3", "not a CAD amount"), ("NaN", "not a CAD amount"),
                                      ("", "not a CAD amount"), (" 4", "not a CAD amount"), ("٤٠", "not a CAD amount"),
                                      (40.0, "not float"), (40, "not int")])
def test_anything_else_is_refused_with_the_reason(bad, why):
    with pytest.raises(MemberInputError, match=why):
        parse_cents(bad)


# -- commands -----------------------------------------------------------------------

def test_add_pay_and_show_a_member_announcing_only_the_handle(md):
    plan_set(md)
    assert md.last("member.plan.changed")["cents"] == 4000
    md.take()
    a = add(md)
    assert md.topics() == ["member.changed", "member.changed", ACK]  # events (outbox) before the answer
    assert [(e["handle"], e["kind"], e["on"]) for e in md.bodies("member.changed")] == [
        ("ada", "joined", "2026-01-31"), ("ada", "plan", "2026-01-31")]
    p = pay(md, on="2026-02-01")
    assert md.answer(p)["status"] == "done"
    paid = md.last("member.changed", kind="paid")
    shown = member(md.actor.database, "ada")
    assert (shown["name"], shown["email"], shown["plan"], shown["left"]) == (NAME, EMAIL, "regular", None)
    assert [(x["id"], x["cents"], x["method"], x["on"], x["note"]) for x in shown["payments"]] == [
        (paid["ref"], 4000, "cash", "2026-02-01", "at the door")]
    assert len({e["event_id"] for _, e in md.published if "event_id" in e}) == 3
    assert a["id"] != p["id"]


def test_a_retried_command_gets_the_same_answer_and_is_applied_once(md):
    plan_set(md)
    add(md)
    md.take()
    p = pay(md)
    first = md.take()
    assert [t for t, _ in first] == ["member.changed", ACK]
    for _ in range(3):  # a sender retrying until acked: the same message again
        md.deliver(md.build("cmd.members.pay", p, sender="admin"))
    assert md.topics() == [ACK] * 3 and all(b == first[-1][1] for b in md.bodies(ACK))
    assert rows(md, MemberPayment) == 1
    no = md.command("cmd.members.add", handle="ada", personal=md.seal("Other", "o@example.org"), plan="regular",
                    joined=None)
    first_no = md.answer(no)
    assert first_no["status"] == "refused" and "already exists" in first_no["reason"]
    md.take()
    md.deliver(md.build("cmd.members.add", no, sender="admin"))  # a refusal is remembered too
    assert md.topics() == [ACK] and md.last(ACK) == first_no
    assert rows(md, MemberMember) == 1


def test_an_expired_command_is_refused_and_nothing_written(md):
    plan_set(md)
    body = {"id": os.urandom(16), "expires": int(md.clock.time()) + 5, "handle": "ada",
            "personal": md.seal(NAME, EMAIL), "plan": "regular", "joined": None}
    md.advance(6)
    md.send("cmd.members.add", body, sender="admin")
    assert md.answer(body) == {"id": body["id"], "status": "refused", "reason": "command expired"}
    assert rows(md, MemberMember) == 0


def test_facts_are_appended_never_edited_and_an_adjustment_reverses_a_payment(md):
    plan_set(md)
    add(md)
    pay(md, cad="40.00")
    pay(md, cad="400.00", note="typo: meant 40")
    wrong = payments(md.actor.database, "ada")[-1]
    before = [(p["id"], p["cents"], p["note"]) for p in payments(md.actor.database, "ada")]
    assert "takes -400.00, not -40.00" in refused(md, "cmd.members.adjust", handle="ada", cad="-40.00",
                                                   note="reverse", on=None, reverses=wrong["id"])
    done(md, "cmd.members.adjust", handle="ada", cad="-400.00", note="reverse the typo", on=None,
         reverses=wrong["id"])
    assert "already reversed" in refused(md, "cmd.members.adjust", handle="ada", cad="-400.00", note="again",
                                         on=None, reverses=wrong["id"])
    done(md, "cmd.members.adjust", handle="ada", cad="-10.00", note="key deposit", on="2026-03-01", reverses=None)
    assert "changes nothing" in refused(md, "cmd.members.adjust", handle="ada", cad="0.00", note="x", on=None,
                                        reverses=None)
    # the payments are as they were; the corrections are new rows
    assert [(p["id"], p["cents"], p["note"]) for p in payments(md.actor.database, "ada")] == before
    assert [(a["cents"], a["reverses"]) for a in adjustments(md.actor.database, "ada")] == [
        (-40000, wrong["id"]), (-1000, None)]
    assert rows(md, MemberAdjustment) == 2 and rows(md, MemberPayment) == 2  # refused ones wrote nothing
    net = sum(p["cents"] for p in payments(md.actor.database)) + sum(a["cents"] for a in adjustments(md.actor.database))
    assert net == 4000 - 1000
    # leaving and rejoining are facts too: nothing about the member row changes but its own columns
    done(md, "cmd.members.leave", handle="ada", on="2026-06-30")
    assert "left already" in refused(md, "cmd.members.leave", handle="ada", on=None)
    assert members(md.actor.database)[0]["left"] == "2026-06-30"
    assert "before ada left (2026-06-30)" in refused(md, "cmd.members.rejoin", handle="ada", on="2026-06-29")
    done(md, "cmd.members.rejoin", handle="ada", on="2026-09-01")
    assert "has not left" in refused(md, "cmd.members.rejoin", handle="ada", on=None)
    assert "before ada rejoined (2026-09-01)" in refused(md, "cmd.members.leave", handle="ada", on="2026-08-31")
    assert [f["kind"] for f in member(md.actor.database, "ada")["facts"]] == ["joined", "plan", "left", "rejoined"]
    assert members(md.actor.database)[0]["left"] is None
    assert members(md.actor.database, as_of="2026-07-01")[0]["left"] == "2026-06-30"


def test_plans_are_versioned_and_plan_changes_take_effect_on_their_date(md):
    plan_set(md)
    plan_set(md, name="student", cad="20", period="quarter", grace_days=15)
    plan_set(md, cad="45.00")  # a new version of regular
    current = plans(md.actor.database)
    assert [(p["name"], p["cad"], p["period"]) for p in current] == [("regular", "45.00", "month"),
                                                                     ("student", "20.00", "quarter")]
    assert current[0]["version"] > current[1]["version"]  # (versions grow across all plans)
    assert [p["cad"] for p in plan_versions(md.actor.database, "regular")] == ["40.00", "45.00"]  # both kept
    add(md)
    done(md, "cmd.members.plan", handle="ada", plan="student", **{"from": "2026-05-01"})
    assert "unknown plan gold" in refused(md, "cmd.members.plan", handle="ada", plan="gold", **{"from": "2026-05-01"})
    assert "before ada joined" in refused(md, "cmd.members.plan", handle="ada", plan="student",
                                          **{"from": "2025-12-31"})
    db = md.actor.database
    assert members(db, as_of="2026-04-30")[0]["plan"] == "regular"
    assert members(db, as_of="2026-05-01")[0]["plan"] == "student"
    done(md, "cmd.members.group", handle="ada", group="keys", action="add")
    assert "already" in refused(md, "cmd.members.group", handle="ada", group="keys", action="add")
    assert members(db)[0]["groups"] == ["keys"]
    done(md, "cmd.members.group", handle="ada", group="keys", action="remove")
    assert "not in group" in refused(md, "cmd.members.group", handle="ada", group="keys", action="remove")
    assert members(db)[0]["groups"] == []


def test_a_plan_has_a_term_of_7_days_unless_given_and_at_most_its_shortest_period(md):
    plan_set(md)  # no term_days: 7
    done(md, "cmd.members.plan_set", name="prompt", cad="40.00", period="month", grace_days=30, confirmations=1,
         term_days=0)
    done(md, "cmd.members.plan_set", name="monthly", cad="40.00", period="month", grace_days=30, confirmations=1,
         term_days=28)
    done(md, "cmd.members.plan_set", name="quarterly", cad="90.00", period="quarter", grace_days=30,
         confirmations=1, term_days=89)
    done(md, "cmd.members.plan_set", name="yearly", cad="400.00", period="year", grace_days=30, confirmations=1,
         term_days=90)
    db = md.actor.database
    assert {p["name"]: p["term_days"] for p in plans(db)} == {"monthly": 28, "prompt": 0, "quarterly": 89,
                                                               "regular": 7, "yearly": 90}
    assert [e["term_days"] for e in md.bodies("member.plan.changed")] == [7, 0, 28, 89, 90]
    for period, term in (("month", 29), ("quarter", 90)):  # longer than the plan's shortest period
        assert f"term_days {term} is out of range: 0 to {term - 1} for a {period} plan" in refused(
            md, "cmd.members.plan_set", name="long", cad="40.00", period=period, grace_days=30, confirmations=1,
            term_days=term)
    for bad in (-1, 91, "7", 7.0):  # the schema's bounds: never reaches the handler
        with pytest.raises(SchemaError):
            md.command("cmd.members.plan_set", name="long", cad="40.00", period="year", grace_days=30,
                       confirmations=1, term_days=bad)
    assert "long" not in {p["name"] for p in plans(db)}
    with pytest.raises(MemberInputError, match="out of range: 0 to 28"):
        check_term_days(29, "month")


def test_plan_versions_made_before_plans_had_a_term_are_given_7_days_on_upgrade(md, home):
    from actors.reporter.inputs import load_plans

    db = md.actor.database
    plan_set(md, name="fortnight")
    db.execute_sql('ALTER TABLE "member_plan_version" DROP COLUMN "term_days"')  # as an older version made it
    db.execute_sql('INSERT INTO "member_plan_version" (name, cents, period, grace_days, confirmations, created) '
                   "VALUES ('old', 4000, 'month', 30, 1, 1)")
    clock = FakeClock()
    rt = FakeRuntime(MemberData(home, clock=clock.time), name="member_data", clock=clock, home=home).start()
    try:
        assert {p["name"]: p["term_days"] for p in plans(db)} == {"fortnight": 7, "old": 7}
        assert {v.name: v.term_days for v in load_plans(db).versions} == {"fortnight": 7, "old": 7}
        body = {"id": os.urandom(16), "expires": int(clock.time()) + 60, "name": "fortnight", "cad": "40.00",
                "period": "month", "grace_days": 30, "confirmations": 1, "term_days": 14}
        rt.send("cmd.members.plan_set", body, sender="admin")
        assert rt.bodies(ACK, id=body["id"])[0]["status"] == "done"
        assert [p["term_days"] for p in plan_versions(db, "fortnight")] == [7, 14]
    finally:
        rt.stop()


def test_forget_erases_name_and_email_and_keeps_the_money(md):
    plan_set(md)
    add(md)
    pay(md, cad="40.00")
    done(md, "cmd.members.adjust", handle="ada", cad="5.00", note="volunteer credit", on=None, reverses=None)
    assert "has not left" in refused(md, "cmd.members.forget", handle="ada")
    assert member(md.actor.database, "ada")["email"] == EMAIL
    done(md, "cmd.members.leave", handle="ada", on=None)
    done(md, "cmd.members.forget", handle="ada")
    shown = member(md.actor.database, "ada")
    assert (shown["name"], shown["email"]) == (None, None) and shown["forgotten"] == int(md.clock.time())
    assert [p["cents"] for p in shown["payments"]] == [4000] and [a["cents"] for a in shown["adjustments"]] == [500]
    assert shown["facts"][-1]["kind"] == "forgotten"
    assert "forgotten already" in refused(md, "cmd.members.forget", handle="ada")
    assert "was forgotten" in refused(md, "cmd.members.set", handle="ada", personal=md.seal("Ada", None))
    assert "was forgotten" in refused(md, "cmd.members.rejoin", handle="ada", on=None)
    assert "was forgotten" in refused(md, "cmd.members.group", handle="ada", group="keys", action="add")
    # the handle is never given to someone else
    assert "already exists" in refused(md, "cmd.members.add", handle="ada",
                                       personal=md.seal("Another Ada", "other@example.org"), plan="regular",
                                       joined=None)
    # nothing personal anywhere in the database any more
    database = md.actor.database
    for table in database.get_tables():
        dump = str(database.execute_sql(f'SELECT * FROM "{table}"').fetchall())
        assert EMAIL not in dump and NAME not in dump, table


@pytest.mark.parametrize("field, value, why", [
    ("email", "ada@", "not an address"), ("email", "ada example.org", "not an address"),
    ("email", "ada@example.org\n", "control character U+000A"),
    ("name", "Ada\x1b[31m", "control character U+001B"), ("name", "Ada\u202e", "control character U+202E"),
    ("name", "   ", "name: required"), ("plan", "gold", "unknown plan gold"),
    ("joined", "2026-02-30", "not a date of the calendar"), ("handle", "ada", "already exists"),
])
def test_bad_input_is_refused_with_a_reason_and_writes_nothing(md, field, value, why):
    plan_set(md)
    add(md)
    before = (rows(md, MemberMember), rows(md, MemberFact))
    body = {"handle": "bob", "name": "Bob", "email": "bob@example.org", "plan": "regular", "joined": None,
            field: value}
    body["personal"] = md.seal(body.pop("name"), body.pop("email"))
    assert why in refused(md, "cmd.members.add", **body)
    assert (rows(md, MemberMember), rows(md, MemberFact)) == before


@pytest.mark.parametrize("body, why", [
    ({"cad": "40.001"}, "more than 2 decimals"), ({"cad": "-40.00"}, "cannot be negative"),
    ({"cad": "0"}, "above 0.00"), ({"cad": "4e1"}, "not a CAD amount"), ({"note": "paid\rcash"}, "U+000D"),
    ({"note": ""}, "note: required"), ({"handle": "nobody"}, "unknown member nobody"),
    ({"on": "2026-13-01"}, "not a date of the calendar"),
    ({"method": "bitcoin", "note": None}, "needs its txid:vout"),
    ({"txid_vout": "ab" * 32 + ":0"}, "a cash payment has no txid:vout"),
])
def test_bad_payments_are_refused_with_a_reason(md, body, why):
    plan_set(md)
    add(md)
    sent = pay(md, **body)
    ack = md.answer(sent)
    assert ack["status"] == "refused" and why in ack["reason"], ack
    assert rows(md, MemberPayment) == 0


def test_a_bitcoin_output_is_counted_once(md):
    plan_set(md)
    add(md)
    out = "ab" * 32 + ":1"
    assert md.answer(pay(md, method="bitcoin", note=None, txid_vout=out))["status"] == "done"
    again = md.answer(pay(md, method="bitcoin", note=None, txid_vout=out))
    assert again["status"] == "refused" and "already recorded" in again["reason"]
    assert rows(md, MemberPayment) == 1


def test_a_float_or_a_wrong_field_never_reaches_the_handler(md):
    for bad in ({"cad": 40.0}, {"cad": 4000}, {"method": "paypal"}, {"on": "1/2/2026"}, {"colour": "red"}):
        with pytest.raises(SchemaError):
            md.command("cmd.members.pay", **({"handle": "ada", "cad": "40.00", "method": "cash", "note": "x",
                                              "on": None, "txid_vout": None} | bad))
    with pytest.raises(NotGranted):  # only admins may send member commands
        md.command("cmd.members.forget", sender="business_data", handle="ada")
    assert md.published == []


def test_events_carry_no_personal_data(md):
    plan_set(md)
    add(md)
    done(md, "cmd.members.set", handle="ada", personal=md.seal("Ada King", "ada.king@example.org"))
    assert member(md.actor.database, "ada")["email"] == "ada.king@example.org"
    assert "nothing to change" in refused(md, "cmd.members.set", handle="ada", personal=md.seal("Ada King"))
    pay(md)
    done(md, "cmd.members.group", handle="ada", group="keys", action="add")
    done(md, "cmd.members.leave", handle="ada", on=None)
    done(md, "cmd.members.forget", handle="ada")
    kinds = [e["kind"] for e in md.bodies("member.changed")]
    assert kinds == ["joined", "plan", "details", "paid", "group_joined", "left", "forgotten"]
    for topic, body in md.published:
        text = repr(body)
        for secret in (NAME, EMAIL, "Ada King", "ada.king@example.org", "example.org", "Ada"):
            assert secret not in text, (topic, body)


def test_names_and_emails_travel_sealed_to_member_data_alone(md, home, tmp_path):
    plan_set(md)
    sealed = md.seal(NAME, EMAIL)
    body = {"id": os.urandom(16), "expires": int(md.clock.time()) + 60, "handle": "ada", "personal": sealed,
            "plan": "regular", "joined": None}
    frames = md.messages.frames("cmd.members.add", body, sender="admin")
    assert NAME.encode() not in b"".join(frames) and EMAIL.encode() not in b"".join(frames)
    md.send("cmd.members.add", body, sender="admin")
    assert md.answer(body)["status"] == "done" and member(md.actor.database, "ada")["email"] == EMAIL
    # sealed to another identity's key (business_data's): refused, nothing written
    other = seal_personal(IdentityKeys.load(home.key_file("business_data")).curve_public, name="Bob",
                          email="bob@example.org")
    assert "not sealed to member_data's key" in refused(md, "cmd.members.add", handle="bob", personal=other,
                                                        plan="regular", joined=None)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])  # (not + b"x": the last byte is b"x" once in 256 runs)
    assert "not sealed" in refused(md, "cmd.members.set", handle="ada", personal=tampered)
    assert rows(md, MemberMember) == 1


def test_after_a_key_rotation_the_new_key_and_the_old_one_both_open(md, home):
    """`dctrl keys rotate member_data` writes a new key file while the actor runs: a command sealed
    to the new key (the CLI reads the registry) is opened after reading the file again, and a
    retry sealed to the old one still opens."""
    plan_set(md)
    add(md)  # the actor has read key v1
    path = home.key_file("member_data")
    old = path.read_bytes()
    new = IdentityKeys.generate("member_data", version=2)
    try:
        new.save(path)
        done(md, "cmd.members.add", handle="bob", personal=seal_personal(new.curve_public, name="Bob",
                                                                         email="bob@example.org"),
             plan="regular", joined=None)
        done(md, "cmd.members.set", handle="ada", personal=md.seal(None, "ada@example.net"))
    finally:
        path.write_bytes(old)
    assert [member(md.actor.database, h)["email"] for h in ("ada", "bob")] == ["ada@example.net", "bob@example.org"]


def test_a_change_its_events_and_its_dedup_record_commit_together_or_not_at_all(md, monkeypatch):
    plan_set(md)
    actor = md.actor
    body = {"id": os.urandom(16), "expires": int(md.clock.time()) + 60, "handle": "ada",
            "personal": md.seal(NAME, EMAIL), "plan": "regular", "joined": None}

    def broken(*a):
        raise RuntimeError("disk full")
    monkeypatch.setattr(actor.outbox, "add", broken)
    with pytest.raises(RuntimeError):
        actor.execute("cmd.members.add", body)
    assert (rows(md, MemberMember), rows(md, MemberFact), rows(md, MemberCommand)) == (0, 0, 1)  # (plan_set's)
    monkeypatch.undo()
    assert actor.execute("cmd.members.add", body)[0]["status"] == "done"  # the retry applies it, once
    assert (rows(md, MemberMember), rows(md, MemberFact), actor.outbox.pending()) == (1, 2, 2)


def test_events_wait_in_the_outbox_while_nothing_can_be_sent(md):
    plan_set(md)
    md.take()
    md.connected = False
    add(md)
    assert md.topics() == [ACK] and md.actor.outbox.pending() == 2
    md.connected = True
    md.advance(1)  # (the dues' discovery is asked meanwhile: cmd.chain.discover, not an event)
    assert [t for t in md.topics() if not t.startswith("cmd.chain.")] == [ACK, "member.changed", "member.changed"]
    assert md.actor.outbox.pending() == 0


def test_two_admins_changing_one_member_at_once_are_both_applied_or_cleanly_refused(md, monkeypatch):
    """Two writers on one database (as two MemberData processes overlapping in a restart would
    be), each pausing after it has read the member until the other has read it too, or half a
    second. With the row locked for the transaction, the second cannot read until the first
    commits, so it is judged on what the first wrote: of two leaves one is refused, of two
    payments both count. Without the lock both would read "not left" and both write."""
    plan_set(md)
    add(md)
    actor = md.actor
    original = MemberData._locked_member

    for topic, extra, expect in (("cmd.members.pay", {"cad": "40.00", "method": "cash", "note": "x", "on": None,
                                                      "txid_vout": None}, ["done", "done"]),
                                 ("cmd.members.leave", {"on": None}, ["done", "refused"])):
        barrier = threading.Barrier(2)

        def locked_then_wait(self, handle):
            m = original(self, handle)
            try:
                barrier.wait(0.5)  # both here at once only if the first did not lock the row
            except threading.BrokenBarrierError:
                pass
            return m
        monkeypatch.setattr(MemberData, "_locked_member", locked_then_wait)
        acks = []

        def run():
            body = {"id": os.urandom(16), "expires": int(md.clock.time()) + 60, "handle": "ada", **extra}
            acks.append(actor.execute(topic, body)[0]["status"])
            actor.database.close()  # this thread's connection
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(acks) == expect, (topic, acks)
        assert barrier.broken, "the second writer read the member while the first held it"
    monkeypatch.setattr(MemberData, "_locked_member", original)
    assert rows(md, MemberPayment) == 2
    assert [f["kind"] for f in member(actor.database, "ada")["facts"]].count("left") == 1


def test_today_is_the_utc_date_of_the_clock():
    assert today(1_800_000_000) == "2027-01-15"
    assert today(1_800_000_000 - 1_800_000_000 % 86400 - 1) == "2027-01-14"
