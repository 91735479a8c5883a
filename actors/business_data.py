"""BusinessData: machines, slots, products, prices (CAD) and versioned policies.

The single writer of the ``business_*`` tables. Changes arrive as commands
(``cmd.business.machine.add``, ``cmd.business.slot.set``,
``cmd.business.policy.set``), each with an ``id`` (16 bytes) and an
``expires`` (unix seconds) like ``cmd.chain.watch``: a command id is applied
at most once (a retry gets the same answer again), an expired command is
refused. Every command is answered on ``business.ack`` {id, status "done" |
"refused", reason}; every change is published as an event
(``business.machine.added``, ``business.slot.changed``,
``business.policy.changed``).

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
current value of a key is its latest version (or its default).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from decimal import Decimal

import peewee

from keys.home import Home

from .db import add_missing_columns, connect, write_transaction
from .outbox import Outbox, event_id
from .runtime import Actor, every, on

log = logging.getLogger(__name__)

db = peewee.DatabaseProxy()
# Tests set DCTRL_CRASH_AT=business_committed to die (like kill -9) right after a change
# and its events commit, before anything is published.
CRASH_AT = os.environ.get("DCTRL_CRASH_AT")

MAX_CENTS = 10**14  # a trillion CAD: far beyond any price, well inside 64 bits
CAD_RE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,2}))?")
INT_RE = re.compile(r"[0-9]{1,9}")


class MoneyError(ValueError):
    pass


def parse_cad(value) -> int:
    """CAD as a decimal string ("3.50", "3.5", "3") -> integer cents. Refuses floats, negatives,
    more than 2 decimals, exponents and anything that is not a plain decimal string."""
    if not isinstance(value, str):
        raise MoneyError(f"a CAD amount must be a decimal string like \"3.50\", not {type(value).__name__}")
    if not CAD_RE.fullmatch(value):
        if value.strip().startswith("-"):
            raise MoneyError(f"{value[:40]!r}: a CAD amount cannot be negative")
        if re.fullmatch(r"[0-9]+\.[0-9]{3,}", value):
            raise MoneyError(f"{value[:40]!r}: a CAD amount has at most 2 decimals")
        raise MoneyError(f"{value[:40]!r} is not a CAD amount like \"3.50\"")
    cents = Decimal(value) * 100
    assert cents == cents.to_integral_value()  # guaranteed by the pattern
    return int(cents)


def format_cad(cents: int) -> str:
    """Integer cents -> "3.50"."""
    if type(cents) is not int or cents < 0:
        raise MoneyError(f"cents must be a non-negative int, not {cents!r}")
    return f"{cents // 100}.{cents % 100:02d}"


def _cad_policy(value) -> str:
    return format_cad(parse_cad(value))


def _int_policy(lo, hi):
    def check(value) -> str:
        if not isinstance(value, str) or not INT_RE.fullmatch(value):
            raise ValueError(f"{str(value)[:40]!r} is not a whole number")
        n = int(value)
        if not lo <= n <= hi:
            raise ValueError(f"{n} is not in {lo}..{hi}")
        return str(n)
    return check


# key -> (default as stored, validator returning the normalised string, type of the current value)
POLICIES = {
    "zero_conf_limit_cad": ("20.00", _cad_policy, Decimal),
    "invoice_lifetime_s": ("900", _int_policy(1, 7 * 86400), int),
    "underpayment_tolerance_cad": ("0.05", _cad_policy, Decimal),
    "confirmations_required": ("1", _int_policy(1, 100), int),
}


def validate_policy(key: str, value) -> str:
    """The normalised string to store for ``key``; raises ValueError with the reason."""
    if key not in POLICIES:
        raise ValueError(f"unknown policy {key[:64]!r}; known: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[key][1](value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


# -- models -------------------------------------------------------------------

class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class BusinessMachine(Base):
    name = peewee.CharField(unique=True, max_length=32)
    location = peewee.CharField(null=True, max_length=128)
    created = peewee.BigIntegerField()


class BusinessSlot(Base):
    machine = peewee.ForeignKeyField(BusinessMachine, backref="slots", on_delete="CASCADE")
    number = peewee.SmallIntegerField()  # 0..255
    product = peewee.CharField(max_length=64)
    price_cents = peewee.BigIntegerField()
    relay = peewee.CharField(null=True, max_length=32)  # "gpio:17" | "i2c:0x20:3"; None: not wired yet
    stock = peewee.IntegerField(null=True)  # None: not counted
    updated = peewee.BigIntegerField()
    sticker_address = peewee.CharField(null=True, max_length=100, unique=True)  # legacy fixed address

    class Meta:
        indexes = ((("machine", "number"), True),)


class BusinessPolicyVersion(Base):
    version = peewee.AutoField()  # grows across all keys; the latest row of a key is its value
    key = peewee.CharField(max_length=64, index=True)
    value = peewee.CharField(max_length=64)
    created = peewee.BigIntegerField()


class BusinessCommand(Base):
    id = peewee.CharField(primary_key=True, max_length=32)  # command ids applied or refused (dedup)
    topic = peewee.CharField(max_length=64)
    result = peewee.TextField()  # the ack fields, as JSON
    created = peewee.BigIntegerField()


# Short names for readers.
Machine, Slot, PolicyVersion = BusinessMachine, BusinessSlot, BusinessPolicyVersion
TABLES = [BusinessMachine, BusinessSlot, BusinessPolicyVersion, BusinessCommand]


# -- query functions (for other actors and the CLI) ----------------------------

def machines(database) -> list[dict]:
    q = BusinessMachine.select().order_by(BusinessMachine.name).bind(database)
    return [{"name": m.name, "location": m.location, "created": m.created} for m in q]


def slots(database, machine: str) -> list[dict]:
    q = (BusinessSlot.select(BusinessSlot, BusinessMachine.name).join(BusinessMachine)
         .where(BusinessMachine.name == machine).order_by(BusinessSlot.number).bind(database))
    return [{"machine": machine, "slot": s.number, "product": s.product, "price_cents": s.price_cents,
             "price_cad": format_cad(s.price_cents), "relay": s.relay, "stock": s.stock, "updated": s.updated,
             "sticker_address": s.sticker_address}
            for s in q]


def policy_versions(database, key: str | None = None) -> list[dict]:
    """Every stored version (oldest first), optionally of one key."""
    q = BusinessPolicyVersion.select().order_by(BusinessPolicyVersion.version)
    if key is not None:
        q = q.where(BusinessPolicyVersion.key == key)
    return [{"version": p.version, "key": p.key, "value": p.value, "created": p.created} for p in q.bind(database)]


def policy(database) -> dict:
    """The current value of every policy key (its latest version, else its default), typed:
    Decimal for ``*_cad`` keys, int for the others."""
    current = {key: default for key, (default, _, _) in POLICIES.items()}
    for p in policy_versions(database):  # ascending: the latest wins
        if p["key"] in current:
            current[p["key"]] = p["value"]
    return {key: POLICIES[key][2](value) for key, value in current.items()}


# -- the actor ----------------------------------------------------------------

class Refused(Exception):
    pass


class BusinessData(Actor):
    def __init__(self, home: Home, *, database=None, clock=time.time):
        self.home = home
        self.clock = clock
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        add_missing_columns(self.database, BusinessSlot, ["sticker_address"])  # first: see its docstring
        self.database.create_tables(TABLES, safe=True)
        self.outbox = Outbox(Outbox.model_for(self.database, "business_outbox"))
        self.database.create_tables([self.outbox.model], safe=True)
        self.unsent = True  # a previous run may have left events unsent: look at the first flush
        self.applied = 0
        self.refused = 0

    def teardown(self):
        self.database.close()

    def health(self):
        detail = f"{len(machines(self.database))} machines, {self.applied} changes, {self.refused} refused"
        if self.unsent:
            detail += f", {self.outbox.pending()} event(s) waiting to be sent"
        return "ok", detail

    # -- commands from the bus (loop thread: one writer, one command at a time) ----

    @on("cmd.business.machine.add")
    def machine_add(self, msg):
        """cmd.business.machine.add {"id", "expires", "name": "vm1", "location": "front door"}"""
        self._answer(*self.execute(msg.topic, msg.body))

    @on("cmd.business.slot.set")
    def slot_set(self, msg):
        """cmd.business.slot.set {"id", "expires", "machine", "slot", "product", "price_cad": "3.50",
        "relay", "stock"}"""
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
    def flush(self):
        """Publish what the outbox holds unsent (only while the runtime can send now)."""
        if self.unsent:
            self.outbox.flush(self.runtime)
            self.unsent = self.outbox.pending() > 0

    def execute(self, topic: str, body: dict) -> tuple[dict, list]:
        """Apply one command (a validated body) exactly once; returns (ack body, [(topic, event)]).

        The dedup record, the change and its events (in the outbox, each with its
        ``event_id``) commit in one transaction, so a command is either applied,
        remembered and announced, or none of these. Nothing is published here."""
        cid = body["id"].hex()
        kind = topic.split(".", 2)[2]  # machine.add | slot.set | policy.set
        events: list = []
        with write_transaction(self.database):
            done = BusinessCommand.get_or_none(BusinessCommand.id == cid)
            if done is not None:  # a retry: the same answer again, nothing done twice
                return {"id": body["id"], **json.loads(done.result)}, []
            try:
                if body["expires"] < self.clock():
                    raise Refused("command expired")
                with self.database.atomic():  # a savepoint: a refused command writes nothing
                    if kind == "machine.add":
                        events = self._machine_add(body)
                    elif kind == "slot.set":
                        events = self._slot_set(body)
                    elif kind == "policy.set":
                        events = self._policy_set(body)
                    else:
                        raise Refused(f"unknown command {topic}")
                result = {"status": "done", "reason": None}
                self.applied += 1
            except (Refused, ValueError) as exc:
                result = {"status": "refused", "reason": str(exc)[:512]}
                self.refused += 1
                log.info("refused %s %s: %s", topic, cid, exc)
            BusinessCommand.create(id=cid, topic=topic[:64], result=json.dumps(result), created=int(self.clock()))
            events = [(t, {**e, "event_id": event_id("business", cid, n)}) for n, (t, e) in enumerate(events)]
            for t, e in events:
                self.outbox.add(t, e, e["event_id"])
        return {"id": body["id"], **result}, events

    def _machine_add(self, body):
        name = body["name"]
        if BusinessMachine.get_or_none(BusinessMachine.name == name) is not None:
            raise Refused(f"machine {name} already exists")
        m = BusinessMachine.create(name=name, location=body.get("location"), created=int(self.clock()))
        log.info("machine %s added", name)
        return [("business.machine.added", {"name": m.name, "location": m.location, "created": m.created})]

    def _slot_set(self, body):
        machine = BusinessMachine.get_or_none(BusinessMachine.name == body["machine"])
        if machine is None:
            raise Refused(f"unknown machine {body['machine']}")
        try:
            cents = parse_cad(body["price_cad"])
        except MoneyError as exc:
            raise Refused(f"price: {exc}") from None
        if cents > MAX_CENTS:
            raise Refused(f"price: {body['price_cad']} CAD is too large")
        product = body["product"].strip()
        if not product:
            raise Refused("product: a name is required")
        now = int(self.clock())
        slot = BusinessSlot.get_or_none((BusinessSlot.machine == machine) & (BusinessSlot.number == body["slot"]))
        relay = body.get("relay")
        stock = body.get("stock")
        sticker = body.get("sticker_address")
        if sticker:
            self._check_address(sticker)
            other = BusinessSlot.get_or_none(BusinessSlot.sticker_address == sticker)
            if other is not None and (other.machine_id, other.number) != (machine.id, body["slot"]):
                raise Refused(f"sticker address {sticker} is already slot {other.machine.name}/{other.number}'s")
        if slot is None:
            slot = BusinessSlot.create(machine=machine, number=body["slot"], product=product, price_cents=cents,
                                       relay=relay, stock=stock, updated=now, sticker_address=sticker or None)
        else:
            slot.product, slot.price_cents, slot.updated = product, cents, now
            if relay is not None:
                slot.relay = relay
            if stock is not None:
                slot.stock = stock
            if sticker is not None:
                slot.sticker_address = sticker or None
            slot.save()
        log.info("slot %s/%d: %s at %s CAD%s", machine.name, slot.number, product, format_cad(cents),
                 f", sticker address {slot.sticker_address}" if slot.sticker_address else "")
        return [("business.slot.changed", {"machine": machine.name, "slot": slot.number, "product": slot.product,
                                           "price_cents": slot.price_cents, "relay": slot.relay,
                                           "stock": slot.stock, "sticker_address": slot.sticker_address})]

    def _check_address(self, address):
        """A sticker address must be an address of the chain's network (an error is refused)."""
        from embit.script import address_to_scriptpubkey

        from .chain.addresses import network

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
