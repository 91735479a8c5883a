"""BusinessData: machines, slots, products, prices (CAD), stock and versioned policies.

The single writer of the ``business_*`` tables. Changes arrive as commands
(``cmd.business.machine.add|set|rm``, ``cmd.business.slot.set|rm``,
``cmd.business.policy.set``), each with an ``id`` (16 bytes) and an
``expires`` (unix seconds) like ``cmd.chain.watch``: a command id is applied
at most once (a retry gets the same answer again), an expired command is
refused. Every command is answered on ``business.ack`` {id, status "done" |
"refused", reason}; every change is published as an event
(``business.machine.added|changed|removed``, ``business.slot.changed|removed``,
``business.policy.changed``). ``slot.set`` changes only what it is given (nil
keeps a field; a new slot needs a product and a price). A machine or a slot
with invoices not closed yet (open, seen, paid, vending) cannot be removed.

Stock. A slot's ``stock`` is the number of items in it (None: not counted,
never refused for stock). Every vend BusinessMgr records as ``vended`` takes
one from it: BusinessData reads BusinessMgr's ``sales_vend`` rows (the
database is the record; a bus event may be lost while this actor is down)
every second and at start, and counts each vend once, keyed by its id: the
``business_stock_move`` row, the new stock and its ``business.slot.changed``
event commit together, so a count is never lost nor made twice across
restarts. A vend acknowledged before the operator last set the stock
(``stock_set``) is not counted: the operator's count already saw it.

Events are never lost: each is recorded in an outbox table
(``business_outbox``, :mod:`actors.outbox`) in the same transaction as the
change and the command's dedup record, published in order right after the
commit, and marked sent only once the runtime has put it on the socket.
Whatever is left unsent (no valid token, no connection, a ``kill -9``
between the commit and the publication) goes out from a one-second timer,
also after a restart. Each event carries an ``event_id`` (64 hex: the
sha256 of the command id and the event's index in it); the one duplicate
possible (killed between sending and marking) has the same id, so receivers
deduplicate on it. The ``business.ack`` answer is not an event: it is
published directly (a lost ack is answered again when the sender retries).

Other actors read through the query functions :func:`machines`, :func:`slots`
and :func:`policy`, never by writing these tables.

Money is CAD as a decimal string ("3.50") parsed with :class:`~decimal.Decimal`
into integer cents; more than 2 decimals, negatives and floats are refused.
Policies are append-only: a change is a new :class:`PolicyVersion` row and the
current value of a key is its latest version (or its default). A slot's price
may not exceed the policy ``max_price_cad`` (1000.00 by default): ``slot.set``
refuses a higher one, and BusinessMgr opens no invoice for a slot stored above it.
"""

from __future__ import annotations

import logging
import os
import time

from keys.home import Home
from proto.text import unprintable_reason

from ..db import connect, ensure_tables, write_transaction
from .. import outbox
from ..outbox import Outbox, apply_once, event_id
from ..runtime import Actor, every, on
from .models import (MAX_CENTS, NOT_CLOSED, TABLES, BusinessCommand, BusinessMachine, BusinessPolicyVersion,
                     BusinessSlot, BusinessStockMove, MoneyError, db, format_cad, parse_cad, validate_policy)
from .queries import _sql, machines, policy, uncounted_vends

log = logging.getLogger(__name__)

# Tests set DCTRL_CRASH_AT=business_committed to die (like kill -9) right after a change
# and its events commit, before anything is published.
CRASH_AT = os.environ.get("DCTRL_CRASH_AT")


# -- the actor ----------------------------------------------------------------

Refused = outbox.Refused  # (a command not applied: its text is the ack's reason)


def check_text(field: str, value: str) -> None:
    """Refuse ``value`` if it holds a character a terminal or a table could be fooled by
    (proto/text.py), naming it."""
    reason = unprintable_reason(field, value)
    if reason:
        raise Refused(reason)


