"""Reads of MemberMail's outbox: take the database, return plain data (for the CLI, reports).

Light on purpose: peewee only, no bus.
"""

from __future__ import annotations

from peewee import fn

from .models import MailOutbox

COLUMNS = ("id", "kind", "handle", "period", "recipient", "subject", "message_id", "state", "attempts",
           "possible_duplicate", "next_attempt", "last_error", "created", "updated", "sent_at")


def outbox(database, state: str | None = None, handle: str | None = None, limit: int = 1000) -> list[dict]:
    """Outbox rows, oldest first, as dicts of ``COLUMNS`` (no bodies), optionally of one state or member."""
    query = MailOutbox.select(*(getattr(MailOutbox, c) for c in COLUMNS)).order_by(MailOutbox.id).limit(limit)
    if state:
        query = query.where(MailOutbox.state == state)
    if handle:
        query = query.where(MailOutbox.handle == handle)
    return list(query.dicts().bind(database))


def one(database, row_id: int) -> dict | None:
    """One outbox row as a dict of ``COLUMNS``, or None."""
    return (MailOutbox.select(*(getattr(MailOutbox, c) for c in COLUMNS)).where(MailOutbox.id == row_id)
            .dicts().bind(database).first())


def counts(database) -> dict[str, int]:
    """How many rows per state, and how many were possibly sent twice."""
    out = {s: n for s, n in MailOutbox.select(MailOutbox.state, fn.COUNT(MailOutbox.id))
           .group_by(MailOutbox.state).tuples().bind(database)}
    out["possible_duplicate"] = (MailOutbox.select().where(MailOutbox.possible_duplicate == True)  # noqa: E712
                                 .bind(database).count())
    return out
