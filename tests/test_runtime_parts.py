"""A runtime hosting several parts of one identity, and the handlers it refuses at start.

The refusals need no bus (the runtime is built, never run); one test runs two
parts on the real bus (broker, Vault and EventLogger as processes).
"""

from __future__ import annotations

import threading

import nacl.signing
import pytest
import zmq

from actors.dispatch import HandlerError
from actors.runtime import Actor, Runtime, every, on
from actors.session import VaultTokens
from keys.home import BusSettings
from keys.identity import IdentityKeys
from tests.harness import topic_is, wait_for


def offline_settings(tmp_path, name="admin") -> BusSettings:
    """Settings good enough to build a Runtime (never run): keys, a boot file, no broker."""
    key_file = tmp_path / f"{name}.key"
    IdentityKeys.generate(name).save(key_file)
    return BusSettings(name=name, key_file=key_file, boot_file=tmp_path / f"{name}.boot",
                       publish_endpoint="tcp://127.0.0.1:1", subscribe_endpoint="tcp://127.0.0.1:2",
                       broker_public=zmq.curve_keypair()[0], vault_public=nacl.signing.SigningKey.generate().verify_key)


def built(parts, tmp_path, **kw) -> Runtime:
    rt = Runtime(parts, offline_settings(tmp_path), **kw)
    rt.ctx.term()
    return rt


class Log:
    def __init__(self):
        self.lines = []
        self.lock = threading.Lock()

    def add(self, *line):
        with self.lock:
            self.lines.append(line)


class Left(Actor):
    role = "test"

    def __init__(self, log, status=("ok", None)):
        self.log, self.status = log, status

    def setup(self):
        self.log.add("setup", "left")

    def teardown(self):
        self.log.add("teardown", "left")

    def health(self):
        return self.status

    @on("debug.parts.left")
    def left(self, msg):
        self.log.add("left", msg.body["n"])

    @on("debug.parts")
    def both(self, msg):
        self.log.add("left saw", msg.topic)

    @every(3600)
    def hourly(self):
        pass


class Right(Actor):
    role = "test"

    def __init__(self, log, status=("ok", None)):
        self.log, self.status = log, status

    def setup(self):
        self.log.add("setup", "right")

    def teardown(self):
        self.log.add("teardown", "right")

    def health(self):
        return self.status

    @on("debug.parts.right", blocking=True)
    def right(self, msg):
        self.log.add("right", msg.body["n"], self.name)


class Runner(Actor):
    """The agent's old shape: one actor delegating to parts it holds (their handlers hidden)."""

    def __init__(self, log):
        self.left = Left(log)

    def setup(self):
        self.left.runtime = self.runtime
        self.left.setup()


def test_every_part_s_handlers_and_jobs_are_collected(tmp_path):
    log = Log()
    left, right = Left(log), Right(log)
    rt = built([left, right], tmp_path)
    assert rt.parts == [left, right] and rt.actor is left
    assert left.runtime is rt and right.runtime is rt
    assert sorted((p, getattr(fn, "__name__", "?"), b) for p, fn, b, _ in rt.handlers) == [
        (b"debug.parts.", "both", False), (b"debug.parts.left.", "left", False), (b"debug.parts.right.", "right", True)]
    assert len(rt.scheduler.jobs) == 1
    assert isinstance(rt.token_source, VaultTokens) and rt.intake is None


def test_health_of_several_parts_is_combined(tmp_path):
    log = Log()
    rt = built([Left(log, ("ok", "door closed")), Right(log, ("degraded", "1 vend interrupted"))], tmp_path)
    assert rt._health() == ("degraded", "door closed; 1 vend interrupted")
    rt = built([Left(log, ("starting", None)), Right(log)], tmp_path)
    assert rt._health() == ("starting", None)


def test_a_part_held_but_not_hosted_is_refused_at_start(tmp_path):
    with pytest.raises(HandlerError, match=r"Runner.left \(Left\) has handlers \(both, hourly, left\) but is not "
                                           r"a part of this runtime"):
        Runtime(Runner(Log()), offline_settings(tmp_path))


def test_a_handler_no_topic_can_reach_is_refused_at_start(tmp_path):
    class Typo(Actor):
        @on("machnie")  # (a typo of "machine": no message could ever be accepted on it)
        def press(self, msg):
            pass

    with pytest.raises(HandlerError, match=r"Typo.press: @on\('machnie'\) can never be called"):
        Runtime(Typo(), offline_settings(tmp_path))

    class Raw(Actor):
        @on("machnie", raw=True)  # raw handlers also get refused messages (unknown topics included)
        def refused(self, d):
            pass

    rt = built(Raw(), tmp_path)
    with pytest.raises(HandlerError, match="can never be called"):
        rt.add_handler("no.such.family", lambda msg: None)
    rt.add_handler("cmd.machine.vm1.vend", lambda msg: None)  # a family with a wildcard: fine
    rt.add_handler("", lambda msg: None)


def test_the_base_class_has_no_vault_hooks():
    for hook in ("untokened_key", "issue_own_token", "intake"):
        assert not hasattr(Actor, hook), hook


def test_two_parts_served_on_the_bus(home, network, clients):
    log = Log()
    rt = Runtime([Left(log, ("ok", "left here")), Right(log, ("ok", "right here"))], home.bus_settings("admin"))
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    try:
        wait_for(rt.proxy.token_valid, what="a token")
        watch = clients(home, "admin", prefixes=["health.admin"])
        tx = clients(home, "admin")
        wait_for(lambda: (tx.publish("debug.parts.left", {"n": 1}), ("left", 1) in log.lines)[1], interval=0.2,
                 what="the left part's handler")
        tx.publish("debug.parts.right", {"n": 2})
        wait_for(lambda: ("right", 2, "admin") in log.lines, what="the right part's (blocking) handler")
        assert ("left saw", "debug.parts.right") in log.lines  # a message goes to every part that matches
        beat = watch.expect(topic_is("health.admin", detail="left here; right here"),
                            what="the two parts' runtime's heartbeat (their health combined)")
        assert (beat.message.body["status"], beat.message.body["role"]) == ("ok", "test")
    finally:
        rt.stop()
        t.join(10)
    assert not t.is_alive()
    assert [x for x in log.lines if x[0] in ("setup", "teardown")] == [
        ("setup", "left"), ("setup", "right"), ("teardown", "right"), ("teardown", "left")]


def test_a_handler_outside_the_identity_s_grants_is_named_when_the_token_arrives(home, network, caplog):
    """vm1 may not subscribe to chain.*: the broker narrows its subscription, so a handler there
    would never be called. The runtime says so (once), naming the handler and the topic."""
    class Curious(Actor):
        role = "machine"

        @on("chain.tx")
        def payments(self, msg):
            pass

        @on("cmd.machine.vm1")  # within vm1's grants: not named
        def commands(self, msg):
            pass

    rt = Runtime(Curious(), home.bus_settings("vm1"))
    t = threading.Thread(target=rt.run, daemon=True)
    with caplog.at_level("ERROR", logger="actors.runtime"):
        t.start()
        try:
            wait_for(rt.proxy.token_valid, what="vm1's token")
            wait_for(lambda: [r for r in caplog.records if "outside vm1's subscribe grants" in r.getMessage()],
                     what="the error naming the handler")
        finally:
            rt.stop()
            t.join(10)
    (record,) = [r for r in caplog.records if "subscribe grants" in r.getMessage()]
    assert "Curious.payments on chain.tx" in record.getMessage() and "commands" not in record.getMessage()
