"""ChainNotifier end to end: the real chain simulator (RPC + ZMQ), broker, Vault and the
notifier as a process; events observed by a real subscriber."""

import collections
import json
import time
import signal

import pytest

from tests.harness import dctrl, home_on, wait_for


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    """Every test here runs the notifier on each database (PostgreSQL: a schema of its own)."""
    with home_on(request.param, tmp_path / "home", "chain") as h:
        yield h


@pytest.fixture
def sim(home):
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]  # `dctrl init` configured [chain] for these ports
    s = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"])
    s.start()
    config = home.root / "config.toml"
    config.write_text(config.read_text().replace("confirm_depth = 6", "confirm_depth = 3\nreconcile_interval = 5"))
    yield s
    s.stop()


@pytest.fixture
def chain(home, network, sim, clients):
    """The notifier running as a process, and an admin client hearing chain.* events."""
    watch = clients(home, "admin", prefixes=["chain", "health.chain_notifier"])
    network.start("chain_notifier")
    watch.expect(notifier_health("ok", "tip"),
                 timeout=20, what="chain_notifier healthy")
    return watch


def notifier_health(status, detail=""):
    """Predicate: a heartbeat of chain_notifier with this status whose detail contains ``detail``."""
    return lambda d: (d.message is not None and d.message.topic == "health.chain_notifier"
                      and d.message.body["status"] == status and detail in (d.message.body["detail"] or ""))


def events(topic, **body):
    return lambda d: (d.message is not None and d.message.topic == topic
                      and all(d.message.body.get(k) == v for k, v in body.items()))


def test_payment_seen_then_confirmed_to_depth(home, sim, chain):
    address = sim.new_address()
    out = dctrl(home, "chain", "watch", address, "--label", "invoice 1").stdout
    assert f"watching {address}" in out
    txid = sim.pay(address, "0.00123456")
    seen = chain.expect(events("chain.tx.seen", txid=txid)).message.body
    assert (seen["address"], seen["sats"], seen["label"], seen["rbf"]) == (address, 123456, "invoice 1", False)
    sim.mine(1)
    c1 = chain.expect(events("chain.tx.confirmed", txid=txid, confirmations=1)).message.body
    sim.mine(3)
    c3 = chain.expect(events("chain.tx.confirmed", txid=txid, confirmations=3)).message.body
    assert c1["height"] == c3["height"] and c1["block"] == c3["block"]
    status = dctrl(home, "chain", "status", "--json")
    assert '"status": "ok"' in status.stdout
    assert json.loads(status.stdout)["invoice_addresses"] == {"issued": 0, "next": 0, "last_used": None, "gap": 0,
                                                              "gap_limit": 20}
    human = dctrl(home, "chain", "status").stdout
    assert "invoice addresses: 0 issued, next /0/0, none used yet, 0 unused in a row (a restoring wallet scans 20)" \
        in human


