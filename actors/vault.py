"""Vault: issues capability tokens, publishes revocations, hands out secrets.

Token requests arrive on ``vault.req.NAME`` without a token, signed with
NAME's registered Ed25519 key of the version the request names; the Vault
checks that signature against the registry (refusing unknown, revoked or
expired keys), looks up NAME's grants in the policy and answers on
``vault.token.NAME`` with a token signed by its own pinned token key.

Secrets (SMTP, RPC passwords) live encrypted at rest in a
:class:`~actors.secretstore.SecretStore`. A secret request is answered only
for identities the policy's ``[secrets]`` table names, sealed to the
requester's Curve public key, so the plaintext never crosses the bus or
reaches the event log.

The Vault issues its own token directly: its runtime is given
:class:`LocalTokens` (``Runtime(vault, settings, **vault.runtime_options())``)
instead of the default token source, which asks the Vault over the bus; the
same object verifies the untokened ``vault.req.*`` against the registry, and
the runtime takes those requests through the Vault's :class:`RequestIntake`.
The registry and policy are reloaded when their files change; every
revocation in force is published on ``vault.revoked`` at once, 2 s and 5 s
later, and every ``revocations_interval`` seconds.
"""

from __future__ import annotations

import collections
import logging
import os
import time

import nacl.signing

from keys.files import file_stamp, fsync_dir
from keys.home import Home
from keys.policy import Policy, load_registry_and_policy
from keys.registry import Registry
from proto import token as tokens
from proto import wire
from proto.errors import DctrlError, UnknownIdentity
from proto.sealed import seal_for

from .runtime import Actor, every, on
from .secretstore import SecretStore, SecretStoreError, UnknownSecret, load_key_file, uses_passphrase

log = logging.getLogger(__name__)


PASSPHRASE_ENV = "DCTRL_VAULT_PASSPHRASE"


def store_passphrase(home: Home) -> str:
    """The secret store's passphrase: $DCTRL_VAULT_PASSPHRASE, else the 0600 file
    named by ``[vault] passphrase_file``."""
    from keys.files import read_secret_file

    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    path = home.config["vault"].get("passphrase_file")
    if path:
        return read_secret_file(home.root / path).decode().rstrip("\n")
    raise DctrlError(f"the secret store is keyed by a passphrase: set ${PASSPHRASE_ENV} "
                     "or [vault] passphrase_file (a 0600 file) in config.toml")


def open_store(home: Home) -> SecretStore:
    """Open HOME/vault/secrets.json with its key file or its passphrase, whichever it uses."""
    path = home.vault_dir / "secrets.json"
    try:
        if uses_passphrase(path):
            return SecretStore.open(path, passphrase=store_passphrase(home))
        return SecretStore.open(path, key=load_key_file(home.vault_dir / "secrets.key"))
    except SecretStoreError as exc:
        raise DctrlError(f"cannot open the secret store: {exc}") from None


def rekey(home: Home, *, passphrase: str | None) -> SecretStore:
    """Re-encrypt every secret under a new passphrase (or, with None, a new key file)."""
    old = open_store(home)
    path = home.vault_dir / "secrets.json"
    new_path = path.with_name("secrets.json.new")
    new_path.unlink(missing_ok=True)
    if passphrase is None:
        key_file = home.vault_dir / "secrets.key"
        key_file.unlink(missing_ok=True)
        from .secretstore import create_key_file

        create_key_file(key_file)
        new = SecretStore.create(new_path, key=load_key_file(key_file))
    else:
        new = SecretStore.create(new_path, passphrase=passphrase)
    for name in old.names():
        new.set(name, old.get(name))
    os.replace(new_path, path)  # the new store was written atomically: a rename, then it is durable
    fsync_dir(path.parent)
    return open_store(home) if passphrase is None else SecretStore.open(path, passphrase=passphrase)


