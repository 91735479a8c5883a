"""The Reporter's tables: what it has judged and published, the feed outages it saw, its snapshots.

The Reporter is their only writer (issue 12 item 4); readers (the CLI) use them read-only.
peewee only: no bus, no scheduler.

- ``report_member_status``: per member, the last status published on ``member.status`` and the
  day of that transition (``on``), and ``judged_through``: the last day whose transitions are
  final and published. The next run computes transitions after that day only, so a transition
  is published once, across restarts too (the row and the events to publish are written in one
  transaction, the events through ``report_outbox``).
- ``report_transition``: every transition published, in order (a history for readers).
- ``report_outage``: a feed (``chain``, ``price``) unhealthy from ``start`` to ``end`` (UTC days,
  inclusive; ``end`` None while it lasts), as the Reporter saw it on the bus.
- ``report_snapshot``: the members and income reports of a day (``kind``, ``as_of``), JSON; a
  later run for the same day replaces its body.
"""

from __future__ import annotations

import peewee

db = peewee.DatabaseProxy()


class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class ReportMemberStatus(Base):
    handle = peewee.CharField(primary_key=True, max_length=32)
    status = peewee.CharField(null=True, max_length=8)  # last published (None: none yet)
    on = peewee.CharField(null=True, max_length=10)  # the day of the last published transition
    judged_through = peewee.CharField(max_length=10)  # ISO date
    held = peewee.CharField(null=True, max_length=256)  # why the next transition waits, if one does


class ReportTransition(Base):
    id = peewee.AutoField()
    handle = peewee.CharField(max_length=32, index=True)
    on = peewee.CharField(max_length=10)
    previous = peewee.CharField(null=True, max_length=8)
    status = peewee.CharField(max_length=8)
    created = peewee.BigIntegerField()


class ReportOutage(Base):
    id = peewee.AutoField()
    feed = peewee.CharField(max_length=8)  # chain | price
    start = peewee.CharField(max_length=10)
    end = peewee.CharField(null=True, max_length=10)
    reason = peewee.CharField(max_length=256)


class ReportSnapshot(Base):
    id = peewee.AutoField()
    kind = peewee.CharField(max_length=16)  # members | income
    as_of = peewee.CharField(max_length=10)
    created = peewee.BigIntegerField()
    body = peewee.TextField()  # JSON

    class Meta:
        indexes = ((("kind", "as_of"), True),)


TABLES = [ReportMemberStatus, ReportTransition, ReportOutage, ReportSnapshot]
