"""BusinessData: money parsing, models, versioned policies and the event outbox on SQLite and
PostgreSQL, and the actor end to end on the real bus (broker and Vault as processes, the actor in
a thread, or as a process killed between a commit and its publication), driven by the CLI
functions and by raw commands from an admin client."""

import argparse
import hashlib
import json
import os
import threading
import time
import uuid
from decimal import Decimal

import msgpack
import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.business_data.actor import BusinessData
from actors.business_data.models import BusinessCommand, BusinessSlot, MoneyError, format_cad, parse_cad
from actors.business_data.queries import machines, policy, policy_versions, slots
from actors.chain.addresses import Deriver
from actors.db import connect
from actors.outbox import Outbox
from actors.runtime import Runtime
from scripts.cli.provision import demo_account_xpub
from proto.errors import DctrlError
from scripts.cli import business as business_cli
from tests.harness import Network, dctrl, home_on, topic_is, wait_for
from tests.test_db import PG_URL

T0 = 1_700_000_000


# -- money ---------------------------------------------------------------------

@pytest.mark.parametrize("text, cents", [("3.50", 350), ("3.5", 350), ("3", 300), ("0", 0), ("0.05", 5),
                                         ("20.00", 2000), ("999999999999.99", 99999999999999)])
def test_parse_cad_accepts_plain_decimal_strings(text, cents):
    assert parse_cad(text) == cents
    assert Decimal(format_cad(cents)) == Decimal(text)


@pytest.mark.parametrize("bad, reason", [("3.505", "at most 2 decimals"), ("-1", "negative"), ("-0.01", "negative"),
                                         ("abc", "not a CAD amount"), ("1e2", "not a CAD amount"),
                                         ("", "not a CAD amount"), (" 3.50", "not a CAD amount"),
                                         ("3.", "not a CAD amount"), (".5", "not a CAD amount"),
                                         ("NaN", "not a CAD amount"), ("Infinity", "not a CAD amount"),
                                         ("٣.50", "not a CAD amount"), (3.5, "not float"), (350, "not int"),
                                         (Decimal("3.50"), "not Decimal")])
def test_parse_cad_refuses_everything_else(bad, reason):
    with pytest.raises(MoneyError, match=reason):
        parse_cad(bad)


@given(st.integers(0, 2).flatmap(lambda places: st.decimals(min_value=0, max_value=10**12 - 1, places=places,
                                                            allow_nan=False, allow_infinity=False)))
def test_any_decimal_with_at_most_two_places_round_trips_through_cents(d):
    d = abs(d)  # no "-0.00"
    cents = parse_cad(f"{d:f}")
    assert type(cents) is int and Decimal(cents) / 100 == d
    assert Decimal(format_cad(cents)) == d and parse_cad(format_cad(cents)) == cents


# -- models and policies on both backends ----------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def bdb(request, tmp_path):
    """A database of each kind; on PostgreSQL a fresh schema, dropped at the end."""
    if request.param == "sqlite":
        database = connect(f"sqlite:///{tmp_path / 'business.sqlite3'}")
        yield database
        database.close()
        return
    database = connect(PG_URL)
    schema = f"bd_{uuid.uuid4().hex[:12]}"
    database.execute_sql(f"CREATE SCHEMA {schema}")
    database.execute_sql(f"SET search_path TO {schema}")
    try:
        yield database
    finally:
        database.execute_sql("SET search_path TO public")
        database.execute_sql(f"DROP SCHEMA {schema} CASCADE")
        database.close()


def cmd(**body):
    return {"id": os.urandom(16), "expires": T0 + 60, **body}


def eid(command, n=0):
    """The event id business_data must give event ``n`` of a command: sha256 of stable parts."""
    return hashlib.sha256(f"business|{command['id'].hex()}|{n}".encode()).hexdigest()


def outbox_rows(database):
    model = Outbox.model_for(database, "business_outbox")
    return [(r.topic, r.event_id, msgpack.unpackb(r.body, raw=False), r.sent)
            for r in model.select().order_by(model.id)]


