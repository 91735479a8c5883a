"""MemberMail on the bus: member events in, mail out through the outbox (issue 12, item 3).

Start-up, in order (each step stops the actor if it fails, before anything is sent):

1. the ``[member_mail]`` settings checked (:func:`~actors.member_mail.models.settings`);
2. every template rendered with sample data (:func:`~actors.member_mail.templates.check_templates`):
   a broken template raises :class:`TemplateError` and the process exits;
3. (in ``setup``) the :class:`~actors.member_mail.dispatcher.Dispatcher` made, whose
   ``recover()`` resolves rows a crash left ``sending``: resent flagged
   ``X-Dctrl-Possible-Duplicate`` with the same Message-ID, or ``held`` (``interrupted``);
4. with ``smtp_user`` set, the password asked of the Vault (secret ``smtp_password``, readable by
   ``member_mail`` in policy.toml's ``[secrets]``); nothing is sent until it arrives. It is
   handed to the transport, never logged, never in an exception's text.

Threads. The loop thread (the runtime's) handles events and commands: it reads MemberData's
tables and inserts ``queued`` rows (:class:`~actors.member_mail.outbox.Outbox`), a few
milliseconds of database work, then wakes the sender. The sender is ONE thread of this actor
(``member_mail-send``) that runs ``Dispatcher.drain()`` and sleeps until ``next_wake()`` or
until woken: SMTP (connect, TLS, a slow or stalled server: up to ``smtp_timeout`` per exchange)
never blocks the loop, so heartbeats, tokens and commands go on while a server hangs. One
thread and not ``@on(..., blocking=True)`` on the runtime's pool: the pool would run
several drains at once for several events (the dispatcher refuses a second round, but the
wake-up would be lost) and has no timer; one sender keeps one SMTP connection and the rate
limit in one place. The sender publishes ``mail.sent|failed|held`` through
``runtime.publish`` (safe from any thread: queued to the loop).

The table has one writer: this process. The loop thread only inserts rows and releases held
or failed ones (``cmd.mail.retry``); the sender alone moves rows through
``sending``/``sent``/``failed``, each change a conditional UPDATE on the state it expects.

Events: ``member.changed`` kind ``joined`` queues the welcome (key (welcome, handle, "")),
kind ``paid`` the receipt (key (receipt, handle, txid:vout or payment:<id>)); see
:mod:`actors.member_mail.context`. The same event again (redelivered, replayed from the
event log, MemberData's outbox resending after a crash) meets the unique key and queues
nothing. The member's address is read from MemberData's table at send time (``address_of``),
so a changed address is used by mail queued before the change. Events missed (the actor was
away, the bus lost them) are found by :meth:`MemberMail.reconcile` from a cursor over
MemberData's rows, at start-up and every 60 s; history before the first start is not mailed.

``member.status`` (the Reporter's, from ``reporter`` only) queues overdue, lapsed and reinstated
(:func:`~actors.member_mail.context.status_mail_kind`), keyed by the transition's day, if it is
at most ``status_max_age_days`` old (a Reporter's first run publishes whole histories, dated);
the transitions not heard are read from ``report_transition`` by the same reconcile (a cursor
set at its highest id at the first start). :meth:`MemberMail.daily` queues the reminders
(``reminder_days`` before an uncovered period, keyed by its start) and, from the 1st to the
7th of a month, the previous month's statements (keyed by the month), in batches. The
dispatcher skips the reminders and statements a member opted out of (MemberData's
``opted_out``), never other kinds.

``payout.awaiting_signatures`` (PayoutMgr's, from ``payout_mgr`` only: a payout's PSBT, or a
bump's replacement, is ready) queues a mail to each of ``[member_mail] cosigners`` (member
handles: their address is MemberData's, as for every mail), keyed (payout, handle, payout:N):
one per co-signer and payout, ever. Its data is read from PayoutMgr's ``payout`` table
(destination, reason, who asked), never from the event alone; a payout no longer awaiting
signatures is not mailed. A handle that is no member, or forgotten, is logged and named in
health (degraded). Payouts awaiting signatures whose event was not heard are found by the same
reconcile (above a mark set at the first start). Not opt-out-able: signing is a duty.

Commands (from ``admin``): ``cmd.mail.retry {row}`` and ``cmd.mail.send_test {to}``, answered
on ``mail.ack``. A retried command (same id) gets the same answer from a memory of the last
1,000 ids (a restart forgets them: retry is harmless twice, a test mail's key is its command id).
"""

