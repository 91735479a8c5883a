"""The bus under a hostile network: every refusal has a reason and an event; nothing valid is lost.

Real broker, Vault and EventLogger processes; real CURVE and Ed25519 keys.
Receivers here are real Runtimes (BusClient) in the test process.
"""

import dataclasses
import os
import time

import nacl.signing
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from keys.identity import IdentityKeys
from proto import token as tokens
from proto import wire
from proto.errors import DctrlError
from tests.harness import DEADLINE, dctrl, publish_until_heard, topic_is, wait_for


def denied(direction, code=None, identity=None):
    def pred(d):
        m = d.message
        return (m is not None and m.topic == "broker.denied" and m.body["direction"] == direction
                and (code is None or m.body["code"] == code)
                and (identity is None or m.body["identity"].startswith(identity)))
    return pred


def rejected(code):
    return lambda d: d.error is not None and d.error.code == code


def forged(client, topic, body, *, token=None, key=None, sender=None, seq_bump=1000):
    """Frames signed by ``key`` (default: the client's own) carrying ``token`` (default: its own)."""
    proxy = client.runtime.proxy
    proxy.seq += seq_bump
    payload = wire.pack_payload(sender or proxy.name, proxy.boot, proxy.seq,
                                proxy.token.raw if token is None else token, body)
    return wire.seal(key or proxy.signing_key, topic, payload)


def still_working(home, clients, tag, network=None):
    """Nothing valid is lost: a fresh valid message still goes through, and no process died."""
    rx = clients(home, "admin", prefixes=["debug.alive"])
    tx = clients(home, "admin")
    tx.publish("debug.alive", {"tag": tag})
    rx.expect(topic_is("debug.alive", tag=tag), what="a valid message after the attack")
    if network is not None:
        assert all(network.alive(n) for n in ("broker", "vault", "event_logger")), "a server process died"


def test_unknown_key_is_refused_at_the_handshake(home, network, clients, tmp_path):
    watch = clients(home, "admin", prefixes=["broker.denied"])
    mallory = IdentityKeys.generate("mallory")
    mallory.save(tmp_path / "mallory.key")
    settings = dataclasses.replace(home.bus_settings("admin"), name="mallory", key_file=tmp_path / "mallory.key",
                                   boot_file=tmp_path / "mallory.boot")
    m = clients(home, "mallory", prefixes=[""], settings=settings, wait_token=False)
    d = watch.expect(denied("connect", "unknown_key"), what="broker.denied for mallory's handshake")
    assert mallory.curve_public.decode()[:12] in d.message.body["identity"]
    wait_for(lambda: m.runtime._reconnect_at is not None, what="mallory's runtime to see the refusal")
    assert not m.runtime.proxy.token_valid() and m.drain() == []
    assert "handshake refused" in network.log("broker") or "denied connect" in network.log("broker")


def test_publish_outside_policy_is_dropped_and_reported(home, network, clients):
    watch = clients(home, "admin", prefixes=["broker.denied", "debug"])
    vm1 = clients(home, "vm1")
    vm1.publish("debug.sneaky", {"x": 1})
    d = watch.expect(denied("publish", "not_granted", "vm1"))
    assert d.message.body["topic"] == "debug.sneaky"
    watch_tx = clients(home, "admin")
    watch_tx.publish("debug.marker", {"n": 1})
    watch.expect(topic_is("debug.marker"))
    assert not [h for h in watch.drain() if h.message and h.message.topic == "debug.sneaky"]
    assert "denied publish vm1 'debug.sneaky'" in network.log("broker")


def test_subscribe_outside_policy_gets_nothing(home, network, clients):
    dctrl(home, "keys", "add", "vm10", "--role", "machine")
    watch = clients(home, "admin", prefixes=["broker.denied"])
    # vm10 asks for vm1's commands and for debug: both outside its grants.
    vm10 = clients(home, "vm10", prefixes=["cmd.machine.vm1", "debug", "vault.token.vm10"])
    watch.expect(denied("subscribe", "not_granted", "vm10"))
    admin = clients(home, "admin", prefixes=["debug"])
    admin.publish("debug.secret", {"x": 1})
    admin.expect(topic_is("debug.secret"))
    # A later message vm10 is granted (its own token reply) proves its pipe is live.
    vm10.runtime.call_soon(lambda: vm10.runtime.pub.send_multipart(vm10.runtime.proxy.request("token")))
    vm10.expect(topic_is("vault.token.vm10"))
    assert not [h for h in vm10.drain() if h.message is None or h.message.topic.startswith(("debug", "cmd"))]


