"""A bus identity's session: its token, its secrets and its keys, without sockets.

The :class:`~actors.runtime.Runtime` owns the sockets and the loop; this object
decides what to ask the Vault and when, what to make of the answers, and when
the key file has been rotated. It never sends anything itself: its methods
return the frames to send (``list[bytes]``, already signed by the AuthProxy)
and call back the runtime when something happened (``on_token``: a token was
installed, publish what waited for it; ``on_secret``: a secret arrived or was
refused). Every time is passed in (monotonic seconds) or read from the given
clocks, so the unit tests drive it with a fake clock and no bus
(tests/test_session.py).

Tokens come from a *token source*:

* :class:`VaultTokens` (the default) asks the Vault over the bus: a signed,
  untokened ``vault.req.NAME`` request, retried with backoff and jitter until
  the Vault answers on ``vault.token.NAME``, renewed at half the token's life,
  and again after every reconnect (the broker cuts a connection off when its
  key or grants change).
* The Vault passes its own source (``actors.vault.LocalTokens``) that mints
  the token locally and verifies untokened requests against the registry.

A token source has ``own_token(keys) -> bytes | None`` (a raw token made
here, or None: ask the Vault) and ``registry_auth`` (None, or
``(sender, key_version) -> VerifyKey`` for the AuthProxy's untokened
``vault.req.*``: only the Vault's has one).
"""

from __future__ import annotations

import logging
import random
import time

from keys.files import file_stamp
from keys.identity import IdentityKeys
from proto.errors import BadToken, DctrlError

log = logging.getLogger(__name__)

TOKEN_RETRY_FIRST = 0.1  # s: the first retry of an unanswered token request (doubled up to the max)
TOKEN_RETRY_MAX = 5.0
SECRET_RETRY = (1.0, 2.0)  # s: an unanswered secret request is asked again after this (uniform)


class VaultTokens:
    """The default token source: every token comes from the Vault, over the bus."""

    registry_auth = None

    def own_token(self, keys: IdentityKeys) -> bytes | None:
        return None


