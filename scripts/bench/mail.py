"""`dctrl bench mail`: MemberMail's dispatcher against plain smtplib, to a real SMTP server on
loopback (issue 12: "the mail dispatcher sends at least 50 messages a second to the loopback
SMTP server").

The server is the demo's, `dctrl sim smtp` (scripts/sim/smtp.py: aiosmtpd, every message
written into a Maildir), started as a process of its own on a free loopback port and stopped at
the end. For each database (a throwaway SQLite file; PostgreSQL too when ``DCTRL_BENCH_PG_URL``
names one: a schema of its own, dropped at the end), each of ``repeat`` rounds:

- ``--messages`` receipts (default 1,000; ``--quick``: 100) are queued by MemberMail's own
  ``Outbox.enqueue`` (rendered once; timed apart as ``enqueue_msgs_per_s``);
- **baseline**: the same messages, built beforehand as the dispatcher builds them
  (actors/member_mail/message.py), sent by plain ``smtplib`` over one connection
  (``sendmail``: MAIL, RCPT, DATA each): the cost of SMTP to this server and nothing else;
- **dispatcher**: the real ``Dispatcher.drain()`` (actors/member_mail/dispatcher.py), rate limits
  off, sends the queued rows: per message MAIL and RCPT, the ``sending`` commit, DATA, the
  ``sent`` commit, over one connection kept across the round.

Each figure is the median of the rounds; ``ratio_throughput`` = dispatcher / baseline messages a
second (1.0: as fast as smtplib alone). Every message is counted in the Maildir (``received``)
and every row must end ``sent``: a run that lost one fails (exit 1) rather than report a speed.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench import pg_schema_database

ROOT = Path(__file__).resolve().parents[2]
TARGET_MSGS_PER_S = 50
SENDER = "DCTRL <members@example.org>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimSmtp:
    """`dctrl sim smtp` as a process of its own, writing into ``maildir``."""

    def __init__(self, maildir: Path, timeout: float = 30.0):
        self.maildir = Path(maildir)
        self.port = free_port()
        self.log = self.maildir.parent / "sim-smtp.log"  # (a file: a pipe nobody reads would fill and stall it)
        self.maildir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.cli", "sim", "smtp", "--port", str(self.port), "--maildir",
                 str(self.maildir)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:  # until it accepts a connection (or has died, or the deadline passed)
            if self.proc.poll() is not None:
                raise RuntimeError(f"dctrl sim smtp exited {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"dctrl sim smtp did not listen on port {self.port} within {timeout:g} s")
                time.sleep(0.05)

    def received(self) -> int:
        new = self.maildir / "new"
        return len(os.listdir(new)) if new.exists() else 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _per_s(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def measure(database, server: SimSmtp, messages: int, repeat: int) -> dict:
    """``repeat`` rounds of baseline then dispatcher on ``database``; medians and the checks."""
    from actors.member_mail.dispatcher import Dispatcher
    from actors.member_mail.message import build, envelope_address
    from actors.member_mail.models import MailOutbox
    from actors.member_mail.outbox import Outbox
    from actors.member_mail.templates import SAMPLES

    config = {"smtp_host": "127.0.0.1", "smtp_port": server.port, "from": SENDER, "rate_per_second": 0,
              "rate_per_minute": 0}
    outbox = Outbox(database, config)
    rounds = []
    with Dispatcher(database, config) as dispatcher:
        for r in range(repeat):
            t = time.perf_counter()
            ids = []
            for i in range(messages):
                handle = f"m{i:05d}"
                queued = outbox.enqueue("receipt", handle, f"bench{r}:{i}", f"{handle}@example.org",
                                        SAMPLES["receipt"])
                ids.append(queued.id)
            enqueue_s = time.perf_counter() - t
            rows = {row.id: row for row in MailOutbox.select().where(MailOutbox.id.in_(ids)).bind(database)}
            prebuilt = [(rows[i].recipient, build(rows[i], SENDER, rows[i].recipient).as_bytes()) for i in ids]
            envelope = envelope_address(SENDER)

            before = server.received()
            t = time.perf_counter()
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
                smtp.ehlo()
                for to, data in prebuilt:
                    smtp.sendmail(envelope, [to], data)
            baseline_s = time.perf_counter() - t
            baseline_received = server.received() - before

            before = server.received()
            t = time.perf_counter()
            sent = 0
            while sent < messages:  # (one drain sends them all unless the server hiccups)
                got = dispatcher.drain()
                if not got:
                    break
                sent += got
            dispatcher_s = time.perf_counter() - t
            dispatcher_received = server.received() - before
            states = {s for (s,) in MailOutbox.select(MailOutbox.state).where(MailOutbox.id.in_(ids))
                      .bind(database).tuples()}
            rounds.append({"enqueue_s": enqueue_s, "baseline_s": baseline_s, "dispatcher_s": dispatcher_s,
                           "baseline_received": baseline_received, "dispatcher_sent": sent,
                           "dispatcher_received": dispatcher_received, "states": sorted(states)})

    def median(key):
        return statistics.median(x[key] for x in rounds)
    dispatcher_rate = _per_s(messages, median("dispatcher_s"))
    baseline_rate = _per_s(messages, median("baseline_s"))
    complete = all(x["baseline_received"] == messages and x["dispatcher_sent"] == messages
                   and x["dispatcher_received"] == messages and x["states"] == ["sent"] for x in rounds)
    return {
        "database": type(database).__name__,
        "messages": messages,
        "rounds": repeat,
        "dispatcher_ms": round(median("dispatcher_s") * 1000, 1),
        "dispatcher_msgs_per_s": dispatcher_rate,
        "baseline_ms": round(median("baseline_s") * 1000, 1),
        "baseline_msgs_per_s": baseline_rate,
        "ratio_throughput": round(dispatcher_rate / baseline_rate, 3),
        "enqueue_msgs_per_s": _per_s(messages, median("enqueue_s")),
        "received": {"baseline": sum(x["baseline_received"] for x in rounds),
                     "dispatcher": sum(x["dispatcher_received"] for x in rounds)},
        "complete": complete,
        "meets_target": complete and dispatcher_rate >= TARGET_MSGS_PER_S,
    }


def run(messages: int, repeat: int, pg_url: str | None = None) -> dict:
    from actors.db import connect

    out = {"suite": "mail", "messages": messages, "rounds": repeat, "target_msgs_per_s": TARGET_MSGS_PER_S,
           "server": "dctrl sim smtp (aiosmtpd into a Maildir), its own process, loopback",
           "baseline": "smtplib sendmail of the same prebuilt messages over one connection",
           "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        server = SimSmtp(Path(tmp) / "mail")
        try:
            database = connect(f"sqlite:///{tmp}/bench.sqlite3")
            try:
                out["sqlite"] = measure(database, server, messages, repeat)
            finally:
                database.close()
            if pg_url:
                with pg_schema_database(pg_url) as database:
                    out["postgresql"] = measure(database, server, messages, repeat)
        finally:
            server.close()
    out["loadavg_1m_end"] = round(os.getloadavg()[0], 2)  # (the machine's other work: figures are not alone)
    return out


def main(args) -> int:
    quick = bool(getattr(args, "quick", False))
    messages = int(getattr(args, "messages", None) or (100 if quick else 1000))
    out = run(messages, 1 if quick else 3, os.environ.get("DCTRL_BENCH_PG_URL"))
    out["quick"] = quick
    print(json.dumps(out, sort_keys=True))
    return 0 if all(out[db]["complete"] for db in ("sqlite", "postgresql") if db in out) else 1


__all__ = ["SimSmtp", "main", "measure", "run"]
