"""Secrets sealed to an identity's CurveZMQ key, for delivery over the bus.

The Vault answers a secret request with the value sealed (:func:`seal_for`) to
the requester's CurveZMQ public key; only the holder of the matching secret key
can open it (:func:`open_sealed`), so the value never appears in clear on the
bus or in the event log, which records everything. CurveZMQ keys are X25519
keys, so this is a :class:`nacl.public.SealedBox`: an anonymous sender,
authenticated encryption, 48 bytes of overhead.

Pure (no disk, no sockets, no zmq): the keys' Z85 text (ZeroMQ RFC 32) is
decoded here.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.public

from .errors import SecretError

Z85_CHARS = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(Z85_CHARS)}


def z85_encode(data: bytes) -> bytes:
    """Z85 (ZeroMQ RFC 32) text of ``data``, whose length must be a multiple of 4."""
    if len(data) % 4:
        raise ValueError("Z85 encodes a multiple of 4 bytes")
    out = bytearray()
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = bytearray(5)
        for j in range(4, -1, -1):
            value, chunk[j] = divmod(value, 85)
            chunk[j] = Z85_CHARS[chunk[j]]
        out += chunk
    return bytes(out)


def z85_decode(text: bytes | str) -> bytes:
    """The bytes of Z85 ``text``; :class:`ValueError` for anything that is not Z85."""
    if isinstance(text, str):
        text = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    text = bytes(text)
    if len(text) % 5:
        raise ValueError("Z85 text has a multiple of 5 characters")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i:i + 5]:
            if c not in _Z85_VALUE:
                raise ValueError("not a Z85 character")
            value = value * 85 + _Z85_VALUE[c]
        if value > 0xFFFFFFFF:
            raise ValueError("Z85 group out of range")
        out += value.to_bytes(4, "big")
    return bytes(out)


def _z85_key(key_z85: bytes | str, what: str) -> bytes:
    try:
        raw = z85_decode(key_z85)
    except Exception:  # ValueError, TypeError...; never echo key material
        raise ValueError(f"{what} is not a Z85-encoded 32-byte CurveZMQ key") from None
    if len(raw) != 32:
        raise ValueError(f"{what} is not a Z85-encoded 32-byte CurveZMQ key")
    return raw


def seal_for(curve_public_key_z85: bytes, value: bytes) -> bytes:
    """Encrypt *value* so only the holder of the CurveZMQ key pair can read it.

    *curve_public_key_z85* is the requester's CurveZMQ public key in Z85 (40
    characters, as from :func:`zmq.curve_keypair`). Raises :class:`ValueError`
    for a malformed key, :class:`TypeError` if *value* is not bytes-like.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    public = nacl.public.PublicKey(_z85_key(curve_public_key_z85, "curve public key"))
    return nacl.public.SealedBox(public).encrypt(bytes(value))


def open_sealed(curve_secret_key_z85: bytes, sealed: bytes) -> bytes:
    """Decrypt what :func:`seal_for` sealed to the matching public key.

    *curve_secret_key_z85* is the recipient's CurveZMQ secret key in Z85.
    Raises :class:`~proto.errors.SecretError` if *sealed* was not sealed to
    this key or was altered, :class:`ValueError` for a malformed key.
    """
    secret = nacl.public.PrivateKey(_z85_key(curve_secret_key_z85, "curve secret key"))
    try:
        return nacl.public.SealedBox(secret).decrypt(bytes(sealed))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise SecretError("sealed secret could not be opened: wrong key, or the data was altered") from None
