"""The session (actors/session.py): what to ask the Vault and when, without sockets or processes.

A real AuthProxy with generated keys and a Vault key made here; the clocks are
fake, so the backoff, the renewal at half-life and the retries are exact.
"""

from __future__ import annotations

import os

import nacl.signing
import pytest

from actors.session import TOKEN_RETRY_MAX, Session, VaultTokens
from actors.testing import FakeClock, Messages
from keys.identity import IdentityKeys
from proto import token as tokens
from proto import wire
from proto.authproxy import AuthProxy
from proto.errors import BadToken

LIFETIME = 600


class World:
    """One identity's session and the Vault's key, on a fake clock."""

    def __init__(self, tmp_path, name="vm1", token_source=None):
        self.clock = FakeClock()
        self.vault_key = nacl.signing.SigningKey.generate()
        self.key_file = tmp_path / f"{name}.key"
        self.keys = IdentityKeys.generate(name)
        self.keys.save(self.key_file)
        self.proxy = AuthProxy(self.keys, self.vault_key.verify_key, boot=1, clock=self.clock.time)
        self.installed = []
        self.secrets = []
        self.session = Session(self.proxy, self.key_file, token_source=token_source,
                               on_token=lambda: self.installed.append(self.clock.time()),
                               on_secret=lambda *a: self.secrets.append(a),
                               monotonic=self.clock.monotonic, jitter=lambda lo, hi: 1.0)
        self.messages = Messages(clock=self.clock.time)

    def token(self, keys=None, lifetime=LIFETIME) -> bytes:
        keys = keys or self.proxy.keys
        return tokens.issue(self.vault_key, identity=keys.name, role="machine", key=keys.sign_public,
                            key_version=keys.version, publish=(b"machine.vm1.",), subscribe=(b"cmd.machine.vm1.",),
                            issued_at=int(self.clock.time()), lifetime=lifetime)

    def reply(self, request_frames, *, token=None, sender="vault", refused=False):
        rid = wire.decode(request_frames).body["rid"]
        body = {"rid": rid, "token": None if refused else (token or self.token()),
                "exp": int(self.clock.time()) + LIFETIME, "revocations": [{"identity": "vm9", "up_to": 2}],
                "code": "unknown_key" if refused else None, "reason": "revoked" if refused else None}
        return self.messages.build(f"vault.token.{self.proxy.name}", body, sender=sender)


def test_asks_at_once_then_backs_off_with_jitter_until_answered(tmp_path):
    w = World(tmp_path)
    s = w.session
    assert s.next_token_request == w.clock.monotonic()
    first = s.token_step()
    req = wire.decode(first)
    assert req.topic == "vault.req.vm1" and req.token is None and req.body["op"] == "token"
    assert req.body["key_version"] == 1
    waits = []
    for _ in range(8):
        waits.append(round(s.next_token_request - w.clock.monotonic(), 3))
        w.clock.advance(waits[-1])
        assert s.token_step() is not None
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, TOKEN_RETRY_MAX, TOKEN_RETRY_MAX, TOKEN_RETRY_MAX]
    assert s.deadlines(connected=True) == [s.next_token_request] and s.deadlines(connected=False) == []


def test_a_reply_installs_the_token_applies_revocations_and_renews_at_half_life(tmp_path):
    w = World(tmp_path)
    s = w.session
    frames = s.token_step()
    assert s.vault_message(w.reply(frames)) is None
    assert w.proxy.token_valid() and w.installed == [w.clock.time()]
    assert w.proxy.verifier.revoked["vm9"] == 2
    assert s.next_token_request == pytest.approx(w.clock.monotonic() + LIFETIME / 2)
    w.clock.advance(LIFETIME / 2 - 1)
    assert s.token_step() is None  # not yet: rescheduled
    w.clock.advance(1)
    renew = s.token_step()
    assert wire.decode(renew).body["op"] == "token"  # half-life: renew
    s.vault_message(w.reply(renew))
    assert len(w.installed) == 2 and s.token_step() is None
    # A reconnect renews at once, whatever the token's age.
    s.reconnected()
    assert s.next_token_request == w.clock.monotonic() and s.token_step() is not None


