"""The readers' kept answers (actors/reporter/reports.py keep_answers, for the report server): a
database whose answers are kept gives exactly what one without gives, call after call, while
members, payments, adjustments, facts, plan versions and invoices are added or change and the
Reporter folds, on SQLite and PostgreSQL. The tables are written as in
tests/test_reporter_totals.py, through a second connection (the server's is another process's)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from actors.business_mgr.models import TABLES as SALES_TABLES
from actors.db import connect, ensure_tables
from actors.member_data.models import TABLES as MEMBER_TABLES
from actors.reporter import reports
from actors.reporter.reports import activity_rows, counts, income_rows, keep_answers, member_counts, member_rows
from actors.reporter.totals import fold
from tests.harness import pg_schema
from tests.test_reporter_totals import (NOW, OLD, D, invoice, member, pay, random_rows, report_tables, sql, ts,
                                        update_invoice, vend)

DAYS = (D("2024-06-15"), D("2025-03-01"), D("2026-12-31"))


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(request, tmp_path):
    """(writer, plain reader, reader keeping its answers): three connections to one database."""
    def three(url):
        w, plain, kept = connect(url), connect(url), connect(url)
        keep_answers(kept)
        return w, plain, kept
    if request.param == "sqlite":
        dbs = three(f"sqlite:///{tmp_path}/a.sqlite3")
        try:
            yield _tables(*dbs)
        finally:
            for d in dbs:
                d.close()
        return
    with pg_schema("rep_ans") as url:
        dbs = three(url)
        try:
            yield _tables(*dbs)
        finally:
            for d in dbs:
                d.close()


def _tables(w, plain, kept):
    for tables in (MEMBER_TABLES, SALES_TABLES):
        with w.bind_ctx(tables):
            ensure_tables(w, tables)
    sql(w, 'INSERT INTO "member_plan_version" ("name", "cents", "period", "grace_days", "confirmations", '
           '"term_days", "created") VALUES (?, ?, ?, ?, ?, ?, ?)', "regular", 4000, "month", 30, 1, 7, OLD)
    return w, plain, kept


def same(plain, kept, days=DAYS):
    for day in days:
        for _ in range(2):  # the second from what was kept
            assert member_rows(kept, day) == member_rows(plain, day), day
            assert member_counts(kept, day) == counts(member_rows(plain, day)) == member_counts(plain, day), day
            assert income_rows(kept, day) == income_rows(plain, day), day
            assert activity_rows(kept, day, 6) == activity_rows(plain, day, 6), day


def test_kept_answers_equal_the_readers_while_everything_changes(pair):
    w, plain, kept = pair
    rnd = random.Random(5)
    members = [f"a{i:02d}" for i in range(10)]
    for i, h in enumerate(members):
        member(w, h, D("2024-01-01") + timedelta(days=19 * i))
    random_rows(w, rnd, members, 80, 10, 30)
    same(plain, kept)  # no report tables: members kept, income not (no cheap version)
    report_tables(w)
    fold(w, NOW)
    same(plain, kept)
    memo = reports._memo(kept)
    assert memo is not None and any(k[0] == "members" for k in memo.items) and any(
        k[0] == "income" for k in memo.items)
    assert reports._memo(plain) is None

    # a returned answer changed by its caller does not change the next one
    rows = member_rows(kept, DAYS[-1])
    rows[0]["status"] = "scribbled"
    inc = income_rows(kept, DAYS[-1])
    inc[-1]["total_cents"] = -1
    next(iter(inc[-1]["dues"].values()))["cents"] = -1
    same(plain, kept, [DAYS[-1]])

    for step in range(3):  # rows past the cursor, then folded
        random_rows(w, rnd, members, 15, 3, 10)
        same(plain, kept)
        fold(w, NOW)
        same(plain, kept)
    # one of each change, each seen at once
    pay(w, "a03", D("2025-02-20"), 4000)
    same(plain, kept)
    sql(w, 'INSERT INTO "member_fact" ("handle", "kind", "on", "plan", "command", "created") '
           'VALUES (?, ?, ?, ?, ?, ?)', "a04", "left", "2025-01-10", None, "t", OLD)
    same(plain, kept)
    member(w, "zed", D("2024-12-01"))
    same(plain, kept)
    sql(w, 'INSERT INTO "member_adjustment" ("handle", "on", "cents", "note", "reverses", "command", "created") '
           'VALUES (?, ?, ?, ?, ?, ?, ?)', "zed", "2024-12-01", 4000, "t", None, "t", OLD)
    same(plain, kept)
    before = [member_rows(plain, day) for day in DAYS]
    sql(w, 'UPDATE "member_plan_version" SET "term_days" = ? WHERE "name" = ?', 45, "regular")  # (a migration)
    assert [member_rows(plain, day) for day in DAYS] != before  # (due longer: someone overdue is due again)
    same(plain, kept)
    sql(w, 'INSERT INTO "member_plan_version" ("name", "cents", "period", "grace_days", "confirmations", '
           '"term_days", "created") VALUES (?, ?, ?, ?, ?, ?, ?)', "regular", 9000, "month", 30, 1, 7,
        ts(D("2024-06-01")))
    same(plain, kept)
    fold(w, NOW)
    same(plain, kept)
    # invoices that change after they are made: one past the cursor, one open below it
    iid = invoice(w, product="late", state="open", created=OLD)
    same(plain, kept)
    update_invoice(w, iid, state="vending", paid_at=ts(D("2025-02-02")))
    vid = vend(w, iid, "sent")
    same(plain, kept)
    fold(w, NOW)  # not final: listed open
    same(plain, kept)
    before = income_rows(plain, DAYS[1])
    update_invoice(w, iid, state="vended", vended=1)
    sql(w, 'UPDATE "sales_vend" SET "state" = ? WHERE "id" = ?', "vended", vid)
    assert income_rows(plain, DAYS[1]) != before  # (a sale in February 2025)
    same(plain, kept)
    # one past the cursor, paid and dispensed after it was read
    late = invoice(w, product="later", state="vending", created=OLD, paid_at=ts(D("2025-02-03")))
    same(plain, kept)
    update_invoice(w, late, state="vended", vended=1)
    same(plain, kept)
    fold(w, NOW)
    same(plain, kept)
