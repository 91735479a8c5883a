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

Dues in bitcoin (the section "dues in bitcoin" below; docs/architecture.md has the rules):
each member a dues address from ``[members] receive`` (book ``dues``, after the chain
notifier's discovery), every address handed out watched for good (again at every start, with
its birth time); a payment valued once at the fresh price when first seen (else the next fresh
one, marked late), counted once at the plan's confirmations as a ``bitcoin`` payment keyed by
its ``txid:vout``, and reversed once by an adjustment if replaced or reorged out after it
counted. A payment to an address no member was given is ignored and logged.

Not here: statuses and balances, which the Reporter derives from these facts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from decimal import ROUND_FLOOR, Decimal

import peewee

from keys.home import DEFAULTS as HOME_DEFAULTS
from keys.home import Home, merge
from proto.errors import ConfigError

from ..chain.addresses import AddressBook, Deriver
from ..chain.watching import Discovery, forward, send_due_watches
from ..db import connect, ensure_tables, write_transaction
from .. import outbox
from ..outbox import Outbox, apply_once, event_id
from ..runtime import Actor, every, on
from .models import (ADD_COLUMNS, DEFAULT_TERM_DAYS, DUES_BOOK, MANUAL_METHODS, TABLES, USED_ON_CHAIN, MemberAddress, MemberAdjustment, MemberChainPayment, MemberCommand,
                     MemberFact, MemberInputError, MemberMember, MemberPayment, MemberPlanVersion, MemberPrice, MemberWatch,
                     check_date, check_email, check_handle, check_name, check_note, check_term_days, db,
                     fill_added_columns, format_cents, open_personal, parse_cents)
from .queries import plan as plan_terms
from .queries import dues_gap, state_from_facts, today
from .models import MAIL_OPT_OUT_COLUMNS, check_opt_out, opt_out_kinds

log = logging.getLogger(__name__)

ACK = "members.ack"
DISCOVERING = "checking the chain for dues addresses already used (waiting for chain_notifier)"
LIVE = ("mempool", "confirmed")  # payment states that still hold money
CHAIN_STATES = {"seen": "mempool", "confirmed": "confirmed", "replaced": "replaced", "removed": "removed"}


Refused = outbox.Refused  # (a command not applied: its text is the ack's reason)


def _same_addresses(deriver, other_spec: str, network: str) -> bool:
    """Whether ``other_spec`` derives the addresses ``deriver`` does (its first two)."""
    try:
        other = Deriver(other_spec, network)
    except ConfigError:
        return False  # (BusinessMgr says what is wrong with its own)
    return all(deriver.address(i) == other.address(i) for i in (0, 1))


