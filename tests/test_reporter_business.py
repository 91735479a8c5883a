"""The Reporter's business reports (issue 12, item 2): activity per month (active members, joins,
leaves, retention) and groups (explicit and by rule), as readers (SQLite and PostgreSQL, the
World of tests/test_reporter.py), as `dctrl report activity|groups`, and as the Reporter's
report.activity and report.groups snapshots on the fake runtime; the multi-day statuses
against the core, and [reporter.groups] checked.
"""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date, timedelta
from fractions import Fraction

import pytest

from actors.reporter.business import active_members, joins_and_leaves, retention
from actors.reporter.dues import (Adjustment, MemberBook, MemberHistory, Payment, PlanChange, Plans, PlanVersion,
                                  Status, add_months)
from actors.reporter.fast import statuses_on
from actors.reporter.groups import KEYHOLDER_STATUSES, GroupRule, members_of
from actors.reporter.inputs import load
from actors.reporter.models import ReportSnapshot
from actors.reporter.reports import activity_rows, group_rows, group_rules, percent
from proto.errors import DctrlError
from tests.test_reporter import D, home, run_cli, world  # noqa: F401  (fixtures)

ONE = timedelta(days=1)


def month_end(m: date, as_of: date) -> date:
    return min(add_months(m, 1) - ONE, as_of)


def check_against_pure(database, as_of: date, months: int = 12):
    """activity_rows agrees with business.py's pure functions over every member's full history."""
    rows = activity_rows(database, as_of, months)
    full = load(database, as_of)
    first = add_months(as_of.replace(day=1), -(months - 1))
    active = active_members(full.histories, full.plans, first, as_of)
    moves = {m: list(n) for m, n in joins_and_leaves(full.histories, first, as_of).items()}
    last = as_of.replace(day=1)
    for h in full.histories:  # a report as of a day does not count what is dated after it
        moves[last][0] -= sum(d > as_of and d.replace(day=1) == last for d in (h.joined, *h.rejoins))
        moves[last][1] -= sum(d > as_of and d.replace(day=1) == last for d in h.leaves)
    assert [r["month"] for r in rows] == [m.isoformat()[:7] for m in active]
    assert [r["active"] for r in rows] == list(active.values())
    assert [[r["joins"], r["leaves"]] for r in rows] == list(moves.values())
    for r, m in zip(rows, active):
        kept = retention(full.histories, full.plans, m - ONE, month_end(m, as_of))
        assert r["retention_fraction"] == kept
        assert r["retention"] == percent(kept)
    return rows


# -- the readers, on MemberData's tables -----------------------------------------------------------

def test_activity_counts_joins_leaves_rejoins_and_lapsed_members(world):
    w = world
    w.plan()
    w.set_day(D("2027-01-15"))
    w.add("ada", "2026-11-30")  # pays through
    w.add("bob", "2026-12-01")  # never pays: due, overdue, lapsed (not active)
    w.add("cal", "2027-01-31")  # joins on the 31st
    w.add("dan", "2026-10-01")  # leaves, then rejoins
    for k in range(6):
        w.pay("ada", on=add_months(D("2026-11-30"), k).isoformat())
        w.pay("dan", on=add_months(D("2026-10-01"), k).isoformat())
    w.pay("cal", on="2027-01-31")
    w.member_cmd("cmd.members.leave", handle="dan", on="2027-01-10")
    w.member_cmd("cmd.members.rejoin", handle="dan", on="2027-03-01")
    db = w.reporter.database
    rows = check_against_pure(db, D("2027-03-15"), months=6)
    assert [(r["month"], r["end"], r["active"], r["joins"], r["leaves"], r["retention"]) for r in rows] == [
        ("2026-10", "2026-10-31", 1, 1, 0, None),       # dan joined; nobody active at September's end
        ("2026-11", "2026-11-30", 2, 1, 0, "100.0"),    # ada joins on the 30th
        ("2026-12", "2026-12-31", 3, 1, 0, "100.0"),    # bob joins, unpaid (due on Dec 8, overdue)
        ("2027-01", "2027-01-31", 2, 1, 1, "33.3"),     # bob lapsed (Jan 7), dan left; cal joins on the 31st
        ("2027-02", "2027-02-28", 2, 0, 0, "100.0"),    # cal's second period unpaid: due on Feb 28
        ("2027-03", "2027-03-15", 3, 1, 0, "100.0")]    # cal overdue (still active), dan rejoined (due)
    # whatever the story, the pure functions decide: the same numbers from every row


