"""Dues arithmetic: schedule, paid-through, balance, status and transitions, as pure functions.

No database, no bus, no clock: every function takes the facts as plain frozen
values (built by MemberData's queries) and an ``as_of`` date. Money is integer
CAD cents. docs/architecture.md, "Dues arithmetic (Reporter)", is the same
contract in prose; the definitions below are the ones the tests hold us to.

Schedule (the anchor rule)
    A membership *stint* runs from the joined date (or a rejoin date) to the
    next leave date (exclusive). Period k of a stint starts ``k`` plan-months
    after the stint's anchor, always counted from the anchor, never from the
    previous period: the day is the anchor's day, or the month's last day when
    the month is shorter. A member who joined on 31 January is charged on
    28 (29) February, 31 March, 30 April, 31 May...: never stuck on the 28th. A
    member who joined on 29 February on a year plan is charged on 28 February in
    common years and 29 February in leap years. A period ends the day before
    the next one starts.

    A month plan is 1 month, a quarter 3, a year 12. The plan in force at a
    period's start decides that period's price and its length, so the offset
    from the anchor grows by the plan's months each period.

Plan changes
    A member's plan is the last :class:`PlanChange` effective on or before a
    period's start; the plan's price is its :class:`PlanVersion` effective on or
    before that same date. A change (or a new price) effective in mid-period
    therefore applies from the next period start: a period is never re-priced
    or split, so no pro-rata arithmetic exists anywhere.

Leaving and rejoining
    No period starts on or after a leave date while the member is away; the
    period running on the leave date stays charged (no refund: an admin's
    adjustment can give one). A rejoin restarts the schedule with the rejoin
    date as the new anchor, except when the member comes back inside the last
    period charged before leaving: then the old schedule simply continues
    (same anchor, the next charge at its next start), so nobody pays twice for
    the same days. Credit and arrears follow the member across stints.

    Leaves and rejoins dated after ``as_of`` have not happened yet and are
    ignored; plan changes and plan versions dated later are known prices and
    apply to the periods they cover (they only matter to how far credit
    reaches).

Credit
    A payment counts from its ``paid_on`` date: when it was *made* (for a
    bitcoin payment the earliest of first seen in the mempool and its block's
    time) if known, else when it was credited. A payment seen but not yet
    confirmed (``credited`` is None) counts nowhere yet: it only holds back
    transitions (actors/reporter/feeds.py). Adjustments are
    signed amounts on their date. Credits are applied to the periods in
    schedule order: a period is paid when the cumulative credit covers it and
    every earlier period; a partial payment leaves the period unpaid and the
    remainder waits as credit.

    ``paid_through`` is the last day of the last paid period (the day before
    the first period when none is paid). ``balance`` is the credit minus the
    dues of every period started on or before ``as_of`` (negative: the member
    owes). Periods starting after ``as_of`` are not charged yet, but credit
    covers them for ``paid_through`` (at most :data:`HORIZON_YEARS` ahead).

Status on ``as_of`` (U is the oldest unpaid period; its plan version gives
``term_days`` and ``grace_days``; due_on = U.start + term_days, lapses_on =
due_on + grace_days)
    ``prepaid``  every period started is paid, and so is the next one;
    ``current``  every period started is paid, the next is not (or there is none);
    ``due``      U has started: U.start <= as_of < due_on;
    ``overdue``  due_on <= as_of < lapses_on (within the grace);
    ``lapsed``   as_of >= lapses_on;
    ``left``     the member has left and not rejoined by ``as_of``.
    Before the joined date there is no status (None), nothing is charged or
    covered, and paid_through is the day before joining. A payment made on the
    last day of the grace (lapses_on - 1) that covers U keeps the member out of
    ``lapsed``. With term_days 0 there is no ``due`` day; with grace_days 0
    there is no ``overdue`` day. A reminder before a period starts is for
    :func:`upcoming_charge` (a ``current`` member whose next, uncovered period
    starts within the notice), keyed by that period's start.

Transitions
    ``transitions(history, plans, from_date, to_date)`` lists each change of
    status on a day d with from_date < d <= to_date, once, dated d: replaying
    them over status(from_date) gives status(d) for every d in the range.
    Status only changes on a period start, a due_on or lapses_on date, a
    payment's or adjustment's date, a leave or a rejoin, so only those days are
    evaluated (a property test checks this against every day). :class:`MemberBook`
    generates a member's periods once and answers each day by bisection.

    The status of day d counts everything paid on d (a payment on the last
    day of the grace keeps the member out of ``lapsed``), so a day is final
    only once it is over: the Reporter judges transitions up to yesterday, and
    a status for today is provisional.
"""