class RequestIntake:
    """``vault.req.NAME`` before verification: cheap refusal, then fair service.

    The runtime offers every request here as it reads it, before decoding or checking a
    signature. A request is refused at once when NAME (from the topic, which the broker binds
    to the publisher's grants) is not in the registry, when NAME's token bucket is empty
    (``burst`` requests, refilled at ``rate`` a second), or when NAME already has
    ``per_sender`` requests waiting. Accepted requests wait in one queue per NAME and are
    served round-robin over the NAMEs with requests waiting, a bounded batch per pass of the
    loop: one identity's flood costs the others one turn in each round, never a place behind
    the whole flood. Memory and work per request are O(1), and bounded by the registry.
    """

    prefix = b"vault.req."

    def __init__(self, known, *, rate: float, burst: float, per_sender=4, clock=time.monotonic):
        self.known = known  # name (str) -> bool: in the registry
        self.rate, self.burst, self.per_sender, self.clock = rate, burst, per_sender, clock
        self.buckets: dict[str, list] = {}  # name -> [tokens, last refill (monotonic)]
        self.queues: dict[str, collections.deque] = {}
        self.ready: collections.deque = collections.deque()  # names with requests waiting, in turn
        self.pending = 0
        self.refused: collections.Counter = collections.Counter()  # name -> refused since last summary

    def offer(self, frames) -> bool:
        name = frames[0][len(self.prefix):-1]
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            return False
        if not wire.NAME_RE.fullmatch(name) or not self.known(name):
            return False  # (cannot be verified: no key to verify it with)
        now = self.clock()
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = [self.burst, now]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        queue = self.queues.get(name)
        if bucket[0] < 1 or (queue is not None and len(queue) >= self.per_sender):
            self.refused[name] += 1
            return False
        bucket[0] -= 1
        if queue is None:
            queue = self.queues[name] = collections.deque()
            self.ready.append(name)
        queue.append(frames)
        self.pending += 1
        return True

    def take(self, n: int) -> list:
        out = []
        while self.ready and len(out) < n:
            name = self.ready.popleft()
            queue = self.queues[name]
            out.append(queue.popleft())
            self.pending -= 1
            if queue:
                self.ready.append(name)
            else:
                del self.queues[name]
        return out


class LocalTokens:
    """The Vault's token source (see :mod:`actors.session`): its own token is minted here, from
    the registry and the policy, never asked for over the bus; and untokened ``vault.req.NAME``
    messages are verified against NAME's registered key (:meth:`Vault.untokened_key`)."""

    def __init__(self, vault: "Vault"):
        self.vault = vault

    def own_token(self, keys) -> bytes:
        return self.vault.issue(keys.name, keys.version)

    def registry_auth(self, sender: str, key_version: int):
        return self.vault.untokened_key(sender, key_version)


