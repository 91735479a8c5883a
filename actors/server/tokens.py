"""API tokens of the report server: named, scoped, expiring, stored hashed.

A token is ``dctrl_<id>_<secret>``: ``id`` (8 hex digits) finds its record, the SHA-256 of the
whole token is what is kept (``HOME/server_tokens.json``, 0600); the token itself is shown once, at
``dctrl server token add``. A token's 32 random bytes need no slow hash: nothing can be guessed
from a fast one. The server reloads the file when it changes, so a revocation takes effect at the
next request.

Scopes: ``public`` (the SpaceAPI, aggregates: counts and totals, no names), ``members`` (personal
data: members and one member), ``finance`` (invoices, payouts, income by source), ``events`` (the
event log, actors' health). Every token has ``public``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass

from keys.files import atomic_write, file_stamp
from proto.errors import ConfigError, DctrlError

SCOPES = ("public", "members", "finance", "events")
TOKEN_RE = re.compile(r"^dctrl_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TTL_RE = re.compile(r"^(\d{1,5})([smhdw])$")
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_TTL = 3 * 365 * 86400


def parse_ttl(text: str) -> int:
    """``30d``, ``12h``, ``2w``... in seconds (at most three years)."""
    m = TTL_RE.fullmatch(text or "")
    if not m:
        raise DctrlError(f"ttl {text!r}: a number and a unit, like 30d, 12h, 2w (s, m, h, d, w)")
    seconds = int(m[1]) * TTL_UNITS[m[2]]
    if not 0 < seconds <= MAX_TTL:
        raise DctrlError(f"ttl {text!r}: from 1s to {MAX_TTL // 86400}d")
    return seconds


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    scopes: tuple[str, ...]
    created: int
    expires: int
    hash: str
    revoked: int | None = None

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        return "expired" if now >= self.expires else "valid"

    def public(self) -> dict:
        """The record without its hash (for listings)."""
        d = asdict(self)
        del d["hash"]
        d["scopes"] = list(self.scopes)
        return d


class TokenStore:
    """The token file: add, list, revoke (the CLI) and check (the server, from any thread)."""

    def __init__(self, path, clock=time.time):
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded: tuple = (object(), {})  # (the file's stamp, its records by id)

    def _load(self) -> dict[str, TokenRecord]:
        stamp = file_stamp(self.path)
        loaded = self._loaded  # (one reference read: the stamp and the records it was read at)
        if stamp == loaded[0]:
            return loaded[1]  # unchanged: no lock (every request of every thread comes here)
        with self._lock:
            stamp = file_stamp(self.path)
            if stamp != self._loaded[0]:
                self._loaded = (stamp, self._read())
            return self._loaded[1]

    def _read(self) -> dict[str, TokenRecord]:
        try:
            with open(self.path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: cannot read the server's tokens: {exc}") from None
        try:
            records = [TokenRecord(**{**r, "scopes": tuple(r["scopes"])}) for r in data["tokens"]]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path}: not a token file ({exc})") from None
        return {r.id: r for r in records}

    def _write(self, records: dict[str, TokenRecord]) -> None:
        data = {"tokens": [asdict(r) for r in records.values()]}
        atomic_write(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode=0o600)

    # -- the CLI ---------------------------------------------------------------------------------

    def add(self, name: str, scopes, ttl: int) -> tuple[str, TokenRecord]:
        """A new token: returns it (shown once, never stored) and its record."""
        if not NAME_RE.fullmatch(name or ""):
            raise DctrlError(f"token name {name!r}: letters, digits and _.@- (up to 64), starting with a "
                             f"letter or digit")
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            raise DctrlError(f"unknown scope {', '.join(repr(s[:40]) for s in unknown)}; the scopes are "
                             f"{', '.join(SCOPES)}")
        scopes = tuple(sorted(set(scopes) | {"public"}, key=SCOPES.index))
        if not isinstance(ttl, int) or not 0 < ttl <= MAX_TTL:
            raise DctrlError(f"ttl {ttl!r}: from 1 s to {MAX_TTL // 86400} days")
        with self._exclusive():
            records = dict(self._read())
            if any(r.name == name and r.state(self.clock()) == "valid" for r in records.values()):
                raise DctrlError(f"a valid token named {name!r} exists: revoke it first, or choose another name")
            token_id = secrets.token_hex(4)
            while token_id in records:
                token_id = secrets.token_hex(4)
            token = f"dctrl_{token_id}_{secrets.token_urlsafe(32)}"
            now = int(self.clock())
            record = TokenRecord(token_id, name, scopes, now, now + ttl, _hash(token))
            records[token_id] = record
            self._write(records)
        return token, record

    @contextlib.contextmanager
    def _exclusive(self):
        """One ``add`` or ``revoke`` at a time (read, change, write: two at once would lose one):
        an flock on ``server_tokens.json.lock`` beside the file (0600). The server never takes it."""
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def list(self) -> list[TokenRecord]:
        return sorted(self._read().values(), key=lambda r: (r.created, r.id))

    def revoke(self, name_or_id: str) -> list[TokenRecord]:
        """Revoke every valid token with this name, or the token with this id; returns them."""
        with self._exclusive():
            records = dict(self._read())
            now = self.clock()
            hit = [r for r in records.values() if r.revoked is None and name_or_id in (r.name, r.id)]
            if not hit:
                raise DctrlError(f"no unrevoked token named {name_or_id[:64]!r} or with that id "
                                 f"(dctrl server token list)")
            for r in hit:
                records[r.id] = TokenRecord(**{**asdict(r), "revoked": int(now)})
            self._write(records)
        return hit

    # -- the server ------------------------------------------------------------------------------

    def check(self, token: str | None) -> tuple[TokenRecord | None, str]:
        """The record of a valid ``token``, or None and why not (for the log, never the client)."""
        if not token:
            return None, "no token"
        m = TOKEN_RE.fullmatch(token)
        if not m:
            return None, "not a dctrl token"
        record = self._load().get(m[1])
        if record is None or not hmac.compare_digest(record.hash, _hash(token)):
            return None, "unknown token"
        state = record.state(self.clock())
        if state != "valid":
            return None, f"token {record.name} {state}"
        return record, "ok"