def test_vm1_grant_never_covers_vm10(home, network, clients):
    dctrl(home, "keys", "add", "vm10", "--role", "machine")
    # The admin is granted every topic: it would receive machine.vm10.button if the broker passed it.
    watch = clients(home, "admin", prefixes=["broker.denied", "machine"])
    vm1 = clients(home, "vm1")
    pressed = {"slot": 1, "pressed_at": int(time.time() * 1000)}
    vm1.send_raw(forged(vm1, "machine.vm10.button", pressed))
    d = watch.expect(denied("publish", "not_granted", "vm1"))
    assert d.message.body["topic"] == "machine.vm10.button"
    # Positive control and marker: the same press on vm1's own topic, sent after it on the same
    # connection, is delivered; by then the broker has handled the one for vm10.
    vm1.send_raw(forged(vm1, "machine.vm1.button", pressed))
    watch.expect(topic_is("machine.vm1.button", slot=1), what="vm1's own button press")
    leaked = [h.frames[0] for h in watch.drain() if h.frames and h.frames[0].startswith(b"machine.vm10.")]
    assert leaked == [], f"the broker delivered vm1's publication on vm10's topic: {leaked}"


@pytest.mark.parametrize("attack", ["forged_signature", "expired_token", "token_for_other_topic",
                                    "someone_elses_token", "no_token", "unknown_family", "wrong_body_types"])
def test_receiver_refuses_with_reason(home, network, clients, attack):
    rx = clients(home, "admin", prefixes=["debug", "events", "health.admin", "error.admin"])
    # event_logger may publish anything under events., where only events.gap has a schema.
    tx = clients(home, "event_logger" if attack == "unknown_family" else "admin")
    vault_key = home.vault_signing_key()
    admin_keys = IdentityKeys.load(home.key_file("admin"))
    now = int(time.time())

    def token_for(name, keys, publish=(b"debug.",), issued_at=now, lifetime=600):
        return tokens.issue(vault_key, identity=name, role="admin", key=keys.sign_public, key_version=1,
                            publish=publish, subscribe=(), issued_at=issued_at, lifetime=lifetime)

    expected = {
        "forged_signature": ("bad_signature", lambda: forged(tx, "debug.x", {}, key=nacl.signing.SigningKey.generate())),
        "expired_token": ("token_expired", lambda: forged(tx, "debug.x", {}, token=token_for("admin", admin_keys, issued_at=now - 2000))),
        "token_for_other_topic": ("not_granted", lambda: forged(tx, "debug.x", {}, token=token_for("admin", admin_keys, publish=(b"health.admin.",)))),
        "someone_elses_token": ("bad_token", lambda: forged(tx, "debug.x", {}, token=token_for("vm1", IdentityKeys.load(home.key_file("vm1"))))),
        "no_token": ("bad_token", lambda: wire.seal(admin_keys.signing_key, "debug.x", wire.pack_payload("admin", 1, 10**9, None, {}))),
        "unknown_family": ("unknown_topic", lambda: forged(tx, "events.bogus", {})),
        "wrong_body_types": ("bad_body", lambda: forged(tx, "health.admin", {"name": "admin", "role": 3})),
    }
    code, make = expected[attack]
    tx.send_raw(make())
    d = rx.expect(rejected(code), what=f"a {code} rejection")
    assert d.error.code == code and str(d.error)
    rx.expect(topic_is("error.admin", code=code, kind="rejected"), what="the rejection event")
    still_working(home, clients, attack, network)