class Vault(Actor):
    def __init__(self, home: Home, *, clock=time.time, requests_per_minute=30):
        self.home = home
        self.clock = clock
        cfg = home.config["vault"]
        self.lifetime = int(cfg["token_lifetime"])
        self.revocations_interval = cfg["revocations_interval"]
        self.token_key: nacl.signing.SigningKey = home.vault_signing_key()
        if bytes(self.token_key.verify_key) != bytes(home.vault_public):
            raise DctrlError("vault/token.key does not match [vault] token_public_key in config.toml")
        self.registry = Registry.load(home.registry_path)
        self.policy = Policy.load(home.policy_path)
        self._stamps = (file_stamp(home.registry_path), file_stamp(home.policy_path))
        self.not_applied = None  # why the last edit of registry.json or policy.toml was refused (health)
        self.secrets = open_store(home)
        self.requests_per_minute = requests_per_minute
        # a bucket of requests_per_minute, refilled at that rate: as many as the old sliding
        # minute allowed, but refused before verification, in O(1)
        self.intake = RequestIntake(lambda name: name in self.registry.data["identities"],
                                    rate=requests_per_minute / 60, burst=requests_per_minute)
        self._last_revocations = None
        self._revocations_due = [0.0]
        self.issued = 0

    # -- the Vault's own token ----------------------------------------------

    def setup(self):
        self.publish_revocations()  # queued until the runtime installs our own token

    def runtime_options(self) -> dict:
        """What the Vault's Runtime is given beyond the actor: its token source and its intake."""
        return {"token_source": LocalTokens(self), "intake": self.intake}

    def issue(self, name: str, key_version: int) -> bytes:
        key = self.registry.key(name, key_version)  # raises if unknown, revoked or expired
        grants = self.policy.grants(name, key.role)
        self.issued += 1
        return tokens.issue(self.token_key, identity=name, role=key.role, key=key.sign, key_version=key.version,
                            publish=grants.publish, subscribe=grants.subscribe,
                            issued_at=int(self.clock()), lifetime=self.lifetime)

    def untokened_key(self, sender: str, key_version: int):
        """Verify key for an untokened vault.req from ``sender`` (used by the AuthProxy)."""
        return nacl.signing.VerifyKey(self.registry.key(sender, key_version).sign)

    # -- requests -----------------------------------------------------------

    @on("vault.req")
    def request(self, msg):
        """vault.req.NAME {"rid": <16 bytes>, "op": "token"|"secret", "key_version": 1, "secret": null}"""
        # The broker cuts off an identity whose grants changed the moment it sees the edit; the
        # identity reconnects and asks for a token at once. Answered from a policy a second old,
        # that token would carry the old grants for its whole lifetime: look at the files first
        # (two stats; a changed file is loaded before answering).
        self.reload()
        if msg.body["op"] == "token":
            self._answer_token(msg)
        else:
            self._answer_secret(msg)

    @on("vault.req", raw=True)
    def refused_request(self, d):
        """A request refused because its key version is unknown, revoked or past its grace
        gets an answer with the reason (its signature cannot be checked without that key, so
        the answer says only what the registry says of NAME's version; the requester accepts
        it only for a rid it sent)."""
        if d.error is None or not isinstance(d.error, UnknownIdentity):
            return
        msg = wire.decode(d.frames)  # decoded and schema-checked already, or it would not get here
        if msg.topic != f"vault.req.{msg.sender}":
            return
        rid, reason = msg.body["rid"], str(d.error)
        if msg.body["op"] == "token":
            self.publish(f"vault.token.{msg.sender}", {"rid": rid, "token": None, "exp": None,
                                                       "code": "unknown_key", "reason": reason})
        else:
            self.publish(f"vault.secret.{msg.sender}", {"rid": rid, "secret": msg.body.get("secret") or "",
                                                        "sealed": None, "code": "unknown_key", "reason": reason})

    @every(10)
    def summarise_refused_requests(self):
        refused, self.intake.refused = self.intake.refused, collections.Counter()
        if refused:
            log.warning("vault requests refused before verification (rate or queue limit) in the last 10 s: %s",
                        ", ".join(f"{n} x{c}" for n, c in refused.most_common(10)))

    def _answer_token(self, msg):
        name, rid = msg.sender, msg.body["rid"]
        try:
            raw = self.issue(name, msg.body["key_version"])
        except DctrlError as exc:
            log.warning("token refused for %s: %s", name, exc)
            self.publish(f"vault.token.{name}", {"rid": rid, "token": None, "exp": None,
                                                 "code": exc.code, "reason": str(exc)})
            return
        log.info("token issued to %s (key v%d, %d s)", name, msg.body["key_version"], self.lifetime)
        self.publish(f"vault.token.{name}", {"rid": rid, "token": raw, "exp": int(self.clock()) + self.lifetime,
                                             "revocations": self.registry.revocations(),
                                             "code": None, "reason": None})

    def _answer_secret(self, msg):
        name, rid, secret = msg.sender, msg.body["rid"], msg.body.get("secret") or ""
        reply = {"rid": rid, "secret": secret, "sealed": None, "code": None, "reason": None}
        if name not in self.policy.secret_readers(secret):
            reply.update(code="not_granted", reason=f"policy does not let {name} read secret {secret!r}")
        else:
            try:
                self.secrets.reload_if_changed()
                value = self.secrets.get(secret)
                curve = self.registry.key(name, msg.body["key_version"]).curve
                reply["sealed"] = seal_for(curve, value)
            except UnknownSecret:
                reply.update(code="unknown_secret", reason=f"no secret {secret!r} in the vault")
            except (SecretStoreError, UnknownIdentity) as exc:
                reply.update(code="vault_error", reason=str(exc))
        if reply["code"]:
            log.warning("secret %r refused to %s: %s", secret, name, reply["reason"])
        else:
            log.info("secret %r sealed for %s", secret, name)
        self.publish(f"vault.secret.{name}", reply)

    # -- registry, policy, revocations ---------------------------------------

    @every(1)
    def reload(self):
        stamps = (file_stamp(self.home.registry_path), file_stamp(self.home.policy_path))
        if stamps == self._stamps:
            return
        registry, policy, self.not_applied = load_registry_and_policy(self.home.registry_path,
                                                                      self.home.policy_path)
        if self.not_applied:
            log.error("reload failed, keeping the previous registry and policy: %s", self.not_applied)
        else:
            self.registry, self.policy = registry, policy
            log.info("reloaded registry and policy")
        self._stamps = stamps
        self.publish_revocations()

    def publish_revocations(self):
        """Publish every revocation in force. After a change, again 2 s and 5 s later:
        peers reconnecting then (cut off because their grants changed) miss the first."""
        revs = self.registry.revocations()
        now = time.monotonic()
        if revs != self._last_revocations:
            for r in revs:
                self.runtime.proxy.verifier.revoke(r["identity"], r["up_to"])
            log.info("revocations in force: %s", revs or "none")
            self._revocations_due = [now + 2, now + 5]
        self._last_revocations = revs
        self._revocations_due = [t for t in self._revocations_due if t > now] or [now + self.revocations_interval]
        self.publish("vault.revoked", {"revocations": revs})

    @every(0.5)
    def republish_revocations(self):
        if time.monotonic() >= self._revocations_due[0]:
            self.publish_revocations()

    def health(self):
        if self.not_applied:
            return "degraded", self.not_applied
        return "ok", f"{self.issued} tokens issued"