def test_models_and_policy_versions_on_both_backends(home, bdb):
    now = [T0]
    actor = BusinessData(home, database=bdb, clock=lambda: now[0])
    add = cmd(name="vm1", location="front door")
    ack, events = actor.execute("cmd.business.machine.add", add)
    assert ack["status"] == "done" and events == [("business.machine.added", {
        "name": "vm1", "location": "front door", "created": T0, "event_id": eid(add)})]
    ack, _ = actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))
    assert ack["status"] == "refused" and "already exists" in ack["reason"]

    ack, events = actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=255, product="cola",
                                                            price_cad="3.50", relay="gpio:17", stock=None))
    assert ack["status"] == "done"
    assert events[0][1] == {"machine": "vm1", "slot": 255, "product": "cola", "price_cents": 350,
                            "relay": "gpio:17", "stock": None, "event_id": events[0][1]["event_id"],
                            "sticker_address": None}
    # a change keeps relay and stock when not given, sets them when given
    actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=255, product="cola zero", price_cad="4",
                                               relay=None, stock=12))
    actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=0, product="chips",
                                               price_cad="1000.00", relay=None, stock=None))  # max_price_cad
    assert [(s["slot"], s["product"], s["price_cents"], s["price_cad"], s["relay"], s["stock"])
            for s in slots(bdb, "vm1")] == [(0, "chips", 100000, "1000.00", None, None),
                                            (255, "cola zero", 400, "4.00", "gpio:17", 12)]
    ack, _ = actor.execute("cmd.business.slot.set", cmd(machine="vm9", slot=1, product="x", price_cad="1",
                                                        relay=None, stock=None))
    assert ack["status"] == "refused" and "unknown machine vm9" in ack["reason"]
    assert machines(bdb) == [{"name": "vm1", "location": "front door", "created": T0}]

    assert policy(bdb) == {"zero_conf_limit_cad": Decimal("20.00"), "invoice_lifetime_s": 900,
                           "underpayment_tolerance_cad": Decimal("0.05"), "confirmations_required": 1,
                           "max_price_cad": Decimal("1000.00")}
    for key, value in (("confirmations_required", "2"), ("zero_conf_limit_cad", "15.5"),
                       ("confirmations_required", "3")):
        now[0] += 1
        ack, events = actor.execute("cmd.business.policy.set", cmd(key=key, value=value))
        assert ack["status"] == "done", ack
    assert events[0][0] == "business.policy.changed" and events[0][1]["key"] == "confirmations_required"
    current = policy(bdb)
    assert current["confirmations_required"] == 3 and current["zero_conf_limit_cad"] == Decimal("15.50")
    history = policy_versions(bdb, "confirmations_required")
    assert [h["value"] for h in history] == ["2", "3"] and history[0]["version"] < history[1]["version"]
    assert [v["value"] for v in policy_versions(bdb)] == ["2", "15.50", "3"]  # append-only: nothing replaced

    for key, value, why in (("confirmations_required", "0", "not in 1..100"),
                            ("confirmations_required", "101", "not in 1..100"),
                            ("confirmations_required", "1.0", "not a whole number"),
                            ("invoice_lifetime_s", "-5", "not a whole number"),
                            ("underpayment_tolerance_cad", "0.005", "at most 2 decimals"),
                            ("zero_conf_limit_cad", "-1", "negative"),
                            ("surprise", "1", "unknown policy")):
        ack, events = actor.execute("cmd.business.policy.set", cmd(key=key, value=value))
        assert ack["status"] == "refused" and why in ack["reason"] and events == [], (key, value, ack)
    assert len(policy_versions(bdb)) == 3
    # the dedup table remembers every command, applied or refused
    assert BusinessCommand.select().bind(bdb).count() == 16
    # one event per applied change, in the outbox in order, unsent (nothing published here)
    rows = outbox_rows(bdb)
    assert [t for t, _, _, _ in rows] == (["business.machine.added"] + ["business.slot.changed"] * 3
                                          + ["business.policy.changed"] * 3)
    assert rows[0] == ("business.machine.added", eid(add), events_of_add(add), False)
    assert len({e for _, e, _, _ in rows}) == 7 and not any(sent for *_, sent in rows)


def events_of_add(add):
    return {"name": add["name"], "location": add["location"], "created": T0, "event_id": eid(add)}


def test_sticker_addresses_on_both_backends(home, bdb):
    """A slot's legacy fixed address: set, kept, cleared; checked against the network; never two slots'."""
    ours, other = (Deriver(demo_account_xpub(), "regtest").address(i)[0] for i in (0, 1))
    actor = BusinessData(home, database=bdb, clock=lambda: T0)
    actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))

    def slot_set(n, **kw):
        body = dict(machine="vm1", slot=n, product="cola", price_cad="2.00", relay=None, stock=None) | kw
        return actor.execute("cmd.business.slot.set", cmd(**body))

    ack, events = slot_set(1, sticker_address=ours)
    assert ack["status"] == "done" and events[0][1]["sticker_address"] == ours
    assert slot_set(1)[1][0][1]["sticker_address"] == ours  # not given: kept
    ack, _ = slot_set(2, sticker_address=ours)
    assert ack["status"] == "refused" and "already slot vm1/1's" in ack["reason"]
    ack, _ = slot_set(2, sticker_address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")  # mainnet
    assert ack["status"] == "refused" and "not a regtest address" in ack["reason"]
    assert slot_set(2, sticker_address=other)[0]["status"] == "done"
    assert slot_set(1, sticker_address="")[1][0][1]["sticker_address"] is None  # "" clears
    assert [s["sticker_address"] for s in slots(bdb, "vm1")] == [None, other]


def test_an_old_slot_table_gets_the_sticker_column(home, bdb):
    """A table made before sticker addresses existed (the DDL of that version) is upgraded in place."""
    pk = "SERIAL PRIMARY KEY" if isinstance(bdb, peewee.PostgresqlDatabase) else "INTEGER PRIMARY KEY"
    bdb.execute_sql(f"CREATE TABLE business_machine (id {pk}, name VARCHAR(32) NOT NULL UNIQUE, "
                    "location VARCHAR(128), created BIGINT NOT NULL)")
    bdb.execute_sql(f"CREATE TABLE business_slot (id {pk}, machine_id INTEGER NOT NULL, "
                    "number SMALLINT NOT NULL, product VARCHAR(64) NOT NULL, price_cents BIGINT NOT NULL, "
                    "relay VARCHAR(32), stock INTEGER, updated BIGINT NOT NULL)")
    bdb.execute_sql("INSERT INTO business_machine (name, created) VALUES ('vm1', 1)")
    bdb.execute_sql("INSERT INTO business_slot (machine_id, number, product, price_cents, updated) "
                    "VALUES (1, 3, 'cola', 200, 1)")
    actor = BusinessData(home, database=bdb, clock=lambda: T0)
    assert [(s["slot"], s["sticker_address"]) for s in slots(bdb, "vm1")] == [(3, None)]
    address = Deriver(demo_account_xpub(), "regtest").address(0)[0]
    for n, sticker in ((3, address), (4, None)):
        ack, _ = actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=n, product="x", price_cad="1",
                                                            relay=None, stock=None, sticker_address=sticker))
        assert ack["status"] == "done"
    with pytest.raises(peewee.IntegrityError):  # the unique index is a real one (not on a constant)
        with bdb.atomic():
            BusinessSlot.update(sticker_address=address).where(BusinessSlot.number == 4).bind(bdb).execute()


