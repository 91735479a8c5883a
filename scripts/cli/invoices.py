"""`dctrl invoices list|show|refund`: BusinessMgr's invoices, read from the database (read only);
``refund`` asks PayoutMgr for a refund payout of what an invoice owes back (``cmd.payouts.refund``,
sent until answered on ``payouts.ack``, as scripts/cli/payouts.py sends its commands)."""

from __future__ import annotations

import argparse
import datetime
import json

from proto.errors import DctrlError
from scripts.cli.common import command
from scripts.cli.common import printable as p


def _database(args):
    from actors.business_mgr.models import TABLES
    from actors.db import connect
    from keys.home import Home

    database = connect(Home(args.home).database_url)
    if not database.table_exists(TABLES[0]._meta.table_name):
        database.close()
        raise DctrlError("no invoices yet: business_mgr has not run on this database "
                         "(start it with `dctrl up` or `dctrl run business_mgr`)")
    return database


def _when(ts) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _money(inv) -> str:
    """The money that needs a person's attention, in a few words."""
    notes = []
    for key, what in (("late_sats", "late"), ("credit_sats", "credit"), ("lost_sats", "LOST")):
        if inv[key]:
            notes.append(f"{what} {inv[key]}")
    if inv["refund_sats"]:
        notes.append(f"refund {inv['refund_sats']}")
    return ", ".join(notes)


def owed(database, *, state=None, limit=50) -> list[dict]:
    """The newest invoices on which something is owed back (``refund_sats`` > 0), newest first.

    What is owed is derived by BusinessMgr's ``refund_sats`` (from the state, the amounts and
    the late payments), not stored, so the filter runs here over its rows rather than in SQL.
    """
    from actors.business_mgr.queries import invoices

    rows = [i for i in invoices(database, state=state, limit=None) if i["refund_sats"] > 0]
    return rows[:limit] if limit else rows


def cmd_invoices(args):
    from actors.business_data.models import format_cad
    from actors.business_mgr.queries import invoice, invoices

    if args.invoices_cmd == "refund":
        return _refund(args)
    database = _database(args)
    try:
        if args.invoices_cmd == "show":
            try:
                number = int(args.id)
            except ValueError:
                raise DctrlError(f"{args.id!r} is not an invoice number") from None
            inv = invoice(database, number)
            if inv is None:
                raise DctrlError(f"no invoice {number}")
            if args.json:
                print(json.dumps(inv, sort_keys=True))
                return
            print(f"invoice {inv['invoice']} ({p(inv['mode'])}): {p(inv['state'])}"
                  + (f" - {p(inv['reason'])}" if inv["reason"] else ""))
            print(f"  {p(inv['machine'])}/{inv['slot']} {p(inv['product'])} x{inv['items']} at "
                  f"{format_cad(inv['price_cents'])} CAD")
            print(f"  pay {inv['due_sats'] if inv['due_sats'] is not None else '?'} sats "
                  f"(at {inv['cad_per_btc'] or '?'} CAD/BTC, tolerance {inv['tolerance_sats']}) to {p(inv['address'])}")
            print(f"  {'zero-conf' if inv['zero_conf'] else str(inv['confirmations']) + ' confirmation(s)'}; "
                  f"opened {_when(inv['created'])}, expires {_when(inv['expires'])}, paid {_when(inv['paid_at'])}, "
                  f"closed {_when(inv['closed_at'])}")
            print(f"  received {inv['received_sats']}, late {inv['late_sats']}, credit {inv['credit_sats']}, "
                  f"lost {inv['lost_sats']}, to refund {inv['refund_sats']}; vended {inv['vended']}")
            for pay in inv["payments"]:
                print(f"  payment {p(pay['txid'])}:{pay['vout']} {pay['sats']} sats {p(pay['state'])}"
                      f" ({pay['confirmations']} conf){' late' if pay['late'] else ''}"
                      f"{' counted' if pay['counted'] else ''}")
            for v in inv["vends"]:
                print(f"  vend {p(v['id'])} item {v['item']}: {p(v['state'])} after {v['attempts']} send(s)"
                      + (f" - {p(v['reason'])}" if v["reason"] else ""))
            return
        rows = owed(database, state=args.state, limit=args.limit) if args.owed else \
            invoices(database, state=args.state, limit=args.limit)
        if args.json:
            print(json.dumps(rows, sort_keys=True))
            return
        if not rows:
            print("no invoices" + (" with anything owed back" if args.owed else "")
                  + (f" in state {args.state}" if args.state else ""))
            return
        print(f"{'ID':>6}  {'STATE':<9} {'MACHINE/SLOT':<14} {'PRODUCT':<16} {'SATS':>10} {'OWED':>10}  "
              f"{'OPENED':<19}  ADDRESS")
        for i in rows:
            due = "-" if i["due_sats"] is None else i["due_sats"]
            print(f"{i['invoice']:>6}  {p(i['state']):<9} {p(i['machine']) + '/' + str(i['slot']):<14} "
                  f"{p(i['product'][:16]):<16} {due:>10} {i['refund_sats'] or '-':>10}  {_when(i['created']):<19}  "
                  f"{p(i['address'])}  {_money(i)}".rstrip())
        if args.owed:
            print(f"owed back: {sum(i['refund_sats'] for i in rows)} sats on {len(rows)} invoice(s)"
                  + (f" (the newest {args.limit}; --limit for more)" if len(rows) == args.limit else ""))
    finally:
        database.close()


