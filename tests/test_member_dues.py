"""Dues in bitcoin end to end, on SQLite and PostgreSQL: broker, Vault, the chain simulator,
chain_notifier and member_data as real processes, `dctrl` as a subprocess. The one stand-in is
the price: a client with the ``price_notifier`` identity (as tests/test_vending.py)."""

from __future__ import annotations

import json
import time

import pytest

from tests.harness import BusClient, Network, dctrl, home_on, wait_for

PRICE = "50000.00"

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    with home_on(request.param, tmp_path / "home", "dues") as h:
        yield h


@pytest.fixture
def sim(home):
    """The chain simulator, its premined blocks stamped three hours ago, as a real chain's blocks
    before a dues address was handed out are old: a watch's rescan (from the address's birth)
    stops at the first of them, by its header time. Stamped at the sim's start they look as if
    mined after the birth, and every watch fetches and scans all 101 over RPC, again for every
    address at each member_data start (2 to 5 s an address on a loaded 2-core machine)."""
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    behind = [3 * 3600]
    s = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"],
                 clock=lambda: time.time() - behind[0])
    s.start()  # (premines)
    behind[0] = 0  # the blocks mined from now on are stamped now
    yield s
    s.stop()


def test_a_member_pays_dues_to_their_address_and_show_has_the_payment(home, sim):
    net = Network(home)
    prices = None
    try:
        net.start_healthy("broker", "vault", "event_logger", "chain_notifier", "member_data", timeout=30)
        prices = BusClient(home, "price_notifier")
        dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30",
              "--confirmations", "2")
        dctrl(home, "members", "add", "ada", "--name", "Ada Lovelace", "--email", "ada@example.org",
              "--plan", "regular")

        def show():
            return json.loads(dctrl(home, "members", "show", "ada", "--json").stdout)

        def price_and(check):
            """The price notifier's stand-in publishes (as the real one does every poll) while waiting."""
            def pred():
                prices.publish("price.btc_cad", {"cad_per_btc": PRICE, "sources": [
                    {"name": "kraken", "fresh": True, "price": PRICE, "age_s": 1, "error": None, "used": True},
                    {"name": "coinbase", "fresh": True, "price": PRICE, "age_s": 1, "error": None, "used": True}],
                    "used": 2, "as_of": int(time.time() * 1000)})
                return check()
            return pred

        # the address comes after chain_notifier's discovery of the dues book, and is watched
        shown = wait_for(price_and(lambda: (s := show())["dues_address"] and s["dues_addresses"][0]["watched"]
                                   and s), timeout=30, what="ada's dues address, watched")
        address = shown["dues_address"]
        assert shown["dues_uri"] == f"bitcoin:{address}"
        text = dctrl(home, "members", "show", "ada").stdout
        assert f"bitcoin:{address}?amount=0.00080000" in text  # one month's 40.00 CAD at the price just heard

        txid = dctrl(home, "sim", "pay", address, "0.00100000").stdout.strip().split()[-1]
        wait_for(price_and(lambda: show()["chain_payments"]), timeout=30, what="the payment seen")
        dctrl(home, "sim", "mine", "1")
        got = wait_for(price_and(lambda: (c := show()["chain_payments"]) and c[0]["confirmations"] >= 1 and c),
                       timeout=30, what="one confirmation")
        assert show()["payments"] == []  # the plan asks 2
        assert got[0]["cad_per_btc"] == PRICE and got[0]["rate_sources"] == ["kraken", "coinbase"]
        dctrl(home, "sim", "mine", "1")
        shown = wait_for(price_and(lambda: (s := show())["payments"] and s), timeout=30, what="the dues payment")
        (pay,) = shown["payments"]
        assert (pay["method"], pay["cents"], pay["txid_vout"].split(":")[0]) == ("bitcoin", 5000, txid)  # 50.00 CAD
        # the paid address stays watched; the member's next dues address is a fresh one
        assert shown["dues_address"] != address and address in [a["address"] for a in shown["dues_addresses"]]
        dctrl(home, "sim", "mine", "3")
        wait_for(price_and(lambda: show()["chain_payments"][0]["confirmations"] >= 5), timeout=30,
                 what="more confirmations")
        assert len(show()["payments"]) == 1

        # paid while member_data was stopped, to the new address: found when it is back (its watch
        # carries the address's birth), counted once; the first payment is not counted again
        second = shown["dues_address"]
        assert net.signal("member_data") == 0
        txid2 = dctrl(home, "sim", "pay", second, "0.00040000").stdout.strip().split()[-1]
        dctrl(home, "sim", "mine", "2")
        net.start("member_data")
        wait_for(price_and(lambda: len(show()["payments"]) == 2), timeout=30,
                 what="the payment made while member_data was stopped")
        # the member's next address is handed out just after the payment is recorded, in a
        # transaction of its own: a show between the two has the payment and two addresses
        shown = wait_for(lambda: len((s := show())["dues_addresses"]) == 3 and s, timeout=30,
                         what="ada's next dues address, the one just paid being used")
        assert [(p["cents"], p["txid_vout"].split(":")[0]) for p in shown["payments"]] == [(5000, txid), (2000, txid2)]
        assert shown["adjustments"] == []
    finally:
        if prices is not None:
            prices.close()
        net.close()