def test_events_commit_with_the_change_or_not_at_all(home, bdb):
    actor = BusinessData(home, database=bdb, clock=lambda: T0)
    add = cmd(name="vm1", location=None)
    _, events = actor.execute("cmd.business.machine.add", add)
    assert outbox_rows(bdb) == [("business.machine.added", eid(add), events_of_add(add), False)]
    ack, events = actor.execute("cmd.business.machine.add", add)  # a retry: nothing twice
    assert ack["status"] == "done" and events == [] and len(outbox_rows(bdb)) == 1
    ack, events = actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))
    assert ack["status"] == "refused" and events == [] and len(outbox_rows(bdb)) == 1

    def broken(*args):  # the outbox write fails: the change and the dedup record roll back with it
        raise RuntimeError("disk full")
    actor.outbox.add = broken
    fails = cmd(name="vm2", location=None)
    with pytest.raises(RuntimeError, match="disk full"):
        actor.execute("cmd.business.machine.add", fails)
    assert [m["name"] for m in machines(bdb)] == ["vm1"]
    assert BusinessCommand.get_or_none(BusinessCommand.id == fails["id"].hex()) is None
    assert len(outbox_rows(bdb)) == 1


def test_slot_set_changes_only_what_it_is_given_on_both_backends(home, bdb):
    """Issue 9.9: nil keeps a field, for every field; a new slot still needs a product and a price;
    `clear` makes relay and stock nil; a command that changes nothing is refused."""
    sticker = Deriver(demo_account_xpub(), "regtest").address(0)[0]
    now = [T0]
    actor = BusinessData(home, database=bdb, clock=lambda: now[0])
    actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))

    def slot_set(**kw):
        body = dict(machine="vm1", slot=1) | kw
        ack, events = actor.execute("cmd.business.slot.set", cmd(**body))
        return ack, (events[0][1] if events else None)

    for kw in ({"price_cad": "3.50"}, {"product": "cola"}, {"stock": 3}):
        ack, event = slot_set(**kw)
        assert ack["status"] == "refused" and "needs a product and a price" in ack["reason"] and event is None
    ack, _ = slot_set(product="cola", price_cad="3.50", relay="gpio:17", sticker_address=sticker)
    assert ack["status"] == "done"

    def current():
        (s,) = slots(bdb, "vm1")
        return {k: s[k] for k in ("product", "price_cents", "relay", "stock", "sticker_address")}

    ack, event = slot_set(price_cad="4.00")
    assert ack["status"] == "done"
    assert current() == {"product": "cola", "price_cents": 400, "relay": "gpio:17", "stock": None,
                         "sticker_address": sticker}
    assert {k: event[k] for k in current()} == current() and event["machine"] == "vm1" and event["slot"] == 1
    slot_set(stock=10)
    assert current() == {"product": "cola", "price_cents": 400, "relay": "gpio:17", "stock": 10,
                         "sticker_address": sticker}
    slot_set(product="cola zero")
    slot_set(relay="i2c:0x20:3")
    assert current() == {"product": "cola zero", "price_cents": 400, "relay": "i2c:0x20:3", "stock": 10,
                         "sticker_address": sticker}
    ack, event = slot_set(clear=["stock"])
    assert ack["status"] == "done" and event["stock"] is None and current()["relay"] == "i2c:0x20:3"
    slot_set(clear=["relay"], sticker_address="")
    assert current() == {"product": "cola zero", "price_cents": 400, "relay": None, "stock": None,
                         "sticker_address": None}
    for kw, why in (({}, "nothing to change"), ({"stock": 2, "clear": ["stock"]}, "both a value and clear"),
                    ({"product": "  "}, "a name is required"), ({"price_cad": "4.001"}, "at most 2 decimals")):
        ack, event = slot_set(**kw)
        assert ack["status"] == "refused" and why in ack["reason"] and event is None, (kw, ack)
    assert current()["price_cents"] == 400 and current()["product"] == "cola zero"


def sales_tables(bdb):
    """BusinessMgr's tables in ``bdb`` (what business_data reads its sales from)."""
    from actors.business_mgr.models import TABLES as SALES_TABLES

    with bdb.bind_ctx(SALES_TABLES):
        bdb.create_tables(SALES_TABLES)


def sell(bdb, machine, slot, acked_at, state="vended", invoice_state="vended"):
    """What BusinessMgr records for one vend (an invoice and its vend row); returns the vend id."""
    from actors.business_mgr.models import SalesInvoice, SalesVend

    vend = os.urandom(16).hex()
    with bdb.bind_ctx([SalesInvoice, SalesVend]):
        inv = SalesInvoice.create(mode="invoice", machine=machine, slot=slot, product="x", price_cents=100,
                                  address="bcrt1qx", state=invoice_state, created=acked_at - 5,
                                  expires=acked_at + 900)
        SalesVend.create(id=vend, invoice=inv, item=0, machine=machine, slot=slot, state=state,
                         created=acked_at - 1, expires=acked_at + 30, deadline=acked_at + 300,
                         acked_at=acked_at if state != "sent" else None)
    return vend


