"""The machine's command journal: an append-only JSON-lines file, fsynced per line.

Per command id it records ``received`` (before anything else), ``actuating``
(written and fsynced BEFORE the relay turns on) and ``done`` (the ack sent).
Read back at start, it guarantees a command is never actuated twice, even
across kill -9 or power loss:

- ``done``: the same ack is sent again, nothing else happens;
- ``actuating`` without ``done``: the relay may have dispensed. It is never
  pulsed again; the command is closed as ``failed`` with
  :data:`INTERRUPTED` (a person must check the machine) -- never a guess;
- ``received`` only: nothing was actuated; the command may be judged again.

A torn last line (a crash mid-write) is ignored: its step had not been
confirmed, and each step is journaled before the action it allows.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted during actuation; check the machine"


def _ack_to_json(ack: dict) -> dict:
    return {**ack, "id": ack["id"].hex()}


def _ack_from_json(rec: dict) -> dict:
    return {**rec, "id": bytes.fromhex(rec["id"])}


class CommandJournal:
    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.state: dict[str, str] = {}      # id hex -> received | actuating | done
        self.command: dict[str, dict] = {}   # id hex -> slot, invoice, pulse_ms
        self.acks: dict[str, dict] = {}      # id hex -> the ack sent (done)
        self._load()
        new = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        if self._torn_tail:  # end the torn line, or the next record would be glued onto it
            self._file.write("\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        if new:  # make the file's directory entry durable too
            dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self.interrupted = [i for i, s in self.state.items() if s == "actuating"]
        for i in self.interrupted:
            log.error("command %s was interrupted while its relay was on: not repeating it; check the machine", i)

    def _load(self):
        self._torn_tail = False
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return
        self._torn_tail = bool(text) and not text.endswith("\n")
        lines = text.splitlines()
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._apply(rec)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s line %d unreadable (%s): ignored", self.path, n + 1, exc)

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

    def _append(self, rec):
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._apply(rec)

    # -- queries ------------------------------------------------------------

    def status(self, cid: bytes) -> str | None:
        with self._lock:
            return self.state.get(cid.hex())

    def ack(self, cid: bytes) -> dict | None:
        with self._lock:
            return self.acks.get(cid.hex())

    # -- steps --------------------------------------------------------------

    def received(self, cid: bytes, slot, invoice, pulse_ms) -> None:
        self._append({"id": cid.hex(), "event": "received", "t": time.time(),
                      "slot": slot, "invoice": invoice, "pulse_ms": pulse_ms})

    def actuating(self, cid: bytes, slot, invoice, pulse_ms) -> None:
        self._append({"id": cid.hex(), "event": "actuating", "t": time.time(),
                      "slot": slot, "invoice": invoice, "pulse_ms": pulse_ms})

    def done(self, ack: dict) -> None:
        self._append({"id": ack["id"].hex(), "event": "done", "t": time.time(), "ack": _ack_to_json(ack)})

    def close(self):
        with self._lock:
            self._file.close()
