"""MachineNotifier: the vending machine's inputs as events on the bus.

Inputs are configured in agent.toml (see :mod:`machine_agent.config`) and read
through gpiozero (GPIO) or smbus2 (I2C sensors):

=====================  ============================  =========================================
input                  gpiozero device               event
=====================  ============================  =========================================
selection buttons      ``Button`` per slot           ``machine.NAME.button`` {slot, pressed_at}
coin acceptor pulses   ``DigitalInputDevice``        ``machine.NAME.coin`` {pulses, total}
door switch            ``DigitalInputDevice``        ``machine.NAME.door`` {open}
drop sensor            ``DigitalInputDevice``        ``machine.NAME.drop`` {slot, at}
I2C sensors            smbus2, on a schedule         ``machine.NAME.sensor`` {name, value, unit}
=====================  ============================  =========================================

The heartbeat is the runtime's ``health.NAME``; the notifier adds its input
counters to the heartbeat's ``counters`` (``button_presses``, ``coin_pulses``,
``door_changes``, ``drops``, ``sensor_readings``, ``sensor_errors``) and the
door and sensor state to its ``detail``. A sensor whose last read failed makes
the machine ``degraded``.

Threads. gpiozero calls its callbacks on its own threads (the pin driver's, or
whichever thread drives a mock pin). A callback only takes the time, applies
the debounce and hands the event to the actor loop with
``runtime.call_soon``; publishing, counting and the coin and door timers all
happen in the loop thread. The drop sensor also signals a waiting vend
directly (:class:`DropWatch`, thread-safe), so a vend is confirmed even while
the loop is busy. I2C sensors are read on a thread of their own.

Debounce is done here, in software, identically for every pin factory
(gpiozero's ``bounce_time`` means different things on different pin drivers
and nothing at all on the MockFactory, so the debounce that is tested would not
be the one that runs on the Pi). For buttons, coin pulses and the drop sensor,
an activation counts only if the input was quiet (no edge at all) for
``debounce_ms`` before it: contact bounce on press and on release is ignored,
and the first edge of a press is reported at once. The door is a level: it is
read again ``debounce_ms`` after the last edge, and published only if it
differs from the last state published.

Coin acceptors send N pulses for a coin of value N: pulses are counted and
published as one burst when no pulse came for ``settle_ms`` (200 ms by default).

Sensors (kept simple; add kinds as machines need them):

``kind = "lm75"``
    An LM75/LM75B-style temperature sensor: two bytes from ``register``
    (0, the temperature register), big-endian two's complement, the top 11
    bits in steps of 0.125 °C (a 9-bit LM75 reads the same with zero low bits).
    The value is exact: ``"21.500"``.
``kind = "byte"``
    One unsigned byte from ``register``, times ``scale`` (a decimal string,
    default ``"1"``).

Values are decimal strings, never floats.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

from actors.runtime import Actor
from proto.errors import ConfigError

log = logging.getLogger(__name__)


# -- configuration (parsed by machine_agent.config) -------------------------------

@dataclass(frozen=True)
class Buttons:
    pins: dict = field(default_factory=dict)  # slot -> GPIO number
    pull_up: bool = True                      # pulled up: pressed connects the pin to ground
    debounce_ms: int = 50


@dataclass(frozen=True)
class Coin:
    pin: int
    pull_up: bool = True
    debounce_ms: int = 5
    settle_ms: int = 200                      # a burst ends when no pulse came for this long


@dataclass(frozen=True)
class Door:
    pin: int
    pull_up: bool = True
    open_level: str = "high"                  # the pin's level when the door is open
    debounce_ms: int = 50


@dataclass(frozen=True)
class Drop:
    pin: int
    pull_up: bool = True
    debounce_ms: int = 20
    timeout_ms: int = 2000                    # how long a vend waits after the pulse for the drop
    simulate: bool = False                    # pins = "mock" only: a drop follows every relay pulse
    simulate_delay_ms: int = 150


@dataclass(frozen=True)
class Sensor:
    name: str
    address: int
    register: int = 0
    kind: str = "lm75"                        # "lm75" or "byte"
    unit: str = "C"
    scale: str = "1"                          # "byte" only: value = raw * scale
    interval_s: int = 60


@dataclass(frozen=True)
class Inputs:
    buttons: Buttons = field(default_factory=Buttons)
    coin: Coin | None = None
    door: Door | None = None
    drop: Drop | None = None
    sensors: tuple = ()

    def gpio_uses(self):
        """(GPIO number, what uses it) for every configured input pin."""
        out = [(pin, f"buttons.{slot}") for slot, pin in sorted(self.buttons.pins.items())]
        for name in ("coin", "door", "drop"):
            part = getattr(self, name)
            if part is not None:
                out.append((part.pin, f"{name}.pin"))
        return out


def read_sensor(bus, sensor: Sensor) -> str:
    """One reading as an exact decimal string (see the module docstring)."""
    if sensor.kind == "lm75":
        hi, lo = bus.read_i2c_block_data(sensor.address, sensor.register, 2)[:2]
        raw = (hi << 8) | lo
        if raw & 0x8000:
            raw -= 0x10000
        return format(Decimal(raw >> 5) * Decimal("0.125"), "f")
    if sensor.kind == "byte":
        return format(Decimal(bus.read_byte_data(sensor.address, sensor.register) & 0xFF) * Decimal(sensor.scale),
                      "f")
    raise ConfigError(f"sensor {sensor.name}: unknown kind {sensor.kind!r}")


# -- thread-safe pieces ------------------------------------------------------------

class Debounce:
    """An activation counts only after ``window`` seconds without any edge (any thread)."""

    def __init__(self, window_ms: int):
        self.window = window_ms / 1000
        self.last = float("-inf")
        self._lock = threading.Lock()

    def edge(self, active: bool, t: float) -> bool:
        with self._lock:
            quiet = t - self.last >= self.window
            self.last = t
            return active and quiet


class DropWatch:
    """Between a vend's ``arm(slot)`` and ``disarm()``, a drop sets the event the vend waits on.

    MachineMgr arms it before the relay turns on (an item may fall during the
    pulse), waits after the pulse, then disarms. Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = threading.Event()
        self._slot = None
        self._armed = False

    def arm(self, slot: int) -> None:
        with self._lock:
            self._armed, self._slot = True, slot
            self._seen.clear()

    def wait(self, timeout_s: float) -> bool:
        return self._seen.wait(timeout_s)

    def disarm(self) -> None:
        with self._lock:
            self._armed, self._slot = False, None

    def fired(self):
        """Called on a drop: the slot being dispensed (and the vend is told), or None."""
        with self._lock:
            if not self._armed:
                return None
            self._seen.set()
            return self._slot


