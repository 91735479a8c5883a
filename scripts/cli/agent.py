"""`dctrl agent-config`: a vending machine's agent.toml and key file, with its slots from BusinessData."""

from __future__ import annotations

import sys

from proto.errors import DctrlError
from scripts.cli.common import command
from scripts.cli.common import home as _home


def cmd_agent_config(args):
    from machine_agent.config import render, write_folder

    home = _home(args)
    server = args.server
    if server is None and all("127.0.0.1" in home.config["bus"][k] or "localhost" in home.config["bus"][k]
                              for k in ("publish_endpoint", "subscribe_endpoint")):
        print("warning: the bus endpoints are on loopback, which a vending machine cannot reach: give "
              "--server ADDRESS (the server's LAN address) and set [bus] listen = \"0.0.0.0\" in config.toml "
              "so the broker listens there", file=sys.stderr)
    slots = _machine_slots(home, args.name)
    if not args.out:
        print(render(home, args.name, server=server, slots=slots), end="")
        return
    config = write_folder(home, args.name, args.out, server=server, slots=slots, force=args.force)
    print(f"wrote {config} and {config.parent / (args.name + '.key')} (0600); copy the folder to the machine "
          f"and run `dctrl-agent --config agent.toml` there")
    if any(not s.get("relay") for s in slots):
        print(f"fill in the relay of each slot marked FILL-IN in {config} first (and the [buttons])")
    elif not slots:
        print(f"BusinessData knows no slots of {args.name} (dctrl slots set {args.name} ...): "
              f"add [slots.N] sections to {config} by hand, or set the slots and run this again with --force")


def _machine_slots(home, name) -> list:
    """BusinessData's slots of machine ``name`` ([] where there is no database to read)."""
    try:
        from actors.business_data.queries import slots
        from actors.db import connect
    except ImportError:  # an agent-only install
        return []
    try:
        database = connect(home.database_url)
    except DctrlError:
        return []
    try:
        return slots(database, name) if database.table_exists("business_slot") else []
    finally:
        database.close()


def register(sub):
    sp = command(sub, "agent-config", cmd_agent_config, "config (and key file) for a vending machine's dctrl-agent")
    sp.add_argument("name", help="a machine identity (dctrl keys add NAME --role machine)")
    sp.add_argument("--out", help="write DIR/agent.toml and DIR/NAME.key instead of printing the config")
    sp.add_argument("--server", help="the address the machine reaches the broker at (the server's LAN address; "
                    "the endpoints' ports are kept)")
    sp.add_argument("--force", action="store_true", help="replace an existing DIR/agent.toml")
