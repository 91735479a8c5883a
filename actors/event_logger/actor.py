"""EventLogger: subscribes to everything and appends it to a crash-safe log.

Every accepted message that reaches it is logged as one record of the segmented log in
:mod:`actors.eventlog`::

    msgpack [logged_ms, topic_frame, envelope, code_or_nil, reason_or_nil]

Refused messages are logged too (with the reason), but sampled: per claimed sender (``"?"`` when
the bytes name none) the first ``rejected_sample`` of each ``rejected_period_s`` are stored,
at most ``rejected_total`` in all per period, and the rest are counted into one summary record
per sender at the end of the period (and at a clean stop)::

    msgpack [logged_ms, b"events.suppressed.", b"", "suppressed", reason, summary]

with ``summary = {"sender", "suppressed", "codes": {code: n}, "topics": {topic: n}, "from", "to"}``.
So one identity's flood of junk costs the log a bounded number of records, never a valid one.

Valid messages have a storage quota per sender: at most ``quota_mb`` of topic and envelope bytes
per ``quota_period_s`` (default 64 MB an hour, far above the busiest actor: a day of a busy
space's sales, prices and heartbeats is well under 10 MB for any one sender; 0 turns it off).
Past it, that sender's messages are still checked (their sequence, so no false gap) but counted,
not stored, into the same summaries with the code ``over_quota``, and a WARNING says so once a
period. So one identity (an admin key, which the broker's publish rate limit may not bound)
cannot push the others' history out of the log's ``max_mb``.
Token requests (``vault.req.SRC`` with no token: only the Vault can verify them) are logged
with the verdict ``untokened``, not as refusals.

Junk is refused cheaply, before full verification: anything that does not even decode
(frames, size, msgpack, header) is counted without the runtime's verification and reporting
path, so a flood of it costs a few microseconds a message. The logger's SUB socket has no
receive high-water mark (issue 10, hole 5: libzmq#3937 aborts the process when a connection
drops while the receive pipe is full; see docs/architecture.md, Storage).

Records are buffered, written to the file after every batch received (so a crash of the
process loses nothing it has taken off the socket but the batch in hand), and fsynced in
batches (every ``fsync_interval_ms`` or 256 records); a ``kill -9`` loses at most the unsynced
tail and never an earlier record, and the torn tail is cut off at the next start.

Retention: every minute, whole segments older than ``retention_days`` and the oldest beyond
``max_mb`` are deleted (``dctrl events prune`` does the same by hand).

It also watches each sender's (boot, sequence): a jump in an accepted
sender's sequence within one boot means messages were lost on the way (a
full queue, a dropped connection), and is published on ``events.gap``.

:func:`~actors.event_logger.queries.query` and :func:`~actors.event_logger.queries.tail`
read the log directly for ``dctrl events``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict

import msgpack

from keys.home import Home
from proto import wire
from proto.errors import BadToken, DctrlError

from ..eventlog import EventLog, prune
from ..runtime import Actor, Delivery, every, on
from .queries import SUMMARY_TOPIC

log = logging.getLogger(__name__)

MAX_SUMMARY_TOPICS = 20  # distinct topics named in one summary; the rest are counted as "*"
MAX_TRACKED_SENDERS = 1000  # claimed senders tracked per period; the rest are summarised as "*"


class StorageQuota:
    """Bytes of valid messages stored per sender per period: ``take`` says whether one more fits."""

    def __init__(self, max_bytes: int, period: float, clock=time.time):
        self.max_bytes, self.period, self.clock = max_bytes, period, clock
        self.start = clock()
        self.used: Counter = Counter()  # sender -> bytes stored this period
        self.over: set[str] = set()  # senders past their quota this period

    def take(self, sender: str, size: int) -> bool:
        """True: store it (and count its bytes); False: ``sender`` is past its quota."""
        if not self.max_bytes:
            return True
        if self.clock() - self.start >= self.period:
            self.start = self.clock()
            self.used.clear()
            self.over.clear()
        if self.used[sender] + size > self.max_bytes:
            if sender not in self.over:
                self.over.add(sender)
                log.warning("%s is past its storage quota of %g MB per %g s: its messages are counted, "
                            "not stored, until %s", sender, self.max_bytes / 2**20, self.period,
                            time.strftime("%H:%M:%S", time.localtime(self.start + self.period)))
            return False
        self.used[sender] += size
        return True


class RejectSampler:
    """Which refused records to store: per claimed sender, the first ``per_sender`` of each
    period (at most ``total`` in all); the rest are counted and handed back as summaries."""

    def __init__(self, per_sender: int, total: int, period: float, clock=time.time):
        self.per_sender, self.total, self.period, self.clock = per_sender, total, period, clock
        self.start = clock()
        self.stored: Counter = Counter()  # sender -> stored this period
        self.stored_total = 0
        self.suppressed: dict[str, dict] = {}  # sender -> summary being counted
        self.suppressed_total = 0  # since start (for health)

    def admit(self, sender: str, code: str, topic: bytes) -> bool:
        """True: store this refused record; False: it was counted into a summary."""
        if sender not in self.stored and len(self.stored) >= MAX_TRACKED_SENDERS:
            sender = "*"
        if self.stored[sender] < self.per_sender and self.stored_total < self.total:
            self.stored[sender] += 1
            self.stored_total += 1
            return True
        self.count(sender, code, topic)
        return False

    def count(self, sender: str, code: str, topic: bytes):
        """Count a record not stored into ``sender``'s summary of this period."""
        if sender not in self.suppressed and len(self.suppressed) >= MAX_TRACKED_SENDERS:
            sender = "*"
        s = self.suppressed.get(sender)
        if s is None:
            s = self.suppressed[sender] = {"sender": sender, "suppressed": 0, "codes": Counter(),
                                           "topics": Counter()}
        s["suppressed"] += 1
        s["codes"][code] += 1
        if topic in s["topics"] or len(s["topics"]) < MAX_SUMMARY_TOPICS:
            s["topics"][topic] += 1
        else:
            s["topics"]["*"] += 1
        self.suppressed_total += 1

    def due(self) -> bool:
        return self.clock() - self.start >= self.period

    def roll(self) -> list[dict]:
        """End the period: the summaries of what was counted, and start the next one."""
        now = self.clock()
        out = []
        for s in self.suppressed.values():
            topics = {(t if isinstance(t, str) else t[:255].decode(errors="replace").rstrip(".")): n
                      for t, n in s["topics"].items()}
            out.append({**s, "codes": dict(s["codes"]), "topics": topics,
                        "from": int(self.start * 1000), "to": int(now * 1000)})
        self.start = now
        self.stored.clear()
        self.stored_total = 0
        self.suppressed = {}
        return out


