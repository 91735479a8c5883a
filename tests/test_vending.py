"""Vending end to end: a button press, a payment, one relay pulse; and the faults around it.

Everything is a real process over loopback with real CURVE keys: the broker,
the Vault, the EventLogger, ChainNotifier, BusinessData, BusinessMgr and the
machine agent ``dctrl-agent`` for vm1 with mock pins (its control socket is
how ``dctrl sim press`` presses a button and ``dctrl sim pins`` reads the
relay pin's history). The chain simulator (Core's RPC and ZMQ) runs in this
process. The one stand-in is the price: a client with the ``price_notifier``
identity publishes ``price.btc_cad`` (the PriceNotifier has its own tests).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from actors.business_mgr.models import btc
from actors.business_mgr.queries import invoice
from actors.db import connect
from tests.harness import ROOT, BusClient, Network, dctrl, home_on, topic_is, wait_for

PRICE = "100000.00"  # 1 CAD = 1000 sats
RELAY = "relay:1"


class Agent:
    """``dctrl-agent`` for vm1 as a subprocess (the demo folder `dctrl init` wrote)."""

    def __init__(self, home):
        self.home = home
        self.config = home.root / "agents" / "vm1" / "agent.toml"
        self.proc = None

    def start(self, env=None):
        log = open(self.home.log_dir / "vm1.test.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "machine_agent.main", "--config", str(self.config)],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**__import__("os").environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log.close()
        return self

    def pins(self) -> dict:
        out = dctrl(self.home, "sim", "pins", "vm1", "--json").stdout
        return {p["role"]: p for p in json.loads(out)["pins"]}

    def pulses(self, since_us=0) -> list:
        return [p for p in self.pins()[RELAY]["periods"] if p[0] >= since_us]

    def wait_ready(self):
        wait_for(lambda: dctrl(self.home, "sim", "pins", "vm1", "--json", check=False).returncode == 0,
                 timeout=20, what="vm1's control socket")

    def log(self) -> str:
        return (self.home.log_dir / "vm1.test.log").read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    """The whole module runs on each database (PostgreSQL: a schema of its own)."""
    with home_on(request.param, tmp_path_factory.mktemp("vending") / "home", "vending") as h:
        yield h


@pytest.fixture(scope="module")
def sim(home):
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    s = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"])
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def net(home, sim):
    net = Network(home).start_healthy("broker", "vault", "event_logger", "business_data", "chain_notifier",
                                      timeout=30)
    dctrl(home, "machines", "add", "vm1")
    dctrl(home, "slots", "set", "vm1", "1", "--product", "Club-Mate", "--price-cad", "3.50")
    net.start("business_mgr")
    yield net
    net.close()


@pytest.fixture(scope="module")
def agent(home, net):
    a = Agent(home).start()
    a.wait_ready()
    yield a
    a.stop()


@pytest.fixture(scope="module")
def bus(home, net):
    """Hears invoices, vend commands and acks (as admin) and publishes prices (as price_notifier)."""
    observer = BusClient(home, "admin", prefixes=["invoice", "machine.vm1.vend.ack", "cmd.machine.vm1",
                                                 "health.business_mgr"])
    prices = BusClient(home, "price_notifier")
    yield observer, prices
    observer.close()
    prices.close()


@pytest.fixture
def ready(home, agent, bus):
    observer, prices = bus
    prices.publish("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 3,
                                     "as_of": int(time.time() * 1000)})
    observer.expect(lambda d: d.message is not None and d.message.topic == "health.business_mgr"
                    and d.message.body["status"] == "ok", timeout=30, what="business_mgr ok")
    observer.drain()
    observer.actor.history.clear()
    return observer


def press_and_pay(home, sim, observer) -> tuple[dict, str]:
    """`dctrl sim press vm1 1` (it prints how to pay), then `sim.pay` that; (invoice, txid)."""
    out = dctrl(home, "sim", "press", "vm1", "1").stdout
    opened = observer.expect(topic_is("invoice.opened", machine="vm1", slot=1), what="invoice.opened").message.body
    assert f"dctrl sim pay {opened['address']} {btc(opened['sats'])}" in out
    return opened, sim.pay(opened["address"], btc(opened["sats"]))


def state_of(home, number) -> dict:
    database = connect(home.database_url)
    try:
        return invoice(database, int(number))
    finally:
        database.close()


def test_press_pay_and_the_relay_pulses_once(home, sim, agent, ready):
    observer = ready
    before_us = int(time.time() * 1e6)
    opened, txid = press_and_pay(home, sim, observer)
    assert opened["sats"] == 3500 and opened["zero_conf"] is True
    ack = observer.expect(topic_is("machine.vm1.vend.ack", invoice=opened["invoice"]), timeout=20).message.body
    assert (ack["status"], ack["pulsed_ms"], ack["dropped"]) == ("vended", 500, True)
    observer.expect(topic_is("invoice.changed", invoice=opened["invoice"], state="vended"))
    (start, end), = agent.pulses(before_us)
    assert 0.49 <= (end - start) / 1e6 < 1.0
    assert "relay gpio:17 (slot 1) on for 500 ms" in agent.log()
    events = dctrl(home, "events", "query", "--topic", "machine.vm1.").stdout
    assert "machine.vm1.button" in events and "machine.vm1.vend.ack" in events
    shown = dctrl(home, "invoices", "show", opened["invoice"]).stdout
    assert "vended" in shown and txid in shown
    sim.mine(1)  # a confirmation later changes nothing: no second vend
    wait_for(lambda: state_of(home, opened["invoice"])["payments"][0]["state"] == "confirmed",
             what="the confirmation recorded")
    assert len(agent.pulses(before_us)) == 1 and state_of(home, opened["invoice"])["vended"] == 1


@pytest.mark.parametrize("crash_at", ["vend_journaled", "vend_pulsed"])
def test_agent_killed_mid_vend_never_pulses_it_again(home, sim, agent, ready, crash_at):
    """kill -9 between the journal and the relay, or between the relay and the ack: after the
    restart the command is answered failed (for a person to check), never actuated again."""
    observer = ready
    agent.stop()
    agent.start(env={"DCTRL_CRASH_AT": crash_at})
    agent.wait_ready()
    opened, _ = press_and_pay(home, sim, observer)
    assert agent.proc.wait(20) == 137  # died at the crash point
    if crash_at == "vend_pulsed":
        assert "relay gpio:17 (slot 1) on for 500 ms" in agent.log()
    agent.start()
    agent.wait_ready()
    ack = observer.expect(topic_is("machine.vm1.vend.ack", invoice=opened["invoice"]), timeout=20).message.body
    assert ack["status"] == "failed" and "interrupted" in ack["reason"]
    failed = observer.expect(topic_is("invoice.changed", invoice=opened["invoice"], state="failed")).message.body
    assert failed["vended"] == 0
    assert agent.pulses() == []  # the restarted agent never turned the relay on
    assert state_of(home, opened["invoice"])["refund_sats"] == opened["sats"]


def test_broker_restarted_mid_vend(home, sim, net, agent, ready):
    before_us = int(time.time() * 1e6)
    out = dctrl(home, "sim", "press", "vm1", "1").stdout
    address, amount = out.split("dctrl sim pay ")[1].split()
    assert net.signal("broker", signal.SIGKILL) == -signal.SIGKILL
    sim.pay(address, amount)  # while the broker is down: the notifier's outbox holds the event
    net.start("broker")
    number = state_of_address(home, address)
    wait_for(lambda: state_of(home, number)["state"] == "vended", timeout=60, what="vended after the broker restart")
    assert len(agent.pulses(before_us)) == 1


def test_business_mgr_restarted_with_a_paid_unvended_invoice(home, sim, net, agent, ready):
    observer = ready
    dctrl(home, "sim", "press", "vm1", "1")
    opened = observer.expect(topic_is("invoice.opened", machine="vm1", slot=1)).message.body
    agent.stop()  # nobody answers the vend
    sim.pay(opened["address"], btc(opened["sats"]))
    observer.expect(topic_is("invoice.changed", invoice=opened["invoice"], state="vending"), timeout=20)
    observer.expect(lambda d: d.message is not None and d.message.topic == "cmd.machine.vm1.vend"
                    and d.message.body["invoice"] == opened["invoice"], what="the vend command, unanswered")
    assert net.signal("business_mgr", signal.SIGKILL) == -signal.SIGKILL
    agent.start()
    agent.wait_ready()
    net.start("business_mgr")
    observer.expect(topic_is("invoice.changed", invoice=opened["invoice"], state="vended"), timeout=30)
    assert len(agent.pulses()) == 1  # the restarted agent's only pulse
    assert state_of(home, opened["invoice"])["vended"] == 1


@pytest.mark.parametrize("mined", [True, False])
def test_a_payment_made_while_the_chain_notifier_was_stopped_sells_once(home, sim, net, agent, ready, mined):
    """Issue 9.1: `supervisorctl stop chain_notifier`, press, pay, (mine), start it. The
    notifier catches up over the block before BusinessMgr's watch for the new address
    reaches it; the watch says when the address was handed out, and the notifier looks
    again. Unmined, the payment waits in the mempool and is found there."""
    observer = ready
    before_us = int(time.time() * 1e6)
    assert net.signal("chain_notifier", signal.SIGTERM) == 0
    dctrl(home, "sim", "press", "vm1", "1")
    opened = observer.expect(topic_is("invoice.opened", machine="vm1", slot=1)).message.body
    txid = sim.pay(opened["address"], btc(opened["sats"]))
    if mined:
        sim.mine(1)
    net.start("chain_notifier")
    observer.expect(topic_is("invoice.changed", invoice=opened["invoice"], state="vended"), timeout=30)
    shown = state_of(home, opened["invoice"])
    assert [p["txid"] for p in shown["payments"]] == [txid] and shown["received_sats"] == opened["sats"]
    assert len(agent.pulses(before_us)) == 1


def test_a_new_database_never_hands_out_an_address_with_history(home, sim, net, agent, bus, ready):
    """Issue 9.3: the derivation index lives in the database. A new or switched database
    (here: the address book emptied while BusinessMgr was stopped) started at /0/0 again
    and booked a new customer's payment to an old invoice. At start BusinessMgr asks the
    chain notifier which receive addresses have history and continues after them."""
    from actors.chain.addresses import AddressBook, Deriver

    observer = ready
    deriver = Deriver(home.config["business"]["receive"], "regtest")
    database = connect(home.database_url)
    try:
        book = AddressBook(AddressBook.model(database, "sales_address"), "invoices", deriver)
        first_free = book.next_index()
        for index in (first_free, first_free + 6):  # used by another wallet with the same xpub, say
            sim.pay(deriver.address(index)[0], "0.0001")
        sim.mine(1)
        assert net.signal("business_mgr", signal.SIGTERM) == 0
        book.model.delete().execute()  # the database is switched: no address issued, as far as it knows
    finally:
        database.close()
    net.start("business_mgr")
    observer.expect(lambda d: d.message is not None and d.message.topic == "health.business_mgr",
                    timeout=30, what="business_mgr back")


    def priced_and_checked():  # (a price published before its subscription reached the broker is lost)
        bus[1].publish("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 3,
                                         "as_of": int(time.time() * 1000)})
        try:
            return observer.expect(lambda d: d.message is not None and d.message.topic == "health.business_mgr"
                                   and d.message.body["status"] == "ok", timeout=2)
        except AssertionError:
            return None
    wait_for(priced_and_checked, timeout=30, what="business_mgr ok: a price, and the addresses checked")
    dctrl(home, "sim", "press", "vm1", "1")
    opened = observer.expect(topic_is("invoice.opened", machine="vm1", slot=1), timeout=30).message.body
    assert opened["address"] == deriver.address(first_free + 7)[0]
    assert "a new or switched database" in net.log("business_mgr")


def state_of_address(home, address) -> int:
    from actors.business_mgr.models import SalesInvoice

    database = connect(home.database_url)
    try:
        with database.bind_ctx([SalesInvoice]):
            return wait_for(lambda: SalesInvoice.get_or_none(SalesInvoice.address == address), what="the invoice").id
    finally:
        database.close()
