"""The CLI's member commands: `dctrl members add|set|list|show|pay|adjust|plan|leave|rejoin|group|
export|forget|import` and `dctrl plans set|list`.

Changes are commands over the bus to MemberData (``cmd.members.*``, as identity ``admin`` by
default), each sent until acknowledged on ``members.ack``; reads go to the database through
MemberData's query functions (no bus needed). Bus and database imports stay inside the
functions so building the parser stays cheap.

`members import FILE.csv` judges the whole file before it sends anything
(:func:`parse_import`): the columns (``handle,name,email,plan`` and optionally ``joined``; an
unknown or missing one is an error naming it), then every row, with the validators MemberData
itself applies, against the plans and handles in the database and the other rows of the file.
Every bad row is reported with its line number and reason; nothing is sent unless every row
passes, or ``--skip-bad`` is given (then the good rows are). A UTF-8 byte-order mark and
Windows line endings are read as if absent.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import threading
from dataclasses import dataclass, field

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home, printable
from scripts.cli.common import home as _home

IMPORT_REQUIRED = ("handle", "name", "email", "plan")
IMPORT_OPTIONAL = ("joined",)


# -- sending commands ----------------------------------------------------------------

def send_commands(args, commands: list[tuple[str, dict]]) -> list[dict]:
    """Send each (topic, body) to MemberData until acked; returns the acks in order. Raises
    DctrlError if a body is invalid or some command got no answer."""
    from actors.runtime import Runtime
    from proto.errors import SchemaError
    from proto.topics import REGISTRY
    from scripts.cli.tools import CommandsUntilAcked

    for topic, body in commands:  # the same check member_data makes on arrival, with a clear message here
        try:
            REGISTRY.schema_for(topic).check({**body, "id": bytes(16), "expires": 0})
        except SchemaError as exc:
            raise DctrlError(f"invalid {exc}") from None
    actor = CommandsUntilAcked(commands, "members.ack", timeout=args.timeout)
    Runtime(actor, _home(args).bus_settings(args.as_name)).run(
        handle_signals=threading.current_thread() is threading.main_thread())
    acks = [actor.acks.get(body["id"]) for _, body in actor.commands]
    missing = sum(a is None for a in acks)
    if missing:
        raise DctrlError(f"no answer from member_data to {missing} of {len(acks)} command(s) within "
                         f"{args.timeout:g} s (is it running?)")
    return acks


def send_command(args, topic: str, body: dict) -> dict:
    """One command until acked; raises DctrlError with MemberData's reason if refused."""
    (ack,) = send_commands(args, [(topic, body)])
    if ack["status"] != "done":
        raise DctrlError(f"refused: {ack['reason']}")
    return ack


def sealer(args):
    """A function sealing (name, email) to member_data's current Curve key, from the registry."""
    from actors.member_data.models import seal_personal
    from keys.registry import Registry

    try:
        public = Registry.load(_home(args).registry_path).current("member_data").curve
    except (DctrlError, KeyError) as exc:
        raise DctrlError(f"no key for member_data in the registry ({exc}): `dctrl keys add member_data --role "
                         "actor` and its [identity.member_data] in policy.toml") from None
    return lambda name, email: seal_personal(public, name=name, email=email)


def _check(fn, *a, **kw):
    """A validator's verdict before anything is sent (member_data judges again)."""
    from actors.member_data.models import MemberInputError

    try:
        return fn(*a, **kw)
    except MemberInputError as exc:
        raise DctrlError(str(exc)) from None


# -- reading -----------------------------------------------------------------------

def _database(args):
    from actors.db import connect
    from actors.member_data.models import TABLES

    database = connect(_home(args).database_url)
    missing = [m._meta.table_name for m in TABLES if not database.table_exists(m._meta.table_name)]
    if missing:  # the tables are member_data's to create
        database.close()
        raise DctrlError("no member data yet: member_data has not run on this database "
                         f"(missing {', '.join(missing)}); start it with `dctrl up` or `dctrl run member_data`")
    return database


def _read(args, fn, *a, **kw):
    database = _database(args)
    try:
        return fn(database, *a, **kw)
    finally:
        database.close()


# -- import ------------------------------------------------------------------------

@dataclass
class ImportCheck:
    """What :func:`parse_import` found: the rows to add (bodies of ``cmd.members.add`` with
    their line) and the bad rows (line, reason), in file order."""

    rows: list[tuple[int, dict]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)


