"""MemberData: members, plans and the append-only facts about members.

The single writer of the ``member_*`` tables (actors/member_data/models.py says what each
holds). Changes arrive as commands from admins (``dctrl members ...``, ``dctrl plans set``):
``cmd.members.add|set|pay|adjust|plan|leave|rejoin|group|forget|plan_set``, each with an
``id`` (16 bytes) and an ``expires`` (unix seconds), as BusinessData's: a command id is applied
at most once (a retry gets the same answer again, from the ``member_command`` table), an
expired command is refused. Every command is answered on ``members.ack`` {id, status "done" |
"refused", reason}; every change is published as an event: ``member.changed`` {handle, kind,
ref} for a member, ``member.plan.changed`` for a plan's new version.

Personal data is never in clear on the bus: events carry the handle, the kind of fact and the
id of its row, never a name or an email (not even a changed one: ``kind`` ``details`` and the
row say which fields changed); the commands that give a name or an email (``add``, ``set``)
carry them sealed to this identity's Curve public key (``personal``, see
:func:`~actors.member_data.models.seal_personal`), because the event log records every message
for months and ``forget`` could never erase a name from it. Readers who need them read the
database (:mod:`actors.member_data.queries`).

Append-only. Facts, payments and adjustments are inserted, never updated or deleted: a wrong
payment is reversed by an adjustment of the opposite amount naming it (once). Only a member's
name and email change: corrected by ``set``, erased for good by ``forget`` (only after the
member has left; the handle, the facts and the money stay, under the handle).

Concurrency. This actor handles one command at a time on its loop thread, each in one
transaction with its dedup record and its events (the outbox). Two admins changing the same
member at once therefore queue here; and should two MemberData processes ever run on one
database (a restart overlapping the old process), each command first locks its member's row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is taken at BEGIN), so a check
(has this member left already?) and the write it allows cannot interleave with another's: the
second waits, then is judged on what the first wrote. A new handle added twice at once meets
the unique index and is refused.

Events are never lost, as BusinessData's: recorded in ``member_outbox`` (:mod:`actors.outbox`)
with the change, published after the commit and marked sent once on the socket; unsent rows go
out from a one-second timer, also after a restart. ``event_id`` is the sha256 of the command
id and the event's index in it, so the one duplicate possible (killed between sending and
marking) has the same id. The ack is published directly (a lost one is answered again when the
sender retries).

Not here yet: dues addresses and bitcoin payments seen on the chain (a later step: the schema
already takes ``method`` bitcoin with its ``txid_vout``, counted once), and statuses and
balances, which the Reporter derives from these facts.
"""

from __future__ import annotations

import json
import logging
import time

import peewee

from keys.home import Home

from ..db import connect, ensure_tables, write_transaction
from ..outbox import Outbox, event_id
from ..runtime import Actor, every, on
from .models import (MANUAL_METHODS, TABLES, MemberAdjustment, MemberCommand, MemberFact, MemberInputError,
                     MemberMember, MemberPayment, MemberPlanVersion, check_date, check_email, check_handle,
                     check_name, check_note, db, format_cents, open_personal, parse_cents)
from .queries import plan as plan_terms
from .queries import state_from_facts, today

log = logging.getLogger(__name__)

ACK = "members.ack"


class Refused(Exception):
    pass