def test_machines_and_slots_removed_and_changed_on_both_backends(home, bdb):
    """Issue 9.9: slot rm, machine rm (with its slots), machine set; refused while invoices are not closed."""
    from actors.business_mgr.models import SalesInvoice

    sales_tables(bdb)
    actor = BusinessData(home, database=bdb, clock=lambda: T0)
    for name in ("vm1", "vm2"):
        actor.execute("cmd.business.machine.add", cmd(name=name, location=None))
    for n in (1, 2):
        actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=n, product=f"p{n}", price_cad="1"))
    sell(bdb, "vm1", 1, T0, state="sent", invoice_state="vending")  # paid, being dispensed

    ack, events = actor.execute("cmd.business.slot.rm", cmd(machine="vm1", slot=1))
    assert ack["status"] == "refused" and "slot vm1/1 has 1 invoice(s) not closed" in ack["reason"] and not events
    ack, events = actor.execute("cmd.business.machine.rm", cmd(name="vm1"))
    assert ack["status"] == "refused" and "machine vm1 has 1 invoice(s) not closed" in ack["reason"] and not events
    ack, events = actor.execute("cmd.business.slot.rm", cmd(machine="vm1", slot=2))  # nothing sold there
    assert ack["status"] == "done" and [(t, {k: e[k] for k in ("machine", "slot")}) for t, e in events] == [
        ("business.slot.removed", {"machine": "vm1", "slot": 2})]
    assert [s["slot"] for s in slots(bdb, "vm1")] == [1]
    for topic, body, why in (("cmd.business.slot.rm", dict(machine="vm1", slot=2), "has no slot 2"),
                             ("cmd.business.slot.rm", dict(machine="vm9", slot=1), "unknown machine vm9"),
                             ("cmd.business.machine.rm", dict(name="vm9"), "unknown machine vm9")):
        ack, events = actor.execute(topic, cmd(**body))
        assert ack["status"] == "refused" and why in ack["reason"] and not events

    with bdb.bind_ctx([SalesInvoice]):  # the invoice closes: now the machine may go, with its slots
        SalesInvoice.update(state="vended").execute()
    ack, events = actor.execute("cmd.business.machine.rm", cmd(name="vm1"))
    assert ack["status"] == "done"
    assert [(t, e.get("slot")) for t, e in events] == [("business.slot.removed", 1),
                                                       ("business.machine.removed", None)]
    assert all(len(e["event_id"]) == 64 for _, e in events)
    assert [m["name"] for m in machines(bdb)] == ["vm2"] and slots(bdb, "vm1") == []
    assert BusinessSlot.select().bind(bdb).count() == 0

    ack, events = actor.execute("cmd.business.machine.set", cmd(name="vm2", location="back room"))
    assert ack["status"] == "done" and events[0][0] == "business.machine.changed"
    assert {k: events[0][1][k] for k in ("name", "location", "created")} == {
        "name": "vm2", "location": "back room", "created": T0}
    assert machines(bdb)[0]["location"] == "back room"
    actor.execute("cmd.business.machine.set", cmd(name="vm2", location=""))  # "" clears
    assert machines(bdb)[0]["location"] is None
    ack, _ = actor.execute("cmd.business.machine.set", cmd(name="vm2", location=None))
    assert ack["status"] == "refused" and "nothing to change" in ack["reason"]
    assert actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))[0]["status"] == "done"


def test_each_vend_is_counted_once_across_restarts_on_both_backends(home, bdb):
    """Issue 9.5: every vend BusinessMgr records as vended takes one from its slot's stock, once per
    vend id, whether business_data saw it happen or was down; a restart counts nothing twice."""
    from actors.business_data.models import BusinessStockMove
    from actors.business_data.queries import stock_left
    from actors.outbox import event_id

    sales_tables(bdb)
    now = [T0]
    first = BusinessData(home, database=bdb, clock=lambda: now[0])
    first.execute("cmd.business.machine.add", cmd(name="vm1", location=None))
    for n, stock in ((1, 3), (2, None)):
        first.execute("cmd.business.slot.set", cmd(machine="vm1", slot=n, product=f"p{n}", price_cad="1",
                                                  stock=stock))

    def stock(n):
        return next(s["stock"] for s in slots(bdb, "vm1") if s["slot"] == n)

    sell(bdb, "vm1", 1, T0 - 1)                        # before the stock was set: already in the count
    sell(bdb, "vm1", 1, T0 + 1, state="failed", invoice_state="failed")  # nothing fell
    sell(bdb, "vm1", 1, T0 + 1, state="sent", invoice_state="vending")   # not answered yet
    sell(bdb, "vm1", 2, T0 + 1)                        # stock not counted there
    v1 = sell(bdb, "vm1", 1, T0 + 1)
    assert stock_left(bdb, "vm1", 1) == 2 and stock(1) == 3  # sold, not counted yet: not for sale either
    assert stock_left(bdb, "vm1", 2) is None and stock_left(bdb, "vm1", 9) is None

    events = first.count()
    assert [(e["slot"], e["stock"], e["vend"], e["event_id"]) for e in events] == [
        (1, 2, v1, event_id("business", "vend", v1))]
    assert (stock(1), stock(2), stock_left(bdb, "vm1", 1)) == (2, None, 2)
    assert [(t, e, sent) for t, e, _, sent in outbox_rows(bdb)][-1] == ("business.slot.changed",
                                                                       events[0]["event_id"], False)
    assert first.count() == []                          # the same vends again: nothing
    assert stock(1) == 2

    # "Down": vends recorded while no business_data ran; a new one counts them, once.
    v2, v3 = sell(bdb, "vm1", 1, T0 + 2), sell(bdb, "vm1", 1, T0 + 3)
    assert stock_left(bdb, "vm1", 1) == 0
    now[0] = T0 + 10
    second = BusinessData(home, database=bdb, clock=lambda: now[0])
    assert [(e["vend"], e["stock"]) for e in second.count()] == [(v2, 1), (v3, 0)]
    third = BusinessData(home, database=bdb, clock=lambda: now[0])
    assert third.count() == [] and stock(1) == 0
    v4 = sell(bdb, "vm1", 1, T0 + 11)  # one more than the count said: it stays 0, and is recorded
    assert [(e["vend"], e["stock"]) for e in third.count()] == [(v4, 0)]
    assert BusinessStockMove.select().bind(bdb).count() == 4

    # A refill: what was acknowledged before it is in the operator's count; after it counts.
    now[0] = T0 + 20
    third.execute("cmd.business.slot.set", cmd(machine="vm1", slot=1, stock=5))
    sell(bdb, "vm1", 1, T0 + 19)
    v5 = sell(bdb, "vm1", 1, T0 + 20)
    assert stock_left(bdb, "vm1", 1) == 4
    assert [(e["vend"], e["stock"]) for e in third.count()] == [(v5, 4)]
    third.execute("cmd.business.slot.set", cmd(machine="vm1", slot=1, clear=["stock"]))  # not counted any more
    sell(bdb, "vm1", 1, T0 + 21)
    assert third.count() == [] and stock(1) is None and stock_left(bdb, "vm1", 1) is None


