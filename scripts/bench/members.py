"""`dctrl bench members`: the Reporter's reports over many members, against a hand-written SQL
baseline measured in the same run (issue 12's benchmark, the member part).

A throwaway SQLite database (and PostgreSQL when ``DCTRL_BENCH_PG_URL`` names one: a schema of
its own, dropped at the end) gets MemberData's tables (made as MemberData makes them) and
``--members`` members (default 5,000) on one monthly plan, joined over the first month of five
years, each with a payment every month of those years (60 each: 300,000 rows). Measured, each
the median of several runs:

- ``full_status_ms``: every member's status, paid-through and balance on the last day
  (actors/reporter/reports.py member_rows: the one-pass load, then the core);
- ``one_member_ms``: one member's page (member_report);
- ``income_ms``: the monthly income report over the five years (income_rows), with
  ``--sales`` vended invoices (default 500,000; ``--quick``: 20,000) spread over those years;
- ``activity_ms``: active members, joins, leaves and retention for the 12 month ends up to the
  last day (activity_rows: the money before the first month summed, then the closed form per
  member and month end), and ``groups_ms``: the explicit groups and the keyholders rule on the
  last day (group_rows);
- ``baseline_ms``: one SQL aggregate of the same totals (each member's payments summed up to
  the day), and ``ratio`` = full_status_ms / baseline_ms; ``income_baseline_ms``: the dues
  summed per month and method plus the sales per month, machine and product, by hand.

Targets (issue 12, this machine): full status at most 100 ms, one member at most 10 ms, the
income report at most 200 ms. Activity and groups (no target in the issue): at most 1 s each
for a CLI (measured: see docs/architecture.md, "Reporter (actor)").
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import date

PLAN_CENTS = 4000


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2), out


def populate(database, members: int, years: int = 5, start: date = date(2021, 1, 1)) -> date:
    """MemberData's tables with ``members`` members paying every month for ``years``; returns the last day."""
    from actors.db import ensure_tables
    from actors.member_data.models import TABLES, MemberFact, MemberMember, MemberPayment, MemberPlanVersion
    from actors.reporter.dues import add_months

    now = int(time.time()) - 86400  # recorded a day ago: settled, the Reporter's totals may hold them
    with database.bind_ctx(TABLES):
        ensure_tables(database, TABLES)
    with database.bind_ctx(TABLES), database.atomic():
        MemberPlanVersion.insert(name="regular", cents=PLAN_CENTS, period="month", grace_days=30, confirmations=1,
                                 created=now).execute()
        rows, facts, pays = [], [], []
        for i in range(members):
            handle = f"m{i:05d}"
            joined = date(start.year, start.month, 1 + i % 31) if i % 31 < 28 else date(start.year, 1, 1 + i % 31)
            rows.append({"handle": handle, "name": f"Member {i}", "email": f"m{i}@example.org",
                         "joined": joined.isoformat(), "created": now})
            facts += [{"handle": handle, "kind": "joined", "on": joined.isoformat(), "plan": None, "command": "bench",
                       "created": now},
                      {"handle": handle, "kind": "plan", "on": joined.isoformat(), "plan": "regular",
                       "command": "bench", "created": now}]
            # a member in twenty pays one month late, one in fifty stopped paying a year ago
            months = 12 * years - (12 if i % 50 == 0 else 0)
            for k in range(months):
                day = add_months(joined, k + (1 if i % 20 == 0 else 0))
                pays.append({"handle": handle, "on": day.isoformat(), "method": "cash" if k % 3 else "etransfer",
                             "cents": PLAN_CENTS, "note": "bench", "command": "bench", "created": now})
        for model, data in ((MemberMember, rows), (MemberFact, facts), (MemberPayment, pays)):
            for n in range(0, len(data), 1000):
                model.insert_many(data[n:n + 1000]).execute()
    return add_months(start, 12 * years) - (date(2000, 1, 2) - date(2000, 1, 1))


