"""The reports as plain data, computed from the database on a day: for the Reporter's snapshots
and for `dctrl report` (which reads the database directly, the same functions).

A reader: peewee and the pure core only. Money in integer cents and sats, dates ISO. Members are
named by their handle only.
"""

from __future__ import annotations

import operator
import re
import threading
import weakref
from collections import Counter, OrderedDict
from datetime import date
from fractions import Fraction

import peewee

from proto.errors import DctrlError

from .business import month_of, monthly_income
from .dues import ACTIVE, ONE_DAY, Adjustment, DuesError, MemberBook, MemberHistory, PlanChange, Status, add_months
from .fast import closed_form, closed_status, state, statuses_on
from .groups import KEYHOLDER_STATUSES, GroupRule, groups_on
from .inputs import load
from .totals import dues_income, income_version, kept_rows, members_version, sales_income, snapshot


def member_rows(database, as_of: date) -> list[dict]:
    """Every member's status, paid-through and balance on ``as_of``, by handle: the rows the
    Reporter kept that still hold on that day (totals.kept_rows), and the others computed, each
    member's credit from the kept totals and the rows since (inputs.load with since=as_of)."""
    return _answer(database, "members", as_of, _members_version, lambda: _member_rows(database, as_of),
                   _copy_rows, one_statement=True)


def _member_rows(database, as_of: date) -> list[dict]:
    with snapshot(database):
        rows, stale = kept_rows(database, as_of)
        if stale is None:
            rows = {}
        if stale is None or stale:
            rows.update((r["handle"], r) for r in _computed_rows(database, as_of, stale))
    return sorted(rows.values(), key=lambda r: r["handle"])


def _members_version(database, as_of: date) -> tuple:
    return members_version(database)


def _copy_rows(rows: list[dict]) -> list[dict]:
    return list(map(dict.copy, rows))


# -- answers kept for a reader asked again and again (the report server) ------------------------

class _Memo:
    """The last answers of the readers for one database, by what they depend on (thread-safe).

    On SQLite each thread also remembers, for its connection, the ``PRAGMA data_version`` it saw
    before it last read each version (the number changes whenever another connection commits):
    while it is the same, nothing was written since, so the version is still the one read and
    the answer is found without a transaction or a query but that pragma."""

    def __init__(self, size: int):
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict = OrderedDict()
        self.local = threading.local()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def stamp(self, database):
        """(connection, data_version) of this thread's SQLite connection, outside a transaction;
        None elsewhere (PostgreSQL: the versions are read every time)."""
        if not isinstance(database, peewee.SqliteDatabase) or database.in_transaction():
            return None
        conn = database.connection()
        return conn, conn.execute("PRAGMA data_version").fetchone()[0]

    def recent(self, stamp, what):
        """The key this thread last found for ``what`` if the database is unchanged since."""
        local = self.local
        if stamp is None or getattr(local, "stamp", None) is None:
            return None
        if local.stamp[0] is not stamp[0] or local.stamp[1] != stamp[1]:
            return None
        return local.keys.get(what)

    def remember(self, stamp, what, key) -> None:
        if stamp is None:
            return
        local = self.local
        old = getattr(local, "stamp", None)
        if old is None or old[0] is not stamp[0] or old[1] != stamp[1]:
            local.stamp, local.keys = stamp, {}
        local.keys[what] = key


_MEMOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def keep_answers(database, size: int = 16) -> None:
    """Keep :func:`member_rows`', :func:`member_counts`', :func:`activity_rows`' and
    :func:`income_rows`' answers for
    ``database`` (a server asked the same report by many clients): each is kept with what it
    depends on, read in the same snapshot at every call (totals.members_version,
    totals.income_version: a few cheap queries; on SQLite only after another connection wrote:
    :class:`_Memo`), and given again, as a copy, while that has not changed. The answers are the
    same as without (tests/test_reporter_answers.py); only the work differs."""
    _MEMOS.setdefault(database, _Memo(size))


