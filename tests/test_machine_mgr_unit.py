"""MachineMgr's handler on the fake runtime (actors/testing.py): no broker, no Vault, no process.

The same behaviour as tests/test_machine_mgr.py checks over the real bus, in
about a second: gpiozero MockFactory pins, the real command journal on disk,
the vend worker thread; commands built by the kit's message builder (so only
bodies the bus would accept), the clock a FakeClock the agent trusts.
"""

from __future__ import annotations

import json
import os

import pytest
from gpiozero.pins.mock import MockFactory

from actors.testing import FakeClock, FakeRuntime, HandlerFailed
from machine_agent.journal import INTERRUPTED
from machine_agent.mgr import UNSYNCED, MachineMgr, Slot
from proto.errors import SchemaError
from tests.contracts import AgentAdapter, ExactlyOnceContract
from tests.test_machine_mgr import interrupted_journal

SLOTS = {
    1: Slot("gpio:17", pulse_ms=20),                     # active-high
    2: Slot("gpio:27", active_high=False, pulse_ms=15),   # active-low board
    3: Slot("gpio:22", pulse_ms=10),
}
PIN = {1: 17, 2: 27, 3: 22}
ACTIVE_HIGH = {1: True, 2: False, 3: True}
CMD, ACK = "cmd.machine.vm1.vend", "machine.vm1.vend.ack"


class Machine:
    """vm1's MachineMgr on a FakeRuntime, with MockFactory pins and a journal in ``state``."""

    def __init__(self, state, clock, trusted_clock=None, factory=None):
        self.clock = clock
        self.factory = factory or MockFactory()
        self.journal = state / "commands.jsonl"
        self.mgr = MachineMgr(SLOTS, journal_path=self.journal, pin_factory=self.factory,
                              trusted_clock=trusted_clock or clock.time)
        if factory is None:  # new pins: forget the power-on transition (a restart keeps the history)
            for n in SLOTS:
                self.factory.pin(PIN[n]).clear_states()
        self.rt = FakeRuntime(self.mgr, name="vm1", clock=clock).start()

    def command(self, slot=1, invoice="inv-1", expires_in=30, pulse_ms=None, cid=None) -> dict:
        return {"id": cid or os.urandom(16), "expires": int(self.clock.time()) + expires_in, "slot": slot,
                "invoice": invoice, "pulse_ms": pulse_ms}

    def send(self, body):
        return self.rt.send(CMD, body, sender="business_mgr")

    def acks(self, cid) -> list[dict]:
        return self.rt.bodies(ACK, id=cid)

    def ack(self, cid, n=1) -> dict:
        """The ``n``-th ack for ``cid`` (waiting for the vend worker)."""
        return self.rt.wait_for(lambda: len(self.acks(cid)) >= n and self.acks(cid)[n - 1], what=f"ack {n}")

    def pulses(self, slot) -> list[float]:
        """Durations (s) of each active period of the slot's relay pin."""
        pin = self.factory.pin(PIN[slot])
        out, start, t = [], None, 0.0
        for s in pin.states:
            t += s.timestamp
            active = bool(s.state) == ACTIVE_HIGH[slot]
            if active and start is None:
                start = t
            elif not active and start is not None:
                out.append(t - start)
                start = None
        assert start is None, "a relay was left on"
        return out

    def stop(self):
        self.rt.stop()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def machines(tmp_path, clock):
    made = []

    def start(**kw):
        m = Machine(tmp_path, clock, **kw)
        made.append(m)
        return m
    yield start
    for m in made:
        if m.rt.started:
            m.stop()