def test_vault_refuses_token_requests_not_signed_by_the_registered_key(home, network, clients):
    watch = clients(home, "admin", prefixes=["error.vault", "vault.token.vm1"])
    vm1 = clients(home, "vm1")
    proxy = vm1.runtime.proxy
    impostor = nacl.signing.SigningKey.generate()
    proxy.seq += 1000
    body = {"rid": os.urandom(16), "op": "token", "key_version": 1, "secret": None}
    vm1.send_raw(wire.seal(impostor, "vault.req.vm1", wire.pack_payload("vm1", proxy.boot, proxy.seq, None, body)))
    d = watch.expect(topic_is("error.vault", kind="rejected", code="bad_signature"), what="the Vault's refusal")
    assert (d.message.body["sender"], d.message.body["topic"]) == ("vm1", "vault.req.vm1")
    # No token went out for that request; a properly signed one still gets an answer.
    vm1.runtime.call_soon(lambda: vm1.runtime.pub.send_multipart(proxy.request("token")))
    reply = watch.expect(topic_is("vault.token.vm1"))
    assert reply.message.body["rid"] != body["rid"] and reply.message.body["token"]
    assert "signature does not match vm1's key" in network.log("vault")


def test_replayed_message_is_refused(home, network, clients):
    rx = clients(home, "admin", prefixes=["debug"])
    tx = clients(home, "admin")
    tx.publish("debug.pay", {"n": 1})
    original = rx.expect(topic_is("debug.pay", n=1))
    tx.send_raw([bytes(f) for f in original.frames])
    d = rx.expect(rejected("replayed"))
    assert "already seen" in str(d.error)


@pytest.mark.parametrize("frames, code", [
    ([b"debug.x.", b"\xc1" * 80], "bad_encoding"),                       # garbage msgpack
    ([b"debug.x.", b"\x87\xa1v\x01" + b"\x00" * 64], "bad_encoding"),    # truncated map
    ([b"debug.x.", b"\x00" * 10], "bad_frames"),                         # too short for a signature
])
def test_malformed_bytes_are_dropped_by_the_broker_and_refused_by_receivers(home, network, clients, frames, code):
    """The broker drops an envelope that cannot be valid (issue 10.4) and says so; a receiver
    that got one anyway (another broker, a bug) refuses it with the reason."""
    watch = clients(home, "admin", prefixes=["broker.denied", "debug"])
    tx = clients(home, "admin")
    tx.send_raw(frames)
    watch.expect(denied("publish", "bad_envelope", "admin"), what="the broker's bad_envelope")
    publish_until_heard(tx, watch, "debug.after")  # after the junk in tx's stream: it was handled
    assert not [h for h in watch.drain() if h.frames and h.frames[0] == b"debug.x."]
    with pytest.raises(DctrlError) as refused:  # the receiver's own check (in its loop's proxy)
        _open_in_loop(watch, frames)
    assert refused.value.code == code
    still_working(home, clients, code, network)


def _open_in_loop(client, frames):
    """``client``'s AuthProxy opens ``frames`` in its loop thread (where it always runs)."""
    out = []

    def open_():
        try:
            out.append(("ok", client.runtime.proxy.open(frames)))
        except DctrlError as exc:
            out.append(("error", exc))
    client.runtime.call_soon(open_)
    kind, value = wait_for(lambda: out and out[0], what="the proxy's verdict")
    if kind == "error":
        raise value
    return value


@pytest.mark.parametrize("frames, code, reason", [
    ([b"debug.x.", b"a", b"b"], "bad_frames", "got 3"),
    ([b"debug.x."], "bad_frames", "got 1"),
    ([b"debug.x", b"\x80" + b"\x00" * 64], "bad_topic", "dot-terminated"),
])
def test_broker_drops_malformed_framing(home, network, clients, frames, code, reason):
    watch = clients(home, "admin", prefixes=["broker.denied", "debug"])
    tx = clients(home, "admin")
    tx.send_raw(frames)
    d = watch.expect(denied("publish", code, "admin"))
    assert reason in d.message.body["reason"]
    still_working(home, clients, code)
    assert not [h for h in watch.drain() if h.frames and h.frames[0].startswith(b"debug.x")]


