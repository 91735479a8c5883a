"""The test kit itself (actors/testing.py): the fake runtime and the message builder."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from actors.dispatch import HandlerError
from actors.runtime import Actor, every, on
from actors.testing import FakeClock, FakeRuntime, HandlerFailed, Messages
from proto.errors import DecodeError, SchemaError, UnknownTopic
from tests.harness import ROOT


class Clocked(Actor):
    role = "test"

    def __init__(self, clock):
        self.clock, self.log = clock, []

    def setup(self):
        self.log.append("setup")
        self.runtime.call_later(2.5, self.later, "x")

    def later(self, arg):
        self.log.append(("later", arg, self.clock.monotonic()))

    @every(1)
    def tick(self):
        self.log.append(("tick", self.clock.monotonic()))

    @on("debug.kit", blocking=True)
    def slow(self, msg):
        self.log.append(("slow", msg.body["n"]))

    @on("debug.kit.fast")
    def fast(self, msg):
        self.log.append(("fast", msg.body["n"]))
        self.publish("debug.kit.answer", {"n": msg.body["n"], "raw": b"\x00"})


def test_time_moves_only_when_advanced_and_jobs_run_in_order():
    clock = FakeClock()
    a = Clocked(clock)
    rt = FakeRuntime(a, name="admin", clock=clock).start()
    t0 = clock.monotonic()
    assert a.log == ["setup"]
    rt.advance(3)
    assert [(e[0], e[-1] - t0) if e != "setup" else e for e in a.log] == [
        "setup", ("tick", 1.0), ("tick", 2.0), ("later", 2.5), ("tick", 3.0)]
    assert clock.monotonic() - t0 == 3 and clock.time() - 1_800_000_000 == 3


def test_blocking_handlers_inline_or_on_the_pool_and_what_is_published():
    clock = FakeClock()
    a = Clocked(clock)
    rt = FakeRuntime(a, name="admin", clock=clock, blocking="pool").start()
    rt.send("debug.kit.fast", {"n": 1}, sender="vm1")  # both handlers match: the blocking one waits
    assert a.log[1:] == [("fast", 1)] and len(rt.pool) == 1
    assert rt.run_pool() == 1 and a.log[-1] == ("slow", 1)
    assert rt.published == [("debug.kit.answer", {"n": 1, "raw": b"\x00"})]
    assert rt.last("debug.kit.answer", n=1)["raw"] == b"\x00"
    inline = FakeRuntime(Clocked(clock), name="admin", clock=clock).start()
    inline.send("debug.kit.slow", {"n": 2}, sender="vm1")
    assert inline.actor.log[-1] == ("slow", 2)


def test_publish_from_another_thread_waits_for_the_loop_and_bodies_are_checked():
    rt = FakeRuntime(Clocked(FakeClock()), name="admin").start()
    t = threading.Thread(target=rt.publish, args=("debug.kit.x", {"n": 1}))
    t.start()
    t.join()
    assert rt.published == []  # queued for the loop, as the Runtime does
    rt.wait_for(lambda: rt.published, what="the publish")
    with pytest.raises(SchemaError, match="floats"):
        rt.publish("debug.kit.x", {"n": 1.5})
    with pytest.raises(UnknownTopic):
        rt.publish("nosuch.topic", {})
    with pytest.raises(SchemaError):
        rt.publish("health.admin", {"name": "admin"})  # required keys missing


def test_the_builder_refuses_what_the_bus_refuses_and_decodes_like_a_receiver():
    m = Messages()
    msg = m.build("machine.vm1.button", {"slot": 1, "pressed_at": 5}, sender="vm1")
    assert (msg.topic, msg.sender, msg.body, msg.seq) == ("machine.vm1.button", "vm1", {"slot": 1, "pressed_at": 5}, 1)
    assert m.build("machine.vm1.button", {"slot": 2, "pressed_at": 5}, sender="vm1").seq == 2
    for topic, body, error in (("machine.vm1.button", {"slot": 256, "pressed_at": 5}, SchemaError),
                               ("machine.vm1.button", {"slot": 1}, SchemaError),
                               ("machine.vm1.button", {"slot": 1, "pressed_at": 5, "extra": 1}, SchemaError),
                               ("machine.vm1.nothing", {}, UnknownTopic)):
        with pytest.raises(error):
            m.build(topic, body, sender="vm1")
    with pytest.raises(DecodeError):
        m.build("machine.vm1.button", {"slot": 1, "pressed_at": 5}, sender="Not A Name")
    tupled = m.build("debug.x", {"t": (1, 2)}, sender="admin")
    assert tupled.body == {"t": [1, 2]}  # msgpack has no tuples: a receiver gets a list


def test_the_fake_refuses_the_handlers_the_runtime_refuses():
    class Holder(Actor):
        def __init__(self):
            self.inner = Clocked(FakeClock())

    with pytest.raises(HandlerError, match="not a part of this runtime"):
        FakeRuntime(Holder(), name="admin")
    holder = Holder()
    rt = FakeRuntime([holder, holder.inner], name="admin")  # hosted as parts: served
    assert {fn.__name__ for _, fn, _, _ in rt.handlers} == {"slow", "fast"}


def test_a_handler_error_fails_the_test_or_is_recorded():
    class Boom(Actor):
        @on("debug.boom")
        def boom(self, msg):
            raise RuntimeError("bug")

    with pytest.raises(HandlerFailed, match="bug"):
        FakeRuntime(Boom(), name="admin").start().send("debug.boom", {}, sender="admin")
    rt = FakeRuntime(Boom(), name="admin", raise_errors=False).start()
    rt.send("debug.boom", {}, sender="admin")
    assert rt.counters["handler_errors"] == 1 and str(rt.errors[0][1]) == "bug"


def test_no_production_entry_point_loads_the_test_kit():
    """The kit verifies nothing (its messages are built to be valid): it must never be what a
    process of the network runs on."""
    code = ("import sys, importlib;"
            "mods = ['scripts.cli', 'machine_agent.main', 'broker.broker', 'actors.runtime', 'actors.vault',"
            " 'actors.event_logger', 'actors.business_mgr', 'actors.business_data', 'actors.chain_notifier',"
            " 'actors.price_notifier', 'scripts.supervise'];"
            "[importlib.import_module(m) for m in mods];"
            "print(sorted(m for m in sys.modules if m == 'actors.testing' or m.startswith('tests')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    importing = re.compile(r"^\s*(from\s+(actors\.testing|\.testing|actors)\s+import\s+.*\btesting\b|"
                           r"from\s+(actors\.testing|\.testing)\s+import|import\s+actors\.testing)", re.M)
    hits = [str(p.relative_to(ROOT)) for folder in ("actors", "machine_agent", "broker", "scripts", "proto", "keys")
            for p in (ROOT / folder).rglob("*.py") if importing.search(p.read_text())]
    assert hits == []


def test_secrets_are_asked_and_answered_by_the_test():
    class Reader(Actor):
        def __init__(self):
            self.got = []

        def setup(self):
            self.runtime.request_secret("smtp_password")

        def on_secret(self, name, value, error):
            self.got.append((name, value, error))

    reader = Reader()
    rt = FakeRuntime(reader, name="admin").start()
    assert rt.secrets_requested == ["smtp_password"]
    rt.give_secret("smtp_password", b"pw")
    rt.give_secret("smtp_password", error="not granted")
    assert reader.got == [("smtp_password", b"pw", None), ("smtp_password", None, "not granted")]


def test_given_a_home_the_builder_refuses_what_the_broker_would_drop(home):
    from proto.errors import NotGranted

    m = Messages(home=home)
    assert m.build("machine.vm1.button", {"slot": 1, "pressed_at": 5}, sender="vm1").sender == "vm1"
    for topic, sender in (("machine.vm1.button", "admin"),        # not admin's to publish
                          ("cmd.machine.vm1.vend", "vm1"),         # a machine cannot command itself
                          ("machine.vm9.button", "vm9")):          # not in the registry at all
        body = ({"slot": 1, "pressed_at": 5} if topic.endswith("button") else
                {"id": b"\x00" * 16, "expires": 1, "slot": 1, "invoice": "1", "pulse_ms": None})
        with pytest.raises(NotGranted):
            m.build(topic, body, sender=sender)
        assert m.build(topic, body, sender=sender, bypass_broker=True).sender == sender
    assert Messages().build("machine.vm1.button", {"slot": 1, "pressed_at": 5}, sender="admin")  # no home: no policy
