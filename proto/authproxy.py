"""AuthProxy: every process's signer and gatekeeper, without sockets.

Outbound it signs messages and attaches the current token, builds token and
secret requests, and says when the token needs renewing. Inbound it decodes,
validates the body against its topic family's schema, checks the token
(pinned Vault signature, expiry, revocation, publish grant for the topic),
the sender's signature, and the replay window, in that order, raising a
:class:`~proto.errors.DctrlError` with a reason for anything it refuses.

Replay protection does not rest on clocks: each sender stamps a persisted
boot counter and a per-boot sequence. The guard keeps the highest sequence
of the most recent boots per sender (several boots can be live at once, e.g.
an actor and an operator's ``dctrl pub`` as the same identity) and refuses
anything at or below it, or from a boot older than every tracked one.
Receivers that act on commands persist the guard (``journal_file``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict

import nacl.signing

from keys.files import write_json
from keys.identity import IdentityKeys

from . import token as tokens
from . import wire
from .errors import BadToken, ProtocolError, Replayed, UnknownTopic
from .topics import REGISTRY

log = logging.getLogger(__name__)

TOKEN_REQUEST_PREFIX = "vault.req."


class NoToken(RuntimeError):
    """Publishing needs a valid token and this process has none (yet)."""


class ReplayGuard:
    """Per-sender (boot, seq) high-water marks; optionally persisted to a JSON journal.

    The journal is written by :meth:`flush` (the runtime calls it after each batch), at most
    once per ``flush_interval`` seconds, atomically: never on the receive path, where a
    durable write per message would cost two fsyncs. A crash can lose the last interval's
    marks, so a receiver that acts on commands must also remember command ids durably
    (MachineMgr's command journal does, and refuses expired commands): the guard is the
    fast first line, not the only one."""

    def __init__(self, boots_per_sender=8, journal_file=None, flush_interval=1.0):
        self.boots_per_sender = boots_per_sender
        self.journal_file = journal_file
        self.flush_interval = flush_interval
        self.dirty = False
        self._flushed_at = 0.0
        self.seen: dict[str, dict[int, int]] = {}
        if journal_file and os.path.exists(journal_file):
            with open(journal_file) as f:
                self.seen = {s: {int(b): q for b, q in boots.items()} for s, boots in json.load(f).items()}

    def check(self, sender: str, boot: int, seq: int) -> None:
        boots = self.seen.get(sender)
        if not boots:
            return
        high = boots.get(boot)
        if high is not None:
            if seq <= high:
                raise Replayed(f"{sender} boot {boot} seq {seq} already seen (high-water {high})")
        elif len(boots) >= self.boots_per_sender and boot < min(boots):
            raise Replayed(f"{sender} boot {boot} is older than every tracked boot")

    def record(self, sender: str, boot: int, seq: int) -> None:
        boots = self.seen.setdefault(sender, {})
        boots[boot] = seq
        while len(boots) > self.boots_per_sender:
            del boots[min(boots)]
        self.dirty = bool(self.journal_file)

    def flush(self, force: bool = False) -> None:
        """Persist the marks if they changed (at most once per ``flush_interval`` unless forced)."""
        if not self.dirty or (not force and time.monotonic() - self._flushed_at < self.flush_interval):
            return
        write_json(self.journal_file, self.seen, mode=0o600)
        self.dirty, self._flushed_at = False, time.monotonic()


class AuthProxy:
    def __init__(self, keys: IdentityKeys, vault_public: nacl.signing.VerifyKey, boot: int, *,
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
        self.replay = replay or ReplayGuard()
        self.registry_auth = registry_auth
        self.token: tokens.Token | None = None
        self.pending: OrderedDict[bytes, str] = OrderedDict()  # request id -> op

    # -- identity and token ---------------------------------------------------

    @property
    def name(self) -> str:
        return self.keys.name

    def set_keys(self, keys: IdentityKeys) -> None:
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
        self.replay.check(msg.sender, msg.boot, msg.seq)
        self.replay.record(msg.sender, msg.boot, msg.seq)
        return msg

    def _untokened_key(self, msg: wire.Message) -> nacl.signing.VerifyKey:
        if self.registry_auth is None or msg.topic != TOKEN_REQUEST_PREFIX + msg.sender:
            raise BadToken("message carries no token")
        return self.registry_auth(msg.sender, msg.body["key_version"])


def describe_rejection(exc: Exception) -> tuple[str, str]:
    """(code, reason) for the wire, from any refusal."""
    code = getattr(exc, "code", "error")
    return code, str(exc)[:500] or type(exc).__name__


__all__ = ["AuthProxy", "ReplayGuard", "NoToken", "describe_rejection", "ProtocolError"]