class MemberData(Actor):
    IDENTITY = "member_data"  # its name in the registry: commands seal personal data to this key

    def __init__(self, home: Home, *, database=None, clock=time.time):
        self.home = home
        self.clock = clock
        self.own_database = database is None  # closed at teardown only if opened here
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        self.outbox = Outbox(Outbox.model_for(self.database, "member_outbox"))
        ensure_tables(self.database, [*TABLES, self.outbox.model], add_columns=ADD_COLUMNS)
        if fill_added_columns(self.database):
            log.info("plan versions made before plans had a term: given %d days", DEFAULT_TERM_DAYS)
        self.unsent = True  # a previous run may have left events unsent: look at the first flush
        ensure_tables(self.database, [MemberMember], add_columns=MAIL_OPT_OUT_COLUMNS)  # (an older member table)
        self._init_dues(home, clock)
        self._curve_secrets: list[bytes] = []  # this identity's Curve secret keys, newest first (personal data)
        self.applied = 0
        self.refused = 0

    def teardown(self):
        if self.own_database:
            self.database.close()

    def setup(self):
        self._setup_dues()

    def health(self):
        detail = f"{self.applied} changes, {self.refused} refused"
        if self.unsent:
            detail += f", {self.outbox.pending()} event(s) waiting to be sent"
        if self.dues_error:
            return "degraded", f"no dues addresses: {self.dues_error}; {detail}"
        if self.discovery is not None:
            return "ok", f"{detail}; no dues address handed out yet: {self.discovery.error or DISCOVERING}"
        waiting = MemberChainPayment.select().where(MemberChainPayment.cad_per_btc.is_null()
                                                    & MemberChainPayment.payment.is_null()
                                                    & MemberChainPayment.state.in_(LIVE)).count()
        if waiting:
            detail += f"; {waiting} dues payment(s) waiting for a fresh price ({self.price_stale or 'too old'})"
        gap = dues_gap(self.database, int(self.cfg["gap_limit"]))
        if gap["gap"] > gap["gap_limit"]:
            detail += (f"; {gap['gap']} unused dues addresses in a row, more than the gap limit ({gap['gap_limit']})"
                       f" a wallet restoring [members] receive scans by default: restore with a gap limit of at "
                       f"least {gap['gap'] + 1}")
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
        if ack["status"] == "done" and msg.topic == "cmd.members.add":
            self._assign_addresses([msg.body["handle"]])  # (once the discovery has answered; else then)
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
        The dedup record, the change and its events commit together (actors/outbox.py
        apply_once); a refused command writes only its dedup record (the same refusal for a
        retry). Nothing is published here."""
        handler = self.COMMANDS.get(topic.split(".", 2)[2])

        def apply(cid):
            if handler is None:
                raise Refused(f"unknown command {topic}")
            return handler(self, body, cid)

        ack, events, status = apply_once(self.database, MemberCommand, self.outbox, topic, body, self.clock(),
                                         apply, "member")
        if status == "done":
            self.applied += 1
        elif status == "refused":
            self.refused += 1
        return ack, events

    # -- dues in bitcoin --------------------------------------------------------------------
    # Each member gets a dues address from the ``dues`` book ([members] receive), handed out
    # only after the chain notifier has said which of the book's addresses have history. Once a
    # payment to a member's current address has been seen, the member gets the next fresh one;
    # every address handed out stays watched (re-watched at each start, with its birth time).

    def _init_dues(self, home, clock):
        self.cfg = merge(HOME_DEFAULTS["members"], home.config.get("members") or {})
        self.network = (home.config.get("chain") or {}).get("network", "regtest")
        self.confirm_depth = int((home.config.get("chain") or {}).get("confirm_depth", 6))
        self.book = None
        self.dues_error = None
        spec = (self.cfg.get("receive") or "").strip()
        sales = ((home.config.get("business") or {}).get("receive") or "").strip()
        if not spec:
            self.dues_error = "no [members] receive xpub configured"
        elif spec == sales:
            self.dues_error = ("[members] receive is the same key as [business] receive: dues need an account "
                               "of their own (another xpub or derivation account), or a dues address could be "
                               "an invoice's")
        else:
            try:
                deriver = Deriver(spec, self.network)
                if sales and _same_addresses(deriver, sales, self.network):  # (an xpub and its descriptor)
                    self.dues_error = ("[members] receive derives the same addresses as [business] receive: dues "
                                       "need an account of their own")
                else:
                    self.book = AddressBook(MemberAddress, DUES_BOOK, deriver, gap_limit=int(self.cfg["gap_limit"]),
                                            clock=clock)
            except ConfigError as exc:
                self.dues_error = f"[members] receive: {exc}"
        self.discovery = Discovery(self.book, retry=float(self.cfg["watch_retry"]), clock=clock,
                                   used_label=USED_ON_CHAIN, section="[members] receive") if self.book else None
        self.price = None  # (CAD per BTC, as_of ms, sources JSON, wall time received)
        self.price_stale: str | None = "no price yet"
        self.watch_due: dict[str, float] = {}  # address -> monotonic time to (re)send its watch
        self._paid_handles: set[str] = set()  # members whose current address was just paid: a fresh one
        self.watched: set[str] = set()  # every dues address handed out (chain events for others: no transaction)
        self._ignored: set[str] = set()  # outputs to other addresses already logged (bounded)

    def _setup_dues(self):
        self._restore_price()
        if self.dues_error:
            log.error("%s: no dues addresses are handed out", self.dues_error)
            return
        # Every address handed out is watched again, with a new command id so the notifier looks
        # through its blocks again from the address's birth, whatever the order of restarts.
        with write_transaction(self.database):
            for w in MemberWatch.select():
                self.watched.add(w.address)
                MemberWatch.update(command=os.urandom(16).hex(), expires=int(self.clock()) + 60, acked=False,
                                   refused=None).where(MemberWatch.address == w.address).execute()
                self.watch_due[w.address] = 0.0
        log.info("member_data: %d dues address(es) to watch again", len(self.watch_due))

    @every(0.5)
    def chain_tick(self):
        if not self.runtime.ready_to_publish():  # not on the bus: asked again once it is
            return
        now_mono = time.monotonic()
        body = self.discovery.request(now_mono) if self.discovery is not None else None
        if body is not None:
            self.publish("cmd.chain.discover", body)
        self._send_watches(now_mono)

    @on("chain.discover.ack")
    def on_discover_ack(self, msg):
        if msg.body["book"] != DUES_BOOK or self.discovery is None:
            return
        if self.discovery.answer(msg.body):
            self.discovery = None
            self._assign_addresses()

    def _assign_addresses(self, handles=None):
        """Give every member (not forgotten) who has no fresh dues address the next one."""
        if self.book is None or self.discovery is not None:
            return
        q = MemberMember.select(MemberMember.handle).where(MemberMember.forgotten.is_null())
        if handles is not None:
            q = q.where(MemberMember.handle.in_(list(handles)))
        for (handle,) in q.order_by(MemberMember.id).tuples():
            self._ensure_address(handle)
        self._send_watches(time.monotonic())

    def _current_address(self, handle):
        return (MemberAddress.select().where((MemberAddress.book == DUES_BOOK) & (MemberAddress.label == handle))
                .order_by(MemberAddress.position.desc()).first())

    def _ensure_address(self, handle):
        """The member's dues address: the current one while nothing has paid it, else the next fresh one."""
        current = self._current_address(handle)
        if current is not None and not MemberChainPayment.select().where(
                MemberChainPayment.address == current.address).exists():
            return current.address
        with write_transaction(self.database):
            index, address = self.book.next(label=handle)
            issued = MemberAddress.get(MemberAddress.address == address)
            MemberWatch.create(address=address, handle=handle, since=issued.issued_at, command=os.urandom(16).hex(),
                               expires=int(self.clock()) + 60)
        self.watch_due[address] = 0.0
        self.watched.add(address)
        log.info("member %s: dues address /0/%d %s%s", handle, index, address,
                 f" (the last one, {current.address}, was paid)" if current is not None else "")
        return address

    def _send_watches(self, now_mono):
        send_due_watches(self.publish, MemberWatch, self.watch_due, now_mono, self.clock(),
                         float(self.cfg["watch_retry"]), lambda row: (f"dues {row.handle}", row.since))

    @on("chain.watch.ack")
    def on_watch_ack(self, msg):
        b = msg.body
        if b["address"] not in self.watched:
            return  # someone else's watch (an invoice's)
        row = MemberWatch.get_or_none(MemberWatch.address == b["address"])
        if row is None or row.command != b["id"].hex() or row.acked:
            return  # someone else's watch (an invoice's), or an answer to an older id
        self.watch_due.pop(row.address, None)  # (before what follows may want it again: as BusinessMgr)
        try:
            self._watch_answered(row, b)
        except BaseException:
            self.watch_due[row.address] = 0.0
            raise
        self._after_chain()

    def _watch_answered(self, row, b):
        with write_transaction(self.database):
            MemberWatch.update(acked=True, refused=b["reason"] if b["status"] == "refused" else None) \
                .where(MemberWatch.address == row.address).execute()
            if b["status"] == "refused":
                log.error("chain_notifier refused to watch dues address %s of %s: %s", row.address, row.handle,
                          b["reason"])
            else:
                for o in reversed(b["outputs"] or []):  # oldest first
                    self._observe(row.address, o["txid"], o["vout"], o["sats"], o["state"], o["confirmations"],
                                  snapshot=True, seen_at=o.get("seen_at"), by=o.get("by"))

    @on("chain.tx")
    def on_chain_tx(self, msg):
        b, kind = msg.body, msg.topic.rsplit(".", 1)[1]
        if kind not in CHAIN_STATES:
            return
        if b["address"] not in self.watched:  # an invoice's, or nobody's: no write lock taken for it
            self._ignore(f"{b['txid']}:{b['vout']}", b["sats"], b["address"])
            return
        with write_transaction(self.database):
            self._observe(b["address"], b["txid"], b["vout"], b["sats"], CHAIN_STATES[kind],
                          b.get("confirmations") or 0, snapshot=False, by=b.get("by"))
        self._after_chain()

    def _after_chain(self):
        """After a chain event: a member whose address was paid gets the next one; events go out."""
        if self._paid_handles:
            handles, self._paid_handles = self._paid_handles, set()
            self._assign_addresses(handles)
        self.unsent = True
        self.flush()

    def _observe(self, address, txid, vout, sats, state, confirmations, *, snapshot, seen_at=None, by=None):
        """Record what the chain says of one output (in a transaction): first seen, it is valued
        (at the fresh price, else at the next one); it counts once, at the plan's confirmations;
        replaced or removed after counting, it is reversed once. Live events are applied in the
        order they come; a snapshot (a watch ack) only moves a payment forward."""
        key = f"{txid}:{vout}"
        now = int(self.clock())
        p = MemberChainPayment.get_or_none(MemberChainPayment.txid_vout == key)
        if p is None:
            w = MemberWatch.get_or_none(MemberWatch.address == address)
            if w is None:
                self._ignore(key, sats, address)
                return
            if state not in LIVE:
                return  # never seen alive: nothing was paid
            first_seen = seen_at if snapshot and seen_at else now
            p = MemberChainPayment.create(txid_vout=key, handle=w.handle, address=address, sats=sats, state=state,
                                          confirmations=confirmations if state == "confirmed" else 0,
                                          first_seen=first_seen, replaced_by=by)
            log.info("member %s: dues payment %s of %d sats seen (%s)", w.handle, key, sats, state)
            self._value(p, late=now - first_seen > float(self.cfg["price_max_age"]))
            self._paid_handles.add(w.handle)
        else:
            if snapshot and not forward(p, state, confirmations):
                return
            if (p.state, p.confirmations) == (state, confirmations) and not (by and not p.replaced_by):
                return  # a repeated event
            p.state = state
            p.confirmations = max(confirmations, 1) if state == "confirmed" else confirmations
            if by:
                p.replaced_by = by
            p.save()
        self._settle(p)

    def _ignore(self, key, sats, address):
        """A payment to an address no member was given: never attributed; logged once per output."""
        if key in self._ignored:
            return
        if len(self._ignored) >= 4096:
            self._ignored.clear()
        self._ignored.add(key)
        log.info("payment %s of %d sats to %s: not a dues address given to a member, ignored", key, sats, address)

    def _fresh_price(self):
        if self.price_stale or self.price is None:
            return None
        if self.clock() - self.price[3] > float(self.cfg["price_max_age"]):
            return None
        return self.price

    def _value(self, p, *, late: bool) -> bool:
        """Fix the CAD rate of a payment not valued yet, once, at the fresh price; with none, it
        waits for the next fresh price (valued then, ``rate_late``: the rate came after the
        payment was first seen). Never a stale price, never a float."""
        if p.cad_per_btc is not None:
            return False
        price = self._fresh_price()
        if price is None:
            log.warning("dues payment %s: no fresh price (%s); valued at the next one", p.txid_vout,
                        self.price_stale or "the last price is too old")
            return False
        cad_per_btc, as_of, sources, _ = price
        p.cad_per_btc, p.rate_as_of, p.rate_sources, p.rate_late = str(cad_per_btc), as_of, sources, late
        p.save()
        return True

    def _needed(self, handle) -> int:
        """The confirmations the member's plan in force today asks (the notifier counts up to its
        confirm_depth, so more than that is never asked)."""
        fs = [{"kind": f.kind, "on": f.on, "plan": f.plan, "group": f.group}
              for f in MemberFact.select().where(MemberFact.handle == handle).order_by(MemberFact.id)]
        name = state_from_facts(fs, self._today())["plan"]
        terms = plan_terms(self.database, name) if name else None
        return max(1, min(terms["confirmations"] if terms else 1, self.confirm_depth))

    def _settle(self, p):
        today_ = self._today()
        if p.payment is None:
            if p.state != "confirmed" or p.confirmations < self._needed(p.handle) or p.cad_per_btc is None:
                return
            cents = int((Decimal(p.sats) * Decimal(p.cad_per_btc) / 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
            if cents <= 0:
                log.warning("dues payment %s of %d sats is worth less than a cent: not counted", p.txid_vout, p.sats)
                return
            recorded = MemberPayment.get_or_none(MemberPayment.txid_vout == p.txid_vout)
            if recorded is not None:  # an admin recorded this output by hand already: counted once, as that
                p.payment = recorded.id
                p.save()
                log.warning("dues payment %s was recorded by hand already (payment %d): not counted again",
                            p.txid_vout, recorded.id)
                return
            sources = ", ".join(json.loads(p.rate_sources or "[]")) or "no source named"
            note = (f"{p.sats} sats at {p.cad_per_btc} CAD/BTC ({sources})"
                    + ("; rate from a price after it was first seen" if p.rate_late else ""))
            paid_on = today(p.first_seen)  # the day it was first seen: paid then, as its value
            pay = MemberPayment.create(handle=p.handle, on=paid_on, method="bitcoin", cents=cents, note=note[:256],
                                       txid_vout=p.txid_vout, command=("chain" + p.txid_vout[:27]),
                                       created=int(self.clock()))
            p.payment = pay.id
            p.save()
            log.info("member %s paid %s CAD in bitcoin (%s, %d confirmations)", p.handle, format_cents(cents),
                     p.txid_vout, p.confirmations)
            self._chain_event(p, "paid", pay.id, paid_on)  # (as a payment by hand: one kind, one receipt path)
        elif p.reversal is None and p.state in ("replaced", "removed"):
            paid = MemberPayment.get_by_id(p.payment)
            done = MemberAdjustment.get_or_none(MemberAdjustment.reverses == paid.id)
            if done is not None:  # an admin reversed it already (members adjust --reverses): once
                p.reversal = done.id
                p.save()
                return
            why = f"replaced by {p.replaced_by}" if p.state == "replaced" and p.replaced_by else \
                "replaced" if p.state == "replaced" else "reorged out of the chain"
            adj = MemberAdjustment.create(handle=p.handle, on=today_, cents=-paid.cents,
                                          note=f"reverses bitcoin payment {p.txid_vout}: {why}"[:256],
                                          reverses=paid.id, command=("chain" + p.txid_vout[:27]),
                                          created=int(self.clock()))
            p.reversal = adj.id
            p.save()
            log.error("member %s: dues payment %s (%s CAD) %s after it counted: reversed", p.handle, p.txid_vout,
                      format_cents(paid.cents), why)
            self._chain_event(p, "adjusted", adj.id, today_)
        elif p.reversal is not None and p.state == "confirmed":
            log.error("member %s: dues payment %s confirmed again after its reversal: record it by hand "
                      "(dctrl members adjust %s --cad ... --note ...)", p.handle, p.txid_vout, p.handle)

    def _chain_event(self, p, kind, ref, on_):
        topic, body = self._changed(p.handle, kind, ref, on_)
        eid = event_id("member-chain", p.txid_vout, kind)
        self.outbox.add(topic, {**body, "event_id": eid}, eid)

    @on("price.btc_cad")
    def on_price(self, msg):
        price = Decimal(msg.body["cad_per_btc"])
        if price <= 0:
            self.price_stale = f"the last price ({price}) made no sense"
            self._keep_price()
            return
        used = [s["name"] for s in msg.body["sources"] if s.get("used")]
        self.price = (price, msg.body["as_of"], json.dumps(used), self.clock())
        self.price_stale = None
        self._keep_price()
        waiting = list(MemberChainPayment.select().where(MemberChainPayment.cad_per_btc.is_null()
                                                         & MemberChainPayment.payment.is_null()))
        if not waiting:
            return
        with write_transaction(self.database):
            for p in waiting:
                if self._value(p, late=True):
                    log.info("dues payment %s valued at %s CAD/BTC, a price after it was first seen", p.txid_vout,
                             price)
                    self._settle(p)
        self.unsent = True
        self.flush()

    @on("price.stale")
    def on_price_stale(self, msg):
        self.price_stale = f"price stale: {msg.body['reason']}"
        self._keep_price()

    def _keep_price(self):
        """Record the price event just accepted (or why there is none), for a restart."""
        if self.price_stale or self.price is None:
            values = {"cad_per_btc": None, "as_of": None, "sources": None, "stale": self.price_stale}
        else:
            values = {"cad_per_btc": str(self.price[0]), "as_of": self.price[1], "sources": self.price[2],
                      "stale": None}
        values["received"] = int(self.clock())
        with write_transaction(self.database):
            if not MemberPrice.update(**values).where(MemberPrice.id == 1).execute():
                MemberPrice.create(id=1, **values)

    def _restore_price(self):
        """At start: the last price accepted, if it arrived within ``price_max_age`` s by the wall
        clock (a clock that went back makes it unusable), or why there was none."""
        row = MemberPrice.get_or_none(MemberPrice.id == 1)
        if row is None:
            return
        if row.stale or row.cad_per_btc is None:
            self.price_stale = f"{row.stale or 'no price'} (the last word before a restart)"
            return
        age = self.clock() - row.received
        if 0 <= age <= float(self.cfg["price_max_age"]):
            self.price = (Decimal(row.cad_per_btc), row.as_of, row.sources, row.received)
            self.price_stale = None
            log.info("price at start: %s CAD/BTC, received %.0f s ago", row.cad_per_btc, age)
        else:
            self.price_stale = f"no price yet (the last one, received {age:.0f} s ago, is too old)"


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
        changed += self._opt_out(m, body)
        if not changed:
            raise Refused("nothing to change: give a new name or email, or mail to opt out of or back in to")
        m.save()
        log.info("member %s: %s changed", m.handle, " and ".join(changed))
        return [self._fact(cid, m.handle, "details", self._today(), detail=",".join(changed))]

    @staticmethod
    def _opt_out(m, body) -> list[str]:
        """``opt_out``/``opt_in`` of cmd.members.set applied to the row: ["opt_out"] if it changed."""
        out = set(check_opt_out(body["opt_out"], "opt_out")) if body.get("opt_out") else set()
        back = set(check_opt_out(body["opt_in"], "opt_in")) if body.get("opt_in") else set()
        if out & back:
            raise Refused(f"{', '.join(sorted(out & back))}: both opted out of and in to")
        now = set(opt_out_kinds(m.mail_opt_out))
        new = (now | out) - back
        if new == now:
            return []
        m.mail_opt_out = ",".join(sorted(new)) or None
        log.info("member %s: mail opted out of: %s", m.handle, ", ".join(sorted(new)) or "none")
        return ["opt_out"]

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
        term = body.get("term_days")
        term = check_term_days(DEFAULT_TERM_DAYS if term is None else term, body["period"])
        p = MemberPlanVersion.create(name=name, cents=cents, period=body["period"], grace_days=body["grace_days"],
                                     confirmations=body["confirmations"], term_days=term, created=int(self.clock()))
        log.info("plan %s: %s CAD a %s, due within %d days, %d days' grace (version %d)", name, format_cents(cents),
                 p.period, p.term_days, p.grace_days, p.version)
        return [("member.plan.changed", {"name": name, "version": p.version, "cents": cents, "period": p.period,
                                         "grace_days": p.grace_days, "confirmations": p.confirmations,
                                         "term_days": p.term_days})]

    COMMANDS = {"add": _add, "set": _set, "pay": _pay, "adjust": _adjust, "plan": _plan_change, "leave": _leave,
                "rejoin": _rejoin, "group": _group, "forget": _forget, "plan_set": _plan_set}


__all__ = ["ACK", "MemberData", "MemberInputError", "Refused"]
