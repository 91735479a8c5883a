"""`dctrl report members|income|activity|groups|member HANDLE [--as-of DATE] [--json|--csv]`: the Reporter's
reports, computed here from the database through the same reader functions the Reporter uses
(actors/reporter/reports.py): no bus, no running Reporter needed. Dates are UTC days (default
today); money in CAD (the JSON keeps integer cents and sats). ``activity [--months N]``: active
members at each month's end, joins, leaves, retention; ``groups``: the explicit groups and the
rule groups of ``[reporter.groups]`` (default keyholders), members by handle only.

`dctrl report run [--as-of DATE]` is the one verb that needs the Reporter: it sends
``cmd.report.run`` (as admin, retried until acknowledged, expiring with ``--timeout``) and prints
the run's counts from ``report.ack``; no answer within ``--timeout``, or a refusal, is an error."""

from __future__ import annotations

import csv
import datetime
import json
import sys

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home


def _as_of(args) -> datetime.date:
    if not args.as_of:
        return datetime.datetime.now(datetime.timezone.utc).date()
    try:
        return datetime.date.fromisoformat(args.as_of)
    except ValueError:
        raise DctrlError(f"--as-of {args.as_of!r} is not a date like 2026-01-31") from None


def _cad(cents) -> str:
    if cents is None:
        return ""
    from actors.member_data.models import format_cents

    return format_cents(cents)


def _run(args):
    """`report run`: ask the Reporter to judge now and store the snapshots of ``--as-of``."""
    from scripts.cli.common import home as _home
    from scripts.cli.tools import send_command

    body = {"as_of": _as_of(args).isoformat() if args.as_of else None}
    ack = send_command(_home(args), args.as_name, "cmd.report.run", body, "report.ack", timeout=args.timeout,
                       who="the reporter")
    if ack["status"] != "done":
        raise DctrlError(f"the reporter refused: {ack['reason']}")
    result = ack["result"] or {}
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 1 if "waiting" in result else 0
    if "waiting" in result:
        raise DctrlError(f"the reporter did not run: {result['waiting']}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.get("counts", {}).items())) or "none"
    print(f"report run: judged through {result.get('judged_through')}, {result.get('published', 0)} "
          f"transition(s) published, {result.get('held', 0)} member(s) held")
    print(f"  snapshot of {result.get('as_of')}: {result.get('members', 0)} member(s): {counts}")
    return 0


def cmd_report(args):
    if args.report_cmd == "run":
        return _run(args)
    from scripts.cli.members import _read
    from actors.reporter.reports import income_rows, member_report, member_rows

    if args.report_cmd == "activity":
        return _activity(args)
    if args.report_cmd == "groups":
        return _groups(args)

    as_of = _as_of(args)
    out = csv.writer(sys.stdout, lineterminator="\n") if args.csv else None
    if args.report_cmd == "members":
        rows = _read(args, member_rows, as_of)
        if args.json:
            print(json.dumps(rows, sort_keys=True))
        elif out:
            out.writerow(["handle", "status", "paid_through", "balance_cad", "next_charge", "next_charge_cad"])
            for r in rows:
                out.writerow([r["handle"], r["status"] or "", r["paid_through"] or "", _cad(r["balance_cents"]),
                              r["next_charge"] or "", _cad(r["next_charge_cents"])])
        else:
            print(f"members on {as_of}")
            print(f"{'HANDLE':<20} {'STATUS':<8} {'PAID THROUGH':<12} {'BALANCE':>10}")
            for r in rows:
                print(f"{r['handle']:<20} {r['status'] or '-':<8} {r['paid_through'] or '-':<12} "
                      f"{_cad(r['balance_cents']):>10}")
        return 0
    if args.report_cmd == "member":
        found = _read(args, member_report, args.handle, as_of)
        if found is None:
            raise DctrlError(f"unknown member {args.handle}")
        if args.json:
            print(json.dumps(found, sort_keys=True))
        elif out:
            keys = ["handle", "as_of", "status", "paid_through", "balance_cents", "next_charge", "next_charge_cents"]
            out.writerow(keys)
            out.writerow(["" if found.get(k) is None else found.get(k) for k in keys])
        else:
            print(f"member {found['handle']} on {found['as_of']}: {found['status'] or 'not a member yet'}")
            if "error" in found:
                print(f"  error: {found['error']}")
                return 1
            print(f"  paid through {found['paid_through']}, balance {_cad(found['balance_cents'])} CAD")
            if found["next_charge"]:
                print(f"  next charge {found['next_charge']}: {_cad(found['next_charge_cents'])} CAD")
        return 0
    rows = _read(args, income_rows, as_of)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    elif out:
        out.writerow(["month", "kind", "what", "sats", "cad"])
        for m in rows:
            for method, a in m["dues"].items():
                out.writerow([m["month"], "dues", method, a["sats"], _cad(a["cents"])])
            for s in m["sales"]:
                out.writerow([m["month"], "sales", f"{s['machine']}/{s['product']}", s["sats"], _cad(s["cents"])])
    else:
        print(f"income up to {as_of}")
        print(f"{'MONTH':<8} {'DUES CAD':>10} {'SALES CAD':>10} {'TOTAL SATS':>12} {'TOTAL CAD':>10}")
        for m in rows:
            dues = sum(a["cents"] for a in m["dues"].values())
            sales = sum(s["cents"] for s in m["sales"])
            print(f"{m['month']:<8} {_cad(dues):>10} {_cad(sales):>10} {m['total_sats']:>12} "
                  f"{_cad(m['total_cents']):>10}")
    return 0


def _activity(args):
    from scripts.cli.members import _read
    from actors.reporter.reports import activity_json, activity_rows

    if not 1 <= args.months <= 120:
        raise DctrlError(f"--months {args.months}: from 1 to 120")
    as_of = _as_of(args)
    rows = activity_json(_read(args, activity_rows, as_of, args.months))
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    elif args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["month", "end", "active", "joins", "leaves", "retention_pct"])
        for r in rows:
            out.writerow([r["month"], r["end"], r["active"], r["joins"], r["leaves"], r["retention"] or ""])
    else:
        print(f"activity up to {as_of} (active at each month's end; retention from the previous month's end)")
        print(f"{'MONTH':<8} {'END':<10} {'ACTIVE':>7} {'JOINS':>6} {'LEAVES':>6} {'RETENTION':>9}")
        for r in rows:
            kept = f"{r['retention']}%" if r["retention"] is not None else "-"
            print(f"{r['month']:<8} {r['end']:<10} {r['active']:>7} {r['joins']:>6} {r['leaves']:>6} {kept:>9}")
    return 0