from __future__ import annotations

import calendar
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Iterator

from proto.errors import DctrlError

PERIOD_MONTHS = {"month": 1, "quarter": 3, "year": 12}

# Credit is spread over future periods for paid_through at most this far ahead of as_of: a
# free plan (0 cents) or a huge credit must not walk the calendar forever. 100 years of
# monthly periods is 1,200 steps.
HORIZON_YEARS = 100

ONE_DAY = timedelta(days=1)


class DuesError(DctrlError, ValueError):
    """Facts that cannot describe a member (leaves out of order, no plan, float money)."""

    code = "bad_dues_facts"


class Status(StrEnum):
    PREPAID = "prepaid"
    CURRENT = "current"
    DUE = "due"
    OVERDUE = "overdue"
    LAPSED = "lapsed"
    LEFT = "left"


# Statuses of a member in good enough standing to count as active (business reports).
ACTIVE = frozenset({Status.PREPAID, Status.CURRENT, Status.DUE, Status.OVERDUE})


def check_cents(value, what: str) -> int:
    # bool is an int; a float is never money.
    if not isinstance(value, int) or isinstance(value, bool):
        raise DuesError(f"{what} must be integer cents, not {value!r}")
    return value


def check_day(value, what: str) -> date:
    # datetime is a date subclass: a timestamp here would compare wrongly with plain dates.
    if not isinstance(value, date) or hasattr(value, "hour"):
        raise DuesError(f"{what} must be a datetime.date, not {value!r}")
    return value


