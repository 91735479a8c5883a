"""`dctrl sim press|coin|door|drop|jam|pins MACHINE ...`: drive a simulated vending machine.

A machine agent running with mock pins (``make run`` starts ``vm1`` that way)
listens on ``ipc://STATE_DIR/sim.sock`` (machine_agent/simctl.py has the
protocol). These commands find it at ``HOME/agents/MACHINE/<state_dir>/sim.sock``
(the state_dir of that folder's agent.toml, ``state`` by default), or at
``--socket PATH``, send one request and print the answer. The agent then
publishes what the hardware would have caused (``machine.vm1.button`` for a
press), through the real gpiozero callbacks.
"""

from __future__ import annotations

import datetime
import json
import os
import tomllib
from pathlib import Path

from proto.errors import DctrlError


def socket_for(args) -> Path:
    if getattr(args, "socket", None):
        return Path(args.socket)
    home = Path(getattr(args, "home", None) or os.environ.get("DCTRL_HOME") or "var")
    folder = home / "agents" / args.machine
    state = "state"
    try:
        with open(folder / "agent.toml", "rb") as f:
            state = tomllib.load(f).get("state_dir", "state")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return folder / state / "sim.sock"


def request(path: Path, req: dict, *, machine: str, timeout: float) -> dict:
    """One request to a simulated machine's control socket; DctrlError if it does not answer."""
    import msgpack
    import zmq

    hint = "is `make run` up? (only an agent with mock pins has this socket)"
    if not path.exists():
        raise DctrlError(f"no simulated machine {machine}: {path} does not exist; {hint}")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        sock.connect(f"ipc://{path.absolute()}")
        sock.send(msgpack.packb(req, use_bin_type=True))
        if not sock.poll(int(timeout * 1000)):
            raise DctrlError(f"no answer from simulated machine {machine} at {path} within {timeout:g} s; {hint}")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close(0)
        ctx.term()
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise DctrlError(f"{machine} refused: {reply.get('error') if isinstance(reply, dict) else reply!r}")
    return reply


def _call(args, req, extra_s=0.0) -> dict:
    return request(socket_for(args), req, machine=args.machine, timeout=args.timeout + extra_s)


def cmd_press(args):
    def press():
        r = _call(args, {"op": "press", "slot": args.slot, "hold_ms": args.hold_ms}, args.hold_ms / 1000)
        print(f"pressed button {r['slot']} on {args.machine} ({r['pin']}, {args.hold_ms} ms)", flush=True)

    if not args.wait:
        press()
        return 0
    _call(args, {"op": "ping"})  # the simulated machine is there: fail fast, before joining the bus
    from actors.runtime import Runtime
    from keys.home import Home

    waiter = _invoice_waiter(args.machine, args.slot, press, args.wait)
    Runtime(waiter, Home(getattr(args, "home", None)).bus_settings(args.as_name)).run(handle_signals=True)
    if waiter.error is not None:
        raise waiter.error
    if waiter.answer is None:
        print(f"no invoice within {args.wait:g} s: is business_mgr running? (dctrl status)")
        return 1
    topic, b = waiter.answer
    if topic == "invoice.refused":
        print(f"no invoice: {b['reason']}")
        return 1
    from actors.business_data.models import format_cad
    from actors.business_mgr.models import btc

    amount = btc(b["sats"])
    print(f"invoice {b['invoice']}: {b['product']}, {format_cad(b['price_cents'])} CAD = {amount} BTC "
          f"({b['sats']} sats at {b['cad_per_btc']} CAD/BTC)")
    print(f"  pay to {b['address']} before {datetime.datetime.fromtimestamp(b['expires']):%H:%M:%S} ({b['uri']})")
    print(f"  simulate the payment: dctrl sim pay {b['address']} {amount}")
    return 0


def _invoice_waiter(machine, slot, press, wait):
    """An actor that presses once it can hear the answer (it holds a token, so its
    subscriptions are in place), then waits for business_mgr's invoice.opened or
    invoice.refused for that machine and slot."""
    import time

    from actors.runtime import Actor, every, on

    class InvoiceWaiter(Actor):
        def __init__(self):
            self.deadline = None
            self.joined_by = time.monotonic() + wait  # no token by then: the bus is not up
            self.answer = None
            self.error = None

        @every(0.05)
        def tick(self):
            if self.deadline is None and time.monotonic() > self.joined_by:
                self.error = DctrlError(f"could not join the bus within {wait:g} s (is the broker up? "
                                        "dctrl status); the button was not pressed")
                self.runtime.stop()
            elif self.deadline is None and self.runtime.proxy.token_valid():
                self.deadline = time.monotonic() + wait
                try:
                    press()
                except DctrlError as exc:
                    self.error = exc
                    self.runtime.stop()
            elif self.deadline is not None and time.monotonic() > self.deadline:
                self.runtime.stop()

        @on("invoice.opened")
        def opened(self, msg):
            self.heard(msg)

        @on("invoice.refused")
        def refused(self, msg):
            self.heard(msg)

        def heard(self, msg):
            if self.deadline is not None and (msg.body["machine"], msg.body["slot"]) == (machine, slot):
                self.answer = (msg.topic, msg.body)
                self.runtime.stop()

    return InvoiceWaiter()


def cmd_coin(args):
    r = _call(args, {"op": "coin", "pulses": args.n, "pulse_ms": args.pulse_ms, "gap_ms": args.gap_ms},
              args.n * (args.pulse_ms + args.gap_ms) / 1000)
    print(f"sent {r['pulses']} coin pulse(s) on {args.machine} ({r['pin']})")


def cmd_door(args):
    r = _call(args, {"op": "door", "open": args.state == "open"})
    print(f"door of {args.machine} {'opened' if r['open'] else 'closed'} ({r['pin']})")


def cmd_drop(args):
    r = _call(args, {"op": "drop"})
    print(f"drop sensor of {args.machine} triggered ({r['pin']})")


def cmd_jam(args):
    r = _call(args, {"op": "jam", "vends": args.n})
    print(f"the next {r['jammed']} vend(s) on {args.machine} drop nothing"
          + ("" if r["simulate"] else " (note: [drop] simulate is off: no drop is simulated anyway)"))


def _clock(t_us) -> str:
    return datetime.datetime.fromtimestamp(t_us / 1e6).strftime("%H:%M:%S.%f")[:-3]


def cmd_pins(args):
    r = _call(args, {"op": "pins"})
    if args.json:
        print(json.dumps(r, sort_keys=True))
        return
    print(f"{'PIN':<9} {'ROLE':<10} {'ACTIVE':<6} {'NOW':<6} {'PULSES':>6}  LAST ACTIVE")
    for p in r["pins"]:
        now = "active" if p["level"] == p["active_high"] else "idle"
        last = "-"
        if p["periods"]:
            start, end = p["periods"][-1]
            last = f"{_clock(start)} " + (f"for {(end - start) / 1000:.1f} ms" if end is not None else "(still active)")
        print(f"{p['spec']:<9} {p['role']:<10} {'high' if p['active_high'] else 'low':<6} {now:<6} "
              f"{len(p['periods']):>6}  {last}")
