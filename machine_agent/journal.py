"""The machine's command journal: an append-only JSON-lines file.

Per command id it records ``received`` (before anything else; written but not
fsynced: losing it loses nothing), ``actuating`` (written and fsynced BEFORE
the relay turns on) and ``done`` (the ack sent; fsynced).
Read back at start, it guarantees a command is never actuated twice, even
across kill -9 or power loss:

- ``done``: the same ack is sent again, nothing else happens;
- ``actuating`` without ``done``: the relay may have dispensed. It is never
  pulsed again; the command is closed as ``failed`` with
  :data:`INTERRUPTED` (a person must check the machine) -- never a guess;
- ``received`` only: nothing was actuated; the command may be judged again.

A torn last line (a crash mid-write) is ignored: its step had not been
confirmed, and each step is journaled before the action it allows.

Compaction
----------

The file would only grow, so it is rewritten at open and whenever it passes
``compact_bytes`` (checked after each ``done``, never between ``actuating``
and the pulse), keeping:

- every command that is not ``done`` (``received``, ``actuating``): these are
  what exactly-once rests on;
- every ``done`` command whose ``expires`` + ``margin`` is still ahead of the
  trusted clock: a retry of it gets its ack again.

A ``done`` command whose expiry passed more than ``margin`` ago is forgotten.
That is safe because every vend command carries ``expires`` and MachineMgr
refuses an expired command before journaling anything past ``received``
(``mgr.py``: the check runs on arrival and again in the worker, right before
``actuating``): a retry of a forgotten id is answered ``refused: expired``
and never pulses. The margin absorbs the clock stepping back (an NTP
correction); senders stop retrying at ``expires``, so nobody should ask for
an ack that late. While the clock answers None (not synchronised) nothing is
forgotten.

``expires`` is stored on the ``received`` and ``actuating`` lines when the
caller passes it (a newer field: older agents ignore it). Lines written
without it -- by an agent older than this, or by a caller that does not pass
it -- are kept as they are, forever: without the expiry nothing can prove a
retry would be refused. Their number stops growing once callers pass
``expires``; a person may delete the file of a machine that is idle and whose
commands have all expired.

The rewrite is crash-safe (:func:`keys.files.atomic_write`): the kept lines go to ``PATH.compact`` (fsynced),
which replaces the journal with ``os.replace``; then the directory is
fsynced. A kill -9 or power loss at any moment leaves the old journal or the
new one, both complete; a leftover ``PATH.compact`` is removed at open (the
journal itself is intact whichever side of the rename the crash fell).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from keys.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted during actuation; check the machine"
MARGIN = 24 * 3600          # s past a command's expiry before its done record may be forgotten
COMPACT_BYTES = 1 << 20     # compact when the file passes this (and twice its last compacted size)
# Tests set DCTRL_CRASH_AT to die (like kill -9) at a point of the rewrite:
# journal_compact_partial (the temp file half written), journal_compact_written
# (temp complete and fsynced, before the rename), journal_compact_replaced
# (renamed, before the directory fsync).
CRASH_AT = os.environ.get("DCTRL_CRASH_AT")


def _ack_to_json(ack: dict) -> dict:
    return {**ack, "id": ack["id"].hex()}


def _ack_from_json(rec: dict) -> dict:
    return {**rec, "id": bytes.fromhex(rec["id"])}


def _fsync_dir(path):
    fsync_dir(os.path.dirname(path) or ".")


def _crash_at(stage: str) -> None:
    if CRASH_AT == f"journal_compact_{stage}":  # written | replaced
        os._exit(137)


class CommandJournal:
    """``clock``: the trusted clock that judges expiry (unix seconds, or None while not
    synchronised), the same as MachineMgr's. ``margin`` and ``compact_bytes``: see above."""

    def __init__(self, path, *, clock=time.time, margin=MARGIN, compact_bytes=COMPACT_BYTES):
        self.path = os.fspath(path)
        self.tmp_path = self.path + ".compact"
        self.clock = clock
        self.margin = margin
        self.compact_bytes = compact_bytes
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        self._compact_at = compact_bytes
        self.state: dict[str, str] = {}      # id hex -> received | actuating | done
        self.command: dict[str, dict] = {}   # id hex -> slot, invoice, pulse_ms
        self.acks: dict[str, dict] = {}      # id hex -> the ack sent (done)
        self.expires: dict[str, int] = {}    # id hex -> the command's expiry, when journaled
        if os.path.exists(self.tmp_path):  # a rewrite cut short: the journal itself is whole
            log.warning("%s: removing an unfinished compaction", self.tmp_path)
            os.unlink(self.tmp_path)
        self._load()
        new = not os.path.exists(self.path)
        if not new:
            self._compact()
        self._open()
        self._compact_at = max(self.compact_bytes, 2 * self._size)
        if self._torn_tail:  # end the torn line, or the next record would be glued onto it
            self._file.write("\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._size += 1
        if new:  # make the file's directory entry durable too
            _fsync_dir(self.path)
        self.interrupted = [i for i, s in self.state.items() if s == "actuating"]
        for i in self.interrupted:
            log.error("command %s was interrupted while its relay was on: not repeating it; check the machine", i)

    def _open(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._size = os.fstat(fd).st_size

    def _read_lines(self):
        """[(line text, record or None if unreadable)] and whether the last line is torn."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return [], False
        out = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.warning("%s line %d unreadable (%s): ignored", self.path, n + 1, exc)
                rec = None
            out.append((line, rec))
        return out, bool(text) and not text.endswith("\n")

    def _load(self):
        lines, self._torn_tail = self._read_lines()
        for n, (_, rec) in enumerate(lines):
            if rec is None:
                continue
            try:
                self._apply(rec)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s record %d unreadable (%s): ignored", self.path, n + 1, exc)

    def _apply(self, rec):
        i, event = rec["id"], rec["event"]
        if event == "received":
            self.command.setdefault(i, {k: rec.get(k) for k in ("slot", "invoice", "pulse_ms")})
            self.state.setdefault(i, "received")
        elif event == "actuating":
            if self.state.get(i) != "done":
                self.state[i] = "actuating"
            self.command[i] = {k: rec.get(k) for k in ("slot", "invoice", "pulse_ms")}
        elif event == "done":
            self.state[i] = "done"
            self.acks[i] = _ack_from_json(rec["ack"])
        else:
            raise ValueError(f"unknown event {event!r}")
        if type(rec.get("expires")) is int:
            self.expires[i] = rec["expires"]

    def _append(self, rec, *, sync=True):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._apply(rec)
            self._size += len(line.encode())
            if rec["event"] == "done" and self._size >= self._compact_at:
                self._compact()

    # -- compaction -----------------------------------------------------------

    def forgettable(self, now: float | None) -> set[str]:
        """Ids that may be forgotten at trusted time ``now``: done, with an expiry more than
        ``margin`` before it. None (clock not synchronised): none."""
        if now is None:
            return set()
        return {i for i, s in self.state.items()
                if s == "done" and i in self.expires and self.expires[i] + self.margin < now}

    def compact(self) -> int:
        """Rewrite the journal without the commands that may be forgotten now; returns how many
        were forgotten (0: the file was left alone)."""
        with self._lock:
            return self._compact()

    def _compact(self) -> int:
        drop = self.forgettable(self.clock())
        if not drop:
            self._compact_at = max(self.compact_bytes, 2 * self._size)
            return 0
        log.debug("journal compaction: forgetting %d expired command(s)", len(drop))
        lines, _ = self._read_lines()
        kept = [line for line, rec in lines
                if rec is not None and not (isinstance(rec.get("id"), str) and rec["id"] in drop)]
        data = "".join(line + "\n" for line in kept).encode()
        if CRASH_AT == "journal_compact_partial":  # fault injection: a rewrite cut short
            fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data[:len(data) // 2])
            os._exit(137)
        atomic_write(self.path, data, 0o600, tmp=self.tmp_path, crash_at=_crash_at)
        if self._file is not None:  # it still points at the old file: follow the new one
            self._file.close()
            self._open()
        self._torn_tail = False  # the rewrite kept whole lines only
        for i in drop:
            for table in (self.state, self.command, self.acks, self.expires):
                table.pop(i, None)
        self._compact_at = max(self.compact_bytes, 2 * len(data))
        log.info("journal compacted: %d expired command(s) forgotten, %d line(s) kept, %d bytes",
                 len(drop), len(kept), len(data))
        return len(drop)

    # -- queries ------------------------------------------------------------

    def status(self, cid: bytes) -> str | None:
        with self._lock:
            return self.state.get(cid.hex())

    def ack(self, cid: bytes) -> dict | None:
        with self._lock:
            return self.acks.get(cid.hex())

    # -- steps --------------------------------------------------------------

    def received(self, cid: bytes, slot, invoice, pulse_ms, expires: int | None = None) -> None:
        """Written, not fsynced: losing it in a crash is harmless (nothing was actuated; the
        retried command is judged again). ``actuating``'s fsync makes it durable too."""
        self._append(self._step(cid, "received", slot, invoice, pulse_ms, expires), sync=False)

    def actuating(self, cid: bytes, slot, invoice, pulse_ms, expires: int | None = None) -> None:
        self._append(self._step(cid, "actuating", slot, invoice, pulse_ms, expires))

    @staticmethod
    def _step(cid, event, slot, invoice, pulse_ms, expires) -> dict:
        rec = {"id": cid.hex(), "event": event, "t": time.time(), "slot": slot, "invoice": invoice,
               "pulse_ms": pulse_ms}
        if expires is not None:
            rec["expires"] = int(expires)
        return rec

    def done(self, ack: dict) -> None:
        self._append({"id": ack["id"].hex(), "event": "done", "t": time.time(), "ack": _ack_to_json(ack)})

    def close(self):
        with self._lock:
            self._file.close()