def _groups(args):
    from scripts.cli.common import home as _home
    from scripts.cli.members import _read
    from actors.reporter.reports import group_rows, group_rules

    rules = group_rules(_home(args).config.get("reporter", {}).get("groups"))
    as_of = _as_of(args)
    rows = _read(args, group_rows, as_of, rules)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    elif args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["group", "kind", "handle"])
        for g in rows:
            for h in g["members"]:
                out.writerow([g["name"], g["kind"], h])
    else:
        print(f"groups on {as_of}")
        for g in rows:
            how = ("explicit" if g["kind"] == "explicit" else
                   f"rule: {', '.join(g['statuses'])}" + (f" in group {g['group']}" if g["group"] else ""))
            print(f"{g['name']} ({how}): {g['count']} member(s)")
            if g["members"]:
                print("  " + " ".join(g["members"]))
    return 0


def register(sub):
    """`dctrl report`."""
    sp = command(sub, "report", cmd_report, "reports on members and income (computed from the database)")
    rs = sp.add_subparsers(dest="report_cmd", required=True, metavar="REPORT")
    members = rs.add_parser("members", help="every member: status, paid-through, balance")
    income = rs.add_parser("income", help="income by month: dues by method, vending sales by machine and product")
    member = rs.add_parser("member", help="one member: status, paid-through, balance, next charge")
    member.add_argument("handle", help="the member")
    activity = rs.add_parser(
        "activity", help="per month: members active at its end, joins, leaves, retention",
        description="Per month (the last --months up to --as-of's): the members active at its end "
                    "(prepaid, current, due or overdue; on --as-of for the running month), joins "
                    "(rejoins included), leaves, and retention: of the members active at the "
                    "previous month's end, the share still active (a percentage, 1 decimal; "
                    "empty when nobody was active).")
    activity.add_argument("--months", type=int, default=12, help="how many months (default 12, at most 120)")
    groups = rs.add_parser(
        "groups", help="explicit groups and rule groups (e.g. keyholders), by handle",
        description="The explicit groups (cmd.members.group) and the rule groups of "
                    "[reporter.groups] in config.toml (default keyholders = {statuses = "
                    "[\"prepaid\", \"current\", \"due\"], group = \"keys\"}) on --as-of, each "
                    "with its members' handles (never names or emails).")
    for p in (members, income, member, activity, groups):
        p.add_argument("--as-of", help="YYYY-MM-DD (default today, UTC)")
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help=JSON_HELP)
        fmt.add_argument("--csv", action="store_true", help="CSV with a header line instead of the table")
    run = rs.add_parser("run", help="ask the running Reporter to judge transitions now and store the "
                                    "snapshots (cmd.report.run over the bus)")
    run.add_argument("--as-of", help="YYYY-MM-DD: the day of the snapshots (default today, UTC)")
    run.add_argument("--json", action="store_true", help="the run's counts as JSON")
    run.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
    run.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the Reporter's answer")
    hide_home(members, income, member, activity, groups, run)
