"""``agent.toml``: everything a vending machine needs to join the bus, and nothing more.

Made on the server with ``dctrl agent-config NAME --out DIR`` (which also copies
the machine's 0600 key file) and copied to the machine::

    name = "vm1"
    key_file = "vm1.key"          # relative paths are relative to this file
    state_dir = "state"           # boot counter and command journal

    [bus]
    publish_endpoint = "tcp://10.0.0.2:7401"
    subscribe_endpoint = "tcp://10.0.0.2:7402"
    broker_public_key = "<z85>"

    [vault]
    token_public_key = "<hex>"    # pinned: tokens signed by any other key are refused

    pins = "gpio"                 # "gpio": gpiozero's default pin factory; "mock": no hardware
    i2c_bus = 1                   # /dev/i2c-1, for i2c relays

    [slots.1]
    relay = "gpio:17"             # or "i2c:0x20:3" (PCF8574 address, bit)
    active_high = true            # default: true for gpio, false for i2c
    pulse_ms = 500                # relay on-time; a vend command may override it
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from keys.home import BusSettings
from proto.errors import ConfigError
from proto.wire import check_name

TEMPLATE = """\
# dctrl-agent configuration for machine {name}; made by `dctrl agent-config`.
name = "{name}"
key_file = "{name}.key"
state_dir = "state"

[bus]
publish_endpoint = "{pub}"
subscribe_endpoint = "{sub}"
broker_public_key = "{broker}"

[vault]
token_public_key = "{vault}"

# Vending: "gpio" uses gpiozero's default pin factory, "mock" needs no hardware.
# pins = "gpio"
# i2c_bus = 1
# [slots.1]
# relay = "gpio:17"      # or "i2c:0x20:3"
# active_high = true     # default true for gpio, false for i2c
# pulse_ms = 500
"""


def load(path) -> BusSettings:
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        name = check_name(cfg["name"])
        base = path.parent
        state = base / cfg.get("state_dir", "state")
        state.mkdir(mode=0o700, exist_ok=True)
        bus, vault = cfg["bus"], cfg["vault"]
        return BusSettings(
            name=name,
            key_file=base / cfg.get("key_file", f"{name}.key"),
            boot_file=state / "boot",
            publish_endpoint=bus["publish_endpoint"],
            subscribe_endpoint=bus["subscribe_endpoint"],
            broker_public=bus["broker_public_key"].encode(),
            vault_public=nacl.signing.VerifyKey(bytes.fromhex(vault["token_public_key"])),
            heartbeat_interval=int(cfg.get("heartbeat_interval", 5)),
            journal_file=state / "replay.json",
        )
    except FileNotFoundError:
        raise ConfigError(f"no agent config at {path}: make one with `dctrl agent-config NAME` on the server") from None
    except (KeyError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from None


@dataclass
class MachineConfig:
    """The vending part of agent.toml (see the module docstring)."""

    slots: dict = field(default_factory=dict)  # slot number -> machine_agent.mgr.Slot
    pins: str = "gpio"
    i2c_bus: int = 1
    journal_file: Path | None = None  # the command journal (state/commands.jsonl)


def load_machine(path) -> MachineConfig:
    from .mgr import Slot

    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        state = path.parent / cfg.get("state_dir", "state")
        state.mkdir(mode=0o700, exist_ok=True)
        pins = cfg.get("pins", "gpio")
        if pins not in ("gpio", "mock"):
            raise ValueError(f"pins must be 'gpio' or 'mock', not {pins!r}")
        slots = {}
        for key, s in (cfg.get("slots") or {}).items():
            n = int(key)
            if not 0 <= n <= 255:
                raise ValueError(f"slot {n} is not 0..255")
            relay = s["relay"]
            if not isinstance(relay, str) or not relay.startswith(("gpio:", "i2c:")):
                raise ValueError(f"slot {n}: relay must be gpio:PIN or i2c:ADDR:BIT, not {relay!r}")
            active_high = s.get("active_high")
            if active_high is not None and not isinstance(active_high, bool):
                raise ValueError(f"slot {n}: active_high must be true or false")
            pulse_ms = int(s.get("pulse_ms", 500))
            if not 10 <= pulse_ms <= 10_000:
                raise ValueError(f"slot {n}: pulse_ms must be 10..10000")
            slots[n] = Slot(relay=relay, active_high=active_high, pulse_ms=pulse_ms)
        return MachineConfig(slots=slots, pins=pins, i2c_bus=int(cfg.get("i2c_bus", 1)),
                             journal_file=state / "commands.jsonl")
    except FileNotFoundError:
        raise ConfigError(f"no agent config at {path}: make one with `dctrl agent-config NAME` on the server") from None
    except (KeyError, ValueError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from None


def render(home, name) -> str:
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    if registry.role(name) != "machine":
        raise ConfigError(f"{name} is not a machine identity (role {registry.role(name)})")
    bus = home.config["bus"]
    return TEMPLATE.format(name=name, pub=bus["publish_endpoint"], sub=bus["subscribe_endpoint"],
                           broker=registry.current("broker").curve.decode(),
                           vault=bytes(home.vault_public).hex())


DEMO_SLOTS = """
# Demo slots (made by `dctrl init` for the simulated machine; pins are gpiozero's MockFactory).
[slots.1]
relay = "gpio:17"
pulse_ms = 500

[slots.2]
relay = "gpio:27"
pulse_ms = 500
"""


def write_folder(home, name, out, *, demo=False) -> Path:
    """Write OUT/agent.toml and OUT/NAME.key (0600): the folder to copy to machine NAME.

    ``demo`` makes a simulated machine: mock pins and two slots."""
    import os
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = render(home, name)
    if demo:
        text = text.replace('state_dir = "state"\n', 'state_dir = "state"\npins = "mock"\n', 1) + DEMO_SLOTS
    (out / "agent.toml").write_text(text)
    key = out / f"{name}.key"
    shutil.copyfile(home.key_file(name), key)
    os.chmod(key, 0o600)
    return out / "agent.toml"