class Session:
    """Token, secrets and key rotation of one identity (loop thread only; no sockets).

    ``proxy`` is the identity's AuthProxy (it holds the keys, the token and the
    pending request ids); ``key_file`` the identity's key file, watched for rotation.
    """

    def __init__(self, proxy, key_file, *, token_source=None, on_token=None, on_secret=None,
                 monotonic=time.monotonic, wall=None, jitter=random.uniform):
        self.proxy = proxy
        self.key_file = key_file
        self.token_source = token_source or VaultTokens()
        self.on_token = on_token or (lambda: None)
        self.on_secret = on_secret or (lambda name, value, error: None)
        self.monotonic = monotonic
        self.wall = wall or proxy.clock
        self.jitter = jitter
        self.key_stamp = file_stamp(key_file)
        self.next_token_request = monotonic()
        self.token_retry = TOKEN_RETRY_FIRST
        self.force_renew = False
        self.secrets_wanted: dict[str, float] = {}  # name -> next (re)try (monotonic)

    @property
    def keys(self) -> IdentityKeys:
        return self.proxy.keys

    @property
    def name(self) -> str:
        return self.proxy.name

    def token_valid(self) -> bool:
        return self.proxy.token_valid()

    # -- tokens -------------------------------------------------------------------

    def connected(self) -> None:
        """New sockets: ask for a token (or renew) as soon as one is due, with a fresh backoff."""
        self.next_token_request = self.monotonic()
        self.token_retry = TOKEN_RETRY_FIRST

    def reconnected(self) -> None:
        """Back on the broker after a loss: renew now (its grants follow the current policy)."""
        self.force_renew = True
        self.next_token_request = self.monotonic()

    def token_step(self) -> list[bytes] | None:
        """Called when :attr:`next_token_request` is due: the frames of a token request to send,
        or None (the token is still good, or the token source made one: installed here)."""
        renew_in = self.proxy.renew_in()
        if renew_in > 0 and not self.force_renew:
            self.next_token_request = self.monotonic() + renew_in
            return None
        own = self.token_source.own_token(self.keys)
        if own is not None:
            self.proxy.set_token(own)
            self._token_installed()
            return None
        frames = self.proxy.request("token")
        # Until the Vault answers, ask again with backoff and jitter: the first request of a
        # fresh connection is often lost (slow joiner), a down Vault is not hammered.
        self.token_retry = min(self.token_retry * 2, TOKEN_RETRY_MAX)
        self.next_token_request = self.monotonic() + self.token_retry * self.jitter(0.8, 1.2)
        return frames

    def _token_installed(self) -> None:
        self.token_retry = TOKEN_RETRY_FIRST
        self.force_renew = False
        self.next_token_request = self.monotonic() + self.proxy.renew_in()
        self.on_token()

    def vault_message(self, msg) -> DctrlError | None:
        """A verified ``vault.*`` message. Returns a refusal to report (a token reply from
        anyone but the Vault), else None."""
        if msg.topic == f"vault.token.{self.name}":
            if msg.sender != "vault":
                # Verified, but not the Vault's: only the Vault answers token requests, and a
                # reply carries revocations; another identity granted vault.token.* is ignored.
                return BadToken(f"a token reply from {msg.sender}, not the vault: ignored")
            try:
                tok = self.proxy.accept_token_reply(msg)
            except DctrlError as exc:
                log.error("no token: %s", exc)
                return None
            if tok is None:
                return None  # an answer to another process with our name
            self.apply_revocations(msg.body.get("revocations") or ())
            log.info("token received (key v%d), expires in %d s", tok.key_version, tok.expires_at - self.wall())
            self._token_installed()
        elif msg.topic == f"vault.secret.{self.name}" and msg.sender == "vault":
            self._secret_reply(msg)
        elif msg.topic == "vault.revoked" and msg.sender == "vault":
            self.apply_revocations(msg.body["revocations"])
        return None

    def apply_revocations(self, revocations) -> None:
        for r in revocations:
            self.proxy.verifier.revoke(r["identity"], r["up_to"])

    # -- secrets -------------------------------------------------------------------

    def want_secret(self, name: str) -> None:
        self.secrets_wanted[name] = self.monotonic()

    def secret_requests(self) -> list[list[bytes]]:
        """The secret requests due now (each retried until the Vault answers); none without a token."""
        now = self.monotonic()
        out = []
        for name, due in list(self.secrets_wanted.items()):
            if due <= now and self.proxy.token_valid():
                out.append(self.proxy.request("secret", name))
                self.secrets_wanted[name] = now + self.jitter(*SECRET_RETRY)
        return out

    def _secret_reply(self, msg) -> None:
        body = msg.body
        if self.proxy.pending.pop(body["rid"], None) != "secret" or body["secret"] not in self.secrets_wanted:
            return  # for another process with our name
        del self.secrets_wanted[body["secret"]]
        if body["sealed"] is None:
            log.error("vault refused secret %r: %s", body["secret"], body["reason"])
            self.on_secret(body["secret"], None, body["reason"] or body["code"])
            return
        from .secretstore import SecretStoreError, open_sealed

        try:
            value = open_sealed(self.keys.curve_secret, body["sealed"])
        except SecretStoreError as exc:
            log.error("secret %r could not be opened: %s", body["secret"], exc)
            self.on_secret(body["secret"], None, str(exc))
            return
        log.info("secret %r received", body["secret"])
        self.on_secret(body["secret"], value, None)

    # -- keys ------------------------------------------------------------------------

    def keys_rotated(self) -> bool:
        """Whether the key file now holds a new key version (installed here: the old token is
        dropped; the caller reconnects with the new Curve key and asks for a new token)."""
        stamp = file_stamp(self.key_file)
        if stamp == self.key_stamp:
            return False
        self.key_stamp = stamp
        try:
            keys = IdentityKeys.load(self.key_file)
        except DctrlError as exc:
            log.error("key file changed but cannot be loaded, keeping current keys: %s", exc)
            return False
        if keys.version == self.keys.version:
            return False
        log.warning("keys rotated to v%d: reconnecting and renewing the token", keys.version)
        self.proxy.set_keys(keys)
        self.proxy.token = None
        return True

    # -- the loop's deadlines ------------------------------------------------------

    def deadlines(self, connected: bool) -> list[float]:
        """Monotonic times at which this session has something to do (only those that can fire:
        with no sockets no request can go out, and secrets wait for a token)."""
        if not connected:
            return []
        out = [self.next_token_request]
        if self.proxy.token_valid():
            out.extend(self.secrets_wanted.values())
        return out
