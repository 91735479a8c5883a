"""The CLI's business commands: `dctrl machines`, `dctrl slots`, `dctrl policy`.

Changes are commands over the bus to BusinessData (as identity ``admin`` by
default), sent until acknowledged; lists read the database through
BusinessData's query functions. :func:`add_commands` registers them on the
CLI's parser (scripts/cli.py). Bus imports stay inside the functions so
building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import threading

from proto.errors import DctrlError


def _home(args):
    from keys.home import Home

    return Home(args.home)


def send_command(args, topic: str, body: dict) -> dict:
    """Send ``topic`` to BusinessData until acked; returns the ack, raises DctrlError if refused or silent."""
    from actors.runtime import Runtime
    from proto.errors import SchemaError
    from proto.topics import REGISTRY
    from scripts.tools import CommandOnce

    try:  # the same check business_data makes on arrival, with a clear message here
        REGISTRY.schema_for(topic).check({**body, "id": bytes(16), "expires": 0})
    except SchemaError as exc:
        raise DctrlError(f"invalid {exc}") from None
    home = _home(args)
    actor = CommandOnce(topic, body, "business.ack", timeout=args.timeout)
    Runtime(actor, home.bus_settings(args.as_name)).run(
        handle_signals=threading.current_thread() is threading.main_thread())
    if actor.ack is None:
        raise DctrlError(f"no answer from business_data within {args.timeout:g} s (is it running?)")
    if actor.ack["status"] != "done":
        raise DctrlError(f"refused: {actor.ack['reason']}")
    return actor.ack


def _database(args):
    from actors.business_data import TABLES
    from actors.db import connect

    database = connect(_home(args).database_url)
    # Reads only: the query functions bind to this connection. Tables are business_data's to
    # create; before it has ever run there is nothing to show.
    missing = [m._meta.table_name for m in TABLES if not database.table_exists(m._meta.table_name)]
    if missing:
        raise DctrlError("no business data yet: business_data has not run on this database "
                         f"(missing {', '.join(missing)}); start it with `dctrl up` or `dctrl run business_data`")  # readable before business_data first ran
    return database


def cmd_machines(args):
    if args.machines_cmd == "add":
        send_command(args, "cmd.business.machine.add", {"name": args.name, "location": args.location})
        print(f"machine {args.name} added" + (f" ({args.location})" if args.location else ""))
        return
    from actors.business_data import machines

    database = _database(args)
    try:
        rows = machines(database)
    finally:
        database.close()
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        print("no machines (add one with: dctrl machines add NAME)")
    for m in rows:
        print(f"{m['name']:<16} {m['location'] or '-'}")


def cmd_slots(args):
    if args.slots_cmd == "set":
        from actors.business_data import MoneyError, parse_cad

        try:
            parse_cad(args.price_cad)  # a clear error before anything is sent (business_data judges again)
        except MoneyError as exc:
            raise DctrlError(f"--price-cad: {exc}") from None
        send_command(args, "cmd.business.slot.set", {
            "machine": args.machine, "slot": args.slot, "product": args.product, "price_cad": args.price_cad,
            "relay": args.relay, "stock": args.stock, "sticker_address": args.sticker_address})
        print(f"slot {args.machine}/{args.slot}: {args.product} at {args.price_cad} CAD"
              + (f", sticker address {args.sticker_address}" if args.sticker_address else ""))
        return
    from actors.business_data import slots

    database = _database(args)
    try:
        rows = slots(database, args.machine)
    finally:
        database.close()
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        print(f"no slots for machine {args.machine}")
        return
    print(f"{'SLOT':>4}  {'PRODUCT':<24} {'CAD':>10} {'STOCK':>6}  {'RELAY':<12} STICKER ADDRESS")
    for s in rows:
        stock = "-" if s["stock"] is None else s["stock"]
        print(f"{s['slot']:>4}  {s['product']:<24} {s['price_cad']:>10} {stock:>6}  {s['relay'] or '-':<12} "
              f"{s['sticker_address'] or '-'}")


def cmd_policy(args):
    if args.policy_cmd == "set":
        from actors.business_data import validate_policy

        try:
            value = validate_policy(args.key, args.value)
        except ValueError as exc:
            raise DctrlError(str(exc)) from None
        send_command(args, "cmd.business.policy.set", {"key": args.key, "value": value})
        print(f"policy {args.key} = {value}")
        return
    from actors.business_data import policy

    database = _database(args)
    try:
        current = policy(database)
    finally:
        database.close()
    if args.json:
        print(json.dumps({k: str(v) for k, v in current.items()}, sort_keys=True))
        return
    for key, value in sorted(current.items()):
        print(f"{key:<28} {value}")


def add_commands(cmd):
    """Register machines, slots and policy on the CLI's parser; ``cmd(name, fn, help)`` makes a subparser."""

    def common(parsers, *, bus):
        for p in parsers:
            p.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            if bus:
                p.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
                p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack")

    sp = cmd("machines", cmd_machines, "vending machines (BusinessData)")
    ms = sp.add_subparsers(dest="machines_cmd", required=True, metavar="ACTION")
    add = ms.add_parser("add", help="add a machine (a command acknowledged by business_data)")
    add.add_argument("name", help="the machine's name, also its identity on the bus (vm1)")
    add.add_argument("--location", help="where it stands")
    lst = ms.add_parser("list", help="the machines")
    lst.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    common([add], bus=True)
    common([lst], bus=False)

    sp = cmd("slots", cmd_slots, "a machine's slots: product, price (CAD), relay, stock")
    ss = sp.add_subparsers(dest="slots_cmd", required=True, metavar="ACTION")
    st = ss.add_parser("set", help="create or change a slot (a command acknowledged by business_data)")
    st.add_argument("machine", help="the machine")
    st.add_argument("slot", type=int, help="slot number 0..255")
    st.add_argument("--product", required=True, help="what it sells")
    st.add_argument("--price-cad", required=True, help='price in CAD, e.g. 3.50 (at most 2 decimals)')
    st.add_argument("--stock", type=int, help="items in the slot (default: keep; new slot: not counted)")
    st.add_argument("--relay", help="gpio:PIN or i2c:0xADDR:BIT (default: keep)")
    st.add_argument("--sticker-address", help="the slot's fixed payment address (legacy sticker mode: any payment "
                                              "to it buys items at the current price); \"\" clears it "
                                              "(default: keep)")
    lst = ss.add_parser("list", help="a machine's slots")
    lst.add_argument("machine", help="the machine")
    lst.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    common([st], bus=True)
    common([lst], bus=False)

    sp = cmd("policy", cmd_policy, "business policies (versioned): zero-conf limit, invoice lifetime, ...")
    ps = sp.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    show = ps.add_parser("show", help="the current value of every policy")
    show.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    pset = ps.add_parser("set", help="a new version of one policy (a command acknowledged by business_data)")
    pset.add_argument("key", help="a policy key (dctrl policy show lists them)")
    pset.add_argument("value", help="its new value, checked per key")
    common([pset], bus=True)
    common([show], bus=False)
