"""`dctrl chain watch|status`: the ChainNotifier's commands and health, and the invoice addresses' gap."""

from __future__ import annotations

import argparse
import json

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command
from scripts.cli.common import home as _home


def cmd_chain(args):
    from actors.runtime import Runtime
    from scripts.cli.tools import CommandOnce, StatusCollector

    home = _home(args)
    if args.chain_cmd == "watch":
        actor = CommandOnce("cmd.chain.watch", {"address": args.address, "label": args.label},
                            "chain.watch.ack", timeout=args.timeout)
        Runtime(actor, home.bus_settings(args.as_name)).run(handle_signals=True)
        if actor.ack is None:
            raise DctrlError(f"no answer from chain_notifier within {args.timeout} s (is it running?)")
        if actor.ack["status"] != "watching":
            raise DctrlError(f"refused: {actor.ack['reason']}")
        print(f"watching {args.address}" + (f" ({args.label})" if args.label else ""))
        return
    collector = StatusCollector(args.wait or home.config["runtime"]["heartbeat_interval"] + 1.5)
    Runtime(collector, home.bus_settings(args.as_name)).run(handle_signals=True)
    beat = collector.latest.get("chain_notifier")
    if beat is None:
        raise DctrlError("no heartbeat from chain_notifier (is it running?)")
    gap = _address_gap(home)
    if args.json:
        print(json.dumps({**beat, "invoice_addresses": gap}, sort_keys=True, default=str))
    else:
        print(f"chain_notifier {beat['status']}: {beat['detail']}")
        if gap is not None:
            used = "none used yet" if gap["last_used"] is None else f"last used /0/{gap['last_used']}"
            print(f"invoice addresses: {gap['issued']} issued, next /0/{gap['next']}, {used}, "
                  f"{gap['gap']} unused in a row (a restoring wallet scans {gap['gap_limit']})")
            if gap["gap"] > gap["gap_limit"]:
                print(f"  restore with a gap limit of at least {gap['gap']} to find every payment")
    return 0 if beat["status"] == "ok" else 1


def _address_gap(home) -> dict | None:
    """The invoice address book's gap (issue 9.3), or None where there is no database to read."""
    from actors.business_mgr.models import DEFAULTS
    from actors.business_mgr.queries import address_gap
    from actors.db import connect

    try:
        database = connect(home.database_url)
    except DctrlError:
        return None
    try:
        gap_limit = int(home.config.get("business", {}).get("gap_limit", DEFAULTS["gap_limit"]))
        return address_gap(database, "invoices", gap_limit)
    finally:
        database.close()


def register(sub):
    sp = command(sub, "chain", cmd_chain, "the ChainNotifier: watch addresses, see backend, tip and lag")
    cs = sp.add_subparsers(dest="chain_cmd", required=True, metavar="ACTION")
    c = cs.add_parser("watch", help="watch an address for payments (a command acknowledged by chain_notifier)")
    c.add_argument("address", help="a bitcoin address of the configured network")
    c.add_argument("--label", help="a note carried in every event for this address")
    c.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack (default 15)")
    c = cs.add_parser("status", help="backend, tip, lag behind the node, watched addresses")
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--wait", type=float, help="seconds to listen for its heartbeat")
    for c in cs.choices.values():
        c.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        c.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
