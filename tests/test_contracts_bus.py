"""The key contracts (tests/contracts.py) on the real bus: the same tests as on the fake runtime.

* The sale: the broker, the Vault, BusinessData and BusinessMgr as processes
  (SQLite and PostgreSQL), the other parties as real bus clients with their own
  identities (tests/test_business_mgr.py's chain stand-in and helpers).
* The agent's exactly-once: MachineMgr in a real Runtime thread as vm1 with
  MockFactory pins (tests/test_machine_mgr.py's Agent), the broker and the
  Vault as processes, business_mgr's commands from a real client; a replay is
  the very frames sent again (the replay window refuses it), a redelivery a new
  message with the same command id (the journal answers it).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests import test_business_mgr as bm
from tests import test_machine_mgr as mm
from tests.contracts import AgentAdapter, ExactlyOnceContract, SaleAdapter, SaleContract
from tests.harness import BusClient, Network, dctrl, home_on, new_home, wait_for


# -- the sale ----------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sales_home(request, tmp_path_factory):
    with home_on(request.param, tmp_path_factory.mktemp("contract_sale") / "home", "contract") as h:
        yield h


@pytest.fixture(scope="module")
def sales_parties(sales_home):
    home = sales_home
    net = Network(home).start_healthy("broker", "vault", "business_data")
    made = []
    try:
        dctrl(home, "machines", "add", "vm1")
        dctrl(home, "slots", "set", "vm1", str(bm.COLA), "--product", "Cola", "--price-cad", "2.00")
        dctrl(home, "slots", "set", "vm1", str(bm.TV), "--product", "Tiny TV", "--price-cad", "50.00")
        dctrl(home, "policy", "set", "confirmations_required", "2")
        bm.set_config(home, max_invoices_per_minute=1000)
        observer = BusClient(home, "admin", prefixes=["invoice", "health.business_mgr", "cmd.machine.vm1"])
        made.append(observer)
        net.start("business_mgr")
        observer.expect(lambda d: d.message is not None and d.message.topic == "health.business_mgr",
                        timeout=20, what="business_mgr up")
        chain = bm.Party(home, "chain_notifier", bm.ChainStandIn())
        made.append(chain)
        machine = BusClient(home, "vm1", prefixes=["cmd.machine.vm1"])
        prices = BusClient(home, "price_notifier")
        made += [machine, prices]
        yield home, chain, machine, observer, prices
    finally:
        for party in reversed(made):
            party.close()
        net.close()


class BusSale(SaleAdapter):
    def __init__(self, home, chain, machine, observer):
        self.home, self.chain, self.machine, self.observer = home, chain, machine, observer

    def press(self, slot):
        return bm.press(self.machine, self.observer, slot)

    def pay(self, address, sats):
        bm.pay(self.chain, address, sats)

    def vend_command(self, invoice):
        return bm.vend_command(self.machine, invoice).message.body

    def ack(self, command, status="vended", reason=None):
        self.machine.publish("machine.vm1.vend.ack", {
            "id": command["id"], "status": status, "slot": command["slot"], "invoice": command["invoice"],
            "reason": reason, "pulsed_ms": 500 if status == "vended" else None, "dropped": None})

    def changed(self, invoice, state):
        return bm.changed(self.observer, invoice, state)

    def stored(self, invoice):
        return bm.row(self.home, invoice)


class TestSaleOnTheBus(SaleContract):
    @pytest.fixture
    def sale(self, sales_parties):
        home, chain, machine, observer, prices = sales_parties
        bm.priced(prices, observer)
        for client in (machine, observer):
            client.drain()
            client.actor.history.clear()
        return BusSale(home, chain, machine, observer)


# -- the agent's exactly-once -------------------------------------------------------------------

@pytest.fixture(scope="module")
def agent_home(tmp_path_factory):
    return new_home(tmp_path_factory.mktemp("contract_agent") / "home")


@pytest.fixture(scope="module")
def agent_network(agent_home):
    net = Network(agent_home).start_healthy("broker", "vault")
    yield net
    net.close()


class BusAgent(AgentAdapter):
    def __init__(self, home, state_dir, sender):
        self.home, self.state_dir, self.bm = home, state_dir, sender
        self.agents = [mm.Agent(home, state_dir)]
        mm.ready(self.bm)
        self.last = None

    def now(self):
        return int(time.time())

    def send(self, command):
        sealed, done = [], threading.Event()

        def seal():  # in the client's loop thread: the proxy's sequence is not shared across threads
            sealed.append(self.bm.runtime.proxy.seal(mm.CMD, command))
            done.set()
        self.bm.runtime.call_soon(seal)
        wait_for(done.is_set, what="sealed frames")
        self.last = sealed[0]
        self.bm.send_raw(self.last)

    def replay(self):
        self.bm.send_raw(self.last)

    def ack(self, command_id):
        return self.bm.expect(mm.ack_for(command_id), what="the vend ack").message.body

    def restart(self):
        self.agents[-1].stop()
        self.agents.append(mm.Agent(self.home, self.state_dir))
        mm.ready(self.bm)  # (the bus is at most once: a command before vm1 subscribed is lost)

    def pulses(self, slot):
        return sum(len(a.pulses(slot)) for a in self.agents)

    def close(self):
        if self.agents[-1].thread.is_alive():
            self.agents[-1].stop()


class TestExactlyOnceOnTheBus(ExactlyOnceContract):
    @pytest.fixture
    def machine(self, agent_home, agent_network, clients, tmp_path):
        adapter = BusAgent(agent_home, tmp_path, clients(agent_home, "business_mgr", prefixes=[mm.ACK]))
        yield adapter
        adapter.close()