def test_replaced_payment_is_reported(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.001", rbf=True)
    assert chain.expect(events("chain.tx.seen", txid=txid)).message.body["rbf"] is True
    new_txid = sim.replace(txid)
    replaced = chain.expect(events("chain.tx.replaced", txid=txid)).message.body
    assert replaced["by"] == new_txid


def test_watching_again_answers_with_the_current_state_of_its_payments(home, sim, chain):
    """A watcher that restarts re-sends its watches; the ack tells it what it missed."""
    import os
    import time

    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    kept = sim.pay(address, "0.002")
    chain.expect(events("chain.tx.seen", txid=kept))
    sim.mine(1)
    chain.expect(events("chain.tx.confirmed", txid=kept, confirmations=1))
    first = sim.pay(address, "0.001", rbf=True)
    chain.expect(events("chain.tx.seen", txid=first))
    t0 = int(time.time())
    replacement = sim.replace(first)
    chain.expect(events("chain.tx.replaced", txid=first))
    rid = os.urandom(16)
    chain.publish("cmd.chain.watch", {"id": rid, "expires": int(time.time()) + 60, "address": address,
                                      "label": None})
    ack = chain.expect(events("chain.watch.ack", id=rid)).message.body
    by_txid = {o["txid"]: o for o in ack["outputs"]}
    assert ack["status"] == "watching"
    assert (by_txid[kept]["state"], by_txid[kept]["confirmations"], by_txid[kept]["sats"]) == ("confirmed", 1, 200000)
    assert (by_txid[first]["state"], by_txid[first]["by"]) == ("replaced", replacement)
    assert by_txid[kept]["seen_at"] <= t0 <= by_txid[first]["seen_at"] + 60 <= time.time() + 60
    assert set(by_txid) == {kept, first}  # the simulator's replacement pays the wallet, not this address


def test_two_block_reorg_republishes_affected_outputs(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.002")
    chain.expect(events("chain.tx.seen", txid=txid))
    sim.mine(1)
    first = chain.expect(events("chain.tx.confirmed", txid=txid, confirmations=1)).message.body
    sim.mine(1)
    chain.expect(events("chain.tx.confirmed", txid=txid, confirmations=2))
    sim.reorg(2)
    reorg = chain.expect(events("chain.reorg")).message.body
    assert reorg["depth"] == 2
    again = chain.expect(lambda d: events("chain.tx.confirmed", txid=txid)(d)
                         and d.message.body["block"] != first["block"]).message.body
    assert again["event_id"] != first["event_id"]


def test_catch_up_after_kill_9_publishes_what_was_missed_once(home, network, sim, chain, clients):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.003")
    chain.expect(events("chain.tx.seen", txid=txid))
    network.signal("chain_notifier", signal.SIGKILL)
    sim.mine(1)  # confirmed while the notifier is down
    sim.mine(1)
    network.start("chain_notifier")
    d = chain.expect(events("chain.tx.confirmed", txid=txid), timeout=30)
    assert d.message.body["confirmations"] == 2  # catch-up publishes the count reached, once
    sim.mine(1)
    # The end marker: one publisher's events arrive in order, so every re-publication of
    # an earlier event came before this one. Count every delivery, the matched ones too.
    end = chain.expect(events("chain.tx.confirmed", txid=txid, confirmations=3))
    seen = collections.Counter(h.message.body.get("event_id") for h in [d, end, *chain.drain()]
                               if h.message and h.message.topic.startswith("chain.tx."))
    assert seen[d.message.body["event_id"]] == 1 and seen[end.message.body["event_id"]] == 1, seen
    assert all(n == 1 for n in seen.values()), seen


def test_lost_zmq_notification_is_reconciled(home, sim, chain):
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    sim.drop_zmq(3)  # the payment's notifications never arrive
    txid = sim.pay(address, "0.004")
    chain.expect(events("chain.tx.seen", txid=txid), timeout=20)


def test_bad_address_is_refused(home, sim, chain):
    out = dctrl(home, "chain", "watch", "bc1qnotregtestaddress", check=False)
    assert out.returncode == 2 and "refused" in out.stderr


def test_rpc_password_from_the_vault(home, network, clients):
    """Production credentials: user in the config, password sealed to the notifier by the Vault."""
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    sim = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"],
                   user="dctrl", password="node-pw-7f3a").start()
    try:
        dctrl(home, "vault", "set-secret", "bitcoind_rpc_password", input="node-pw-7f3a")
        config = home.root / "config.toml"
        config.write_text(config.read_text().replace('cookie_file = "sim/chain/.cookie"',
                                                     'user = "dctrl"\npassword_secret = "bitcoind_rpc_password"'))
        with open(home.policy_path, "a") as f:
            f.write('bitcoind_rpc_password = ["chain_notifier"]\n')
        wait_for(lambda: "reloaded registry and policy" in network.log("vault"), what="the Vault's reload")
        # Connect once the broker has applied the new policy.
        wait_for(lambda: "policy changed: the grants of" in network.log("broker"),
                 what="the broker to apply the new policy")
        watch = clients(home, "admin", prefixes=["chain", "health.chain_notifier"])
        network.start("chain_notifier")
        watch.expect(notifier_health("ok"), timeout=30, what="the notifier healthy on the node")
        address = sim.new_address()
        dctrl(home, "chain", "watch", address)
        txid = sim.pay(address, "0.01")
        watch.expect(events("chain.tx.seen", txid=txid))
        assert "node-pw-7f3a" not in network.log("chain_notifier")
    finally:
        sim.stop()


def test_node_refusing_the_password_or_dropping_connections_degrades_then_recovers(home, network, sim, chain):
    sim.stop_rpc(5)  # the node drops every connection for a while...
    sim.mine(1)  # ...while a block arrives, so the notifier has to ask
    chain.expect(notifier_health("degraded"), timeout=20, what="degraded health")
    address = sim.new_address()  # sim-side call, not RPC
    healthy = chain.expect(notifier_health("ok"), timeout=30, what="recovery")
    assert "tip" in healthy.message.body["detail"]
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.005")
    chain.expect(events("chain.tx.seen", txid=txid))
    # The node restarts demanding a password we do not have: refused, and the heartbeat says so.
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    ports = dict(rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"])
    sim.stop()
    other = ChainSim(home.root / "sim" / "chain", user="someone", password="else", **ports).start()
    try:
        (home.root / "sim" / "chain" / ".cookie").write_text("__cookie__:left-from-the-last-run")
        other.mine(1)
        chain.expect(notifier_health("degraded", "refused our RPC credentials"),
                     timeout=30, what="degraded health naming the refused credentials")
    finally:
        other.stop()
    # It restarts again with a new cookie: the notifier re-reads it and catches up (same chain, persisted).
    again = ChainSim(home.root / "sim" / "chain", **ports).start()
    try:
        again.mine(1)
        chain.expect(events("chain.tx.confirmed", txid=txid), timeout=40)
    finally:
        again.stop()


def test_killed_between_a_block_and_its_publication(home, network, sim, clients):
    """The block's effects and its events commit together; the events go out after restart, once."""
    watch = clients(home, "admin", prefixes=["chain", "health.chain_notifier"])
    network.start("chain_notifier", env={"DCTRL_CRASH_AT": "block_committed"})
    watch.expect(notifier_health("ok"), timeout=20, what="chain_notifier healthy")
    address = sim.new_address()
    dctrl(home, "chain", "watch", address)
    txid = sim.pay(address, "0.0021")
    watch.expect(events("chain.tx.seen", txid=txid))
    sim.mine(1)
    assert network.procs["chain_notifier"].wait(20) == 137  # died right after committing the block
    network.procs.pop("chain_notifier")
    network.start("chain_notifier")
    d = watch.expect(events("chain.tx.confirmed", txid=txid), timeout=30)
    assert d.message.body["confirmations"] == 1
    sim.mine(1)
    watch.expect(events("chain.tx.confirmed", txid=txid, confirmations=2))
    confirmed_once = [h for h in watch.drain() if events("chain.tx.confirmed", txid=txid,
                                                             confirmations=1)(h)]
    assert confirmed_once == [], "confirmation 1 was published twice"


def test_a_payment_mined_before_the_block_sync_is_not_called_removed_without_txindex(home):
    """bitcoind without -txindex (its default) finds a confirmed transaction by txid only given
    its block. A payment that leaves the mempool because a block the notifier has not synced yet
    confirmed it must not be published removed (a sale or a dues payment undone): found by h10."""
    from actors.chain_notifier.models import ChainOutbox
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    with ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"],
                  txindex=False) as sim:
        n = _notifier(home, sim)
        n.sync_blocks()
        address = sim.new_address()
        script = n.watch(address, "invoice 3")["script"]
        txid = sim.pay(address, "0.0005")
        n.sync_mempool()
        assert [(o["txid"], o["state"]) for o in n.outputs(script)] == [(txid, "mempool")]
        sim.mine(1)  # mined; the notifier looks at the mempool before its next block sync
        n.sync_mempool()
        assert [o["state"] for o in n.outputs(script)] == ["mempool"]
        n.sync_blocks()
        assert [(o["state"], o["confirmations"]) for o in n.outputs(script)] == [("confirmed", 1)]
        topics = [r.topic for r in ChainOutbox.select().order_by(ChainOutbox.id)]
        assert "chain.tx.removed" not in topics and "chain.tx.confirmed" in topics
        # and a payment that really left the mempool (the tip did not move) is still removed
        other = sim.new_address()
        script2 = n.watch(other, "invoice 4")["script"]
        gone = sim.pay(other, "0.0004")
        n.sync_mempool()
        sim.chain.mempool.pop(gone)  # evicted (the node's mempool only: nothing mined)
        n.sync_mempool()
        assert [o["state"] for o in n.outputs(script2)] == ["removed"]
        n.database.close()


def test_a_transaction_paying_nothing_watched_takes_no_write_lock(home, sim):
    """Most transactions a node announces are not ours: looking at one must not take the
    database's write lock, which BusinessMgr and BusinessData share (on SQLite a writer
    waits for it). Ours still is recorded."""
    from actors.chain.bitcoind import Bitcoind
    from actors.chain_notifier.actor import ChainNotifier
    from actors.db import connect

    n = ChainNotifier(home, adaptor=Bitcoind(sim.rpc_url, cookie_file=sim.cookie_file))
    ours = sim.new_address()
    script = n.watch(ours, "invoice 1")["script"]
    other = connect(home.database_url)
    other.execute_sql("BEGIN IMMEDIATE" if home.database_url.startswith("sqlite") else "BEGIN")
    if not home.database_url.startswith("sqlite"):  # PostgreSQL: a writer in the way holds a table lock,
        other.execute_sql('LOCK TABLE "chain_output" IN EXCLUSIVE MODE')  # which a write here would wait for
        n.database.execute_sql("SET lock_timeout = '3s'")  # (then fail, as SQLite's busy timeout does)
    try:
        stranger = sim.pay(sim.new_address(), "0.001")
        n.check_txs([stranger])  # with a write transaction this would wait 5 s, then raise "locked"
        assert stranger in n._mempool_checked
    finally:
        other.execute_sql("ROLLBACK")
        other.close()
    paying = sim.pay(ours, "0.002")
    n.check_txs([paying])
    assert [(o["txid"], o["sats"], o["state"]) for o in n.outputs(script)] == [(paying, 200_000, "mempool")]
    n.database.close()


# -- a watch that arrives late: payments already processed are found again --------------

def _notifier(home, sim, clock=None):
    import time

    from actors.chain.bitcoind import Bitcoind
    from actors.chain_notifier.actor import ChainNotifier

    return ChainNotifier(home, adaptor=Bitcoind(sim.rpc_url, cookie_file=sim.cookie_file), clock=clock or time.time)


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


@pytest.mark.parametrize("order", ["paid_mined_then_watched", "watched_before_first_sync",
                                   "mined_while_down_then_watched", "paid_while_down_mined_after_restart"])
def test_a_watch_finds_payments_made_before_it_arrived_in_any_order(home, sim, order):
    """Issue 9.1: the notifier processed the paying block before the watch for the address
    reached it (it was down, or restarted and caught up first). The watch carries when the
    address was handed out (``since``) and the notifier looks again."""
    clock = Clock(int(time.time()))
    n = _notifier(home, sim, clock)
    n.sync_blocks()  # following the chain
    clock.t += 100
    since = int(clock.t)  # the invoice opens, its address is handed out
    address = sim.new_address()
    if order == "watched_before_first_sync":
        n.database.close()
        from actors.chain_notifier.models import ChainCursor, ChainBlock
        n = _notifier(home, sim, clock)
        ChainCursor.delete().execute()  # a notifier that never ran: no cursor yet
        ChainBlock.delete().execute()
    txid = sim.pay(address, "0.0007")
    clock.t += 10
    if order == "paid_while_down_mined_after_restart":
        n.sync_blocks()  # (restarted: nothing new in blocks yet)
        n.sync_mempool()  # the mempool's transactions are looked at before the watch arrives
        script = n.watch(address, "invoice 9", since=since)["script"]
        assert [(o["txid"], o["state"]) for o in n.outputs(script)] == []  # (found on the next look)
        n.recheck_mempool()  # (the worker's next round)
        assert [(o["txid"], o["state"]) for o in n.outputs(script)] == [(txid, "mempool")]
        sim.mine(1)
        n.sync_blocks()
    else:
        sim.mine(1)
        if order != "watched_before_first_sync":
            clock.t += 10
            n.sync_blocks()  # processed while nobody watched the address
        clock.t += 10
        script = n.watch(address, "invoice 9", since=since)["script"]
        if order == "watched_before_first_sync":
            n.sync_blocks()
            script = n.watch(address, "invoice 9", since=since)["script"]  # the watcher's retry
    [found] = n.outputs(script)
    assert (found["txid"], found["sats"], found["state"], found["confirmations"]) == (txid, 70_000, "confirmed", 1)
    from actors.chain_notifier.models import ChainOutbox
    import msgpack
    confirmed = [msgpack.unpackb(r.body) for r in ChainOutbox.select().where(ChainOutbox.topic == "chain.tx.confirmed")]
    assert [(c["txid"], c["confirmations"]) for c in confirmed] == [(txid, 1)]  # published once, to be sent
    n.database.close()


def test_a_watch_without_since_or_for_a_newer_address_does_not_rescan(home, sim):
    """The controls: without ``since`` nothing is looked for again (so the test above can
    fail), and a watch for an address handed out after the blocks were processed asks the
    node for nothing at all."""
    clock = Clock(int(time.time()))
    n = _notifier(home, sim, clock)
    n.sync_blocks()
    address = sim.new_address()
    sim.pay(address, "0.0007")
    sim.mine(1)
    clock.t += 10
    n.sync_blocks()
    script = n.watch(address, None)["script"]
    assert n.outputs(script) == []
    calls = []
    real = n.adaptor.block
    n.adaptor.block = lambda h: calls.append(h) or real(h)
    other = sim.new_address()
    clock.t += 3600  # handed out an hour after the last block was processed
    n.watch(other, None, since=int(clock.t))
    assert calls == []
    n.database.close()


def test_a_rescan_done_is_not_done_again_when_the_watch_is_sent_again(home, sim):
    """Watchers send every watch again at each start, with the address's birth. The blocks the
    first rescan walked are not fetched again (found by h4: each member_data start refetched
    every block back to every member's address birth), also by a notifier restarted, whose
    block times beyond the last few are gone; a watch with an earlier birth rescans again."""
    clock = Clock(int(time.time()))
    n = _notifier(home, sim, clock)
    n.sync_blocks()
    clock.t += 100
    since = int(clock.t)
    address = sim.new_address()
    txid = sim.pay(address, "0.0007")
    sim.mine(1)
    clock.t += 10
    n.sync_blocks()  # processed while nobody watched the address
    calls = []
    real = n.adaptor.block
    n.adaptor.block = lambda h: calls.append(h) or real(h)
    script = n.watch(address, "dues ada", since=since)["script"]
    assert [o["txid"] for o in n.outputs(script)] == [txid] and len(calls) >= 1
    calls.clear()
    n.watch(address, "dues ada", since=since)  # the watcher restarted
    assert calls == []
    n.database.close()
    from actors.chain_notifier.models import ChainBlock
    n = _notifier(home, sim, clock)  # restarted, and the block times it kept are gone
    ChainBlock.update(processed_at=None).execute()
    n.adaptor.block = lambda h: calls.append(h) or real(h)
    n.watch(address, "dues ada", since=since)
    assert calls == []
    n.watch(address, "dues ada", since=since - 3600)  # an earlier birth: looked at again
    assert calls != []
    assert [o["txid"] for o in n.outputs(script)] == [txid]  # and found once
    n.database.close()


# -- discovery: which receive addresses have history (issue 9.3) --------------------------

def test_discovery_finds_the_highest_used_index_within_the_gap(home, sim):
    from actors.chain.addresses import Deriver

    n = _notifier(home, sim)
    n.sync_blocks()
    deriver = Deriver(home.config["business"]["receive"], "regtest")
    assert n.discover("invoices", 0, 5) == {"status": "done", "reason": None, "highest": None, "scanned": 5}
    for index in (0, 3, 7, 30):  # 30 is beyond a gap of 5 after 7: a wallet would not find it either
        sim.pay(deriver.address(index)[0], "0.0001")
    sim.mine(1)
    assert n.discover("invoices", 0, 5)["highest"] == 7
    assert n.discover("invoices", 8, 30)["highest"] == 30
    assert n.discover("invoices", 31, 5)["highest"] is None
    # Unconfirmed payments count too, and payments this notifier recorded (spent since, say).
    sim.pay(deriver.address(33)[0], "0.0001")
    n.sync_mempool()
    assert n.discover("invoices", 31, 5)["highest"] == 33
    refused = n.discover("pantry", 0, 5)
    assert (refused["status"], refused["reason"]) == ("refused", "unknown address book 'pantry'")
    # the dues book derives from [members] receive, an account of its own: the sales payments
    # above are not its history, a payment to its /0/2 is
    dues = Deriver(home.config["members"]["receive"], "regtest")
    assert n.discover("dues", 0, 5)["highest"] is None
    sim.pay(dues.address(2)[0], "0.0001")
    sim.mine(1)
    assert n.discover("dues", 0, 5) == {"status": "done", "reason": None, "highest": 2, "scanned": 10}
    assert n.discover("invoices", 34, 5)["highest"] is None
    n.database.close()


def test_a_worker_that_fails_says_so_in_the_heartbeat(home):
    """Issue 9.2: on PostgreSQL the worker failed on every round while the heartbeat said
    only 'starting'. A failure that is not the node's (a bug, the database) is in health."""
    import threading

    from actors.chain_notifier.actor import ChainNotifier

    class Broken:  # a backend whose client raises what no backend should (the shape of a bug)
        name = "bitcoind"

        def hints(self, timeout):
            raise RuntimeError("boom")

        def close(self):
            pass

    n = ChainNotifier(home, adaptor=Broken())
    n.secrets_ready.set()  # (no RPC password to wait for)
    worker = threading.Thread(target=n._work, daemon=True)
    worker.start()
    try:
        status, detail = wait_for(lambda: n.health()[0] != "starting" and n.health(), what="a verdict")
        assert status == "degraded" and "chain worker failed: RuntimeError: boom" in detail
    finally:
        n.stopping.set()
        worker.join(40)
        n.database.close()


def test_discovery_of_the_treasury_branches(home, sim):
    """Books ``treasury`` and ``treasury_change`` (PayoutMgr): the receive and change branches of
    the k-of-n [treasury] descriptor, derived from the notifier's own config."""
    from actors.payout_mgr.treasury import Treasury

    n = _notifier(home, sim)
    n.sync_blocks()
    t = Treasury(home.config["treasury"]["descriptor"], "regtest")
    assert n.discover("treasury", 0, 5)["highest"] is None and n.discover("treasury_change", 0, 5)["highest"] is None
    sim.pay(t.address(4, change=True)[0], "0.0001")
    sim.mine(1)
    assert n.discover("treasury_change", 0, 5)["highest"] == 4
    assert n.discover("treasury", 0, 5)["highest"] is None  # the other branch: not its history
    sim.pay(t.address(1)[0], "0.0001")
    sim.mine(1)
    assert n.discover("treasury", 0, 5)["highest"] == 1
    n.home.config["treasury"]["descriptor"] = ""
    refused = n.discover("treasury", 0, 5)
    assert (refused["status"], refused["reason"]) == ("refused", "no [treasury] descriptor configured")
    n.database.close()