def populate_sales(database, sales: int, first: date, last: date) -> None:
    """BusinessMgr's invoices: ``sales`` vended ones spread evenly over [first, last], 3 machines
    and 12 products, made as BusinessMgr makes its tables."""
    import datetime

    from actors.business_mgr.models import TABLES as SALES_TABLES
    from actors.db import ensure_tables

    t0 = int(datetime.datetime.combine(first, datetime.time(), datetime.timezone.utc).timestamp())
    span = (last - first).days * 86400 + 86399
    cols = ("mode", "machine", "slot", "product", "price_cents", "items", "due_sats", "tolerance_sats", "zero_conf",
            "confirmations", "address", "state", "version", "created", "expires", "paid_at", "received_sats",
            "late_sats", "credit_sats", "lost_sats", "vended")
    names = ", ".join('"' + c + '"' for c in cols)
    marks = ", ".join([database.param] * len(cols))
    sql = f'INSERT INTO "sales_invoice" ({names}) VALUES ({marks})'
    rows = []
    for i in range(sales):
        at = t0 + i * span // max(sales, 1)
        rows.append(("invoice", f"vm{i % 3 + 1}", i % 12, f"product{i % 12}", 150 + 25 * (i % 12), 1,
                     2000 + 30 * (i % 12), 0, False, 1, "bench", "vended", 0, at, at, at, 2000 + 30 * (i % 12),
                     0, 0, 0, 1))
    with database.bind_ctx(SALES_TABLES):
        ensure_tables(database, SALES_TABLES)
    with database.atomic():
        cursor = database.cursor()
        for n in range(0, len(rows), 5000):
            cursor.executemany(sql, rows[n:n + 5000])


BASELINE_SQL = 'SELECT "handle", SUM("cents") FROM "member_payment" WHERE "on" <= ? GROUP BY "handle"'
INCOME_BASELINE_SQL = ('SELECT SUBSTR("on", 1, 7), "method", SUM("cents") FROM "member_payment" WHERE "on" <= ? '
                       'GROUP BY SUBSTR("on", 1, 7), "method"')


def add_day(database, members: int, as_of: date, sales: int) -> tuple[int, int]:
    """A day's new rows past the Reporter's cursor: a payment from one member in thirty and
    ``sales`` vended invoices, all dated ``as_of``. Returns (payments, invoices) added."""
    import datetime

    now = int(time.time()) - 86400
    pays = [(f"m{i:05d}", as_of.isoformat(), "etransfer", PLAN_CENTS, "bench", "bench", now)
            for i in range(0, members, 30)]
    p = database.param
    t0 = int(datetime.datetime.combine(as_of, datetime.time(), datetime.timezone.utc).timestamp())
    with database.atomic():
        cursor = database.cursor()
        cursor.executemany('INSERT INTO "member_payment" ("handle", "on", "method", "cents", "note", "command", '
                           f'"created") VALUES ({", ".join([p] * 7)})', pays)
        if sales:
            cols = ("mode", "machine", "slot", "product", "price_cents", "items", "due_sats", "tolerance_sats",
                    "zero_conf", "confirmations", "address", "state", "version", "created", "expires", "paid_at",
                    "received_sats", "late_sats", "credit_sats", "lost_sats", "vended")
            cursor.executemany(f'INSERT INTO "sales_invoice" ({", ".join(chr(34) + c + chr(34) for c in cols)}) '
                               f'VALUES ({", ".join([p] * len(cols))})',
                               [("invoice", f"vm{i % 3 + 1}", i % 12, f"product{i % 12}", 150, 1, 2000, 0, False, 1,
                                 "bench", "vended", 0, t0 + i, t0 + i, t0 + i, 2000, 0, 0, 0, 1)
                                for i in range(sales)])
    return len(pays), sales


