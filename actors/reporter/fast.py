"""Every member's state on a day, fast: the common case in closed form, the rest through the core.

:class:`actors.reporter.dues.MemberBook` generates a member's periods one by one (about 4 us
each: 60 of them for five years of a monthly plan). Most members are the simple case: one
stint (never left), one plan, one version of it, dues above zero. Then period k starts
``add_months(anchor, k * months)`` and every period costs the same, so the periods started by
``as_of`` and the periods the credit covers are counted by arithmetic, and only the three
periods a :class:`~actors.reporter.dues.MemberState` names are built. Anything else (a leave,
a plan change, a new price, a free plan, credit reaching past the core's horizon, a day
before joining) goes to the core. tests/test_reporter.py checks the two agree on random
histories.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import date, timedelta
from functools import lru_cache
from typing import Iterable

from .dues import (HORIZON_YEARS, ONE_DAY, MemberBook, MemberHistory, MemberState, Period, Plans, PlanVersion, Status,
                   _status, add_months, check_day)


# Members share anchors (joined dates) and offsets: the calendar arithmetic is memoised.
_add_months = lru_cache(maxsize=1 << 16)(add_months)


def simple_plan(plans: Plans, name: str, joined: date):
    """The one version of plan ``name`` if the closed form applies to it (one version, in force
    on the joined date, dues above 0), else None."""
    days, versions = plans._by_name.get(name, ((), ()))
    if len(versions) != 1 or versions[0].dues_cents <= 0 or versions[0].effective > joined:
        return None
    return versions[0]


def _simple_plan(history: MemberHistory, plans: Plans, as_of: date):
    if history.leaves and history.leaves[0] <= as_of:
        return None
    name = history.plan_changes[0].plan
    if any(c.plan != name for c in history.plan_changes):
        return None
    return simple_plan(plans, name, history.joined)


def fast_state(history: MemberHistory, plans: Plans, as_of: date) -> MemberState | None:
    """The member's state on ``as_of`` if it is the simple case, else None."""
    if as_of < history.joined:
        return None
    plan = _simple_plan(history, plans, as_of)
    if plan is None:
        return None
    credit = 0
    for p in history.payments:
        if not p.pending and p.paid_on <= as_of:
            credit += p.cents
    for a in history.adjustments:
        if a.on <= as_of:
            credit += a.cents
    return closed_form(history.handle, history.joined, plan, credit, as_of)


def _last_started(anchor: date, months: int, as_of: date) -> int:
    """k: the last period (of ``months`` months from ``anchor``) started on or before ``as_of``
    (k >= 0 when as_of >= anchor)."""
    k = ((as_of.year - anchor.year) * 12 + as_of.month - anchor.month) // months
    while _add_months(anchor, (k + 1) * months) <= as_of:
        k += 1
    while k > 0 and _add_months(anchor, k * months) > as_of:
        k -= 1
    return k


def closed_form(handle: str, anchor: date, plan: PlanVersion, credit: int, as_of: date) -> MemberState | None:
    """The state on ``as_of`` of a member who joined on ``anchor`` (never left) on the one version
    ``plan`` (see :func:`simple_plan`), with ``credit`` cents paid and adjusted up to that day;
    None when the core must answer (before joining, credit beyond its horizon)."""
    if as_of < anchor:
        return None
    m, dues = plan.months, plan.dues_cents
    k = _last_started(anchor, m, as_of)
    started = k + 1
    paid = credit // dues if credit > 0 else 0
    if paid * m > (k + 1) * m + 12 * HORIZON_YEARS:
        return None  # far past the core's horizon (and maybe the calendar's end)
    first_unpaid_start = _add_months(anchor, paid * m)
    if first_unpaid_start > _add_months(as_of, 12 * HORIZON_YEARS):
        return None  # the core caps what credit covers at its horizon

    def period(i: int) -> Period:
        return Period(_add_months(anchor, i * m), _add_months(anchor, (i + 1) * m) - ONE_DAY, plan, anchor, i * m)

    current = period(k)
    first_unpaid = period(paid) if paid != k else current
    next_charge = period(started) if started != paid else first_unpaid
    charged = started * dues
    return MemberState(
        handle=handle, as_of=as_of, status=_status(True, current, first_unpaid, next_charge, as_of),
        paid_through=first_unpaid_start - ONE_DAY, balance_cents=credit - charged, charged_cents=charged,
        credited_cents=credit, current=current, first_unpaid=first_unpaid, next_charge=next_charge)


