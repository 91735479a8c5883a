"""The Reporter's kept totals (actors/reporter/totals.py), on SQLite and PostgreSQL: whatever the
Reporter folded and whatever came after it, the readers' answers equal a full recompute from
every row (inputs.dues_payments and inputs.sales, a SUM per member, the core from every payment).

The tests write MemberData's and BusinessMgr's tables directly, as those actors would (append
payments and adjustments; make an invoice, then pay it, dispense, close it)."""

from __future__ import annotations

import datetime
import random
from datetime import date, timedelta

import pytest

from actors.business_mgr.models import TABLES as SALES_TABLES
from actors.db import connect, ensure_tables
from actors.member_data.models import TABLES as MEMBER_TABLES
from actors.reporter.dues import MemberBook, MemberHistory, Payment, PlanChange, Plans, PlanVersion
from actors.reporter.fast import unchanged_until
from actors.reporter.inputs import dues_payments, load, sales
from actors.reporter.models import TABLES as REPORT_TABLES
from actors.reporter.reports import income_rows, member_rows
from actors.reporter.totals import SETTLE_S, credits, cursor, dues_income, fold, kept_rows, sales_income
from tests.harness import pg_schema

D = date.fromisoformat
NOW = 1_900_000_000  # the fold's clock; rows are made an hour before unless a test says
OLD = NOW - 3600
AS_OF_DAYS = (D("2023-12-31"), D("2024-06-15"), D("2025-01-31"), D("2025-03-01"), D("2026-12-31"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dbm(request, tmp_path_factory):
    if request.param == "sqlite":
        database = connect(f"sqlite:///{tmp_path_factory.mktemp('totals')}/t.sqlite3")
        yield database
        database.close()
        return
    with pg_schema("rep_tot") as url:
        database = connect(url)
        yield database
        database.close()


@pytest.fixture
def db(dbm):
    for tables in (MEMBER_TABLES, SALES_TABLES):
        with dbm.bind_ctx(tables):
            ensure_tables(dbm, tables)
    for t in ("report_cursor", "report_member_total", "report_dues", "report_sales", "report_sales_open",
              "sales_vend", "sales_payment", "sales_invoice", "member_payment", "member_adjustment",
              "member_fact", "member_member", "member_plan_version"):
        if dbm.table_exists(t):
            dbm.execute_sql(f'DELETE FROM "{t}"')
    sql(dbm, 'INSERT INTO "member_plan_version" ("name", "cents", "period", "grace_days", "confirmations", '
             '"term_days", "created") VALUES (?, ?, ?, ?, ?, ?, ?)', "regular", 4000, "month", 30, 1, 7, OLD)
    return dbm


def report_tables(database):
    with database.bind_ctx(REPORT_TABLES):
        ensure_tables(database, REPORT_TABLES)


def sql(database, text, *params):
    return database.execute_sql(text.replace("?", database.param), params)


def member(database, handle, joined):
    sql(database, 'INSERT INTO "member_member" ("handle", "name", "email", "joined", "created") VALUES (?, ?, ?, ?, ?)',
        handle, handle, f"{handle}@example.org", joined.isoformat(), OLD)
    for kind, plan in (("joined", None), ("plan", "regular")):
        sql(database, 'INSERT INTO "member_fact" ("handle", "kind", "on", "plan", "command", "created") '
                      'VALUES (?, ?, ?, ?, ?, ?)', handle, kind, joined.isoformat(), plan, "t", OLD)


def pay(database, handle, on, cents, method="cash", created=OLD) -> int:
    sql(database, 'INSERT INTO "member_payment" ("handle", "on", "method", "cents", "command", "created") '
                  'VALUES (?, ?, ?, ?, ?, ?)', handle, on.isoformat(), method, cents, "t", created)
    return sql(database, 'SELECT MAX("id") FROM "member_payment"').fetchone()[0]


def adjust(database, handle, on, cents, reverses=None, created=OLD):
    sql(database, 'INSERT INTO "member_adjustment" ("handle", "on", "cents", "note", "reverses", "command", '
                  '"created") VALUES (?, ?, ?, ?, ?, ?, ?)', handle, on.isoformat(), cents, "t", reverses, "t", created)


def ts(day: date, seconds=0) -> int:
    return int(datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()) + seconds


def invoice(database, machine="vm1", product="cola", price=350, items=1, due=1000, state="open", created=OLD,
            paid_at=None, vended=0) -> int:
    sql(database, 'INSERT INTO "sales_invoice" ("mode", "machine", "slot", "product", "price_cents", "items", '
                  '"due_sats", "tolerance_sats", "zero_conf", "confirmations", "address", "state", "version", '
                  '"created", "expires", "paid_at", "received_sats", "late_sats", "credit_sats", "lost_sats", '
                  '"vended") VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, 1, ?, ?, 0, ?, ?, ?, 0, 0, 0, 0, ?)',
        "invoice", machine, 1, product, price, items, due, False, "bc1q", state, created, created + 900, paid_at,
        vended)
    return sql(database, 'SELECT MAX("id") FROM "sales_invoice"').fetchone()[0]


def update_invoice(database, iid, **values):
    sets = ", ".join(f'"{k}" = ?' for k in values)
    sql(database, f'UPDATE "sales_invoice" SET {sets} WHERE "id" = ?', *values.values(), iid)


def vend(database, iid, state):
    vid = f"v{iid}{state}{random.random()}"[:32]
    sql(database, 'INSERT INTO "sales_vend" ("id", "invoice_id", "item", "machine", "slot", "state", "created", '
                  '"expires", "deadline", "attempts") VALUES (?, ?, 0, ?, 1, ?, ?, ?, ?, 0)',
        vid, iid, "vm1", state, OLD, OLD + 30, OLD + 300)
    return vid


# -- the from-scratch answers ---------------------------------------------------------------------

def scratch_credits(database, day: date) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in ("member_payment", "member_adjustment"):
        for h, cents in sql(database, f'SELECT "handle", SUM("cents") FROM "{table}" WHERE "on" <= ? GROUP BY "handle"',
                            day.isoformat()).fetchall():
            out[h] = out.get(h, 0) + int(cents)
    return out


def nonzero(d):
    return {k: v for k, v in d.items() if v}


def key_dues(payments):
    return sorted((p.credited, p.method, p.cents) for p in payments)


def key_sales(items):
    return sorted((s.on, s.machine, s.product, s.sats, s.cents) for s in items)


def check(database, days=AS_OF_DAYS):
    """Every reader against the full recompute, on each day."""
    for day in days:
        assert nonzero(credits(database, day)) == nonzero(scratch_credits(database, day)), day
        assert key_dues(dues_income(database, day)) == key_dues(dues_payments(database, day)), day
        assert key_sales(sales_income(database, day)) == key_sales(sales(database, day)), day
        full = load(database, day)  # every payment row by row (no since): the core's own answer
        assert member_rows(database, day) == sorted((MemberBook(h, full.plans).state(day).summary()
                                                     for h in full.histories), key=lambda r: r["handle"]), day


def random_rows(database, rnd, members, payments, adjustments, invoices, created=OLD, span=1000):
    for _ in range(payments):
        pay(database, rnd.choice(members), D("2023-11-01") + timedelta(days=rnd.randrange(span)),
            rnd.choice([4000, 2000, 12000, 1]), rnd.choice(["cash", "etransfer", "bitcoin"]), created=created)
    for _ in range(adjustments):
        adjust(database, rnd.choice(members), D("2023-11-01") + timedelta(days=rnd.randrange(span)),
               rnd.choice([-4000, 1500, -1]), created=created)
    for _ in range(invoices):
        state = rnd.choice(["open", "vending", "vended", "vended", "expired", "failed", "overpaid"])
        paid = None if state in ("open", "expired") else ts(D("2023-12-01") + timedelta(days=rnd.randrange(900)),
                                                             rnd.randrange(86400))
        items = rnd.choice([1, 1, 2, 3])
        iid = invoice(database, rnd.choice(["vm1", "vm2"]), rnd.choice(["cola", "chips", "gum"]),
                      rnd.choice([150, 350]), items, rnd.choice([999, 1000, 3001]) * items, state, created, paid,
                      0 if paid is None else rnd.randrange(1, items + 1))
        if state == "failed" and rnd.random() < 0.5:
            vend(database, iid, "unanswered")


# -- tests ----------------------------------------------------------------------------------------

def test_random_facts_folded_at_random_points_read_the_same_as_a_full_recompute(db):
    rnd = random.Random(7)
    members = [f"m{i:02d}" for i in range(12)]
    for i, h in enumerate(members):
        member(db, h, D("2024-01-01") + timedelta(days=17 * i))
    random_rows(db, rnd, members, 150, 20, 60)
    check(db)  # no report tables at all: every row is past the cursor
    report_tables(db)
    check(db)  # tables, no cursor yet
    fold(db, NOW)
    assert cursor(db).payment > 0 and cursor(db).invoice > 0
    check(db)
    for _ in range(3):  # rows after the cursor, some folded, then more
        random_rows(db, rnd, members, 40, 8, 20)
        check(db)
        fold(db, NOW)
        check(db)
    again = fold(db, NOW)
    assert (again["payments"], again["adjustments"], again["invoices"]) == (0, 0, 0)
    check(db)  # a fold with nothing new changes nothing


def test_kept_member_rows_hold_on_the_days_after_the_fold_and_facts_added_are_seen(db):
    rnd = random.Random(11)
    members = [f"k{i:02d}" for i in range(14)]
    for i, h in enumerate(members):
        member(db, h, D("2024-01-01") + timedelta(days=23 * i))
    sql(db, 'INSERT INTO "member_fact" ("handle", "kind", "on", "plan", "command", "created") '
            'VALUES (?, ?, ?, ?, ?, ?)', "k01", "left", "2025-02-10", None, "t", OLD)  # not the closed form
    random_rows(db, rnd, members, 120, 10, 0, span=440)  # up to 2025-01-13
    pay(db, "k02", D("2025-02-27"), 4000)  # dated ahead of the fold's day: k02's row holds until then
    member(db, "k50", D("2025-02-10"))  # joins after the fold's day, paid before
    pay(db, "k50", D("2025-01-02"), 4000)
    report_tables(db)
    fold_day = D("2025-01-20")
    fold(db, NOW, as_of=fold_day)
    kept, stale = kept_rows(db, fold_day)
    assert len(kept) >= 10 and stale == []
    assert "k02" not in kept_rows(db, D("2025-02-27"))[0]
    assert (kept["k50"]["status"], kept["k50"]["balance_cents"]) == (None, 4000)
    assert "k50" in kept_rows(db, D("2025-02-09"))[0] and "k50" not in kept_rows(db, D("2025-02-10"))[0]
    days = [fold_day + timedelta(days=n) for n in range(0, 75, 2)]
    assert sum(len(kept_rows(db, d)[0]) for d in days) > 50  # the kept rows answer on later days too
    check(db, days)
    # facts past the cursor: a backdated payment, a reversal, a leave, a member added
    pay(db, "k03", D("2025-01-05"), 12000)
    adjust(db, "k04", D("2025-01-21"), -4000)
    sql(db, 'INSERT INTO "member_fact" ("handle", "kind", "on", "plan", "command", "created") '
            'VALUES (?, ?, ?, ?, ?, ?)', "k05", "left", "2025-02-01", None, "t", OLD)
    member(db, "k99", D("2025-01-25"))
    check(db, days)
    fold(db, NOW, as_of=fold_day)  # the same day again: the members with new facts are computed again
    check(db, days)
    fold(db, NOW, as_of=D("2025-02-03"))
    check(db, days)
    # a new plan version (a new price from its day): every kept row is recomputed
    sql(db, 'INSERT INTO "member_plan_version" ("name", "cents", "period", "grace_days", "confirmations", '
            '"term_days", "created") VALUES (?, ?, ?, ?, ?, ?, ?)', "regular", 5000, "month", 30, 1, 7,
        ts(D("2025-02-15")))
    assert kept_rows(db, D("2025-03-01")) == ({}, None)
    check(db, days)
    fold(db, NOW, as_of=D("2025-03-01"))
    check(db, days)


def test_a_kept_row_holds_until_the_day_it_says_on_random_histories():
    rnd = random.Random(5)
    for _ in range(300):
        plans = Plans((PlanVersion("p", rnd.choice([1000, 4000, 3333]), rnd.choice(["month", "quarter", "year"]),
                                   rnd.choice([0, 3, 30]), term_days=rnd.choice([0, 7, 40])),
                       PlanVersion("q", 2500, "month", 10)))
        joined = date(2024, 1, 1) + timedelta(days=rnd.randrange(400))
        pays = tuple(Payment(joined + timedelta(days=rnd.randrange(-5, 500)), rnd.choice([1000, 4000, 500, 12000]))
                     for _ in range(rnd.randrange(6)))
        changes = [PlanChange(joined, "p")]
        leaves, rejoins = [], []
        if rnd.random() < 0.3:
            changes.append(PlanChange(joined + timedelta(days=rnd.randrange(1, 300)), "q"))
        if rnd.random() < 0.3:
            leaves.append(joined + timedelta(days=rnd.randrange(300)))
            if rnd.random() < 0.5:
                rejoins.append(leaves[0] + timedelta(days=rnd.randrange(1, 100)))
        h = MemberHistory("a", joined, tuple(changes), pays, (), tuple(leaves), tuple(rejoins))
        book = MemberBook(h, plans)
        d0 = joined + timedelta(days=rnd.randrange(-30, 500))
        s0 = book.state(d0)
        later = [p.paid_on for p in pays if p.paid_on > d0]
        until = unchanged_until(s0, (*leaves, *rejoins, *(c.effective for c in changes)))
        assert until is not None and until > d0
        end = min([until, d0 + timedelta(days=400), *later])
        row = {**s0.summary(), "as_of": None}
        d = d0
        while d < end:
            assert {**book.state(d).summary(), "as_of": None} == row, (h, d0, d, until)
            d += timedelta(days=1)
        if until == end and until < d0 + timedelta(days=400) and s0.status is not None:
            moved = {**book.state(until).summary(), "as_of": None}
            # the day named is a real change of something the row or the next charge depends on
            assert moved != row or s0.first_unpaid is not None or s0.next_charge is not None


def test_a_payment_reversed_by_an_adjustment_after_the_fold(db):
    report_tables(db)
    member(db, "ada", D("2025-01-01"))
    pid = pay(db, "ada", D("2025-01-01"), 4000, "bitcoin")
    fold(db, NOW)
    assert credits(db, D("2025-01-20")) == {"ada": 4000}
    assert member_rows(db, D("2025-01-20"))[0]["status"] == "current"
    adjust(db, "ada", D("2025-01-10"), -4000, reverses=pid)  # reorged out, reversed (dated the reorg)
    assert nonzero(credits(db, D("2025-01-20"))) == {}
    assert credits(db, D("2025-01-09")) == {"ada": 4000}
    assert member_rows(db, D("2025-01-20"))[0]["status"] == "overdue"
    check(db, [D("2025-01-09"), D("2025-01-20")])
    fold(db, NOW)
    check(db, [D("2025-01-09"), D("2025-01-20")])
    assert member_rows(db, D("2025-01-20"))[0]["status"] == "overdue"


def test_a_backdated_payment_after_the_fold_counts_on_its_own_day_and_month(db):
    report_tables(db)
    member(db, "bob", D("2024-01-01"))
    for k in range(12):
        pay(db, "bob", D("2024-01-01") + timedelta(days=31 * k), 4000)
    fold(db, NOW)
    pay(db, "bob", D("2024-03-05"), 2500, "etransfer")  # entered today, dated last March
    march = [r for r in income_rows(db, D("2025-01-31")) if r["month"] == "2024-03"][0]
    assert march["dues"]["etransfer"]["cents"] == 2500
    assert credits(db, D("2024-03-04"))["bob"] == 3 * 4000 and credits(db, D("2024-03-05"))["bob"] == 3 * 4000 + 2500
    check(db, [D("2024-03-04"), D("2024-03-05"), D("2025-01-31")])
    fold(db, NOW)
    check(db, [D("2024-03-04"), D("2024-03-05"), D("2025-01-31")])
    # a payment dated ahead of the day asked: the kept total holds it, the reader sums that member
    pay(db, "bob", D("2026-05-01"), 4000)
    fold(db, NOW)
    assert credits(db, D("2025-01-31"))["bob"] == 12 * 4000 + 2500
    check(db, [D("2025-01-31"), D("2026-05-01")])


def test_a_late_paid_invoice_and_a_late_answered_vend_are_counted_then_folded(db):
    report_tables(db)
    early = invoice(db, product="cola", created=ts(D("2025-01-10")))  # opened, not paid yet
    later = invoice(db, product="chips", state="vended", created=ts(D("2025-01-11")),
                    paid_at=ts(D("2025-01-11")), vended=1)
    fold(db, NOW)
    assert cursor(db).invoice == later + 1
    assert key_sales(sales_income(db, D("2025-02-28"))) == [(D("2025-01-01"), "vm1", "chips", 1000, 350)]
    # paid in February (after an invoice with a higher id was folded), then dispensed and closed
    update_invoice(db, early, state="vending", paid_at=ts(D("2025-02-02")))
    vid = vend(db, early, "sent")
    assert key_sales(sales_income(db, D("2025-02-28"))) == key_sales(sales(db, D("2025-02-28")))
    update_invoice(db, early, state="vended", vended=1)
    sql(db, 'UPDATE "sales_vend" SET "state" = ? WHERE "id" = ?', "vended", vid)
    got = key_sales(sales_income(db, D("2025-02-28")))
    assert got == key_sales(sales(db, D("2025-02-28"))) and (D("2025-02-01"), "vm1", "cola", 1000, 350) in got
    assert fold(db, NOW)["invoices"] == 1
    assert sql(db, 'SELECT COUNT(*) FROM "report_sales_open"').fetchone()[0] == 0
    assert key_sales(sales_income(db, D("2025-02-28"))) == key_sales(sales(db, D("2025-02-28")))
    # failed with a vend unanswered: it stays open, and a late "vended" answer counts
    failed = invoice(db, product="gum", items=2, due=2000, state="failed", created=ts(D("2025-02-03")),
                     paid_at=ts(D("2025-02-03")), vended=0)
    vid = vend(db, failed, "unanswered")
    fold(db, NOW)
    assert sql(db, 'SELECT "invoice" FROM "report_sales_open"').fetchall() == [(failed,)]
    update_invoice(db, failed, vended=1)
    sql(db, 'UPDATE "sales_vend" SET "state" = ? WHERE "id" = ?', "vended", vid)
    assert (D("2025-02-01"), "vm1", "gum", 1000, 350) in key_sales(sales_income(db, D("2025-02-28")))
    fold(db, NOW)
    assert sql(db, 'SELECT COUNT(*) FROM "report_sales_open"').fetchone()[0] == 0
    check(db, [D("2025-01-31"), D("2025-02-02"), D("2025-02-28")])


def test_the_month_of_a_past_as_of_is_summed_from_the_table(db):
    report_tables(db)
    for day in (3, 10, 20):
        invoice(db, state="vended", created=ts(D(f"2025-03-{day:02d}")), paid_at=ts(D(f"2025-03-{day:02d}"), 5),
                vended=1)
    fold(db, NOW)
    assert key_sales(sales_income(db, D("2025-03-10"))) == [(D("2025-03-01"), "vm1", "cola", 2000, 700)]
    check(db, [D("2025-03-02"), D("2025-03-10"), D("2025-03-31")])


def test_rows_made_within_the_settling_time_stay_past_the_cursor_yet_are_read(db):
    report_tables(db)
    member(db, "cyd", D("2025-01-01"))
    pay(db, "cyd", D("2025-01-01"), 4000)
    young = pay(db, "cyd", D("2025-02-01"), 4000, created=NOW - SETTLE_S + 5)
    pay(db, "cyd", D("2025-03-01"), 4000)  # older, yet after the young one: waits for it
    invoice(db, state="vended", created=NOW - 10, paid_at=NOW - 10, vended=1)
    fold(db, NOW)
    assert cursor(db).payment == young - 1 and cursor(db).invoice == 0
    assert credits(db, D("2025-03-31")) == {"cyd": 12000}
    check(db, [D("2025-03-31"), datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).date()])
    fold(db, NOW + SETTLE_S)
    assert cursor(db).payment == young + 1 and cursor(db).invoice > 0
    check(db, [D("2025-03-31"), datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc).date()])


def test_a_fold_in_small_chunks_gives_the_totals_of_one_fold(db):
    rnd = random.Random(3)
    members = [f"c{i:02d}" for i in range(8)]
    for i, h in enumerate(members):
        member(db, h, D("2024-02-01") + timedelta(days=11 * i))
    random_rows(db, rnd, members, 90, 15, 50)
    report_tables(db)
    done = fold(db, NOW, as_of=D("2025-01-31"), chunk=7)
    assert (done["payments"], done["adjustments"], done["facts"]) == (90, 15, 16)
    assert cursor(db).payment == sql(db, 'SELECT MAX("id") FROM "member_payment"').fetchone()[0]
    assert cursor(db).invoice == sql(db, 'SELECT MAX("id") FROM "sales_invoice"').fetchone()[0] + 1
    check(db, [D("2025-01-31"), D("2025-02-15"), D("2026-01-01")])
