"""The simulated machine's control socket (``pins = "mock"`` only).

With mock pins (gpiozero's ``MockFactory``) nobody can press a button, so the
agent opens a ZeroMQ REP socket at ``ipc://STATE_DIR/sim.sock`` (the state
directory is 0700: only the agent's user can connect) and drives the mock
pins on request: a press is ``pin.drive_low()`` then ``drive_high()`` on the
button's MockPin (for a pulled-up input), so the event goes the real way:
gpiozero's ``Button`` callback, the notifier's debounce, the actor loop, the
bus. Nothing here publishes on the bus. ``dctrl sim press|coin|door|drop|pins``
(scripts/sim/machine.py) is the client.

Requests and replies are msgpack maps. Every reply has ``ok`` (bool); a
refused request has ``error`` (str) and changes nothing.

=========================================================  =========================================
request                                                     reply (besides ``ok``)
=========================================================  =========================================
``{"op": "ping"}``                                          ``name``, ``pid``
``{"op": "press", "slot": S, "hold_ms": 80}``               ``slot``, ``pin``
``{"op": "coin", "pulses": N, "pulse_ms": 30, "gap_ms": 30}``  ``pulses``, ``pin``
``{"op": "door", "open": true|false}``                      ``open``, ``pin``
``{"op": "drop"}``                                          ``pin``
``{"op": "jam", "vends": N}``                               ``jammed``: the next N relay pulses get no
                                                            simulated drop (``[drop] simulate``)
``{"op": "i2c", "addr": A, "register": R, "data": [bytes]}``  set a mock I2C device's registers
``{"op": "pins"}``                                          ``now_us``, ``pins`` (below)
=========================================================  =========================================

``pins``: one map per pin the agent uses: ``spec`` ("gpio:17"), ``role``
("relay:1", "button:1", "coin", "door", "drop"), ``active_high`` (the level
that means active: true for relays by default, false for pulled-up inputs;
for the door, active means open, and the simulated door starts closed),
``level`` (now), ``history`` ``[[t_us, level], ...]`` (every level since the
agent started, the first entry being the level at start), and ``periods``
``[[start_us, end_us or nil], ...]`` (when it was active). Times are integer
microseconds since the Unix epoch (wall clock), converted from MockPin's
monotonic timestamps at the moment of the request, so intervals are exact and
a process on the same host can compare them with its own ``time.time()``.

Simulated drops: with ``[drop] simulate = true`` (mock pins only), every relay
pulse is followed ``simulate_delay_ms`` later by a drop-sensor pulse, as if
the item fell -- unless ``jam`` asked for the next vends to fail.

The module also has :class:`MockSMBus`, the in-memory I2C bus used with mock
pins (PCF8574 ports for I2C relays, register files for sensors).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

import msgpack
import zmq

from actors.runtime import Actor
from proto.errors import ConfigError

log = logging.getLogger(__name__)

IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with the terminating NUL
PULSE_MS = 20       # how long a simulated drop (or default coin pulse) holds the sensor active


def socket_path(state_dir) -> Path:
    return Path(state_dir) / "sim.sock"


def endpoint(state_dir) -> str:
    path = socket_path(state_dir).absolute()
    if len(os.fsencode(path)) > IPC_PATH_MAX:
        raise ConfigError(f"the sim socket path {path} is longer than {IPC_PATH_MAX} bytes (a unix socket "
                          f"limit): use a shorter state_dir")
    return f"ipc://{path}"


class MockSMBus:
    """An in-memory stand-in for ``smbus2.SMBus`` (``pins = "mock"``).

    ``ports``: 8-bit quasi-bidirectional ports (PCF8574) for I2C relays, 0xFF at
    start. ``registers``: per address, 256 register bytes for sensors. A read
    from an address with no device raises ``OSError(EREMOTEIO)``, like the
    real bus."""

    def __init__(self, ports=(), registers=None):
        self._lock = threading.Lock()
        self.ports = {a: 0xFF for a in ports}
        self.registers = {a: bytearray(256) for a in (registers or {})}
        for addr, regs in (registers or {}).items():
            for reg, data in regs.items():
                self.set(addr, reg, data)

    def _absent(self, addr):
        return OSError(errno.EREMOTEIO, f"no device at i2c address {addr:#04x}")

    def read_byte(self, addr):
        with self._lock:
            if addr not in self.ports:
                raise self._absent(addr)
            return self.ports[addr]

    def write_byte(self, addr, value):
        with self._lock:
            if addr not in self.ports:
                raise self._absent(addr)
            self.ports[addr] = value & 0xFF

    def read_byte_data(self, addr, register):
        return self.read_i2c_block_data(addr, register, 1)[0]

    def read_i2c_block_data(self, addr, register, length):
        with self._lock:
            regs = self.registers.get(addr)
            if regs is None:
                raise self._absent(addr)
            return [regs[(register + i) % 256] for i in range(length)]

    def set(self, addr, register, data):
        with self._lock:
            regs = self.registers.setdefault(addr, bytearray(256))
            for i, b in enumerate(data):
                regs[(register + i) % 256] = b & 0xFF

    def close(self):
        pass


class SimPin:
    """A MockPin the simulator reports (and maybe drives), with the monotonic time its history starts."""

    def __init__(self, spec, role, pin, active_high):
        self.spec, self.role, self.pin, self.active_high = spec, role, pin, active_high
        pin.clear_states()  # forget the power-on transitions; history starts now
        self.base = pin._last_change  # MockPin's monotonic time of its first recorded state

    def drive(self, active: bool):
        (self.pin.drive_high if active == self.active_high else self.pin.drive_low)()

    def report(self, offset) -> dict:
        # Forwards from the base: each state's timestamp is the delta from the previous change,
        # so a change being appended concurrently cannot shift the times already reported.
        t, history = self.base, []
        for i, s in enumerate(list(self.pin.states)):
            if i:
                t += s.timestamp
            history.append([int((t + offset) * 1e6), bool(s.state)])
        periods, start = [], None
        for t_us, level in history:
            if level == self.active_high and start is None:
                start = t_us
            elif level != self.active_high and start is not None:
                periods.append([start, t_us])
                start = None
        if start is not None:
            periods.append([start, None])
        return {"spec": self.spec, "role": self.role, "active_high": self.active_high,
                "level": bool(self.pin.state), "history": history, "periods": periods}


class SimControl(Actor):
    """The control socket of a simulated machine: a part of the agent's runtime (setup/teardown/health)."""

    role = "machine"

    def __init__(self, state_dir, *, mgr, notifier, i2c_bus=None, simulate_drop=False, drop_delay_ms=150):
        self.endpoint = endpoint(state_dir)
        self.path = socket_path(state_dir)
        self.notifier, self.i2c_bus = notifier, i2c_bus
        self.pins: list[SimPin] = []
        for slot, relay in sorted(mgr.relays.items()):
            dev = getattr(relay, "device", None)
            if dev is not None:  # GPIO relays (I2C relays write to the MockSMBus port instead)
                self.pins.append(SimPin(relay.spec, f"relay:{slot}", dev.pin, dev.active_high))
        door = notifier.inputs.door
        for spec, role, dev in notifier.devices:
            if role == "door":  # the simulated door starts closed; "active" means open
                open_high = door.open_level == "high"
                (dev.pin.drive_low if open_high else dev.pin.drive_high)()
                self.pins.append(SimPin(spec, role, dev.pin, open_high))
            else:  # pulled up: active low
                self.pins.append(SimPin(spec, role, dev.pin, not dev.pull_up))
        self.by_role = {p.role: p for p in self.pins}
        self.simulate_drop = simulate_drop and notifier.drop is not None
        self.drop_delay = drop_delay_ms / 1000
        self.jammed = 0
        self._drive_lock = threading.Lock()  # one simulated hand on the pins at a time
        self._timers: set = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error = None
        self._thread = None
        if self.simulate_drop:
            mgr.after_pulse = self.relay_pulsed

    # -- lifecycle --------------------------------------------------------------

    def setup(self):
        self._thread = threading.Thread(target=self._serve, name="sim-control", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ConfigError(f"sim control socket {self.endpoint}: {self._error}")
        log.info("simulated machine: control socket %s (dctrl sim press|coin|door|drop|pins)", self.path)

    def teardown(self):
        self._stop.set()
        for t in list(self._timers):
            t.join(5)  # a simulated drop in flight still lands: the vend waiting for it is not failed
        if self._thread is not None:
            self._thread.join(10)

    def health(self):
        return "ok", None

    def after_batch(self):
        pass

    # -- the simulated hand ------------------------------------------------------

    def _pulse(self, sim: SimPin, ms: int):
        with self._drive_lock:
            sim.drive(True)
            time.sleep(ms / 1000)
            sim.drive(False)

    def relay_pulsed(self, slot):
        """MachineMgr's after_pulse hook (its worker thread): the item falls a little later."""
        if self.jammed:
            self.jammed -= 1
            log.info("simulated machine: slot %d jammed, no drop", slot)
            return
        t = threading.Timer(self.drop_delay, self._simulated_drop)
        t.daemon = True
        self._timers.add(t)
        t.start()

    def _simulated_drop(self):
        try:
            self._pulse(self.by_role["drop"], PULSE_MS)
        finally:
            self._timers.discard(threading.current_thread())

    # -- the socket ----------------------------------------------------------------

    def _serve(self):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REP)
        sock.linger = 0
        sock.maxmsgsize = 65536
        try:
            try:
                sock.bind(self.endpoint)  # libzmq replaces a stale socket file left by a killed agent
                os.chmod(self.path, 0o600)
            except (zmq.ZMQError, OSError) as exc:
                self._error = str(exc)
                return
            finally:
                self._ready.set()
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                raw = sock.recv()
                try:
                    reply = self.handle(msgpack.unpackb(raw, raw=False, strict_map_key=True))
                except Exception as exc:  # a bad request never kills the simulator
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:512]}
                sock.send(msgpack.packb(reply, use_bin_type=True))
        finally:
            sock.close(0)
            ctx.term()
            if self._error is None:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass

    def handle(self, req) -> dict:
        """One request (see the module docstring) -> the reply."""
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "a request is a map with an 'op'"}
        op = req["op"]
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            return {"ok": False, "error": f"unknown op {op!r}; known: "
                    + ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))}
        try:
            return {"ok": True, **fn(req)}
        except SimRefused as exc:
            return {"ok": False, "error": str(exc)}

    def _need(self, role, what):
        sim = self.by_role.get(role)
        if sim is None:
            raise SimRefused(f"this machine has no {what} (see agent.toml)")
        return sim

    def op_ping(self, req):
        return {"name": self.notifier.name, "pid": os.getpid()}

    def op_press(self, req):
        slot = _int(req, "slot", 0, 255)
        hold = _int(req, "hold_ms", 1, 5000, default=80)
        if f"button:{slot}" not in self.by_role:
            have = ", ".join(str(s) for s in sorted(self.notifier.buttons)) or "none"
            raise SimRefused(f"no button for slot {slot} (buttons: {have}; see [buttons] in agent.toml)")
        sim = self.by_role[f"button:{slot}"]
        self._pulse(sim, hold)
        return {"slot": slot, "pin": sim.spec}

    def op_coin(self, req):
        sim = self._need("coin", "coin acceptor ([coin] pin)")
        n = _int(req, "pulses", 1, 100)
        width = _int(req, "pulse_ms", 1, 1000, default=30)
        gap = _int(req, "gap_ms", 1, 1000, default=30)
        for i in range(n):
            if i:
                time.sleep(gap / 1000)
            self._pulse(sim, width)
        return {"pulses": n, "pin": sim.spec}

    def op_door(self, req):
        sim = self._need("door", "door switch ([door] pin)")
        is_open = req.get("open")
        if not isinstance(is_open, bool):
            raise SimRefused("door: 'open' must be true or false")
        with self._drive_lock:
            sim.drive(is_open)
        return {"open": is_open, "pin": sim.spec}

    def op_drop(self, req):
        sim = self._need("drop", "drop sensor ([drop] pin)")
        self._pulse(sim, PULSE_MS)
        return {"pin": sim.spec}

    def op_jam(self, req):
        self._need("drop", "drop sensor ([drop] pin)")
        self.jammed = _int(req, "vends", 0, 1000, default=1)
        return {"jammed": self.jammed, "simulate": self.simulate_drop}

    def op_i2c(self, req):
        if self.i2c_bus is None or not hasattr(self.i2c_bus, "set"):
            raise SimRefused("no mock I2C bus")
        data = req.get("data")
        if isinstance(data, (bytes, bytearray)):
            data = list(data)
        if not isinstance(data, list) or not all(type(b) is int and 0 <= b <= 255 for b in data) or len(data) > 32:
            raise SimRefused("i2c: 'data' must be up to 32 bytes")
        addr, reg = _int(req, "addr", 0, 0x7F), _int(req, "register", 0, 255)
        self.i2c_bus.set(addr, reg, data)
        return {"addr": addr, "register": reg}

    def op_pins(self, req):
        offset = time.time() - time.monotonic()
        return {"now_us": int(time.time() * 1e6), "pins": [p.report(offset) for p in self.pins]}


class SimRefused(Exception):
    pass


def _int(req, key, lo, hi, default=None):
    value = req.get(key, default)
    if type(value) is not int or not lo <= value <= hi:
        raise SimRefused(f"{key!r} must be an integer {lo}..{hi}")
    return value
