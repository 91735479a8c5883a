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
- ``report_cursor`` (one row), ``report_member_total``, ``report_dues``, ``report_sales`` and
  ``report_sales_open``: totals kept instead of recomputed (actors/reporter/totals.py): each
  member's credit, the dues per day and method, the sales per month, machine and product, over
  the rows up to the cursor, and each member's report row with the day it can next change.
  Readers add the rows after it.
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


class ReportCursor(Base):
    """How far the totals go (one row, id 1): every member_payment, member_adjustment and
    member_fact row with an id up to ``payment``, ``adjustment`` and ``fact``, the plan versions
    up to ``plan``, every sales_invoice below ``invoice`` except the ones in report_sales_open
    (not final yet)."""
    id = peewee.IntegerField(primary_key=True)
    payment = peewee.BigIntegerField()
    adjustment = peewee.BigIntegerField()
    fact = peewee.BigIntegerField()
    plan = peewee.BigIntegerField()
    invoice = peewee.BigIntegerField()
    updated = peewee.BigIntegerField()  # unix s of the last fold


class ReportMemberTotal(Base):
    """Per member: the payments and adjustments up to the cursor summed (``cents``) and the latest
    day among them; and the member's report row computed from those facts on ``state_on``, which
    stays the same on every day before ``state_until`` (the next day on which the status, the
    balance or the next charge can change), unless facts are added past the cursor."""
    handle = peewee.CharField(primary_key=True, max_length=32)
    cents = peewee.BigIntegerField()
    last_on = peewee.CharField(max_length=10)
    state_on = peewee.CharField(null=True, max_length=10)  # None: no row kept
    state_until = peewee.CharField(null=True, max_length=10)
    status = peewee.CharField(null=True, max_length=8)
    paid_through = peewee.CharField(null=True, max_length=10)
    balance_cents = peewee.BigIntegerField(null=True)
    next_charge = peewee.CharField(null=True, max_length=10)
    next_charge_cents = peewee.BigIntegerField(null=True)


class ReportDues(Base):
    """Dues paid per day and method (cents): the income report's dues."""
    day = peewee.CharField(max_length=10)
    method = peewee.CharField(max_length=16)
    cents = peewee.BigIntegerField()

    class Meta:
        indexes = ((("day", "method"), True),)


class ReportSales(Base):
    """Vending sales per month (YYYY-MM, UTC), machine and product: sats, cents, and the latest
    paid_at counted (unix s)."""
    month = peewee.CharField(max_length=7)
    machine = peewee.CharField(max_length=32)
    product = peewee.CharField(max_length=64)
    sats = peewee.BigIntegerField()
    cents = peewee.BigIntegerField()
    last_paid_at = peewee.BigIntegerField()

    class Meta:
        indexes = ((("month", "machine", "product"), True),)


class ReportSalesOpen(Base):
    """An invoice below the cursor that can still change (not closed, or a vend unanswered): not
    in the totals; readers read it from sales_invoice."""
    invoice = peewee.BigIntegerField(primary_key=True)


TOTALS = [ReportCursor, ReportMemberTotal, ReportDues, ReportSales, ReportSalesOpen]
TABLES = [ReportMemberStatus, ReportTransition, ReportOutage, ReportSnapshot, *TOTALS]
