"""The Reporter's inputs, read from MemberData's and BusinessMgr's tables in one pass.

A reader (peewee and the pure core only: no bus, no scheduler), for the Reporter actor and the
CLI (`dctrl report`). :func:`load` reads every member's facts, payments and adjustments with a
fixed number of queries (four, whatever the number of members), never one per member, and
builds the plain values of :mod:`actors.reporter.dues`.

``since``: the money on or before this day is summed by the database (one row per member, an
:class:`~actors.reporter.dues.Adjustment` dated the last such day) instead of read row by row.
That is exact for every status, balance and paid-through on a day >= ``since`` (they depend on
the credit up to that day only, never on how it was made up), and for the transitions after
``since`` (:func:`actors.reporter.dues.transitions` evaluates days after its ``from_date``). A
full status on ``as_of`` passes ``since=as_of``: one aggregate row per member.

Plan versions: MemberData stores a plan's versions with the time each was recorded, no
effective date. A plan's first version is in force from ever (a member may be entered with a
joined date before the plan was); each later one from the UTC day it was recorded. Every
version gets the core's default ``term_days``.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from datetime import date

import peewee

from ..member_data.models import MemberAdjustment, MemberFact, MemberMember, MemberPayment, MemberPlanVersion
from .business import Sale
from .dues import Adjustment, DuesError, GroupChange, MemberHistory, Payment, PlanChange, Plans, PlanVersion

log = logging.getLogger(__name__)


def utc_day(unix_s: float) -> date:
    return datetime.datetime.fromtimestamp(int(unix_s), datetime.timezone.utc).date()


def load_plans(database) -> Plans:
    versions, seen = [], set()
    q = MemberPlanVersion.select(MemberPlanVersion.name, MemberPlanVersion.cents, MemberPlanVersion.period,
                                 MemberPlanVersion.grace_days, MemberPlanVersion.created)
    for name, cents, period, grace, created in q.order_by(MemberPlanVersion.version).bind(database).tuples():
        effective = date.min if name not in seen else utc_day(created)
        seen.add(name)
        versions.append(PlanVersion(name, int(cents), period, int(grace), effective))
    return Plans(tuple(versions))


@dataclass
class Inputs:
    plans: Plans
    histories: list[MemberHistory]
    broken: dict  # handle -> why its facts cannot describe a member (DuesError): reported, not computed


def load(database, as_of: date, *, since: date | None = None, handle: str | None = None) -> Inputs:
    """Every member's history up to ``as_of`` (or one member's), the plans: four queries, plus
    two aggregates when ``since`` is given. Payments and adjustments after ``as_of`` are left
    out (they count from their day on; a status on ``as_of`` cannot see them)."""
    until = as_of.isoformat()
    cut = since.isoformat() if since is not None and since < as_of else until if since is not None else None
    plans = load_plans(database)

    def only(q, model):
        return q.where(model.handle == handle) if handle is not None else q

    members = only(MemberMember.select(MemberMember.handle, MemberMember.joined), MemberMember)
    facts = only(MemberFact.select(MemberFact.handle, MemberFact.kind, MemberFact.on, MemberFact.plan,
                                   MemberFact.group).order_by(MemberFact.id), MemberFact)
    lower = (lambda model: model.on > cut) if cut is not None else (lambda model: model.on > "")
    pays = only(MemberPayment.select(MemberPayment.handle, MemberPayment.on, MemberPayment.cents,
                                     MemberPayment.method, MemberPayment.id)
                .where((MemberPayment.on <= until) & lower(MemberPayment)), MemberPayment)
    adjs = only(MemberAdjustment.select(MemberAdjustment.handle, MemberAdjustment.on, MemberAdjustment.cents)
                .where((MemberAdjustment.on <= until) & lower(MemberAdjustment)), MemberAdjustment)

    by: dict[str, dict] = {}
    for h, joined in members.bind(database).tuples():
        by[h] = {"joined": date.fromisoformat(joined), "plans": [], "leaves": [], "rejoins": [], "groups": [],
                 "payments": [], "adjustments": []}
    fromiso = date.fromisoformat
    for h, kind, on, plan, group in facts.bind(database).tuples():
        m = by.get(h)
        if m is None:
            continue
        if kind == "plan":
            m["plans"].append(PlanChange(fromiso(on), plan))
        elif kind == "left":
            m["leaves"].append(fromiso(on))
        elif kind == "rejoined":
            m["rejoins"].append(fromiso(on))
        elif kind in ("group_joined", "group_left"):
            m["groups"].append(GroupChange(fromiso(on), group, kind == "group_joined"))
    for h, on, cents, method, pid in pays.bind(database).tuples():
        if h in by:
            by[h]["payments"].append(Payment(fromiso(on), int(cents), method, key=str(pid)))
    for h, on, cents in adjs.bind(database).tuples():
        if h in by:
            by[h]["adjustments"].append(Adjustment(fromiso(on), int(cents)))
    if cut is not None:  # the money up to the cut, summed by the database: one credit per member
        for model in (MemberPayment, MemberAdjustment):
            q = (model.select(model.handle, peewee.fn.SUM(model.cents), peewee.fn.MAX(model.on))
                 .where(model.on <= cut).group_by(model.handle))
            if handle is not None:
                q = q.where(model.handle == handle)
            for h, cents, last in q.bind(database).tuples():
                if h in by and cents:
                    by[h]["adjustments"].append(Adjustment(fromiso(last), int(cents), "before " + cut))

    histories, broken = [], {}
    for h, m in by.items():
        try:
            histories.append(MemberHistory(h, m["joined"], tuple(m["plans"]), tuple(m["payments"]),
                                           tuple(m["adjustments"]), tuple(sorted(m["leaves"])),
                                           tuple(sorted(m["rejoins"])), tuple(m["groups"])))
        except DuesError as exc:
            broken[h] = str(exc)
            log.warning("member %s left out of the reports: %s", h, exc)
    return Inputs(plans, histories, broken)


def dues_payments(database, until: date) -> list[Payment]:
    """Every payment booked on or before ``until`` (for the income report), oldest first."""
    q = (MemberPayment.select(MemberPayment.on, MemberPayment.cents, MemberPayment.method, MemberPayment.id)
         .where(MemberPayment.on <= until.isoformat()).order_by(MemberPayment.id))
    return [Payment(date.fromisoformat(on), int(c), m, key=str(i)) for on, c, m, i in q.bind(database).tuples()]


_SALES_SQL = ('SELECT "machine", "product", "due_sats", "items", "vended", "price_cents", "paid_at" '
              'FROM "sales_invoice" WHERE "vended" > 0 AND "paid_at" IS NOT NULL AND "paid_at" < ?')


def sales(database, until: date) -> list[Sale]:
    """BusinessMgr's vending sales on or before ``until`` (UTC days): an invoice with items
    dispensed is a sale of those items, in sats at its quote (the amount due for the items
    dispensed) and in CAD at its price, dated the day it was paid. None if BusinessMgr has never
    run on this database."""
    if not database.table_exists("sales_invoice"):
        return []
    end = int(datetime.datetime.combine(until, datetime.time(), datetime.timezone.utc).timestamp()) + 86400
    sql = _SALES_SQL if database.param == "?" else _SALES_SQL.replace("?", database.param)
    out = []
    for machine, product, due_sats, items, vended, price_cents, paid_at in database.execute_sql(sql, (end,)):
        sats = (int(due_sats) * int(vended) // int(items)) if due_sats and items else 0
        out.append(Sale(machine, product, sats, int(price_cents) * int(vended), utc_day(paid_at)))
    return out
