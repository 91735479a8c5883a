"""The CLI's business commands: `dctrl machines add|set|rm|list`, `dctrl slots set|rm|list`,
`dctrl policy show|set`.

Changes are commands over the bus to BusinessData (as identity ``admin`` by
default), sent until acknowledged; lists read the database through
BusinessData's query functions. :func:`register` adds them to the CLI's
parser (scripts/cli/__init__.py). Bus imports stay inside the functions so
building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from proto.errors import DctrlError
from scripts.cli.common import command, printable  # noqa: F401  (printable: re-exported)
from scripts.cli.common import home as _home


def send_command(args, topic: str, body: dict) -> dict:
    """Send ``topic`` to BusinessData until acked; returns the ack, raises DctrlError if refused or silent."""
    from actors.runtime import Runtime
    from proto.errors import SchemaError
    from proto.topics import REGISTRY
    from scripts.cli.tools import CommandOnce

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
    from actors.business_data.models import TABLES
    from actors.db import connect

    database = connect(_home(args).database_url)
    # Reads only: the query functions bind to this connection. Tables are business_data's to
    # create; before it has ever run there is nothing to show.
    missing = [m._meta.table_name for m in TABLES if not database.table_exists(m._meta.table_name)]
    if missing:
        raise DctrlError("no business data yet: business_data has not run on this database "
                         f"(missing {', '.join(missing)}); start it with `dctrl up` or `dctrl run business_data`")  # readable before business_data first ran
    return database


def _key_warning(home, name) -> str | None:
    """Why a machine called ``name`` cannot join the bus yet, if it cannot (its key)."""
    from keys.registry import Registry

    try:
        registry = Registry.load(home.registry_path)
    except DctrlError as exc:
        return f"cannot read the key registry: {exc}"
    if name not in registry.names():
        return (f"no key named {name} in the registry: its agent cannot join the bus until you add one with "
                f"`dctrl keys add {name} --role machine`")
    if registry.role(name) != "machine":
        return (f"{name}'s key has role {registry.role(name)}, not machine: its agent may not publish "
                f"machine.{name}.* (add a machine key under another name, or use that name)")
    return None


def cmd_machines(args):
    if args.machines_cmd == "add":
        send_command(args, "cmd.business.machine.add", {"name": args.name, "location": args.location})
        print(f"machine {args.name} added" + (f" ({args.location})" if args.location else ""))
        warning = _key_warning(_home(args), args.name)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return
    if args.machines_cmd == "set":
        if args.location is None:
            raise DctrlError("nothing to change: give --location (\"\" clears it)")
        send_command(args, "cmd.business.machine.set", {"name": args.name, "location": args.location})
        print(f"machine {args.name}: location {args.location or '(none)'}")
        return
    if args.machines_cmd == "rm":
        send_command(args, "cmd.business.machine.rm", {"name": args.name})
        print(f"machine {args.name} removed, with its slots (its key stays in the registry: "
              f"`dctrl keys revoke {args.name}` cuts its agent off)")
        return
    from actors.business_data.queries import machines

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
        print(f"{printable(m['name']):<16} {printable(m['location'] or '-')}")


CLEAR = "none"  # --stock none / --relay none: set the field to nil (not counted / not wired)


def _stock_arg(text):
    if text == CLEAR:
        return CLEAR
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of items (or \"none\": not counted)") from None
    if n < 0:
        raise argparse.ArgumentTypeError("a stock cannot be negative")
    return n


def cmd_slots(args):
    if args.slots_cmd == "set":
        from actors.business_data.models import MoneyError, parse_cad

        product, price, relay, stock = (getattr(args, k, None) for k in ("product", "price_cad", "relay", "stock"))
        sticker = getattr(args, "sticker_address", None)
        if all(v is None for v in (product, price, relay, stock, sticker)):
            raise DctrlError("nothing to change: give --product, --price-cad, --stock, --relay or --sticker-address "
                             "(a new slot needs --product and --price-cad)")
        if price is not None:
            try:
                parse_cad(price)  # a clear error before anything is sent (business_data judges again)
            except MoneyError as exc:
                raise DctrlError(f"--price-cad: {exc}") from None
        clear = [name for name, value in (("relay", relay), ("stock", stock)) if value == CLEAR]
        send_command(args, "cmd.business.slot.set", {
            "machine": args.machine, "slot": args.slot, "product": product, "price_cad": price,
            "relay": None if relay == CLEAR else relay, "stock": None if stock == CLEAR else stock,
            "sticker_address": sticker, "clear": clear or None})
        changes = [f"{product} at {price} CAD" if product is not None and price is not None else
                   f"product {product}" if product is not None else f"{price} CAD" if price is not None else None,
                   (f"stock {stock}" if stock != CLEAR else "stock not counted") if stock is not None else None,
                   (f"relay {relay}" if relay != CLEAR else "no relay") if relay is not None else None,
                   (f"sticker address {sticker}" if sticker else "no sticker address") if sticker is not None
                   else None]
        print(f"slot {args.machine}/{args.slot}: " + ", ".join(c for c in changes if c))
        return
    if args.slots_cmd == "rm":
        send_command(args, "cmd.business.slot.rm", {"machine": args.machine, "slot": args.slot})
        print(f"slot {args.machine}/{args.slot} removed")
        return
    from actors.business_data.queries import slots

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
        print(f"{s['slot']:>4}  {printable(s['product']):<24} {s['price_cad']:>10} {stock:>6}  "
              f"{printable(s['relay'] or '-'):<12} {printable(s['sticker_address'] or '-')}")


def cmd_policy(args):
    if args.policy_cmd == "set":
        from actors.business_data.models import validate_policy

        try:
            value = validate_policy(args.key, args.value)
        except ValueError as exc:
            raise DctrlError(str(exc)) from None
        send_command(args, "cmd.business.policy.set", {"key": args.key, "value": value})
        print(f"policy {args.key} = {value}")
        return
    from actors.business_data.queries import policy

    database = _database(args)
    try:
        current = policy(database)
    finally:
        database.close()
    if args.json:
        print(json.dumps({k: str(v) for k, v in current.items()}, sort_keys=True))
        return
    for key, value in sorted(current.items()):
        print(f"{printable(key):<28} {printable(value)}")


def register(sub):
    """`dctrl machines`, `dctrl slots` and `dctrl policy`."""

    def common(parsers, *, bus):
        for p in parsers:
            p.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            if bus:
                p.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
                p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack")

    sp = command(sub, "machines", cmd_machines, "vending machines (BusinessData)")
    ms = sp.add_subparsers(dest="machines_cmd", required=True, metavar="ACTION")
    add = ms.add_parser("add", help="add a machine (a command acknowledged by business_data); warns if it has "
                                    "no machine key yet")
    add.add_argument("name", help="the machine's name, also its identity on the bus (vm1)")
    add.add_argument("--location", help="where it stands")
    mset = ms.add_parser("set", help="change a machine's location")
    mset.add_argument("name", help="the machine")
    mset.add_argument("--location", help='where it stands ("" clears it)')
    mrm = ms.add_parser("rm", help="remove a machine and its slots (refused while it has invoices not closed)")
    mrm.add_argument("name", help="the machine")
    lst = ms.add_parser("list", help="the machines")
    lst.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    common([add, mset, mrm], bus=True)
    common([lst], bus=False)

    sp = command(sub, "slots", cmd_slots, "a machine's slots: product, price (CAD), relay, stock")
    ss = sp.add_subparsers(dest="slots_cmd", required=True, metavar="ACTION")
    st = ss.add_parser("set", help="create a slot (--product and --price-cad needed) or change only what is given")
    st.add_argument("machine", help="the machine")
    st.add_argument("slot", type=int, help="slot number 0..255")
    st.add_argument("--product", help="what it sells (default: keep)")
    st.add_argument("--price-cad", help='price in CAD, e.g. 3.50 (at most 2 decimals; default: keep)')
    st.add_argument("--stock", type=_stock_arg, help="items in the slot now; each vend takes one, an empty slot "
                                                     "sells nothing; \"none\": not counted (default: keep; new "
                                                     "slot: not counted)")
    st.add_argument("--relay", help="gpio:PIN or i2c:0xADDR:BIT; \"none\": not wired (default: keep)")
    st.add_argument("--sticker-address", help="the slot's fixed payment address (legacy sticker mode: any payment "
                                              "to it buys items at the current price); \"\" clears it "
                                              "(default: keep)")
    srm = ss.add_parser("rm", help="remove a slot (refused while it has invoices not closed)")
    srm.add_argument("machine", help="the machine")
    srm.add_argument("slot", type=int, help="slot number 0..255")
    lst = ss.add_parser("list", help="a machine's slots, with their stock (- : not counted)")
    lst.add_argument("machine", help="the machine")
    lst.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    common([st, srm], bus=True)
    common([lst], bus=False)

    sp = command(sub, "policy", cmd_policy, "business policies (versioned): zero-conf limit, invoice lifetime, ...")
    ps = sp.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    show = ps.add_parser("show", help="the current value of every policy")
    show.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    pset = ps.add_parser("set", help="a new version of one policy (a command acknowledged by business_data)")
    pset.add_argument("key", help="a policy key (dctrl policy show lists them)")
    pset.add_argument("value", help="its new value, checked per key")
    common([pset], bus=True)
    common([show], bus=False)
