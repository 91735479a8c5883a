"""ChainNotifier end to end: the real chain simulator (RPC + ZMQ), broker, Vault and the
notifier as a process; events observed by a real subscriber."""

import collections
import signal

import pytest

from tests.harness import dctrl


@pytest.fixture
def sim(home):
    from scripts.sim_chain import ChainSim

    s = ChainSim(home.root / "sim" / "chain")
    s.start()
    with open(home.root / "config.toml", "a") as f:
        f.write(f'\n[chain]\nconfirm_depth = 3\nreconcile_interval = 5\n'
                f'[chain.bitcoind]\nrpc_url = "{s.rpc_url}"\nzmq = "{s.zmq_endpoint}"\n'
                f'cookie_file = "sim/chain/.cookie"\n')
    yield s
    s.stop()


@pytest.fixture
def chain(home, network, sim, clients):
    """The notifier running as a process, and an admin client hearing chain.* events."""
    watch = clients(home, "admin", prefixes=["chain", "health.chain_notifier"])
    network.start("chain_notifier")
    watch.expect(lambda d: d.message and d.message.topic == "health.chain_notifier" and
                 "tip" in (d.message.body["detail"] or "") and d.message.body["status"] == "ok",
                 timeout=20, what="chain_notifier healthy")
    return watch


def events(client, topic, **body):
    return lambda d: (d.message is not None and d.message.topic == topic
                      and all(d.message.body.get(k) == v for k, v in body.items()))


def test_payment_seen_then_confirmed_to_depth(home, sim, chain):
    address = sim.new_address()
    out = dctrl(home, "chain", "watch", address, "--label", "invoice 1").stdout
    assert f"watching {address}" in out
    txid = sim.pay(address, "0.00123456")
    seen = chain.expect(events(chain, "chain.tx.seen", txid=txid)).message.body
    assert (seen["address"], seen["sats"], seen["label"], seen["rbf"]) == (address, 123456, "invoice 1", False)
    sim.mine(1)
    c1 = chain.expect(events(chain, "chain.tx.confirmed", txid=txid, confirmations=1)).message.body
    sim.mine(3)
    c3 = chain.expect(events(chain, "chain.tx.confirmed", txid=txid, confirmations=3)).message.body
    assert c1["height"] == c3["height"] and c1["block"] == c3["block"]
    status = dctrl(home, "chain", "status", "--json")
    assert '"status": "ok"' in status.stdout


def test_replaced_payment_is_reported(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.001", rbf=True)
    assert chain.expect(events(chain, "chain.tx.seen", txid=txid)).message.body["rbf"] is True
    new_txid = sim.replace(txid)
    replaced = chain.expect(events(chain, "chain.tx.replaced", txid=txid)).message.body
    assert replaced["by"] == new_txid


def test_two_block_reorg_republishes_affected_outputs(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.002")
    chain.expect(events(chain, "chain.tx.seen", txid=txid))
    sim.mine(1)
    first = chain.expect(events(chain, "chain.tx.confirmed", txid=txid, confirmations=1)).message.body
    sim.mine(1)
    chain.expect(events(chain, "chain.tx.confirmed", txid=txid, confirmations=2))
    sim.reorg(2)
    reorg = chain.expect(events(chain, "chain.reorg")).message.body
    assert reorg["depth"] == 2
    again = chain.expect(lambda d: events(chain, "chain.tx.confirmed", txid=txid)(d)
                         and d.message.body["block"] != first["block"]).message.body
    assert again["event_id"] != first["event_id"]


def test_catch_up_after_kill_9_publishes_what_was_missed_once(home, network, sim, chain, clients):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.003")
    chain.expect(events(chain, "chain.tx.seen", txid=txid))
    network.signal("chain_notifier", signal.SIGKILL)
    sim.mine(1)  # confirmed while the notifier is down
    sim.mine(1)
    network.start("chain_notifier")
    d = chain.expect(events(chain, "chain.tx.confirmed", txid=txid), timeout=30).message.body
    assert d["confirmations"] == 2  # catch-up publishes the count reached, once
    sim.mine(1)
    chain.expect(events(chain, "chain.tx.confirmed", txid=txid, confirmations=3))
    seen = collections.Counter(h.message.body.get("event_id") for h in chain.drain()
                               if h.message and h.message.topic.startswith("chain.tx."))
    assert all(n == 1 for n in seen.values()), seen


def test_lost_zmq_notification_is_reconciled(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    sim.drop_zmq(3)  # the payment's notifications never arrive
    txid = sim.pay(address, "0.004")
    chain.expect(events(chain, "chain.tx.seen", txid=txid), timeout=20)


def test_bad_address_is_refused(home, sim, chain):
    out = dctrl(home, "chain", "watch", "bc1qnotregtestaddress", check=False)
    assert out.returncode == 2 and "refused" in out.stderr