def test_a_database_from_before_stock_counting_counts_from_the_upgrade(home, bdb):
    """A slot table without stock_set (the version before): vends sold before the upgrade are in
    the stock the operator set; counting starts at the first start of this version."""
    pk = "SERIAL PRIMARY KEY" if isinstance(bdb, peewee.PostgresqlDatabase) else "INTEGER PRIMARY KEY"
    bdb.execute_sql(f"CREATE TABLE business_machine (id {pk}, name VARCHAR(32) NOT NULL UNIQUE, "
                    "location VARCHAR(128), created BIGINT NOT NULL)")
    bdb.execute_sql(f"CREATE TABLE business_slot (id {pk}, machine_id INTEGER NOT NULL, "
                    "number SMALLINT NOT NULL, product VARCHAR(64) NOT NULL, price_cents BIGINT NOT NULL, "
                    "relay VARCHAR(32), stock INTEGER, updated BIGINT NOT NULL, sticker_address VARCHAR(100))")
    bdb.execute_sql("INSERT INTO business_machine (name, created) VALUES ('vm1', 1)")
    bdb.execute_sql("INSERT INTO business_slot (machine_id, number, product, price_cents, stock, updated) "
                    "VALUES (1, 3, 'cola', 200, 5, 1)")
    sales_tables(bdb)
    sell(bdb, "vm1", 3, T0 - 100)
    actor = BusinessData(home, database=bdb, clock=lambda: T0)
    assert actor.count() == [] and slots(bdb, "vm1")[0]["stock"] == 5
    vend = sell(bdb, "vm1", 3, T0)
    assert [(e["vend"], e["stock"]) for e in actor.count()] == [(vend, 4)]


# -- the actor on the bus ---------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    """The actor's bus tests run on each database (PostgreSQL: a schema of its own)."""
    with home_on(request.param, tmp_path / "home", "bd_bus") as h:
        yield h


@pytest.fixture
def business(home, network):
    """BusinessData running in a thread of the test process with its own identity."""
    actor = BusinessData(home)
    rt = Runtime(actor, home.bus_settings("business_data"))
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    wait_for(rt.proxy.token_valid, what="business_data's token")
    yield actor
    rt.stop()
    t.join(10)
    assert not t.is_alive()


def ns(home, **kw):
    return argparse.Namespace(**{"home": str(home.root), "as_name": "admin", "timeout": 10.0, "json": False,
                                 "sticker_address": None, **kw})


def is_ack(body):
    return lambda d: (d.message is not None and d.message.topic == "business.ack"
                      and d.message.body["id"] == body["id"])


def send_until_acked(client, topic, body, timeout=20):
    """What every sender of a command does: repeat it until its ack arrives. The first ack also
    proves the client's subscription to business.* is in place."""
    def acked():
        client.publish(topic, body)
        try:
            return client.expect(is_ack(body), timeout=0.5, what="the ack").message.body
        except AssertionError:
            return None
    return wait_for(acked, timeout=timeout, interval=0, what=f"an ack for {topic}")


def probe(client):
    """A command refused on arrival (nothing changes, no event): round trip through business_data.
    Its ack comes after everything business_data published before it."""
    body = {"id": os.urandom(16), "expires": int(time.time()) + 60, "key": "probe", "value": "1"}
    ack = send_until_acked(client, "cmd.business.policy.set", body)
    assert ack["status"] == "refused" and "unknown policy" in ack["reason"]
    return body["id"]


def event_body(d):
    body = dict(d.message.body)
    assert len(body.pop("event_id")) == 64
    return body