def test_activity_month_ends_on_the_31st_and_a_leap_day(world):
    w = world
    w.plan(grace_days=0)
    w.set_day(D("2028-03-10"))
    w.add("ada", "2028-01-31")
    w.add("bob", "2028-02-29")
    w.pay("ada", on="2028-01-31")  # one month: through Feb 28 (the period of Feb 29 starts unpaid)
    w.pay("bob", on="2028-02-29")
    db = w.reporter.database
    rows = check_against_pure(db, D("2028-03-10"), months=3)
    assert [(r["month"], r["end"]) for r in rows] == [("2028-01", "2028-01-31"), ("2028-02", "2028-02-29"),
                                                      ("2028-03", "2028-03-10")]
    assert [r["joins"] for r in rows] == [1, 1, 0]
    assert rows[0]["active"] == 1 and rows[1]["active"] == 2
    # a month ending on the 31st, as_of its last day
    rows = check_against_pure(db, D("2028-01-31"), months=1)
    assert [(r["end"], r["active"], r["retention"]) for r in rows] == [("2028-01-31", 1, None)]


def test_activity_on_random_histories_agrees_with_the_pure_functions(world):
    w = world
    w.plan()
    w.set_day(D("2027-06-01"))
    rnd = random.Random(7)
    for i in range(14):
        h = f"m{i:02d}"
        joined = D("2026-01-01") + timedelta(days=rnd.randrange(500))
        w.add(h, joined.isoformat())
        for _ in range(rnd.randrange(12)):
            w.pay(h, on=(joined + timedelta(days=rnd.randrange(400))).isoformat(), cad=rnd.choice(["40.00", "80.00"]))
        if rnd.random() < 0.4:
            left = joined + timedelta(days=rnd.randrange(1, 300))
            w.member_cmd("cmd.members.leave", handle=h, on=left.isoformat())
            if rnd.random() < 0.5:
                back = left + timedelta(days=rnd.randrange(1, 90))
                w.member_cmd("cmd.members.rejoin", handle=h, on=back.isoformat())
    db = w.reporter.database
    for as_of in (D("2027-05-31"), D("2027-02-28"), D("2026-12-31"), D("2027-06-01")):
        check_against_pure(db, as_of)
    with pytest.raises(DctrlError, match="months"):
        activity_rows(db, D("2027-01-01"), 0)


def test_groups_explicit_and_by_rule(world):
    w = world
    w.plan()
    w.set_day(D("2027-02-01"))
    for h in ("ada", "bob", "cal"):
        w.add(h, "2027-01-01")
    w.pay("ada", on="2027-01-01", cad="80.00")  # prepaid
    w.pay("cal", on="2027-01-01")  # current on Feb 1? its February period is unpaid: due
    for h in ("ada", "bob", "cal"):
        w.member_cmd("cmd.members.group", handle=h, group="keys", action="add")
    w.member_cmd("cmd.members.group", handle="bob", group="board", action="add")
    db = w.reporter.database
    day = D("2027-03-20")  # bob owes since January, cal since February: lapsed; ada owes March: overdue
    rules = [GroupRule("keyholders", KEYHOLDER_STATUSES, "keys"), GroupRule("owing", frozenset({Status.OVERDUE,
                                                                                               Status.LAPSED}))]
    rows = group_rows(db, day, rules)
    full = load(db, day)
    assert [(g["name"], g["kind"], g["members"]) for g in rows] == [
        ("board", "explicit", ["bob"]), ("keys", "explicit", ["ada", "bob", "cal"]),
        ("keyholders", "rule", members_of(rules[0], full.histories, full.plans, day)),
        ("owing", "rule", members_of(rules[1], full.histories, full.plans, day))]
    assert rows[3]["members"] == ["ada", "bob", "cal"] and rows[3]["count"] == 3 and rows[2]["members"] == []
    # the default rule: keyholders; before the groups were made (Feb 1), nobody is in any
    assert [(g["name"], g["members"]) for g in group_rows(db, D("2027-01-31"))] == [("keyholders", [])]
    on_feb = group_rows(db, D("2027-02-01"))
    assert on_feb[-1]["members"] == members_of(rules[0], load(db, D("2027-02-01")).histories, full.plans,
                                               D("2027-02-01"))
    w.member_cmd("cmd.members.group", handle="bob", group="board", action="remove")
    w.set_day(D("2027-02-02"))
    assert [g["name"] for g in group_rows(db, D("2027-02-02"))] == ["keys", "keyholders"]


# -- the multi-day statuses against the core ---------------------------------------------------

