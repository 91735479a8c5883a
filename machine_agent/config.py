"""``agent.toml``: everything a vending machine needs to join the bus, and nothing more.

Made on the server with ``dctrl agent-config NAME --out DIR`` (which also copies
the machine's 0600 key file) and copied to the machine::

    name = "vm1"
    key_file = "vm1.key"          # relative paths are relative to this file
    state_dir = "state"           # boot counter and command journal
    pins = "gpio"                 # "gpio": gpiozero's default pin factory; "mock": no hardware
    i2c_bus = 1                   # /dev/i2c-1, for i2c relays
    clock = "system"              # the trusted clock for command expiry: "system" (assumed
                                  # synchronised) or "kernel" (refuse vends until the kernel says
                                  # NTP has synchronised it; for a Pi without a real-time clock)

    [bus]
    publish_endpoint = "tcp://10.0.0.2:7401"
    subscribe_endpoint = "tcp://10.0.0.2:7402"
    broker_public_key = "<z85>"

    [vault]
    token_public_key = "<hex>"    # pinned: tokens signed by any other key are refused

    [slots.1]
    relay = "gpio:17"             # or "i2c:0x20:3" (PCF8574 address, bit)
    active_high = true            # default: true for gpio, false for i2c
    pulse_ms = 500                # relay on-time; a vend command may override it

Inputs (MachineNotifier, machine_agent/notifier.py); every section is optional.
GPIO inputs are pulled up and active when pulled to ground (``pull_up = false``:
pulled down, active high). ``debounce_ms``: an activation counts only after
that long without any edge (the door: its level is read that long after the
last edge)::

    [buttons]                     # selection buttons -> machine.NAME.button {slot, pressed_at}
    1 = "gpio:5"                  # slot = pin
    2 = "gpio:6"
    debounce_ms = 50              # (and pull_up) for every button

    [coin]                        # coin acceptor pulses -> machine.NAME.coin {pulses, total}
    pin = "gpio:12"
    settle_ms = 200               # a burst is published when no pulse came for this long
    debounce_ms = 5

    [door]                        # door switch -> machine.NAME.door {open}, at start and on change
    pin = "gpio:13"
    open_level = "high"           # the level when open (a switch to ground that the closed door presses)
    debounce_ms = 50

    [drop]                        # drop sensor: confirms each vend -> machine.NAME.drop {slot, at}
    pin = "gpio:19"
    timeout_ms = 2000             # after the pulse: no drop by then acks failed "no drop detected"
    debounce_ms = 20
    simulate = false              # pins = "mock" only: every relay pulse is followed by a drop
    simulate_delay_ms = 150       # ... this long after the pulse (less than timeout_ms)

    [[sensors]]                   # I2C sensors, read on a schedule -> machine.NAME.sensor {name, value, unit}
    name = "temp"
    i2c = 0x48                    # device address on i2c_bus
    register = 0
    kind = "lm75"                 # "lm75": LM75-style degrees C in 0.125 steps; "byte": one byte * scale
    unit = "C"                    # default "C" for lm75, "raw" for byte
    scale = "1"                   # byte only: a decimal string
    interval_s = 60

With ``pins = "mock"`` the agent also opens the simulator's control socket,
``ipc://STATE_DIR/sim.sock`` (machine_agent/simctl.py; ``dctrl sim press``),
and I2C goes to an in-memory bus (an LM75 sensor reads 21.5 C).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import nacl.signing

from keys.bus import BusSettings
from keys.schema import AGENT, check
from proto.errors import ConfigError
from proto.wire import check_name

TEMPLATE = """\
# dctrl-agent configuration for machine {name}; made by `dctrl agent-config`.
name = "{name}"
key_file = "{name}.key"
state_dir = "state"
# Top-level keys go here, above the first [section]:
# pins = "gpio"          # "gpio": gpiozero's default pin factory; "mock": no hardware
# i2c_bus = 1
# clock = "system"       # "kernel": refuse vends until NTP has synchronised the clock

