"""The Vault's store of operational secrets, encrypted at rest.

Operational secrets (the SMTP password, the bitcoind RPC password, ...) live
in one JSON file, typically ``HOME/vault/secrets.json``, every value sealed
with a :class:`nacl.secret.SecretBox` (XSalsa20-Poly1305) under a 32-byte
store key.  The key comes either from a key file (:func:`create_key_file`,
:func:`load_key_file`) or from a passphrase stretched with Argon2id.

File format (version 1)::

    {
      "version": 1,
      "kdf": null | {"alg": "argon2id", "salt": "<b64>",
                     "opslimit": int, "memlimit": int},
      "check": "<b64 SecretBox ciphertext of b'dctrl-vault-check'>",
      "secrets": {
        "NAME": {"box": "<b64 SecretBox ciphertext incl. nonce>",
                 "updated": "<ISO 8601 UTC, e.g. 2024-05-01T12:00:00Z>"}
      }
    }

``kdf`` is null for a key-file store.  ``check`` lets :meth:`SecretStore.open`
tell a wrong key or passphrase (:class:`WrongKey`) from a corrupted secret.
Each box encrypts ``name.encode() + b"\\x00" + value``; the name is checked on
decryption, so a ciphertext moved or copied under another name is refused
(SecretBox has no associated data, so the name rides inside the plaintext;
names can never contain NUL, which makes the split unambiguous).

Every write is atomic (:func:`keys.files.atomic_write`): a temporary file (mode 0600)
in the same directory is written and fsynced, renamed over the store with
:func:`os.replace`, and the directory is fsynced.  Read-modify-write cycles (:meth:`SecretStore.set`,
:meth:`SecretStore.delete`) hold an advisory :func:`fcntl.flock` on a sidecar
lock file (``.<store name>.lock`` next to the store) and first pick up any
change another process made, so the Vault actor and the CLI never lose each
other's updates.

Secret values are never logged, never put in an exception message and never
shown by a ``repr``.  Values are decrypted only when :meth:`SecretStore.get`
is called; the store keeps ciphertexts in memory.  (Python cannot reliably
wipe memory, so a returned value lives until the garbage collector frees it.)

To hand a secret to another actor over the bus, :func:`proto.sealed.seal_for`
encrypts it to the requester's CurveZMQ public key (an X25519 key) with a
:class:`nacl.public.SealedBox`; only the holder of the matching secret key can
:func:`~proto.sealed.open_sealed` it, so the value never appears in plaintext on
the bus or in the event log. Both live in proto (no disk, no sockets) and are
re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import nacl.exceptions
import nacl.public
import nacl.pwhash.argon2id
import nacl.secret
import nacl.utils

from keys.files import atomic_write
from proto.errors import InsecureKeyFile, SecretError, UnknownSecret, WrongKey
from proto.sealed import open_sealed, seal_for  # re-exported: moved to proto (no disk, no sockets)

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "KEY_SIZE",
    "InsecureKeyFile",
    "SecretStore",
    "SecretStoreError",
    "UnknownSecret",
    "WrongKey",
    "create_key_file",
    "load_key_file",
    "open_sealed",
    "seal_for",
]

FORMAT_VERSION = 1
KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE  # 32
CHECK_PLAINTEXT = b"dctrl-vault-check"
KDF_ALG = "argon2id"

OPSLIMIT_DEFAULT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MEMLIMIT_DEFAULT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
# Accepted Argon2id limits, both when creating and when reading a store file.
# The upper bound stops a tampered file from making open() burn unbounded
# CPU time or memory (libsodium's own maxima are 2**32-1 passes and 4 TiB).
_OPSLIMIT_RANGE = (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE)
_MEMLIMIT_RANGE = (nacl.pwhash.argon2id.MEMLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE)

_NAME_RE = re.compile(r"[a-z0-9_.-]{1,64}")
_KEY_FILE_MAX_BYTES = 4096  # a key file is 64 hex digits and a newline


# --------------------------------------------------------------------------
# Errors


# One hierarchy (proto/errors.py): SecretStoreError is proto's SecretError.
SecretStoreError = SecretError


# --------------------------------------------------------------------------
# Small helpers


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64d(text: Any, what: str, path: Path) -> bytes:
    if not isinstance(text, str):
        raise SecretStoreError(f"malformed store file {path}: {what} is not a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SecretStoreError(f"malformed store file {path}: {what} is not valid base64") from None


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"secret name must be str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid secret name {name!r}: use 1-64 characters of [a-z0-9_.-]")
    return name


def _check_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ValueError(f"key must be exactly {KEY_SIZE} bytes, got {len(key)}")
    return key


def _check_limit(value: Any, bounds: tuple[int, int], what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"argon2id {what} must be an int")
    lo, hi = bounds
    if not lo <= value <= hi:
        raise ValueError(f"argon2id {what} {value} out of the accepted range [{lo}, {hi}]")
    return value


def _derive_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    """Argon2id-stretch *passphrase* (NFC-normalized, UTF-8) into a store key."""
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return nacl.pwhash.argon2id.kdf(KEY_SIZE, secret, salt, opslimit=opslimit, memlimit=memlimit)


def _write_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write *data* to *path* atomically with mode 0600 (:func:`keys.files.atomic_write`)."""
    atomic_write(path, data, 0o600, exclusive=exclusive)