def _answer(database, name: str, as_of: date, version_of, compute, copy, one_statement: bool = False):
    """``compute()``, or the answer kept for (``name``, ``as_of``, ``version_of(database,
    as_of)``) when ``database`` keeps answers (a copy of it: a caller may change what it gets).
    A version of None: nothing is kept. ``one_statement``: ``version_of`` is one statement on
    PostgreSQL (consistent by itself), so a kept answer is found without a transaction."""
    memo = _memo(database)
    if memo is None:
        return compute()
    what = (name, as_of)
    stamp = memo.stamp(database)  # (before the version is read: a write in between is seen next time)
    key = memo.recent(stamp, what)
    if key is None and one_statement and isinstance(database, peewee.PostgresqlDatabase) and \
            not database.in_transaction():
        try:
            version = version_of(database, as_of)
        except peewee.DatabaseError:  # (a table missing: the snapshot below says so, or copes)
            version = None
        key = (name, as_of, version) if version is not None else None
    if key is not None:
        kept = memo.get(key)
        if kept is not None:
            return copy(kept)
    with snapshot(database):
        version = version_of(database, as_of)
        key = (name, as_of, version) if version is not None else None
        kept = memo.get(key) if key is not None else None
        if kept is None:
            out = compute()  # (in the same snapshot)
    if key is None:
        return out
    if kept is not None:
        memo.remember(stamp, what, key)
        return copy(kept)
    memo.put(key, copy(out))
    memo.remember(stamp, what, key)
    return out


def _memo(database) -> _Memo | None:
    try:
        return _MEMOS.get(database)
    except TypeError:  # (not weakly referable: never kept)
        return None


def _computed_rows(database, as_of: date, handles: list[str] | None) -> list[dict]:
    inputs = load(database, as_of, since=as_of, simple=True, handles=handles)
    rows = []
    for h, joined, version, credit in inputs.simple:
        s = closed_form(h, joined, version, credit, as_of)
        if s is None:  # (before joining, or credit past the horizon): the core, from the same facts
            s = MemberBook(MemberHistory(h, joined, (PlanChange(joined, version.name),),
                                         adjustments=(Adjustment(as_of, credit),) if credit else ()),
                           inputs.plans).state(as_of)
        rows.append(s.summary())
    for h in inputs.histories:
        try:
            rows.append(state(h, inputs.plans, as_of).summary())
        except DuesError as exc:  # e.g. a plan with no version in force: reported, the others computed
            inputs.broken[h.handle] = str(exc)
    rows += [{"handle": h, "as_of": as_of.isoformat(), "status": "error", "paid_through": None, "balance_cents": None,
              "next_charge": None, "next_charge_cents": None, "error": why} for h, why in inputs.broken.items()]
    return rows


def member_report(database, handle: str, as_of: date) -> dict | None:
    """One member on ``as_of``: the summary, plus the current and first unpaid periods; None if unknown."""
    inputs = load(database, as_of, handle=handle)
    if inputs.broken:
        return {"handle": handle, "as_of": as_of.isoformat(), "status": "error", "error": inputs.broken[handle]}
    if not inputs.histories:
        return None
    try:
        s = MemberBook(inputs.histories[0], inputs.plans).state(as_of)
    except DuesError as exc:
        return {"handle": handle, "as_of": as_of.isoformat(), "status": "error", "error": str(exc)}

    def period(p):
        return None if p is None else {"start": p.start.isoformat(), "end": p.end.isoformat(), "plan": p.plan.name,
                                       "dues_cents": p.dues_cents, "due_on": p.due_on.isoformat(),
                                       "lapses_on": p.lapses_on.isoformat()}
    return {**s.summary(), "charged_cents": s.charged_cents, "credited_cents": s.credited_cents,
            "current_period": period(s.current), "first_unpaid": period(s.first_unpaid)}


