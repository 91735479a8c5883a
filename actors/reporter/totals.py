"""Totals kept instead of recomputed: each member's credit and report row, the dues per day and
method, the vending sales per month, machine and product (issue 12's benchmark targets).

The Reporter is the only writer of these ``report_*`` tables (:func:`fold`, in its runs); it
reads MemberData's and BusinessMgr's tables and never writes them. The readers (the CLI, the
Reporter's snapshots: :func:`credits`, :func:`kept_rows`, :func:`dues_income`,
:func:`sales_income`) add to the totals the rows past the cursor, so their answer equals a full
recompute whether the Reporter ran a minute ago, a month ago or never (no report tables: every
row is past the cursor).

Kept report rows
    A member's row (status, paid-through, balance, next charge) computed on ``state_on`` is the
    same on every later day before ``state_until`` (:func:`actors.reporter.fast.unchanged_until`)
    unless money or facts are added: :func:`kept_rows` answers with it for a member with no
    payment, adjustment or fact past the cursor, when no plan version was added since; the
    others are computed. A fold drops the kept row of every member whose rows it folds (in the
    same transaction), then computes the rows that do not hold on its day.

Cursors
    ``member_payment`` and ``member_adjustment`` are append-only (MemberData never updates or
    deletes a row; a reversal is a new adjustment), so an id cursor is exact: the totals hold the
    rows with ids up to it, a reader adds the rows above it (``WHERE id > cursor``, the primary
    key). A row's day may be anything (a payment entered backdated, or dated ahead): a credit
    total also keeps the latest day it counts (``last_on``); a member whose ``last_on`` is after
    the day asked is summed from the table (by handle, its index), and the dues are kept per
    day, so both are exact for any ``as_of``.

    ``sales_invoice`` rows change after they are made: an invoice is opened, paid later
    (``paid_at``), its items dispensed later still (``vended``), and a failed invoice can gain an
    item when a machine answers an unanswered vend late. So an invoice is folded only once its
    contribution is final: closed (``vended``, ``overpaid``, ``expired``, ``underpaid``,
    ``failed``) with no vend ``sent`` or ``unanswered``. The cursor ``invoice`` is the first id
    not looked at; an invoice below it that was not final is listed in ``report_sales_open`` and
    looked at again by every fold and read by every reader. A sale counts in the month it was
    paid; the month holding ``as_of`` is summed from the table when the totals hold a sale of
    that month paid after ``as_of`` (an ``as_of`` in the past).

Rows not yet committed
    A fold never moves a cursor past a row made less than ``SETTLE_S`` seconds before (by the
    row's ``created``): ids are handed out before commit, so a younger row with a lower id
    could still be in a transaction the fold cannot see. The writers are one actor each, one
    transaction at a time, so ids become visible in order anyway; the margin covers a writer's
    transaction that is slow to commit.

Readers take one snapshot (:func:`snapshot`: a transaction, REPEATABLE READ on PostgreSQL), so
the cursor and the totals they read belong together even while the Reporter folds.

A reader: peewee only (no bus, no scheduler).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import time
from dataclasses import dataclass
from datetime import date

import peewee

from .business import Sale
from .dues import Payment

SETTLE_S = 600  # a fold leaves rows younger than this past the cursor (not yet surely committed)
CLOSED = ("vended", "overpaid", "expired", "underpaid", "failed")  # BusinessMgr's closed states
UNFINISHED_VENDS = ("sent", "unanswered")  # a vend that can still dispense an item
IN_CHUNK = 500  # handles per IN (...) list
FOLD_CHUNK = 5_000  # rows of each table per write transaction of a fold (50 to 100 ms on SQLite)
STATE_COLUMNS = ("state_on", "state_until", "status", "paid_through", "balance_cents", "next_charge",
                 "next_charge_cents")


def _rows(database, sql: str, *params) -> list[tuple]:
    return database.execute_sql(sql.replace("?", database.param), params).fetchall()


def has_table(database, name: str) -> bool:
    """Whether ``name`` exists (in the search path): one cheap query (peewee's table_exists lists
    every table, which costs PostgreSQL milliseconds)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return _rows(database, "SELECT to_regclass(?)", f'"{name}"')[0][0] is not None
    return bool(_rows(database, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name))