def test_statuses_on_month_ends_agree_with_the_core_on_random_histories():
    rnd = random.Random(3)
    for _ in range(600):
        plans = Plans((PlanVersion("p", rnd.choice([1000, 4000, 3333]), rnd.choice(["month", "quarter", "year"]),
                                   rnd.choice([0, 30]), term_days=rnd.choice([0, 7])),
                       *((PlanVersion("p", 5000, "month", 30, D("2025-06-01")),) if rnd.random() < 0.2 else ())))
        joined = D("2024-01-01") + timedelta(days=rnd.randrange(800))
        pays = tuple(Payment(joined + timedelta(days=rnd.randrange(-5, 900)), rnd.choice([1000, 4000, 12000]))
                     for _ in range(rnd.randrange(8)))
        adjs = (Adjustment(joined + timedelta(days=rnd.randrange(900)), 500),) if rnd.random() < 0.3 else ()
        leaves, rejoins = (), ()
        if rnd.random() < 0.3:
            leaves = (joined + timedelta(days=rnd.randrange(1, 400)),)
            if rnd.random() < 0.5:
                rejoins = (leaves[0] + timedelta(days=rnd.randrange(1, 200)),)
        h = MemberHistory("a", joined, (PlanChange(joined, "p"),), pays, adjs, leaves, rejoins)
        first = D("2024-01-01") + timedelta(days=rnd.randrange(900))
        days = [first - ONE, *(add_months(first.replace(day=1), k + 1) - ONE for k in range(13))]
        book = MemberBook(h, plans)
        assert statuses_on(h, plans, days) == [book.status(d) for d in days], (h, days)


# -- config -------------------------------------------------------------------------------------

def test_reporter_groups_config_is_checked_strictly():
    assert [r.name for r in group_rules(None)] == ["keyholders"]
    (rule,) = group_rules({"keyholders": {"statuses": ["prepaid", "current", "due"], "group": "keys"}})
    assert rule == GroupRule("keyholders", KEYHOLDER_STATUSES, "keys")
    assert group_rules({"owing": {"statuses": ["overdue"]}}) == [GroupRule("owing", frozenset({Status.OVERDUE}))]
    for bad, said in [({"k": {"statuses": ["paid"]}}, "unknown status 'paid'"),
                      ({"k": {"statuses": []}}, "statuses must be a non-empty list"),
                      ({"k": {"group": "keys"}}, "statuses must be a non-empty list"),
                      ({"k": {"statuses": ["due"], "grop": "keys"}}, "unknown key 'grop'"),
                      ({"k": {"statuses": ["due"], "group": 3}}, "group must be"),
                      ({"Keys!": {"statuses": ["due"]}}, "rule name 'Keys!'"),
                      ({"k": "due"}, "must be a table")]:
        with pytest.raises(DctrlError, match=said):
            group_rules(bad)
    from keys.schema import CONFIG, ConfigError, check

    check({"reporter": {"groups": {"keyholders": {"statuses": ["due"], "group": "keys"}}}}, CONFIG, "config.toml")
    with pytest.raises(ConfigError, match=r"statuses must be a non-empty list of member statuses"):
        check({"reporter": {"groups": {"k": {"statuses": ["paid"]}}}}, CONFIG, "config.toml")
    with pytest.raises(ConfigError, match=r"unknown key 'grop'"):
        check({"reporter": {"groups": {"k": {"statuses": ["due"], "grop": "x"}}}}, CONFIG, "config.toml")


def test_percent_rounds_half_up_to_one_decimal():
    assert [percent(x) for x in (None, Fraction(2, 3), Fraction(1, 1), Fraction(0), Fraction(1, 2000),
                                 Fraction(1, 3))] == [None, "66.7", "100.0", "0.0", "0.1", "33.3"]


# -- the CLI and the Reporter's snapshots -----------------------------------------------------------

def make_small(w):
    w.plan()
    w.set_day(D("2027-02-01"))
    w.add("ada", "2027-01-01")
    w.add("bob", "2027-01-31")
    w.pay("ada", on="2027-01-01", cad="120.00")
    w.member_cmd("cmd.members.group", handle="ada", group="keys", action="add")
    w.member_cmd("cmd.members.group", handle="bob", group="keys", action="add")