def test_cli_changes_go_over_the_bus_and_are_published(home, business, clients, capsys):
    watch = clients(home, "admin", prefixes=["business"])
    probe_id = probe(watch)
    business_cli.cmd_machines(ns(home, machines_cmd="add", name="vm1", location="lobby"))
    business_cli.cmd_slots(ns(home, slots_cmd="set", machine="vm1", slot=3, product="cola", price_cad="3.50",
                              stock=10, relay="gpio:17"))
    business_cli.cmd_policy(ns(home, policy_cmd="set", key="zero_conf_limit_cad", value="25"))
    out = capsys.readouterr().out
    assert "machine vm1 added (lobby)" in out and "slot vm1/3: cola at 3.50 CAD" in out
    assert "policy zero_conf_limit_cad = 25.00" in out

    added = watch.expect(lambda d: d.message and d.message.topic == "business.machine.added").message
    assert added.sender == "business_data" and added.body["name"] == "vm1"
    changed = event_body(watch.expect(lambda d: d.message and d.message.topic == "business.slot.changed"))
    assert changed == {"machine": "vm1", "slot": 3, "product": "cola", "price_cents": 350, "relay": "gpio:17",
                       "stock": 10, "sticker_address": None}
    pol = watch.expect(lambda d: d.message and d.message.topic == "business.policy.changed").message.body
    assert pol["key"] == "zero_conf_limit_cad" and pol["value"] == "25.00" and pol["version"] >= 1
    acks = [watch.expect(lambda d: d.message and d.message.topic == "business.ack"
                         and d.message.body["id"] != probe_id).message.body for _ in range(3)]
    assert {a["status"] for a in acks} == {"done"}

    business_cli.cmd_machines(ns(home, machines_cmd="list"))
    business_cli.cmd_slots(ns(home, slots_cmd="list", machine="vm1"))
    assert "vm1" in capsys.readouterr().out
    business_cli.cmd_slots(argparse.Namespace(home=str(home.root), slots_cmd="list", machine="vm1", json=True))
    rows = json.loads(capsys.readouterr().out)
    assert [(r["slot"], r["price_cad"], r["stock"]) for r in rows] == [(3, "3.50", 10)]
    business_cli.cmd_policy(argparse.Namespace(home=str(home.root), policy_cmd="show", json=True))
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"zero_conf_limit_cad": "25.00", "invoice_lifetime_s": "900",
                     "underpayment_tolerance_cad": "0.05", "confirmations_required": "1", "max_price_cad": "1000.00"}

    # refusals come back as clear errors: from business_data, or caught before sending
    with pytest.raises(DctrlError, match="refused: machine vm1 already exists"):
        business_cli.cmd_machines(ns(home, machines_cmd="add", name="vm1", location=None))
    with pytest.raises(DctrlError, match="at most 2 decimals"):
        business_cli.cmd_slots(ns(home, slots_cmd="set", machine="vm1", slot=3, product="cola", price_cad="3.505",
                                  stock=None, relay=None))
    with pytest.raises(DctrlError, match="invalid body.slot"):
        business_cli.cmd_slots(ns(home, slots_cmd="set", machine="vm1", slot=256, product="cola", price_cad="3",
                                  stock=None, relay=None))
    with pytest.raises(DctrlError, match="unknown policy"):
        business_cli.cmd_policy(ns(home, policy_cmd="set", key="nope", value="1"))


def test_cli_edits_change_only_what_is_given_and_go_over_the_bus(home, business, clients, capsys):
    """Issue 9.9 through the real CLI (subprocesses: argparse as an operator types it) and the bus:
    `slots set` of one field, `slots rm`, `machines set|rm`, and `machines add` of a name without a
    machine key warns and says how to add one."""
    watch = clients(home, "admin", prefixes=["business"])
    probe(watch)

    def event(topic, **body):
        return event_body(watch.expect(topic_is(topic, **body), what=topic))

    added = dctrl(home, "machines", "add", "vm1")  # the demo's machine: its key is in the registry
    assert "machine vm1 added" in added.stdout and "warning" not in added.stderr
    dctrl(home, "slots", "set", "vm1", "3", "--product", "cola", "--price-cad", "3.50", "--stock", "10",
          "--relay", "gpio:17")
    event("business.slot.changed", slot=3)
    out = dctrl(home, "slots", "set", "vm1", "3", "--price-cad", "4.00")
    assert "slot vm1/3: 4.00 CAD" in out.stdout
    assert event("business.slot.changed", slot=3) == {"machine": "vm1", "slot": 3, "product": "cola",
                                                      "price_cents": 400, "relay": "gpio:17", "stock": 10,
                                                      "sticker_address": None}
    dctrl(home, "slots", "set", "vm1", "3", "--stock", "12")
    assert event("business.slot.changed", slot=3)["stock"] == 12
    listed = dctrl(home, "slots", "list", "vm1").stdout
    assert "STOCK" in listed and listed.splitlines()[1].split()[:4] == ["3", "cola", "4.00", "12"]
    dctrl(home, "slots", "set", "vm1", "3", "--stock", "none")
    assert event("business.slot.changed", slot=3)["stock"] is None
    assert dctrl(home, "slots", "list", "vm1").stdout.splitlines()[1].split()[:4] == ["3", "cola", "4.00", "-"]
    new = dctrl(home, "slots", "set", "vm1", "4", "--price-cad", "1.00", check=False)
    assert new.returncode != 0 and "slot vm1/4 is new: it needs a product and a price" in new.stderr
    none = dctrl(home, "slots", "set", "vm1", "3", check=False)
    assert none.returncode != 0 and "nothing to change" in none.stderr
    dctrl(home, "slots", "rm", "vm1", "3")
    event("business.slot.removed", machine="vm1", slot=3)
    assert "no slots for machine vm1" in dctrl(home, "slots", "list", "vm1").stdout

    added = dctrl(home, "machines", "add", "vm7", "--location", "hall")
    assert "machine vm7 added (hall)" in added.stdout
    assert "no key named vm7 in the registry" in added.stderr
    assert "dctrl keys add vm7 --role machine" in added.stderr
    dctrl(home, "machines", "set", "vm7", "--location", "back room")
    assert event("business.machine.changed", name="vm7") == {"name": "vm7", "location": "back room",
                                                            "created": event("business.machine.added",
                                                                             name="vm7")["created"]}
    assert "back room" in dctrl(home, "machines", "list").stdout
    dctrl(home, "machines", "rm", "vm7")
    event("business.machine.removed", name="vm7")
    assert "vm7" not in dctrl(home, "machines", "list").stdout
    gone = dctrl(home, "machines", "rm", "vm7", check=False)
    assert gone.returncode != 0 and "refused: unknown machine vm7" in gone.stderr

    # the same functions in process, as the other CLI tests drive them: a key of another role
    business_cli.cmd_machines(ns(home, machines_cmd="add", name="vault", location=None))
    assert "vault's key has role" in capsys.readouterr().err