# -- facts ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlanVersion:
    """One version of a plan: its price from ``effective`` on (plans are versioned like policies).

    ``term_days``: the days after a period's start during which its dues are ``due`` and not
    yet ``overdue``. ``grace_days``: the days after that during which the member is
    ``overdue`` and not yet ``lapsed``."""

    name: str
    dues_cents: int
    period: str
    grace_days: int
    effective: date = date.min
    term_days: int = 7

    def __post_init__(self):
        if check_cents(self.dues_cents, "dues_cents") < 0:
            raise DuesError(f"plan {self.name}: dues cannot be negative")
        if self.period not in PERIOD_MONTHS:
            raise DuesError(f"plan {self.name}: period must be one of {sorted(PERIOD_MONTHS)}, not {self.period!r}")
        for name in ("grace_days", "term_days"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DuesError(f"plan {self.name}: {name} must be a whole number of days >= 0, not {v!r}")
        check_day(self.effective, "effective")

    @property
    def months(self) -> int:
        return PERIOD_MONTHS[self.period]


@dataclass(frozen=True)
class Plans:
    """Every version of every plan; ``at(name, day)`` is the version in force on that day."""

    versions: tuple[PlanVersion, ...]
    _by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        by_name: dict[str, list[PlanVersion]] = {}
        for v in self.versions:
            by_name.setdefault(v.name, []).append(v)
        index = {}
        for name, vs in by_name.items():
            vs.sort(key=lambda v: v.effective)  # stable: of two on the same day, the later listed wins
            index[name] = ([v.effective for v in vs], vs)
        object.__setattr__(self, "versions", tuple(self.versions))
        object.__setattr__(self, "_by_name", index)

    def at(self, name: str, day: date) -> PlanVersion:
        try:
            days, vs = self._by_name[name]
        except KeyError:
            raise DuesError(f"unknown plan {name!r}") from None
        i = bisect_right(days, day)
        if i == 0:
            raise DuesError(f"plan {name!r} has no version in force on {day}")
        return vs[i - 1]


@dataclass(frozen=True)
class PlanChange:
    """From ``effective`` on, the member's plan is ``plan`` (a name in :class:`Plans`)."""

    effective: date
    plan: str


@dataclass(frozen=True)
class Payment:
    """Money received for dues.

    ``credited``: the day it was booked (for bitcoin, when it reached the plan's
    confirmations); None while it is seen but not confirmed (pending). ``made``: when the
    member made it, for bitcoin the earliest of first seen and its block's time; None for a
    manual payment (it counts from ``credited``). ``cents`` is its CAD value, fixed when first
    seen. ``key`` is the idempotency key (txid:vout, or the admin entry's id)."""

    credited: date | None
    cents: int
    method: str = "bitcoin"
    made: date | None = None
    sats: int | None = None
    key: str = ""

    def __post_init__(self):
        check_cents(self.cents, "payment cents")
        if self.credited is None and self.made is None:
            raise DuesError("a payment needs the day it was made or credited")
        if self.credited is not None:
            check_day(self.credited, "credited")
        if self.made is not None:
            check_day(self.made, "made")
            if self.credited is not None and self.made > self.credited:
                raise DuesError(f"payment {self.key}: made {self.made} after it was credited {self.credited}")
        if self.sats is not None and (not isinstance(self.sats, int) or isinstance(self.sats, bool)):
            raise DuesError(f"payment {self.key}: sats must be an integer")

    @property
    def pending(self) -> bool:
        return self.credited is None

    @property
    def paid_on(self) -> date:
        """The day from which it counts (once credited)."""
        return self.made if self.made is not None else self.credited


@dataclass(frozen=True)
class Adjustment:
    """A signed correction in cents on a day: positive credits the member, negative charges."""

    on: date
    cents: int
    note: str = ""

    def __post_init__(self):
        check_day(self.on, "adjustment day")
        check_cents(self.cents, "adjustment cents")


@dataclass(frozen=True)
class GroupChange:
    """From ``on``, the member is in ``group`` (``member`` True) or out of it (False)."""

    on: date
    group: str
    member: bool = True

    def __post_init__(self):
        check_day(self.on, "group change day")


@dataclass(frozen=True)
class MemberHistory:
    """Everything the dues arithmetic needs about one member (facts only, nothing derived).

    ``plan_changes`` must hold one effective on or before ``joined``. Leaves and rejoins
    alternate: joined <= leave1 < rejoin1 <= leave2 < rejoin2..."""

    handle: str
    joined: date
    plan_changes: tuple[PlanChange, ...]
    payments: tuple[Payment, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    leaves: tuple[date, ...] = ()
    rejoins: tuple[date, ...] = ()
    groups: tuple[GroupChange, ...] = ()

    def __post_init__(self):
        check_day(self.joined, "joined")
        changes = tuple(sorted(self.plan_changes, key=lambda c: check_day(c.effective, "plan change")))
        if not changes or changes[0].effective > self.joined:
            raise DuesError(f"member {self.handle}: no plan in force on the joined date {self.joined}")
        object.__setattr__(self, "plan_changes", changes)
        for name in ("payments", "adjustments", "leaves", "rejoins", "groups"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        leaves, rejoins = self.leaves, self.rejoins
        if not (len(leaves) - 1 <= len(rejoins) <= len(leaves)):
            raise DuesError(f"member {self.handle}: {len(leaves)} leaves and {len(rejoins)} rejoins do not alternate")
        start = self.joined
        for i, leave in enumerate(leaves):
            if check_day(leave, "leave") < start:
                raise DuesError(f"member {self.handle}: left on {leave}, before (re)joining on {start}")
            if i < len(rejoins):
                start = check_day(rejoins[i], "rejoin")
                if start <= leave:
                    raise DuesError(f"member {self.handle}: rejoined on {start}, not after leaving on {leave}")


# -- schedule -------------------------------------------------------------------------------------

def add_months(anchor: date, months: int) -> date:
    """The anchor's day ``months`` later, or that month's last day when it is shorter."""
    years, month0 = divmod(anchor.month - 1 + months, 12)
    year = anchor.year + years
    last = 29 if month0 == 1 and calendar.isleap(year) else _MONTH_DAYS[month0]
    return date(year, month0 + 1, min(anchor.day, last))


# Days of each month in a common year (calendar.monthrange also computes a weekday: twice the time).
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True)
class Period:
    """One charge: [start, end] inclusive, at the plan version in force on ``start``."""

    start: date
    end: date
    plan: PlanVersion
    anchor: date
    offset: int  # months from the anchor

    @property
    def dues_cents(self) -> int:
        return self.plan.dues_cents

    @property
    def due_on(self) -> date:
        """The first day its dues are overdue if unpaid."""
        return self.start + timedelta(days=self.plan.term_days)

    @property
    def lapses_on(self) -> date:
        """The first day the member is lapsed if it is still unpaid (the day after the grace)."""
        return self.due_on + timedelta(days=self.plan.grace_days)


def _plan_at(history: MemberHistory, plans: Plans, day: date) -> PlanVersion:
    name = None
    for change in history.plan_changes:  # sorted; the last one in force wins
        if change.effective > day:
            break
        name = change.plan
    if name is None:
        raise DuesError(f"member {history.handle}: no plan in force on {day}")
    return plans.at(name, day)


def _stints(history: MemberHistory, as_of: date | None) -> list[tuple[date, date | None]]:
    """[start, end) of each membership stint, leaves and rejoins after ``as_of`` not yet happened."""
    stints = []
    start = history.joined
    for i, leave in enumerate(history.leaves):
        if as_of is not None and leave > as_of:
            break
        stints.append((start, leave))
        if i >= len(history.rejoins) or (as_of is not None and history.rejoins[i] > as_of):
            return stints
        start = history.rejoins[i]
    stints.append((start, None))
    return stints


def periods(history: MemberHistory, plans: Plans, as_of: date | None = None) -> Iterator[Period]:
    """The member's periods in order; endless while the last stint is open.

    Leaves and rejoins dated after ``as_of`` (if given) are ignored: they have not happened."""
    last: Period | None = None
    for start, end in _stints(history, as_of):
        if last is not None and last.start < start <= last.end:
            anchor, offset = last.anchor, last.offset + last.plan.months  # back inside a charged period
        else:
            anchor, offset = start, 0
        p_start = add_months(anchor, offset)
        while end is None or p_start < end:
            plan = _plan_at(history, plans, p_start)
            next_start = add_months(anchor, offset + plan.months)
            last = Period(p_start, next_start - ONE_DAY, plan, anchor, offset)
            yield last
            offset += plan.months
            p_start = next_start


def schedule(history: MemberHistory, plans: Plans, until: date) -> list[Period]:
    """The periods starting on or before ``until`` (the charges made by then)."""
    out = []
    for p in periods(history, plans, until):
        if p.start > until:
            break
        out.append(p)
    return out


# -- state on a day -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemberState:
    """What the Reporter publishes for one member on ``as_of``."""

    handle: str
    as_of: date
    status: Status | None
    paid_through: date
    balance_cents: int  # credit minus dues charged so far; negative: owes
    charged_cents: int
    credited_cents: int
    current: Period | None  # the period running on as_of (None when left or not yet joined)
    first_unpaid: Period | None
    next_charge: Period | None  # the next period to start after as_of, if any

    def summary(self) -> dict:
        """Plain data for an event body or a report row: the handle, never personal data; dates
        as ISO strings; money as integer cents."""
        return {"handle": self.handle, "as_of": self.as_of.isoformat(),
                "status": None if self.status is None else self.status.value,
                "paid_through": self.paid_through.isoformat(), "balance_cents": self.balance_cents,
                "next_charge": None if self.next_charge is None else self.next_charge.start.isoformat(),
                "next_charge_cents": None if self.next_charge is None else self.next_charge.dues_cents}


def credit_cents(history: MemberHistory, as_of: date) -> int:
    """Payments (counted from their paid_on day, pending ones not at all) and adjustments up to as_of."""
    paid = sum(p.cents for p in history.payments if not p.pending and p.paid_on <= as_of)
    return paid + sum(a.cents for a in history.adjustments if a.on <= as_of)


class _Ledger:
    """The periods of one cut of a history (its leaves and rejoins up to some day), generated only
    as far as a question needs, with the running total of their dues."""

    def __init__(self, history: MemberHistory, plans: Plans, cut: date):
        self._more = periods(history, plans, cut)
        self.periods: list[Period] = []
        self.starts: list[date] = []
        self.total: list[int] = []  # total[i]: the dues of periods[0..i]

    def _next(self) -> bool:
        p = next(self._more, None)
        if p is None:
            self._more = iter(())
            return False
        self.periods.append(p)
        self.starts.append(p.start)
        self.total.append((self.total[-1] if self.total else 0) + p.dues_cents)
        return True

    def reach(self, as_of: date, credit: int) -> None:
        """Generate past the first period starting after as_of and past the first one credit does
        not cover (or past the horizon)."""
        while (not self.starts or self.starts[-1] <= as_of) and self._next():
            pass
        horizon = add_months(as_of, 12 * HORIZON_YEARS)
        while self.total and self.total[-1] <= credit and self.starts[-1] <= horizon and self._next():
            pass


class MemberBook:
    """One member's facts, ready for many ``as_of`` questions (transitions, monthly reports):
    the periods of each cut are generated once and searched by bisection."""

    def __init__(self, history: MemberHistory, plans: Plans):
        self.history, self.plans = history, plans
        # Leaves and rejoins alternate and increase: how many fall on or before a day decides the cut.
        self._marks = sorted((*history.leaves, *history.rejoins))
        self._ledgers: dict[int, _Ledger] = {}
        credits = sorted([(p.paid_on, p.cents) for p in history.payments if not p.pending]
                         + [(a.on, a.cents) for a in history.adjustments])
        self._credit_days = [d for d, _ in credits]
        self._credit_totals, t = [], 0
        for _, cents in credits:
            t += cents
            self._credit_totals.append(t)

    def credit(self, as_of: date) -> int:
        i = bisect_right(self._credit_days, as_of)
        return self._credit_totals[i - 1] if i else 0

    def state(self, as_of: date) -> MemberState:
        """Paid-through, balance and status on ``as_of`` (see the module docstring for the rules)."""
        h = self.history
        check_day(as_of, "as_of")
        marks = bisect_right(self._marks, as_of)
        ledger = self._ledgers.get(marks)
        if ledger is None:
            ledger = self._ledgers[marks] = _Ledger(h, self.plans, as_of)
        credit = self.credit(as_of)
        if as_of < h.joined:  # not a member yet: nothing charged, nothing covered
            return MemberState(h.handle, as_of, None, h.joined - ONE_DAY, credit, 0, credit, None, None, None)
        ledger.reach(as_of, credit)
        started = bisect_right(ledger.starts, as_of)  # periods charged by as_of
        paid = bisect_right(ledger.total, credit)  # periods credit covers, in order (dues are >= 0)
        ps = ledger.periods
        in_horizon = bisect_right(ledger.starts, add_months(as_of, 12 * HORIZON_YEARS))
        if paid >= in_horizon:  # covered as far as we look: nothing unpaid within the horizon
            paid, ps = in_horizon, ps[:in_horizon]
        active = marks % 2 == 0  # an odd count: the last mark is a leave
        current = ps[started - 1] if active and started and ps[started - 1].end >= as_of else None
        first_unpaid = ps[paid] if paid < len(ps) else None
        next_charge = ps[started] if started < len(ps) else None
        charged = ledger.total[started - 1] if started else 0
        return MemberState(
            handle=h.handle, as_of=as_of, status=_status(active, current, first_unpaid, next_charge, as_of),
            paid_through=ps[paid - 1].end if paid else h.joined - ONE_DAY, balance_cents=credit - charged,
            charged_cents=charged, credited_cents=credit, current=current, first_unpaid=first_unpaid,
            next_charge=next_charge)

    def status(self, as_of: date) -> Status | None:
        return self.state(as_of).status


def member_state(history: MemberHistory, plans: Plans, as_of: date) -> MemberState:
    """Paid-through, balance and status on ``as_of`` (see the module docstring for the rules)."""
    return MemberBook(history, plans).state(as_of)


def _status(active, current, first_unpaid, next_charge, as_of) -> Status:
    if not active:
        return Status.LEFT
    if first_unpaid is not None and first_unpaid.start <= as_of:
        if as_of < first_unpaid.due_on:
            return Status.DUE
        if as_of < first_unpaid.lapses_on:
            return Status.OVERDUE
        return Status.LAPSED
    # Everything started is paid. Prepaid when the next period is paid too.
    if next_charge is not None and (first_unpaid is None or first_unpaid.start > next_charge.start):
        return Status.PREPAID
    return Status.CURRENT


def status(history: MemberHistory, plans: Plans, as_of: date) -> Status | None:
    return member_state(history, plans, as_of).status


def paid_through(history: MemberHistory, plans: Plans, as_of: date) -> date:
    return member_state(history, plans, as_of).paid_through


def balance_cents(history: MemberHistory, plans: Plans, as_of: date) -> int:
    return member_state(history, plans, as_of).balance_cents


def upcoming_charge(state: MemberState, notice_days: int) -> Period | None:
    """The period a reminder is for on ``state.as_of``: the next one, when it starts within
    ``notice_days`` and the credit does not cover it, and the member is not already behind
    (then overdue and lapsed mails speak). Its start is the reminder's key with the member's
    handle, so MemberMail sends one reminder per period."""
    nxt = state.next_charge
    if state.status != Status.CURRENT or nxt is None:
        return None  # prepaid: covered; due, overdue, lapsed: behind already; left: no charges
    return nxt if (nxt.start - state.as_of).days <= notice_days else None


# -- transitions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    """``handle``'s status went from ``old`` to ``new`` on the day ``on`` (old is None on joining)."""

    handle: str
    on: date
    old: Status | None
    new: Status


def _change_days(history: MemberHistory, plans: Plans, to_date: date) -> set[date]:
    """Every day on which the status can change, up to to_date."""
    days = {history.joined, *history.leaves, *history.rejoins}
    days.update(p.paid_on for p in history.payments if not p.pending)
    days.update(a.on for a in history.adjustments)
    for p in periods(history, plans, to_date):
        if p.start > to_date:
            break
        days.update((p.start, p.due_on, p.lapses_on))
    return days


def transitions(history: MemberHistory, plans: Plans, from_date: date, to_date: date) -> list[Transition]:
    """The status changes on days d, from_date < d <= to_date, in order, each once."""
    check_day(from_date, "from_date")
    check_day(to_date, "to_date")
    out = []
    if to_date <= from_date:
        return out
    book = MemberBook(history, plans)
    before = book.status(from_date)
    for day in sorted(d for d in _change_days(history, plans, to_date) if from_date < d <= to_date):
        now = book.status(day)
        if now != before:
            out.append(Transition(history.handle, day, before, now))
            before = now
    return out