from __future__ import annotations

import collections
import datetime
import logging
import re
import threading
import time

from keys.home import Home

from ..db import connect, write_transaction
from ..reporter.reports import member_rows
from ..runtime import Actor, every, on
from . import context
from .dispatcher import Dispatcher
from .models import MailCursor, settings
from .outbox import Outbox
from .templates import check_templates

log = logging.getLogger(__name__)

ACK = "mail.ack"
SECRET = "smtp_password"
ASK_AGAIN_S = 30.0  # a refused or unanswered secret is asked for again this often
STOP_WAIT_S = 5.0  # teardown waits this long for the sender (a hung server: the process ends anyway)
RECONCILE_S = 60.0  # MemberData's new rows are looked at this often (events missed while away)
DAILY_CHECK_S = 300.0  # whether today's reminders and the month's statements are done, this often
STATEMENT_LATE_DAYS = 7  # a month's statements go from the 1st of the next month up to its 7th
STATEMENT_BATCH = 200  # members whose statement is built per check (each a few queries)
TRANSITIONS = "report_transition"  # mail_cursor's name for the Reporter's table
PAYOUTS = "payout"  # mail_cursor's name for PayoutMgr's table: a fixed mark (see _reconcile_payouts)
IDLE_S = 60.0      # the sender looks at the outbox at least this often
MIN_WAIT_S = 0.05  # ... and at most this often (no busy loop on a row due now that cannot go)


