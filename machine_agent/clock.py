"""Trusted clocks for the agent: unix seconds, or None while the clock is not synchronised.

MachineMgr judges a command's ``expires`` against a *trusted* clock (see
``machine_agent/mgr.py``): a callable returning unix seconds, or None while
the time cannot be trusted, in which case it refuses every command ("clock not
synchronised") rather than guessing. A Raspberry Pi has no real-time clock: it
boots with the time it shut down at (fake-hwclock) or 1970 until NTP answers.

Two kinds, chosen with :func:`make_clock`:

``"system"``
    :func:`system_clock`: ``time.time()``, assumed synchronised. The same as
    ``machine_agent.mgr.system_clock``, today's default. For machines with a
    real-time clock, or where the operator vouches for the time.

``"kernel"``
    :func:`kernel_sync_clock`: ``time.time()`` only while the Linux kernel says
    its clock is synchronised, else None. NTP daemons (systemd-timesyncd,
    chrony, ntpd) tell the kernel when they have disciplined the clock, by
    clearing ``STA_UNSYNC`` through adjtimex(2); until then, and again when no
    daemon has updated it for long enough that the kernel's estimated error
    passes 16 s (about 9 hours), ``adjtimex`` returns ``TIME_ERROR``. Reading
    it (``modes = 0``) needs no privileges and costs one system call, so it is
    asked on every call: trust is lost as soon as the kernel loses it.

Meant to be wired by the agent's config (``clock = "system" | "kernel"`` in
agent.toml; not wired yet)::

    MachineMgr(slots, journal_path=..., trusted_clock=make_clock(machine.clock))

Failure behaviour (decided here; the safe side is to refuse to vend):

* :func:`make_clock` ``("kernel")`` on a system without ``adjtimex`` (not
  Linux, no libc symbol) raises :class:`~proto.errors.ConfigError` at start:
  a configuration that can never vend should fail loudly, not refuse every
  command quietly.
* If the call fails later (``-1``), or returns a state this module does not
  know, :func:`kernel_sync_clock` answers None (not synchronised) and logs
  the reason once: the agent refuses until the kernel answers again.

Standard library only (the agent's light import rule): ctypes, no peewee.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time

from proto.errors import ConfigError

log = logging.getLogger(__name__)

# Clock states returned by adjtimex(2) (<sys/timex.h>).
TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT, TIME_ERROR = range(6)
SYNCHRONISED_STATES = frozenset((TIME_OK, TIME_INS, TIME_DEL, TIME_OOP, TIME_WAIT))
STA_UNSYNC = 0x0040  # status bit: the clock is not synchronised
STA_NANO = 0x2000  # status bit: time.tv_usec holds nanoseconds, not microseconds

KINDS = ("system", "kernel")


class Timeval(ctypes.Structure):
    # struct timeval as adjtimex's ABI has it: time_t and suseconds_t are C longs on every
    # Linux ABI whose plain ``adjtimex`` symbol we call (the 64-bit-time variant of 32-bit
    # glibc is a different symbol, __adjtimex64, which we do not use).
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """glibc's ``struct timex`` (<bits/timex.h>), including its 11 reserved ints: the kernel
    copies the whole structure back, so it must be at least that large."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),    # µs
        ("esterror", ctypes.c_long),    # µs
        ("status", ctypes.c_int),       # STA_* bits
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", Timeval),
        ("tick", ctypes.c_long),        # µs between clock ticks
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def is_synchronised(state: int) -> bool:
    """The decision, from adjtimex's return value alone: TIME_OK..TIME_WAIT mean the kernel
    considers its clock synchronised (a leap second may be pending or in progress);
    TIME_ERROR means it does not; -1 (the call failed) and anything unknown are not trusted."""
    return state in SYNCHRONISED_STATES


_adjtimex = None


def _libc_adjtimex():
    """libc's adjtimex, loaded once; raises OSError where there is none."""
    global _adjtimex
    if _adjtimex is None:
        if not sys.platform.startswith("linux"):
            raise OSError(f"adjtimex(2) is Linux only (this is {sys.platform})")
        try:
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols include libc's
            fn = libc.adjtimex
        except (OSError, AttributeError):
            name = ctypes.util.find_library("c")
            if name is None:
                raise OSError("no C library found") from None
            try:
                fn = ctypes.CDLL(name, use_errno=True).adjtimex
            except AttributeError:
                raise OSError(f"{name} has no adjtimex") from None
        fn.argtypes = [ctypes.POINTER(Timex)]
        fn.restype = ctypes.c_int
        _adjtimex = fn
    return _adjtimex


def read_timex() -> tuple[int, Timex]:
    """Ask the kernel (read only: ``modes = 0``); returns (clock state, the filled struct).
    Raises OSError if the call is unavailable or fails."""
    tx = Timex()  # zeroed: modes = 0 changes nothing
    state = _libc_adjtimex()(ctypes.byref(tx))
    if state == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return state, tx


_warned: str | None = None


def kernel_sync_clock() -> float | None:
    """``time.time()`` while the kernel says the clock is synchronised, else None."""
    global _warned
    try:
        state, _ = read_timex()
    except OSError as exc:
        reason = f"cannot ask the kernel whether the clock is synchronised ({exc}); refusing to trust it"
    else:
        if is_synchronised(state):
            _warned = None
            return time.time()
        reason = ("the kernel says the clock is not synchronised (no NTP yet)" if state == TIME_ERROR
                  else f"adjtimex returned unknown clock state {state}; not trusting the clock")
    if _warned != reason:  # once per distinct reason, not on every command
        _warned = reason
        log.warning("%s", reason)
    return None


def system_clock() -> float | None:
    """The system clock, assumed synchronised (``machine_agent.mgr.system_clock``)."""
    return time.time()


def make_clock(kind: str):
    """The trusted clock of a kind: ``"system"`` or ``"kernel"``. Raises ConfigError for an
    unknown kind, or for ``"kernel"`` where adjtimex(2) cannot be called."""
    if kind == "system":
        return system_clock
    if kind == "kernel":
        try:
            read_timex()
        except OSError as exc:
            raise ConfigError(f'clock = "kernel" needs the Linux adjtimex(2) call: {exc}; '
                              'use clock = "system" here') from None
        return kernel_sync_clock
    raise ConfigError(f"unknown clock {kind!r}: one of {', '.join(KINDS)}")
