"""BusinessData's handlers on the fake runtime (actors/testing.py), on SQLite and PostgreSQL.

What tests/test_business_data.py checks through the real bus (commands from
the CLI, acks, events through the outbox, vends counted), here without
processes: the commands are built by the kit's message builder (schema-checked
as the bus would), the clock is a FakeClock, ``@every`` jobs run when the test
advances it.
"""

from __future__ import annotations

import os

import pytest

from actors.testing import FakeClock, FakeRuntime
from proto.errors import SchemaError
from tests.unit_db import empty, unit_home

# The actor under test and its read queries: one import block (the module moves with issue 11 item 3).
from actors.business_data.actor import BusinessData
from actors.business_data.queries import slots, stock_left
from actors.business_mgr.models import TABLES as SALES_TABLES, SalesInvoice, SalesVend

ACK = "business.ack"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    """One home per database kind for the module; each test empties its database first."""
    with unit_home(request.param, tmp_path_factory.mktemp("bd_unit") / "home", "bd_unit") as h:
        yield h


@pytest.fixture
def bd(home):
    """BusinessData hosted on a fake runtime; ``bd.command(topic, **body)`` sends a command as admin."""
    empty(home.database_url)
    clock = FakeClock()
    actor = BusinessData(home, clock=clock.time)
    rt = FakeRuntime(actor, name="business_data", clock=clock, home=home).start()  # senders' grants checked

    def send(topic, sender="admin", **body):
        body = {"id": os.urandom(16), "expires": int(clock.time()) + 60, **body}
        rt.send(topic, body, sender=sender)
        return body
    rt.command = send
    yield rt
    rt.stop()


def answer(rt, body) -> dict:
    (ack,) = rt.bodies(ACK, id=body["id"]) or [None]
    return ack


def test_a_command_is_applied_announced_then_acknowledged(bd):
    add = bd.command("cmd.business.machine.add", name="vm1", location="front door")
    topics = bd.topics()
    assert topics == ["business.machine.added", ACK]  # the events (from the outbox) before the answer
    assert answer(bd, add) == {"id": add["id"], "status": "done", "reason": None}
    event = bd.last("business.machine.added")
    assert (event["name"], event["location"], event["created"]) == ("vm1", "front door", int(bd.clock.time()))
    assert len(event["event_id"]) == 64
    bd.take()
    bd.deliver(bd.build("cmd.business.machine.add", add, sender="admin"))  # a retry: the same answer, no event
    assert bd.topics() == [ACK] and bd.last(ACK) == {"id": add["id"], "status": "done", "reason": None}
    again = bd.command("cmd.business.machine.add", name="vm1", location=None)
    assert answer(bd, again)["status"] == "refused" and "already exists" in answer(bd, again)["reason"]


def test_slots_and_policies_through_their_commands(bd):
    bd.command("cmd.business.machine.add", name="vm1", location=None)
    bd.take()
    s = bd.command("cmd.business.slot.set", machine="vm1", slot=1, product="Club-Mate", price_cad="3.50",
                   relay="gpio:17", stock=12)
    assert answer(bd, s)["status"] == "done"
    changed = bd.last("business.slot.changed")
    assert {k: changed[k] for k in ("machine", "slot", "product", "price_cents", "relay", "stock")} == {
        "machine": "vm1", "slot": 1, "product": "Club-Mate", "price_cents": 350, "relay": "gpio:17", "stock": 12}
    for body, why in (({"price_cad": "3.505"}, "at most 2 decimals"),
                      ({"product": "Mate\u202e"}, "control character U+202E"),
                      ({"machine": "vm9", "product": "x", "price_cad": "1"}, "unknown machine vm9")):
        refused = bd.command("cmd.business.slot.set", **({"machine": "vm1", "slot": 1} | body))
        assert answer(bd, refused)["status"] == "refused" and why in answer(bd, refused)["reason"], body
    p = bd.command("cmd.business.policy.set", key="zero_conf_limit_cad", value="15.5")
    assert answer(bd, p)["status"] == "done"
    assert {k: bd.last("business.policy.changed")[k] for k in ("key", "value")} == {
        "key": "zero_conf_limit_cad", "value": "15.50"}
    assert [x["product"] for x in slots(bd.actor.database, "vm1")] == ["Club-Mate"]


def test_an_expired_command_is_refused_by_the_clock(bd):
    body = {"id": os.urandom(16), "expires": int(bd.clock.time()) + 5, "name": "vm1", "location": None}
    bd.advance(6)
    bd.send("cmd.business.machine.add", body, sender="admin")
    assert answer(bd, body) == {"id": body["id"], "status": "refused", "reason": "command expired"}


def test_events_wait_in_the_outbox_while_nothing_can_be_sent(bd):
    bd.connected = False  # no broker: the outbox keeps its rows (the answer is published: a PUB drops it)
    add = bd.command("cmd.business.machine.add", name="vm1", location=None)
    assert bd.topics() == [ACK] and answer(bd, add)["status"] == "done"
    assert bd.actor.outbox.pending() == 1
    bd.advance(3)
    assert bd.topics() == [ACK]
    bd.connected = True
    bd.advance(1)  # the flush job
    assert bd.topics() == [ACK, "business.machine.added"] and bd.actor.outbox.pending() == 0


def test_each_vend_recorded_by_business_mgr_is_counted_once(bd):
    database = bd.actor.database
    with database.bind_ctx(SALES_TABLES):
        database.create_tables(SALES_TABLES)
    bd.command("cmd.business.machine.add", name="vm1", location=None)
    bd.command("cmd.business.slot.set", machine="vm1", slot=1, product="Chips", price_cad="1.00", stock=2)
    bd.take()
    now = int(bd.clock.time())

    def sell():
        vend = os.urandom(16).hex()
        with database.bind_ctx([SalesInvoice, SalesVend]):
            inv = SalesInvoice.create(mode="invoice", machine="vm1", slot=1, product="Chips", price_cents=100,
                                      address="bcrt1qx", state="vended", created=now, expires=now + 900)
            SalesVend.create(id=vend, invoice=inv, item=0, machine="vm1", slot=1, state="vended", created=now,
                             expires=now + 30, deadline=now + 300, acked_at=now + 1)
        return vend
    bd.clock.advance(2)  # (sold after the stock was set)
    first = sell()
    bd.advance(1)  # count_vends, then flush
    assert [(e["vend"], e["stock"]) for e in bd.bodies("business.slot.changed")] == [(first, 1)]
    bd.advance(5)
    assert len(bd.bodies("business.slot.changed")) == 1  # counted once
    second = sell()
    bd.advance(1)
    assert [e["stock"] for e in bd.bodies("business.slot.changed", vend=second)] == [0]
    assert stock_left(database, "vm1", 1) == 0


def test_a_command_the_bus_would_refuse_never_reaches_the_handler(bd):
    for bad in ({"price_cad": 3.5}, {"slot": 256}, {"relay": "gpio:x"}, {"colour": "red"}):
        with pytest.raises(SchemaError):
            bd.command("cmd.business.slot.set", **({"machine": "vm1", "slot": 1, "product": "x"} | bad))
    assert bd.published == []