@contextlib.contextmanager
def snapshot(database):
    """One consistent view for a reader's several queries (nested: the caller's)."""
    if database.in_transaction():
        yield
        return
    with database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


@dataclass(frozen=True)
class Cursor:
    payment: int = 0
    adjustment: int = 0
    fact: int = 0
    plan: int = 0
    invoice: int = 0
    kept: bool = False  # False: no totals (the Reporter never folded): every row is past the cursor


def cursor(database) -> Cursor:
    if not has_table(database, "report_cursor"):  # the Reporter never ran on this database
        return Cursor()
    found = _rows(database, 'SELECT "payment", "adjustment", "fact", "plan", "invoice" FROM "report_cursor" '
                            'WHERE "id" = 1')
    return Cursor(*(int(v) for v in found[0]), kept=True) if found else Cursor()


# -- members' credit -------------------------------------------------------------------------------

def credits(database, as_of: date, handles: list[str] | None = None) -> dict[str, int]:
    """Every member's payments and adjustments dated on or before ``as_of``, summed (cents), by
    handle (members with none may be missing or 0); only those of ``handles`` (at most
    ``IN_CHUNK``) if given. Exact: the kept totals, plus the rows past the cursor, and for a
    member whose kept total counts a day after ``as_of``, its rows summed by the database."""
    day = as_of.isoformat()
    one = f' AND "handle" IN ({", ".join("?" * len(handles))})' if handles is not None else ""
    extra = tuple(handles or ())
    with snapshot(database):
        cur = cursor(database)
        out: dict[str, int] = {}
        exact: list[str] = []
        if cur.kept:
            for h, cents, last_on in _rows(database, f'SELECT "handle", "cents", "last_on" FROM "report_member_total" '
                                                     f'WHERE 1 = 1{one}', *extra):
                if last_on <= day:
                    out[h] = int(cents)
                else:
                    exact.append(h)
        for table, after in (("member_payment", cur.payment), ("member_adjustment", cur.adjustment)):
            for h, on, cents in _rows(database, f'SELECT "handle", "on", "cents" FROM "{table}" WHERE "id" > ?{one}',
                                      after, *extra):
                if on <= day and h not in exact:
                    out[h] = out.get(h, 0) + int(cents)
        if exact:  # their rows, all of them (those past the cursor too), summed up to the day
            for h in exact:
                out[h] = 0
            for n in range(0, len(exact), IN_CHUNK):
                part = exact[n:n + IN_CHUNK]
                marks = ", ".join("?" * len(part))
                for table in ("member_payment", "member_adjustment"):
                    for h, cents in _rows(database, f'SELECT "handle", SUM("cents") FROM "{table}" WHERE "on" <= ? '
                                                    f'AND "handle" IN ({marks}) GROUP BY "handle"', day, *part):
                        out[h] += int(cents or 0)
    return out


def kept_rows(database, as_of: date) -> tuple[dict[str, dict], list[str] | None]:
    """The members' report rows on ``as_of`` that the Reporter kept and that still hold (computed
    on or before ``as_of``, valid until after it, no payment, adjustment or fact of the member
    past the cursor, no new plan version), by handle; and the handles to compute (None: every
    member, when nothing is kept or a plan changed)."""
    with snapshot(database):
        return _kept_rows(database, as_of)


