"""The Vault under a flood of token requests, and its answers to requests it cannot serve (issue 10).

Real broker, Vault and EventLogger processes; the flood comes from a raw CURVE socket with
vm1's keys, every request validly signed with vm1's registered key.
"""

import os
import threading
import time

import zmq

from keys.identity import IdentityKeys
from keys.registry import Registry
from proto import wire
from tests.harness import dctrl, topic_is, wait_for

FLOOD_S = 12.0
FLOOD_RATE = 8000  # requests a second from vm1
BOUND_S = 3.0      # every other identity's token request is answered within this


def _flood_frames(home, n):
    """``n`` distinct, validly signed vm1 token requests (signed before the flood starts)."""
    keys = IdentityKeys.load(home.key_file("vm1"))
    boot = 7 << 24
    return [wire.seal(keys.signing_key, "vault.req.vm1",
                      wire.pack_payload("vm1", boot, seq, None, {"rid": os.urandom(16), "op": "token",
                                                                   "key_version": keys.version, "secret": None}))
            for seq in range(1, n + 1)]


def _flooder(home, frames, stop, sent):
    keys = IdentityKeys.load(home.key_file("vm1"))
    settings = home.bus_settings("vm1")
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.PUB)
    s.curve_serverkey = settings.broker_public
    s.curve_publickey, s.curve_secretkey = keys.curve_public, keys.curve_secret
    s.sndhwm = 100_000
    s.linger = 0
    s.connect(settings.publish_endpoint)
    try:
        start = time.monotonic()
        for i, f in enumerate(frames):
            if stop.is_set():
                break
            due = start + i / FLOOD_RATE
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the flood (not standing in for a condition)
            s.send_multipart(f)
            sent[0] += 1
    finally:
        s.close()


def test_one_identity_flooding_vault_req_does_not_starve_the_others(home, network, clients):
    admin = clients(home, "admin", prefixes=["vault.token.admin", "health.vault"])
    frames = _flood_frames(home, int(FLOOD_S * FLOOD_RATE))
    stop, sent = threading.Event(), [0]
    flood = threading.Thread(target=_flooder, args=(home, frames, stop, sent), daemon=True)
    latencies = []
    flood.start()
    try:
        wait_for(lambda: sent[0] >= FLOOD_RATE, what="the flood to be under way")
        deadline = time.monotonic() + FLOOD_S - 2
        while time.monotonic() < deadline:
            box = {}
            ready = threading.Event()

            def ask():
                f = admin.runtime.proxy.request("token")
                box["rid"] = wire.decode(f).body["rid"]
                box["t0"] = time.monotonic()
                admin.runtime.pub.send_multipart(f)
                ready.set()
            admin.runtime.call_soon(ask)
            wait_for(ready.is_set, what="the request sent")
            d = admin.expect(lambda d: d.message is not None and d.message.topic == "vault.token.admin"
                             and d.message.body["rid"] == box["rid"], timeout=BOUND_S,
                             what=f"the Vault's answer to admin within {BOUND_S} s during vm1's flood")
            latencies.append(time.monotonic() - box["t0"])
            assert d.message.body["token"], d.message.body
            ready.clear()
            admin.expect(topic_is("health.vault"), what="a heartbeat of the Vault (paces the requests)")
    finally:
        stop.set()
        flood.join(30)
    assert len(latencies) >= 3 and max(latencies) < BOUND_S, latencies
    # Positive control: the flood reached the Vault and was refused there, before verification.
    h = wait_for(lambda: (lambda d: d if d.message.body["counters"].get("throttled", 0) >= FLOOD_RATE else None)(
        admin.expect(topic_is("health.vault"))), what="the Vault's heartbeat counting the refused flood")
    assert h.message.body["status"] == "ok"
    assert network.alive("vault")
    assert "vault requests refused before verification" in network.log("vault")
    assert network.log("vault").count("too many") == 0


def test_a_token_request_for_a_missing_key_version_is_answered_with_the_reason(home, network, clients):
    watch = clients(home, "admin", prefixes=["vault.token.vm1"])
    vm1 = clients(home, "vm1")
    keys = IdentityKeys.load(home.key_file("vm1"))
    proxy = vm1.runtime.proxy
    proxy.seq += 1000
    rid = os.urandom(16)
    body = {"rid": rid, "op": "token", "key_version": 99, "secret": None}
    vm1.send_raw(wire.seal(keys.signing_key, "vault.req.vm1", wire.pack_payload("vm1", proxy.boot, proxy.seq, None, body)))
    d = watch.expect(lambda d: d.message is not None and d.message.body["rid"] == rid,
                     what="the Vault's answer to a request for key version 99")
    assert d.message.sender == "vault"
    assert d.message.body["token"] is None and d.message.body["code"] == "unknown_key"
    assert "no key version 99" in d.message.body["reason"]
    # and a request for the key that exists is still served (positive control)
    rid2 = os.urandom(16)
    proxy.seq += 1
    body2 = {"rid": rid2, "op": "token", "key_version": keys.version, "secret": None}
    vm1.send_raw(wire.seal(keys.signing_key, "vault.req.vm1", wire.pack_payload("vm1", proxy.boot, proxy.seq, None, body2)))
    d2 = watch.expect(lambda d: d.message is not None and d.message.body["rid"] == rid2)
    assert d2.message.body["token"] and d2.message.body["code"] is None


def test_keys_rotate_refuses_a_negative_grace(home):
    bad = dctrl(home, "keys", "rotate", "vm1", "--grace", "-5", check=False)
    assert bad.returncode == 2 and "grace must be 0 or more seconds" in bad.stderr
    assert [k.version for k in Registry.load(home.registry_path).keys_of("vm1")] == [1]
    dctrl(home, "keys", "rotate", "vm1", "--grace", "5")  # positive control
    assert [k.version for k in Registry.load(home.registry_path).keys_of("vm1")] == [1, 2]


def test_request_intake_is_fair_bounded_and_refuses_before_verification():
    from actors.vault import RequestIntake

    now = [0.0]
    intake = RequestIntake(lambda name: name in ("vm1", "admin"), rate=0.5, burst=30, per_sender=4,
                           clock=lambda: now[0])
    req = lambda name, i: [f"vault.req.{name}.".encode(), b"junk %d" % i]  # never decoded here
    flood = [intake.offer(req("vm1", i)) for i in range(10_000)]
    assert flood[:4] == [True] * 4 and not any(flood[4:])  # 4 waiting at most
    assert intake.offer(req("admin", 0)) is True
    # round-robin: admin's request comes second, not behind vm1's queue
    assert [f[0] for f in intake.take(2)] == [b"vault.req.vm1.", b"vault.req.admin."]
    # unknown names and malformed topics are refused and leave no state behind
    for topic in (b"vault.req.mallory.", b"vault.req.\xff.", b"vault.req.."):
        assert intake.offer([topic, b"x"]) is False
    assert set(intake.buckets) == {"vm1", "admin"} and intake.refused["vm1"] == 9996
    # the bucket: 30 at once, then 1 every 2 s
    rest = intake.take(100)
    assert len(rest) == 3 and intake.pending == 0
    taken = 0
    for i in range(100):
        if intake.offer(req("vm1", i)):
            taken += len(intake.take(1))
    assert taken == 30 - 4  # (4 of the burst went to the requests queued above)
    assert intake.offer(req("vm1", 0)) is False
    now[0] += 2.0
    assert intake.offer(req("vm1", 1)) is True
