"""The envelope: two frames, ``[topic, envelope]``.

* ``topic`` is the UTF-8 topic, dot separated, and **always terminated by a
  dot** on the wire (``chain.tx.seen.``). ZeroMQ filters by byte prefix, so
  ending every topic and every grant with the delimiter makes ``vm1.`` never
  match ``vm10.``; the broker's checks stay a plain ``startswith``.
* ``envelope`` is ``payload || signature``: the msgpack payload followed by a
  64-byte Ed25519 signature over ``SIGN_CONTEXT || topic || 0x00 || payload``.
  The signature covers the bytes as sent, so no canonical re-encoding is needed.

The payload is a msgpack map::

    {"v": 1, "id": <16 bytes>, "src": "vm1", "boot": 7, "seq": 42,
     "ts": <ms since epoch, sender's clock>, "tok": <token bytes or nil>,
     "body": {...}}

``tok`` is nil only on ``vault.req.*`` (a token request is verified against the
key registry instead). See docs/protocol.md.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import msgpack
import nacl.exceptions
import nacl.signing

from .errors import BadSignature, DecodeError, FrameError, ProtocolError, TooLarge

VERSION = 1
SIGN_CONTEXT = b"dctrl/1\x00"
SIG_LEN = 64
MAX_TOPIC = 255
MAX_ENVELOPE = 64 * 1024
MSG_ID_LEN = 16

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_SEGMENT = r"[A-Za-z0-9_-]+"
TOPIC_RE = re.compile(rf"^{_SEGMENT}(\.{_SEGMENT})*$")
HEADER_KEYS = frozenset(("v", "id", "src", "boot", "seq", "ts", "tok", "body"))

_UNPACK_LIMITS = dict(
    max_str_len=MAX_ENVELOPE,
    max_bin_len=MAX_ENVELOPE,
    max_array_len=4096,
    max_map_len=1024,
    max_ext_len=0,
)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name, else raise ProtocolError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ProtocolError(
            f"invalid identity name {name!r}: lowercase letter first, then up to 31 of a-z 0-9 _ -"
        )
    return name


def topic_frame(topic: str) -> bytes:
    """The wire frame for ``topic`` (``"chain.tx.seen"`` -> ``b"chain.tx.seen."``)."""
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise ProtocolError(f"invalid topic {topic!r}: dot-separated segments of A-Z a-z 0-9 _ -")
    frame = topic.encode() + b"."
    if len(frame) > MAX_TOPIC:
        raise TooLarge(f"topic longer than {MAX_TOPIC} bytes")
    return frame


def frame_topic(frame: bytes) -> str:
    """Inverse of :func:`topic_frame`; raises FrameError on anything else."""
    if len(frame) > MAX_TOPIC:
        raise TooLarge(f"topic frame of {len(frame)} bytes exceeds {MAX_TOPIC}")
    if not frame.endswith(b"."):
        raise FrameError("topic frame is not dot-terminated")
    try:
        topic = frame[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("topic frame is not ASCII") from None
    if not TOPIC_RE.fullmatch(topic):
        raise FrameError(f"invalid topic {topic!r}")
    return topic


def prefix_frame(prefix: str) -> bytes:
    """A subscription or grant prefix as wire bytes: ``""`` (everything) or dot-terminated."""
    prefix = prefix.strip()
    if prefix in ("", "."):
        return b""
    return topic_frame(prefix.rstrip("."))


def signed_bytes(topic: bytes, payload: bytes) -> bytes:
    return SIGN_CONTEXT + topic + b"\x00" + payload


@dataclass
class Message:
    """A decoded (not yet authorised) message. ``verdict`` is set by the AuthProxy."""

    topic: str
    sender: str
    boot: int
    seq: int
    ts: int
    msg_id: bytes
    token: bytes | None
    body: dict
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    topic_bytes: bytes = field(repr=False)
    user_id: str | None = None  # the broker-authenticated hop identity, when known

    @property
    def id_hex(self) -> str:
        return self.msg_id.hex()


def pack_payload(sender, boot, seq, token, body, *, msg_id=None, ts_ms=None) -> bytes:
    return msgpack.packb(
        {
            "v": VERSION,
            "id": msg_id or os.urandom(MSG_ID_LEN),
            "src": sender,
            "boot": boot,
            "seq": seq,
            "ts": int(time.time() * 1000) if ts_ms is None else ts_ms,
            "tok": token,
            "body": body,
        },
        use_bin_type=True,
    )


def seal(signing_key: nacl.signing.SigningKey, topic: str, payload: bytes) -> list[bytes]:
    """Sign ``payload`` for ``topic`` and return the two wire frames."""
    tframe = topic_frame(topic)
    envelope = payload + signing_key.sign(signed_bytes(tframe, payload)).signature
    if len(envelope) > MAX_ENVELOPE:
        raise TooLarge(f"envelope of {len(envelope)} bytes exceeds {MAX_ENVELOPE}")
    return [tframe, envelope]


class _DuplicateKey(ValueError):
    pass


def _unique_map(pairs):
    """msgpack's object_pairs_hook: a map, refusing a key given twice (msgpack keeps the last
    value, another language's decoder may keep the first: the signed bytes must mean one thing)."""
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey()
    return d