def _kept_rows(database, as_of: date) -> tuple[dict[str, dict], list[str] | None]:
    cur = cursor(database)
    if not cur.kept:
        return {}, None
    (plan,), = _rows(database, 'SELECT MAX("version") FROM "member_plan_version"')
    if int(plan or 0) != cur.plan:
        return {}, None
    touched = set()
    for table, after in (("member_payment", cur.payment), ("member_adjustment", cur.adjustment),
                         ("member_fact", cur.fact)):
        touched.update(h for (h,) in _rows(database, f'SELECT DISTINCT "handle" FROM "{table}" WHERE "id" > ?', after))
    day = as_of.isoformat()
    out = {}
    for h, status, paid_through, balance, next_charge, next_cents in _rows(
            database, 'SELECT "handle", "status", "paid_through", "balance_cents", "next_charge", '
                      '"next_charge_cents" FROM "report_member_total" WHERE "state_on" <= ? AND "state_until" > ?',
            day, day):
        if h not in touched:
            out[h] = {"handle": h, "as_of": day, "status": status, "paid_through": paid_through,
                      "balance_cents": None if balance is None else int(balance), "next_charge": next_charge,
                      "next_charge_cents": None if next_cents is None else int(next_cents)}
    return out, [h for (h,) in _rows(database, 'SELECT "handle" FROM "member_member"') if h not in out]


# -- income ----------------------------------------------------------------------------------------

def dues_income(database, as_of: date) -> list[Payment]:
    """The dues paid on or before ``as_of`` per month and method: one
    :class:`~actors.reporter.dues.Payment` each, dated the month's first day (the same totals as
    :func:`actors.reporter.inputs.dues_payments`, which sums every row)."""
    day = as_of.isoformat()
    sums: dict[tuple[str, str], int] = {}
    with snapshot(database):
        cur = cursor(database)
        kept = _rows(database, 'SELECT "day", "method", "cents" FROM "report_dues" WHERE "day" <= ?', day) \
            if cur.kept else []
        new = _rows(database, 'SELECT "on", "method", "cents" FROM "member_payment" WHERE "id" > ? AND "on" <= ?',
                    cur.payment, day)
    for on, method, cents in (*kept, *new):
        key = (on[:7], method)
        sums[key] = sums.get(key, 0) + int(cents)
    return [Payment(date.fromisoformat(month + "-01"), cents, method, key=f"{month} {method}")
            for (month, method), cents in sorted(sums.items())]


def _end_of(as_of: date) -> int:
    """The first unix second after ``as_of`` (UTC)."""
    return int(datetime.datetime.combine(as_of, datetime.time(), datetime.timezone.utc).timestamp()) + 86400