def parse_import(data: bytes, *, plans: set[str], existing: set[str]) -> ImportCheck:
    """Judge a CSV file of members (its bytes) before anything is written. The rows' bodies hold
    the name and email in clear; :func:`cmd_import` seals them when it sends.

    Raises DctrlError for a file that cannot be read as a table of members at all (not UTF-8,
    empty, unknown, missing or repeated columns, naming them). Otherwise returns every row
    that passes and every one that does not, with its line number (the header is line 1) and
    the reason: a field MemberData would refuse, an unknown plan, a handle already present or
    on another line of the file (each such line is bad: which one is right is for a person to
    say), the wrong number of fields. Blank lines are skipped."""
    from actors.member_data.models import (MemberInputError, check_date, check_email, check_handle, check_name)

    try:
        text = data.decode("utf-8-sig")  # (a byte-order mark, as spreadsheets write, is not part of the header)
    except UnicodeDecodeError as exc:
        raise DctrlError(f"the file is not UTF-8 (byte {exc.start}): export it as CSV UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))  # the csv module reads \r\n, \n and quoted newlines
    header, header_line = None, 0
    for record in reader:
        if any(cell.strip() for cell in record):
            header, header_line = [cell.strip().lower() for cell in record], reader.line_num
            break
    if header is None:
        raise DctrlError("the file is empty: expected a header line " + ",".join(IMPORT_REQUIRED + IMPORT_OPTIONAL))
    unknown = [c for c in header if c not in IMPORT_REQUIRED + IMPORT_OPTIONAL]
    missing = [c for c in IMPORT_REQUIRED if c not in header]
    repeated = sorted({c for c in header if header.count(c) > 1})
    problems = []
    if unknown:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if repeated:
        problems.append(f"repeated column(s) {', '.join(repeated)}")
    if problems:
        raise DctrlError(f"line {header_line}: {'; '.join(problems)} (columns: {', '.join(IMPORT_REQUIRED)}, "
                         f"and optionally {', '.join(IMPORT_OPTIONAL)})")

    check = ImportCheck()
    lines_of: dict[str, list[int]] = {}
    judged: list[tuple[int, dict | None, str | None]] = []
    start = reader.line_num + 1
    for record in reader:
        line, start = start, reader.line_num + 1  # the line the record starts on
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            judged.append((line, None, f"{len(record)} fields, expected {len(header)}"))
            continue
        row = dict(zip(header, record))
        try:
            handle = check_handle(row["handle"].strip())
            body = {"handle": handle, "name": check_name(row["name"]), "email": check_email(row["email"]),
                    "plan": row["plan"].strip(), "joined": None}
            if row.get("joined", "").strip():
                body["joined"] = check_date(row["joined"].strip(), "joined")
            if body["plan"] not in plans:
                raise MemberInputError(f"unknown plan {body['plan'][:32]!r}"
                                       + (f" (plans: {', '.join(sorted(plans))})" if plans else " (no plans yet)"))
            if handle in existing:
                raise MemberInputError(f"member {handle} already exists")
        except MemberInputError as exc:
            judged.append((line, None, str(exc)))
            continue
        lines_of.setdefault(handle, []).append(line)
        judged.append((line, body, None))
    for line, body, reason in judged:
        if body is not None and len(lines_of[body["handle"]]) > 1:
            others = [n for n in lines_of[body["handle"]] if n != line]
            reason = f"handle {body['handle']} is also on line {', '.join(map(str, others))}"
        if reason is None:
            check.rows.append((line, body))
        else:
            check.bad.append((line, reason))
    return check


def cmd_import(args):
    from actors.member_data.queries import handles, plans

    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DctrlError(f"cannot read {args.file}: {exc.strerror}") from None
    database = _database(args)
    try:
        known, existing = {p["name"] for p in plans(database)}, handles(database)
    finally:
        database.close()
    result = parse_import(data, plans=known, existing=existing)
    for line, reason in result.bad:
        print(f"{args.file}:{line}: {printable(reason)}", file=sys.stderr)
    summary = f"{len(result.rows)} row(s) valid, {len(result.bad)} bad"
    if result.bad and not args.skip_bad:
        raise DctrlError(f"{summary}: nothing imported (fix them, or --skip-bad to import the valid rows)")
    if args.dry_run:
        print(f"{summary}: would import {len(result.rows)} member(s) (dry run: nothing sent)")
        return 1 if result.bad else 0
    if not result.rows:
        print(f"{summary}: nothing to import")
        return 1 if result.bad else 0
    seal = sealer(args)
    acks = send_commands(args, [("cmd.members.add", {"handle": b["handle"], "personal": seal(b["name"], b["email"]),
                                                     "plan": b["plan"], "joined": b["joined"]})
                                for _, b in result.rows])
    refused = [(line, ack["reason"]) for (line, _), ack in zip(result.rows, acks) if ack["status"] != "done"]
    for line, reason in refused:
        print(f"{args.file}:{line}: refused by member_data: {printable(reason)}", file=sys.stderr)
    print(f"imported {len(acks) - len(refused)} member(s)"
          + (f"; {len(result.bad)} bad row(s) skipped" if result.bad else "")
          + (f"; {len(refused)} refused" if refused else ""))
    return 1 if refused or result.bad else 0


# -- the commands --------------------------------------------------------------------

def cmd_members(args):
    from actors.member_data.models import check_date, check_email, check_name, check_note, parse_cents

    action = args.members_cmd
    if action == "import":
        return cmd_import(args)
    if action in ("list", "show", "export"):
        return _show(args)
    if action == "add":
        _check(check_name, args.name)
        _check(check_email, args.email)
        if args.joined:
            _check(check_date, args.joined, "--joined")
        send_command(args, "cmd.members.add", {"handle": args.handle, "personal": sealer(args)(args.name, args.email),
                                               "plan": args.plan, "joined": args.joined})
        print(f"member {args.handle} added, plan {args.plan}" + (f" from {args.joined}" if args.joined else ""))
    elif action == "set":
        from actors.member_data.models import check_opt_out

        if args.name is None and args.email is None and args.opt_out is None and args.opt_in is None:
            raise DctrlError("nothing to change: give --name, --email, --opt-out or --opt-in")
        if args.name is not None:
            _check(check_name, args.name)
        if args.email is not None:
            _check(check_email, args.email)
        opt_out = list(_check(check_opt_out, args.opt_out, "--opt-out")) if args.opt_out is not None else None
        opt_in = list(_check(check_opt_out, args.opt_in, "--opt-in")) if args.opt_in is not None else None
        if opt_out and opt_in and set(opt_out) & set(opt_in):
            raise DctrlError(f"{', '.join(sorted(set(opt_out) & set(opt_in)))}: both --opt-out and --opt-in")
        send_command(args, "cmd.members.set", {"handle": args.handle, "personal": sealer(args)(args.name, args.email),
                                               "opt_out": opt_out, "opt_in": opt_in})
        said = [k + " changed" for k in ("name", "email") if getattr(args, k)]
        said += [f"opted out of {' and '.join(opt_out)} mail"] if opt_out else []
        said += [f"opted back in to {' and '.join(opt_in)} mail"] if opt_in else []
        print(f"member {args.handle}: " + ", ".join(said))
    elif action == "pay":
        cents = _check(parse_cents, args.cad, field="--cad")
        _check(check_note, args.note)
        if args.on:
            _check(check_date, args.on, "--on")
        send_command(args, "cmd.members.pay", {"handle": args.handle, "cad": args.cad, "method": args.method,
                                               "note": args.note, "on": args.on, "txid_vout": None})
        print(f"member {args.handle}: payment of {cents // 100}.{cents % 100:02d} CAD ({args.method}) recorded")
    elif action == "adjust":
        _check(parse_cents, args.cad, signed=True, field="--cad")
        _check(check_note, args.note)
        send_command(args, "cmd.members.adjust", {"handle": args.handle, "cad": args.cad, "note": args.note,
                                                  "on": args.on, "reverses": args.reverses})
        print(f"member {args.handle}: adjustment of {args.cad} CAD recorded")
    elif action == "plan":
        _check(check_date, getattr(args, "from"), "--from")
        send_command(args, "cmd.members.plan", {"handle": args.handle, "plan": args.plan,
                                                "from": getattr(args, "from")})
        print(f"member {args.handle}: plan {args.plan} from {getattr(args, 'from')}")
    elif action in ("leave", "rejoin"):
        if args.on:
            _check(check_date, args.on, "--on")
        send_command(args, f"cmd.members.{action}", {"handle": args.handle, "on": args.on})
        print(f"member {args.handle}: {'left' if action == 'leave' else 'rejoined'}"
              + (f" on {args.on}" if args.on else ""))
    elif action == "group":
        send_command(args, "cmd.members.group", {"handle": args.handle, "group": args.group,
                                                 "action": args.group_action})
        print(f"member {args.handle}: {'added to' if args.group_action == 'add' else 'removed from'} "
              f"group {args.group}")
    elif action == "forget":
        send_command(args, "cmd.members.forget", {"handle": args.handle})
        print(f"member {args.handle} forgotten: name and email erased; payments and facts kept under the handle")
    return 0


def _dues_uri_amount(args, found) -> str | None:
    """The dues address's BIP21 URI with one period's dues of the member's plan at the last
    price member_data accepted, if that arrived within [members] price_max_age s; else None."""
    import time

    from actors.member_data.queries import dues_uri, last_price, plan

    price = _read(args, last_price)
    terms = _read(args, plan, found["plan"]) if found["plan"] else None
    max_age = _home(args).config["members"]["price_max_age"]
    if price is None or terms is None or not 0 <= time.time() - price["received"] <= max_age:
        return None
    return dues_uri(found["dues_address"], terms["cents"], price["cad_per_btc"])


def _show(args):
    from actors.member_data.models import format_cents
    from actors.member_data.queries import member, members

    action = args.members_cmd
    if action == "list":
        rows = _with_status(args, _read(args, members))
        if args.status:
            rows = [r for r in rows if r["status"] == args.status]
        if args.json:
            print(json.dumps(rows, sort_keys=True))
        elif args.csv:
            out = csv.writer(sys.stdout, lineterminator="\n")
            out.writerow(["handle", "plan", "joined", "left", "groups", "forgotten", "status"])
            for r in rows:
                out.writerow([r["handle"], r["plan"] or "", r["joined"], r["left"] or "", " ".join(r["groups"]),
                              "yes" if r["forgotten"] else "", r["status"] or ""])
        elif not rows:
            print("no members (add one with: dctrl members add HANDLE --name N --email E --plan P)")
        else:
            print(f"{'HANDLE':<20} {'STATUS':<8} {'PLAN':<16} {'JOINED':<10} {'LEFT':<10} GROUPS")
            for r in rows:
                print(f"{r['handle']:<20} {r['status'] or '-':<8} {r['plan'] or '-':<16} {r['joined']:<10} "
                      f"{r['left'] or '-':<10} "
                      f"{' '.join(r['groups']) or '-'}" + (" (forgotten)" if r["forgotten"] else ""))
        return 0
    found = _read(args, member, args.handle)
    if found is None:
        raise DctrlError(f"unknown member {args.handle}")
    if action == "show" and found["dues_address"]:
        found["dues_uri_amount"] = _dues_uri_amount(args, found)
    if action == "show":
        found["dues"] = _member_status(args, found["handle"])
    if action == "export" or args.json:
        print(json.dumps(found, sort_keys=True, indent=2 if action == "export" else None))
        return 0
    print(f"member {found['handle']}" + (" (forgotten: name and email erased)" if found["forgotten"] else ""))
    for key in ("name", "email", "joined", "plan", "left"):
        print(f"  {key + ':':<8} {printable(found[key] if found[key] is not None else '-')}")
    print(f"  {'groups:':<8} {' '.join(found['groups']) or '-'}")
    print(f"  {'mail:':<8} " + (f"opted out of {' and '.join(found['mail_opt_out'])}"
                                if found["mail_opt_out"] else "all (no opt-out)"))
    if found["dues_address"]:
        print(f"  {'dues:':<8} {found['dues_address']}  ({found['dues_uri_amount'] or found['dues_uri']})")
    else:
        print(f"  {'dues:':<8} no dues address yet (member_data hands one out once the chain notifier has "
              "checked which addresses were used; is [members] receive set?)")
    dues = found["dues"]
    print(f"  {'status:':<8} {dues.get('status') or '-'} (paid through {dues.get('paid_through') or '-'}, balance "
          f"{format_cents(dues['balance_cents']) if dues.get('balance_cents') is not None else '-'} CAD, today UTC)")
    print("facts:")
    for f in found["facts"]:
        what = f["plan"] or f["group"] or f["detail"] or ""
        print(f"  {f['on']}  {f['kind']:<13} {printable(what)}")
    print("payments:" + ("" if found["payments"] else " none"))
    for p in found["payments"]:
        print(f"  #{p['id']:<5} {p['on']}  {p['cad']:>10} CAD  {p['method']:<9} {printable(p['note'] or '')}"
              + (f" {p['txid_vout']}" if p["txid_vout"] else ""))
    waiting = [c for c in found["chain_payments"] if c["payment"] is None]
    if waiting:
        print("bitcoin payments not counted yet:")
    for c in waiting:
        print(f"  {c['txid_vout']}  {c['sats']} sats  {c['state']}, {c['confirmations']} confirmation(s)"
              + (f", at {c['cad_per_btc']} CAD/BTC" if c["cad_per_btc"] else ", waiting for a fresh price"))
    if found["adjustments"]:
        print("adjustments:")
    for a in found["adjustments"]:
        print(f"  #{a['id']:<5} {a['on']}  {a['cad']:>10} CAD  {printable(a['note'])}"
              + (f" (reverses payment #{a['reverses']})" if a["reverses"] else ""))
    return 0


def _with_status(args, rows: list[dict]) -> list[dict]:
    """``rows`` (each with a handle) with the Reporter's status, paid-through and balance today
    (UTC), computed here from the database (actors/reporter/reports.py: one pass for all)."""
    import datetime

    from actors.reporter.reports import member_rows

    today = datetime.datetime.now(datetime.timezone.utc).date()
    states = {r["handle"]: r for r in _read(args, member_rows, today)}
    return [{**r, **{k: states.get(r["handle"], {}).get(k) for k in ("status", "paid_through", "balance_cents")}}
            for r in rows]


def _member_status(args, handle: str) -> dict:
    """One member's status, paid-through and balance today (UTC), by the Reporter's rules."""
    import datetime

    from actors.reporter.reports import member_report

    today = datetime.datetime.now(datetime.timezone.utc).date()
    found = _read(args, member_report, handle, today) or {}
    return {k: found.get(k) for k in ("status", "paid_through", "balance_cents", "next_charge", "error") if k in found}


def cmd_plans(args):
    if args.plans_cmd == "set":
        from actors.member_data.models import check_term_days, parse_cents

        _check(parse_cents, args.cad, field="--cad")
        _check(check_term_days, args.term_days, args.period)
        send_command(args, "cmd.members.plan_set", {"name": args.name, "cad": args.cad, "period": args.period,
                                                    "grace_days": args.grace_days,
                                                    "confirmations": args.confirmations,
                                                    "term_days": args.term_days})
        print(f"plan {args.name}: {args.cad} CAD a {args.period}, due within {args.term_days} days, "
              f"{args.grace_days} days' grace")
        return 0
    from actors.member_data.queries import plans

    rows = _read(args, plans)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    elif not rows:
        print("no plans (make one with: dctrl plans set NAME --cad 40.00 --period month --grace-days 30)")
    else:
        print(f"{'PLAN':<16} {'CAD':>10} {'PERIOD':<8} {'TERM':>4} {'GRACE':>5} {'CONF':>4} VERSION")
        for p in rows:
            print(f"{p['name']:<16} {p['cad']:>10} {p['period']:<8} {p['term_days']:>4} {p['grace_days']:>5} "
                  f"{p['confirmations']:>4} {p['version']}")
    return 0


def _nonneg_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
    return n


def register(sub):
    """`dctrl members` and `dctrl plans`."""

    def bus(*parsers):
        for p in parsers:
            p.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
            p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the answer")
        hide_home(*parsers)

    sp = command(sub, "members", cmd_members, "members and their facts and payments (MemberData)")
    ms = sp.add_subparsers(dest="members_cmd", required=True, metavar="ACTION")
    add = ms.add_parser("add", help="add a member on a plan")
    add.add_argument("handle", help="the member's handle: a-z 0-9 _ -, never reused")
    add.add_argument("--name", required=True, help="full name (kept in the database, never on the bus)")
    add.add_argument("--email", required=True, help="email address (kept in the database, never on the bus)")
    add.add_argument("--plan", required=True, help="the plan (dctrl plans list)")
    add.add_argument("--joined", help="YYYY-MM-DD joined (default today, UTC)")
    mset = ms.add_parser("set", help="correct a member's name or email; opt them out of (or back in to) "
                                     "reminder and statement mail")
    mset.add_argument("handle", help="the member")
    mset.add_argument("--name", help="new full name")
    mset.add_argument("--email", help="new email address")
    mset.add_argument("--opt-out", metavar="KINDS", help="no more of these mails: reminder,statement (or one of "
                                                          "them); receipts and status mails are always sent")
    mset.add_argument("--opt-in", metavar="KINDS", help="these mails again: reminder,statement (or one of them)")
    lst = ms.add_parser("list", help="every member: handle, status, plan, joined, left, groups")
    lst.add_argument("--status", choices=("prepaid", "current", "due", "overdue", "lapsed", "left"),
                     help="only the members with this status today (the Reporter's rules)")
    fmt = lst.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help=JSON_HELP)
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line instead of the table")
    show = ms.add_parser("show", help="one member: details, facts, payments, adjustments")
    show.add_argument("handle", help="the member")
    show.add_argument("--json", action="store_true", help=JSON_HELP)
    pay = ms.add_parser("pay", help="record a cash or e-transfer payment")
    pay.add_argument("handle", help="the member")
    pay.add_argument("--cad", required=True, help="amount in CAD, e.g. 40.00 (at most 2 decimals)")
    pay.add_argument("--method", required=True, choices=("cash", "etransfer"), help="how it was paid")
    pay.add_argument("--note", required=True, help="what it was (who received it, the reference)")
    pay.add_argument("--on", help="YYYY-MM-DD paid (default today, UTC)")
    adj = ms.add_parser("adjust", help="record a signed correction (a credit, a charge, or a payment's reversal)")
    adj.add_argument("handle", help="the member")
    adj.add_argument("--cad", required=True, help="signed amount in CAD, e.g. -10.00")
    adj.add_argument("--note", required=True, help="why")
    adj.add_argument("--on", help="YYYY-MM-DD it takes effect (default today, UTC)")
    adj.add_argument("--reverses", type=int, help="the payment number (members show) this takes back, "
                                                  "with --cad its amount negated")
    pl = ms.add_parser("plan", help="move a member to a plan from a date")
    pl.add_argument("handle", help="the member")
    pl.add_argument("plan", help="the plan (dctrl plans list)")
    pl.add_argument("--from", required=True, help="YYYY-MM-DD the plan takes effect")
    leave = ms.add_parser("leave", help="record that a member leaves")
    leave.add_argument("handle", help="the member")
    leave.add_argument("--on", help="YYYY-MM-DD (default today, UTC)")
    rejoin = ms.add_parser("rejoin", help="record that a member who left comes back")
    rejoin.add_argument("handle", help="the member")
    rejoin.add_argument("--on", help="YYYY-MM-DD (default today, UTC)")
    grp = ms.add_parser("group", help="add a member to a group or remove them from it")
    grp.add_argument("handle", help="the member")
    grp.add_argument("group_action", choices=("add", "remove"), metavar="add|remove", help="add or remove")
    grp.add_argument("group", help="the group (a-z 0-9 _ -)")
    exp = ms.add_parser("export", help="everything held on one member, as JSON")
    exp.add_argument("handle", help="the member")
    forget = ms.add_parser("forget", help="erase a member's name and email (after leaving); money and facts stay")
    forget.add_argument("handle", help="the member")
    imp = ms.add_parser("import", help="add members from a CSV file (handle,name,email,plan[,joined]); "
                                       "every row checked before any is sent")
    imp.add_argument("file", help="the CSV file (UTF-8, a header line)")
    imp.add_argument("--dry-run", action="store_true", help="check the file and report; send nothing")
    imp.add_argument("--skip-bad", action="store_true", help="import the valid rows even if some are bad")
    bus(add, mset, pay, adj, pl, leave, rejoin, grp, forget, imp)
    hide_home(lst, show, exp)

    sp = command(sub, "plans", cmd_plans, "membership plans (versioned): dues, period, grace")
    ps = sp.add_subparsers(dest="plans_cmd", required=True, metavar="ACTION")
    pset = ps.add_parser("set", help="make a plan or a new version of its terms")
    pset.add_argument("name", help="the plan's name (a-z 0-9 _ -)")
    pset.add_argument("--cad", required=True, help="dues per period in CAD, e.g. 40.00")
    pset.add_argument("--period", required=True, choices=("month", "quarter", "year"), help="the period")
    pset.add_argument("--grace-days", required=True, type=_nonneg_int, help="days past due before overdue")
    pset.add_argument("--term-days", type=_nonneg_int, default=7,
                      help="days from a period's start its dues are due, then overdue (default 7; at most 28 "
                           "for a month, 89 for a quarter, 90 for a year)")
    pset.add_argument("--confirmations", type=int, default=1, help="confirmations for dues paid in bitcoin "
                                                                   "(default 1)")
    plst = ps.add_parser("list", help="every plan's current terms")
    plst.add_argument("--json", action="store_true", help=JSON_HELP)
    bus(pset)
    hide_home(plst)