def _pub_monitor(client):
    """A monitor on ``client``'s publishing connection (the runtime watches only its SUB one):
    made in the client's loop thread, read in the test's. Close it with :func:`_close_monitor`."""
    made = []

    def attach():
        made.append(client.runtime.pub.get_monitor_socket(
            addr=f"inproc://test-pub-monitor-{id(client):x}",
            events=zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED))
    client.runtime.call_soon(attach)
    wait_for(lambda: made, what="a monitor on the publishing socket")
    return made[0]


def _close_monitor(client, monitor):
    done = []  # stopped in the loop thread before its PAIR closes (see Runtime._close_sockets)
    client.runtime.call_soon(lambda: (client.runtime.pub.disable_monitor(), done.append(1)))
    wait_for(lambda: done, what="the monitor stopped")
    monitor.close(linger=0)


def _monitor_events(monitor, until=None, timeout=DEADLINE):
    """Events read until one of kind ``until`` (None: only those already there, no waiting)."""
    events, deadline = [], time.monotonic() + timeout
    while True:
        if until is None:
            if not monitor.poll(0):
                return events
        elif not monitor.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise AssertionError(f"timed out after {timeout} s waiting for monitor event {until}: saw {events}")
        events.append(recv_monitor_message(monitor)["event"])
        if until is not None and events[-1] == until:
            return events


def test_oversized_frame_is_dropped_reported_and_only_the_offenders(home, network, clients):
    """A frame over max_message_bytes is dropped and reported (broker.denied too_large), not
    delivered; the offender's connection stays up (issue 10: it used to be cut silently)."""
    rx = clients(home, "admin", prefixes=["debug", "broker.denied"])
    big, bystander = clients(home, "admin"), clients(home, "admin")
    monitors = {c: _pub_monitor(c) for c in (big, bystander)}
    try:
        # Positive control: big's connection carries a normal message.
        big.publish("debug.before", {"n": 1})
        rx.expect(topic_is("debug.before", n=1), what="a normal message from the offender")
        big.send_raw([b"debug.big.", os.urandom(home.config["bus"]["max_message_bytes"] + 1024)])
        rx.expect(denied("publish", "too_large", "admin"), what="the broker's too_large")
        # What it sends next is delivered: the oversized frame, earlier in its stream, has been
        # handled by then, and was not delivered.
        publish_until_heard(big, rx, "debug.after")
        assert not [h for h in rx.drain() if h.frames and h.frames[0] == b"debug.big."]
        assert zmq.EVENT_DISCONNECTED not in _monitor_events(monitors[big])
        # Only the offender: another peer's connection was never dropped, and still carries.
        bystander.publish("debug.bystander", {"n": 1})
        rx.expect(topic_is("debug.bystander", n=1), what="a message from the bystander")
        assert zmq.EVENT_DISCONNECTED not in _monitor_events(monitors[bystander])
    finally:
        for c, m in monitors.items():
            _close_monitor(c, m)
    still_working(home, clients, "after-oversize", network)


def beat_from(name, key_version=None, vault_public=None):
    """Predicate: an accepted heartbeat of ``name`` (optionally signed under that key version)."""
    def pred(d):
        m = d.message
        if m is None or m.topic != f"health.{name}":
            return False
        return key_version is None or tokens.parse(m.token, vault_public).key_version == key_version
    return pred