class MemberMail(Actor):
    IDENTITY = "member_mail"

    def __init__(self, home: Home, *, database=None, clock=time.time, config: dict | None = None,
                 tls_context=None):
        self.home = home
        self.clock = clock
        self.config = settings(home.config.get("member_mail", {}) if config is None else config)
        # a broken template stops the actor here, before the database is touched or anything sent
        self.templates = check_templates(self.config["templates_dir"] or None, self.config["space_name"])
        self.own_database = database is None
        self.database = database or connect(home.database_url)
        self.outbox = Outbox(self.database, self.config, clock=clock, templates=self.templates)
        self.tls_context = tls_context
        self.dispatcher: Dispatcher | None = None
        self.needs_password = bool(self.config["smtp_user"])
        self._password = None
        self._password_new = threading.Event()  # set by on_secret, taken by the sender
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acks: collections.OrderedDict = collections.OrderedDict()
        self.error: str | None = None
        self.queued = 0
        self._reminders_day: datetime.date | None = None  # the day the reminders were last looked for
        self._statement_progress: tuple[str, str | None] = ("", "")  # (month, last handle done; None: all)
        self.cosigner_problems: dict[str, str] = {}  # [member_mail] cosigners not mailable: handle -> why

    # -- lifecycle (loop thread) -----------------------------------------------------------

    def setup(self):
        self.reconcile()  # what was recorded while this actor was away (before the first event)
        self.dispatcher = Dispatcher(self.database, self.config, clock=self.clock, address_of=self._address_of,
                                     opted_out=self._opted_out, tls_context=self.tls_context, notify=self._notify)
        if self.needs_password:
            self.runtime.request_secret(SECRET)
        self._thread = threading.Thread(target=self._sender, name="member_mail-send", daemon=True)
        self._thread.start()

    def teardown(self):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # (a daemon thread: if a server holds it mid-DATA the process ends anyway, and the
            # row left 'sending' is resolved at the next start like any crash)
            self._thread.join(timeout=STOP_WAIT_S)
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.own_database:
            self.database.close()

    def health(self):
        if self.error:
            return "degraded", self.error
        if self.cosigner_problems:
            return "degraded", ("[member_mail] cosigners not mailed: "
                                + "; ".join(f"{h}: {why}" for h, why in sorted(self.cosigner_problems.items())))
        if self.needs_password and not self._password_new.is_set() and self._password is None:
            return "degraded", f"waiting for secret {SECRET} from the Vault"
        stats = self.dispatcher.stats if self.dispatcher else {}
        return "ok", (f"{self.queued} queued, {stats.get('sent', 0)} sent, {stats.get('failed', 0)} failed, "
                      f"{stats.get('deferred', 0)} deferred")

    def on_secret(self, name, value, error):
        if name != SECRET:
            return
        if error:
            self.error = f"the Vault refused secret {SECRET}: {error}"
            log.warning("%s", self.error)
            return
        self._password = value.decode()  # kept for the sender; never logged
        self.error = None
        self._password_new.set()
        self._wake.set()

    @every(ASK_AGAIN_S)
    def ask_again(self):
        """Until the Vault has answered with the password, ask again (a refusal is an answer the
        runtime does not retry: the operator may add the reader to [secrets] meanwhile)."""
        if self.needs_password and self._password is None:
            self.runtime.request_secret(SECRET)

    def wake(self):
        """Have the sender look at the outbox now (any thread)."""
        self._wake.set()

    # -- the sender thread -----------------------------------------------------------------

    def _address_of(self, handle: str) -> str | None:
        return context.members.email_of(self.database, handle)

    def _opted_out(self, handle: str, kind: str) -> bool:
        """MemberData's record (``members set --opt-out``), read just before sending; the
        dispatcher asks only for reminders and statements."""
        return context.members.opted_out(self.database, handle, kind)

    def _notify(self, row_id, kind, handle, state):
        if state in ("sent", "failed", "held"):
            self.runtime.publish(f"mail.{state}", {"id": row_id, "kind": kind, "handle": handle or None})

    def _auth_refused(self):
        """AUTH refused with the password we have: ask the Vault again, once per refusal (it may
        have been rotated: `dctrl vault set-secret smtp_password`); the sender's backoff applies."""
        transport = self.dispatcher.transport
        if self.needs_password and getattr(transport, "auth_refused", False):
            transport.auth_refused = False
            log.warning("SMTP AUTH as %r refused: asking the Vault for %s again", self.config["smtp_user"], SECRET)
            self.runtime.call_soon(self.runtime.request_secret, SECRET)

    def _sender(self):
        try:
            while not self._stop.is_set():
                self._wake.clear()
                if self._password_new.is_set():
                    self._password_new.clear()
                    self.dispatcher.set_password(self._password)
                wait = IDLE_S
                if not self.needs_password or self._password is not None:
                    try:
                        self.dispatcher.drain()
                        self._auth_refused()
                        wake = self.dispatcher.next_wake()
                        if wake is not None:
                            wait = min(IDLE_S, max(MIN_WAIT_S, wake - self.clock()))
                    except Exception as exc:  # the database gone, a bug: said, and tried again later
                        log.exception("mail round failed")
                        self.error = f"mail round failed: {type(exc).__name__}: {exc}"[:300]
                        wait = 5.0
                    else:
                        if self.error and self.error.startswith("mail round failed"):
                            self.error = None
                self._wake.wait(wait)
        finally:
            self.database.close()  # this thread's connection (peewee keeps one per thread)

    # -- events (loop thread) --------------------------------------------------------------

    @on("member.changed")
    def member_changed(self, msg):
        body = msg.body
        if msg.sender != "member_data":  # (the broker grants member.* to member_data only)
            log.warning("member.changed from %s ignored", msg.sender)
            return
        if body["kind"] == "joined":
            self.queue("welcome", body["handle"])
        elif body["kind"] == "paid":
            self.queue("receipt", body["handle"], body["ref"])

    @on("member.status")
    def member_status(self, msg):
        """The Reporter's transition: overdue, lapsed or reinstated mail (context.status_mail_kind)."""
        if msg.sender != "reporter":  # (the grant "member" lets member_data publish it too)
            log.warning("member.status from %s ignored", msg.sender)
            return
        body = msg.body
        self.transition(body["handle"], body["previous"], body["status"], body["on"])

    @on("payout.awaiting_signatures")
    def payout_awaiting(self, msg):
        """PayoutMgr built a payout's PSBT (or a bump's replacement): each co-signer is asked to
        sign it, once per payout (key (payout, handle, payout:N)). The details are read from
        PayoutMgr's table, not taken from the event."""
        if msg.sender != "payout_mgr":  # (the broker grants payout.* to payout_mgr only)
            log.warning("payout.awaiting_signatures from %s ignored", msg.sender)
            return
        self.ask_cosigners(msg.body["payout"], msg.body.get("needed"))

    def cosigners(self) -> list[str]:
        """The ``[member_mail] cosigners`` that can be mailed now: each a member with an address.
        The others are logged (when that changes) and named in health (degraded)."""
        problems = {}
        good = []
        known = self.database.table_exists("member_member")
        for handle in self.config["cosigners"]:
            m = context.members.member(self.database, handle) if known else None
            if m is None:
                problems[handle] = "no such member"
            elif m["forgotten"] is not None or not m["email"]:
                problems[handle] = "no mail address (forgotten)"
            else:
                good.append(handle)
        if problems != self.cosigner_problems:
            for handle, why in sorted(problems.items()):
                log.warning("[member_mail] cosigners: %s: %s; no payout mail goes to them", handle, why)
            self.cosigner_problems = problems
        return good

    def needed(self) -> int | None:
        """The signatures a payout needs: k of ``[treasury] descriptor``'s sortedmulti (None: not
        configured here). For the catch-up; an event says it (``needed``)."""
        found = re.search(r"sortedmulti\(\s*(\d+)\s*,", self.home.config.get("treasury", {}).get("descriptor") or "")
        return int(found.group(1)) if found else None

    def ask_cosigners(self, payout_id: int, needed: int | None = None) -> int:
        """Queue the mail asking each co-signer to sign payout ``payout_id`` (at most once per
        co-signer and payout); returns how many were queued."""
        n = 0
        for handle in self.cosigners():
            if self.outbox.find("payout", handle, f"payout:{payout_id}") is not None:
                continue  # (asked already: not built again)
            done = self.queue("payout", handle, payout_id, needed)
            n += bool(done and done.queued)
        return n

    def today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc).date()

    def transition(self, handle: str, previous: str | None, status: str, on: str):
        """Queue the mail of one transition (from its event or from ``report_transition``), once
        per (kind, handle, day), if it is recent: a Reporter started on an old database
        publishes every member's history, dated; only the last ``status_max_age_days`` are mailed."""
        kind = context.status_mail_kind(previous, status)
        if kind is None:
            return None
        today = self.today()
        age = (today - datetime.date.fromisoformat(on)).days
        if age > self.config["status_max_age_days"]:
            log.info("no %s mail for %s: the transition %s -> %s is dated %s, %d days ago (status_max_age_days "
                     "%d: history, or published late)", kind, handle, previous, status, on, age,
                     self.config["status_max_age_days"])
            return None
        return self.queue(kind, handle, on, today)

    def queue(self, kind: str, handle: str, *args):
        """Queue ``kind`` for ``handle`` once (the outbox's key); returns the Enqueued or None."""
        try:
            period, data = context.BUILDERS[kind](self.database, handle, *args)
            email = context.members.email_of(self.database, handle)
            done = self.outbox.enqueue(kind, handle, period, email, data)
        except context.NoMail as exc:
            log.info("no %s mail: %s", kind, exc)
            return None
        except ValueError as exc:  # no usable address
            log.warning("no %s mail for %s: %s", kind, handle, exc)
            return None
        if done.queued:
            self.queued += 1
            self.wake()
        return done

    @every(RECONCILE_S)
    def reconcile(self) -> int:
        """Queue the mail of MemberData's rows recorded since the cursor (``mail_cursor``): what
        member.changed events this actor did not hear (it was stopped, or the bus lost them: it
        keeps nothing for a subscriber that is away). The events are the prompt; this is the
        record. The same row twice meets the outbox's key. At the first start the cursor is
        set at MemberData's highest ids: history (an imported list, years of payments) is
        never mailed. Returns how many mails were queued."""
        cursor = {c.name: c.last_id for c in MailCursor.select().bind(self.database)}
        first = "member_fact" not in cursor
        if not self.database.table_exists("member_fact"):  # member_data has not run: nothing yet
            if first:
                self._save_cursor(0, 0)
            return self._reconcile_transitions(cursor) + self._reconcile_payouts(cursor)
        n = self._reconcile_transitions(cursor) + self._reconcile_payouts(cursor)
        seen = context.members.changes_after(self.database, cursor.get("member_fact", 0),
                                             cursor.get("member_payment", 0))
        if first:
            self._save_cursor(seen["max_fact"], seen["max_payment"])
            log.info("mail cursor set at member fact %d, payment %d: earlier rows are not mailed",
                     seen["max_fact"], seen["max_payment"])
            return n
        for _, handle, _ in seen["facts"]:
            done = self.queue("welcome", handle)
            n += bool(done and done.queued)
        for payment_id, handle in seen["payments"]:
            done = self.queue("receipt", handle, payment_id)
            n += bool(done and done.queued)
        full = 1000  # (changes_after's limit: the rest at the next call)
        fact = seen["facts"][-1][0] if len(seen["facts"]) == full else seen["max_fact"]
        payment = seen["payments"][-1][0] if len(seen["payments"]) == full else seen["max_payment"]
        self._save_cursor(max(fact, cursor.get("member_fact", 0)), max(payment, cursor.get("member_payment", 0)))
        if n:
            log.info("%d mail(s) queued for member rows whose events were not heard", n)
        return n

    def _reconcile_transitions(self, cursor: dict) -> int:
        """The Reporter's transitions recorded in ``report_transition`` since the cursor: the
        member.status events this actor did not hear. At the first start (no cursor) the cursor
        is set at the highest id, so the history there is never mailed; a transition recorded
        later is mailed if recent (:meth:`transition`), once (the key)."""
        last = cursor.get(TRANSITIONS)
        seen = context.transitions_after(self.database, last or 0)
        if last is None:
            self._save(TRANSITIONS, seen["max"])
            cursor[TRANSITIONS] = seen["max"]
            log.info("mail cursor set at report transition %d: earlier transitions are not mailed", seen["max"])
            return 0
        n = 0
        for _, handle, previous, status, on in seen["rows"]:
            done = self.transition(handle, previous, status, on)
            n += bool(done and done.queued)
        top = seen["rows"][-1][0] if len(seen["rows"]) == 1000 else seen["max"]
        if top > last:
            self._save(TRANSITIONS, top)
            cursor[TRANSITIONS] = top
        if n:
            log.info("%d status mail(s) queued for transitions whose events were not heard", n)
        return n

    def _reconcile_payouts(self, cursor: dict) -> int:
        """The payouts awaiting signatures whose co-signers have not been asked (the event not
        heard: member_mail was away, the bus lost it, a co-signer added to the config since).
        The cursor here is a fixed mark, not a moving one: at the first start it is set at the
        highest payout id there is, and only payouts above it are ever mailed from the table
        (history, and payouts already waiting then, are not); every call looks at all payouts
        above it that await signatures now (few: a payout waits at most ``[payouts] open_hours``),
        because a payout reaches that state after its row is made (approvals), so an id cursor
        moved past a requested payout would miss it. The outbox's key makes it once."""
        if self.config["cosigners"]:
            self.cosigners()  # (a co-signer unknown or forgotten: said in health from the start)
        mark = cursor.get(PAYOUTS)
        if mark is None:
            mark = context.payouts_top(self.database)
            self._save(PAYOUTS, mark)
            cursor[PAYOUTS] = mark
            log.info("mail cursor set at payout %d: payouts up to it are not mailed from the table", mark)
            return 0
        waiting = context.payouts_awaiting(self.database, mark)
        if not waiting or not self.config["cosigners"]:
            return 0
        needed = self.needed()
        n = sum(self.ask_cosigners(payout_id, needed) for payout_id in waiting)
        if n:
            log.info("%d payout mail(s) queued for payouts whose events were not heard", n)
        return n

    def _save(self, name: str, value: int):
        with write_transaction(self.database):
            (MailCursor.insert(name=name, last_id=value)
             .on_conflict(conflict_target=[MailCursor.name], update={MailCursor.last_id: value})
             .bind(self.database).execute())

    # -- the daily mails (loop thread) -------------------------------------------------------

    @every(DAILY_CHECK_S)
    def daily(self, today: datetime.date | None = None) -> int:
        """Once a day (UTC; looked at every few minutes): reminders, and from the 1st of a month
        the statements of the month before. Keyed by the period's start and the month, so a
        restart or a second run the same day queues nothing new. Returns how many were queued."""
        today = today or self.today()
        if not self.database.table_exists("member_member"):  # member_data has not run yet: no members
            return 0
        n = 0
        if self._reminders_day != today:
            n += self.reminders(today)
            self._reminders_day = today
        n += self.statements(today)
        return n

    def reminders(self, today: datetime.date) -> int:
        """A reminder to each member whose next period starts within ``reminder_days`` and is not
        covered (dues.upcoming_charge). Every member's state in one pass (reports.member_rows),
        the reminder's data read for the few it concerns."""
        notice = self.config["reminder_days"]
        n = 0
        for row in member_rows(self.database, today):
            nxt = row.get("next_charge")
            if row["status"] != "current" or nxt is None:
                continue
            if (datetime.date.fromisoformat(nxt) - today).days > notice:
                continue
            if self.outbox.find("reminder", row["handle"], nxt) is not None:
                continue  # (already queued for that period: not built again)
            done = self.queue("reminder", row["handle"], today, notice)
            n += bool(done and done.queued)
        if n:
            log.info("%d reminder(s) queued (periods starting within %d days of %s)", n, notice, today)
        return n

    def statements(self, today: datetime.date) -> int:
        """The statements of the month before ``today``'s, from its 1st to its STATEMENT_LATE_DAYS-th
        day (a member_mail stopped on the 1st catches up), STATEMENT_BATCH members a call in
        handle order (the data of each is a few queries: the loop stays free), once per member
        and month (the key). Returns how many were queued by this call."""
        if today.day > STATEMENT_LATE_DAYS:
            return 0
        month = context.previous_month(today)
        period = month.isoformat()[:7]
        done_month, after = self._statement_progress
        if done_month != period:
            after = ""
        if after is None:
            return 0  # this month's are done (in this run of the actor)
        handles = [h for h in sorted(context.members.handles(self.database)) if h > after][:STATEMENT_BATCH]
        n = 0
        for handle in handles:
            if self.outbox.find("statement", handle, period) is None:
                done = self.queue("statement", handle, month)
                n += bool(done and done.queued)
        self._statement_progress = (period, handles[-1] if len(handles) == STATEMENT_BATCH else None)
        if n:
            log.info("%d statement(s) for %s queued", n, period)
        return n

    def _save_cursor(self, fact: int, payment: int):
        with write_transaction(self.database):
            for name, value in (("member_fact", fact), ("member_payment", payment)):
                (MailCursor.insert(name=name, last_id=value)
                 .on_conflict(conflict_target=[MailCursor.name], update={MailCursor.last_id: value})
                 .bind(self.database).execute())

    # -- commands (loop thread) -------------------------------------------------------------

    @on("cmd.mail")
    def command(self, msg):
        body = msg.body
        cid = body["id"]
        ack = self._acks.get(cid)
        if ack is None:
            ack = self._execute(msg.topic, body)
            self._acks[cid] = ack
            while len(self._acks) > 1000:
                self._acks.popitem(last=False)
        self.runtime.publish(ACK, ack)

    def _execute(self, topic: str, body: dict) -> dict:
        ack = {"id": body["id"], "status": "done", "reason": None, "row": None}
        if body["expires"] < self.clock():
            return {**ack, "status": "refused", "reason": "command expired"}
        if topic == "cmd.mail.retry":
            ack["row"] = body["row"]
            try:
                released = self.dispatcher.release(body["row"])
            except Exception:  # no such row (peewee's DoesNotExist)
                return {**ack, "status": "refused", "reason": f"no mail {body['row']} in the outbox"}
            if not released:
                state = self.outbox_state(body["row"])
                return {**ack, "status": "refused", "reason": f"mail {body['row']} is {state}: only a held or "
                                                              "failed mail is retried"}
            self.wake()
            return ack
        if topic == "cmd.mail.send_test":
            done = self.outbox.enqueue("test", "", f"test:{body['id'].hex()}", body["to"], {})
            self.wake()
            return {**ack, "row": done.id}
        return {**ack, "status": "refused", "reason": f"unknown command {topic}"}

    def outbox_state(self, row_id: int) -> str | None:
        from .models import MailOutbox

        row = MailOutbox.select(MailOutbox.state).where(MailOutbox.id == row_id).bind(self.database).first()
        return row.state if row else None


__all__ = ["ACK", "SECRET", "MemberMail"]