class Settle:
    """Call ``fn`` in the loop thread once ``delay_ms`` have passed since the last :meth:`poke`.

    :meth:`poke` and :meth:`cancel` run in the loop thread; a ``threading.Timer``
    hands the check back to the loop with ``call_soon``."""

    def __init__(self, runtime, delay_ms: int, fn):
        self.runtime, self.delay, self.fn = runtime, delay_ms / 1000, fn
        self.last = 0.0
        self.timer = None

    def poke(self) -> None:
        self.last = time.monotonic()
        if self.timer is None:
            self._arm(self.delay)

    def _arm(self, seconds):
        self.timer = threading.Timer(seconds, self.runtime.call_soon, (self._check,))
        self.timer.daemon = True
        self.timer.start()

    def _check(self):
        if self.timer is None:
            return  # cancelled
        left = self.last + self.delay - time.monotonic()
        if left > 0:
            self._arm(left)
            return
        self.timer = None
        self.fn()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _ms() -> int:
    return int(time.time() * 1000)


# -- the notifier -------------------------------------------------------------------

class MachineNotifier(Actor):
    """Hardware inputs to events. Runs as a part of the agent's runtime (machine_agent.main.Agent)
    or alone under a Runtime; it has its own timers rather than ``@every`` jobs."""

    role = "machine"

    def __init__(self, inputs: Inputs, *, pin_factory=None, i2c_bus=None):
        self.inputs = inputs
        self.i2c_bus = i2c_bus  # an smbus2-like object, or a callable returning one (opened on first read)
        self.devices = []       # (spec, role, gpiozero device), for closing and for the simulator
        self.buttons = {}
        self.coin = self.door = self.drop = None
        try:
            from gpiozero import Button, DigitalInputDevice

            for slot, pin in sorted(inputs.buttons.pins.items()):
                self.buttons[slot] = self._device(Button, pin, f"button:{slot}", inputs.buttons.pull_up, pin_factory)
            for name in ("coin", "door", "drop"):
                part = getattr(inputs, name)
                if part is not None:
                    setattr(self, name, self._device(DigitalInputDevice, part.pin, name, part.pull_up, pin_factory))
        except Exception:
            self.close()
            raise
        self.drop_watch = DropWatch() if inputs.drop is not None else None
        self._button_debounce = {slot: Debounce(inputs.buttons.debounce_ms) for slot in self.buttons}
        self._coin_debounce = Debounce(inputs.coin.debounce_ms) if inputs.coin else None
        self._drop_debounce = Debounce(inputs.drop.debounce_ms) if inputs.drop else None
        self.coin_burst = self.coin_total = 0
        self.door_open = None      # the last door state published
        self.sensor_values = {}    # name -> (value, unit) of the last good reading
        self.sensor_errors = {}    # name -> the last error, while failing
        self._stop = threading.Event()
        self._sensor_thread = None
        self._coin_settle = self._door_settle = None

    def _device(self, cls, pin, role, pull_up, pin_factory):
        try:
            dev = cls(pin, pull_up=pull_up, pin_factory=pin_factory)
        except Exception as exc:
            raise ConfigError(f"input {role} on gpio:{pin}: {type(exc).__name__}: {exc}") from None
        self.devices.append((f"gpio:{pin}", role, dev))
        return dev

    def close(self):
        """Close every input device (teardown does this; also for a half-built agent)."""
        for _, _, dev in self.devices:
            try:
                dev.close()
            except Exception:
                log.exception("closing %r", dev)

    # -- lifecycle (loop thread) ------------------------------------------------

    def setup(self):
        counters = self.runtime.counters
        if self.buttons:
            counters["button_presses"] += 0
        for slot, dev in self.buttons.items():
            dev.when_pressed = lambda slot=slot: self._button_edge(slot, True)
            dev.when_released = lambda slot=slot: self._button_edge(slot, False)
        if self.coin is not None:
            counters["coin_pulses"] += 0
            self._coin_settle = Settle(self.runtime, self.inputs.coin.settle_ms, self._coin_flush)
            self.coin.when_activated = lambda: self._coin_edge(True)
            self.coin.when_deactivated = lambda: self._coin_edge(False)
        if self.door is not None:
            counters["door_changes"] += 0
            self._door_settle = Settle(self.runtime, self.inputs.door.debounce_ms, self._door_check)
            self.door.when_activated = self.door.when_deactivated = lambda: self.runtime.call_soon(
                self._door_settle.poke)
            self._door_check()  # the state at start
        if self.drop is not None:
            counters["drops"] += 0
            self.drop.when_activated = lambda: self._drop_edge(True)
            self.drop.when_deactivated = lambda: self._drop_edge(False)
        if self.inputs.sensors:
            counters["sensor_readings"] += 0
            counters["sensor_errors"] += 0
            self._sensor_thread = threading.Thread(target=self._sensor_loop, name=f"{self.name}-sensors",
                                                   daemon=True)
            self._sensor_thread.start()
        log.info("inputs: %s", ", ".join(f"{role}={spec}" for spec, role, _ in self.devices) or "none")

    def teardown(self):
        for _, _, dev in self.devices:  # no more callbacks: call_soon is gone after the runtime
            dev.when_activated = dev.when_deactivated = None
        for s in (self._coin_settle, self._door_settle):
            if s is not None:
                s.cancel()
        if self._coin_settle is not None and self.coin_burst:
            self._coin_flush()  # counted pulses are not lost at shutdown
        self._stop.set()
        if self._sensor_thread is not None:
            self._sensor_thread.join(10)
        self.close()

    def health(self):
        parts = []
        if self.door is not None and self.door_open is not None:
            parts.append("door open" if self.door_open else "door closed")
        for name, (value, unit) in sorted(self.sensor_values.items()):
            if name not in self.sensor_errors:
                parts.append(f"{name} {value} {unit}".rstrip())
        if self.sensor_errors:
            errs = "; ".join(f"sensor {n}: {e}" for n, e in sorted(self.sensor_errors.items()))
            return "degraded", (errs + ("; " + ", ".join(parts) if parts else ""))[:512]
        return "ok", ", ".join(parts) or None

    # -- gpiozero callbacks (gpiozero's threads): time, debounce, hand over ----------

    def _button_edge(self, slot, active):
        if self._button_debounce[slot].edge(active, time.monotonic()):
            self.runtime.call_soon(self._button, slot, _ms())

    def _coin_edge(self, active):
        if self._coin_debounce.edge(active, time.monotonic()):
            self.runtime.call_soon(self._coin_pulse)

    def _drop_edge(self, active):
        if self._drop_debounce.edge(active, time.monotonic()):
            slot = self.drop_watch.fired()  # tells a waiting vend at once, from this thread
            self.runtime.call_soon(self._drop, slot, _ms())

    # -- events (loop thread) ------------------------------------------------------

    def _button(self, slot, at_ms):
        self.runtime.counters["button_presses"] += 1
        log.info("button %d pressed", slot)
        self.publish(f"machine.{self.name}.button", {"slot": slot, "pressed_at": at_ms})

    def _coin_pulse(self):
        self.coin_burst += 1
        self.coin_total += 1
        self.runtime.counters["coin_pulses"] += 1
        if self.coin_burst >= 10_000:
            self._coin_flush()
        else:
            self._coin_settle.poke()

    def _coin_flush(self):
        if not self.coin_burst:
            return
        burst, self.coin_burst = self.coin_burst, 0
        log.info("coin: %d pulse(s), %d since start", burst, self.coin_total)
        self.publish(f"machine.{self.name}.coin", {"pulses": burst, "total": self.coin_total})

    def door_is_open(self) -> bool:
        return bool(self.door.pin.state) == (self.inputs.door.open_level == "high")

    def _door_check(self):
        is_open = self.door_is_open()
        if is_open == self.door_open:
            return  # bounced back: nothing changed
        if self.door_open is not None:
            self.runtime.counters["door_changes"] += 1
        self.door_open = is_open
        log.info("door %s", "open" if is_open else "closed")
        self.publish(f"machine.{self.name}.door", {"open": is_open})

    def _drop(self, slot, at_ms):
        self.runtime.counters["drops"] += 1
        log.info("drop sensor: an item fell%s", f" (slot {slot})" if slot is not None else " (no vend running)")
        self.publish(f"machine.{self.name}.drop", {"slot": slot, "at": at_ms})

    # -- I2C sensors (their own thread; results to the loop) ---------------------

    def _bus(self):
        if callable(self.i2c_bus):
            self.i2c_bus = self.i2c_bus()
        if self.i2c_bus is None:
            raise ConfigError("no I2C bus configured")
        return self.i2c_bus

    def _sensor_loop(self):
        due = {s.name: 0.0 for s in self.inputs.sensors}
        while not self._stop.is_set():
            for s in self.inputs.sensors:
                if due[s.name] <= time.monotonic():
                    due[s.name] = time.monotonic() + s.interval_s
                    try:
                        value, error = read_sensor(self._bus(), s), None
                    except Exception as exc:
                        value, error = None, f"{type(exc).__name__}: {exc}"[:200]
                    self.runtime.call_soon(self._sensor_result, s, value, error)
            self._stop.wait(max(0.0, min(due.values()) - time.monotonic()))

    def _sensor_result(self, sensor, value, error):
        if error is not None:
            self.runtime.counters["sensor_errors"] += 1
            if self.sensor_errors.get(sensor.name) != error:
                log.error("sensor %s (i2c %#04x): %s", sensor.name, sensor.address, error)
            self.sensor_errors[sensor.name] = error
            return
        if self.sensor_errors.pop(sensor.name, None) is not None:
            log.info("sensor %s reads again", sensor.name)
        self.runtime.counters["sensor_readings"] += 1
        self.sensor_values[sensor.name] = (value, sensor.unit)
        self.publish(f"machine.{self.name}.sensor", {"name": sensor.name, "value": value, "unit": sensor.unit})