def test_vend_pulses_the_slot_once_for_the_configured_time(machines):
    m = machines()
    c1, c2, c3 = m.command(1, "inv-1"), m.command(2, "inv-2"), m.command(3, "inv-3", pulse_ms=25)
    for c in (c1, c2, c3):
        m.send(c)
    acks = [m.ack(c["id"]) for c in (c1, c2, c3)]
    assert acks[0] == {"id": c1["id"], "status": "vended", "slot": 1, "invoice": "inv-1", "reason": None,
                       "pulsed_ms": 20, "dropped": None}
    assert [(a["status"], a["slot"], a["pulsed_ms"]) for a in acks] == [
        ("vended", 1, 20), ("vended", 2, 15), ("vended", 3, 25)]
    for slot, ms in ((1, 20), (2, 15), (3, 25)):
        (p,) = m.pulses(slot)
        assert ms / 1000 - 0.005 <= p <= ms / 1000 + 0.1, (slot, p)
    assert [bool(s.state) for s in m.factory.pin(27).states] == [True, False, True]  # active-low: pulled low
    events = [json.loads(x) for x in m.journal.read_text().splitlines()]
    assert [e["event"] for e in events if e["id"] == c1["id"].hex()] == ["received", "actuating", "done"]


def test_retried_command_gets_the_same_ack_and_no_second_pulse(machines):
    m = machines()
    cmd = m.command(1)
    msg = m.send(cmd)
    first = m.ack(cmd["id"])
    m.send(cmd)          # a retry: a new message, the same id
    m.rt.deliver(msg)    # (the fake runtime has no replay window: the journal alone must hold)
    assert m.ack(cmd["id"], 2) == first == m.ack(cmd["id"], 3) and first["status"] == "vended"
    assert len(m.pulses(1)) == 1


def test_a_retry_while_dispensing_is_answered_by_the_one_ack(machines):
    m = machines()
    cmd = m.command(1, pulse_ms=60)
    m.send(cmd)
    m.send(cmd)  # still in flight: no second queue entry, no second ack
    m.ack(cmd["id"])
    m.rt.wait_for(lambda: not m.mgr.inflight, what="the worker done")
    assert len(m.acks(cmd["id"])) == 1 and len(m.pulses(1)) == 1


def test_expired_unknown_slot_and_unsynchronised_clock_are_refused(machines, tmp_path, clock):
    m = machines()
    old, unknown = m.command(1, expires_in=-1), m.command(9)
    m.send(old)
    m.send(unknown)
    assert m.acks(old["id"]) == [{"id": old["id"], "status": "refused", "slot": 1, "invoice": "inv-1",
                                  "reason": "expired", "pulsed_ms": None, "dropped": None}]
    assert [(a["status"], a["reason"]) for a in m.acks(unknown["id"])] == [("refused", "unknown slot 9")]
    assert m.pulses(1) == []
    m.stop()
    # Expiry is judged by the trusted clock, which only the test moves here.
    (tmp_path / "later").mkdir()
    n = Machine(tmp_path / "later", clock)
    cmd = n.command(1, expires_in=5)
    clock.advance(6)
    n.send(cmd)
    assert n.acks(cmd["id"])[0]["reason"] == "expired" and n.pulses(1) == []
    n.stop()
    # An agent whose clock is not synchronised refuses to act rather than guess, and journals
    # nothing final: the same command is judged again once the clock is back.
    (tmp_path / "unsynced").mkdir()
    synced = [False]
    u = Machine(tmp_path / "unsynced", clock, trusted_clock=lambda: clock.time() if synced[0] else None)
    cmd = u.command(1)
    u.send(cmd)
    assert [(a["status"], a["reason"]) for a in u.acks(cmd["id"])] == [("refused", UNSYNCED)]
    synced[0] = True
    u.send(cmd)
    assert u.ack(cmd["id"], 2)["status"] == "vended" and len(u.pulses(1)) == 1
    u.stop()


