"""``dctrl-agent --config agent.toml``: the light agent on a vending machine.

It joins the bus as the machine's identity (its own keys, a token from the
Vault, heartbeats on ``health.NAME``) with only the agent's dependencies:
pyzmq, msgpack, PyNaCl, schedule (and gpiozero/smbus2 for the relays). It
never imports peewee or bottle. Vending (MachineMgr) and hardware inputs
(MachineNotifier) build on this runtime.
"""

from __future__ import annotations

import argparse
import logging
import sys

from actors.runtime import Runtime
from proto.errors import DctrlError

from . import config
from .mgr import MachineMgr
from .relays import pin_factory_for

log = logging.getLogger("dctrl-agent")


def build(settings, machine: config.MachineConfig) -> MachineMgr:
    """The agent's actor from its config (relays are made here: a bad slot fails before joining)."""
    bus_no = machine.i2c_bus

    def i2c_bus():
        if not hasattr(i2c_bus, "bus"):
            from smbus2 import SMBus

            i2c_bus.bus = SMBus(bus_no)
        return i2c_bus.bus

    return MachineMgr(machine.slots, journal_path=machine.journal_file,
                      pin_factory=pin_factory_for(machine.pins), i2c_bus=i2c_bus)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dctrl-agent", description=(
        "The dctrl agent for one vending machine: joins the bus with the machine's keys. "
        "Make its config on the server with `dctrl agent-config NAME --out DIR`."))
    p.add_argument("--config", required=True, help="path to agent.toml")
    p.add_argument("--pins", choices=("mock", "gpio"),
                   help="relay pins: gpio (gpiozero's default factory) or mock (no hardware); overrides agent.toml")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = config.load(args.config)
        machine = config.load_machine(args.config)
        if args.pins:
            machine.pins = args.pins
        Runtime(build(settings, machine), settings).run(handle_signals=True)
    except DctrlError as exc:
        print(f"dctrl-agent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