def test_revocation_cuts_off_a_connected_identity_within_5_seconds(home, network, clients):
    watch = clients(home, "admin", prefixes=["broker.denied", "health.vm1", "vault.revoked"])
    vm1 = clients(home, "vm1", prefixes=["cmd.machine.vm1"])
    watch.expect(beat_from("vm1"))
    old_token = vm1.runtime.proxy.token.raw
    t0 = time.monotonic()
    dctrl(home, "keys", "revoke", "vm1")
    wait_for(lambda: not vm1.runtime.connected, timeout=5, what="vm1 to be disconnected")
    assert time.monotonic() - t0 < 5
    watch.expect(denied("connect", "unknown_key"), what="vm1's reconnect refused")
    # Receivers learn the revocation from the Vault (vault.revoked, and in every token reply)
    # and refuse vm1's still-unexpired token.
    wait_for(lambda: watch.runtime.proxy.verifier.revoked.get("vm1") == 1, what="the watcher to learn the revocation")
    watch.drain()
    watch.actor.history.clear()
    vm1_keys = IdentityKeys.load(home.key_file("vm1"))
    rx = clients(home, "admin", prefixes=["debug"])
    tx = clients(home, "admin")
    wait_for(lambda: rx.runtime.proxy.verifier.revoked.get("vm1") == 1, what="rx to learn the revocation")
    as_vm1 = forged(tx, "debug.x", {}, token=old_token, key=vm1_keys.signing_key, sender="vm1")
    # Relayed over another identity's connection, the broker drops it (src bound to the
    # connection, issue 10.6); a receiver handed it anyway refuses vm1's revoked token.
    tx.send_raw(as_vm1)
    watch_relay = clients(home, "admin", prefixes=["broker.denied"])
    tx.send_raw(forged(tx, "debug.x", {}, token=old_token, key=vm1_keys.signing_key, sender="vm1"))
    watch_relay.expect(denied("publish", "wrong_src", "admin"), what="the relay dropped as wrong_src")
    with pytest.raises(DctrlError) as refused:
        _open_in_loop(rx, as_vm1)
    assert refused.value.code == "revoked"
    still_working(home, clients, "after-revocation")
    assert not [h for h in watch.drain() if beat_from("vm1")(h)], "vm1 still heard after revocation"
    assert "vm1: its key is no longer valid" in network.log("broker")  # its connection alone cut off
    # The watcher may have learned it from a token reply: the Vault's announcement (at +2 s,
    # +5 s, then every 30 s) and the event logger's batch may still be on their way.
    wait_for(lambda: any({"identity": "vm1", "up_to": 1} in r["body"]["revocations"]
                         for r in _query(home, topic="vault.revoked")),
             timeout=10, what="vault.revoked announcing vm1 in the event log")


def test_rotation_keeps_the_actor_working_and_ends_old_keys_after_grace(home, network, clients, tmp_path):
    old_copy = tmp_path / "vm1-old.key"
    old_copy.write_bytes(home.key_file("vm1").read_bytes())
    os.chmod(old_copy, 0o600)
    watch = clients(home, "admin", prefixes=["health.vm1", "broker.denied"])
    vm1 = clients(home, "vm1")
    settings = dataclasses.replace(home.bus_settings("vm1"), key_file=old_copy, boot_file=tmp_path / "b")
    old = clients(home, "vm1", prefixes=["vault.token.vm1"], settings=settings)  # a peer that keeps key v1
    dctrl(home, "keys", "rotate", "vm1", "--grace", "8")
    wait_for(lambda: vm1.runtime.proxy.token and vm1.runtime.proxy.token.key_version == 2,
             what="the running vm1 to switch to key v2 and get a v2 token")
    watch.expect(beat_from("vm1", 2, home.vault_public), what="vm1 heard under key v2")
    # Within the grace period the old key is still accepted: the Vault issues it a v1 token.
    old.runtime.call_soon(lambda: old.runtime.pub.send_multipart(old.runtime.proxy.request("token")))
    reply = old.expect(lambda d: d.message and d.message.topic == "vault.token.vm1"
                       and d.message.body["token"] and tokens.parse(d.message.body["token"], home.vault_public).key_version == 1)
    assert reply.message.body["code"] is None
    # After it, the broker cuts the old key off; the rotated vm1 keeps working.
    wait_for(lambda: not old.runtime.connected, timeout=15, what="the old key to be cut off after the grace")
    watch.expect(denied("connect", "unknown_key"))
    watch.drain()
    watch.actor.history.clear()
    watch.expect(beat_from("vm1", 2, home.vault_public), what="the rotated vm1 to keep working")
    assert old.runtime.proxy.token.key_version == 1 and not old.runtime.connected