def test_replies_not_ours_or_not_from_the_vault_install_nothing(tmp_path):
    w = World(tmp_path)
    s = w.session
    frames = s.token_step()
    forged = w.reply(frames, sender="admin")
    refusal = s.vault_message(forged)
    assert isinstance(refusal, BadToken) and "not the vault" in str(refusal)
    other = w.messages.build("vault.token.vm1", {"rid": os.urandom(16), "token": w.token(), "exp": 1,
                                                 "revocations": None, "code": None, "reason": None}, sender="vault")
    assert s.vault_message(other) is None  # a reply to another process with our name
    assert s.vault_message(w.reply(frames, refused=True)) is None  # refused: logged, still no token
    assert not w.proxy.token_valid() and w.installed == []
    foreign = IdentityKeys.generate("vm1")  # a token for another signing key than ours
    frames = s.token_step()
    s.vault_message(w.reply(frames, token=w.token(foreign)))
    assert not w.proxy.token_valid()


def test_a_local_token_source_mints_without_a_request(tmp_path):
    made = []

    class Local:
        registry_auth = None

        def own_token(self, keys):
            made.append(keys.version)
            return w.token(keys)

    w = World(tmp_path, token_source=Local())
    assert w.session.token_step() is None  # nothing to send
    assert made == [1] and w.proxy.token_valid() and len(w.installed) == 1
    assert VaultTokens().own_token(w.keys) is None and VaultTokens.registry_auth is None


def test_secrets_are_asked_with_a_token_retried_and_opened(tmp_path):
    from actors.secretstore import seal_for

    w = World(tmp_path)
    s = w.session
    s.want_secret("smtp_password")
    assert s.secret_requests() == []  # no token yet
    s.vault_message(w.reply(s.token_step()))
    (req,) = s.secret_requests()
    assert wire.decode(req).body["secret"] == "smtp_password"
    assert s.secret_requests() == []  # retried later, not at once
    w.clock.advance(1.0)
    (again,) = s.secret_requests()
    rid = wire.decode(again).body["rid"]
    sealed = seal_for(w.keys.curve_public, b"hunter2")
    s.vault_message(w.messages.build("vault.secret.vm1", {"rid": rid, "secret": "smtp_password", "sealed": sealed,
                                                         "code": None, "reason": None}, sender="vault"))
    assert w.secrets == [("smtp_password", b"hunter2", None)] and s.secrets_wanted == {}
    s.want_secret("rpc_password")
    w.clock.advance(0)
    (req,) = s.secret_requests()
    s.vault_message(w.messages.build("vault.secret.vm1", {
        "rid": wire.decode(req).body["rid"], "secret": "rpc_password", "sealed": None, "code": "not_granted",
        "reason": "policy does not let vm1 read secret 'rpc_password'"}, sender="vault"))
    assert w.secrets[-1] == ("rpc_password", None, "policy does not let vm1 read secret 'rpc_password'")


def test_a_rotated_key_file_is_detected_and_installed(tmp_path):
    w = World(tmp_path)
    s = w.session
    s.vault_message(w.reply(s.token_step()))
    assert not s.keys_rotated()  # unchanged
    w.keys.save(w.key_file)  # rewritten with the same version: not a rotation
    assert not s.keys_rotated() and w.proxy.token_valid()
    w.key_file.write_text("not json")
    assert not s.keys_rotated() and s.keys.version == 1  # unreadable: the current keys stay
    new = IdentityKeys.generate("vm1", version=2)
    new.save(w.key_file)
    assert s.keys_rotated()
    assert s.keys.version == 2 and s.keys.sign_public == new.sign_public and not w.proxy.token_valid()
    assert wire.decode(s.token_step()).body["key_version"] == 2


def test_the_vault_s_token_source_mints_locally_and_verifies_requests_against_the_registry(home):
    """The Vault's runtime gets LocalTokens (Vault.runtime_options): its own token is made from
    the registry and the policy, and untokened vault.req.* are checked against registered keys."""
    from actors.vault import LocalTokens, Vault
    from proto.errors import UnknownIdentity

    vault = Vault(home)
    options = vault.runtime_options()
    assert isinstance(options["token_source"], LocalTokens) and options["intake"] is vault.intake
    source = options["token_source"]
    keys = IdentityKeys.load(home.key_file("vault"))
    tok = tokens.TokenVerifier(home.vault_public, lambda: 0).check(source.own_token(keys), sender="vault")
    assert (tok.identity, tok.key, tok.key_version) == ("vault", keys.sign_public, keys.version)
    vm1 = IdentityKeys.load(home.key_file("vm1"))
    assert bytes(source.registry_auth("vm1", vm1.version)) == vm1.sign_public
    with pytest.raises(UnknownIdentity):
        source.registry_auth("vm1", vm1.version + 1)
    with pytest.raises(UnknownIdentity):
        source.registry_auth("nobody", 1)
