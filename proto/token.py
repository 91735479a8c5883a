"""Capability tokens issued by the Vault.

A token is ``payload || signature``: a msgpack map signed (Ed25519) by the
Vault's token key, which every process pins. It binds an identity to its
current signing key and its grants for a short time::

    {"v": 1, "tid": <16 bytes>, "sub": "vm1", "role": "machine",
     "key": <32-byte Ed25519 verify key>, "kv": 3,
     "pub": ["machine.vm1.", ...], "subs": ["cmd.machine.vm1.", ...],
     "iat": <unix s>, "exp": <unix s>}

Grants are wire prefixes: ``""`` (everything) or dot-terminated.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from .errors import BadToken, DecodeError, NotGranted, TokenExpired, TokenRevoked
from .wire import NAME_RE, SIG_LEN, unpack

TOKEN_CONTEXT = b"dctrl-token/1\x00"
MAX_TOKEN = 4096
TOKEN_KEYS = frozenset(("v", "tid", "sub", "role", "key", "kv", "pub", "subs", "iat", "exp"))


@dataclass(frozen=True)
class Token:
    tid: bytes
    identity: str
    role: str
    key: bytes
    key_version: int
    publish: tuple[bytes, ...]
    subscribe: tuple[bytes, ...]
    issued_at: int
    expires_at: int
    raw: bytes

    def may_publish(self, topic_frame: bytes) -> bool:
        return grants_cover(self.publish, topic_frame)

    def verify_key(self) -> nacl.signing.VerifyKey:
        return nacl.signing.VerifyKey(self.key)


def grants_cover(grants, topic_frame: bytes) -> bool:
    """True if any grant prefix covers the dot-terminated ``topic_frame``."""
    return any(topic_frame.startswith(g) for g in grants)


def issue(vault_key: nacl.signing.SigningKey, *, identity, role, key: bytes, key_version: int,
          publish, subscribe, issued_at: int, lifetime: int) -> bytes:
    payload = msgpack.packb(
        {
            "v": 1,
            "tid": os.urandom(16),
            "sub": identity,
            "role": role,
            "key": bytes(key),
            "kv": key_version,
            "pub": [g.decode() for g in publish],
            "subs": [g.decode() for g in subscribe],
            "iat": issued_at,
            "exp": issued_at + lifetime,
        },
        use_bin_type=True,
    )
    return payload + vault_key.sign(TOKEN_CONTEXT + payload).signature


def parse(raw: bytes, vault_verify: nacl.signing.VerifyKey) -> Token:
    """Check the Vault's signature and the shape; does not check expiry or revocation."""
    if not isinstance(raw, bytes) or not SIG_LEN < len(raw) <= MAX_TOKEN:
        raise BadToken("token missing or of impossible size")
    payload, sig = raw[:-SIG_LEN], raw[-SIG_LEN:]
    try:
        vault_verify.verify(TOKEN_CONTEXT + payload, sig)
    except nacl.exceptions.BadSignatureError:
        raise BadToken("token not signed by the pinned Vault key") from None
    try:
        p = unpack(payload)
    except DecodeError as exc:
        raise BadToken(f"token payload: {exc}") from None
    if not isinstance(p, dict) or set(p) != TOKEN_KEYS or type(p["v"]) is not int or p["v"] != 1:
        raise BadToken("token payload has the wrong fields")
    ok = (
        isinstance(p["tid"], bytes) and isinstance(p["sub"], str) and NAME_RE.fullmatch(p["sub"])
        and isinstance(p["role"], str) and isinstance(p["key"], bytes) and len(p["key"]) == 32
        and type(p["kv"]) is int and type(p["iat"]) is int and type(p["exp"]) is int
        and isinstance(p["pub"], list) and isinstance(p["subs"], list)
        and all(isinstance(g, str) for g in p["pub"] + p["subs"])
    )
    if not ok:
        raise BadToken("token fields have the wrong types")
    return Token(p["tid"], p["sub"], p["role"], p["key"], p["kv"],
                 tuple(g.encode() for g in p["pub"]), tuple(g.encode() for g in p["subs"]),
                 p["iat"], p["exp"], raw)


class TokenVerifier:
    """Verifies tokens against the pinned Vault key, a clock and a revocation list.

    Signature checks are cached (bounded LRU keyed by the token bytes); expiry
    and revocation are checked on every use.
    """

    def __init__(self, vault_verify: nacl.signing.VerifyKey, clock, cache_size=1024):
        self.vault_verify = vault_verify
        self.clock = clock
        self.cache: OrderedDict[bytes, Token] = OrderedDict()
        self.cache_size = cache_size
        # identity -> highest revoked key version (tokens with kv <= it are refused)
        self.revoked: dict[str, int] = {}

    def check(self, raw: bytes, *, sender: str, topic_frame: bytes | None = None) -> Token:
        tok = self.cache.get(raw)
        if tok is None:
            tok = parse(raw, self.vault_verify)
            self.cache[raw] = tok
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(raw)
        if tok.identity != sender:
            raise BadToken(f"token belongs to {tok.identity}, message claims {sender}")
        now = self.clock()
        if now >= tok.expires_at:
            raise TokenExpired(f"token of {sender} expired {int(now - tok.expires_at)} s ago")
        if tok.key_version <= self.revoked.get(sender, -1):
            raise TokenRevoked(f"{sender}'s key version {tok.key_version} is revoked")
        if topic_frame is not None and not tok.may_publish(topic_frame):
            raise NotGranted(f"{sender}'s token does not grant publishing {topic_frame.decode()[:-1]}")
        return tok

    def revoke(self, identity: str, up_to_version: int) -> None:
        if up_to_version > self.revoked.get(identity, -1):
            self.revoked[identity] = up_to_version