def test_policy_reload_applies_without_restart(home, network, clients):
    rx = clients(home, "admin", prefixes=["debug", "broker.denied"])
    vm1 = clients(home, "vm1")
    vm1.publish("debug.vm1.hello", {"n": 1})
    rx.expect(denied("publish", "not_granted", "vm1"))
    with open(home.policy_path, "a") as f:
        f.write('\n[identity.vm1]\npublish = ["debug.{self}"]\n')
    # The broker cuts vm1 (whose grants changed) off; it reconnects and renews its token with the new grant.
    wait_for(lambda: vm1.runtime.proxy.token and b"debug.vm1." in vm1.runtime.proxy.token.publish,
             what="vm1's token to carry the new grant")
    # rx handshakes again on its own schedule: until it has, what vm1 publishes is lost.
    d = publish_until_heard(vm1, rx, "debug.vm1.hello")
    assert d.message.sender == "vm1"


def test_vault_hands_secrets_only_to_named_identities_and_never_in_clear(home, network, clients):
    value = b"smtp-hunter2-" + os.urandom(8).hex().encode()
    dctrl(home, "vault", "set-secret", "smtp_password", input=value.decode())
    with open(home.policy_path, "a") as f:
        f.write('smtp_password = ["vm1"]\n')  # appended to the [secrets] table
    vm1 = clients(home, "vm1")
    admin = clients(home, "admin")
    wait_for(lambda: "reloaded registry and policy" in network.log("vault"), what="the Vault to reload the policy")
    # The broker has applied the policy once it says which grants changed (none here: only
    # [secrets]), so the checks below start then.
    wait_for(lambda: "policy changed: the grants of" in network.log("broker"),
             what="the broker to apply the new policy")
    # The event logger handshakes again on its own schedule; the Vault's reply must not race it.
    _wait_until_the_event_log_hears(home, admin, "secrets")
    vm1.runtime.request_secret("smtp_password")
    admin.runtime.request_secret("smtp_password")
    assert wait_for(lambda: vm1.actor.secrets.get("smtp_password")) == (value, None)
    refused_value, error = wait_for(lambda: admin.actor.secrets.get("smtp_password"))
    assert refused_value is None and "policy does not let admin read" in error
    # The event log saw the sealed reply, never the plaintext; neither did the vault's log.
    still_working(home, clients, "secrets")
    wait_for(lambda: any(r["topic"] == "vault.secret.vm1" for r in _query(home)), what="the reply in the event log")
    blobs = b"".join(p.read_bytes() for p in home.events_dir.iterdir())
    assert value not in blobs and value not in (home.vault_dir / "secrets.json").read_bytes()
    assert value.decode() not in network.log("vault")


def _wait_until_the_event_log_hears(home, client, tag):
    """Publish numbered probes until one is in the event log: each probe is at most once while peers reconnect."""
    sent = []

    def heard():
        sent.append(len(sent))
        client.publish("debug.probe", {"tag": tag, "n": sent[-1]})
        return any(r["body"].get("tag") == tag for r in _query(home, topic="debug.probe"))
    wait_for(heard, interval=0.2, what="the event logger to hear the bus again")


def _query(home, **kw):
    from actors.event_logger.queries import query

    return list(query(home.events_dir, **kw))


def test_secret_store_keyed_by_a_passphrase(home, clients):
    from tests.harness import Network

    dctrl(home, "vault", "set-secret", "rpc_password", input="rpc-pw-123")
    out = dctrl(home, "vault", "rekey", "--to", "passphrase", input="correct horse battery staple").stdout
    assert "re-encrypted 1 secrets" in out
    assert b"rpc-pw-123" not in (home.vault_dir / "secrets.json").read_bytes()
    with open(home.policy_path, "a") as f:
        f.write('rpc_password = ["vm1"]\n')
    net = Network(home).start("broker")
    try:
        net.start("vault")  # no passphrase: refuses to start, saying how to fix it
        assert net.procs["vault"].wait(20) == 2
        assert "DCTRL_VAULT_PASSPHRASE" in net.log("vault")
        net.procs.pop("vault")
        net.start("vault", env={"DCTRL_VAULT_PASSPHRASE": "correct horse battery staple"})
        vm1 = clients(home, "vm1")
        vm1.runtime.request_secret("rpc_password")
        assert wait_for(lambda: vm1.actor.secrets.get("rpc_password")) == (b"rpc-pw-123", None)
    finally:
        net.close()
