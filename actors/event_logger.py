"""EventLogger: subscribes to everything and appends it to a crash-safe log.

Every message that reaches it is logged, refused ones too (with the reason),
as one record of the segmented log in :mod:`actors.eventlog`::

    msgpack [logged_ms, topic_frame, envelope, code_or_nil, reason_or_nil]

Records are buffered and fsynced in batches (every ``fsync_interval_ms`` or
256 records); a ``kill -9`` loses at most the unsynced tail and never an
earlier record, and the torn tail is cut off at the next start.

It also watches each sender's (boot, sequence): a jump in an accepted
sender's sequence within one boot means messages were lost on the way (a
full queue, a dropped connection), and is published on ``events.gap``.

:func:`query` and :func:`tail` read the log directly for ``dctrl events``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from datetime import datetime

import msgpack

from keys.home import Home
from proto.describe import describe_frames
from proto.errors import DctrlError
from proto.wire import prefix_frame, unpack

from .eventlog import EventLog, follow, read_records
from .runtime import Actor, Delivery, every, on

log = logging.getLogger(__name__)


class EventLogger(Actor):
    def __init__(self, home: Home, *, clock=time.time):
        cfg = home.config["event_logger"]
        self.clock = clock
        self.log = EventLog(home.events_dir, segment_bytes=int(cfg["segment_mb"]) * 2**20,
                            fsync_interval=cfg["fsync_interval_ms"] / 1000)
        if self.log.recovered_bytes:
            log.warning("recovered the event log: dropped a torn tail of %d bytes", self.log.recovered_bytes)
        self.positions: OrderedDict[tuple[str, int], int] = OrderedDict()  # (sender, boot) -> last seq
        self.logged = 0
        self.gaps = 0

    @on("", raw=True)
    def record(self, d: Delivery):
        """Every topic: append it, verdict included; check the sender's sequence."""
        code = getattr(d.error, "code", "error") if d.error else None
        reason = str(d.error)[:500] if d.error else None
        topic, envelope = (bytes(d.frames[0]), b"".join(bytes(f) for f in d.frames[1:])) if d.frames else (b"", b"")
        self.log.append(msgpack.packb([int(self.clock() * 1000), topic, envelope, code, reason], use_bin_type=True))
        self.logged += 1
        if d.message is not None:
            self._check_sequence(d.message)

    def _check_sequence(self, msg):
        key = (msg.sender, msg.boot)
        last = self.positions.get(key)
        self.positions[key] = msg.seq
        self.positions.move_to_end(key)
        if len(self.positions) > 10_000:
            self.positions.popitem(last=False)
        if last is not None and msg.seq > last + 1:
            self.gaps += 1
            missing = msg.seq - last - 1
            log.warning("gap: %s boot %d jumped from seq %d to %d (%d missing)", msg.sender, msg.boot, last, msg.seq, missing)
            self.publish("events.gap", {"sender": msg.sender, "boot": msg.boot, "expected": last + 1,
                                        "got": msg.seq, "missing": missing})

    def after_batch(self):
        self.log.flush()

    @every(0.05)
    def flush_due(self):
        self.log.flush()

    def teardown(self):
        self.log.close()

    def health(self):
        return "ok", f"{self.logged} logged, {self.gaps} gaps, next seq {self.log.next_seq}"


# -- reading the log -----------------------------------------------------------

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
    logged, topic, envelope, code, reason = unpack(body)
    rec = describe_frames([topic, envelope])
    if code is not None:
        rec.update(verdict="rejected", code=code, reason=reason)
    rec.update(seq=seq, logged=logged)
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