def counts(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status, n in Counter(map(_STATUS, rows)).items():  # (a Counter counts in C: a third faster)
        key = status or "none"
        out[key] = out.get(key, 0) + n
    return dict(sorted(out.items()))


_STATUS = operator.itemgetter("status")


def member_counts(database, as_of: date) -> dict[str, int]:
    """``counts(member_rows(database, as_of))``: members by status on ``as_of``. Kept like
    member_rows' answers (:func:`keep_answers`), and then with no rows copied."""
    return _answer(database, "member_counts", as_of, _members_version,
                   lambda: counts(_member_rows(database, as_of)), dict, one_statement=True)


def income_rows(database, as_of: date) -> list[dict]:
    """Income per month up to ``as_of``: dues by method, vending sales by machine and product,
    each in sats and CAD cents, and the month's totals."""
    return _answer(database, "income", as_of, income_version, lambda: _income_rows(database, as_of), _copy_income,
                   one_statement=True)


def _income_rows(database, as_of: date) -> list[dict]:
    out = []
    with snapshot(database):
        dues, sales = dues_income(database, as_of), sales_income(database, as_of)
    for month, inc in monthly_income(dues, sales).items():
        total = inc.total
        out.append({"month": month.isoformat()[:7],
                    "dues": {m: {"sats": a.sats, "cents": a.cents} for m, a in sorted(inc.dues.items())},
                    "sales": [{"machine": mc, "product": pr, "sats": a.sats, "cents": a.cents}
                              for (mc, pr), a in sorted(inc.sales.items())],
                    "total_sats": total.sats, "total_cents": total.cents})
    return out


def _copy_income(rows: list[dict]) -> list[dict]:
    return [{**r, "dues": {m: dict(a) for m, a in r["dues"].items()}, "sales": [dict(x) for x in r["sales"]]}
            for r in rows]


# -- business reports: activity per month, groups (issue 12) ------------------------------------

def percent(fraction: Fraction | None) -> str | None:
    """A retention as a percentage with one decimal ("87.5"), rounded half up; None stays None."""
    if fraction is None:
        return None
    tenths = int(fraction * 1000 + Fraction(1, 2))  # (>= 0: floor is int())
    return f"{tenths // 10}.{tenths % 10}"


def activity_rows(database, as_of: date, months: int = 12) -> list[dict]:
    """Per month, the last ``months`` up to the one holding ``as_of`` (oldest first): members
    active at its end (on ``as_of`` for the running month), joins (joined and rejoin dates in it),
    leaves, and retention from the previous month's end (Fraction, and ``retention`` as a
    percentage string, ``retention_permille`` an int; None when nobody was active then).

    The definitions are actors/reporter/business.py's; the cost is not its per-day recomputation.
    The simple members (one plan, never left: inputs.load ``simple``) come with their credit on
    ``as_of`` (the kept totals); their money in the window is summed by the database per month,
    so the credit at each month end is a subtraction and the status the closed form
    (fast.closed_status). The others are loaded with the money up to the day before the first
    month summed (``since``: exact for every day after) and go through
    :func:`actors.reporter.fast.statuses_on` (closed form while it applies, else one MemberBook).
    Joins and leaves dated after ``as_of`` are not counted (not yet, on that day)."""
    if not isinstance(months, int) or isinstance(months, bool) or not 1 <= months <= 120:
        raise DctrlError(f"months must be an integer from 1 to 120, not {months!r}")
    return _answer(database, ("activity", months), as_of, _members_version,
                   lambda: _activity_rows(database, as_of, months), _copy_rows, one_statement=True)


def _activity_rows(database, as_of: date, months: int) -> list[dict]:
    first = add_months(month_of(as_of), -(months - 1))
    starts = [add_months(first, i) for i in range(months)]
    before = first - ONE_DAY
    days = [before, *(min(add_months(m, 1) - ONE_DAY, as_of) for m in starts)]
    with snapshot(database):  # the facts and the money of one moment
        inputs = load(database, as_of, since=as_of, simple=True)
        others = [h.handle for h in inputs.histories]
        money = _money_by_month(database, before, as_of, starts) if inputs.simple else {}
        rest = load(database, as_of, since=before, handles=others) if others else None
    active: list[set] = [set() for _ in days]
    joins = {m: 0 for m in starts}
    leaves = {m: 0 for m in starts}
    none = [0] * months
    for h, joined, version, credit in inputs.simple:
        # the credit at each month end: the total on as_of less the money dated after that end
        sums = money.get(h, none)
        credit_on = [0] * len(days)
        credit_on[-1] = credit
        for i in range(months - 1, -1, -1):
            credit_on[i] = credit_on[i + 1] - sums[i]
        for i, day in enumerate(days):
            if day < joined:
                continue
            st = closed_status(joined, version, credit_on[i], day)
            if st is None:  # credit past the core's horizon: the core, from the same facts
                st = MemberBook(MemberHistory(h, joined, (PlanChange(joined, version.name),),
                                              adjustments=(Adjustment(day, credit_on[i]),) if credit_on[i] else ()),
                                inputs.plans).status(day)
            if st in ACTIVE:
                active[i].add(h)
        if first <= joined <= as_of:
            joins[month_of(joined)] += 1
    broken = {**inputs.broken, **(rest.broken if rest else {})}
    for h in rest.histories if rest else ():
        try:
            got = statuses_on(h, rest.plans, days)
        except DuesError as exc:  # a plan with no version in force: left out, as by the member report
            broken[h.handle] = str(exc)
            continue
        for i, st in enumerate(got):
            if st in ACTIVE:
                active[i].add(h.handle)
        for d in (h.joined, *h.rejoins):
            if first <= d <= as_of:
                joins[month_of(d)] += 1
        for d in h.leaves:
            if first <= d <= as_of:
                leaves[month_of(d)] += 1
    out = []
    for i, m in enumerate(starts):
        prev, now = active[i], active[i + 1]
        kept = Fraction(len(prev & now), len(prev)) if prev else None
        out.append({"month": m.isoformat()[:7], "end": days[i + 1].isoformat(), "active": len(now),
                    "joins": joins[m], "leaves": leaves[m], "retention_fraction": kept,
                    "retention": percent(kept),
                    "retention_permille": None if kept is None else int(kept * 1000 + Fraction(1, 2))})
    return out


def _money_by_month(database, before: date, as_of: date, starts: list[date]) -> dict[str, list[int]]:
    """Each member's payments and adjustments dated after ``before`` up to ``as_of``, summed by
    the database per month (one list per handle, the months of ``starts``)."""
    index = {m.isoformat()[:7]: i for i, m in enumerate(starts)}
    out: dict[str, list[int]] = {}
    for table in ("member_payment", "member_adjustment"):
        sql = (f'SELECT "handle", SUBSTR("on", 1, 7), SUM("cents") FROM "{table}" WHERE "on" > ? AND "on" <= ? '
               'GROUP BY "handle", SUBSTR("on", 1, 7)').replace("?", database.param)
        for h, month, cents in database.execute_sql(sql, (before.isoformat(), as_of.isoformat())).fetchall():
            sums = out.get(h)
            if sums is None:
                sums = out[h] = [0] * len(starts)
            sums[index[month]] += int(cents)
    return out


def activity_json(rows: list[dict]) -> list[dict]:
    """The rows without the Fractions (for JSON)."""
    return [{k: v for k, v in r.items() if k != "retention_fraction"} for r in rows]


KEYHOLDERS = GroupRule("keyholders", KEYHOLDER_STATUSES, "keys")
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a rule's, an explicit group's (proto/topics.py NAME)


def group_rules(config: dict | None) -> list[GroupRule]:
    """The rule groups of ``[reporter.groups]`` (a table of name = {statuses = [...], group = "..."});
    absent: the default, keyholders = current members (prepaid, current, due) of group keys.
    When given, the table lists every rule (the default is not added). Raises DctrlError naming
    the rule and the key for anything else."""
    if config is None:
        return [KEYHOLDERS]
    if not isinstance(config, dict):
        raise DctrlError(f"[reporter.groups] must be a table of rules, not {config!r}")
    names = ", ".join(s.value for s in Status)
    rules = []
    for name, spec in sorted(config.items()):
        where = f"[reporter.groups] {name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise DctrlError(f"[reporter.groups] rule name {name!r}: a lowercase letter, then letters, digits, '-' "
                             f"or '_', at most 32")
        if not isinstance(spec, dict):
            raise DctrlError(f"{where} must be a table like {{statuses = [\"current\"], group = \"keys\"}}, "
                             f"not {spec!r}")
        unknown = sorted(set(spec) - {"statuses", "group"})
        if unknown:
            raise DctrlError(f"{where}: unknown key {unknown[0]!r} (known: statuses, group)")
        statuses = spec.get("statuses")
        if not isinstance(statuses, list) or not statuses or not all(isinstance(x, str) for x in statuses):
            raise DctrlError(f"{where}: statuses must be a non-empty list of statuses ({names})")
        bad = [x for x in statuses if x not in Status._value2member_map_]
        if bad:
            raise DctrlError(f"{where}: unknown status {bad[0]!r} (known: {names})")
        group = spec.get("group")
        if group is not None and (not isinstance(group, str) or not NAME.fullmatch(group)):
            raise DctrlError(f"{where}: group must be an explicit group's name (a string), not {group!r}")
        rules.append(GroupRule(name, frozenset(Status(x) for x in statuses), group))
    return rules