def _refund(args):
    """cmd.payouts.refund: PayoutMgr records a refund payout of the invoice's refund_sats (once per invoice)."""
    from scripts.cli.payouts import send

    ack = send(args, "refund", {"invoice": args.id, "to": args.to, "rate": args.rate, "reason": args.reason})
    print(f"payout {ack['payout']}: {ack['state']} (refund of invoice {args.id}; other admins approve it with "
          f"`dctrl payouts approve {ack['payout']}`, then the co-signers sign)")
    return 0


def register(sub):
    """`dctrl invoices list|show|refund`."""
    from scripts.cli.payouts import add_command_options

    sp = command(sub, "invoices", cmd_invoices, "sales invoices (BusinessMgr): states, payments, vends, refunds due")
    sub = sp.add_subparsers(dest="invoices_cmd", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="the newest invoices, with what is owed back on each (OWED, sats)")
    lst.add_argument("--state", choices=("open", "seen", "paid", "vending", "vended", "expired", "underpaid",
                                         "overpaid", "failed"), help="only invoices in this state")
    lst.add_argument("--owed", action="store_true",
                     help="only invoices on which something is owed back (refund_sats > 0: late, excess or "
                          "unsold payments), with the total")
    lst.add_argument("--limit", type=int, default=50, help="at most N invoices, newest first (default 50)")
    lst.add_argument("--json", action="store_true", help="one JSON document (refund_sats: owed back)")
    show = sub.add_parser("show", help="one invoice with its payments and vend commands")
    show.add_argument("id", help="the invoice number")
    show.add_argument("--json", action="store_true", help="one JSON document instead of the text")
    refund = sub.add_parser("refund", help="ask for a refund payout from the treasury of what an invoice owes back "
                                           "(late, excess or unsold payments); admins approve it, co-signers sign")
    refund.add_argument("id", type=int, help="the invoice number")
    refund.add_argument("--to", required=True, metavar="ADDRESS", help="the customer's address to refund to")
    refund.add_argument("--rate", choices=("then", "now"), default="then",
                        help="then (default): the sats paid; now: their CAD value at the invoice's rate, "
                             "in sats at the price now")
    refund.add_argument("--reason", help="why (default: the invoice, its state and the rate)")
    add_command_options(refund)
    for parser in (lst, show, refund):
        parser.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
