"""`dctrl agent-config`: a vending machine's agent.toml and key file, with its slots from BusinessData."""

from __future__ import annotations

import sys

from proto.errors import DctrlError
from scripts.cli.common import command
from scripts.cli.common import home as _home


def cmd_agent_config(args):
    from keys.files import atomic_write
    from machine_agent.config import render, systemd_unit, write_folder

    home = _home(args)
    if args.systemd:
        _machine_role(home, args.name)
        print(systemd_unit(args.name, install_dir=args.install_dir, user=args.user), end="")
        return
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
    unit = systemd_unit(args.name, install_dir=args.install_dir, user=args.user)  # (bad options: nothing written)
    config = write_folder(home, args.name, args.out, server=server, slots=slots, force=args.force)
    atomic_write(config.parent / UNIT_FILE, unit.encode(), mode=0o600)
    print(f"wrote {config} and {config.parent / (args.name + '.key')} (0600); copy the folder to the machine "
          f"and run `dctrl-agent --config agent.toml` there")
    print(f"wrote {config.parent / UNIT_FILE}: the systemd unit running it from {args.install_dir} as user "
          f"{args.user} (docs/deployment.md)")
    if any(not s.get("relay") for s in slots):
        print(f"fill in the relay of each slot marked FILL-IN in {config} first (and the [buttons])")
    elif not slots:
        print(f"BusinessData knows no slots of {args.name} (dctrl slots set {args.name} ...): "
              f"add [slots.N] sections to {config} by hand, or set the slots and run this again with --force")


UNIT_FILE = "dctrl-agent.service"


def _machine_role(home, name) -> None:
    """Refuse a name that is not a machine identity of the home."""
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    if registry.role(name) != "machine":
        raise DctrlError(f"{name} is not a machine identity (role {registry.role(name)})")


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
    what = sp.add_mutually_exclusive_group()
    what.add_argument("--out", help="write DIR/agent.toml, DIR/NAME.key and DIR/dctrl-agent.service (the systemd "
                      "unit) instead of printing the config")
    what.add_argument("--systemd", action="store_true", help="print the systemd unit (dctrl-agent.service) instead")
    sp.add_argument("--server", help="the address the machine reaches the broker at (the server's LAN address; "
                    "the endpoints' ports are kept)")
    sp.add_argument("--force", action="store_true", help="replace an existing DIR/agent.toml")
    sp.add_argument("--install-dir", default="/opt/dctrl-agent", help="where the folder goes on the machine, "
                    "with dctrl[agent] in INSTALL_DIR/venv; the unit's paths (default /opt/dctrl-agent)")
    sp.add_argument("--user", default="dctrl", help="the user the unit runs the agent as (default dctrl)")