def unpack(obj_bytes: bytes):
    """msgpack-decode untrusted bytes with size limits; raise DecodeError on anything bad,
    a map with a duplicate key included."""
    try:
        return msgpack.unpackb(obj_bytes, raw=False, strict_map_key=True, object_pairs_hook=_unique_map,
                               **_UNPACK_LIMITS)
    except _DuplicateKey:
        raise DecodeError("a msgpack map has a duplicate key") from None
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise DecodeError(f"undecodable msgpack: {type(exc).__name__}") from None


def decode(frames: list[bytes]) -> Message:
    """Parse two wire frames into a :class:`Message` without verifying anything.

    Raises a :class:`ProtocolError` subclass with a reason for every malformed
    input; never anything else (hypothesis drives this with arbitrary bytes).
    """
    if len(frames) != 2:
        raise FrameError(f"expected 2 frames, got {len(frames)}")
    tframe, envelope = (bytes(f) for f in frames)
    topic = frame_topic(tframe)
    if len(envelope) > MAX_ENVELOPE:
        raise TooLarge(f"envelope of {len(envelope)} bytes exceeds {MAX_ENVELOPE}")
    if len(envelope) <= SIG_LEN:
        raise FrameError("envelope too short to hold a signature")
    payload, signature = envelope[:-SIG_LEN], envelope[-SIG_LEN:]
    p = unpack(payload)
    if not isinstance(p, dict):
        raise DecodeError("payload is not a map")
    if set(p) != HEADER_KEYS:
        raise DecodeError(f"payload keys {sorted(map(str, p))} != {sorted(HEADER_KEYS)}")
    if type(p["v"]) is not int or p["v"] != VERSION:
        raise DecodeError(f"unsupported version {p['v']!r}")
    mid, src, boot, seq, ts, tok, body = (p[k] for k in ("id", "src", "boot", "seq", "ts", "tok", "body"))
    if not isinstance(mid, bytes) or len(mid) != MSG_ID_LEN:
        raise DecodeError("id must be 16 bytes")
    if not isinstance(src, str) or not NAME_RE.fullmatch(src):
        raise DecodeError("src is not a valid identity name")
    for key, val in (("boot", boot), ("seq", seq), ("ts", ts)):
        if type(val) is not int or not 0 <= val < 2**63:
            raise DecodeError(f"{key} must be a non-negative 64-bit integer")
    if tok is not None and not isinstance(tok, bytes):
        raise DecodeError("tok must be bytes or nil")
    if not isinstance(body, dict):
        raise DecodeError("body must be a map")
    return Message(topic, src, boot, seq, ts, mid, tok, body, payload, signature, tframe)


def verify_signature(verify_key: nacl.signing.VerifyKey, msg: Message) -> None:
    try:
        verify_key.verify(signed_bytes(msg.topic_bytes, msg.payload), msg.signature)
    except nacl.exceptions.BadSignatureError:
        raise BadSignature(f"signature does not match {msg.sender}'s key") from None
