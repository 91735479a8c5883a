"""The Vault's handlers on the fake runtime (actors/testing.py).

The live tests (test_security.py, test_vault_limits.py) show the Vault in a running network;
these pin orderings a live run only meets by chance.
"""

from __future__ import annotations

import os

import nacl.signing

from actors.testing import FakeClock, FakeRuntime
from actors.vault import Vault
from keys.registry import Registry
from proto import token as tokens


def _vault(home):
    clock = FakeClock()
    # (no home for the kit: its check of senders' grants would read the policy these tests break)
    rt = FakeRuntime(Vault(home, clock=clock.time), name="vault", clock=clock).start()
    return rt, clock


def _ask_token(rt, name):
    rid = os.urandom(16)
    version = Registry.load(rt.actor.home.registry_path).current(name).version
    rt.send(f"vault.req.{name}", {"rid": rid, "op": "token", "key_version": version, "secret": None}, sender=name)
    (reply,) = rt.bodies(f"vault.token.{name}", rid=rid)
    assert reply["code"] is None, reply
    return tokens.parse(reply["token"], nacl.signing.VerifyKey(bytes(rt.actor.home.vault_public)))


def test_a_token_asked_for_right_after_a_policy_edit_carries_the_new_grants(home):
    """The broker cuts vm1 off as soon as it sees the edit and vm1 asks for a token at once,
    before the Vault's once-a-second reload has run (test_policy_reload_applies_without_restart
    failed so in CI): the answer must come from the edited policy."""
    rt, _ = _vault(home)
    before = _ask_token(rt, "vm1")
    assert not any(p.startswith(b"debug.vm1") for p in before.publish)
    with open(home.policy_path, "a") as f:
        f.write('\n[identity.vm1]\npublish = ["debug.{self}"]\n')
    after = _ask_token(rt, "vm1")  # no job has run: the request itself saw the edit
    assert b"debug.vm1." in after.publish
    rt.stop()


def test_a_policy_edit_that_does_not_load_keeps_the_grants_in_force(home):
    rt, _ = _vault(home)
    before = _ask_token(rt, "vm1")
    with open(home.policy_path, "a") as f:
        f.write('\n[identity.vm1\n')  # not TOML
    after = _ask_token(rt, "vm1")
    assert after.publish == before.publish
    assert rt.health()[0] == "degraded"
    rt.stop()
