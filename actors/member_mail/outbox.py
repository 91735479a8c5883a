"""Putting mail into the outbox: rendered once, keyed (kind, handle, period), at most once.

:meth:`MailOutbox.enqueue` renders the kind's templates with the caller's data and inserts
one ``queued`` row with the rendered subject, text and HTML, the recipient as known now and a
Message-ID made now. The same key again is a no-op that says so (``Enqueued.queued`` False,
with the existing row's id and state): a Reporter that publishes a transition twice, a
MemberMail restarted halfway through its monthly run, an operator who asks again, all land
on the one row. What the mail says is fixed at enqueue; who it goes to is not (the
dispatcher asks ``address_of(handle)`` just before sending).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import peewee

from ..db import ensure_tables, write_transaction
from .models import KINDS, TABLES, MailOutbox, db, settings
from .templates import Templates, TemplateError, check_templates

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Enqueued:
    id: int
    queued: bool      # False: that (kind, handle, period) was already in the outbox; nothing was added
    state: str        # the row's state (of the existing row when queued is False)
    message_id: str


def message_id(domain: str, kind: str) -> str:
    """A new Message-ID: 128 random bits, so one per row, never reused by another row."""
    return f"<{secrets.token_hex(16)}.{kind}@{domain}>"


def msgid_domain(config: dict) -> str:
    if config["msgid_domain"]:
        return config["msgid_domain"]
    return config["from"].rsplit("@", 1)[1].strip(" >") or "dctrl.invalid"


class Outbox:
    """The writing side of the outbox for the producer of mail (MemberMail's handlers).

    ``database``: an open peewee database (its ``mail_outbox`` table is made if missing);
    ``config``: the ``[member_mail]`` settings (DEFAULTS for the rest); ``clock``: unix time.
    The templates are checked here (:func:`check_templates`): a broken one raises before the
    first row is written."""

    def __init__(self, database, config: dict | None = None, *, clock=time.time,
                 templates: Templates | None = None):
        self.config = settings(config)
        self.database = database
        self.clock = clock
        db.initialize(database)
        ensure_tables(database, TABLES)
        self.templates = templates or check_templates(self.config["templates_dir"] or None,
                                                      self.config["space_name"])
        self._domain = msgid_domain(self.config)

    def find(self, kind: str, handle: str, period: str = ""):
        return (MailOutbox.select().where((MailOutbox.kind == kind) & (MailOutbox.handle == handle)
                                          & (MailOutbox.period == period)).bind(self.database).first())

    def enqueue(self, kind: str, handle: str, period: str, recipient: str, context: dict) -> Enqueued:
        """Queue mail ``kind`` for member ``handle`` and ``period`` ("" for once per member),
        rendered with ``context`` (the keys of templates.SAMPLES[kind]), to ``recipient``.
        At most once per (kind, handle, period): a second call returns the first row with
        ``queued`` False. Raises TemplateError if the data does not fit the templates."""
        if kind not in KINDS:
            raise TemplateError(f"no mail kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not recipient or "@" not in recipient:
            raise ValueError(f"mail {kind} for {handle}: no usable address")
        existing = self.find(kind, handle, period)
        if existing is not None:
            return self._already(existing)
        rendered = self.templates.render(kind, {**context, "handle": handle})
        now = self.clock()
        values = dict(kind=kind, handle=handle, period=period, recipient=recipient, subject=rendered.subject,
                      text=rendered.text, html=rendered.html, qr=rendered.qr,
                      message_id=message_id(self._domain, kind), state="queued", attempts=0,
                      possible_duplicate=False, next_attempt=now, created=now, updated=now)
        try:
            with write_transaction(self.database):
                existing = self.find(kind, handle, period)  # under the write lock (SQLite) ...
                if existing is not None:
                    return self._already(existing)
                row_id = MailOutbox.insert(**values).bind(self.database).execute()
        except peewee.IntegrityError:  # ... or PostgreSQL's unique key, if another writer won the race
            existing = self.find(kind, handle, period)
            if existing is None:
                raise
            return self._already(existing)
        log.info("mail %s queued: %s for %s (%s)", row_id, kind, handle, period or "once")
        return Enqueued(id=row_id, queued=True, state="queued", message_id=values["message_id"])

    def _already(self, row) -> Enqueued:
        log.info("mail %s for %s (%s) is already in the outbox as %s (%s): not queued again",
                 row.kind, row.handle, row.period or "once", row.id, row.state)
        return Enqueued(id=row.id, queued=False, state=row.state, message_id=row.message_id)
