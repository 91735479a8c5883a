"""MachineMgr: the vend executor on a vending machine.

``cmd.machine.NAME.vend`` arrives already verified by the runtime: signature,
a token whose publish grant covers the topic (so only an identity granted
``cmd.machine.NAME`` -- business_mgr -- can command this machine), and a fresh
(boot, seq), persisted through ``BusSettings.journal_file``. MachineMgr then:

1. journals ``received`` (:mod:`machine_agent.journal`), and answers an id it
   has finished with the same ack again -- never a second pulse;
2. refuses a command that has expired by the *trusted* clock, or whose slot is
   not configured;
3. queues it for the single worker thread: one item at a time, and the relay
   pulse never blocks the actor loop;
4. the worker re-checks expiry, journals ``actuating`` (fsynced) BEFORE the
   relay turns on, pulses the slot's relay (the command's ``pulse_ms`` or the
   slot's), journals ``done`` and publishes ``machine.NAME.vend.ack``.

With a drop sensor (``drop``: a :class:`machine_agent.notifier.DropWatch`,
armed before the relay turns on, so an item falling during the pulse counts),
the worker waits after the pulse up to ``drop_timeout_ms`` for it: a drop
acks ``vended`` with ``dropped: true``; none acks ``failed``, ``no drop
detected``, ``dropped: false``, with ``pulsed_ms`` (the relay DID pulse, so a
person must look; the id is done and is never pulsed again). Without a drop
sensor ``dropped`` is None and the ack is as before. ``after_pulse(slot)``, if
set, is called on the worker right after each pulse (the simulated machine
drops an item from it).

The trusted clock is a callable returning unix seconds, or None while the
clock is not synchronised. The default is the system clock (assumed NTP-
synced). On a Pi without a real-time clock, pass one that returns None until
NTP (or the Vault's signed time) has synchronised it: an unsynchronised agent
refuses every command ("clock not synchronised") rather than guessing, and
does not journal that refusal, so the retried command is judged again later.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass

from actors.runtime import Actor

from .journal import INTERRUPTED, CommandJournal
from .relays import make_relay

log = logging.getLogger(__name__)

# Tests set DCTRL_CRASH_AT to die like kill -9 at the worst moments: "vend_journaled" (the
# command is journaled actuating, the relay not yet on) or "vend_pulsed" (the relay has
# pulsed, nothing journaled done, no ack sent).
CRASH_AT = os.environ.get("DCTRL_CRASH_AT")

UNSYNCED = "clock not synchronised; refusing to act"
NO_DROP = "no drop detected"


@dataclass(frozen=True)
class Slot:
    relay: str                   # "gpio:17" or "i2c:0x20:3"
    active_high: bool | None = None  # None: the relay kind's default (gpio high, i2c low)
    pulse_ms: int = 500


def system_clock() -> float | None:
    """The default trusted clock: the system clock, assumed synchronised (NTP)."""
    return time.time()


class MachineMgr(Actor):
    role = "machine"

    def __init__(self, slots: dict[int, Slot], *, journal_path, pin_factory=None, i2c_bus=None,
                 trusted_clock=system_clock, drop=None, drop_timeout_ms=2000):
        self.slot_config = dict(slots)
        self.relays = {n: make_relay(s.relay, active_high=s.active_high, pin_factory=pin_factory, i2c_bus=i2c_bus)
                       for n, s in self.slot_config.items()}
        # The journal forgets done commands only once they have expired by the trusted clock.
        self.journal = CommandJournal(journal_path, clock=trusted_clock)
        self.trusted_clock = trusted_clock
        self.queue: queue.Queue = queue.Queue()
        self.inflight: set[bytes] = set()  # ids queued or being dispensed (loop thread only)
        self.worker: threading.Thread | None = None
        self.interrupted = list(self.journal.interrupted)
        self.drop = drop                    # a DropWatch, or None: no drop sensor
        self.drop_timeout_ms = drop_timeout_ms
        self.after_pulse = None             # called on the worker after each pulse (the simulator's hook)

    # -- lifecycle ------------------------------------------------------------

    def setup(self):
        self.runtime.add_handler(f"cmd.machine.{self.name}.vend", self.vend)
        # Commands cut off while their relay was on: closed as failed, never pulsed again.
        for hid in self.interrupted:
            cmd = self.journal.command.get(hid) or {}
            if cmd.get("slot") is None:
                continue  # answered when the command is retried
            ack = self._ack(bytes.fromhex(hid), "failed", cmd["slot"], cmd.get("invoice") or "", INTERRUPTED)
            self.journal.done(ack)
            self.publish(self._ack_topic, ack)
        self.worker = threading.Thread(target=self._work, name=f"{self.name}-vend", daemon=True)
        self.worker.start()
        log.info("machine %s ready: slots %s", self.name,
                 ", ".join(f"{n}={r.spec}" for n, r in sorted(self.relays.items())) or "none")

    def teardown(self):
        # Queued commands that have not started are dropped: only "received" is journaled,
        # nothing was actuated, and the sender retries until acked.
        try:
            while True:
                item = self.queue.get_nowait()
                if item is not None:
                    self.inflight.discard(item[0])
        except queue.Empty:
            pass
        self.queue.put(None)
        if self.worker is not None:
            self.worker.join(30)
        for r in self.relays.values():
            r.close()
        self.journal.close()

    def health(self):
        if self.interrupted:
            return "degraded", f"{len(self.interrupted)} vend(s) interrupted during actuation; check the machine"
        return "ok", None

    # -- the handler (loop thread) ------------------------------------------

    @property
    def _ack_topic(self) -> str:
        return f"machine.{self.name}.vend.ack"

    @staticmethod
    def _ack(cid, status, slot, invoice, reason=None, pulsed_ms=None, dropped=None) -> dict:
        return {"id": cid, "status": status, "slot": slot, "invoice": invoice, "reason": reason,
                "pulsed_ms": pulsed_ms, "dropped": dropped}

    def _finish(self, ack: dict) -> None:
        self.journal.done(ack)
        self.publish(self._ack_topic, ack)

    def vend(self, msg):
        """cmd.machine.NAME.vend {id, expires, slot, invoice, pulse_ms} -> machine.NAME.vend.ack"""
        b = msg.body
        cid, slot, invoice = b["id"], b["slot"], b["invoice"]
        status = self.journal.status(cid)
        if status == "done":
            log.info("vend %s retried: same answer", cid.hex())
            self.publish(self._ack_topic, self.journal.ack(cid))
            return
        if cid in self.inflight:
            return  # being dispensed: its one ack answers the retry too
        if status == "actuating":  # interrupted with no slot recorded: close it now
            self._finish(self._ack(cid, "failed", slot, invoice, INTERRUPTED))
            return
        if status is None:
            self.journal.received(cid, slot, invoice, b["pulse_ms"], expires=b["expires"])
        now = self.trusted_clock()
        if now is None:
            self.publish(self._ack_topic, self._ack(cid, "refused", slot, invoice, UNSYNCED))
            return
        if b["expires"] < now:
            self._finish(self._ack(cid, "refused", slot, invoice, "expired"))
            return
        if slot not in self.relays:
            self._finish(self._ack(cid, "refused", slot, invoice, f"unknown slot {slot}"))
            return
        ms = b["pulse_ms"] or self.slot_config[slot].pulse_ms
        self.inflight.add(cid)
        self.queue.put((cid, slot, invoice, ms, b["expires"]))

    # -- the worker (one thread: one item at a time) ------------------------

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self._dispense(*item)
            except Exception:
                log.exception("vend %s failed", item[0].hex())
            finally:
                self.runtime.call_soon(self.inflight.discard, item[0])

    def _dispense(self, cid, slot, invoice, ms, expires):
        now = self.trusted_clock()
        if now is None:
            self.publish(self._ack_topic, self._ack(cid, "refused", slot, invoice, UNSYNCED))
            return
        if expires < now:  # expired while waiting in the queue
            self._finish(self._ack(cid, "refused", slot, invoice, "expired"))
            return
        self.journal.actuating(cid, slot, invoice, ms, expires)  # fsynced before the relay turns on
        if CRASH_AT == "vend_journaled":
            os._exit(137)
        if self.drop is not None:
            self.drop.arm(slot)  # before the relay turns on: an item may fall during the pulse
        log.info("vend %s invoice %s: relay %s (slot %d) on for %d ms", cid.hex(), invoice,
                 self.relays[slot].spec, slot, ms)
        try:
            self.relays[slot].pulse(ms)
            if CRASH_AT == "vend_pulsed":
                os._exit(137)
        except Exception as exc:
            log.exception("relay for slot %d failed", slot)
            ack = self._ack(cid, "failed", slot, invoice, f"relay error: {exc}; check the machine"[:512])
        else:
            ack = self._ack(cid, "vended", slot, invoice, pulsed_ms=ms)
            if self.after_pulse is not None:
                try:
                    self.after_pulse(slot)
                except Exception:
                    log.exception("after_pulse hook failed")
            if self.drop is not None:
                if self.drop.wait(self.drop_timeout_ms / 1000):
                    ack["dropped"] = True
                else:
                    log.error("vend %s slot %d: relay pulsed but no drop within %d ms; check the machine",
                              cid.hex(), slot, self.drop_timeout_ms)
                    ack = self._ack(cid, "failed", slot, invoice, NO_DROP, pulsed_ms=ms, dropped=False)
        finally:
            if self.drop is not None:
                self.drop.disarm()
        self._finish(ack)
        log.info("vend %s slot %d invoice %s: %s", cid.hex(), slot, invoice, ack["status"])