_HEADER_MAP = 0x88  # msgpack fixmap of 8 entries: how every valid payload starts (8 header keys)
_TOKEN_MAP = 0x8A  # and every token's payload (10 keys, proto/token.py)


def cheap_verdict(frames) -> tuple[str | None, str | None, str]:
    """Refuse what cannot be valid without verifying anything: ``(code, reason, claimed sender)``,
    or ``(None, None, sender)`` for a message worth full verification. About 1 µs for junk."""
    if len(frames) != 2:
        return "bad_frames", f"expected 2 frames, got {len(frames)}", "?"
    envelope = frames[1]
    n = len(envelope)
    if n <= wire.SIG_LEN:
        return "bad_frames", "envelope too short to hold a signature", "?"
    if n > wire.MAX_ENVELOPE:
        return "too_large", f"envelope of {n} bytes exceeds {wire.MAX_ENVELOPE}", "?"
    if envelope[0] != _HEADER_MAP:
        return "bad_encoding", "payload is not a map of the 8 header keys", "?"
    try:
        msg = wire.decode(frames)
    except DctrlError as exc:
        return getattr(exc, "code", "error"), str(exc)[:500], "?"
    tok = msg.token
    if tok is None:
        if msg.topic != f"vault.req.{msg.sender}":
            return "bad_token", "message carries no token", msg.sender
    elif len(tok) <= wire.SIG_LEN or tok[0] != _TOKEN_MAP:
        # (checked before the Vault's signature on it, which costs about 50 µs)
        return "bad_token", "token payload is not a map of the 10 token keys", msg.sender
    return None, None, msg.sender


def _is_token_request(topic: bytes, frames) -> bool:
    """An untokened ``vault.req.SRC`` from SRC: only the Vault can verify it (registry keys)."""
    if not topic.startswith(b"vault.req."):
        return False
    try:
        msg = wire.decode(frames)
    except DctrlError:
        return False
    return msg.token is None and msg.topic == f"vault.req.{msg.sender}"