def test_cli_activity_and_groups_as_table_json_csv_and_help(world, capsys):
    make_small(world)
    root = str(world.home.root)
    rows = json.loads(run_cli(capsys, "report", "activity", "--home", root, "--as-of", "2027-02-10",
                              "--months", "2", "--json"))
    assert rows == [
        {"month": "2027-01", "end": "2027-01-31", "active": 2, "joins": 2, "leaves": 0, "retention": None,
         "retention_permille": None},
        {"month": "2027-02", "end": "2027-02-10", "active": 2, "joins": 0, "leaves": 0, "retention": "100.0",
         "retention_permille": 1000}]
    out = run_cli(capsys, "report", "activity", "--home", root, "--as-of", "2027-02-10", "--months", "2", "--csv")
    assert list(csv.reader(io.StringIO(out))) == [["month", "end", "active", "joins", "leaves", "retention_pct"],
                                                  ["2027-01", "2027-01-31", "2", "2", "0", ""],
                                                  ["2027-02", "2027-02-10", "2", "0", "0", "100.0"]]
    out = run_cli(capsys, "report", "activity", "--home", root, "--as-of", "2027-02-10", "--months", "2")
    assert "RETENTION" in out and "100.0%" in out and len(out.splitlines()) == 4
    groups = json.loads(run_cli(capsys, "report", "groups", "--home", root, "--as-of", "2027-02-10", "--json"))
    assert [(g["name"], g["kind"], g["members"]) for g in groups] == [("keys", "explicit", ["ada", "bob"]),
                                                                        ("keyholders", "rule", ["ada"])]  # bob overdue
    out = run_cli(capsys, "report", "groups", "--home", root, "--as-of", "2027-03-20", "--csv")
    assert out == "group,kind,handle\nkeys,explicit,ada\nkeys,explicit,bob\nkeyholders,rule,ada\n"
    out = run_cli(capsys, "report", "groups", "--home", root, "--as-of", "2027-03-20")
    assert "keyholders (rule: current, due, prepaid in group keys): 1 member(s)" in out
    for text in (out, json.dumps(groups)):
        assert "Ada" not in text and "@example.org" not in text  # handles only
    from scripts.cli import main

    for verb, said in (("activity", "retention"), ("groups", "never names or emails")):
        with pytest.raises(SystemExit):
            main(["report", verb, "--help"])
        assert said in " ".join(capsys.readouterr().out.split())
    assert main(["report", "activity", "--home", root, "--months", "0"]) != 0


def test_the_reporter_stores_and_publishes_activity_and_groups(world):
    make_small(world)
    world.set_day(D("2027-02-10"))
    world.reporter.run()
    (act,) = world.rep.bodies("report.activity")
    assert act["as_of"] == "2027-02-10" and len(act["months"]) == 12
    assert act["months"][-2:] == [
        {"month": "2027-01", "active": 2, "joins": 2, "leaves": 0, "retention_permille": None},
        {"month": "2027-02", "active": 2, "joins": 0, "leaves": 0, "retention_permille": 1000}]
    (grp,) = world.rep.bodies("report.groups")
    assert grp["groups"] == [{"name": "keys", "kind": "explicit", "members": 2},
                             {"name": "keyholders", "kind": "rule", "members": 1}]  # bob: overdue
    snaps = {s.kind: json.loads(s.body) for s in ReportSnapshot.select().bind(world.reporter.database)}
    assert snaps["groups"][1]["members"] == ["ada"] and snaps["activity"][-1]["retention"] == "100.0"
    world.reporter.run()  # a rerun of the day replaces the stored body
    assert ReportSnapshot.select().where(ReportSnapshot.kind == "groups").bind(world.reporter.database).count() == 1


def test_a_configured_rule_reaches_the_reporter_and_a_bad_one_stops_it(world, tmp_path):
    from actors.reporter.actor import Reporter

    world.home.config.setdefault("reporter", {})["groups"] = {"owing": {"statuses": ["due", "overdue"]}}
    try:
        make_small(world)
        world.start_reporter()
        world.set_day(D("2027-03-20"))
        world.reporter.run()
        assert world.rep.last("report.groups")["groups"][-1] == {"name": "owing", "kind": "rule", "members": 0}
        world.home.config["reporter"]["groups"] = {"owing": {"statuses": ["owing"]}}
        with pytest.raises(DctrlError, match="unknown status 'owing'"):
            Reporter(world.home, database=world.reporter.database)
    finally:
        world.home.config["reporter"].pop("groups", None)


def test_report_groups_reads_the_rules_from_config_toml_and_says_what_is_wrong(world, capsys):
    from scripts.cli import main

    make_small(world)
    root = str(world.home.root)
    path = world.home.root / "config.toml"
    text = path.read_text()
    try:
        path.write_text(text + '\n[reporter.groups]\nowing = {statuses = ["overdue", "lapsed"]}\n')
        groups = json.loads(run_cli(capsys, "report", "groups", "--home", root, "--as-of", "2027-02-10", "--json"))
        assert [(g["name"], g["kind"], g["members"]) for g in groups] == [("keys", "explicit", ["ada", "bob"]),
                                                                            ("owing", "rule", ["bob"])]
        path.write_text(text + '\n[reporter.groups]\nowing = {statuses = ["paid"]}\n')
        assert main(["report", "groups", "--home", root]) != 0
        assert "statuses must be a non-empty list of member statuses" in capsys.readouterr().err
        path.write_text(text + '\n[reporter.groups]\nowing = {group = "keys"}\n')
        assert main(["report", "groups", "--home", root]) != 0
        assert "[reporter.groups] owing: statuses must be a non-empty list" in capsys.readouterr().err
    finally:
        path.write_text(text)