def state(history: MemberHistory, plans: Plans, as_of: date) -> MemberState:
    """The member's state on ``as_of``: the closed form when it applies, else the core."""
    s = fast_state(history, plans, as_of)
    return s if s is not None else MemberBook(history, plans).state(as_of)


def states(histories: Iterable[MemberHistory], plans: Plans, as_of: date) -> list[MemberState]:
    """Every member's state on ``as_of``, in the order given."""
    check_day(as_of, "as_of")
    out = []
    for h in histories:
        s = fast_state(h, plans, as_of)
        out.append(s if s is not None else MemberBook(h, plans).state(as_of))
    return out


def unchanged_until(state: MemberState, fact_days: Iterable[date] = ()) -> date | None:
    """The first day after ``state.as_of`` on which the member's report row (status,
    paid-through, balance, next charge) can differ, if no payment, adjustment or fact is added:
    the next period's start, the oldest unpaid period's start, ``due_on`` and ``lapses_on``, and
    the days of facts dated later (``fact_days``: a leave, a rejoin, a plan change; money dated
    later must be left out by the caller, who counts it). Before joining: the joined day. None
    when the row may change any day (credit reaching the core's horizon: paid-through moves with
    ``as_of``)."""
    as_of = state.as_of
    if state.paid_through >= _add_months(as_of, 12 * HORIZON_YEARS - 12):
        return None
    days = [d for d in fact_days if d > as_of]
    if state.status is None:  # not joined yet: paid_through is the day before joining
        days.append(state.paid_through + ONE_DAY)
    if state.next_charge is not None:
        days.append(state.next_charge.start)
    u = state.first_unpaid
    if u is not None:
        days += [d for d in (u.start, u.due_on, u.lapses_on) if d > as_of]
    return min(days) if days else date.max


def statuses_on(history: MemberHistory, plans: Plans, days: list[date]) -> list:
    """The member's status on each of ``days`` (None before joining), for the monthly reports:
    the credit by bisection over the running totals, then the closed form on the days it
    applies (one plan, one version, no leave by that day), else one :class:`MemberBook` (its
    periods generated once, searched by bisection) for the other days."""
    book = None
    simple = None
    if history.plan_changes and all(c.plan == history.plan_changes[0].plan for c in history.plan_changes):
        simple = simple_plan(plans, history.plan_changes[0].plan, history.joined)
    days_credit: list = []
    totals: list = []
    if simple is not None:
        credits = sorted([(p.paid_on, p.cents) for p in history.payments if not p.pending]
                         + [(a.on, a.cents) for a in history.adjustments])
        t = 0
        for d, c in credits:
            t += c
            days_credit.append(d)
            totals.append(t)
    first_leave = history.leaves[0] if history.leaves else date.max
    out = []
    for day in days:
        if day < history.joined:
            out.append(None)
            continue
        s = None
        if simple is not None and day < first_leave:
            i = bisect_right(days_credit, day)
            s = closed_status(history.joined, simple, totals[i - 1] if i else 0, day)
        if s is None:
            if book is None:
                book = MemberBook(history, plans)
            s = book.state(day).status
        out.append(s)
    return out


def closed_status(anchor: date, plan: PlanVersion, credit: int, as_of: date) -> Status | None:
    """:func:`closed_form`'s status alone (the periods it names are not built), on a day on or
    after ``anchor``; None when the core must answer (credit past its horizon)."""
    m, dues = plan.months, plan.dues_cents
    k = _last_started(anchor, m, as_of)
    paid = credit // dues if credit > 0 else 0
    if paid * m > (k + 1) * m + 12 * HORIZON_YEARS:
        return None
    start = _add_months(anchor, paid * m)  # the first unpaid period's
    if start > _add_months(as_of, 12 * HORIZON_YEARS):
        return None
    if paid <= k:  # an unpaid period has started
        due_on = start + timedelta(days=plan.term_days)
        if as_of < due_on:
            return Status.DUE
        return Status.OVERDUE if as_of < due_on + timedelta(days=plan.grace_days) else Status.LAPSED
    return Status.PREPAID if paid > k + 1 else Status.CURRENT