class EventLogger(Actor):
    def __init__(self, home: Home, *, clock=time.time):
        cfg = home.config["event_logger"]
        self.clock = clock
        self.log = EventLog(home.events_dir, segment_bytes=int(cfg["segment_mb"]) * 2**20,
                            fsync_interval=cfg["fsync_interval_ms"] / 1000)
        if self.log.recovered_bytes:
            log.warning("recovered the event log: dropped a torn tail of %d bytes", self.log.recovered_bytes)
        self.events_dir = home.events_dir
        self.retention_days = cfg["retention_days"]
        self.max_mb = cfg["max_mb"]
        self.sampler = RejectSampler(int(cfg["rejected_sample"]), int(cfg["rejected_sample"]) * 10,
                                     cfg["rejected_period_s"], clock=clock)
        self.quota = StorageQuota(int(cfg["quota_mb"] * 2**20), cfg["quota_period_s"], clock=clock)
        self.over_quota = 0  # valid messages counted, not stored (since start)
        self.positions: OrderedDict[tuple[str, int], int] = OrderedDict()  # (sender, boot) -> last seq
        self.logged = 0
        self.gaps = 0
        self._runtime = None

    # -- hooks into the runtime (this actor sees every message, junk included) ------------------

    @property
    def runtime(self):
        return self._runtime

    @runtime.setter
    def runtime(self, rt):
        """Set by Runtime.__init__, before any socket exists: refuse junk before the runtime's
        full verification and per-message reporting, and give the SUB socket no receive HWM."""
        self._runtime = rt
        open_sockets, deliver = rt._open_sockets, rt._deliver

        def _open_sockets():
            open_sockets()
            # RCVHWM 0 (no limit): libzmq#3937 aborts the process (stream_engine_base.cpp:396)
            # when a connection drops (a heartbeat timeout, a connection cut off) while the receive
            # pipe is full; a pipe with no limit is never full. Options are taken at connect.
            sub = rt.sub
            endpoint = rt.settings.subscribe_endpoint
            sub.disconnect(endpoint)
            sub.rcvhwm = 0
            sub.connect(endpoint)

        def _deliver(frames):
            code, reason, sender = cheap_verdict(frames)
            if code is None:
                return deliver(frames)
            rt.counters["received"] += 1
            rt.counters["rejected"] += 1
            self._refused(frames, code, reason, sender)

        rt._open_sockets, rt._deliver = _open_sockets, _deliver

    # -- recording -------------------------------------------------------------------------------

    @on("", raw=True)
    def record(self, d: Delivery):
        """Every topic: append it, verdict included; check the sender's sequence."""
        self._record(d.frames, d.message, d.error, None)

    def _record(self, frames, message, error, sender):
        if error is not None:
            if isinstance(error, BadToken) and _is_token_request(bytes(frames[0]), frames):
                code, reason = "untokened", "token request: verified by the Vault, not here"
            else:
                code, reason = getattr(error, "code", "error"), str(error)[:500]
            self._refused(frames, code, reason, sender if sender is not None else _claimed_sender(frames))
            return
        if message is not None:
            self._check_sequence(message)
            if not self.quota.take(message.sender, sum(len(f) for f in frames)):
                self.over_quota += 1
                self.sampler.count(message.sender, "over_quota", bytes(frames[0]))
                return
        self._append(frames, None, None)

    def _refused(self, frames, code, reason, sender):
        """A refused (or untokened) message: stored if the sampler admits it, else counted."""
        if self.sampler.admit(sender, code, bytes(frames[0]) if frames else b""):
            self._append(frames, code, reason)

    def _append(self, frames, code, reason):
        topic, envelope = (bytes(frames[0]), b"".join(bytes(f) for f in frames[1:])) if frames else (b"", b"")
        self.log.append(msgpack.packb([int(self.clock() * 1000), topic, envelope, code, reason], use_bin_type=True))
        self.logged += 1

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

    def write_summaries(self):
        """End the sampling period: one summary record per sender with suppressed records."""
        for s in self.sampler.roll():
            log.warning("did not store %d messages from %s (%s)", s["suppressed"],
                        s["sender"], ", ".join(f"{c} {n}" for c, n in sorted(s["codes"].items())))
            reason = f"{s['suppressed']} messages not stored (refused: sampled; valid: over the sender's quota)"
            self.log.append(msgpack.packb([int(self.clock() * 1000), SUMMARY_TOPIC, b"", "suppressed", reason, s],
                                          use_bin_type=True))
        self.log.flush()

    def after_batch(self):
        self.log.flush()

    @every(0.05)
    def flush_due(self):
        self.log.flush()

    @every(1)
    def summaries_due(self):
        if self.sampler.due():
            self.write_summaries()

    @every(60)
    def retention(self):
        self.apply_retention()

    def apply_retention(self):
        older = self.clock() - self.retention_days * 86400 if self.retention_days else None
        max_bytes = int(self.max_mb * 2**20) if self.max_mb else None
        if older is None and max_bytes is None:
            return []
        removed = prune(self.events_dir, older_than=older, max_bytes=max_bytes)
        if removed:
            log.info("retention: removed %d segments, %s to %s", len(removed), removed[0][0], removed[-1][0])
        return removed

    def setup(self):
        self.apply_retention()

    def teardown(self):
        try:
            self.write_summaries()
        finally:
            self.log.close()

    def health(self):
        return "ok", (f"{self.logged} logged, {self.sampler.suppressed_total - self.over_quota} refused "
                      f"not stored, {self.over_quota} over quota not stored, {self.gaps} gaps, "
                      f"next seq {self.log.next_seq}")


def _claimed_sender(frames) -> str:
    """Who a refused message says it is from (unverified): the sampling key."""
    try:
        return wire.decode(frames).sender
    except DctrlError:
        return "?"
