"""Replay windows, boots and token replies across real processes (issue 10, holes 3, 7, 8).

Real broker, Vault and EventLogger processes; receivers are real Runtimes (BusClient).
"""

import dataclasses
import logging
import threading

import nacl.signing
import pytest

from proto import wire
from tests.harness import BusClient, Network, dctrl, topic_is, wait_for


def sensor(value):
    return {"name": "t", "value": str(value), "unit": "c"}


def from_sender(topic, sender, **body):
    def pred(d):
        m = d.message
        return (m is not None and m.topic == topic and m.sender == sender
                and all(m.body.get(k) == v for k, v in body.items()))
    return pred


def test_dctrl_pub_as_a_running_machine_never_locks_it_out(home, network, clients, tmp_path):
    """Hole 3: nine `dctrl pub --as vm1` beside a running vm1 that counts its boots in a file of
    its own (as the agent does, agents/vm1/state/boot): the receiver keeps accepting both."""
    rx = clients(home, "admin", prefixes=["machine.vm1"])
    agent_settings = dataclasses.replace(home.bus_settings("vm1"), boot_file=tmp_path / "agent-state-boot")
    live = clients(home, "vm1", settings=agent_settings)
    live.publish("machine.vm1.sensor", sensor(100))
    first = rx.expect(topic_is("machine.vm1.sensor", value="100"), what="the live vm1's first reading")
    live_boot = first.message.boot
    for i in range(1, 10):
        dctrl(home, "pub", "machine.vm1.sensor", f'{{"name": "t", "value": "{i}", "unit": "c"}}', "--as", "vm1")
        d = rx.expect(topic_is("machine.vm1.sensor", value=str(i)), what=f"dctrl pub number {i}")
        assert d.message.boot != live_boot
        live.publish("machine.vm1.sensor", sensor(100 + i))
        rx.expect(topic_is("machine.vm1.sensor", value=str(100 + i)),
                  what=f"the live vm1 accepted after dctrl pub number {i}")
    refused = [d for d in rx.drain() if d.error is not None]
    assert refused == [], [str(d.error) for d in refused]


@pytest.fixture
def admin_may_answer_tokens(home):
    """A policy edit in the test home: admin may publish on vault.token.* (as a hostile insider
    with an overlapping grant would)."""
    with open(home.policy_path, "a") as f:
        f.write('\n[identity.admin]\npublish = ["vault.token"]\n')
    net = Network(home).start_healthy("broker", "vault", "event_logger")
    yield net
    net.close()


def _pending_rid(client):
    """Register a token request in ``client``'s proxy (as if sent) and return its rid."""
    box, done = {}, threading.Event()

    def make():
        box["rid"] = wire.decode(client.runtime.proxy.request("token")).body["rid"]
        done.set()
    client.runtime.call_soon(make)
    wait_for(done.is_set, what="a pending token request")
    return box["rid"]


def test_token_replies_are_accepted_only_from_the_vault(home, admin_may_answer_tokens, clients):
    """Hole 7: a validly signed vault.token.vm1 from admin, answering vm1's pending request with
    vm1's own (captured) token, installs nothing: neither its revocations nor the token."""
    vm1 = clients(home, "vm1", prefixes=["vault.token.vm1"])
    attacker = clients(home, "admin")
    verifier, proxy = vm1.runtime.proxy.verifier, vm1.runtime.proxy
    rid = _pending_rid(vm1)
    reply = {"rid": rid, "token": proxy.token.raw, "exp": proxy.token.expires_at,
             "revocations": [{"identity": "business_mgr", "up_to": 7}], "code": None, "reason": None}
    attacker.publish("vault.token.vm1", reply)
    vm1.expect(from_sender("vault.token.vm1", "admin", rid=rid), what="admin's forged reply, verified and delivered")
    # (vm1's runtime handles a vault.token before any handler sees it: it has been processed)
    assert "business_mgr" not in verifier.revoked
    assert rid in proxy.pending, "the forged reply consumed the pending request"
    # Positive control: the same reply from the vault identity (a second process with the
    # Vault's key) is installed.
    vault = clients(home, "vault")
    rid2 = _pending_rid(vm1)
    vault.publish("vault.token.vm1", {**reply, "rid": rid2, "revocations": [{"identity": "mallory", "up_to": 5}]})
    vm1.expect(from_sender("vault.token.vm1", "vault", rid=rid2), what="the vault identity's reply")
    assert verifier.revoked.get("mallory") == 5 and rid2 not in proxy.pending
    assert "business_mgr" not in verifier.revoked


def test_a_server_actor_refuses_a_replay_after_its_restart(home, network, clients):
    """Hole 8: a message the event logger accepted is refused when replayed after it restarts."""
    watch = clients(home, "admin", prefixes=["debug.pay", "error.event_logger"])
    tx = clients(home, "admin")
    tx.publish("debug.pay", {"n": 1})
    captured = [bytes(f) for f in watch.expect(topic_is("debug.pay", n=1)).frames]
    # before the restart: the replay is refused (the event logger has seen the original)
    tx.send_raw(captured)
    watch.expect(topic_is("error.event_logger", code="replayed", sender="admin"), what="the refusal before restart")
    network.signal("event_logger")
    network.start_healthy("event_logger")
    tx.send_raw(captured)
    d = watch.expect(topic_is("error.event_logger", code="replayed", sender="admin"),
                     what="the restarted event logger refusing the replay")
    assert "already seen" in d.message.body["reason"]


def test_rejections_are_logged_once_per_interval_and_summarised(home, network, clients, caplog):
    """Weakness: one WARNING per rejected message. Now one per (kind, code) per interval and a
    count of the others."""
    caplog.set_level(logging.WARNING, logger="actors.runtime")
    rx = clients(home, "admin", prefixes=["debug.forged", "debug.marker"])
    rx.runtime.log_interval = 1.0
    tx = clients(home, "admin")
    impostor = nacl.signing.SigningKey.generate()
    proxy = tx.runtime.proxy
    frames = []
    for i in range(50):
        proxy.seq += 1
        frames.append(wire.seal(impostor, "debug.forged",
                                wire.pack_payload("admin", proxy.boot, proxy.seq, proxy.token.raw, {"n": i})))
    done = threading.Event()

    def burst():
        for f in frames:
            tx.runtime.pub.send_multipart(f)
        done.set()
    tx.runtime.call_soon(burst)
    wait_for(done.is_set, what="the burst sent")
    tx.publish("debug.marker", {"n": 1})
    rx.expect(topic_is("debug.marker"), what="the marker after the burst")
    refused = [d for d in rx.drain() if d.error is not None and d.error.code == "bad_signature"]
    assert len(refused) == 50  # every one was refused (positive control for the count below)

    def lines():
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and ("debug.forged" in r.getMessage() or "(bad_signature)" in r.getMessage())]
    summary = wait_for(lambda: [m for m in lines() if m.startswith("refused 49 more messages (bad_signature)")],
                       what="the summary of the suppressed refusals")
    assert len(lines()) == 2, lines()
    assert summary and [m for m in lines() if "debug.forged" in m][0].startswith("refused debug.forged. from admin")
