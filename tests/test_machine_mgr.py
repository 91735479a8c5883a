"""MachineMgr, the vend executor: real broker and Vault processes, real keys and tokens.

The agent's MachineMgr runs in-process in a Runtime thread as ``vm1`` with
gpiozero ``MockFactory`` pins (pin states and their times are recorded), and a
BusClient as ``business_mgr`` sends vend commands and collects the acks. The
one stand-in is a fake I2C bus object (there is no I2C hardware here).
"""

import dataclasses
import json
import os
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from actors.runtime import Runtime
from keys.identity import IdentityKeys
from machine_agent.journal import INTERRUPTED
from machine_agent.mgr import UNSYNCED, MachineMgr, Slot
from machine_agent.relays import I2CRelay
from proto import token as tokens
from proto import wire
from tests.harness import Network, new_home, topic_is, wait_for

SLOTS = {
    1: Slot("gpio:17", pulse_ms=120),                     # active-high
    2: Slot("gpio:27", active_high=False, pulse_ms=80),   # active-low board
    3: Slot("gpio:22", pulse_ms=100),
}
PIN = {1: 17, 2: 27, 3: 22}
ACK = "machine.vm1.vend.ack"
CMD = "cmd.machine.vm1.vend"
CMD_VM1 = b"cmd.machine.vm1."  # vm1's grant


# -- fixtures: one broker + Vault for the module, a fresh MachineMgr per test ----------

@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return new_home(tmp_path_factory.mktemp("vending") / "home")


@pytest.fixture(scope="module")
def network(home):
    net = Network(home).start_healthy("broker", "vault")
    yield net
    net.close()


class Agent:
    """vm1's MachineMgr in a Runtime thread, with MockFactory pins."""

    def __init__(self, home, state_dir, slots=SLOTS, **kw):
        self.factory = MockFactory()
        self.journal = state_dir / "commands.jsonl"
        self.mgr = MachineMgr(slots, journal_path=self.journal, pin_factory=self.factory, **kw)
        for n, s in slots.items():
            if s.relay.startswith("gpio:"):
                self.factory.pin(int(s.relay[5:])).clear_states()  # forget the power-on transition
        settings = dataclasses.replace(home.bus_settings("vm1"), journal_file=state_dir / "replay.json")
        self.runtime = Runtime(self.mgr, settings)
        self.thread = threading.Thread(target=self.runtime.run, name="vm1", daemon=True)
        self.thread.start()
        wait_for(self.runtime.proxy.token_valid, what="vm1's token")

    def pin(self, slot):
        return self.factory.pin(PIN[slot])

    def pulses(self, slot, active_high=True):
        """(start, end) monotonic times of each active period, from the MockPin's state log."""
        pin = self.pin(slot)
        states = list(pin.states)
        t, at = pin._last_change, []
        for s in reversed(states):  # timestamps are deltas from the previous change
            at.append(t)
            t -= s.timestamp
        at.reverse()
        out, start = [], None
        for s, when in zip(states, at):
            active = bool(s.state) == active_high
            if active and start is None:
                start = when
            elif not active and start is not None:
                out.append((start, when))
                start = None
        assert start is None, "a relay was left on"
        return out

    def stop(self):
        self.runtime.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def agent(home, network, tmp_path):
    made = []

    def start(state_dir=tmp_path, **kw):
        a = Agent(home, state_dir, **kw)
        made.append(a)
        return a
    yield start
    for a in made:
        if a.thread.is_alive():
            a.stop()


def vend(slot=1, invoice="inv-1", pulse_ms=None, expires_in=30, cid=None):
    return {"id": cid or os.urandom(16), "expires": int(time.time()) + expires_in, "slot": slot,
            "invoice": invoice, "pulse_ms": pulse_ms}


def ack_for(cid):
    return lambda d: d.message is not None and d.message.topic == ACK and d.message.body["id"] == cid