# --------------------------------------------------------------------------
# Key files


def create_key_file(path: str | os.PathLike[str]) -> None:
    """Create a new key file at *path*: 32 random bytes, hex-encoded, mode 0600.

    The parent directory must exist.  Raises :class:`FileExistsError` if
    *path* already exists (an existing key is never overwritten, even by a
    concurrent creator).  The file is written atomically.
    """
    path = Path(path)
    key = nacl.utils.random(KEY_SIZE)
    _write_atomic(path, (key.hex() + "\n").encode("ascii"), exclusive=True)
    log.info("created key file %s", path)


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Return the 32-byte key stored (hex-encoded) in the key file at *path*.

    Raises :class:`InsecureKeyFile` if the file (after following symlinks) is
    not a regular file or its mode grants any access to group or other
    (``mode & 0o077``); the message names the path and the fix.  Raises
    :class:`SecretStoreError` if the content is not 64 hex digits (surrounding
    whitespace allowed), and :class:`FileNotFoundError` etc. as ``open`` does.
    The mode is checked on the opened descriptor, so there is no window
    between check and read.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InsecureKeyFile(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise InsecureKeyFile(
                f"key file {path} is accessible by group or others (mode {mode:04o}); "
                f"fix it with: chmod 600 {path}"
            )
        raw = os.read(fd, _KEY_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _KEY_FILE_MAX_BYTES:
        raise SecretStoreError(f"key file {path} is malformed: too large for a key file")
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise SecretStoreError(f"key file {path} is malformed: expected {2 * KEY_SIZE} hex digits") from None
    if len(key) != KEY_SIZE:
        raise SecretStoreError(f"key file {path} is malformed: expected {2 * KEY_SIZE} hex digits")
    return key


# --------------------------------------------------------------------------
# The store


class SecretStore:
    """An open secret store: one JSON file plus the key that opens it.

    Obtain one with :meth:`create` or :meth:`open`, never the constructor.
    Methods are thread-safe.  The instance holds the store key (inside a
    :class:`nacl.secret.SecretBox`), so it refuses to be pickled or copied
    and its ``repr`` shows only the path and the number of secrets.
    """

    def __init__(self, path: Path, box: nacl.secret.SecretBox, doc: dict[str, Any], signature: tuple[int, ...]) -> None:
        # Private: use create() or open().
        self._path = path
        self._box = box
        self._kdf: dict[str, Any] | None = doc["kdf"]
        self._check: str = doc["check"]
        self._secrets: dict[str, dict[str, str]] = doc["secrets"]
        self._signature = signature
        self._lock = threading.RLock()

    # ---- construction -----------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
        opslimit: int = OPSLIMIT_DEFAULT,
        memlimit: int = MEMLIMIT_DEFAULT,
    ) -> "SecretStore":
        """Create a new, empty store file at *path* and return it open.

        Exactly one of *key* (32 bytes, e.g. from :func:`load_key_file`) or
        *passphrase* (a non-empty str, stretched with Argon2id using a fresh
        random salt and *opslimit*/*memlimit*, which are recorded in the file)
        must be given, else :class:`ValueError`.  *opslimit*/*memlimit* must
        lie between argon2id's ``*_MIN`` and ``*_SENSITIVE`` values and are
        ignored for a key.  The parent directory must exist.  Raises
        :class:`FileExistsError` if *path* exists (never overwrites, even
        against a concurrent creator).  The file is written atomically, 0600.
        """
        path = Path(path)
        if (key is None) == (passphrase is None):
            raise ValueError("give exactly one of key= or passphrase=")
        if path.exists():  # early, before a slow KDF; _write_atomic re-checks atomically
            raise FileExistsError(errno.EEXIST, "refusing to overwrite existing file", str(path))
        kdf: dict[str, Any] | None
        if passphrase is not None:
            if not isinstance(passphrase, str):
                raise TypeError(f"passphrase must be str, not {type(passphrase).__name__}")
            if not passphrase:
                raise ValueError("passphrase must not be empty")
            opslimit = _check_limit(opslimit, _OPSLIMIT_RANGE, "opslimit")
            memlimit = _check_limit(memlimit, _MEMLIMIT_RANGE, "memlimit")
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            key = _derive_key(passphrase, salt, opslimit, memlimit)
            kdf = {"alg": KDF_ALG, "salt": _b64e(salt), "opslimit": opslimit, "memlimit": memlimit}
        else:
            key = _check_key(key)
            kdf = None
        box = nacl.secret.SecretBox(key)
        doc = {
            "version": FORMAT_VERSION,
            "kdf": kdf,
            "check": _b64e(box.encrypt(CHECK_PLAINTEXT)),
            "secrets": {},
        }
        _write_atomic(path, _serialize(doc), exclusive=True)
        log.info("created secret store %s (%s)", path, "passphrase" if kdf else "key file")
        return cls(path, box, doc, _signature(path.stat()))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        key: bytes | None = None,
        passphrase: str | None = None,
    ) -> "SecretStore":
        """Open the existing store at *path* with its key or passphrase.

        Exactly one of *key*/*passphrase* must be given (:class:`ValueError`).
        Raises :class:`WrongKey` if it does not decrypt the ``check`` field,
        or if the store is protected the other way (passphrase vs key);
        :class:`SecretStoreError` if the file is malformed or of an unknown
        version; :class:`FileNotFoundError` if it does not exist.  Logs a
        warning if the store file is readable by group or other.
        """
        path = Path(path)
        if (key is None) == (passphrase is None):
            raise ValueError("give exactly one of key= or passphrase=")
        if key is not None:
            key = _check_key(key)
        elif not isinstance(passphrase, str):
            raise TypeError(f"passphrase must be str, not {type(passphrase).__name__}")
        doc, st = _read_doc(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("secret store %s is accessible by group or others; fix it with: chmod 600 %s", path, path)
        kdf = doc["kdf"]
        if kdf is None:
            if key is None:
                raise WrongKey(f"secret store {path} is protected by a key file, not a passphrase")
        else:
            if passphrase is None:
                raise WrongKey(f"secret store {path} is protected by a passphrase, not a key file")
            key = _derive_key(passphrase, kdf["_salt"], kdf["opslimit"], kdf["memlimit"])
        box = nacl.secret.SecretBox(key)
        _verify_check(box, doc, path)
        _strip_private(doc)
        log.debug("opened secret store %s with %d secrets", path, len(doc["secrets"]))
        return cls(path, box, doc, _signature(st))

    # ---- reading ----------------------------------------------------------

    @property
    def path(self) -> Path:
        """The store file's path."""
        return self._path

    def names(self) -> list[str]:
        """The names of all secrets, sorted."""
        with self._lock:
            return sorted(self._secrets)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._secrets

    def __len__(self) -> int:
        with self._lock:
            return len(self._secrets)

    def get(self, name: str) -> bytes:
        """Decrypt and return the value of secret *name*.

        Raises :class:`UnknownSecret` if absent (also a :class:`KeyError`),
        :class:`ValueError`/:class:`TypeError` for an invalid name, and
        :class:`SecretStoreError` if the ciphertext fails authentication
        (corrupted or tampered) or is bound to a different name (moved or
        copied from another entry).  Sees other processes' writes only after
        :meth:`reload_if_changed` (or this instance's own set/delete).
        """
        _check_name(name)
        with self._lock:
            entry = self._secrets.get(name)
        if entry is None:
            raise UnknownSecret(name, f"no secret named {name!r} in store {self._path}")
        blob = _b64d(entry.get("box"), f"box of secret {name!r}", self._path)
        try:
            plain = self._box.decrypt(blob)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise SecretStoreError(
                f"secret {name!r} in store {self._path} failed authentication: the file is corrupted or was tampered with"
            ) from None
        bound, sep, value = plain.partition(b"\x00")
        if not sep or bound != name.encode("ascii"):
            raise SecretStoreError(
                f"secret {name!r} in store {self._path} was encrypted under a different name: "
                f"the ciphertext was moved or copied; refusing it"
            )
        return value

    def updated(self, name: str) -> str:
        """The ISO 8601 UTC time secret *name* was last set (:class:`UnknownSecret` if absent)."""
        _check_name(name)
        with self._lock:
            entry = self._secrets.get(name)
        if entry is None:
            raise UnknownSecret(name, f"no secret named {name!r} in store {self._path}")
        return entry["updated"]

    # ---- writing ----------------------------------------------------------

    def set(self, name: str, value: bytes) -> None:
        """Store *value* (bytes, may be empty) under *name*, replacing any old value.

        *name* must be 1-64 characters of ``[a-z0-9_.-]`` (else
        :class:`ValueError`; :class:`TypeError` if not a str); *value* must be
        bytes-like (a str raises :class:`TypeError`: encode it explicitly).
        Under the store's lock it first picks up other processes' changes,
        then persists atomically; on return the value is on disk.
        """
        _check_name(name)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"secret value must be bytes, not {type(value).__name__}")
        plain = name.encode("ascii") + b"\x00" + bytes(value)
        box = _b64e(self._box.encrypt(plain))
        with self._write_lock():
            secrets = dict(self._secrets)
            secrets[name] = {"box": box, "updated": _utc_now()}
            self._persist(secrets)
        log.info("secret %r set in %s", name, self._path)

    def delete(self, name: str) -> None:
        """Remove secret *name* and persist atomically.

        Raises :class:`UnknownSecret` if absent (after picking up other
        processes' changes), :class:`ValueError` for an invalid name.
        """
        _check_name(name)
        with self._write_lock():
            if name not in self._secrets:
                raise UnknownSecret(name, f"no secret named {name!r} in store {self._path}")
            secrets = dict(self._secrets)
            del secrets[name]
            self._persist(secrets)
        log.info("secret %r deleted from %s", name, self._path)

    def reload_if_changed(self) -> bool:
        """Re-read the store file if another writer changed it; True if reloaded.

        A change is detected by the file's inode, size, mtime or ctime
        differing from what this instance last read or wrote (every write
        replaces the file, so the inode changes even within one mtime tick).
        The reloaded file must still open with this instance's key
        (:class:`WrongKey` otherwise, e.g. the store was recreated with
        another key or passphrase); :class:`SecretStoreError` if malformed,
        :class:`FileNotFoundError` if the file is gone.  On error the
        in-memory state is left unchanged.
        """
        with self._lock:
            st = os.stat(self._path)
            if _signature(st) == self._signature:
                return False
            self._reload()
            return True

    # ---- internals --------------------------------------------------------

    def _reload(self) -> None:
        doc, st = _read_doc(self._path)
        _verify_check(self._box, doc, self._path)
        _strip_private(doc)
        self._kdf, self._check, self._secrets = doc["kdf"], doc["check"], doc["secrets"]
        self._signature = _signature(st)
        log.info("reloaded secret store %s (%d secrets)", self._path, len(self._secrets))

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold the thread lock and the cross-process flock, with fresh state."""
        with self._lock:
            lock_path = self._path.with_name(f".{self._path.name}.lock")
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _signature(os.stat(self._path)) != self._signature:
                    self._reload()
                yield
            finally:
                os.close(fd)  # releases the flock

    def _persist(self, secrets: dict[str, dict[str, str]]) -> None:
        doc = {"version": FORMAT_VERSION, "kdf": self._kdf, "check": self._check, "secrets": secrets}
        _write_atomic(self._path, _serialize(doc))
        self._secrets = secrets
        self._signature = _signature(os.stat(self._path))

    def __repr__(self) -> str:
        return f"<SecretStore path={str(self._path)!r} secrets={len(self._secrets)}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("SecretStore holds a key and cannot be pickled or copied")


# --------------------------------------------------------------------------
# Store file parsing


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _serialize(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _read_doc(path: Path) -> tuple[dict[str, Any], os.stat_result]:
    """Read and validate the store file's structure (not its cryptography).

    Returns the document and the stat of the very file read.  For a
    passphrase store the decoded salt is added as ``kdf["_salt"]``; remove it
    with :func:`_strip_private` before keeping the document.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        raw = f.read()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise SecretStoreError(f"malformed store file {path}: not valid JSON") from None

    def bad(reason: str) -> SecretStoreError:
        return SecretStoreError(f"malformed store file {path}: {reason}")

    if not isinstance(doc, dict):
        raise bad("top level is not an object")
    if doc.get("version") != FORMAT_VERSION:
        raise SecretStoreError(
            f"store file {path} has unsupported version {doc.get('version')!r} (this code reads version {FORMAT_VERSION})"
        )
    kdf = doc.get("kdf", "missing")
    if kdf is not None:
        if not isinstance(kdf, dict) or kdf.get("alg") != KDF_ALG:
            raise bad(f"kdf must be null or an {KDF_ALG} object")
        salt = _b64d(kdf.get("salt"), "kdf salt", path)
        if len(salt) != nacl.pwhash.argon2id.SALTBYTES:
            raise bad(f"kdf salt must be {nacl.pwhash.argon2id.SALTBYTES} bytes")
        try:
            _check_limit(kdf.get("opslimit"), _OPSLIMIT_RANGE, "opslimit")
            _check_limit(kdf.get("memlimit"), _MEMLIMIT_RANGE, "memlimit")
        except ValueError as exc:
            raise bad(str(exc)) from None
        kdf["_salt"] = salt
    if not isinstance(doc.get("check"), str):
        raise bad("check is missing")
    secrets = doc.get("secrets")
    if not isinstance(secrets, dict):
        raise bad("secrets is not an object")
    for name, entry in secrets.items():
        if not _NAME_RE.fullmatch(name):
            raise bad(f"invalid secret name {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("box"), str) or not isinstance(entry.get("updated"), str):
            raise bad(f"entry for secret {name!r} needs string fields box and updated")
    return doc, st


def _strip_private(doc: dict[str, Any]) -> None:
    if doc["kdf"] is not None:
        doc["kdf"].pop("_salt", None)


def _verify_check(box: nacl.secret.SecretBox, doc: dict[str, Any], path: Path) -> None:
    blob = _b64d(doc["check"], "check", path)
    try:
        ok = box.decrypt(blob) == CHECK_PLAINTEXT
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        ok = False
    if not ok:
        what = "passphrase" if doc["kdf"] is not None else "key"
        raise WrongKey(f"wrong {what} for secret store {path}")


def uses_passphrase(path: str | os.PathLike[str]) -> bool:
    """True if the store at ``path`` is keyed by an Argon2id passphrase, False for a key file."""
    doc, _ = _read_doc(Path(path))
    return doc["kdf"] is not None
