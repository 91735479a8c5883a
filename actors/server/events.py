"""The event log for the report server: pages of records (``/api/events``) and every sender's last
heartbeat (``/api/health``), read from the log's files (actors/eventlog.py), never all at once.

- :func:`page` streams records from a cursor (``after``: the last ``log_seq`` seen), filtered by
  topic prefix and time, and stops at the page size or after ``scan_max`` records looked at
  (``more`` is then true and ``next_after`` says where to go on): a request costs at most that
  much, whatever the log holds. A ``since`` without a cursor starts at the first segment written
  to at or after it (a segment's mtime is its last write), not at the log's start.
- :class:`Heartbeats` keeps the newest ``health.NAME`` record of each sender and the position it
  has read the log to: the first request reads the newest two segments (at most 32 MiB), every
  later one only what was appended since. A sender whose last heartbeat is older than those
  segments shows as never seen.
"""

from __future__ import annotations

import datetime
import os
import re
import threading

import msgpack

from actors.event_logger.queries import decode_record
from actors.eventlog import DEFAULT_MAX_RECORD, _Follower, read_records
from proto.errors import DctrlError
from proto.wire import prefix_frame

_SEGMENT_RE = re.compile(r"([0-9]{20})\.seg", re.ASCII)  # (actors/eventlog.py's file names)
HEALTH = b"health."


def parse_time(text: str, now: float) -> float:
    """Unix seconds from ``1764950000`` (unix seconds), ``15m``/``2h``/``1d``/``300s`` ago, or an
    ISO 8601 time (UTC unless it has an offset); ValueError otherwise."""
    text = text.strip()
    if re.fullmatch(r"\d{1,12}", text):
        return float(text)
    m = re.fullmatch(r"(\d{1,9})([smhd])", text)
    if m:
        return now - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    if not re.fullmatch(r"[0-9T:+.Z -]{10,40}", text):
        raise ValueError(text)
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def topic_prefix(text: str) -> bytes:
    """A topic prefix as the log's frames start (``machine.vm1`` -> ``b"machine.vm1."``); ValueError."""
    try:
        return prefix_frame(text)
    except DctrlError as exc:
        raise ValueError(str(exc)) from None


def _segments(directory) -> list[tuple[int, str]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted((int(m[1]), os.path.join(directory, n)) for n in names if (m := _SEGMENT_RE.fullmatch(n)))


def _first_since(directory, since: float) -> int:
    """The first seq of the oldest segment last written at or after ``since`` (0: none known)."""
    segments = _segments(directory)
    for base, path in segments:
        try:
            if os.stat(path).st_mtime >= since:
                return base
        except FileNotFoundError:  # pruned just now
            continue
    return segments[-1][0] if segments else 0


# Fields of bodies that hold something sealed or a credential: cmd.members.add/set ``personal`` (a
# name and an email sealed to member_data), vault.secret ``sealed``, vault.token ``token`` (a bus
# token). The log keeps them (sealed); the API shows that they were there, not what.
REDACTED = frozenset(("personal", "sealed", "token"))
WITHHELD = "(withheld)"


def redact(value):
    if isinstance(value, dict):
        return {k: (WITHHELD if k in REDACTED and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def page(directory, *, after: int | None, limit: int, prefix: bytes = b"", since: float | None = None,
         until: float | None = None, scan_max: int = 100_000) -> dict:
    """Up to ``limit`` records after ``after`` (oldest first) whose topic starts with ``prefix``
    and that were logged within [since, until] (unix seconds)."""
    start = 0 if after is None else after + 1
    if since is not None and after is None:
        start = _first_since(directory, since)
    since_ms = None if since is None else since * 1000
    until_ms = None if until is None else until * 1000
    events, scanned, last, more = [], 0, after, False
    try:
        records = read_records(directory, start_seq=start)
    except FileNotFoundError:  # the logger has never run on this home
        records = iter(())
    for seq, body in records:
        if scanned >= scan_max:
            more = True
            break
        scanned += 1
        rec = decode_record(seq, body)
        if until_ms is not None and rec["logged"] > until_ms:
            break  # logged in order (one writer, one clock)
        last = seq
        if since_ms is not None and rec["logged"] < since_ms:
            continue
        if not ((rec["topic"] or "") + ".").encode().startswith(prefix):
            continue
        rec["body"] = redact(rec["body"])
        events.append(rec)
        if len(events) >= limit:
            more = True
            break
    return {"events": events, "next_after": last, "more": more, "scanned": scanned}


# -- heartbeats --------------------------------------------------------------------------------------

# `dctrl status` listens ``heartbeat_interval + 1.5`` s on the bus and calls whoever it did not hear
# down (scripts/cli/run.py). From the log, which adds the logger's delay, the HTML /health page
# (pages.health_rows) allows two intervals and 1.5 s; the API judges the same way.
GRACE_S = 1.5
LATE_INTERVALS = 2


def judge(age: float | None, reported: str | None, interval: float) -> str:
    """What the heartbeat reports (ok, degraded, starting) while it is at most two intervals and
    1.5 s old; ``stale`` when older; ``down`` when none was heard (in the segments read)."""
    if age is None:
        return "down"
    if age <= LATE_INTERVALS * interval + GRACE_S:
        return reported or "ok"
    return "stale"


class Heartbeats:
    """The last accepted ``health.NAME`` record of every sender, read incrementally (thread-safe)."""

    def __init__(self, directory, max_record: int = DEFAULT_MAX_RECORD):
        self.directory = os.fspath(directory)
        self.max_record = max_record
        self._lock = threading.Lock()
        self._follower: _Follower | None = None
        self.latest: dict[str, dict] = {}
        self.read_records = 0  # records read so far (tests: the second request reads only what is new)

    def _start(self) -> _Follower:
        follower = _Follower(self.directory, self.max_record)
        segments = follower.segments()
        follower.want = segments[-2][0] if len(segments) > 1 else 0
        return follower

    def current(self) -> dict[str, dict]:
        """``{name: {"logged": unix s, "body": the heartbeat's body}}``, up to the log's end now."""
        with self._lock:
            if self._follower is None:
                self._follower = self._start()
            for seq, body in self._follower.run(0, lambda: True):
                self.read_records += 1
                try:
                    item = msgpack.unpackb(body, raw=False, strict_map_key=False)
                    logged, topic, _envelope, code = item[:4]
                except (ValueError, TypeError, msgpack.ExtraData):
                    continue
                if code is not None or not isinstance(topic, bytes) or not topic.startswith(HEALTH):
                    continue
                rec = decode_record(seq, body)
                if rec.get("verdict") != "accepted" or not isinstance(rec.get("body"), dict) or not rec["sender"]:
                    continue
                self.latest[rec["sender"]] = {"logged": rec["logged"] / 1000, "body": rec["body"]}
            return dict(self.latest)
