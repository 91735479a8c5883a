"""Business reports as pure functions: monthly income, active members, joins and leaves, retention.

Definitions (docs/architecture.md, "Dues arithmetic (Reporter)"):

- A month is named by its first day (``date(2026, 3, 1)``).
- Income: a dues payment is booked in the month it was *credited* (the money
  reached us then; pending payments are not income), per method; a vending
  sale in the month of its date, per (machine, product). Amounts are integer
  sats and integer CAD cents (sats only where the payment was bitcoin).
- Active on a day: a member whose status that day is prepaid, current, due
  or overdue (not lapsed, not left, already joined). Active members of a month:
  those active on its last day, or on ``as_of`` for the month holding it.
- Joins of a month: joined and rejoin dates in it; leaves: leave dates in it.
- Retention from day a to day b: of the members active on a, the fraction
  still active on b (a :class:`fractions.Fraction`; None when nobody was
  active on a). Monthly retention is a = the last day of the previous month.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction
from typing import Iterable

from .dues import ACTIVE, ONE_DAY, MemberBook, MemberHistory, Payment, Plans, add_months, check_cents, check_day


@dataclass(frozen=True)
class Sale:
    """One vend, as BusinessMgr records it."""

    machine: str
    product: str
    sats: int
    cents: int
    on: date

    def __post_init__(self):
        check_cents(self.sats, "sale sats")
        check_cents(self.cents, "sale cents")
        check_day(self.on, "sale day")


@dataclass
class Amount:
    sats: int = 0
    cents: int = 0

    def add(self, sats: int | None, cents: int) -> None:
        self.sats += sats or 0
        self.cents += cents


@dataclass
class MonthIncome:
    month: date
    dues: dict[str, Amount] = field(default_factory=dict)  # by method
    sales: dict[tuple[str, str], Amount] = field(default_factory=dict)  # by (machine, product)

    @property
    def total(self) -> Amount:
        t = Amount()
        for a in (*self.dues.values(), *self.sales.values()):
            t.add(a.sats, a.cents)
        return t


def month_of(day: date) -> date:
    return day.replace(day=1)


def months(first: date, last: date) -> list[date]:
    """The months from the one holding ``first`` to the one holding ``last``."""
    out, m = [], month_of(first)
    while m <= last:
        out.append(m)
        m = add_months(m, 1)
    return out


def monthly_income(payments: Iterable[Payment], sales: Iterable[Sale]) -> dict[date, MonthIncome]:
    """Income per month (only months with income appear), dues by method, sales by machine and product."""
    out: dict[date, MonthIncome] = {}

    def month(day: date) -> MonthIncome:
        m = month_of(day)
        return out.setdefault(m, MonthIncome(m))

    for p in payments:
        if not p.pending:
            month(p.credited).dues.setdefault(p.method, Amount()).add(p.sats, p.cents)
    for s in sales:
        month(s.on).sales.setdefault((s.machine, s.product), Amount()).add(s.sats, s.cents)
    return dict(sorted(out.items()))


def _books(histories: Iterable[MemberHistory | MemberBook], plans: Plans) -> list[MemberBook]:
    return [h if isinstance(h, MemberBook) else MemberBook(h, plans) for h in histories]


def active_on(histories: Iterable[MemberHistory | MemberBook], plans: Plans, day: date) -> set[str]:
    """The handles of the members active on ``day``."""
    return {b.history.handle for b in _books(histories, plans) if b.status(day) in ACTIVE}


def active_members(histories: Iterable[MemberHistory], plans: Plans, first: date, as_of: date) -> dict[date, int]:
    """Members active at the end of each month from ``first``'s to ``as_of``'s (that one on as_of)."""
    books = _books(histories, plans)
    return {m: len(active_on(books, plans, min(add_months(m, 1) - ONE_DAY, as_of)))
            for m in months(first, as_of)}


def joins_and_leaves(histories: Iterable[MemberHistory], first: date, last: date) -> dict[date, tuple[int, int]]:
    """(joins, leaves) per month from ``first``'s to ``last``'s, rejoins counted as joins."""
    out = {m: [0, 0] for m in months(first, last)}
    for h in histories:
        for d in (h.joined, *h.rejoins):
            if month_of(d) in out:
                out[month_of(d)][0] += 1
        for d in h.leaves:
            if month_of(d) in out:
                out[month_of(d)][1] += 1
    return {m: (j, lv) for m, (j, lv) in out.items()}


def retention(histories: Iterable[MemberHistory], plans: Plans, start: date, end: date) -> Fraction | None:
    """Of the members active on ``start``, the fraction still active on ``end``."""
    books = _books(histories, plans)
    before = active_on(books, plans, start)
    if not before:
        return None
    return Fraction(len(before & active_on(books, plans, end)), len(before))