def group_rows(database, as_of: date, rules: list[GroupRule] | None = None) -> list[dict]:
    """The groups on ``as_of``: every explicit group with members (kind explicit), then each rule
    (kind rule: members_of's selection), each with its members' handles, sorted. The
    members' statuses come from the closed form where it applies (fast.py), the groups from
    the facts (groups.groups_on)."""
    rules = [KEYHOLDERS] if rules is None else rules
    inputs = load(database, as_of, since=as_of)
    explicit: dict[str, list[str]] = {}
    in_groups: dict[str, frozenset[str]] = {}
    status: dict[str, Status | None] = {}
    for h in inputs.histories:
        mine = in_groups[h.handle] = groups_on(h, as_of)
        for g in mine:
            explicit.setdefault(g, []).append(h.handle)
        try:
            status[h.handle] = statuses_on(h, inputs.plans, [as_of])[0]
        except DuesError as exc:
            inputs.broken[h.handle] = str(exc)
    out = [{"name": g, "kind": "explicit", "members": sorted(hs), "count": len(hs)}
           for g, hs in sorted(explicit.items())]
    for rule in rules:
        hs = sorted(h for h, st in status.items() if st in rule.statuses
                    and (rule.group is None or rule.group in in_groups[h]))
        out.append({"name": rule.name, "kind": "rule", "members": hs, "count": len(hs),
                    "statuses": sorted(s.value for s in rule.statuses), "group": rule.group})
    return out