[bus]
publish_endpoint = "{pub}"
subscribe_endpoint = "{sub}"
broker_public_key = "{broker}"

[vault]
token_public_key = "{vault}"

# Vending slots:
# [slots.1]
# relay = "gpio:17"      # or "i2c:0x20:3"
# active_high = true     # default true for gpio, false for i2c
# pulse_ms = 500

# Inputs (every section optional; inputs are pulled up, active when grounded; see
# machine_agent/config.py for every key):
# [buttons]              # selection buttons: slot = pin
# 1 = "gpio:5"
# debounce_ms = 50
# [coin]                 # coin acceptor pulses, published after settle_ms without a pulse
# pin = "gpio:12"
# settle_ms = 200
# [door]                 # door switch
# pin = "gpio:13"
# open_level = "high"
# [drop]                 # drop sensor: a vend with no drop within timeout_ms acks failed
# pin = "gpio:19"
# timeout_ms = 2000
# [[sensors]]            # I2C sensors on i2c_bus
# name = "temp"
# i2c = 0x48
# kind = "lm75"          # or "byte" (with scale = "0.5")
# interval_s = 60
"""


def load(path) -> BusSettings:
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            cfg = check(tomllib.load(f), AGENT, path)
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
    inputs: object = None             # machine_agent.notifier.Inputs (buttons, coin, door, drop, sensors)
    state_dir: Path | None = None     # boot counter, journals, the simulator's socket
    clock: str = "system"             # the trusted clock: "system" or "kernel" (machine_agent/clock.py)


def load_machine(path) -> MachineConfig:
    from .mgr import Slot

    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            cfg = check(tomllib.load(f), AGENT, path)
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
        clock = cfg.get("clock", "system")
        if clock not in ("system", "kernel"):
            raise ValueError(f"clock must be 'system' or 'kernel', not {clock!r}")
        return MachineConfig(slots=slots, pins=pins, i2c_bus=int(cfg.get("i2c_bus", 1)),
                             journal_file=state / "commands.jsonl", inputs=load_inputs(cfg, slots, path),
                             state_dir=state, clock=clock)
    except FileNotFoundError:
        raise ConfigError(f"no agent config at {path}: make one with `dctrl agent-config NAME` on the server") from None
    except (KeyError, ValueError, TypeError, AttributeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {type(exc).__name__}: {exc}") from None


# -- inputs (MachineNotifier) --------------------------------------------------------

INPUT_KEYS = {
    "buttons": ("pull_up", "debounce_ms"),  # and slot numbers
    "coin": ("pin", "pull_up", "debounce_ms", "settle_ms"),
    "door": ("pin", "pull_up", "open_level", "debounce_ms"),
    "drop": ("pin", "pull_up", "debounce_ms", "timeout_ms", "simulate", "simulate_delay_ms"),
    "sensors": ("name", "i2c", "register", "kind", "unit", "scale", "interval_s"),
}
SENSOR_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _gpio_number(value, where) -> int:
    """``"gpio:N"`` -> N (0..53), or ValueError naming ``where``."""
    if isinstance(value, str) and value.startswith("gpio:"):
        try:
            n = int(value[5:], 0)
        except ValueError:
            n = -1
        if 0 <= n <= 53:
            return n
    raise ValueError(f"{where} must be \"gpio:N\" (N 0..53), not {value!r}")


def _int(t, key, lo, hi, default, where) -> int:
    value = t.get(key, default)
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{where} {key} must be an integer {lo}..{hi}, not {value!r}")
    return value


def _bool(t, key, default, where) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where} {key} must be true or false, not {value!r}")
    return value


def _section(cfg, name, extra_ok=lambda key: False):
    t = cfg.get(name)
    if t is None:
        return None
    if not isinstance(t, dict):
        raise ValueError(f"[{name}] must be a table")
    unknown = sorted(k for k in t if k not in INPUT_KEYS[name] and not extra_ok(k))
    if unknown:
        raise ValueError(f"[{name}]: unknown key(s) {', '.join(unknown)} (known: {', '.join(INPUT_KEYS[name])})")
    return t


def load_inputs(cfg: dict, slots: dict, path):
    """The [buttons], [coin], [door], [drop] and [[sensors]] sections -> notifier.Inputs.

    ``slots`` (slot -> Slot) is checked too: one GPIO pin may serve one purpose only."""
    from .notifier import Buttons, Coin, Door, Drop, Inputs, Sensor

    try:
        buttons = Buttons()
        t = _section(cfg, "buttons", extra_ok=lambda k: k.isdigit())
        if t is not None:
            pins = {}
            for key, value in t.items():
                if key.isdigit():
                    slot = int(key)
                    if not 0 <= slot <= 255:
                        raise ValueError(f"[buttons] slot {slot} is not 0..255")
                    pins[slot] = _gpio_number(value, f"[buttons] {key}")
            buttons = Buttons(pins=pins, pull_up=_bool(t, "pull_up", True, "[buttons]"),
                              debounce_ms=_int(t, "debounce_ms", 0, 1000, 50, "[buttons]"))
        coin = door = drop = None
        if (t := _section(cfg, "coin")) is not None:
            coin = Coin(pin=_gpio_number(t.get("pin"), "[coin] pin"), pull_up=_bool(t, "pull_up", True, "[coin]"),
                        debounce_ms=_int(t, "debounce_ms", 0, 1000, 5, "[coin]"),
                        settle_ms=_int(t, "settle_ms", 20, 10_000, 200, "[coin]"))
        if (t := _section(cfg, "door")) is not None:
            level = t.get("open_level", "high")
            if level not in ("high", "low"):
                raise ValueError(f"[door] open_level must be \"high\" or \"low\", not {level!r}")
            door = Door(pin=_gpio_number(t.get("pin"), "[door] pin"), pull_up=_bool(t, "pull_up", True, "[door]"),
                        open_level=level, debounce_ms=_int(t, "debounce_ms", 0, 1000, 50, "[door]"))
        if (t := _section(cfg, "drop")) is not None:
            timeout = _int(t, "timeout_ms", 50, 30_000, 2000, "[drop]")
            drop = Drop(pin=_gpio_number(t.get("pin"), "[drop] pin"), pull_up=_bool(t, "pull_up", True, "[drop]"),
                        debounce_ms=_int(t, "debounce_ms", 0, 1000, 20, "[drop]"), timeout_ms=timeout,
                        simulate=_bool(t, "simulate", False, "[drop]"),
                        simulate_delay_ms=_int(t, "simulate_delay_ms", 0, timeout - 1, 150, "[drop]"))
        sensors = []
        raw = cfg.get("sensors") or []
        if not isinstance(raw, list):
            raise ValueError("sensors must be an array of tables: [[sensors]]")
        for n, t in enumerate(raw, start=1):
            if not isinstance(t, dict):
                raise ValueError("sensors must be an array of tables: [[sensors]]")
            unknown = sorted(k for k in t if k not in INPUT_KEYS["sensors"])
            if unknown:
                raise ValueError(f"[[sensors]] #{n}: unknown key(s) {', '.join(unknown)} "
                                 f"(known: {', '.join(INPUT_KEYS['sensors'])})")
            name = t.get("name")
            if not isinstance(name, str) or not SENSOR_NAME.fullmatch(name):
                raise ValueError(f"[[sensors]] #{n}: name must match [a-z][a-z0-9_-]{{0,31}}, not {name!r}")
            where = f"[[sensors]] {name}:"
            if any(s.name == name for s in sensors):
                raise ValueError(f"{where} the name is used twice")
            kind = t.get("kind", "lm75")
            if kind not in ("lm75", "byte"):
                raise ValueError(f"{where} kind must be \"lm75\" or \"byte\", not {kind!r}")
            if "i2c" not in t:
                raise ValueError(f"{where} i2c (the device address, e.g. 0x48) is required")
            unit = t.get("unit", "C" if kind == "lm75" else "raw")
            if not isinstance(unit, str) or len(unit) > 16:
                raise ValueError(f"{where} unit must be a string of at most 16 characters")
            scale = t.get("scale", "1")
            if not isinstance(scale, str) or not DECIMAL.fullmatch(scale) or len(scale) > 20:
                raise ValueError(f"{where} scale must be a decimal string like \"0.5\" (never a float), not {scale!r}")
            sensors.append(Sensor(name=name, address=_int(t, "i2c", 0x03, 0x77, None, where),
                                  register=_int(t, "register", 0, 255, 0, where), kind=kind, unit=unit, scale=scale,
                                  interval_s=_int(t, "interval_s", 1, 86_400, 60, where)))
        inputs = Inputs(buttons=buttons, coin=coin, door=door, drop=drop, sensors=tuple(sensors))
        used = {}
        relays = []
        for n, s in sorted(slots.items()):
            if s.relay.startswith("gpio:"):
                try:
                    relays.append((int(s.relay[5:], 0), f"slots.{n} relay"))
                except ValueError:
                    pass  # make_relay says what is wrong with it
        for pin, what in relays + inputs.gpio_uses():
            if pin in used:
                raise ValueError(f"gpio:{pin} is used by both {used[pin]} and {what}")
            used[pin] = what
        return inputs
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render(home, name, *, server: str | None = None, slots: list | None = None) -> str:
    """The agent.toml of machine ``name``. ``server``: the host the machine reaches the
    broker at (the endpoints' ports are kept). ``slots``: BusinessData's slots of the
    machine (dicts with ``slot``, ``product``, ``relay``), written as ``[slots.N]``."""
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    if registry.role(name) != "machine":
        raise ConfigError(f"{name} is not a machine identity (role {registry.role(name)})")
    bus = home.config["bus"]
    pub, sub = (with_host(bus[k], server) if server else bus[k] for k in ("publish_endpoint", "subscribe_endpoint"))
    text = TEMPLATE.format(name=name, pub=pub, sub=sub, broker=registry.current("broker").curve.decode(),
                           vault=bytes(home.vault_public).hex())
    if slots:
        text += slots_section(slots)
    return text


def with_host(endpoint: str, host: str) -> str:
    """``tcp://127.0.0.1:7401`` with ``host`` for its host (IPv6 in brackets)."""
    scheme, rest = endpoint.split("://", 1)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{rest.rsplit(':', 1)[1]}"


def slots_section(slots: list) -> str:
    """``[slots.N]`` for each slot BusinessData knows; a relay it does not know is left
    for the operator to fill in (the agent refuses to start until it is), with the
    button of each slot in a commented ``[buttons]`` section."""
    out = ["", "# The slots BusinessData knows for this machine (`dctrl slots list`)."]
    for s in sorted(slots, key=lambda s: s["slot"]):
        product = "".join(c for c in s["product"] if c.isprintable() and c != '"')
        out.append(f"[slots.{s['slot']}]                 # {product}")
        out.append(f'relay = "{s["relay"]}"' if s.get("relay") else
                   'relay = "gpio:FILL-IN"            # the relay of this slot: "gpio:N" or "i2c:0xAA:B"')
        out.append("pulse_ms = 500")
    out.append("")
    out.append("# [buttons]             # the selection button of each slot: slot = pin")
    out.extend(f'# {s["slot"]} = "gpio:N"' for s in sorted(slots, key=lambda s: s["slot"]))
    return "\n".join(out) + "\n"


DEMO_SLOTS = """
# Demo slots (made by `dctrl init` for the simulated machine; pins are gpiozero's MockFactory).
[slots.1]
relay = "gpio:17"
pulse_ms = 500

[slots.2]
relay = "gpio:27"
pulse_ms = 500

# Demo inputs: `dctrl sim press vm1 1`, `dctrl sim coin vm1 3`, `dctrl sim door vm1 open`.
[buttons]
1 = "gpio:5"
2 = "gpio:6"

[coin]
pin = "gpio:12"

[door]
pin = "gpio:13"

[drop]
pin = "gpio:19"
simulate = true               # the simulated item falls 150 ms after each relay pulse
"""


def write_folder(home, name, out, *, demo=False, server=None, slots=None, force=False) -> Path:
    """Write OUT/agent.toml and OUT/NAME.key (0600): the folder to copy to machine NAME.

    ``demo`` makes a simulated machine: mock pins, two slots, buttons for both, a coin
    acceptor, a door switch and a drop sensor that the simulator triggers after each pulse.
    An existing agent.toml (perhaps edited by hand) is only replaced with ``force``."""
    import os

    from keys.files import atomic_write

    out = Path(out)
    if (out / "agent.toml").exists() and not force:
        raise ConfigError(f"{out / 'agent.toml'} exists (edited by hand?): not overwritten; "
                          f"give --force to replace it")
    if not out.exists():  # private to its user, as the home (a folder given that exists is left as it is)
        out.mkdir(parents=True, mode=0o700)
        os.chmod(out, 0o700)
    text = render(home, name, server=server, slots=slots)
    if demo:
        text = text.replace('state_dir = "state"\n', 'state_dir = "state"\npins = "mock"\n', 1) + DEMO_SLOTS
    atomic_write(out / "agent.toml", text.encode(), mode=0o600)
    atomic_write(out / f"{name}.key", home.key_file(name).read_bytes(), mode=0o600)
    return out / "agent.toml"


STATE_DIR = "state"  # the state_dir `dctrl agent-config` writes (TEMPLATE), beside agent.toml

UNIT = """\
# systemd unit for the dctrl agent of vending machine {name}; made by `dctrl agent-config`.
# On the machine: sudo install -m 0644 dctrl-agent.service /etc/systemd/system/
#                 sudo systemctl daemon-reload && sudo systemctl enable --now dctrl-agent
# It expects agent.toml and {name}.key in {install} (owned by {user}, 0600) and dctrl-agent
# installed in {install}/venv (docs/deployment.md).
[Unit]
Description=dctrl agent of vending machine {name}
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target
StartLimitIntervalSec=0

[Service]
Type=simple
User={user}
# GPIO (/dev/gpiomem, /dev/gpiochip*) and I2C (/dev/i2c-*) relays, buttons and sensors
SupplementaryGroups={groups}
# The state directory (boot counter, replay and command journals) is the only place the agent
# writes; made here, as root ("+"), because the rest of the filesystem is read-only to it. It is
# also the working directory ("-": not there yet for ExecStartPre), where gpiozero's lgpio pin
# factory makes its notification pipes (LG_WD).
ExecStartPre=+/usr/bin/install -d -o {user} -m 0700 {state}
WorkingDirectory=-{state}
Environment=LG_WD={state}
ExecStart={install}/venv/bin/dctrl-agent --config {install}/agent.toml
Restart=always
RestartSec=5
UMask=0077
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
ReadWritePaths={state}
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# Not set, on purpose: PrivateDevices= (it hides the GPIO and I2C devices) and ProtectClock=
# (it forbids adjtimex(2), which clock = "kernel" asks whether NTP has synchronised the clock).

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(name: str, *, install_dir: str = "/opt/dctrl-agent", user: str = "dctrl",
                 groups: str = "gpio i2c") -> str:
    """The systemd unit running ``dctrl-agent`` for machine ``name`` from ``install_dir``: the
    folder ``dctrl agent-config --out`` writes, copied there, with ``dctrl[agent]`` installed in
    ``install_dir``/venv."""
    install = str(Path(install_dir))
    if not Path(install).is_absolute() or any(c.isspace() or c in "\"'\\%$;" for c in install):
        raise ConfigError(f"--install-dir must be an absolute path without spaces, quotes, %, $ or ;, "
                          f"not {install_dir!r}")
    check_name(name)
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise ConfigError(f"--user must be a system user name, not {user!r}")
    home_like = install == "/root" or install.startswith(("/home/", "/root/", "/run/user/"))
    return UNIT.format(name=name, install=install, user=user, groups=groups, state=f"{install}/{STATE_DIR}",
                       protect_home="read-only" if home_like else "yes")
