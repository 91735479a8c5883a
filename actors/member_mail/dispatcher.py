"""Draining the outbox: every queued mail sent once, or failed visibly, or held for a person.

The dispatcher is the only writer of ``mail_outbox`` rows past ``queued`` (MemberMail runs it;
``dctrl run`` holds a lock per home, so there is one). It takes the database, the settings,
a clock, ``address_of(handle)`` (the member's address now, from MemberData; None: no
address), ``opted_out`` (a callable ``(handle, kind) -> bool``, or a set of handles or of
(handle, kind) pairs; asked only for OPT_OUT_KINDS, so never for receipts) and the SMTP
password (from the Vault).

Crash safety (docs/architecture.md, "Member mail"). Per message::

    MAIL, RCPT accepted -> commit state 'sending' (attempts + 1) -> DATA -> 250 -> commit 'sent'

- killed before the ``sending`` commit: the row is still ``queued``; the server had no DATA,
  so sending it again is no duplicate.
- killed after the 250, before the ``sent`` commit, or while the server had the message but
  had not answered: the row is ``sending`` at the next start. The server may have the mail.
  :meth:`Dispatcher.recover` (run by the constructor) never resends it silently: with
  ``interrupted = "resend"`` (default) the row goes back to ``queued`` with
  ``possible_duplicate`` set, a WARNING naming it, and is sent again with the SAME Message-ID
  and an ``X-Dctrl-Possible-Duplicate`` header; with ``interrupted = "hold"`` it is ``held``
  until an operator releases it (``release(id)``, the coming ``dctrl mail retry ID``).
  The connection lost during DATA is the same case and handled the same way.
- killed after the ``sent`` commit: nothing to do.

So the one duplicate possible comes from a crash inside a window of one DATA reply, is
counted (``possible_duplicate`` on the row, ``stats["possible_duplicates"]``), logged, and
carries the first delivery's Message-ID, by which mail clients and the server's log can tell it.

Failures: connection refused, or lost before DATA, a 4xx, a refused MAIL FROM (our sender,
so every message): the row goes back to ``queued`` with ``next_attempt`` after an
exponential backoff (``retry_base_s`` doubling up to ``retry_max_s``); after a connection
failure the round stops and the next connection waits as long. A 5xx to RCPT or DATA: that
row is ``failed`` with the server's reply in ``last_error`` and a WARNING, and the round
goes on. A mail not accepted ``give_up_after_s`` after it was queued fails too. Rate: at
most ``rate_per_second`` and ``rate_per_minute`` transactions, counted against the injected clock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import peewee

from ..db import ensure_tables, write_transaction
from .message import build, envelope_address
from .models import DIRECT_KINDS, OPT_OUT_KINDS, TABLES, MailOutbox, db, settings
from .smtp import MailDeferred, MailInterrupted, MailRejected, SmtpTransport

log = logging.getLogger(__name__)


class RateLimit:
    """At most ``per_second`` events in any second and ``per_minute`` in any minute (0: no
    limit), judged by ``clock``: a sliding window of the times of the last events."""

    def __init__(self, per_second: int, per_minute: int, clock):
        self.limits = [(1.0, int(per_second)), (60.0, int(per_minute))]
        self.clock = clock
        keep = max([n for _, n in self.limits if n] or [0])
        self._times: collections.deque = collections.deque(maxlen=keep or 1)

    def wait(self) -> float:
        """Seconds until one more event is allowed (0.0: now)."""
        now = self.clock()
        longest = 0.0
        for window, n in self.limits:
            if n and len(self._times) >= n:
                nth_last = self._times[-n]
                longest = max(longest, nth_last + window - now)
        return max(0.0, longest)

    def note(self) -> None:
        if any(n for _, n in self.limits):
            self._times.append(self.clock())


def _opt_out_check(opted_out):
    if opted_out is None:
        return lambda handle, kind: False
    if callable(opted_out):
        return opted_out
    chosen = frozenset(opted_out)
    return lambda handle, kind: handle in chosen or (handle, kind) in chosen


class Dispatcher:
    def __init__(self, database, config: dict | None = None, *, clock=time.time, address_of=None,
                 opted_out=None, password: str | None = None, transport=None, tls_context=None, notify=None):
        self.config = settings(config)
        # notify(row_id, kind, handle, state): called after a row's commit into sent, skipped,
        # failed or held (MemberMail publishes mail.* from it); never with an address.
        self.notify = notify
        self.database = database
        self.clock = clock
        self.address_of = address_of
        self.opted_out = _opt_out_check(opted_out)
        self.transport = transport or SmtpTransport(self.config, password, tls_context)
        self.sender = self.config["from"]
        self.envelope_from = envelope_address(self.sender)
        self.limit = RateLimit(self.config["rate_per_second"], self.config["rate_per_minute"], clock)
        self.stats = collections.Counter()  # sent, failed, deferred, skipped, possible_duplicates
        self._server_failures = 0
        self._server_retry_at = 0.0
        self._draining = threading.Lock()
        self._needs_recovery = False
        db.initialize(database)
        ensure_tables(database, TABLES)
        self.recover()

    # -- start-up ------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Resolve rows left ``sending`` by a crash (see the module doc); returns their ids."""
        found = [r.id for r in MailOutbox.select(MailOutbox.id).where(MailOutbox.state == "sending")
                 .bind(self.database)]
        for row_id in found:
            self._interrupted(self._row(row_id), "found in state 'sending' at start-up (a crash during delivery)")
        return found

    # -- the round -----------------------------------------------------------------------

    def drain(self) -> int:
        """Send what is due, until nothing is, the rate limit says wait or the server is down;
        returns how many were accepted by the server. Call again at :meth:`next_wake`."""
        if not self._draining.acquire(blocking=False):  # never two rounds at once (a slow one and a timer)
            return 0
        try:
            if self._needs_recovery:  # an exception escaped mid-send: a row may be left 'sending'
                self._needs_recovery = False
                self.recover()
            return self._drain()
        finally:
            self._draining.release()

    def _drain(self) -> int:
        sent = 0
        now = self.clock()
        if now < self._server_retry_at:
            return 0
        seen: set[int] = set()  # each row once per round, whatever its backoff
        while True:
            rows = (MailOutbox.select().where((MailOutbox.state == "queued") & (MailOutbox.next_attempt <= now))
                    .order_by(MailOutbox.next_attempt, MailOutbox.id).limit(self.config["batch"])
                    .bind(self.database))
            rows = [r for r in rows if r.id not in seen]
            if not rows:
                return sent
            for row in rows:
                if self.limit.wait() > 0:
                    return sent
                seen.add(row.id)
                try:
                    outcome = self._send(row)
                except BaseException:  # a bug, a database error, the process stopping:
                    self.transport.close()  # leave no SMTP transaction open
                    self._needs_recovery = True
                    raise
                if outcome == "sent":
                    sent += 1
                elif outcome == "stop":
                    return sent
            now = self.clock()

    def next_wake(self) -> float | None:
        """When :meth:`drain` has something to do next (unix time), or None if nothing is queued."""
        first = (MailOutbox.select(MailOutbox.next_attempt).where(MailOutbox.state == "queued")
                 .order_by(MailOutbox.next_attempt).bind(self.database).first())
        if first is None:
            return None
        return max(first.next_attempt, self._server_retry_at, self.clock() + self.limit.wait())

    def _send(self, row) -> str:
        """One row: 'sent', 'next' (done with it, go on) or 'stop' (server down: end the round)."""
        now = self.clock()
        try:
            direct = row.kind in DIRECT_KINDS or not self.address_of
            to = row.recipient if direct else self.address_of(row.handle)
            opted_out = row.kind in OPT_OUT_KINDS and self.opted_out(row.handle, row.kind)
        except Exception as exc:  # MemberData's read failed: not this mail's fault, try later
            log.exception("mail %s: cannot read member %s now", row.id, row.handle)
            self._defer(row, f"member lookup failed: {type(exc).__name__}: {exc}")
            return "next"
        if opted_out:
            self._finish(row, "skipped", f"{row.handle} opted out of {row.kind} mail")
            self.stats["skipped"] += 1
            log.info("mail %s (%s for %s) skipped: opted out", row.id, row.kind, row.handle)
            return "next"
        if now - (row.released or row.created) > self.config["give_up_after_s"]:
            return self._fail(row, f"not accepted within {self.config['give_up_after_s']} s of being queued; "
                                   f"last error: {row.last_error}")
        if not to:
            return self._fail(row, f"member {row.handle} has no mail address")
        if to != row.recipient:
            log.info("mail %s: %s's address changed since it was queued; sending to the current one",
                     row.id, row.handle)
        staging = self.config["staging_to"]
        message = build(row, self.sender, to, staging_to=staging).as_bytes()

        def mark_sending():
            self._mark_sending(row, to)
        try:
            reply = self.transport.send(self.envelope_from, staging or to, message, before_data=mark_sending)
        except MailRejected as exc:
            self.limit.note()
            return self._fail(row, str(exc))
        except MailDeferred as exc:
            self._defer(row, str(exc))
            if exc.connection:
                self._server_down(str(exc))
                return "stop"
            self.limit.note()
            return "next"
        except MailInterrupted as exc:
            self._interrupted(row, str(exc))
            self._server_down(str(exc))
            return "stop"
        self.limit.note()
        self._server_failures = 0
        # Not waiting for PostgreSQL's WAL flush here: losing this commit in a server crash leaves
        # the row 'sending', which recover() resolves like any crash. The 'sending' commit is the
        # one that must be durable, and is. (Measured under load: this commit took about 60 % of
        # the time of the durable one, 0.5 ms a message saved.)
        self._finish(row, "sent", None, durable=False, sent_at=self.clock())
        self.stats["sent"] += 1
        log.info("mail %s sent: %s for %s%s (%s)", row.id, row.kind, row.handle,
                 " (to staging)" if staging else "", reply)
        return "sent"

    # -- state changes (each one commit) ----------------------------------------------------

    def _row(self, row_id: int):
        return MailOutbox.select().where(MailOutbox.id == row_id).bind(self.database).get()

    def _update(self, row_id: int, expect: str, durable: bool = True, **values) -> bool:
        values["updated"] = self.clock()
        with write_transaction(self.database):
            if not durable and isinstance(self.database, peewee.PostgresqlDatabase):
                self.database.execute_sql("SET LOCAL synchronous_commit TO OFF")
            n = (MailOutbox.update(**values).where((MailOutbox.id == row_id) & (MailOutbox.state == expect))
                 .bind(self.database).execute())
        return n == 1

    def _mark_sending(self, row, to: str):
        # Committed before DATA: from here a crash leaves 'sending', which recover() resolves.
        row.attempts += 1
        if not self._update(row.id, "queued", state="sending", attempts=row.attempts, recipient=to):
            raise RuntimeError(f"mail {row.id} changed state under the dispatcher")
        row.state, row.recipient = "sending", to

    def _finish(self, row, state: str, error: str | None, durable: bool = True, **values):
        self._update(row.id, row.state, durable, state=state, last_error=error, **values)
        row.state = state
        self._notify(row, state)

    def _notify(self, row, state: str):
        if self.notify is not None:
            try:
                self.notify(row.id, row.kind, row.handle, state)
            except Exception:  # telling others is not worth losing the round for
                log.exception("mail %s: notify failed", row.id)

    def _fail(self, row, reason: str) -> str:
        if row.state == "queued":
            row.attempts += 1
        self._update(row.id, row.state, state="failed", last_error=reason, attempts=row.attempts)
        row.state = "failed"
        self.stats["failed"] += 1
        log.warning("mail %s (%s for %s) failed: %s", row.id, row.kind, row.handle, reason)
        self._notify(row, "failed")
        return "next"

    def _backoff(self, attempts: int) -> float:
        return min(self.config["retry_base_s"] * 2 ** max(0, attempts - 1), self.config["retry_max_s"])

    def _defer(self, row, reason: str):
        if row.state == "queued":  # (a try that reached DATA counted itself in _mark_sending)
            row.attempts += 1
        delay = self._backoff(row.attempts)
        self._update(row.id, row.state, state="queued", attempts=row.attempts, last_error=reason,
                     next_attempt=self.clock() + delay)
        row.state = "queued"
        self.stats["deferred"] += 1
        log.info("mail %s (%s for %s) deferred %.0f s (attempt %d): %s", row.id, row.kind, row.handle, delay,
                 row.attempts, reason)

    def _server_down(self, reason: str):
        self._server_failures += 1
        delay = self._backoff(self._server_failures)
        self._server_retry_at = self.clock() + delay
        log.warning("SMTP server unusable (%s); next try in %.0f s", reason, delay)

    def _interrupted(self, row, reason: str):
        """A delivery that may or may not have reached the server (see the module doc)."""
        self.stats["possible_duplicates"] += 1
        if self.config["interrupted"] == "hold":
            self._update(row.id, "sending", state="held", possible_duplicate=True,
                         last_error=f"{reason}; held: the member may have it already (dctrl mail retry {row.id})")
            row.state = "held"
            log.warning("mail %s (%s for %s, %s) held for an operator: %s", row.id, row.kind, row.handle,
                        row.message_id, reason)
            self._notify(row, "held")
            return
        self._update(row.id, "sending", state="queued", possible_duplicate=True, next_attempt=self.clock(),
                     last_error=f"{reason}; resent with the same Message-ID, possibly a duplicate")
        row.state = "queued"
        log.warning("mail %s (%s for %s, %s) may have been delivered; resending it with the same Message-ID: %s",
                    row.id, row.kind, row.handle, row.message_id, reason)

    # -- operators ---------------------------------------------------------------------------

    def release(self, row_id: int) -> bool:
        """Put a held or failed mail back in the queue, due now (the coming ``dctrl mail retry ID``)."""
        row = self._row(row_id)
        if row.state not in ("held", "failed"):
            return False
        done = self._update(row_id, row.state, state="queued", next_attempt=self.clock(),
                            released=self.clock())  # (a fresh give-up window)
        log.info("mail %s (%s for %s) released by an operator from %s", row_id, row.kind, row.handle, row.state)
        return done

    def set_password(self, password: str | None) -> None:
        """The SMTP password as the Vault now has it (asked again after a rotation, or when AUTH
        was refused); the next connection uses it."""
        self.transport.set_password(password)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