def test_retries_applied_once_expired_and_bad_prices_refused(home, business, clients):
    watch = clients(home, "admin", prefixes=["business"])
    probe(watch)

    def ack_for(body):
        return watch.expect(is_ack(body), what="the ack").message.body

    machine = {"id": os.urandom(16), "expires": int(time.time()) + 60, "name": "vm2", "location": None}
    for _ in range(3):  # a sender retrying until acked
        watch.publish("cmd.business.machine.add", machine)
    assert [ack_for(machine)["status"] for _ in range(3)] == ["done"] * 3
    watch.expect(lambda d: d.message and d.message.topic == "business.machine.added")

    expired = {"id": os.urandom(16), "expires": int(time.time()) - 1, "name": "vm3", "location": None}
    watch.publish("cmd.business.machine.add", expired)
    ack = ack_for(expired)
    assert ack["status"] == "refused" and ack["reason"] == "command expired"

    for price, why in (("3.505", "at most 2 decimals"), ("-1", "negative"), ("abc", "not a CAD amount")):
        body = {"id": os.urandom(16), "expires": int(time.time()) + 60, "machine": "vm2", "slot": 1,
                "product": "cola", "price_cad": price, "relay": None, "stock": None}
        watch.publish("cmd.business.slot.set", body)
        ack = ack_for(body)
        assert ack["status"] == "refused" and why in ack["reason"] and "price" in ack["reason"], ack

    probe(watch)  # anything published before the probe's answer has arrived
    topics = [d.message.topic for d in watch.drain() if d.message]
    assert topics.count("business.machine.added") == 0 and "business.slot.changed" not in topics
    database = connect(home.database_url)
    try:
        assert [m["name"] for m in machines(database)] == ["vm2"]
        assert BusinessSlot.select().bind(database).count() == 0
    finally:
        database.close()


# -- the outbox across a crash (the actor as a process, on both backends) -----------------

@pytest.fixture(params=["sqlite", "postgresql"])
def db_home(request, tmp_path):
    """A home whose database is a SQLite file, or a fresh PostgreSQL schema."""
    with home_on(request.param, tmp_path / "home", "bd_crash") as h:
        yield h


def test_killed_between_commit_and_publication_the_event_goes_out_once_after_restart(db_home, clients):
    home = db_home
    net = Network(home).start("broker", "vault")
    try:
        watch = clients(home, "admin", prefixes=["business", "health.business_data"])
        net.start("business_data", env={"DCTRL_CRASH_AT": "business_committed"})
        watch.expect(topic_is("health.business_data", status="ok"), timeout=20, what="business_data healthy")
        add = {"id": os.urandom(16), "expires": int(time.time()) + 300, "name": "vm1", "location": "lobby"}
        proc = net.procs["business_data"]

        def crashed():  # a sender repeats its command until answered; this one dies acting on it
            watch.publish("cmd.business.machine.add", add)
            return proc.poll() is not None
        wait_for(crashed, timeout=20, interval=0.5, what="business_data to act on the command")
        assert proc.wait(10) == 137  # died right after the commit, before publishing anything
        net.procs.pop("business_data")

        database = connect(home.database_url)
        try:  # the change, its dedup record and its event committed together; the event is unsent
            assert [m["name"] for m in machines(database)] == ["vm1"]
            (row,) = outbox_rows(database)
            assert row[0] == "business.machine.added" and row[1] == eid(add) and row[3] is False
        finally:
            database.close()

        net.start("business_data")
        ack = send_until_acked(watch, "cmd.business.machine.add", add)
        assert ack == {"id": add["id"], "status": "done", "reason": None}  # applied once, before the crash
        event = watch.expect(topic_is("business.machine.added", name="vm1"), what="the event after restart")
        assert event.message.sender == "business_data" and event.message.body["event_id"] == eid(add)
        assert event.message.body["location"] == "lobby"
        probe(watch)  # everything business_data published before this answer has arrived
        again = [d for d in watch.drain() if topic_is("business.machine.added")(d)]
        assert again == [], "the event was published twice"
        database = connect(home.database_url)
        try:
            assert [(t, e, sent) for t, e, _, sent in outbox_rows(database)] == [
                ("business.machine.added", eid(add), True)]
        finally:
            database.close()
    finally:
        net.close()


# -- issue 10: an upper bound on prices ---------------------------------------------------

