"""Relays that dispense: a GPIO pin (gpiozero) or one bit of a PCF8574-style I2C port.

Both have ``pulse(ms)``: on, wait, off -- and always off again (``finally``),
even if the wait is interrupted. ``make_relay("gpio:17" | "i2c:0x20:3", ...)``
builds one from the agent's config. ``pins = "mock"`` uses gpiozero's
``MockFactory`` (no hardware; pin states and times are recorded).
"""

from __future__ import annotations

import threading
import time

from proto.errors import ConfigError


class Relay:
    """A relay: subclasses provide on() and off(); pulse() is always off again at the end."""

    def pulse(self, ms: int) -> None:
        try:
            self.on()
            time.sleep(ms / 1000)  # the relay's on-time itself, on the vend worker thread
        finally:
            self.off()


class GpioRelay(Relay):
    """A relay on a GPIO pin; ``active_high=False`` for boards that switch on a low level."""

    def __init__(self, pin, active_high=True, pin_factory=None):
        from gpiozero import OutputDevice

        self.spec = f"gpio:{pin}"
        self.device = OutputDevice(pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)

    def on(self):
        self.device.on()

    def off(self):
        self.device.off()

    def close(self):
        self.device.close()


_port_locks: dict = {}
_port_locks_guard = threading.Lock()


def _port_lock(bus, address) -> threading.Lock:
    with _port_locks_guard:
        return _port_locks.setdefault((id(bus), address), threading.Lock())


class I2CRelay(Relay):
    """One bit of an 8-bit PCF8574-style port, through an smbus2-like ``bus``
    (``read_byte(addr)``, ``write_byte(addr, value)``). Read-modify-write keeps
    the other seven bits; relays sharing a chip share a lock. Most such relay
    boards are active-low, hence the default."""

    def __init__(self, bus, address: int, bit: int, active_high=False):
        if not 0 <= bit <= 7:
            raise ConfigError(f"I2C relay bit {bit} is not 0..7")
        self.bus, self.address, self.bit, self.active_high = bus, address, bit, active_high
        self.spec = f"i2c:{address:#04x}:{bit}"
        self._lock = _port_lock(bus, address)
        self.off()

    def _set(self, active: bool) -> None:
        level = active == self.active_high  # True: drive the bit high
        mask = 1 << self.bit
        with self._lock:
            port = self.bus.read_byte(self.address) & 0xFF
            value = (port | mask) if level else (port & ~mask & 0xFF)
            self.bus.write_byte(self.address, value)

    def on(self):
        self._set(True)

    def off(self):
        self._set(False)

    def close(self):
        pass


def pin_factory_for(pins: str):
    """``"mock"`` -> a gpiozero MockFactory; ``"gpio"`` -> None (gpiozero's default factory)."""
    if pins == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if pins == "gpio":
        return None
    raise ConfigError(f"pins must be 'mock' or 'gpio', not {pins!r}")


def make_relay(spec: str, *, active_high=None, pin_factory=None, i2c_bus=None):
    """``gpio:PIN`` (active-high by default) or ``i2c:ADDR:BIT`` (active-low by default).

    ``i2c_bus`` is an smbus2-like object or a callable returning one (opened on first use).
    """
    kind, _, rest = spec.partition(":")
    try:
        if kind == "gpio":
            return GpioRelay(int(rest, 0), active_high=True if active_high is None else active_high,
                             pin_factory=pin_factory)
        if kind == "i2c":
            addr, bit = rest.split(":")
            if i2c_bus is None:
                raise ConfigError(f"relay {spec}: no I2C bus configured")
            bus = i2c_bus() if callable(i2c_bus) else i2c_bus
            return I2CRelay(bus, int(addr, 0), int(bit, 0),
                            active_high=False if active_high is None else active_high)
    except ValueError as exc:
        raise ConfigError(f"bad relay {spec!r}: {exc}") from None
    raise ConfigError(f"bad relay {spec!r}: expected gpio:PIN or i2c:ADDR:BIT")