def test_two_commands_dispense_one_at_a_time(machines):
    m = machines()
    first, second = m.command(1, pulse_ms=40), m.command(3, pulse_ms=40)
    m.send(first)
    m.send(second)
    for c in (first, second):
        assert m.ack(c["id"])["status"] == "vended"
    pin1, pin3 = m.factory.pin(17), m.factory.pin(22)
    # each pin's log is relative to its own clear: compare the absolute change times instead
    off1 = pin1._last_change
    on3 = pin3._last_change - pin3.states[-1].timestamp
    assert off1 <= on3, f"slot 3 turned on {off1 - on3:.3f} s before slot 1 turned off"


def test_journal_recovery_never_pulses_an_interrupted_command(machines, tmp_path):
    cut, finished, old_ack = interrupted_journal(tmp_path / "commands.jsonl")
    m = machines()
    assert m.mgr.health()[0] == "degraded"
    interrupted = {"id": cut, "status": "failed", "slot": 1, "invoice": "inv-cut", "reason": INTERRUPTED,
                   "pulsed_ms": None, "dropped": None}
    assert m.acks(cut) == [interrupted]  # closed at setup, before any retry
    m.send(m.command(1, "inv-cut", cid=cut))
    assert m.ack(cut, 2) == interrupted
    m.send(m.command(2, "inv-old", cid=finished))
    assert m.ack(finished) == {**old_ack, "id": finished}
    assert m.pulses(1) == [] and m.pulses(2) == []
    m.stop()
    b = machines()  # restarted: the same answers, still nothing pulsed
    for cid, slot in ((cut, 1), (finished, 2)):
        b.send(b.command(slot, cid=cid))
    assert b.ack(cut)["reason"] == INTERRUPTED and b.ack(finished)["status"] == "vended"
    assert b.pulses(1) == [] and b.pulses(2) == []
    assert b.mgr.health()[0] == "ok"


def test_the_builder_refuses_what_the_bus_would_refuse(machines):
    m = machines()
    with pytest.raises(SchemaError):
        m.send({**m.command(1), "pulse_ms": 5})  # below the schema's minimum on-time
    with pytest.raises(SchemaError):
        m.send({k: v for k, v in m.command(1).items() if k != "expires"})
    with pytest.raises(SchemaError):
        m.send({**m.command(1), "id": "not bytes"})
    assert m.rt.published == [] and m.pulses(1) == []


def test_an_ack_the_schema_refuses_fails_the_test(machines, monkeypatch):
    m = machines()
    monkeypatch.setattr(MachineMgr, "_ack", staticmethod(lambda cid, status, slot, invoice, *a, **k: {
        "id": cid, "status": "maybe", "slot": slot, "invoice": invoice}))
    with pytest.raises(HandlerFailed, match="SchemaError|status"):
        m.send(m.command(9))


# -- the exactly-once contract (tests/contracts.py) on the fake runtime ---------------------

class FakeAgent(AgentAdapter):
    def __init__(self, tmp_path):
        self.tmp_path, self.clock = tmp_path, FakeClock()
        self.factory = MockFactory()  # the machine's pins live across the agent's restarts
        self.machine = Machine(tmp_path, self.clock, factory=self.factory)
        self.last = None
        self.seen = 0

    def now(self):
        return int(self.clock.time())

    def send(self, command):
        self.last = self.machine.send(command)

    def replay(self):
        self.machine.rt.deliver(self.last)

    def ack(self, command_id):
        rt = self.machine.rt
        acks = rt.wait_for(lambda: [(i, b) for i, (t, b) in enumerate(rt.published)
                                    if i >= self.seen and t == ACK and b["id"] == command_id],
                           what="an ack")
        self.seen = acks[0][0] + 1
        return acks[0][1]

    def restart(self):
        self.machine.stop()
        self.machine = Machine(self.tmp_path, self.clock, factory=self.factory)
        self.seen = 0

    def pulses(self, slot):
        return len(self.machine.pulses(slot))


class TestExactlyOnceOnTheFakeRuntime(ExactlyOnceContract):
    @pytest.fixture
    def machine(self, tmp_path):
        agent = FakeAgent(tmp_path)
        yield agent
        agent.machine.stop()