class MemberData(Actor):
    IDENTITY = "member_data"  # its name in the registry: commands seal personal data to this key

    def __init__(self, home: Home, *, database=None, clock=time.time):
        self.home = home
        self.clock = clock
        self.own_database = database is None  # closed at teardown only if opened here
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        self.outbox = Outbox(Outbox.model_for(self.database, "member_outbox"))
        ensure_tables(self.database, [*TABLES, self.outbox.model])
        self.unsent = True  # a previous run may have left events unsent: look at the first flush
        self._curve_secrets: list[bytes] = []  # this identity's Curve secret keys, newest first (personal data)
        self.applied = 0
        self.refused = 0

    def teardown(self):
        if self.own_database:
            self.database.close()

    def health(self):
        detail = f"{self.applied} changes, {self.refused} refused"
        if self.unsent:
            detail += f", {self.outbox.pending()} event(s) waiting to be sent"
        return "ok", detail

    # -- commands from the bus (loop thread: one writer, one command at a time) ----

    @on("cmd.members")
    def command(self, msg):
        """Every cmd.members.* command, e.g. cmd.members.pay {"id", "expires", "handle": "ada",
        "cad": "40.00", "method": "cash", "note": "at the door", "on": null, "txid_vout": null}.
        The body was checked against its topic's schema (proto/topics.py) on arrival."""
        ack, events = self.execute(msg.topic, msg.body)
        if events:
            self.unsent = True
        self.flush()
        self.publish(ACK, ack)

    @every(1.0)
    def flush(self):
        """Publish what the outbox holds unsent (only while the runtime can send now)."""
        if self.unsent:
            self.outbox.flush(self.runtime)
            self.unsent = self.outbox.pending() > 0

    def execute(self, topic: str, body: dict) -> tuple[dict, list]:
        """Apply one command (a schema-checked body) exactly once; returns (ack body, [(topic, event)]).

        The dedup record, the change and its events (in the outbox) commit in one transaction:
        a command is either applied, remembered and announced, or none of these. A refused
        command writes only its dedup record (the same refusal for a retry). Nothing is
        published here."""
        cid = body["id"].hex()
        kind = topic.split(".", 2)[2]
        events: list = []
        with write_transaction(self.database):
            done = MemberCommand.get_or_none(MemberCommand.id == cid)
            if done is not None:  # a retry: the same answer again, nothing done twice
                return {"id": body["id"], **json.loads(done.result)}, []
            try:
                if body["expires"] < self.clock():
                    raise Refused("command expired")
                handler = self.COMMANDS.get(kind)
                if handler is None:
                    raise Refused(f"unknown command {topic}")
                try:
                    with self.database.atomic():  # a savepoint: a refused command writes nothing
                        events = handler(self, body, cid)
                except peewee.IntegrityError as exc:  # a unique index met (a handle or txid:vout added at once)
                    raise Refused(f"conflicts with a record made meanwhile: {str(exc).splitlines()[0][:200]}") \
                        from None
                result = {"status": "done", "reason": None}
                self.applied += 1
            except (Refused, ValueError) as exc:
                result = {"status": "refused", "reason": str(exc)[:512]}
                self.refused += 1
                log.info("refused %s %s: %s", topic, cid, exc)
            MemberCommand.create(id=cid, topic=topic[:64], result=json.dumps(result), created=int(self.clock()))
            events = [(t, {**e, "event_id": event_id("member", cid, n)}) for n, (t, e) in enumerate(events)]
            for t, e in events:
                self.outbox.add(t, e, e["event_id"])
        return {"id": body["id"], **result}, events

    # -- the commands --------------------------------------------------------------------

    def _today(self) -> str:
        return today(self.clock())

    def _locked_member(self, handle: str) -> MemberMember:
        """The member's row, locked until the transaction ends (PostgreSQL: FOR UPDATE; SQLite:
        the transaction holds the database's write lock already)."""
        q = MemberMember.select().where(MemberMember.handle == check_handle(handle))
        if not isinstance(self.database, peewee.SqliteDatabase):
            q = q.for_update()
        m = q.first()
        if m is None:
            raise Refused(f"unknown member {handle}")
        return m

    def _state(self, handle: str) -> dict:
        fs = [{"kind": f.kind, "on": f.on, "plan": f.plan, "group": f.group}
              for f in MemberFact.select().where(MemberFact.handle == handle).order_by(MemberFact.id)]
        return state_from_facts(fs)

    def _fact(self, cid, handle, kind, on, **fields) -> tuple[str, dict]:
        f = MemberFact.create(handle=handle, kind=kind, on=on, command=cid, created=int(self.clock()), **fields)
        return self._changed(handle, kind, f.id, on)

    @staticmethod
    def _changed(handle, kind, ref, on) -> tuple[str, dict]:
        """The event for one new row: the handle, the kind of fact and the row's id; never personal data."""
        return "member.changed", {"handle": handle, "kind": kind, "ref": ref, "on": on}

    def _plan(self, name) -> dict:
        check_handle(name, "plan")
        terms = plan_terms(self.database, name)
        if terms is None:
            raise Refused(f"unknown plan {name} (dctrl plans set {name} ... makes it)")
        return terms

    def _personal(self, body) -> dict:
        """The name and email a command carries sealed to this identity's Curve key. Tried with
        every key version this run has read, and once more after reading the key file again
        (`dctrl keys rotate member_data` may have written a new one since)."""
        if self._curve_secrets:
            try:
                return open_personal(self._curve_secrets, body["personal"])
            except MemberInputError:
                pass
        from keys.identity import IdentityKeys

        secret = IdentityKeys.load(self.home.key_file(self.IDENTITY)).curve_secret
        if secret not in self._curve_secrets:
            self._curve_secrets.insert(0, secret)
        return open_personal(self._curve_secrets, body["personal"])

    def _add(self, body, cid):
        handle = check_handle(body["handle"])
        personal = self._personal(body)
        name, email = check_name(personal["name"]), check_email(personal["email"])
        joined = check_date(body["joined"], "joined") if body.get("joined") else self._today()
        self._plan(body["plan"])
        if MemberMember.get_or_none(MemberMember.handle == handle) is not None:
            raise Refused(f"member {handle} already exists (a handle is never reused)")
        MemberMember.create(handle=handle, name=name, email=email, joined=joined, created=int(self.clock()))
        log.info("member %s added, plan %s from %s", handle, body["plan"], joined)
        return [self._fact(cid, handle, "joined", joined),
                self._fact(cid, handle, "plan", joined, plan=body["plan"])]

    def _set(self, body, cid):
        m = self._locked_member(body["handle"])
        if m.forgotten is not None:
            raise Refused(f"member {m.handle} was forgotten: nothing personal is kept to change")
        changed = []
        personal = self._personal(body)
        if personal["name"] is not None:
            name = check_name(personal["name"])
            if name != m.name:
                m.name = name
                changed.append("name")
        if personal["email"] is not None:
            email = check_email(personal["email"])
            if email != m.email:
                m.email = email
                changed.append("email")
        if not changed:
            raise Refused("nothing to change: give a new name or email")
        m.save()
        log.info("member %s: %s changed", m.handle, " and ".join(changed))
        return [self._fact(cid, m.handle, "details", self._today(), detail=",".join(changed))]

    def _pay(self, body, cid):
        m = self._locked_member(body["handle"])
        cents = parse_cents(body["cad"], field="cad")
        if cents <= 0:
            raise Refused("cad: a payment is above 0.00 (to take money back: adjust)")
        method = body["method"]
        txid_vout = body.get("txid_vout")
        if method in MANUAL_METHODS:
            note = check_note(body.get("note"))
            if txid_vout is not None:
                raise Refused(f"a {method} payment has no txid:vout")
        else:  # bitcoin: the chain's payment, counted once by its output
            note = check_note(body.get("note"), required=False)
            if txid_vout is None:
                raise Refused("a bitcoin payment needs its txid:vout")
            if MemberPayment.get_or_none(MemberPayment.txid_vout == txid_vout) is not None:
                raise Refused(f"output {txid_vout} is already recorded")
        on = check_date(body["on"], "on") if body.get("on") else self._today()
        p = MemberPayment.create(handle=m.handle, on=on, method=method, cents=cents, note=note, txid_vout=txid_vout,
                                 command=cid, created=int(self.clock()))
        log.info("member %s paid %s CAD (%s) on %s", m.handle, format_cents(cents), method, on)
        return [self._changed(m.handle, "paid", p.id, on)]

    def _adjust(self, body, cid):
        m = self._locked_member(body["handle"])
        cents = parse_cents(body["cad"], signed=True, field="cad")
        if cents == 0:
            raise Refused("cad: an adjustment of 0.00 changes nothing")
        note = check_note(body["note"])
        on = check_date(body["on"], "on") if body.get("on") else self._today()
        reverses = body.get("reverses")
        if reverses is not None:
            paid = MemberPayment.get_or_none((MemberPayment.id == reverses) & (MemberPayment.handle == m.handle))
            if paid is None:
                raise Refused(f"member {m.handle} has no payment {reverses}")
            if cents != -paid.cents:
                raise Refused(f"reversing payment {reverses} of {format_cents(paid.cents)} CAD takes "
                              f"-{format_cents(paid.cents)}, not {format_cents(cents)}")
            if MemberAdjustment.get_or_none(MemberAdjustment.reverses == reverses) is not None:
                raise Refused(f"payment {reverses} is already reversed")
        a = MemberAdjustment.create(handle=m.handle, on=on, cents=cents, note=note, reverses=reverses, command=cid,
                                    created=int(self.clock()))
        log.info("member %s adjusted by %s CAD on %s", m.handle, format_cents(cents), on)
        return [self._changed(m.handle, "adjusted", a.id, on)]

    def _plan_change(self, body, cid):
        m = self._locked_member(body["handle"])
        if m.forgotten is not None:
            raise Refused(f"member {m.handle} was forgotten")
        self._plan(body["plan"])
        on = check_date(body["from"], "from")
        if on < m.joined:
            raise Refused(f"from {on}: before {m.handle} joined ({m.joined})")
        log.info("member %s: plan %s from %s", m.handle, body["plan"], on)
        return [self._fact(cid, m.handle, "plan", on, plan=body["plan"])]

    def _leave(self, body, cid):
        m = self._locked_member(body["handle"])
        state = self._state(m.handle)
        if state["left"] is not None:
            raise Refused(f"member {m.handle} left already (on {state['left']})")
        on = check_date(body["on"], "on") if body.get("on") else self._today()
        since = max([m.joined] + [f.on for f in MemberFact.select(MemberFact.on).where(
            (MemberFact.handle == m.handle) & (MemberFact.kind == "rejoined"))])
        if on < since:
            raise Refused(f"on {on}: before {m.handle} {'joined' if since == m.joined else 'rejoined'} ({since})")
        log.info("member %s leaves on %s", m.handle, on)
        return [self._fact(cid, m.handle, "left", on)]

    def _rejoin(self, body, cid):
        m = self._locked_member(body["handle"])
        if m.forgotten is not None:
            raise Refused(f"member {m.handle} was forgotten: add them again under a new handle")
        state = self._state(m.handle)
        if state["left"] is None:
            raise Refused(f"member {m.handle} has not left")
        on = check_date(body["on"], "on") if body.get("on") else self._today()
        if on < state["left"]:
            raise Refused(f"on {on}: before {m.handle} left ({state['left']})")
        log.info("member %s rejoins on %s", m.handle, on)
        return [self._fact(cid, m.handle, "rejoined", on)]

    def _group(self, body, cid):
        m = self._locked_member(body["handle"])
        if m.forgotten is not None:
            raise Refused(f"member {m.handle} was forgotten")
        group = check_handle(body["group"], "group")
        groups = self._state(m.handle)["groups"]
        if body["action"] == "add":
            if group in groups:
                raise Refused(f"member {m.handle} is in group {group} already")
            kind = "group_joined"
        else:
            if group not in groups:
                raise Refused(f"member {m.handle} is not in group {group}")
            kind = "group_left"
        log.info("member %s: %s %s", m.handle, kind, group)
        return [self._fact(cid, m.handle, kind, self._today(), group=group)]

    def _forget(self, body, cid):
        m = self._locked_member(body["handle"])
        if m.forgotten is not None:
            raise Refused(f"member {m.handle} was forgotten already")
        if self._state(m.handle)["left"] is None:
            raise Refused(f"member {m.handle} has not left: `dctrl members leave {m.handle}` first")
        m.name, m.email, m.forgotten = None, None, int(self.clock())
        m.save()
        log.info("member %s forgotten: name and email erased", m.handle)
        return [self._fact(cid, m.handle, "forgotten", self._today())]

    def _plan_set(self, body, cid):
        name = check_handle(body["name"], "plan")
        cents = parse_cents(body["cad"], field="cad")
        p = MemberPlanVersion.create(name=name, cents=cents, period=body["period"], grace_days=body["grace_days"],
                                     confirmations=body["confirmations"], created=int(self.clock()))
        log.info("plan %s: %s CAD a %s, %d days' grace (version %d)", name, format_cents(cents), p.period,
                 p.grace_days, p.version)
        return [("member.plan.changed", {"name": name, "version": p.version, "cents": cents, "period": p.period,
                                         "grace_days": p.grace_days, "confirmations": p.confirmations})]

    COMMANDS = {"add": _add, "set": _set, "pay": _pay, "adjust": _adjust, "plan": _plan_change, "leave": _leave,
                "rejoin": _rejoin, "group": _group, "forget": _forget, "plan_set": _plan_set}


__all__ = ["ACK", "MemberData", "MemberInputError", "Refused"]