def ready(bm):
    """Both ends are subscribed: probe (unknown slot) until an ack comes back."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        cmd = vend(slot=200, invoice="probe")
        bm.publish(CMD, cmd)
        try:
            return bm.expect(ack_for(cmd["id"]), timeout=0.5, what="a probe ack")
        except AssertionError:
            continue
    raise AssertionError("vm1 never answered a probe")


def roundtrip(bm):
    """A later command answered: everything sent before it has been handled."""
    cmd = vend(slot=200, invoice="marker")
    bm.publish(CMD, cmd)
    bm.expect(ack_for(cmd["id"]), what="the marker ack")


def business_mgr(clients, home):
    return clients(home, "business_mgr", prefixes=[ACK])


# -- vending --------------------------------------------------------------------------

def test_vend_pulses_the_slot_once_for_the_configured_time(home, agent, clients):
    a = agent()
    bm = business_mgr(clients, home)
    ready(bm)
    c1, c2, c3 = vend(1, "inv-1"), vend(2, "inv-2"), vend(3, "inv-3", pulse_ms=60)
    for c in (c1, c2, c3):
        bm.publish(CMD, c)
    acks = [bm.expect(ack_for(c["id"])).message.body for c in (c1, c2, c3)]
    assert acks[0] == {"id": c1["id"], "status": "vended", "slot": 1, "invoice": "inv-1", "reason": None,
                       "pulsed_ms": 120, "dropped": None}  # no drop sensor configured
    assert [(x["status"], x["slot"], x["pulsed_ms"]) for x in acks] == [
        ("vended", 1, 120), ("vended", 2, 80), ("vended", 3, 60)]  # slot 3: the command's pulse_ms
    for slot, ms, high in ((1, 120, True), (2, 80, False), (3, 60, True)):
        (p,) = a.pulses(slot, active_high=high)
        assert ms / 1000 - 0.005 <= p[1] - p[0] <= ms / 1000 + 0.1, (slot, p[1] - p[0])
    # The active-low relay idles high and is pulled low for the pulse; the state log says so.
    assert [bool(s.state) for s in a.pin(2).states] == [True, False, True]
    a.pin(1).assert_states_and_times([(0.0, False), (a.pin(1).states[1].timestamp, True), (0.12, False)])
    # The journal holds every step, in order, for each command.
    events = [json.loads(x) for x in a.journal.read_text().splitlines()]
    assert [e["event"] for e in events if e["id"] == c1["id"].hex()] == ["received", "actuating", "done"]


def test_retried_command_gets_the_same_ack_and_no_second_pulse(home, agent, clients):
    a = agent()
    bm = business_mgr(clients, home)
    ready(bm)
    cmd = vend(1)
    bm.publish(CMD, cmd)
    first = bm.expect(ack_for(cmd["id"])).message.body
    bm.publish(CMD, cmd)  # a retry: a new message (fresh seq), the same command id
    second = bm.expect(ack_for(cmd["id"])).message.body
    assert first == second and first["status"] == "vended"
    assert len(a.pulses(1)) == 1


def test_expired_unknown_slot_and_unsynchronised_clock_are_refused(home, agent, clients, tmp_path):
    a = agent(state_dir=tmp_path)
    bm = business_mgr(clients, home)
    ready(bm)
    old, unknown = vend(1, expires_in=-1), vend(9)
    bm.publish(CMD, old)
    bm.publish(CMD, unknown)
    assert bm.expect(ack_for(old["id"])).message.body == {
        "id": old["id"], "status": "refused", "slot": 1, "invoice": "inv-1", "reason": "expired", "pulsed_ms": None,
        "dropped": None}
    body = bm.expect(ack_for(unknown["id"])).message.body
    assert (body["status"], body["reason"]) == ("refused", "unknown slot 9")
    assert a.pulses(1) == []
    a.stop()
    # An agent whose clock is not synchronised refuses to act rather than guess.
    (tmp_path / "unsynced").mkdir()
    b = agent(state_dir=tmp_path / "unsynced", trusted_clock=lambda: None)
    cmd = vend(1)
    deadline = time.monotonic() + 15
    while True:  # (no probe: every command is refused the same way) retried until acked
        bm.publish(CMD, cmd)
        try:
            body = bm.expect(ack_for(cmd["id"]), timeout=0.5).message.body
            break
        except AssertionError:
            assert time.monotonic() < deadline, "no answer from the unsynchronised agent"
    assert (body["status"], body["reason"]) == ("refused", UNSYNCED)
    assert b.pulses(1) == []


def test_only_business_mgr_can_command_the_machine(home, agent, clients):
    a = agent()
    bm = business_mgr(clients, home)
    watch = clients(home, "admin", prefixes=["broker.denied", "error.vm1"])
    ready(bm)
    # admin is not granted cmd.machine: the broker drops the command and says so.
    admin = clients(home, "admin")
    cmd = vend(1)
    admin.publish(CMD, cmd)
    d = watch.expect(lambda d: d.message is not None and d.message.topic == "broker.denied"
                     and d.message.body["direction"] == "publish" and d.message.body["identity"].startswith("admin")
                     and d.message.body["topic"] == CMD, what="broker.denied for admin's vend")
    assert d.message.body["code"] == "not_granted"
    # business_mgr's key with a token granting only cmd.chain: the broker passes it (the
    # policy grants business_mgr cmd.machine), vm1's runtime refuses it.
    keys = IdentityKeys.load(home.key_file("business_mgr"))
    tok = tokens.issue(home.vault_signing_key(), identity="business_mgr", role="actor", key=keys.sign_public,
                       key_version=keys.version, publish=(b"cmd.chain.",), subscribe=(), issued_at=int(time.time()),
                       lifetime=600)
    forged_cmd = vend(1)
    proxy = bm.runtime.proxy
    proxy.seq += 1000
    bm.send_raw(wire.seal(proxy.signing_key, CMD,
                          wire.pack_payload("business_mgr", proxy.boot, proxy.seq, tok, forged_cmd)))
    d = watch.expect(topic_is("error.vm1", kind="rejected", code="not_granted"), what="vm1 refusing the forged token")
    assert d.message.body["sender"] == "business_mgr"
    roundtrip(bm)
    assert a.pulses(1) == []
    assert not [h for h in bm.drain() if h.message and h.message.body["id"] in (cmd["id"], forged_cmd["id"])]


def test_a_command_for_another_machine_never_reaches_vm1(home, network, clients):
    """The broker, not vm1's own filter, keeps other machines' commands away: a client with
    vm1's key that asks for all of ``cmd.machine`` (and for ``cmd``, and for everything) has
    each request narrowed to its grant ``cmd.machine.vm1``, so business_mgr's commands for vm2
    and vm10 are never delivered to it, while its own are; an admin (granted everything)
    hears all of them."""
    bm = clients(home, "business_mgr")
    nosy = clients(home, "vm1", prefixes=["cmd.machine", "cmd", ""])
    watch = clients(home, "admin", prefixes=["cmd.machine"])

    def command(topic, cmd):
        return lambda d: (d.frames[0] == wire.topic_frame(topic) and d.message is not None
                          and d.message.body["id"] == cmd["id"])

    def probe():  # positive control, and both subscriptions live: vm1's own command reaches both
        cmd = vend(slot=200, invoice="probe")
        bm.publish(CMD, cmd)
        try:
            nosy.expect(command(CMD, cmd), timeout=0.5)
            watch.expect(command(CMD, cmd), timeout=0.5)
            return True
        except AssertionError:
            return False
    wait_for(probe, interval=0, what="vm1's own command heard by vm1 and by the admin")

    others = {f"cmd.machine.{m}.vend": vend(1, f"inv-{m}") for m in ("vm2", "vm10")}
    for topic, cmd in others.items():
        bm.publish(topic, cmd)
    marker = vend(slot=200, invoice="marker")
    bm.publish(CMD, marker)  # after them, from the same publisher: the broker handles it after them
    nosy.expect(command(CMD, marker), what="vm1's own command sent after the others")
    for topic, cmd in others.items():  # they went through the broker: the admin hears them
        watch.expect(command(topic, cmd), what=f"the admin hearing {topic}")
    leaked = sorted({bytes(h.frames[0]) for h in nosy.drain()
                     if h.frames and h.frames[0].startswith(b"cmd.") and not h.frames[0].startswith(CMD_VM1)})
    assert leaked == [], f"the broker delivered other machines' commands to vm1: {leaked}"


def test_replayed_frames_do_not_dispense_again(home, agent, clients):
    a = agent()
    bm = business_mgr(clients, home)
    watch = clients(home, "admin", prefixes=["error.vm1"])
    ready(bm)
    cmd = vend(1)
    sealed = []
    done = threading.Event()

    def seal():  # in bm's loop thread: the proxy's sequence is not shared across threads
        sealed.append(bm.runtime.proxy.seal(CMD, cmd))
        done.set()
    bm.runtime.call_soon(seal)
    wait_for(done.is_set, what="sealed frames")
    bm.send_raw(sealed[0])
    assert bm.expect(ack_for(cmd["id"])).message.body["status"] == "vended"
    bm.send_raw(sealed[0])  # the exact frames again
    watch.expect(topic_is("error.vm1", kind="rejected", code="replayed"), what="vm1 refusing the replay")
    roundtrip(bm)
    assert len(a.pulses(1)) == 1
    assert a.runtime.counters["rejected"] >= 1


def test_two_commands_dispense_one_at_a_time(home, agent, clients):
    a = agent()
    bm = business_mgr(clients, home)
    ready(bm)
    first, second = vend(1, pulse_ms=300), vend(3, pulse_ms=300)
    bm.publish(CMD, first)
    bm.publish(CMD, second)
    for c in (first, second):
        assert bm.expect(ack_for(c["id"])).message.body["status"] == "vended"
    (p1,), (p3,) = a.pulses(1), a.pulses(3)
    assert p1[1] <= p3[0], f"slot 3 turned on {p1[1] - p3[0]:.3f} s before slot 1 turned off"
    assert p1[1] - p1[0] >= 0.295 and p3[1] - p3[0] >= 0.295


def interrupted_journal(path):
    """Write the agent's journal as a kill -9 leaves it while slot 1's relay was on, after an
    earlier vend on slot 2 had finished (and a torn last line); returns (cut, finished, the
    finished command's ack)."""
    cut, finished = os.urandom(16), os.urandom(16)
    old_ack = {"id": finished.hex(), "status": "vended", "slot": 2, "invoice": "inv-old", "reason": None,
               "pulsed_ms": 80}
    lines = [  # as left by a kill -9 while slot 1's relay was on, after an earlier vend
        {"id": finished.hex(), "event": "received", "t": 1, "slot": 2, "invoice": "inv-old", "pulse_ms": None},
        {"id": finished.hex(), "event": "actuating", "t": 1, "slot": 2, "invoice": "inv-old", "pulse_ms": 80},
        {"id": finished.hex(), "event": "done", "t": 1, "ack": old_ack},
        {"id": cut.hex(), "event": "received", "t": 2, "slot": 1, "invoice": "inv-cut", "pulse_ms": None},
        {"id": cut.hex(), "event": "actuating", "t": 2, "slot": 1, "invoice": "inv-cut", "pulse_ms": 120},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"id": "torn')
    return cut, finished, old_ack


def test_journal_recovery_never_pulses_an_interrupted_command(home, agent, clients, tmp_path):
    cut, finished, old_ack = interrupted_journal(tmp_path / "commands.jsonl")
    a = agent()
    assert a.mgr.health()[0] == "degraded"
    bm = business_mgr(clients, home)
    ready(bm)
    bm.publish(CMD, vend(1, "inv-cut", cid=cut))
    body = bm.expect(ack_for(cut)).message.body
    assert body == {"id": cut, "status": "failed", "slot": 1, "invoice": "inv-cut", "reason": INTERRUPTED,
                    "pulsed_ms": None, "dropped": None}
    bm.publish(CMD, vend(2, "inv-old", cid=finished))
    assert bm.expect(ack_for(finished)).message.body == {**old_ack, "id": finished}
    assert a.pulses(1) == [] and a.pulses(2, active_high=False) == []
    a.stop()
    # After a restart the answers are the same, and still nothing is pulsed.
    b = agent()
    ready(bm)
    for cid, slot in ((cut, 1), (finished, 2)):
        bm.publish(CMD, vend(slot, cid=cid))
    assert bm.expect(ack_for(cut)).message.body["reason"] == INTERRUPTED
    assert bm.expect(ack_for(finished)).message.body["status"] == "vended"
    assert b.pulses(1) == [] and b.pulses(2, active_high=False) == []
    assert b.mgr.health()[0] == "ok"  # closed as failed in the journal by the first run


# -- the I2C relay --------------------------------------------------------------------

class FakeBus:
    """Records writes to an 8-bit port, like an smbus2.SMBus on a PCF8574."""

    def __init__(self, port=0xFF):
        self.port, self.writes = {0x20: port}, []

    def read_byte(self, addr):
        return self.port[addr]

    def write_byte(self, addr, value):
        assert 0 <= value <= 0xFF
        self.writes.append((addr, value))
        self.port[addr] = value


def test_i2c_relay_keeps_the_other_bits():
    bus = FakeBus(port=0b1010_1101)
    low = I2CRelay(bus, 0x20, 3)          # active-low (the default for these boards): off is high
    assert bus.writes == [(0x20, 0b1010_1101)]
    low.pulse(20)
    assert bus.writes[1:] == [(0x20, 0b1010_0101), (0x20, 0b1010_1101)]
    high = I2CRelay(bus, 0x20, 6, active_high=True)  # off is low: bit 6 cleared at start
    high.pulse(10)
    assert bus.writes[3:] == [(0x20, 0b1010_1101), (0x20, 0b1110_1101), (0x20, 0b1010_1101)]


def test_relay_is_turned_off_even_if_the_pulse_is_interrupted():
    bus = FakeBus()
    relay = I2CRelay(bus, 0x20, 0)
    import machine_agent.relays as relays

    real_sleep = relays.time.sleep
    relays.time.sleep = lambda s: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            relay.pulse(100)
    finally:
        relays.time.sleep = real_sleep
    assert bus.writes[-2:] == [(0x20, 0xFE), (0x20, 0xFF)] and bus.port[0x20] == 0xFF