def _month(unix_s: int) -> str:
    """The UTC month (YYYY-MM) of a unix second."""
    return _month_of_day(int(unix_s) // 86400)


@functools.lru_cache(maxsize=1 << 14)
def _month_of_day(day: int) -> str:  # (a fold meets each day thousands of times: strftime was its cost)
    return (EPOCH + datetime.timedelta(days=day)).isoformat()[:7]


EPOCH = date(1970, 1, 1)


def _month_start(month: str) -> int:
    return int(datetime.datetime(int(month[:4]), int(month[5:]), 1, tzinfo=datetime.timezone.utc).timestamp())


SALE_COLUMNS = '"id", "machine", "product", "due_sats", "vended", "items", "price_cents", "paid_at"'
A_SALE = '"vended" > 0 AND "items" > 0 AND "paid_at" IS NOT NULL'


def _sale(due_sats, vended, items, price_cents) -> tuple[int, int]:
    """An invoice's sale: the items dispensed, in sats at its quote and in cents at its price
    (as inputs.sales sums it: per invoice, the sats rounded down)."""
    return (due_sats or 0) * vended // items, price_cents * vended


def sales_income(database, as_of: date) -> list[Sale]:
    """BusinessMgr's vending sales paid on or before ``as_of`` (UTC days), per month, machine and
    product (one :class:`~actors.reporter.business.Sale` each, dated the month's first day): the
    same totals as :func:`actors.reporter.inputs.sales`, which sums every invoice."""
    if not has_table(database, "sales_invoice"):
        return []
    end, this_month = _end_of(as_of), as_of.isoformat()[:7]
    sums: dict[tuple[str, str, str], list[int]] = {}

    def add(month, machine, product, sats, cents):
        s = sums.setdefault((month, machine, product), [0, 0])
        s[0] += int(sats)
        s[1] += int(cents)

    with snapshot(database):
        cur = cursor(database)
        kept = _rows(database, 'SELECT "month", "machine", "product", "sats", "cents", "last_paid_at" '
                               'FROM "report_sales" WHERE "month" <= ?', this_month) if cur.kept else []
        # the month of as_of from the table when the totals hold a sale of it paid after as_of
        whole = any(m == this_month and last >= end for m, *_, last in kept)
        for month, machine, product, sats, cents, _ in kept:
            if not (whole and month == this_month):
                add(month, machine, product, sats, cents)
        opened = [i for (i,) in _rows(database, 'SELECT "invoice" FROM "report_sales_open"')] if cur.kept else []
        new = _rows(database, f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" >= ? AND {A_SALE} '
                              'AND "paid_at" < ?', cur.invoice, end)
        for n in range(0, len(opened), IN_CHUNK):
            part = opened[n:n + IN_CHUNK]
            new += _rows(database, f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" IN '
                                   f'({", ".join("?" * len(part))}) AND {A_SALE} AND "paid_at" < ?', *part, end)
        for _, machine, product, due_sats, vended, items, price_cents, paid_at in new:
            month = _month(paid_at)
            if not (whole and month == this_month):
                add(month, machine, product, *_sale(due_sats, vended, items, price_cents))
        if whole:
            for _, machine, product, due_sats, vended, items, price_cents, paid_at in _rows(
                    database, f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE {A_SALE} AND "paid_at" >= ? '
                              'AND "paid_at" < ?', _month_start(this_month), end):
                add(this_month, machine, product, *_sale(due_sats, vended, items, price_cents))
    return [Sale(machine, product, sats, cents, date.fromisoformat(month + "-01"))
            for (month, machine, product), (sats, cents) in sorted(sums.items())]


# -- what a reader's answer depends on (for readers that keep answers: the report server) -------------

MEMBER_TABLES = ("member_member", "member_fact", "member_payment", "member_adjustment")


def members_version(database) -> tuple:
    """A value that changes whenever anything a member report reads from MemberData's tables
    can have changed: the highest id of each append-only table (members, facts, payments and
    adjustments are only ever added, their ids in commit order: one writer, one transaction at a
    time, as the cursors above assume) and every plan version row (a handful; a migration may
    update them). The kept totals are not in it: a reader's answer does not depend on them.
    On PostgreSQL it is one statement (consistent without a transaction)."""
    ids = ", ".join(f'(SELECT MAX("id") FROM "{t}")' for t in MEMBER_TABLES)
    if isinstance(database, peewee.PostgresqlDatabase):  # one statement: one snapshot, no transaction needed
        (row,) = _rows(database, f'SELECT {ids}, (SELECT string_agg(p::text, \'|\' ORDER BY p."version") '
                                 'FROM "member_plan_version" p)')
        return tuple(row)
    (row,) = _rows(database, f"SELECT {ids}")
    plans = tuple(tuple(r) for r in _rows(database, 'SELECT * FROM "member_plan_version" ORDER BY "version"'))
    return (*row, plans)


def income_version(database, as_of: date) -> tuple | None:
    """A value that changes whenever :func:`dues_income` or :func:`sales_income` on ``as_of``
    can answer otherwise (read in the same snapshot), or None when there is no cheap one (no kept
    totals: every row is past the cursor). The kept totals change only with the cursor or the
    list of open invoices; the payments past the cursor are append-only (their highest id); the
    invoices past the cursor and the open ones can still change: their rows are in it.

    On PostgreSQL it is one statement (consistent without a transaction; outside one it raises
    when a table is missing: the caller reads it again in a snapshot, where it is None)."""
    if isinstance(database, peewee.PostgresqlDatabase):
        return _income_version_pg(database, as_of)
    cur = cursor(database)
    if not cur.kept:
        return None
    (pay,), = _rows(database, 'SELECT MAX("id") FROM "member_payment"')
    sales: tuple = ()
    if has_table(database, "sales_invoice"):
        end = _end_of(as_of)
        opened = [i for (i,) in _rows(database, 'SELECT "invoice" FROM "report_sales_open" ORDER BY "invoice"')]
        new = _rows(database, f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" >= ? AND {A_SALE} '
                              'AND "paid_at" < ? ORDER BY "id"', cur.invoice, end)
        for n in range(0, len(opened), IN_CHUNK):
            part = opened[n:n + IN_CHUNK]
            new += _rows(database, f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" IN '
                                   f'({", ".join("?" * len(part))}) AND {A_SALE} AND "paid_at" < ? ORDER BY "id"',
                         *part, end)
        sales = (tuple(opened), tuple(tuple(r) for r in new))
    return (cur, pay, sales)


def _income_version_pg(database, as_of: date) -> tuple | None:
    if database.in_transaction() and not (has_table(database, "report_cursor")
                                          and has_table(database, "sales_invoice")):
        return None
    end = _end_of(as_of)
    # (two selects, not one with an OR: each is an index range of the primary key, where the OR
    # read all 500,000 invoices every time)
    found = _rows(database, 'SELECT c."payment", c."adjustment", c."fact", c."plan", c."invoice", '
                            '(SELECT MAX("id") FROM "member_payment"), '
                            '(SELECT string_agg(o."invoice"::text, \',\' ORDER BY o."invoice") '
                            'FROM "report_sales_open" o), '
                            '(SELECT string_agg(ROW(u.*)::text, \'|\' ORDER BY u."id") FROM ('
                            f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" >= c."invoice" AND {A_SALE} '
                            'AND "paid_at" < ? UNION '
                            f'SELECT {SALE_COLUMNS} FROM "sales_invoice" WHERE "id" IN (SELECT "invoice" FROM '
                            f'"report_sales_open") AND {A_SALE} AND "paid_at" < ?) u) '
                            'FROM "report_cursor" c WHERE c."id" = 1', end, end)
    if not found:
        return None
    row = found[0]
    return (Cursor(*(int(v) for v in row[:5]), kept=True), *row[5:])


# -- the fold (the Reporter only) ------------------------------------------------------------------

def fold(database, now: float | None = None, settle_s: int = SETTLE_S, as_of: date | None = None,
         chunk: int = FOLD_CHUNK) -> dict:
    """Bring the totals up to date (the Reporter's runs; it is their only writer): add the rows
    past the cursor made at least ``settle_s`` seconds before ``now``, fold the invoices that
    became final, move the cursor; then compute the report row on ``as_of`` (default: the UTC
    day of ``now``) of every member whose kept row does not hold on that day. Returns what it did.

    The rows are folded ``chunk`` at a time, each chunk in a write transaction of its own (on
    SQLite a write transaction stops every other writer: a first fold over years of rows must not
    hold up a vend for seconds). Each leaves the tables as readers need them: the cursor and the
    totals together, and the kept row of every member with money or facts folded in it dropped.
    The rows are computed from a read snapshot, then written in one short write transaction."""
    from ..db import write_transaction  # (the readers above need no write lock)

    now = time.time() if now is None else now
    as_of = as_of or datetime.datetime.fromtimestamp(int(now), datetime.timezone.utc).date()
    young = int(now) - settle_s
    added = {"payments": 0, "adjustments": 0, "facts": 0, "invoices": 0, "open": 0, "states": 0}
    while True:
        with write_transaction(database):
            more = _fold_step(database, young, chunk, added)
        if not more:
            break
    day = as_of.isoformat()
    with snapshot(database):
        holds = {h for (h,) in _rows(database, 'SELECT "handle" FROM "report_member_total" '
                                               'WHERE "state_on" <= ? AND "state_until" > ?', day, day)}
        need = [h for (h,) in _rows(database, 'SELECT "handle" FROM "member_member"') if h not in holds]
        last_on = {h: on for h, on in _rows(database, 'SELECT "handle", "last_on" FROM "report_member_total"')}
        states = _states(database, as_of, need, last_on) if need else {}
    added["states"] = len(states)
    if need:
        with write_transaction(database):
            have = {(h,) for h in last_on}
            rows = {(h,): states.get(h, (None,) * 7) for h in need if (h,) in have}
            _upsert(database, "report_member_total", ("handle",), STATE_COLUMNS, rows, have)
            rows = {(h,): (0, "", *states.get(h, (None,) * 7)) for h in need if (h,) not in have}
            _upsert(database, "report_member_total", ("handle",), ("cents", "last_on", *STATE_COLUMNS), rows, ())
    return added


def _fold_step(database, young: int, chunk: int, added: dict) -> bool:
    """One chunk of the fold (in the caller's write transaction); True if rows are left."""
    cur = cursor(database)
    more = False
    credit: dict[str, list] = {}
    touched: set[str] = set()
    dues: dict[tuple[str, str], int] = {}
    ids = {"payment": cur.payment, "adjustment": cur.adjustment}
    for key, table, cols in (("payment", "member_payment", '"method"'), ("adjustment", "member_adjustment", "NULL")):
        found = _rows(database, f'SELECT "id", "handle", "on", "cents", {cols}, "created" FROM "{table}" '
                                f'WHERE "id" > ? ORDER BY "id" LIMIT {int(chunk)}', ids[key])
        for pid, h, on, cents, method, created in found:
            if created > young:
                break  # maybe a younger row with a lower id is not committed yet: next time
            c = credit.setdefault(h, [0, ""])
            c[0] += int(cents)
            c[1] = max(c[1], on)
            if key == "payment":
                dues[(on, method)] = dues.get((on, method), 0) + int(cents)
            ids[key] = pid
            added[key + "s"] += 1
        else:
            more |= len(found) == chunk
    fact = cur.fact
    found = _rows(database, f'SELECT "id", "handle", "created" FROM "member_fact" WHERE "id" > ? ORDER BY "id" '
                            f'LIMIT {int(chunk)}', cur.fact)
    for fid, h, created in found:
        if created > young:
            break
        touched.add(h)
        fact = fid
        added["facts"] += 1
    else:
        more |= len(found) == chunk
    (plan,), = _rows(database, 'SELECT MAX("version") FROM "member_plan_version" WHERE "created" <= ?', young)
    plan = int(plan or 0)
    if credit:
        names = sorted(credit)
        have = {}
        for n in range(0, len(names), IN_CHUNK):
            part = names[n:n + IN_CHUNK]
            have.update({(h,): (int(c), on) for h, c, on in _rows(
                database, f'SELECT "handle", "cents", "last_on" FROM "report_member_total" WHERE "handle" IN '
                          f'({", ".join("?" * len(part))})', *part)})
        rows = {}
        for h, (cents, on) in credit.items():
            c0, on0 = have.get((h,), (0, ""))
            rows[(h,)] = (c0 + cents, max(on0, on))
        _upsert(database, "report_member_total", ("handle",), ("cents", "last_on"), rows, have)
        touched.update(credit)
    if dues:
        have = {(d, m): int(c) for d, m, c in _rows(database, 'SELECT "day", "method", "cents" FROM "report_dues" '
                                                              'WHERE "day" >= ?', min(d for d, _ in dues))}
        _upsert(database, "report_dues", ("day", "method"), ("cents",),
                {k: (have.get(k, 0) + c,) for k, c in dues.items()}, have)
    # the kept rows these facts may change are dropped with them (a new plan version: every one)
    if plan != cur.plan:
        _exec(database, 'UPDATE "report_member_total" SET "state_on" = NULL, "state_until" = NULL')
    else:
        names = sorted(touched)
        for n in range(0, len(names), IN_CHUNK):
            part = names[n:n + IN_CHUNK]
            _exec(database, 'UPDATE "report_member_total" SET "state_on" = NULL, "state_until" = NULL '
                            f'WHERE "handle" IN ({", ".join("?" * len(part))})', *part)
    invoice = cur.invoice
    if has_table(database, "sales_invoice"):
        invoice, sales_more = _fold_sales(database, cur, young, chunk, added)
        more |= sales_more
    values = (ids["payment"], ids["adjustment"], fact, plan, invoice, int(time.time()))
    if cur.kept:
        _exec(database, 'UPDATE "report_cursor" SET "payment" = ?, "adjustment" = ?, "fact" = ?, "plan" = ?, '
                        '"invoice" = ?, "updated" = ? WHERE "id" = 1', *values)
    else:
        _exec(database, 'INSERT INTO "report_cursor" ("id", "payment", "adjustment", "fact", "plan", "invoice", '
                        '"updated") VALUES (1, ?, ?, ?, ?, ?, ?)', *values)
    return more


def _states(database, as_of: date, handles: list[str], last_on: dict) -> dict[str, tuple]:
    """Each member's report row on ``as_of`` and the day it can next change, as the columns of
    report_member_total (STATE_COLUMNS); members whose row cannot be kept are left out (money
    dated after ``as_of``, facts the core cannot read, credit at the core's horizon)."""
    from .dues import Adjustment, DuesError, MemberBook, MemberHistory, PlanChange
    from .fast import closed_form, state, unchanged_until
    from .inputs import load

    day = as_of.isoformat()
    inputs = load(database, as_of, since=as_of, simple=True, handles=handles)
    out = {}
    # money dated after as_of (a payment entered ahead, or as_of in the past): the row holds until its day
    ahead: dict[str, date] = {}
    later = [h for h in handles if last_on.get(h, "") > day]
    for n in range(0, len(later), IN_CHUNK):
        part = later[n:n + IN_CHUNK]
        for table in ("member_payment", "member_adjustment"):
            for h, on in _rows(database, f'SELECT "handle", MIN("on") FROM "{table}" WHERE "on" > ? AND "handle" IN '
                                         f'({", ".join("?" * len(part))}) GROUP BY "handle"', day, *part):
                ahead[h] = min(ahead.get(h, date.max), date.fromisoformat(on))

    def keep(s, fact_days=()):
        if s.handle in ahead:
            fact_days = (*fact_days, ahead[s.handle])
        elif last_on.get(s.handle, "") > day:
            return  # (money past the cursor, not committed when the totals were: the reader recomputes it)
        until = unchanged_until(s, fact_days)
        if until is None:
            return
        r = s.summary()
        out[s.handle] = (day, until.isoformat(), r["status"], r["paid_through"], r["balance_cents"], r["next_charge"],
                         r["next_charge_cents"])
    for h, joined, version, cents in inputs.simple:
        s = closed_form(h, joined, version, cents, as_of)
        if s is None:
            s = MemberBook(MemberHistory(h, joined, (PlanChange(joined, version.name),),
                                         adjustments=(Adjustment(as_of, cents),) if cents else ()),
                           inputs.plans).state(as_of)
        keep(s)
    for hist in inputs.histories:
        try:
            s = state(hist, inputs.plans, as_of)
        except DuesError:
            continue
        keep(s, (*hist.leaves, *hist.rejoins, *(c.effective for c in hist.plan_changes)))
    return out


def _fold_sales(database, cur: Cursor, young: int, chunk: int, added: dict) -> tuple[int, bool]:
    """Fold the invoices that became final (in the caller's transaction): the open ones, and up to
    ``chunk`` from the cursor on. Returns the new cursor and whether invoices are left."""
    opened = {i for (i,) in _rows(database, 'SELECT "invoice" FROM "report_sales_open"')}
    unfinished = {i for (i,) in _rows(database, 'SELECT DISTINCT "invoice_id" FROM "sales_vend" WHERE "state" IN '
                                                f'({", ".join("?" * len(UNFINISHED_VENDS))})', *UNFINISHED_VENDS)}
    cols = f'{SALE_COLUMNS}, "state", "created"'
    rows = _rows(database, f'SELECT {cols} FROM "sales_invoice" WHERE "id" >= ? ORDER BY "id" LIMIT {int(chunk)}',
                 cur.invoice)
    more = len(rows) == chunk
    opened_list = sorted(opened)
    for n in range(0, len(opened_list), IN_CHUNK):
        part = opened_list[n:n + IN_CHUNK]
        rows += _rows(database, f'SELECT {cols} FROM "sales_invoice" WHERE "id" IN ({", ".join("?" * len(part))})',
                      *part)
    rows.sort(key=lambda r: r[0])
    next_id = cur.invoice
    sums: dict[tuple[str, str, str], list[int]] = {}
    still_open, now_closed = set(), set()
    for iid, machine, product, due_sats, vended, items, price_cents, paid_at, state, created in rows:
        if iid >= cur.invoice:
            if created > young:
                more = False
                break  # this one and every later id: next time
            next_id = iid + 1
        if state in CLOSED and iid not in unfinished:
            added["invoices"] += 1
            if iid in opened:
                now_closed.add(iid)
            if vended > 0 and items > 0 and paid_at is not None:
                s = sums.setdefault((_month(paid_at), machine, product), [0, 0, 0])
                sats, cents = _sale(due_sats, vended, items, price_cents)
                s[0] += sats
                s[1] += cents
                s[2] = max(s[2], int(paid_at))
        elif iid not in opened:
            still_open.add(iid)
    if sums:
        have = {(m, mc, p): (int(s), int(c), int(last)) for m, mc, p, s, c, last in _rows(
            database, 'SELECT "month", "machine", "product", "sats", "cents", "last_paid_at" FROM "report_sales" '
                      'WHERE "month" >= ?', min(k[0] for k in sums))}
        new = {}
        for k, (s, c, last) in sums.items():
            hs, hc, hl = have.get(k, (0, 0, 0))
            new[k] = (hs + s, hc + c, max(hl, last))
        _upsert(database, "report_sales", ("month", "machine", "product"), ("sats", "cents", "last_paid_at"), new,
                have)
    closed = sorted(now_closed)
    for k in range(0, len(closed), IN_CHUNK):
        part = closed[k:k + IN_CHUNK]
        _exec(database, f'DELETE FROM "report_sales_open" WHERE "invoice" IN ({", ".join("?" * len(part))})', *part)
    if still_open:
        database.cursor().executemany('INSERT INTO "report_sales_open" ("invoice") VALUES (?)'.replace(
            "?", database.param), [(i,) for i in sorted(still_open)])
    added["open"] = len(opened) - len(now_closed) + len(still_open)
    return next_id, more


def _exec(database, sql: str, *params) -> None:
    database.execute_sql(sql.replace("?", database.param), params)


def _upsert(database, table: str, keys: tuple, values: tuple, rows: dict, have) -> None:
    """Write ``rows`` (key tuple -> value tuple): UPDATE those whose key is in ``have`` (the rows
    that exist), INSERT the others."""
    if not rows:
        return
    p = database.param
    where = " AND ".join(f'"{k}" = {p}' for k in keys)
    sets = ", ".join(f'"{v}" = {p}' for v in values)
    update = [(*v, *k) for k, v in rows.items() if k in have]
    insert = [(*k, *v) for k, v in rows.items() if k not in have]
    c = database.cursor()
    if update:
        c.executemany(f'UPDATE "{table}" SET {sets} WHERE {where}', update)
    if insert:
        cols = ", ".join(f'"{n}"' for n in (*keys, *values))
        c.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join([p] * (len(keys) + len(values)))})', insert)
