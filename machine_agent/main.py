"""``dctrl-agent --config agent.toml``: the light agent on a vending machine.

It joins the bus as the machine's identity (its own keys, a token from the
Vault, heartbeats on ``health.NAME``) with only the agent's dependencies:
pyzmq, msgpack, PyNaCl, schedule (and gpiozero/smbus2 for the relays). It
never imports peewee or bottle. Vending (MachineMgr) and hardware inputs
(MachineNotifier) build on this runtime.

One process, one identity, one bus connection: the Runtime hosts the
agent's parts -- the MachineNotifier, the simulator's control socket
(``pins = "mock"`` only, machine_agent/simctl.py) and the MachineMgr -- set up
in that order and torn down in reverse (the vend worker finishes, waiting for
its drop, before the input pins close), their health combined. Each part's
``@on``/``@every`` handlers are served (MachineMgr adds its own, whose topic
holds the machine's name, with ``runtime.add_handler`` in setup).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from actors.runtime import Runtime
from proto.errors import DctrlError

from . import config
from .mgr import MachineMgr
from .notifier import Inputs, MachineNotifier
from .relays import pin_factory_for

log = logging.getLogger("dctrl-agent")


class Agent:
    """The agent's parts, in the order the runtime sets them up: ``Runtime(agent, settings)``."""

    def __init__(self, mgr: MachineMgr, notifier: MachineNotifier, sim=None):
        self.mgr, self.notifier, self.sim = mgr, notifier, sim
        self.parts = [p for p in (notifier, sim, mgr) if p is not None]

    def __iter__(self):
        return iter(self.parts)


def build(settings, machine: config.MachineConfig, *, pin_factory=None, i2c_bus=None) -> Agent:
    """The agent's actor from its config. Relays and input pins are made here: a bad pin fails
    before joining. ``pin_factory`` and ``i2c_bus`` override what ``machine.pins`` implies."""
    mock = machine.pins == "mock"
    if pin_factory is None:
        pin_factory = pin_factory_for(machine.pins)
    inputs = machine.inputs or Inputs()
    if i2c_bus is None and mock:
        from .simctl import MockSMBus

        ports = []
        for slot in machine.slots.values():
            try:
                ports.append(int(slot.relay.split(":")[1], 0) if slot.relay.startswith("i2c:") else None)
            except (ValueError, IndexError):
                pass  # make_relay says what is wrong with it
        # Mock I2C devices: a PCF8574 port per I2C relay chip; each sensor reads 21.5 (LM75) or 0 (byte).
        i2c_bus = MockSMBus(
            ports=[p for p in ports if p is not None],
            registers={s.address: {s.register: [0x15, 0x80] if s.kind == "lm75" else [0]} for s in inputs.sensors})
    if i2c_bus is None:
        bus_no = machine.i2c_bus

        def i2c_bus():
            if not hasattr(i2c_bus, "bus"):
                from smbus2 import SMBus

                i2c_bus.bus = SMBus(bus_no)
            return i2c_bus.bus

    notifier = MachineNotifier(inputs, pin_factory=pin_factory, i2c_bus=i2c_bus)
    mgr = sim = None
    try:
        from .clock import make_clock

        mgr = MachineMgr(machine.slots, journal_path=machine.journal_file, pin_factory=pin_factory,
                         i2c_bus=i2c_bus, drop=notifier.drop_watch, trusted_clock=make_clock(machine.clock),
                         drop_timeout_ms=inputs.drop.timeout_ms if inputs.drop else 2000)
        if mock:
            from .simctl import SimControl

            drop = inputs.drop
            sim = SimControl(machine.state_dir or machine.journal_file.parent, mgr=mgr, notifier=notifier,
                             i2c_bus=i2c_bus, simulate_drop=bool(drop and drop.simulate),
                             drop_delay_ms=drop.simulate_delay_ms if drop else 0)
    except Exception:  # nothing half-made stays open (in-process callers go on living)
        notifier.close()
        if mgr is not None:
            for relay in mgr.relays.values():
                relay.close()
            mgr.journal.close()
        raise
    if not mock and inputs.drop is not None and inputs.drop.simulate:
        log.warning("[drop] simulate = true is ignored with real pins")
    return Agent(mgr, notifier, sim)


def main(argv=None) -> int:
    os.umask(0o077)  # what the agent writes (its state, journal, boot counter) is private to its user
    p = argparse.ArgumentParser(prog="dctrl-agent", description=(
        "The dctrl agent for one vending machine: joins the bus with the machine's keys. "
        "Make its config on the server with `dctrl agent-config NAME --out DIR`."))
    p.add_argument("--config", required=True, help="path to agent.toml")
    p.add_argument("--pins", choices=("mock", "gpio"),
                   help="relay and input pins: gpio (gpiozero's default factory) or mock (no hardware; opens "
                        "the simulator's control socket STATE_DIR/sim.sock); overrides agent.toml")
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