class BusinessData(Actor):
    def __init__(self, home: Home, *, database=None, clock=time.time):
        self.home = home
        self.clock = clock
        self.own_database = database is None  # closed at teardown only if opened here
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        self.outbox = Outbox(Outbox.model_for(self.database, "business_outbox"))
        added = ensure_tables(self.database, [*TABLES, self.outbox.model],
                              add_columns={BusinessSlot: ["sticker_address", "stock_set"]})  # (older versions)
        if (BusinessSlot, "stock_set") in added:  # counting starts now: vends sold before it are not counted again
            BusinessSlot.update(stock_set=int(clock())).where(BusinessSlot.stock.is_null(False)).execute()
        self.unsent = True  # a previous run may have left events unsent: look at the first flush
        self.applied = 0
        self.refused = 0
        self.counted = 0
        self._vends_table = False  # business_mgr's sales_vend exists (once seen, it stays)

    def setup(self):
        self.count_vends()  # vends sold while this actor was down

    def teardown(self):
        if self.own_database:
            self.database.close()

    def health(self):
        detail = (f"{len(machines(self.database))} machines, {self.applied} changes, {self.refused} refused, "
                  f"{self.counted} vend(s) counted")
        if self.unsent:
            detail += f", {self.outbox.pending()} event(s) waiting to be sent"
        return "ok", detail

    # -- commands from the bus (loop thread: one writer, one command at a time) ----

    @on("cmd.business.machine.add")
    def machine_add(self, msg):
        """cmd.business.machine.add {"id", "expires", "name": "vm1", "location": "front door"}"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.machine.set")
    def machine_set(self, msg):
        """cmd.business.machine.set {"id", "expires", "name", "location"} ("" clears the location)"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.machine.rm")
    def machine_rm(self, msg):
        """cmd.business.machine.rm {"id", "expires", "name"}: the machine and its slots"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.slot.set")
    def slot_set(self, msg):
        """cmd.business.slot.set {"id", "expires", "machine", "slot", "product", "price_cad": "3.50",
        "relay", "stock", "sticker_address", "clear"}: nil keeps a field"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.slot.rm")
    def slot_rm(self, msg):
        """cmd.business.slot.rm {"id", "expires", "machine", "slot"}"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.policy.set")
    def policy_set(self, msg):
        """cmd.business.policy.set {"id", "expires", "key", "value"}"""
        self._answer(*self.execute(msg.topic, msg.body))

    def _answer(self, ack, events):
        """After the commit: the events (from the outbox, in order), then the answer (direct)."""
        if events:
            if CRASH_AT == "business_committed":  # fault injection for the tests: like kill -9 here
                os._exit(137)
            self.unsent = True
        self.flush()
        self.publish("business.ack", ack)

    @every(1.0)
    def count_vends(self):
        """Count the vends sold since the last look (also at start), and publish the new stock."""
        if self.count():
            self.unsent = True
            self.flush()

    def count(self) -> list[dict]:
        """Take every vend BusinessMgr recorded as dispensed, and not counted yet, from its
        slot's stock: once per vend id, with the move, the new stock and its event in one
        transaction; returns the events (in the outbox, not published here). Reads first and
        writes only if there is something to count (on SQLite a write transaction takes the
        lock a sale waits for)."""
        if not self._vends_table:
            self._vends_table = self.database.table_exists("sales_vend")
            if not self._vends_table:
                return []
        if not uncounted_vends(self.database):
            return []
        now = int(self.clock())
        events = []
        with write_transaction(self.database):
            for vend, machine, number in uncounted_vends(self.database):  # again, under the lock
                slot = (BusinessSlot.select(BusinessSlot, BusinessMachine).join(BusinessMachine)
                        .where((BusinessMachine.name == machine) & (BusinessSlot.number == number)).get())
                before, slot.stock = slot.stock, max(0, slot.stock - 1)
                slot.save()
                BusinessStockMove.create(vend=vend, machine=machine, slot=number, before=before, after=slot.stock,
                                         created=now)
                if before == 0:
                    log.warning("vend %s from %s/%d, whose stock was 0: the count was wrong; it stays 0", vend,
                                machine, number)
                elif slot.stock == 0:
                    log.info("slot %s/%d is sold out", machine, number)
                event = {**self._slot_event(slot, machine), "vend": vend,
                         "event_id": event_id("business", "vend", vend)}
                self.outbox.add("business.slot.changed", event, event["event_id"])
                events.append(event)
        self.counted += len(events)
        return events

    @every(1.0)
    def flush(self):
        """Publish what the outbox holds unsent (only while the runtime can send now)."""
        if self.unsent:
            self.outbox.flush(self.runtime)
            self.unsent = self.outbox.pending() > 0

    def execute(self, topic: str, body: dict) -> tuple[dict, list]:
        """Apply one command (a validated body) exactly once; returns (ack body, [(topic, event)]).
        The dedup record, the change and its events commit together (actors/outbox.py
        apply_once). Nothing is published here."""
        kind = topic.split(".", 2)[2]  # machine.add|set|rm | slot.set|rm | policy.set
        handler = self.COMMANDS.get(kind)

        def apply(cid):
            if handler is None:
                raise Refused(f"unknown command {topic}")
            return handler(self, body)

        ack, events, status = apply_once(self.database, BusinessCommand, self.outbox, topic, body, self.clock(),
                                         apply, "business")
        if status == "done":
            self.applied += 1
        elif status == "refused":
            self.refused += 1
        return ack, events

    def _machine_add(self, body):
        name = body["name"]
        if body.get("location"):
            check_text("location", body["location"])
        if BusinessMachine.get_or_none(BusinessMachine.name == name) is not None:
            raise Refused(f"machine {name} already exists")
        m = BusinessMachine.create(name=name, location=body.get("location"), created=int(self.clock()))
        log.info("machine %s added", name)
        return [("business.machine.added", {"name": m.name, "location": m.location, "created": m.created})]

    def _machine_set(self, body):
        machine = self._machine(body["name"])
        if body.get("location") is None:
            raise Refused("nothing to change: give a location (\"\" clears it)")
        check_text("location", body["location"])
        machine.location = body["location"] or None
        machine.save()
        log.info("machine %s: location %s", machine.name, machine.location)
        return [("business.machine.changed", {"name": machine.name, "location": machine.location,
                                              "created": machine.created})]

    def _machine_rm(self, body):
        machine = self._machine(body["name"])
        self._refuse_if_selling(machine.name, None)
        slots_ = list(BusinessSlot.select().where(BusinessSlot.machine == machine).order_by(BusinessSlot.number))
        BusinessSlot.delete().where(BusinessSlot.machine == machine).execute()
        machine.delete_instance()
        log.info("machine %s removed, with %d slot(s)", machine.name, len(slots_))
        return ([("business.slot.removed", {"machine": machine.name, "slot": s.number}) for s in slots_]
                + [("business.machine.removed", {"name": machine.name})])

    def _slot_rm(self, body):
        machine = self._machine(body["machine"])
        slot = BusinessSlot.get_or_none((BusinessSlot.machine == machine) & (BusinessSlot.number == body["slot"]))
        if slot is None:
            raise Refused(f"machine {machine.name} has no slot {body['slot']}")
        self._refuse_if_selling(machine.name, slot.number)
        slot.delete_instance()
        log.info("slot %s/%d removed", machine.name, slot.number)
        return [("business.slot.removed", {"machine": machine.name, "slot": slot.number})]

    def _machine(self, name) -> BusinessMachine:
        machine = BusinessMachine.get_or_none(BusinessMachine.name == name)
        if machine is None:
            raise Refused(f"unknown machine {name}")
        return machine

    def _refuse_if_selling(self, machine: str, slot: int | None):
        """A machine or slot with invoices not closed yet stays: a paid one must still be
        dispensed, and an open one may be paid. (An invoice carries its product and price:
        one opened in the same instant as a removal still sells.)"""
        if not self.database.table_exists("sales_invoice"):
            return  # business_mgr has never run here
        where, params = '"machine" = ? AND "state" IN (?, ?, ?, ?)', [machine, *NOT_CLOSED]
        if slot is not None:
            where, params = where + ' AND "slot" = ?', params + [slot]
        ids = [i for (i,) in self.database.execute_sql(
            _sql(self.database, f'SELECT "id" FROM "sales_invoice" WHERE {where} ORDER BY "id"'), params)]
        if ids:
            what = f"machine {machine}" if slot is None else f"slot {machine}/{slot}"
            shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
            raise Refused(f"{what} has {len(ids)} invoice(s) not closed yet ({shown}): wait until they are "
                          "vended or expired (dctrl invoices list)")

    def _slot_set(self, body):
        """Create a slot (a product and a price needed) or change what the command gives: nil
        keeps a field; ``clear`` lists fields to set to nil (relay: not wired; stock: not
        counted); a sticker address of "" clears it."""
        machine = self._machine(body["machine"])
        slot = BusinessSlot.get_or_none((BusinessSlot.machine == machine) & (BusinessSlot.number == body["slot"]))
        clear = set(body.get("clear") or ())
        product, price, relay, stock = body.get("product"), body.get("price_cad"), body.get("relay"), body.get("stock")
        sticker = body.get("sticker_address")
        for name, value in (("relay", relay), ("stock", stock)):
            if name in clear and value is not None:
                raise Refused(f"{name}: both a value and clear given")
        if slot is None and (product is None or price is None):
            raise Refused(f"slot {machine.name}/{body['slot']} is new: it needs a product and a price")
        if slot is not None and not clear and all(v is None for v in (product, price, relay, stock, sticker)):
            raise Refused("nothing to change: give a product, a price, a relay, a stock or a sticker address")
        cents = None
        if price is not None:
            try:
                cents = parse_cad(price)
            except MoneyError as exc:
                raise Refused(f"price: {exc}") from None
            if cents > MAX_CENTS:
                raise Refused(f"price: {price} CAD is too large")
            limit = policy(self.database)["max_price_cad"]
            if cents > int(limit * 100):
                raise Refused(f"price: {format_cad(cents)} CAD is above the limit of {limit} CAD (policy "
                              f"max_price_cad; to allow it: dctrl policy set max_price_cad {format_cad(cents)})")
        if product is not None:
            check_text("product", product)
            product = product.strip()
            if not product:
                raise Refused("product: a name is required")
        if sticker:
            self._check_address(sticker)
            other = BusinessSlot.get_or_none(BusinessSlot.sticker_address == sticker)
            if other is not None and (other.machine_id, other.number) != (machine.id, body["slot"]):
                raise Refused(f"sticker address {sticker} is already slot {other.machine.name}/{other.number}'s")
        now = int(self.clock())
        if slot is None:
            slot = BusinessSlot(machine=machine, number=body["slot"], product=product, price_cents=cents)
        if product is not None:
            slot.product = product
        if cents is not None:
            slot.price_cents = cents
        if relay is not None or "relay" in clear:
            slot.relay = relay
        if stock is not None or "stock" in clear:
            # Vends acknowledged from now on count against this stock; earlier ones are in it.
            slot.stock, slot.stock_set = stock, (now if stock is not None else None)
        if sticker is not None:
            slot.sticker_address = sticker or None
        slot.updated = now
        slot.save()
        log.info("slot %s/%d: %s at %s CAD, stock %s%s", machine.name, slot.number, slot.product,
                 format_cad(slot.price_cents), "not counted" if slot.stock is None else slot.stock,
                 f", sticker address {slot.sticker_address}" if slot.sticker_address else "")
        return [("business.slot.changed", self._slot_event(slot, machine.name))]

    def _slot_event(self, slot, machine_name=None) -> dict:
        """A slot's current state, as business.slot.changed says it."""
        return {"machine": machine_name or slot.machine.name, "slot": slot.number, "product": slot.product,
                "price_cents": slot.price_cents, "relay": slot.relay, "stock": slot.stock,
                "sticker_address": slot.sticker_address}

    def _check_address(self, address):
        """A sticker address must be an address of the chain's network (an error is refused)."""
        from embit.script import address_to_scriptpubkey

        from ..chain.addresses import network

        name = self.home.config.get("chain", {}).get("network", "regtest")
        try:
            if address_to_scriptpubkey(address).address(network(name)) != address:
                raise ValueError("it is for another network")
        except Exception as exc:  # embit raises several types for bad addresses
            raise Refused(f"sticker address {address}: not a {name} address ({exc})") from None

    def _policy_set(self, body):
        key = body["key"]
        value = validate_policy(key, body["value"])  # ValueError -> refused with the reason
        p = BusinessPolicyVersion.create(key=key, value=value, created=int(self.clock()))
        log.info("policy %s = %s (version %d)", key, value, p.version)
        return [("business.policy.changed", {"key": key, "value": value, "version": p.version})]

    COMMANDS = {"machine.add": _machine_add, "machine.set": _machine_set, "machine.rm": _machine_rm,
                "slot.set": _slot_set, "slot.rm": _slot_rm, "policy.set": _policy_set}
