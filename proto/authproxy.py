"""AuthProxy: every process's signer and gatekeeper, without sockets.

Outbound it signs messages and attaches the current token, builds token and
secret requests, and says when the token needs renewing. Inbound it decodes,
validates the body against its topic family's schema, checks the token
(pinned Vault signature, expiry, revocation, publish grant for the topic),
the sender's signature, and the replay window, in that order, raising a
:class:`~proto.errors.DctrlError` with a reason for anything it refuses.

Replay protection: each sender stamps a boot id unique to the process (a
persisted counter and a random part) and a per-boot sequence. The guard keeps
the highest sequence of each boot per sender (several boots can be live at
once, e.g. an actor and an operator's ``dctrl pub`` as the same identity) and
refuses anything at or below it, as long as that boot's tokens live; after
that the token's expiry refuses its messages. Every runtime persists the guard
(``journal_file``), so a restart forgets nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from typing import Protocol

import nacl.signing

from . import token as tokens
from . import wire
from .errors import BadToken, DctrlError, ProtocolError, Replayed, UnknownTopic
from .topics import REGISTRY

log = logging.getLogger(__name__)

TOKEN_REQUEST_PREFIX = "vault.req."


class SignerKeys(Protocol):
    """What the AuthProxy needs of an identity's keys (``keys.identity.IdentityKeys`` is one;
    proto imports nothing above it)."""

    name: str
    version: int

    @property
    def signing_key(self) -> nacl.signing.SigningKey: ...

    @property
    def sign_public(self) -> bytes: ...


class NoToken(DctrlError, RuntimeError):
    """Publishing needs a valid token and this process has none (yet)."""

    code = "no_token"


class ReplayGuard:
    """Per-sender (boot, seq) high-water marks; optionally persisted to a JSON journal.

    Boots are compared only for equality: a boot id is unique per process of an identity
    (a counter and a random part, see :func:`boot_id`), never ordered across processes (an
    agent's counter on its machine and the home's for ``dctrl pub --as NAME`` are separate).
    Each tracked boot remembers the latest token expiry it was seen with. A boot's entry is
    dropped only when that expiry has passed (every message of that boot accepted before
    carries a token at least as old, so the expiry check refuses it from then on), or when
    more than ``boots_per_sender`` are tracked, least recently used first and expired ones
    before live ones. A new boot arriving while ``boots_per_sender`` boots with live tokens are
    tracked is refused: no sender can push a live sender out of the window.

    The journal is written by :meth:`flush` (the runtime calls it after each batch), at most
    once per ``flush_interval`` seconds, atomically: never on the receive path, where a
    durable write per message would cost two fsyncs. A crash can lose the last interval's
    marks, so a receiver that acts on commands must also remember command ids durably
    (MachineMgr's command journal does, and refuses expired commands): the guard is the
    fast first line, not the only one."""

    def __init__(self, boots_per_sender=128, journal_file=None, flush_interval=1.0, untokened_ttl=900,
                 clock=time.time, save=None):
        """``save(path, data)`` writes the journal (proto has no disk writer of its own: the
        runtime gives :func:`keys.files.atomic_write`, which keeps the file 0600)."""
        if journal_file is not None and save is None:
            raise ValueError("a replay journal_file needs save=, e.g. keys.files.atomic_write")
        self.boots_per_sender = boots_per_sender
        self.journal_file = journal_file
        self.save = save
        self.flush_interval = flush_interval
        self.untokened_ttl = untokened_ttl  # how long a boot seen only untokened (vault.req) is kept
        self.clock = clock
        self.dirty = False
        self._flushed_at = 0.0
        # sender -> boot -> high-water seq, least recently used first; and boot -> expiry
        self.seen: dict[str, dict[int, int]] = {}
        self.expires: dict[str, dict[int, float]] = {}
        if journal_file and os.path.exists(journal_file):
            self._load(journal_file)

    def _load(self, path):
        now = self.clock()
        with open(path) as f:
            data = json.load(f)
        for sender, boots in data.items():
            for b, entry in boots.items():
                # [seq, expiry]; a bare seq is an older journal's: keep it as long as a token lives
                seq, exp = (entry, now + self.untokened_ttl) if isinstance(entry, int) else entry
                self.seen.setdefault(sender, {})[int(b)] = seq
                self.expires.setdefault(sender, {})[int(b)] = exp

    def check(self, sender: str, boot: int, seq: int, now: float | None = None) -> None:
        boots = self.seen.get(sender)
        if not boots:
            return
        high = boots.get(boot)
        if high is not None:
            if seq <= high:
                raise Replayed(f"{sender} boot {boot} seq {seq} already seen (high-water {high})")
        elif len(boots) >= self.boots_per_sender:
            now = self.clock() if now is None else now
            if not any(e <= now for e in self.expires[sender].values()):
                raise Replayed(f"{sender} has {len(boots)} boots with live tokens tracked: "
                               f"a new boot ({boot}) is refused until one's token expires")

    def record(self, sender: str, boot: int, seq: int, expires: float | None = None,
               now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if expires is None:
            expires = now + self.untokened_ttl
        boots = self.seen.setdefault(sender, {})
        exps = self.expires.setdefault(sender, {})
        boots.pop(boot, None)
        boots[boot] = seq  # most recently used last
        exps[boot] = max(exps.get(boot, expires), expires)
        if len(boots) > self.boots_per_sender:
            for b in [b for b, e in exps.items() if e <= now and b != boot]:
                del boots[b], exps[b]
            while len(boots) > self.boots_per_sender:
                b = next(iter(boots))
                del boots[b], exps[b]
        self.dirty = bool(self.journal_file)

    def flush(self, force: bool = False) -> None:
        """Persist the marks if they changed (at most once per ``flush_interval`` unless forced)."""
        if not self.dirty or (not force and time.monotonic() - self._flushed_at < self.flush_interval):
            return
        now = self.clock()
        for sender, exps in list(self.expires.items()):  # boots whose tokens have all expired
            for b in [b for b, e in exps.items() if e <= now]:
                del self.seen[sender][b], exps[b]
            if not exps:
                del self.seen[sender], self.expires[sender]
        data = {s: {str(b): [q, math.ceil(self.expires[s][b])] for b, q in boots.items()}
                for s, boots in self.seen.items()}
        self.save(self.journal_file, json.dumps(data, sort_keys=True).encode())
        self.dirty, self._flushed_at = False, time.monotonic()


def boot_id(counter: int) -> int:
    """A boot id from a persisted per-file counter: the counter in the high bits, 24 random
    bits below. Two processes of one identity counting in separate files (the agent's
    ``state/boot`` on its machine, the home's ``run/NAME.boot`` for ``dctrl pub --as NAME``)
    get different ids (but for a 2**-24 chance); each file's ids still only grow."""
    return (counter << 24) | secrets.randbits(24)


class AuthProxy:
    def __init__(self, keys: SignerKeys, vault_public: nacl.signing.VerifyKey, boot: int, *,
                 clock=time.time, schemas=REGISTRY, replay: ReplayGuard | None = None,
                 registry_auth=None):
        """``registry_auth(sender, key_version) -> VerifyKey`` is given only to the Vault:
        it lets untokened ``vault.req.*`` messages through, verified against the registry."""
        self.keys = keys
        self.signing_key = keys.signing_key
        self.boot = boot
        self.seq = 0
        self.clock = clock
        self.schemas = schemas
        self.verifier = tokens.TokenVerifier(vault_public, clock)
        self.replay = replay or ReplayGuard(clock=clock)
        self.replay.clock = clock
        self.registry_auth = registry_auth
        self.token: tokens.Token | None = None
        self.pending: OrderedDict[bytes, str] = OrderedDict()  # request id -> op

    # -- identity and token ---------------------------------------------------

    @property
    def name(self) -> str:
        return self.keys.name

    def set_keys(self, keys: SignerKeys) -> None:
        """Switch to rotated keys; the old token stays usable until renewed."""
        self.keys, self.signing_key = keys, keys.signing_key

    def set_token(self, raw: bytes) -> tokens.Token:
        tok = self.verifier.check(raw, sender=self.name)
        if tok.key != self.keys.sign_public:
            raise BadToken("token is for another signing key than ours")
        self.token = tok
        return tok

    def token_valid(self) -> bool:
        return self.token is not None and self.clock() < self.token.expires_at

    def renew_in(self) -> float:
        """Seconds until the token should be renewed (half its life); 0 if now."""
        if self.token is None:
            return 0.0
        half = self.token.issued_at + (self.token.expires_at - self.token.issued_at) / 2
        return max(0.0, half - self.clock())

    def request(self, op: str, secret: str | None = None) -> list[bytes]:
        """A signed, untokened ``vault.req.NAME`` message asking for a token or a secret."""
        rid = os.urandom(16)
        self.pending[rid] = op
        while len(self.pending) > 64:
            self.pending.popitem(last=False)
        body = {"rid": rid, "op": op, "key_version": self.keys.version, "secret": secret}
        return self._seal(TOKEN_REQUEST_PREFIX + self.name, body, token=None)

    def accept_token_reply(self, msg: wire.Message) -> tokens.Token | None:
        """Install the token from a verified ``vault.token.NAME`` reply to one of our requests.

        Returns None for a reply to another process of the same identity
        (an operator's ``dctrl pub --as NAME``, say); raises if the Vault refused us.
        """
        if self.pending.pop(msg.body["rid"], None) != "token":
            return None
        if msg.body.get("token") is None:
            raise BadToken(f"vault refused: {msg.body.get('code')}: {msg.body.get('reason')}")
        return self.set_token(msg.body["token"])

    # -- outbound -------------------------------------------------------------

    def seal(self, topic: str, body: dict) -> list[bytes]:
        """Sign ``body`` for ``topic`` with our token; raises NoToken without a valid one."""
        if not self.token_valid():
            raise NoToken(f"{self.name} has no valid token yet")
        schema = self.schemas.schema_for(topic)
        if schema is None:
            raise UnknownTopic(f"no schema for topic {topic}")
        schema.check(body)
        return self._seal(topic, body, self.token.raw)

    def _seal(self, topic, body, token) -> list[bytes]:
        self.seq += 1
        payload = wire.pack_payload(self.name, self.boot, self.seq, token, body,
                                    ts_ms=int(self.clock() * 1000))
        return wire.seal(self.signing_key, topic, payload)

    # -- inbound --------------------------------------------------------------

    def open(self, frames) -> wire.Message:
        """Decode and fully verify a received message, or raise with the reason."""
        msg = wire.decode(frames)
        schema = self.schemas.schema_for(msg.topic)
        if schema is None:
            raise UnknownTopic(f"no schema for topic {msg.topic}")
        schema.check(msg.body)
        if msg.token is None:
            verify_key = self._untokened_key(msg)
        else:
            tok = self.verifier.check(msg.token, sender=msg.sender, topic_frame=msg.topic_bytes)
            verify_key = tok.verify_key()
        wire.verify_signature(verify_key, msg)
        now = self.clock()
        self.replay.check(msg.sender, msg.boot, msg.seq, now)
        self.replay.record(msg.sender, msg.boot, msg.seq, None if msg.token is None else tok.expires_at, now)
        return msg

    def _untokened_key(self, msg: wire.Message) -> nacl.signing.VerifyKey:
        if self.registry_auth is None or msg.topic != TOKEN_REQUEST_PREFIX + msg.sender:
            raise BadToken("message carries no token")
        return self.registry_auth(msg.sender, msg.body["key_version"])


def describe_rejection(exc: Exception) -> tuple[str, str]:
    """(code, reason) for the wire, from any refusal."""
    code = getattr(exc, "code", "error")
    return code, str(exc)[:500] or type(exc).__name__


__all__ = ["AuthProxy", "ReplayGuard", "boot_id", "NoToken", "describe_rejection", "ProtocolError"]
