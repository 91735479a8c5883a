"""The Reporter's inputs, read from MemberData's and BusinessMgr's tables in one pass.

A reader (peewee and the pure core only: no bus, no scheduler), for the Reporter actor and the
CLI (`dctrl report`). :func:`load` reads every member's facts, payments and adjustments with a
fixed number of queries (at most seven, whatever the number of members), never one per member, and
builds the plain values of :mod:`actors.reporter.dues`.

``since``: the money on or before this day is summed by the database (one row per member and
table, an :class:`~actors.reporter.dues.Adjustment` dated ``since``) instead of read row by row.
That is exact for every status, balance and paid-through on a day >= ``since`` (they depend on
the credit up to that day only, never on how it was made up), and for the transitions after
``since`` (:func:`actors.reporter.dues.transitions` evaluates days after its ``from_date``). A
full status on ``as_of`` passes ``since=as_of``: one aggregate row per member.

Plan versions: MemberData stores a plan's versions with the time each was recorded, no
effective date. A plan's first version is in force from ever (a member may be entered with a
joined date before the plan was); each later one from the UTC day it was recorded. Each
version's ``term_days`` is MemberData's (7 for the versions made before plans had a term).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from datetime import date

from ..member_data.models import MemberPlanVersion
from .business import Sale
from .dues import Adjustment, DuesError, GroupChange, MemberHistory, Payment, PlanChange, Plans, PlanVersion
from .fast import simple_plan
from .totals import IN_CHUNK, credits, snapshot

log = logging.getLogger(__name__)


def utc_day(unix_s: float) -> date:
    return datetime.datetime.fromtimestamp(int(unix_s), datetime.timezone.utc).date()


def load_plans(database) -> Plans:
    versions, seen = [], set()
    q = MemberPlanVersion.select(MemberPlanVersion.name, MemberPlanVersion.cents, MemberPlanVersion.period,
                                 MemberPlanVersion.grace_days, MemberPlanVersion.created, MemberPlanVersion.term_days)
    for name, cents, period, grace, created, term in q.order_by(MemberPlanVersion.version).bind(database).tuples():
        effective = date.min if name not in seen else utc_day(created)
        seen.add(name)
        versions.append(PlanVersion(name, int(cents), period, int(grace), effective, 7 if term is None else int(term)))
    return Plans(tuple(versions))


@dataclass
class Inputs:
    plans: Plans
    histories: list[MemberHistory]
    broken: dict  # handle -> why its facts cannot describe a member (DuesError): reported, not computed
    simple: list = field(default_factory=list)  # (handle, joined, PlanVersion, credit cents): see load(simple=True)


def load(database, as_of: date, *, since: date | None = None, handle: str | None = None,
         simple: bool = False, handles: list[str] | None = None) -> Inputs:
    """Every member's history up to ``as_of`` (or one member's), the plans: five queries (plans,
    members, facts, payments and adjustments after ``since``, and two aggregates of the money up
    to ``since`` when it is given). Payments and adjustments after ``as_of`` are left
    out (they count from their day on; a status on ``as_of`` cannot see them).

    ``simple`` (with ``since=as_of``: a status on one day): the members the closed form answers
    (:func:`actors.reporter.fast.simple_plan`: one plan, never left, all money summed) come in
    ``Inputs.simple`` as (handle, joined, plan version, credit) instead of a MemberHistory.

    ``handles``: only these members (a few hundred at most are asked by name; more are read
    with everyone's and the rest left out)."""
    if handle is not None:
        handles = [handle]
    with snapshot(database):  # the facts and the money of one moment
        return _load(database, as_of, since, handles, simple)


def _load(database, as_of: date, since: date | None, handles: list[str] | None, simple: bool) -> Inputs:
    until = as_of.isoformat()
    cut = since.isoformat() if since is not None and since < as_of else until if since is not None else None
    plans = load_plans(database)

    named = handles is not None and len(handles) <= IN_CHUNK
    one = f' AND "handle" IN ({", ".join("?" * len(handles))})' if named else ""
    extra = tuple(handles) if named else ()
    wanted = set(handles) if handles is not None else None

    def rows(sql: str, *params) -> list[tuple]:  # plain cursors: peewee's row objects cost more than the query
        return database.execute_sql(sql.replace("?", database.param), params).fetchall()

    by: dict[str, dict] = {}
    fromiso = date.fromisoformat
    for h, joined in rows(f'SELECT "handle", "joined" FROM "member_member" WHERE 1 = 1{one}', *extra):
        if wanted is not None and h not in wanted:
            continue
        by[h] = {"joined": fromiso(joined), "plans": [], "leaves": [], "rejoins": [], "groups": [],
                 "payments": [], "adjustments": []}
    for h, kind, on, plan, group in rows(
            'SELECT "handle", "kind", "on", "plan", "group" FROM "member_fact" WHERE "kind" IN '
            f"('plan', 'left', 'rejoined', 'group_joined', 'group_left'){one} ORDER BY \"id\"", *extra):
        m = by.get(h)
        if m is None:
            continue
        if kind == "plan":
            m["plans"].append((on, plan))
        elif kind == "left":
            m["leaves"].append(fromiso(on))
        elif kind == "rejoined":
            m["rejoins"].append(fromiso(on))
        else:
            m["groups"].append(GroupChange(fromiso(on), group, kind == "group_joined"))
    low = cut or ""
    money = [] if cut == until else rows('SELECT "handle", "on", "cents", "method", "id" FROM "member_payment" '
                                          f'WHERE "on" <= ? AND "on" > ?{one} ORDER BY "id"', until, low, *extra)
    for h, on, cents, method, pid in money:
        if h in by:
            by[h]["payments"].append(Payment(fromiso(on), int(cents), method, key=str(pid)))
    money = [] if cut == until else rows('SELECT "handle", "on", "cents" FROM "member_adjustment" '
                                         f'WHERE "on" <= ? AND "on" > ?{one} ORDER BY "id"', until, low, *extra)
    for h, on, cents in money:
        if h in by:
            by[h]["adjustments"].append(Adjustment(fromiso(on), int(cents)))
    if cut is not None:  # the money up to the cut, one credit per member: the kept totals and the rows since
        for h, cents in credits(database, fromiso(cut), handles if named else None).items():
            if h in by and cents:
                by[h]["summed"] = [cents]

    histories, broken, simple_ = [], {}, []
    cut_day = fromiso(cut) if cut is not None else None
    for h, m in by.items():
        summed = m.get("summed", ())
        if simple and cut == until and not m["leaves"] and m["plans"]:
            name = m["plans"][0][1]
            if all(p == name for _, p in m["plans"]) and min(on for on, _ in m["plans"]) <= m["joined"].isoformat():
                version = simple_plan(plans, name, m["joined"])
                if version is not None:
                    simple_.append((h, m["joined"], version, sum(summed)))
                    continue
        try:
            histories.append(MemberHistory(h, m["joined"], tuple(PlanChange(fromiso(on), p) for on, p in m["plans"]),
                                           tuple(m["payments"]),
                                           (*m["adjustments"],
                                            *(Adjustment(cut_day, c, "to " + cut) for c in summed)),
                                           tuple(sorted(m["leaves"])), tuple(sorted(m["rejoins"])),
                                           tuple(m["groups"])))
        except DuesError as exc:
            broken[h] = str(exc)
            log.warning("member %s left out of the reports: %s", h, exc)
    return Inputs(plans, histories, broken, simple_)


def dues_payments(database, until: date) -> list[Payment]:
    """From every row (totals.dues_income keeps them instead): the dues booked on or before ``until`` for the income report, summed by the database per
    month and method: one :class:`~actors.reporter.dues.Payment` each, dated the month's first
    day (monthly_income books a payment in its month, per method: the same totals as one per row)."""
    sql = ('SELECT SUBSTR("on", 1, 7), "method", SUM("cents") FROM "member_payment" WHERE "on" <= ? '
           'GROUP BY SUBSTR("on", 1, 7), "method"').replace("?", database.param)
    return [Payment(date.fromisoformat(month + "-01"), int(cents), method, key=f"{month} {method}")
            for month, method, cents in database.execute_sql(sql, (until.isoformat(),)).fetchall()]


def sales(database, until: date) -> list[Sale]:
    """From every invoice (totals.sales_income keeps them instead): BusinessMgr's vending sales on or before ``until`` (UTC days), summed by the database per
    month, machine and product (one :class:`~actors.reporter.business.Sale` each, dated the
    month's first day). An invoice with items dispensed is a sale of those items: in sats at its
    quote (the amount due for the items dispensed), in CAD at its price, in the month it was
    paid. None if BusinessMgr has never run on this database."""
    if not database.table_exists("sales_invoice"):
        return []
    end = int(datetime.datetime.combine(until, datetime.time(), datetime.timezone.utc).timestamp()) + 86400
    month = ("""strftime('%Y-%m', "paid_at", 'unixepoch')""" if database.param == "?" else
             """to_char(to_timestamp("paid_at") AT TIME ZONE 'UTC', 'YYYY-MM')""")
    sql = (f'SELECT {month}, "machine", "product", SUM(COALESCE("due_sats", 0) * "vended" / "items"), '
           'SUM("price_cents" * "vended") FROM "sales_invoice" '
           'WHERE "vended" > 0 AND "items" > 0 AND "paid_at" IS NOT NULL AND "paid_at" < ? '
           f'GROUP BY {month}, "machine", "product"').replace("?", database.param)
    return [Sale(machine, product, int(sats), int(cents), date.fromisoformat(m + "-01"))
            for m, machine, product, sats, cents in database.execute_sql(sql, (end,)).fetchall()]
