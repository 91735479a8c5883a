"""The reports as plain data, computed from the database on a day: for the Reporter's snapshots
and for `dctrl report` (which reads the database directly, the same functions).

A reader: peewee and the pure core only. Money in integer cents and sats, dates ISO. Members are
named by their handle only.
"""

from __future__ import annotations

from datetime import date

from .business import monthly_income
from .dues import Adjustment, DuesError, MemberBook, MemberHistory, PlanChange
from .fast import closed_form, state
from .inputs import load
from .totals import dues_income, kept_rows, sales_income, snapshot


def member_rows(database, as_of: date) -> list[dict]:
    """Every member's status, paid-through and balance on ``as_of``, by handle: the rows the
    Reporter kept that still hold on that day (totals.kept_rows), and the others computed, each
    member's credit from the kept totals and the rows since (inputs.load with since=as_of)."""
    with snapshot(database):
        rows, stale = kept_rows(database, as_of)
        if stale is None:
            rows = {}
        if stale is None or stale:
            rows.update((r["handle"], r) for r in _computed_rows(database, as_of, stale))
    return sorted(rows.values(), key=lambda r: r["handle"])


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
    for r in rows:
        key = r["status"] or "none"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def income_rows(database, as_of: date) -> list[dict]:
    """Income per month up to ``as_of``: dues by method, vending sales by machine and product,
    each in sats and CAD cents, and the month's totals."""
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