def test_a_price_above_max_price_cad_is_refused_on_both_backends(home, bdb):
    """Issue 10: 999999999999.99 CAD was accepted as a price (an invoice for 7.8 million BTC).
    The versioned policy max_price_cad (1000.00 by default) bounds it: `slots set` above it is
    refused with a reason naming the limit and the command that raises it; at the limit, and
    under a raised limit, it is accepted."""
    now = [T0]
    actor = BusinessData(home, database=bdb, clock=lambda: now[0])
    actor.execute("cmd.business.machine.add", cmd(name="vm1", location=None))

    def slot_set(**kw):
        body = dict(machine="vm1", slot=1, product=None, price_cad=None, relay=None, stock=None) | kw
        return actor.execute("cmd.business.slot.set", cmd(**body))

    def policy_set(value):
        now[0] += 1
        return actor.execute("cmd.business.policy.set", cmd(key="max_price_cad", value=value))

    for price in ("999999999999.99", "1000.01"):
        ack, events = slot_set(product="tv", price_cad=price)
        assert ack["status"] == "refused" and events == [], ack
        assert ack["reason"] == (f"price: {format_cad(parse_cad(price))} CAD is above the limit of 1000.00 CAD "
                                 f"(policy max_price_cad; to allow it: dctrl policy set max_price_cad "
                                 f"{format_cad(parse_cad(price))})")
    assert slots(bdb, "vm1") == [] and policy(bdb)["max_price_cad"] == Decimal("1000.00")  # the default
    ack, _ = slot_set(product="tv", price_cad="1000.00")  # the positive control: at the limit
    assert ack["status"] == "done", ack
    ack, _ = slot_set(price_cad="1500.00")  # a change of an existing slot's price: the same bound
    assert ack["status"] == "refused" and "above the limit of 1000.00 CAD" in ack["reason"]
    assert [s["price_cents"] for s in slots(bdb, "vm1")] == [100000]

    # the limit is a versioned policy like the others, validated
    for value, why in (("0", "must be above 0.00"), ("-5", "negative"), ("1.005", "at most 2 decimals"),
                       ("lots", "not a CAD amount")):
        ack, events = policy_set(value)
        assert ack["status"] == "refused" and why in ack["reason"] and events == [], (value, ack)
    ack, events = policy_set("2000")
    assert ack["status"] == "done" and events[0][1]["key"] == "max_price_cad" and events[0][1]["value"] == "2000.00"
    assert policy(bdb)["max_price_cad"] == Decimal("2000.00")
    ack, _ = slot_set(price_cad="1500.00")
    assert ack["status"] == "done", ack
    assert slot_set(price_cad="2000.01")[0]["status"] == "refused"
    # lowered below a stored price: allowed (BusinessMgr opens no invoice for that slot), and
    # the slot's other fields can still change
    assert policy_set("10.00")[0]["status"] == "done"
    assert slot_set(stock=3)[0]["status"] == "done"
    assert [(s["price_cents"], s["stock"]) for s in slots(bdb, "vm1")] == [(150000, 3)]
    assert [v["value"] for v in policy_versions(bdb, "max_price_cad")] == ["2000.00", "10.00"]


# -- issue 10: control characters in names ----------------------------------------------

def test_control_characters_in_names_are_refused_on_the_bus_with_the_character(home, business, clients):
    """Issue 10: a product or location holding a control or format character (U+202E, a newline,
    an ANSI escape, U+2028) is refused by business_data with a reason naming it, and nothing
    is stored or announced; ordinary spaces (and a no-break space) are fine."""
    watch = clients(home, "admin", prefixes=["business"])
    probe(watch)

    def command(topic, **body):
        return send_until_acked(watch, topic, {"id": os.urandom(16), "expires": int(time.time()) + 60, **body})

    assert command("cmd.business.machine.add", name="vm1", location="lobby")["status"] == "done"
    for product, code in (("cola\u202eeteled", "U+202E"), ("cola\n  9  free   0.00", "U+000A"),
                          ("\x1b[2Jcola", "U+001B"), ("cola\u200bzero", "U+200B"), ("cola\tzero", "U+0009")):
        ack = command("cmd.business.slot.set", machine="vm1", slot=1, product=product, price_cad="3.50",
                      relay=None, stock=None)
        assert ack["status"] == "refused" and ack["reason"] == f"product contains a control character {code}", ack
    for topic, name in (("cmd.business.machine.add", "vm2"), ("cmd.business.machine.set", "vm1")):
        ack = command(topic, name=name, location="hall\u2028B")
        assert ack["status"] == "refused" and ack["reason"] == "location contains a control character U+2028", ack
    ack = command("cmd.business.slot.set", machine="vm1", slot=2, product="Club Mate\u00a00.5 l", price_cad="3.50",
                  relay=None, stock=None)
    assert ack["status"] == "done", ack  # the positive control: spaces are not control characters

    probe(watch)  # everything business_data published before this answer has arrived
    changed = [d.message.body for d in watch.drain() if d.message and d.message.topic == "business.slot.changed"]
    assert [(b["slot"], b["product"]) for b in changed] == [(2, "Club Mate\u00a00.5 l")]
    assert not [d for d in watch.drain() if d.message and d.message.topic == "business.machine.added"
                and d.message.body["name"] == "vm2"]
    database = connect(home.database_url)
    try:
        assert [(s["slot"], s["product"]) for s in slots(database, "vm1")] == [(2, "Club Mate\u00a00.5 l")]
        assert machines(database) == [{"name": "vm1", "location": "lobby", "created": machines(database)[0]["created"]}]
    finally:
        database.close()


def test_names_stored_with_control_characters_are_printed_escaped(home):
    """Issue 10: a name already in the database (an older version let it in) is shown with its
    control characters as \\uXXXX by `dctrl slots list` and `machines list`: it cannot forge a
    row, clear the screen or reverse the line. --json keeps the value (JSON escapes it)."""
    from actors.business_data.models import BusinessMachine

    actor = BusinessData(home, clock=lambda: T0)
    try:
        assert actor.execute("cmd.business.machine.add", cmd(name="vm1", location="lobby"))[0]["status"] == "done"
        ack, _ = actor.execute("cmd.business.slot.set", cmd(machine="vm1", slot=1, product="cola", price_cad="3.50",
                                                            relay=None, stock=None))
        assert ack["status"] == "done", ack
        evil = "cola\u202eeteled\n   9  free         0.00\x1b[2J"
        BusinessSlot.update(product=evil).execute()  # as an older version stored it
        BusinessMachine.update(location="hall\x1b]0;owned\x07").execute()
    finally:
        actor.database.close()
    out = dctrl(home, "slots", "list", "vm1").stdout
    lines = out.splitlines()
    assert len(lines) == 2, out  # the header and one row: no forged row
    assert lines[1].split()[:2] == ["1", "cola\\u202eeteled\\u000a"], lines[1]
    assert "\\u001b[2J" in lines[1] and not any(c in out for c in "\u202e\x1b"), repr(out)
    out = dctrl(home, "machines", "list").stdout
    assert out.splitlines() == ["vm1              hall\\u001b]0;owned\\u0007"], repr(out)
    assert json.loads(dctrl(home, "slots", "list", "vm1", "--json").stdout)[0]["product"] == evil
