"""BusinessMgr: invoices, the confirmation policy, and vend commands until acknowledged.

A sale starts one of two ways:

* **Invoice mode**: a selection on a machine (``machine.NAME.button`` {slot})
  opens an invoice: a fresh address from the ``invoices`` address book (BIP84,
  public derivation only), a BTC amount quoted at the current price and held
  for the invoice lifetime, and a ``cmd.chain.watch`` for the address. It is
  announced on ``invoice.opened`` (with a ``bitcoin:`` URI for the display).
* **Sticker mode** (DCTRL's legacy): a slot's fixed address printed on the
  machine. Each payment to it becomes its own invoice, priced at the first
  fresh price: it buys ``floor((sats + tolerance) / price)`` items, dispensed
  one at a time; the remainder is recorded as credit.

States (``invoice.changed`` on every change)::

    open -> seen -> paid -> vending -> vended | overpaid | failed
    open | seen -> expired | underpaid            (at expiry)

* A payment counts when it is *settled*: confirmed ``confirmations`` times,
  or, only if the invoice's amount is below the zero-confirmation limit, seen
  in the mempool and not replaced. An invoice is paid once its settled
  on-time payments reach the quote minus the underpayment tolerance.
* No sale at a stale price: no invoice opens and no sticker payment is priced
  unless a ``price.btc_cad`` arrived within ``price_max_age`` seconds and no
  ``price.stale`` since. The quote and the policy are fixed when the invoice
  opens: a later price update changes nothing about it (DCTRL's earlier code
  dispensed again when the rate changed; here price events never start a vend).
  The last price event is kept (``sales_price``), so a restart sells at once
  at a price that arrived within ``price_max_age`` seconds by the wall clock
  (the same rule, counted from its arrival), and not after a ``price.stale``.
* Stock: a slot whose stock is counted sells only what is left. Every invoice
  not closed (open, seen, paid, vending) holds the items it has not dispensed
  yet; a press finds the slot sold out when the stock, less the vends
  BusinessData has not counted yet, less what those invoices hold, is 0
  (``invoice.refused``, "sold out"). A second press on the same slot still
  shows the open unpaid invoice holding the last item. A sticker payment buys
  at most what is left and not held; the rest is credit (owed back).
* One vend command per item, each with its own id and an expiry no later than
  the item's deadline, re-sent with the same id until the machine answers
  (the machine acts on an id at most once and answers a retry with the same
  ack). Only a refusal (never actuated) lets a new id be sent for the item.
  Items are sent one at a time.
* Under- and over-payments, late payments (first seen after expiry, or after
  the invoice closed), payments replaced after the sale and failed vends are
  recorded on the invoice and visible (``dctrl invoices``); refunds are the
  payout work's.
* Everything is in the database and every event goes through an outbox in
  the same transaction as the change. At start it re-sends a watch for every
  invoice that is not closed (and every closed one from the last
  ``late_window`` seconds, for late payments) and every sticker address; the
  ChainNotifier's answer carries the current state of each address's payments,
  which are applied before any of those invoices may expire. Vends not yet
  acknowledged are re-sent with their ids.

The tables are ``sales_*``; this actor is their only writer. It reads
machines, slots and policies through BusinessData's query functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from decimal import Decimal

import peewee

from keys.home import Home, merge
from proto.errors import ConfigError

from ..business_data import models as bdm
from ..business_data import queries as bd
from ..chain.addresses import AddressBook, Deriver
from ..chain.watching import Discovery, send_due_watches
from ..chain.watching import forward as _forward
from ..db import Statements, checkpoint_in_background, connect, ensure_tables, write_transaction
from ..outbox import Outbox, event_id
from ..runtime import Actor, every, on
from .models import (CLOSED, DEFAULTS, LIVE, SELLING, TABLES, WAITING, SalesInvoice, SalesPayment, SalesPrice,
                     SalesVend, SalesWatch, btc, db, quote_sats, tolerance_sats)
from .queries import _REUSABLE_SQL, USED_ON_CHAIN, address_gap

log = logging.getLogger(__name__)

DISCOVERING = "checking the chain for invoice addresses already used (waiting for chain_notifier)"
UNSYNCED_REASON = "clock not synchronised"        # a machine refusal that is not final (see machine_agent/mgr.py)
FLUSH_DELAY = 0.01                                # s: invoice events wait this long behind a vend command


# -- the actor ----------------------------------------------------------------

@dataclass
class PendingVend:
    """A vend command not yet answered (mirrors its SalesVend row; re-sent from memory)."""

    id: str
    invoice: int
    machine: str
    slot: int
    expires: int
    deadline: int
    created: int
    state: str = "sent"       # sent | unanswered
    attempts: int = 0
    due: float = 0.0          # monotonic time of the next send


class Refusal(Exception):
    """A selection that cannot become an invoice (published on invoice.refused)."""


ANSWER_INTERVAL = 1.0  # s: at most one re-announcement per (machine, slot), one refusal per (machine, slot, reason)
ANSWER_KEYS_MAX = 4096  # remembered answer times beyond which those older than the interval are dropped


class BusinessMgr(Actor):
    def __init__(self, home: Home, *, database=None, clock=time.time):
        self.home = home
        self.cfg = merge(DEFAULTS, home.config.get("business", {}))
        self.clock = clock
        self.network = home.config.get("chain", {}).get("network", "regtest")
        self.own_database = database is None  # closed at teardown only if opened here
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        self.sql = Statements(self.database)  # the sale's path: fixed statements (see actors/db.py)
        self.outbox = Outbox(Outbox.model_for(self.database, "sales_outbox"))
        book_model = AddressBook.model(self.database, "sales_address")
        ensure_tables(self.database, [*TABLES, self.outbox.model, book_model],
                      add_columns={SalesPayment: ["replaced_by"], SalesWatch: ["created"]})  # (older versions)
        self.book = None
        self.config_error = None
        if self.cfg["receive"]:
            try:
                self.book = AddressBook(book_model, "invoices", Deriver(self.cfg["receive"], self.network),
                                        gap_limit=int(self.cfg["gap_limit"]), clock=clock)
            except ConfigError as exc:
                self.config_error = f"[business] receive: {exc}"
        else:
            self.config_error = "no [business] receive xpub configured: no invoices can open"
        # Until the chain notifier has said which receive addresses have history, no address
        # is handed out (a new or switched database would start at index 0 again).
        self.discovery = Discovery(self.book, retry=self.cfg["watch_retry"], clock=clock, used_label=USED_ON_CHAIN,
                                   section="[business] receive") if self.book else None
        self.price: tuple[Decimal, float] | None = None   # (CAD per BTC, monotonic time received)
        self.price_stale: str | None = "no price yet"
        self._restore_price()
        self._stock_tables = False  # business_data's stock tables exist (once seen, they stay)
        self.stickers: dict[str, tuple[str, int]] = {}     # sticker address -> (machine, slot)
        self.watch_due: dict[str, float] = {}              # address -> monotonic time to (re)send
        self.vends: dict[str, PendingVend] = {}             # vend id -> a command awaiting its answer
        self._uncommitted: list[PendingVend] = []          # made in the open transaction
        self._depth = 0
        self._flush_pending = False
        self._checkpoints = None
        self.counts = {"opened": 0, "refused": 0, "vended": 0, "failed": 0}
        chain = merge({"confirm_depth": 6}, home.config.get("chain", {}))
        self.confirm_depth = int(chain["confirm_depth"])  # the notifier counts confirmations up to this
        self.opened_at: dict[str, list[float]] = {}        # machine -> monotonic times of recent invoices
        self.answered: dict[tuple, float] = {}             # (machine, slot[, reason]) -> monotonic time answered
        self.suppressed = {"reannounced": 0, "refused": 0}  # answers not sent: a press too soon after the last
        self.asked: set[int] = set()                       # expired invoices the chain was asked about again
        self.held: dict[int, float] = {}                   # expired invoice -> monotonic time of the next look

    # -- lifecycle ------------------------------------------------------------

    def setup(self):
        if self.config_error:
            log.error("%s", self.config_error)
        self._checkpoints = checkpoint_in_background(self.database)  # no WAL copy on a sale's commit
        self._load_stickers()
        self._reconcile_all(closed_within=int(self.cfg["late_window"]))
        for r in SalesVend.select().where(SalesVend.state.in_(("sent", "unanswered"))):
            self.vends[r.id] = PendingVend(id=r.id, invoice=r.invoice_id, machine=r.machine, slot=r.slot,
                                           expires=r.expires, deadline=r.deadline, created=r.created,
                                           state=r.state, attempts=r.attempts)
        log.info("business_mgr: %d watch(es) to reconcile, %d vend(s) awaiting an answer",
                 len(self.watch_due), len(self.vends))

    def _reconcile_all(self, closed_within=0):
        """Ask the chain notifier again about every invoice that may still change (and those
        closed within ``closed_within`` seconds, for late payments) and every sticker address."""
        now = int(self.clock())
        with self._txn():
            recent = SalesInvoice.select(SalesInvoice.address).where(
                SalesInvoice.state.in_(WAITING + SELLING)
                | (SalesInvoice.closed_at >= now - closed_within)).distinct()
            for (address,) in recent.tuples():
                self._want_watch(address, None, reconcile=True)
            for address, (machine, slot) in self.stickers.items():
                self._want_watch(address, f"sticker {machine}/{slot}", reconcile=True)

    def reconnected(self):
        """Back on the bus after a loss: chain events may have been lost meanwhile."""
        log.info("reconnected: reconciling open invoices with the chain notifier")
        self._reconcile_all()

    def teardown(self):
        if self._checkpoints is not None:
            self._checkpoints.stop()
        if self.own_database:
            self.database.close()

    def health(self):
        open_, selling = (SalesInvoice.select().where(SalesInvoice.state.in_(states)).count()
                          for states in (WAITING, SELLING))
        unanswered = SalesVend.select().where(SalesVend.state == "unanswered").count()
        detail = f"{open_} open, {selling} paid and vending, {self.counts['vended']} vended since start"
        if any(self.suppressed.values()):
            detail += (f", presses answered at most once a second: {self.suppressed['reannounced']} "
                       f"re-announcement(s) and {self.suppressed['refused']} refusal(s) suppressed")
        if self.config_error:
            return "degraded", f"{self.config_error}; {detail}"
        if self.discovery is not None:
            return "starting", f"no sales yet: {DISCOVERING}; {detail}"
        if unanswered:
            return "degraded", f"{unanswered} vend(s) unanswered by their machine; {detail}"
        stale = self._stale()
        if stale:
            return "degraded", f"no sales: {stale}; {detail}"
        return "ok", detail

    # -- price ------------------------------------------------------------------

    @on("price.btc_cad")
    def on_price(self, msg):
        price = Decimal(msg.body["cad_per_btc"])
        if price <= 0:
            log.error("price.btc_cad of %s CAD/BTC from %s refused", price, msg.sender)
            self.price_stale = f"the last price ({price}) made no sense"
            self._keep_price(None, None, self.price_stale)
            return
        self.price = (price, time.monotonic())
        self.price_stale = None
        self._keep_price(price, msg.body["as_of"], None)
        if SalesInvoice.select().where((SalesInvoice.mode == "sticker") & SalesInvoice.due_sats.is_null()
                                       & SalesInvoice.state.in_(WAITING)).exists():
            self._evaluate_where(SalesInvoice.due_sats.is_null())  # sticker payments waiting for a price

    @on("price.stale")
    def on_price_stale(self, msg):
        self.price_stale = f"price stale: {msg.body['reason']}"
        self._keep_price(None, None, self.price_stale)

    def _keep_price(self, price, as_of, stale):
        """Record the price event just accepted (or why there is none), for a restart."""
        values = {"cad_per_btc": None if price is None else str(price), "as_of": as_of,
                  "received": int(self.clock()), "stale": stale}
        with write_transaction(self.database):
            if not SalesPrice.update(**values).where(SalesPrice.id == 1).execute():
                SalesPrice.create(id=1, **values)

    def _restore_price(self):
        """At start: the last price accepted, if it arrived within ``price_max_age`` seconds by
        the wall clock (the live rule, counted from its arrival; a clock that went back makes
        it unusable); or why there was none. Until then: no price yet."""
        row = SalesPrice.get_or_none(SalesPrice.id == 1)
        if row is None:
            return
        if row.stale:
            self.price_stale = f"{row.stale} (the last word before a restart)"
            return
        age = self.clock() - row.received
        if 0 <= age <= self.cfg["price_max_age"]:
            self.price = (Decimal(row.cad_per_btc), time.monotonic() - age)
            self.price_stale = None
            log.info("price at start: %s CAD/BTC, received %.0f s ago", row.cad_per_btc, age)
        else:
            self.price_stale = f"no price yet (the last one, received {age:.0f} s ago, is too old)"

    def _stale(self) -> str | None:
        if self.price_stale:
            return self.price_stale
        age = time.monotonic() - self.price[1]
        if age > self.cfg["price_max_age"]:
            return f"last price is {age:.0f} s old"
        return None

    def fresh_price(self) -> Decimal:
        stale = self._stale()
        if stale:
            raise Refusal(f"no sale at a stale price ({stale})")
        return self.price[0]

    # -- machines: selections and vend answers ----------------------------------

    @on("machine")
    def on_machine(self, msg):
        parts = msg.topic.split(".")
        machine, kind = parts[1], ".".join(parts[2:])
        if msg.sender != machine:  # the broker's ACL already ensures it; say so if it ever did not
            log.warning("%s from %s ignored: only %s speaks for itself", msg.topic, msg.sender, machine)
            return
        if kind == "button":
            self.press(machine, msg.body["slot"])
        elif kind == "vend.ack":
            self.vend_ack(machine, msg.body)

    def press(self, machine: str, slot: int) -> int | None:
        """A selection: open an invoice (or show the open one again); returns its number.

        A stuck or hammered button must not flood the bus: a refusal is published (and
        logged) at most once per ``ANSWER_INTERVAL`` per (machine, slot, reason), the
        first at once; the others are counted (health detail)."""
        try:
            number = self._open_invoice(machine, slot)
        except Refusal as exc:
            self.counts["refused"] += 1
            reason = str(exc)[:512]
            if not self._may_answer((machine, slot, reason)):
                self.suppressed["refused"] += 1
                return None
            log.info("selection %s/%d refused: %s", machine, slot, reason)
            self.publish("invoice.refused", {"machine": machine, "slot": slot, "reason": reason})
            return None
        self._send_watches(time.monotonic())  # now, not at the next tick: the customer may pay at once
        self._flush()
        return number

    def _may_answer(self, key: tuple) -> bool:
        """Whether a press may be answered now for ``key``: none was within ANSWER_INTERVAL
        (and if so, this answer is recorded). The table stays small: past ANSWER_KEYS_MAX
        entries, those older than the interval (which decide nothing any more) are dropped."""
        now = time.monotonic()
        last = self.answered.get(key)
        if last is not None and now - last < ANSWER_INTERVAL:
            return False
        if last is None and len(self.answered) >= ANSWER_KEYS_MAX:
            self.answered = {k: t for k, t in self.answered.items() if now - t < ANSWER_INTERVAL}
        self.answered[key] = now
        return True

    def _open_invoice(self, machine: str, slot: int) -> int:
        if self.book is None:
            raise Refusal(self.config_error)
        if self.discovery is not None:
            raise Refusal(self.config_error or DISCOVERING)
        try:
            item = {s["slot"]: s for s in bd.slots(self.database, machine)}.get(slot)
            pol = bd.policy(self.database)
        except peewee.DatabaseError as exc:
            raise Refusal(f"business data is not available ({exc}); is business_data running?") from None
        if item is None:
            raise Refusal(f"machine {machine} has no slot {slot} (dctrl slots set {machine} {slot} ...)")
        if item["price_cents"] <= 0:
            raise Refusal(f"slot {machine}/{slot} has no price")
        if item["price_cents"] > int(pol["max_price_cad"] * 100):
            raise Refusal(f"slot {machine}/{slot} ({item['product']}) costs {item['price_cad']} CAD, above the limit "
                          f"of {pol['max_price_cad']} CAD (policy max_price_cad): correct the price (dctrl slots set "
                          f"{machine} {slot} --price-cad ...) or raise the limit (dctrl policy set max_price_cad ...)")
        if item["stock"] == 0:
            raise Refusal(f"slot {machine}/{slot} ({item['product']}) is sold out")
        cad_per_btc = self.fresh_price()
        now = int(self.clock())
        recent = [t for t in self.opened_at.get(machine, []) if time.monotonic() - t < 60]
        self.opened_at[machine] = recent
        again = (SalesInvoice.select().where(
            (SalesInvoice.mode == "invoice") & (SalesInvoice.machine == machine) & (SalesInvoice.slot == slot)
            & (SalesInvoice.state == "open") & (SalesInvoice.price_cents == item["price_cents"])
            & (SalesInvoice.expires >= now + int(self.cfg["reannounce_min_s"])))
            .order_by(SalesInvoice.id.desc()).first())
        if again is not None and not again.payments.exists():  # a second press: the same invoice, shown again
            if self._may_answer((machine, slot)):  # (at most once per ANSWER_INTERVAL: the display has it)
                self.publish("invoice.opened", self._opened_body(again) | {"event_id": event_id("opened", again.id)})
            else:
                self.suppressed["reannounced"] += 1
            return again.id
        if len(recent) >= self.cfg["max_invoices_per_minute"]:
            raise Refusal(f"{len(recent)} invoices opened on {machine} in the last minute; wait a moment")
        if item["stock"] is not None:
            left, held = self._stock(machine, slot)
            if left is not None and left - sum(n for _, n in held) <= 0:
                if left == 0:
                    raise Refusal(f"slot {machine}/{slot} ({item['product']}) is sold out")
                raise Refusal(f"slot {machine}/{slot} ({item['product']}) is sold out: its last {left} item(s) "
                              f"are held by invoice(s) {', '.join(str(i) for i, _ in held)} until paid or expired")
        due = quote_sats(item["price_cents"], cad_per_btc)
        tolerance = tolerance_sats(pol["underpayment_tolerance_cad"], cad_per_btc)
        if tolerance >= due:
            raise Refusal(f"policy underpayment_tolerance_cad ({pol['underpayment_tolerance_cad']}) is not below "
                          f"the price ({bdm.format_cad(item['price_cents'])})")
        address = self._fresh_address()
        recent.append(time.monotonic())
        with self._txn():
            inv = SalesInvoice.create(
                mode="invoice", machine=machine, slot=slot, product=item["product"],
                price_cents=item["price_cents"], items=1, cad_per_btc=str(cad_per_btc), due_sats=due,
                tolerance_sats=tolerance,
                zero_conf=item["price_cents"] < int(pol["zero_conf_limit_cad"] * 100),
                confirmations=pol["confirmations_required"], address=address, state="open",
                created=now, expires=now + pol["invoice_lifetime_s"])
            self._want_watch(address, f"invoice {inv.id}")
            self.outbox.add("invoice.opened", self._opened_body(inv), event_id("opened", inv.id))
        self.counts["opened"] += 1
        log.info("invoice %d opened: %s/%d %s, %s CAD = %d sats at %s CAD/BTC, pay to %s until %d", inv.id,
                 machine, slot, inv.product, bdm.format_cad(inv.price_cents), due, cad_per_btc, address, inv.expires)
        return inv.id

    def _fresh_address(self) -> str:
        """The next receive address, unless the run of unused ones would then pass the gap
        limit a restoring wallet scans: then an address whose invoices all closed unpaid at
        least ``reuse_after_s`` ago is handed out again (still watched; a payment to it
        goes to the newest invoice). With none such, the next one anyway, and a warning."""
        gap = address_gap(self.database, self.book.name, self.book.gap_limit)
        if gap["gap"] >= self.book.gap_limit:
            last_used = -1 if gap["last_used"] is None else gap["last_used"]
            row = self.sql.rows(_REUSABLE_SQL, self.book.name, last_used,
                                int(self.clock()) - int(self.cfg["reuse_after_s"]))
            if row:
                log.info("%d unused addresses in a row: handing out %s again (its invoices closed unpaid)",
                         gap["gap"], row[0][0])
                return row[0][0]
            log.warning("%d unused invoice addresses in a row, more than the gap limit (%d) a restoring wallet "
                        "scans, and none unpaid long enough to hand out again", gap["gap"] + 1, self.book.gap_limit)
        return self.book.next()[1]  # its own transaction: a crash after it only skips an index

    def _stock(self, machine: str, slot: int) -> tuple[int | None, list[tuple[int, int]]]:
        """Items left in a slot (None: not counted) and the invoices holding some of them,
        as (invoice, items held): every invoice not closed holds what it has not dispensed."""
        if not self._stock_tables:  # made by business_data at its start (a query on a missing table
            # would abort the caller's transaction on PostgreSQL)
            self._stock_tables = self.database.table_exists(bdm.BusinessStockMove._meta.table_name)
            if not self._stock_tables:
                log.warning("business_data has not made its stock tables yet: stock not enforced")
                return None, []
        left = bd.stock_left(self.database, machine, slot)
        if left is None:
            return None, []
        held = self.sql.rows('SELECT "id", "items" - "vended" FROM "sales_invoice" WHERE "machine" = ? AND '
                             '"slot" = ? AND "state" IN (?, ?, ?, ?) ORDER BY "id"', machine, slot, *WAITING, *SELLING)
        return left, [(i, n) for i, n in held if n > 0]

    def _opened_body(self, inv) -> dict:
        return {"invoice": str(inv.id), "mode": inv.mode, "machine": inv.machine, "slot": inv.slot,
                "product": inv.product, "price_cents": inv.price_cents, "items": inv.items,
                "cad_per_btc": inv.cad_per_btc, "sats": inv.due_sats, "address": inv.address,
                "uri": f"bitcoin:{inv.address}?amount={btc(inv.due_sats)}" if inv.due_sats else None,
                "expires": inv.expires, "zero_conf": inv.zero_conf, "confirmations": inv.confirmations}

    # -- the chain: addresses used before, watches and payments --------------------

    def _send_discovery(self, now_mono):
        body = self.discovery.request(now_mono) if self.discovery is not None else None
        if body is not None:
            self.publish("cmd.chain.discover", body)

    @on("chain.discover.ack")
    def on_discover_ack(self, msg):
        d = self.discovery
        if d is None:
            return
        if d.answer(msg.body):
            if self.config_error and self.config_error.startswith("chain_notifier cannot"):
                self.config_error = None
            self.discovery = None
        elif d.error and msg.body["id"] == d.id:
            self.config_error = d.error  # the same config on both sides: say it, keep asking

    def _want_watch(self, address: str, label: str | None, *, reconcile: bool = False):
        """Record that ``address`` must be watched (inside a transaction); sent by the tick."""
        row = SalesWatch.get_or_none(SalesWatch.address == address)
        cid, expires = os.urandom(16).hex(), int(self.clock()) + 60
        if row is None:
            SalesWatch.create(address=address, label=label, command=cid, expires=expires, reconcile=reconcile,
                              created=int(self.clock()))
        elif reconcile or not row.acked:
            SalesWatch.update(command=cid, expires=expires, acked=False, refused=None,
                              reconcile=reconcile or row.reconcile,
                              label=label or row.label).where(SalesWatch.address == address).execute()
        else:
            return
        self.watch_due[address] = 0.0

    def _send_watches(self, now_mono):
        send_due_watches(self.publish, SalesWatch, self.watch_due, now_mono, self.clock(), self.cfg["watch_retry"],
                         lambda row: (row.label, row.created or None))

    @on("chain.watch.ack")
    def on_watch_ack(self, msg):
        b = msg.body
        row = SalesWatch.get_or_none(SalesWatch.address == b["address"])
        if row is None or row.command != b["id"].hex() or row.acked:
            return  # someone else's watch, or an answer to an older id
        # Answered: no more re-sends of this id. Dropped from the queue before the evaluation
        # below, which may want the address watched again (an expired invoice asks the chain
        # once more before it closes): dropped after, that new watch was never sent, and the
        # invoice waited for its answer for good (found by `dctrl bench faults`, seed 120).
        self.watch_due.pop(row.address, None)
        try:
            self._watch_answered(row, b)
        except BaseException:
            self.watch_due[row.address] = 0.0  # not recorded: ask again (the same id: answered again)
            raise
        self._flush()

    def _watch_answered(self, row, b):
        with self._txn():
            SalesWatch.update(acked=True, reconcile=False,
                              refused=b["reason"] if b["status"] == "refused" else None) \
                .where(SalesWatch.address == row.address).execute()
            if b["status"] == "refused":
                log.error("chain_notifier refused to watch %s: %s", row.address, b["reason"])
                for inv in SalesInvoice.select().where((SalesInvoice.address == row.address)
                                                       & SalesInvoice.state.in_(WAITING)):
                    self._change(inv, "failed", f"the chain notifier cannot watch {row.address}: {b['reason']}")
                    inv.save()
            else:
                for o in reversed(b["outputs"] or []):  # oldest first
                    self._observe(row.address, o["txid"], o["vout"], o["sats"], o["state"], o["confirmations"],
                                  o["rbf"], snapshot=True, seen_at=o.get("seen_at"), by=o.get("by"),
                                  watched_since=row.created)

    @on("chain.tx")
    def on_chain_tx(self, msg):
        b, kind = msg.body, msg.topic.rsplit(".", 1)[1]
        state = {"seen": "mempool", "confirmed": "confirmed", "replaced": "replaced", "removed": "removed"}[kind]
        with self._txn():
            self._observe(b["address"], b["txid"], b["vout"], b["sats"], state, b.get("confirmations") or 0,
                          b.get("rbf", False), snapshot=False, by=b.get("by"))
        self._send_then_flush()

    def _observe(self, address, txid, vout, sats, state, confirmations, rbf, *, snapshot, seen_at=None, by=None,
                 watched_since=None):
        """Record what the chain says of one payment and re-evaluate its invoice (in a transaction).

        Live events are applied as they come (they arrive in order from one publisher);
        a snapshot (a watch ack) only moves a payment forward, never back. ``seen_at`` is
        when the chain notifier first saw it (snapshots); ``by`` the transaction that
        replaced it."""
        now = int(self.clock())
        inv = None
        # One query for both: this payment, or a payment it replaced (a fee bump takes the
        # original's place on its invoice: never a second sale, never "late" for the bump).
        pay = original = None
        for p in self.sql.select(SalesPayment, '("txid" = ? AND "vout" = ?) OR "replaced_by" = ?', txid, vout, txid,
                                 tail='ORDER BY "id"'):
            if p.txid == txid and p.vout == vout:
                pay = p
            elif original is None:
                original = p
        if pay is None:
            if original is not None:
                inv = self._invoice(original.invoice_id)
                if inv.address != address:
                    original = None
            if original is None:
                if snapshot and address in self.stickers and (seen_at is None or seen_at < (watched_since or 0)):
                    log.warning("payment %s:%d to sticker address %s predates its watch: not a sale", txid, vout,
                                address)
                    return
                inv = self._invoice_for(address, state, now)
            if inv is None:
                return
            first_seen = seen_at if snapshot and seen_at else now
            # Unknown first-seen time (a snapshot from an older notifier): on time only if it still is.
            late = (original.late if original is not None else
                    inv.state not in WAITING + SELLING or first_seen > inv.expires)
            pay = self.sql.create(SalesPayment, txid=txid, vout=vout, invoice=inv, sats=sats, state=state,
                                  confirmations=confirmations, rbf=rbf, late=late, first_seen=first_seen,
                                  counted=original is not None and original.counted)
            if original is not None:
                self.sql.update(SalesPayment, '"id" = ?', (original.id,), counted=False)
                log.info("payment %s:%d replaces %s:%d on invoice %d", txid, vout, original.txid, original.vout,
                         inv.id)
            elif late:
                log.warning("late payment %s:%d of %d sats to invoice %d (%s)", txid, vout, sats, inv.id, inv.state)
        else:
            if snapshot and not _forward(pay, state, confirmations):
                return
            if (pay.state, pay.confirmations) == (state, confirmations) and not (by and not pay.replaced_by):
                return  # a duplicate event
            pay.state, pay.confirmations = state, max(confirmations, 0 if state != "confirmed" else 1)
            if state == "replaced" and by:
                pay.replaced_by = by
            if state in ("replaced", "removed"):
                self.asked.discard(pay.invoice_id)  # its replacement may pay us: ask before closing
            self.sql.save(pay)
        self.held.pop(pay.invoice_id, None)
        self._evaluate(inv if inv is not None else self._invoice(pay.invoice_id), now)

    def _invoice(self, number: int) -> SalesInvoice:
        inv = self.sql.first(SalesInvoice, '"id" = ?', number)
        if inv is None:
            raise SalesInvoice.DoesNotExist(f"no invoice {number}")
        return inv

    def _invoice_for(self, address, state, now):
        inv = self.sql.first(SalesInvoice, '"address" = ? AND "mode" = ?', address, "invoice",
                             tail='ORDER BY "id" DESC')
        if inv is not None:
            return inv
        if address not in self.stickers or state not in LIVE:
            return None  # not ours (or a sticker payment we never saw alive: nothing to sell)
        machine, slot = self.stickers[address]
        item = {s["slot"]: s for s in bd.slots(self.database, machine)}.get(slot)
        if item is None:
            log.error("payment to sticker address %s of %s/%d, which is no longer a slot", address, machine, slot)
            return None
        pol = bd.policy(self.database)
        inv = SalesInvoice.create(
            mode="sticker", machine=machine, slot=slot, product=item["product"], price_cents=item["price_cents"],
            items=0, confirmations=pol["confirmations_required"], address=address, state="open", created=now,
            expires=now + pol["invoice_lifetime_s"])
        self.outbox.add("invoice.opened", self._opened_body(inv), event_id("opened", inv.id))
        log.info("sticker payment to %s/%d: invoice %d", machine, slot, inv.id)
        return inv

    # -- the state machine --------------------------------------------------------

    def _evaluate_where(self, condition):
        now = int(self.clock())
        with self._txn():
            for inv in SalesInvoice.select().where(SalesInvoice.state.in_(WAITING) & condition):
                self._evaluate(inv, now)
        self._flush()

    def _evaluate(self, inv, now):
        """Bring ``inv`` up to date with its payments, the clock and the price (in a transaction)."""
        pays = self.sql.select(SalesPayment, '"invoice_id" = ?', inv.id, tail='ORDER BY "id"')
        live = [p for p in pays if not p.late and p.state in LIVE]
        before = (inv.state, inv.received_sats, inv.late_sats, inv.lost_sats, inv.credit_sats)
        version, data = inv.version, dict(inv.__data__)
        inv.received_sats = sum(p.sats for p in live)
        inv.late_sats = sum(p.sats for p in pays if p.late and p.state in LIVE)
        reason = None
        if inv.state in WAITING:
            if inv.mode == "sticker" and inv.due_sats is None:
                reason = self._price_sticker(inv, pays)
            if inv.state in WAITING and inv.due_sats is not None:
                settled = sum(p.sats for p in live if self._settled(inv, p))
                if settled and settled >= inv.due_sats - inv.tolerance_sats:
                    self._paid(inv, live, now)
                    return
            if inv.state in WAITING:
                inv.state = "seen" if inv.received_sats else "open"
                if now < inv.expires or self._reconciling(inv.address):
                    pass
                elif inv.id not in self.asked:
                    # Before closing, ask the chain notifier again: a lost event (a broker
                    # restart, a failed handler) must not turn a paid invoice into an expired one.
                    self.asked.add(inv.id)
                    self._want_watch(inv.address, None, reconcile=True)
                else:
                    if inv.due_sats is None:
                        self._close(inv, "expired", reason or "no fresh price to sell at before expiry")
                    elif inv.received_sats == 0:
                        self._close(inv, "expired", None)
                    elif inv.received_sats < inv.due_sats - inv.tolerance_sats:
                        self._close(inv, "underpaid", f"{inv.received_sats} of {inv.due_sats} sats received")
                    else:  # paid on time, waiting for confirmations: ask again now and then
                        self.asked.discard(inv.id)
        else:
            inv.lost_sats = sum(p.sats for p in pays if p.counted and p.state not in LIVE)
            if inv.due_sats is not None and inv.state not in ("expired", "underpaid") and inv.paid_at:
                inv.credit_sats = max(0, inv.received_sats - inv.due_sats)
                if inv.state == "vended" and inv.mode == "invoice" and inv.credit_sats:
                    inv.state = "overpaid"
            if inv.lost_sats > before[3]:
                reason = f"{inv.lost_sats} sats counted for the sale were replaced or removed after it"
                log.error("invoice %d: %s", inv.id, reason)
            elif inv.late_sats > before[2]:
                reason = f"late payment: {inv.late_sats} sats after the invoice was {inv.state}"
        after = (inv.state, inv.received_sats, inv.late_sats, inv.lost_sats, inv.credit_sats)
        if after != before and inv.version == version:  # one event for what this evaluation changed
            self._publish_change(inv, before[0], reason)
        if after != before or inv.version != version or inv.__data__ != data:
            self.sql.save(inv)

    def _settled(self, inv, p) -> bool:
        """A payment that counts towards paying: confirmed enough (the notifier counts up to its
        confirm_depth, so more than that is never asked), or (zero-conf invoices only) seen and
        not replaced."""
        if p.state == "confirmed":
            return inv.zero_conf or p.confirmations >= min(inv.confirmations, self.confirm_depth)
        return inv.zero_conf and p.state == "mempool"

    def _still_paid(self, inv) -> bool:
        """Whether the invoice's on-time payments still settle it (checked before each new vend
        command: a payment replaced or removed since must not buy another item)."""
        live = [p for p in self.sql.select(SalesPayment, '"invoice_id" = ?', inv.id)
                if not p.late and p.state in LIVE]
        return sum(p.sats for p in live if self._settled(inv, p)) >= inv.due_sats - inv.tolerance_sats

    def _price_sticker(self, inv, pays) -> str | None:
        """Price a sticker payment at the first fresh price; returns why not if it cannot yet."""
        try:
            cad_per_btc = self.fresh_price()
        except Refusal as exc:
            return str(exc)
        pol = bd.policy(self.database)
        paid = sum(p.sats for p in pays if not p.late and p.state in LIVE)
        unit = quote_sats(inv.price_cents, cad_per_btc)
        tol = tolerance_sats(pol["underpayment_tolerance_cad"], cad_per_btc)
        if unit == 0 or tol >= unit:
            inv.cad_per_btc, inv.due_sats = str(cad_per_btc), unit
            self._close(inv, "failed", f"cannot sell {inv.product} at {bdm.format_cad(inv.price_cents)} CAD with "
                                       f"an underpayment tolerance of {pol['underpayment_tolerance_cad']} CAD")
            return None
        items = wanted = (paid + tol) // unit
        left, held = self._stock(inv.machine, inv.slot)  # (this invoice holds nothing until priced)
        if left is not None:
            items = min(wanted, max(0, left - sum(n for _, n in held)))
        inv.cad_per_btc, inv.tolerance_sats, inv.items = str(cad_per_btc), tol, items
        inv.due_sats = unit * max(items, 1)
        # Never zero-conf: at a fixed address a fee bump would look like a second purchase.
        inv.zero_conf = False
        if items == 0 and wanted:
            self._close(inv, "failed", f"{inv.product} is sold out: {paid} sats paid for {wanted}, owed back")
        elif items == 0:
            self._close(inv, "underpaid", f"{paid} sats is less than one {inv.product} ({unit} sats)")
        elif items < wanted:
            log.warning("invoice %d: %d sats buy %d %s, only %d left: the rest is credit", inv.id, paid, wanted,
                        inv.product, items)
        return None

    def _reconciling(self, address) -> bool:
        return SalesWatch.select().where((SalesWatch.address == address) & SalesWatch.reconcile).exists()

    def _paid(self, inv, live, now):
        previous = inv.state
        for p in live:
            self.sql.update(SalesPayment, '"id" = ?', (p.id,), counted=True)
        inv.paid_at = now
        inv.credit_sats = max(0, inv.received_sats - inv.due_sats)
        inv.state = "paid"
        self._publish_change(inv, previous, None)
        log.info("invoice %d paid: %d of %d sats%s", inv.id, inv.received_sats, inv.due_sats,
                 " (zero-conf)" if inv.zero_conf else "")
        self._change(inv, "vending", None)
        self._new_vend(inv, now)
        self.sql.save(inv)

    def _change(self, inv, state, reason):
        previous, inv.state = inv.state, state
        if state in CLOSED:
            inv.closed_at = int(self.clock())
        self._publish_change(inv, previous, reason)

    def _close(self, inv, state, reason):
        self._change(inv, state, reason)
        log.info("invoice %d %s%s", inv.id, state, f": {reason}" if reason else "")

    def _publish_change(self, inv, previous, reason):
        inv.version += 1
        if reason:
            inv.reason = reason[:512]
        self.outbox.add("invoice.changed", {
            "invoice": str(inv.id), "state": inv.state, "previous": previous, "machine": inv.machine,
            "slot": inv.slot, "sats": inv.due_sats, "received_sats": inv.received_sats, "late_sats": inv.late_sats,
            "credit_sats": inv.credit_sats, "lost_sats": inv.lost_sats, "items": inv.items, "vended": inv.vended,
            "reason": reason[:512] if reason else None}, event_id("changed", inv.id, inv.version))

    # -- vends ----------------------------------------------------------------------

    def _new_vend(self, inv, now, deadline=None):
        """A command for the next item (in a :meth:`_txn`); sent by _send_vends once committed."""
        deadline = deadline or now + int(self.cfg["vend_deadline"])
        v = PendingVend(id=os.urandom(16).hex(), invoice=inv.id, machine=inv.machine, slot=inv.slot,
                        expires=min(now + int(self.cfg["vend_command_ttl"]), deadline), deadline=deadline,
                        created=now)
        self.sql.create(SalesVend, id=v.id, invoice=inv.id, item=inv.vended, machine=v.machine, slot=v.slot,
                        state="sent", created=now, expires=v.expires, deadline=deadline)
        self._uncommitted.append(v)

    @contextlib.contextmanager
    def _txn(self):
        """A write transaction; vend commands made in it are sent only once it has committed
        (a command for a row that was rolled back could dispense an unrecorded item)."""
        self._depth += 1
        try:
            with write_transaction(self.database):
                yield
        except BaseException:
            if self._depth == 1:
                self._uncommitted.clear()
            raise
        finally:
            self._depth -= 1
        if self._depth == 0:
            for v in self._uncommitted:
                self.vends[v.id] = v
            self._uncommitted.clear()

    def _send_vends(self, now_mono) -> int:
        """(Re)send every unanswered vend command that is due; from memory, no database read.
        Returns how many were sent."""
        now = int(self.clock())
        sent = 0
        for v in list(self.vends.values()):
            if v.due > now_mono:
                continue
            if v.state == "sent" and now > v.deadline + 30:
                # Its expiry is past: the machine can no longer act on it, only tell what it did.
                with self._txn():
                    self.sql.update(SalesVend, '"id" = ?', (v.id,), state="unanswered", attempts=v.attempts)
                    inv = self._invoice(v.invoice)
                    self._close(inv, "failed", f"machine {v.machine} did not answer vend {v.id}; "
                                               "still asking what it did")
                    self.sql.save(inv)
                v.state = "unanswered"
                self._flush()
            if v.state == "unanswered" and now > v.created + int(self.cfg["late_window"]):
                del self.vends[v.id]
                continue
            self.publish(f"cmd.machine.{v.machine}.vend", {"id": bytes.fromhex(v.id), "expires": v.expires,
                                                           "slot": v.slot, "invoice": str(v.invoice),
                                                           "pulse_ms": None})
            v.attempts += 1
            v.due = now_mono + (self.cfg["vend_retry"] if v.state == "sent" else 30.0)
            sent += 1
        return sent

    def vend_ack(self, machine, b):
        cid = b["id"].hex()
        v = self.vends.get(cid)
        if v is None or v.machine != machine:
            return  # not ours, or a retry's answer already recorded
        now = int(self.clock())
        status, reason = b["status"], b["reason"]
        if status == "refused" and reason and reason.startswith(UNSYNCED_REASON):
            log.warning("vend %s: %s says %s; asking again", cid, machine, reason)
            return  # not final on the machine: the same id is retried
        with self._txn():
            inv = self._invoice(v.invoice)
            self.sql.update(SalesVend, '"id" = ?', (cid,), state=status, acked_at=now, reason=reason,
                            pulsed_ms=b["pulsed_ms"], attempts=v.attempts)
            if status == "vended":
                self.counts["vended"] += 1
                inv.vended += 1
                log.info("invoice %d: item %d of %d vended by %s/%d", inv.id, inv.vended, inv.items, machine, v.slot)
                if inv.vended < inv.items and not self._still_paid(inv):
                    self._close(inv, "failed", f"payment replaced or removed after {inv.vended} of {inv.items} "
                                               "items: the rest are not dispensed")
                elif inv.vended < inv.items:
                    self._publish_change(inv, inv.state, None)
                    self._new_vend(inv, now)
                elif inv.mode == "invoice" and inv.credit_sats:
                    self._close(inv, "overpaid", f"{inv.credit_sats} sats over the price, recorded for refund")
                else:
                    self._close(inv, "vended", None if v.state == "sent" else "vended after all (late answer)")
            elif status == "refused" and reason == "expired" and now < v.deadline and inv.state == "vending":
                # Never actuated and now never will be: a new command for the same item, if still paid.
                if self._still_paid(inv):
                    log.info("vend %s expired before %s acted on it; sending a new command", cid, machine)
                    self._new_vend(inv, now, deadline=v.deadline)
                else:
                    self._close(inv, "failed", f"payment replaced or removed before item {inv.vended + 1} of "
                                               f"{inv.items} was dispensed: not dispensed")
            else:
                self.counts["failed"] += 1
                if inv.state not in CLOSED or inv.state == "failed":
                    self._close(inv, "failed", f"vend {status} by {machine}: {reason or 'no reason given'}")
            self.sql.save(inv)
        del self.vends[cid]  # answered (only now: had the transaction failed, it would be asked again)
        self._send_then_flush()

    # -- timers -------------------------------------------------------------------

    @every(0.25)
    def tick(self):
        now_mono = time.monotonic()
        self._send_discovery(now_mono)
        self._send_watches(now_mono)
        self._send_vends(now_mono)
        self._flush()

    @every(1.0)
    def expire(self):
        """Expired invoices still waiting: close them (after asking the chain once more), or,
        paid on time and waiting for confirmations, look again every ``reconcile_interval``."""
        now, mono = int(self.clock()), time.monotonic()
        due = [i for (i,) in self.sql.rows('SELECT "id" FROM "sales_invoice" WHERE "state" IN (?, ?) '
                                           'AND "expires" <= ?', *WAITING, now) if self.held.get(i, 0) <= mono]
        if not due:
            return
        with self._txn():
            for inv in SalesInvoice.select().where(SalesInvoice.id.in_(due)):
                self._evaluate(inv, now)
                if inv.state in WAITING:  # asked the chain (look again in a second) or waiting for blocks
                    self.held[inv.id] = mono + (1.0 if inv.id in self.asked else self.cfg["reconcile_interval"])
                else:
                    self.held.pop(inv.id, None)
                    self.asked.discard(inv.id)
        self._flush()

    @every(10)
    def refresh(self):
        self._load_stickers()

    def _load_stickers(self):
        stickers = {}
        try:
            for m in bd.machines(self.database):
                for s in bd.slots(self.database, m["name"]):
                    if s.get("sticker_address"):
                        stickers[s["sticker_address"]] = (m["name"], s["slot"])
        except peewee.DatabaseError:
            return  # business_data has not created its tables yet
        new = set(stickers) - set(self.stickers)
        self.stickers = stickers
        if new:
            with self._txn():
                for address in new:
                    machine, slot = stickers[address]
                    self._want_watch(address, f"sticker {machine}/{slot}")

    @on("business.slot")  # changed | removed
    def on_slot_changed(self, msg):
        self._load_stickers()

    def _flush(self):
        self.outbox.flush(self.runtime)

    def _send_then_flush(self):
        """The fast path: vend commands due (a paid invoice's) go out first, events after."""
        if self._send_vends(time.monotonic()):
            self._flush_soon()
        else:
            self._flush()

    def _flush_soon(self):
        """Publish the outbox in FLUSH_DELAY, not now: a vend command just sent is on its way
        through the broker to the machine agent, which (on a one-box install, the demo and the
        benchmark) shares the CPUs with this process, the broker and every subscriber of the
        invoice events. The events are in the database already; they go out a moment later."""
        if not self._flush_pending:
            self._flush_pending = True
            self.runtime.call_later(FLUSH_DELAY, self._flush_later)

    def _flush_later(self):
        self._flush_pending = False
        self._flush()

