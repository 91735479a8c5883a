"""Reading the event log: records as plain dicts, filtered (``dctrl events query|tail``, reports).

Files only: no zmq, no runtime. The log's format is :mod:`actors.eventlog`'s.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from proto.describe import describe_frames
from proto.errors import DctrlError
from proto.wire import prefix_frame, unpack

from ..eventlog import follow, read_records

SUMMARY_TOPIC = b"events.suppressed."  # the event logger's summary of refused messages not stored


def parse_since(text: str | None) -> float | None:
    """``"300s"``, ``"15m"``, ``"2h"``, ``"1d"`` ago, or an ISO time (local unless it has an offset)."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        return time.time() - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise DctrlError(f"--since {text!r}: give seconds ago like 300s/15m/2h/1d or an ISO time") from None


def decode_record(seq: int, body: bytes) -> dict:
    """One logged record as JSON-ready fields. ``seq`` is the sender's sequence number (as on
    the wire); ``log_seq`` is the record's number in the log."""
    item = unpack(body)
    logged, topic, envelope, code, reason = item[:5]
    if code == "suppressed":  # a summary of refused messages not stored
        summary = item[5]
        rec = {"topic": SUMMARY_TOPIC.decode().rstrip("."), "sender": summary["sender"], "boot": None,
               "seq": None, "id": None, "ts": None, "verdict": "suppressed", "code": None,
               "reason": reason, "body": summary}
    else:
        rec = describe_frames([topic, envelope])
        if code == "untokened":
            rec.update(verdict="untokened", code=None, reason=reason)
        elif code is not None:
            rec.update(verdict="rejected", code=code, reason=reason)
    rec.update(log_seq=seq, logged=logged)
    return rec


def _matches(rec, prefix: bytes, since_ms, sender) -> bool:
    if since_ms is not None and rec["logged"] < since_ms:
        return False
    if sender and rec["sender"] != sender:
        return False
    return ((rec["topic"] or "") + ".").encode().startswith(prefix)


def query(directory, *, topic="", since=None, sender=None):
    """Logged events, oldest first, filtered by topic prefix, time and sender."""
    prefix = prefix_frame(topic or "")
    since_ts = parse_since(since)
    since_ms = int(since_ts * 1000) if since_ts is not None else None
    for seq, body in read_records(directory):
        rec = decode_record(seq, body)
        if _matches(rec, prefix, since_ms, sender):
            yield rec


def tail(directory, *, topic="", stop=None):
    """New events as they are logged (like ``tail -f``)."""
    prefix = prefix_frame(topic or "")
    for seq, body in follow(directory, start_seq=None, stop=stop):
        rec = decode_record(seq, body)
        if _matches(rec, prefix, None, None):
            yield rec
