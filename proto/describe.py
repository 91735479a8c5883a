"""Turning wire frames into JSON-ready records (for `dctrl sub` and the event log)."""

from __future__ import annotations

import base64

from . import wire
from .errors import DctrlError


def jsonable(value):
    """msgpack values as JSON: bytes become hex strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def describe_frames(frames, message=None, error=None) -> dict:
    """One JSON-ready record for a received (or logged) message with its verdict."""
    out = {"topic": None, "sender": None, "boot": None, "seq": None, "id": None, "ts": None,
           "verdict": "accepted" if error is None else "rejected",
           "code": getattr(error, "code", None) if error else None,
           "reason": str(error) if error else None, "body": None}
    msg = message
    if msg is None:
        try:
            msg = wire.decode(frames)
        except DctrlError:
            out["topic"] = bytes(frames[0])[:255].decode(errors="replace").rstrip(".") if frames else None
            out["raw"] = base64.b64encode(b"".join(bytes(f) for f in frames)[:1024]).decode()
            return out
    out.update(topic=msg.topic, sender=msg.sender, boot=msg.boot, seq=msg.seq, id=msg.id_hex,
               ts=msg.ts, body=jsonable(msg.body))
    return out