def measure(database, members: int, repeat: int, sales: int = 0) -> dict:
    from actors.db import ensure_tables
    from actors.reporter.models import TABLES as REPORT_TABLES, db as report_db
    from actors.reporter.reports import (_computed_rows, activity_rows, counts, group_rows, income_rows, member_report,
                                         member_rows)
    from actors.reporter.totals import fold

    t = time.perf_counter()
    as_of = populate(database, members)
    if sales:
        populate_sales(database, sales, date(2021, 1, 1), as_of)
    if database.param != "?":
        database.execute_sql("ANALYZE")  # (autovacuum would, some time after such a load)
    populate_s = round(time.perf_counter() - t, 1)
    param = database.param
    # The Reporter's run on as_of (actors/reporter/totals.py fold): its first reads every row.
    report_db.initialize(database)
    ensure_tables(database, REPORT_TABLES)
    t = time.perf_counter()
    first = fold(database, as_of=as_of)
    fold_s = round(time.perf_counter() - t, 2)

    def baseline(sql):
        return lambda: database.execute_sql(sql.replace("?", param), (as_of.isoformat(),)).fetchall()
    full_ms, rows = _timed(lambda: member_rows(database, as_of), repeat)
    computed_ms, computed = _timed(lambda: _computed_rows(database, as_of, None), repeat)
    one_ms, one = _timed(lambda: member_report(database, "m00007", as_of), repeat * 4)
    income_ms, income = _timed(lambda: income_rows(database, as_of), repeat)
    activity_ms, activity = _timed(lambda: activity_rows(database, as_of), repeat)
    groups_ms, groups = _timed(lambda: group_rows(database, as_of), repeat)
    base_ms, base = _timed(baseline(BASELINE_SQL), repeat)
    income_base_ms, _ = _timed(baseline(INCOME_BASELINE_SQL), repeat)
    if sales:  # the same month grouping of the sales, by hand, added to the dues baseline
        month = ("""strftime('%Y-%m', "paid_at", 'unixepoch')""" if param == "?" else
                 """to_char(to_timestamp("paid_at") AT TIME ZONE 'UTC', 'YYYY-MM')""")
        sales_sql = (f'SELECT {month}, "machine", "product", SUM("due_sats"), SUM("price_cents") '
                     f'FROM "sales_invoice" WHERE "vended" > 0 GROUP BY {month}, "machine", "product"')
        sales_base_ms, _ = _timed(lambda: database.execute_sql(sales_sql).fetchall(), repeat)
        income_base_ms = round(income_base_ms + sales_base_ms, 2)
    assert len(base) == len(rows) == members
    assert rows == sorted(computed, key=lambda r: r["handle"]), "the kept rows differ from the rows computed"
    # A day later in the data, before the Reporter's next run: rows past the cursor
    added = add_day(database, members, as_of, sales // 1000)
    behind_ms, _ = _timed(lambda: member_rows(database, as_of), repeat)
    income_behind_ms, _ = _timed(lambda: income_rows(database, as_of), repeat)
    t = time.perf_counter()
    fold(database, as_of=as_of)
    fold_day_ms = round((time.perf_counter() - t) * 1000, 1)
    return {"members": members, "payments": members * 60 - (members + 49) // 50 * 12, "as_of": as_of.isoformat(),
            "populate_s": populate_s, "fold_first_s": fold_s, "fold_first_states": first["states"],
            "full_status_ms": full_ms, "full_status_computed_ms": computed_ms,
            "baseline_ms": base_ms, "ratio": round(full_ms / base_ms, 2),
            "behind": {"payments": added[0], "invoices": added[1], "full_status_ms": behind_ms,
                       "income_ms": income_behind_ms, "fold_ms": fold_day_ms},
            "one_member_ms": one_ms, "income_ms": income_ms, "income_months": len(income), "sales": sales,
            "sales_cents": sum(x["cents"] for m in income for x in m["sales"]),
            "income_baseline_ms": income_base_ms, "income_ratio": round(income_ms / income_base_ms, 2),
            "activity_ms": activity_ms, "activity_active": [m["active"] for m in activity],
            "groups_ms": groups_ms, "groups": {g["name"]: g["count"] for g in groups},
            "counts": counts(rows), "one_member": {k: one[k] for k in ("handle", "status", "paid_through")},
            "targets_ms": {"full_status": 100, "one_member": 10, "income": 200, "activity": 1000, "groups": 1000},
            "met": {"full_status": full_ms <= 100, "one_member": one_ms <= 10, "income": income_ms <= 200,
                    "activity": activity_ms <= 1000, "groups": groups_ms <= 1000}}


def main(args) -> int:
    from actors.db import connect

    members = 500 if args.quick else int(getattr(args, "members", None) or 5000)
    sales = 20_000 if args.quick else int(getattr(args, "sales", None) or 0)
    repeat = 3 if args.quick else 5
    out = {"suite": "members"}
    with tempfile.TemporaryDirectory() as tmp:
        database = connect(f"sqlite:///{tmp}/bench.sqlite3")
        try:
            out["sqlite"] = measure(database, members, repeat, sales)
        finally:
            database.close()
    pg = os.environ.get("DCTRL_BENCH_PG_URL")
    if pg:
        from scripts.bench import pg_schema_database

        with pg_schema_database(pg) as database:
            out["postgresql"] = measure(database, members, repeat, sales)
    print(json.dumps(out, sort_keys=True))
    return 0
