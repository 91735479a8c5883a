"""The key contracts, written once, run on every adapter (as pyzmq's auth tests do).

Each contract is an abstract test class (not collected: its name does not start
with ``Test``); a subclass per adapter provides one fixture that drives the
system through a small interface, and inherits the tests:

* :class:`SaleContract` -- a sale from the press to the vend ack, with BusinessMgr
  (fixture ``sale``: a :class:`SaleAdapter`). Subclasses:
  tests/test_business_mgr_unit.py (the fake runtime, SQLite and PostgreSQL) and
  tests/test_contracts_bus.py (the real processes, both databases).
* :class:`ExactlyOnceContract` -- the agent's exactly-once: a vend command
  replayed (the same frames) or redelivered (a new message, the same id) pulses
  the relay at most once, across a restart of the agent (fixture ``machine``: an
  :class:`AgentAdapter`). Subclasses: tests/test_machine_mgr_unit.py (the fake
  runtime) and tests/test_contracts_bus.py (MachineMgr in a real Runtime, the
  broker and the Vault as processes).
"""

from __future__ import annotations

import os

PRICE = "100000.00"  # CAD per BTC: 1 CAD = 1000 sats
COLA, COLA_SATS = 1, 2000  # slot 1 of vm1: 2.00 CAD, below the zero-conf limit


class SaleAdapter:
    """What a sale test does, on some runtime. Bodies are plain dicts as a receiver decodes them."""

    def press(self, slot: int) -> dict:
        """vm1's button: returns the invoice.opened body."""
        raise NotImplementedError

    def pay(self, address: str, sats: int) -> None:
        """The chain notifier's chain.tx.seen for one output to ``address``."""
        raise NotImplementedError

    def vend_command(self, invoice: str) -> dict:
        """The next cmd.machine.vm1.vend body for ``invoice`` (waiting for it if need be)."""
        raise NotImplementedError

    def ack(self, command: dict, status: str = "vended", reason: str | None = None) -> None:
        """vm1's machine.vm1.vend.ack for ``command``."""
        raise NotImplementedError

    def changed(self, invoice: str, state: str) -> dict:
        """The invoice.changed body taking ``invoice`` to ``state`` (waiting for it if need be)."""
        raise NotImplementedError

    def stored(self, invoice: str) -> dict:
        """What the database says of ``invoice`` (actors.business_mgr.invoice)."""
        raise NotImplementedError


class SaleContract:
    def test_a_sale_from_the_press_to_the_vend_ack(self, sale: SaleAdapter):
        opened = sale.press(COLA)
        assert (opened["machine"], opened["slot"], opened["product"]) == ("vm1", COLA, "Cola")
        assert (opened["sats"], opened["cad_per_btc"], opened["zero_conf"]) == (COLA_SATS, PRICE, True)
        assert opened["uri"] == f"bitcoin:{opened['address']}?amount=0.00002000"
        sale.pay(opened["address"], COLA_SATS)
        paid = sale.changed(opened["invoice"], "paid")
        assert paid["received_sats"] == COLA_SATS
        cmd = sale.vend_command(opened["invoice"])
        assert cmd["slot"] == COLA and cmd["invoice"] == opened["invoice"] and len(cmd["id"]) == 16
        sale.ack(cmd)
        done = sale.changed(opened["invoice"], "vended")
        assert (done["vended"], done["items"], done["credit_sats"], done["received_sats"]) == (1, 1, 0, COLA_SATS)
        stored = sale.stored(opened["invoice"])
        assert stored["state"] == "vended" and stored["refund_sats"] == 0
        assert [(v["id"], v["state"]) for v in stored["vends"]] == [(cmd["id"].hex(), "vended")]

    def test_an_unanswered_vend_is_resent_with_the_same_id_and_a_late_ack_changes_nothing(self, sale):
        opened = sale.press(COLA)
        sale.pay(opened["address"], COLA_SATS)
        first = sale.vend_command(opened["invoice"])
        second = sale.vend_command(opened["invoice"])  # no answer: sent again
        assert second["id"] == first["id"]
        sale.ack(second)
        sale.ack(first)  # the duplicate answer
        sale.changed(opened["invoice"], "vended")
        stored = sale.stored(opened["invoice"])
        assert stored["vended"] == 1 and len(stored["vends"]) == 1 and stored["vends"][0]["attempts"] >= 2


class AgentAdapter:
    """What an exactly-once test does to vm1's MachineMgr, on some runtime."""

    def now(self) -> int:
        """Unix seconds by the agent's trusted clock."""
        raise NotImplementedError

    def send(self, command: dict) -> None:
        """business_mgr sends ``command`` on cmd.machine.vm1.vend (a new message each time)."""
        raise NotImplementedError

    def replay(self) -> None:
        """The exact frames of the last message sent, delivered again (a replay on the wire)."""
        raise NotImplementedError

    def ack(self, command_id: bytes) -> dict:
        """The next machine.vm1.vend.ack body for ``command_id`` (waiting for it)."""
        raise NotImplementedError

    def restart(self) -> None:
        """Stop the agent cleanly and start a new one on the same journal."""
        raise NotImplementedError

    def pulses(self, slot: int) -> int:
        """How many times the slot's relay has been on, over every run of the agent."""
        raise NotImplementedError


class ExactlyOnceContract:
    def command(self, machine: AgentAdapter, slot=1, invoice="inv-1") -> dict:
        return {"id": os.urandom(16), "expires": machine.now() + 60, "slot": slot, "invoice": invoice,
                "pulse_ms": 20}

    def test_a_vend_replayed_or_redelivered_pulses_once_across_a_restart(self, machine: AgentAdapter):
        cmd = self.command(machine)
        machine.send(cmd)
        first = machine.ack(cmd["id"])
        assert (first["status"], first["slot"], first["pulsed_ms"]) == ("vended", 1, 20)
        assert machine.pulses(1) == 1
        machine.replay()        # the same frames again
        machine.send(cmd)       # a retry: a new message, the same command id
        assert machine.ack(cmd["id"]) == first
        machine.restart()
        machine.send(cmd)
        assert machine.ack(cmd["id"]) == first
        assert machine.pulses(1) == 1

    def test_a_refused_command_stays_refused_across_a_restart(self, machine: AgentAdapter):
        cmd = self.command(machine, slot=9, invoice="inv-unknown")
        machine.send(cmd)
        first = machine.ack(cmd["id"])
        assert (first["status"], first["reason"]) == ("refused", "unknown slot 9")
        machine.restart()
        machine.send(cmd)
        assert machine.ack(cmd["id"]) == first
        ok = self.command(machine, slot=1, invoice="inv-2")  # the positive control, after the restart
        machine.send(ok)
        assert machine.ack(ok["id"])["status"] == "vended" and machine.pulses(1) == 1
