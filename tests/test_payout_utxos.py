"""The treasury's outputs end to end, on SQLite and PostgreSQL: broker, Vault, the chain simulator,
chain_notifier and payout_mgr as real processes, `dctrl treasury show` as a subprocess reading
payout_mgr's tables. The home is `dctrl init`'s, with its demo 2-of-3 treasury."""

from __future__ import annotations

import json
import signal

import pytest

from tests.harness import Network, chain_sim, dctrl, home_on, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    with home_on(request.param, tmp_path / "home", "payouts") as h:
        yield h


@pytest.fixture
def sim(home):
    with chain_sim(home, txindex=False) as s:  # bitcoind's default: what production sees
        yield s


def test_a_payment_to_the_treasury_is_listed_confirmed_with_its_raw_transaction(home, sim):
    from actors.payout_mgr.treasury import Treasury
    from embit.transaction import Transaction

    treasury = Treasury(home.config["treasury"]["descriptor"], "regtest")
    net = Network(home)
    try:
        net.start_healthy("broker", "vault", "event_logger", "chain_notifier", "payout_mgr", timeout=30)

        def show():
            return json.loads(dctrl(home, "treasury", "show", "--json").stdout)

        # discovered through chain_notifier (nothing used yet), then 20 addresses watched per branch
        shown = wait_for(lambda: (s := show())["gap"]["receive"]["acked"] == 20 and s["gap"]["change"]["acked"] == 20
                         and s, timeout=30, what="the treasury's addresses watched")
        assert shown["quorum"] == "2 of 3" and len(shown["cosigners"]) == 3
        assert [a["address"] for a in shown["next_addresses"]] == [treasury.address(i)[0] for i in range(5)]
        assert shown["utxos"] == [] and shown["balance"]["confirmed_sats"] == 0

        address = treasury.address(0)[0]
        txid = dctrl(home, "sim", "pay", address, "0.00250000").stdout.strip().split()[-1]
        wait_for(lambda: show()["utxos"], timeout=30, what="the payment seen")
        dctrl(home, "sim", "mine", "1")
        shown = wait_for(lambda: (s := show())["utxos"] and s["utxos"][0]["state"] == "confirmed"
                         and s["utxos"][0]["raw_tx"] and s, timeout=30, what="the payment confirmed")
        (u,) = shown["utxos"]
        assert (u["txid"], u["sats"], u["branch"], u["index"], u["address"]) == (txid, 250_000, "receive", 0, address)
        assert u["confirmations"] == 1 and u["height"] is not None
        assert shown["balance"]["confirmed_sats"] == 250_000 and shown["balance"]["unconfirmed_sats"] == 0
        # the address paid: the gap moves on, 20 unused beyond it
        assert shown["next_addresses"][0]["index"] == 1
        wait_for(lambda: show()["gap"]["receive"]["acked"] == 21, timeout=30, what="the gap extended")

        # the raw transaction kept is the one the node has (the PSBT's non-witness UTXO)
        from actors.db import connect
        from actors.payout_mgr import queries

        database = connect(home.database_url)
        try:
            (s,) = queries.spendable(database)
        finally:
            database.close()
        assert Transaction.parse(s["prev_tx"]).txid().hex() == txid
        text = dctrl(home, "treasury", "show").stdout
        assert "2 of 3" in text and f"{txid}:{u['vout']}" in text and "250,000" in text
    finally:
        net.close()


@pytest.mark.parametrize("txindex", [False, True])
def test_the_simulator_without_txindex_finds_a_confirmed_transaction_only_in_its_block(tmp_path, txindex):
    """bitcoind's default (no -txindex), which payout_mgr must cope with: getrawtransaction finds
    a transaction in the mempool, a confirmed one only given its block hash (RPC error -5, Core's
    words); ``txindex=True`` (the simulator's default) finds it without."""
    from scripts.sim.chain import ChainSim
    from scripts.sim.chainsim.errors import RpcError

    s = ChainSim(tmp_path / "chain", rpc_port=0, zmq_port=0, txindex=txindex).start()
    try:
        txid = s.pay(s.new_address(), "0.1")
        assert s.call("getrawtransaction", txid, 1)["txid"] == txid  # in the mempool: found
        (block,) = s.mine(1)
        assert s.call("getrawtransaction", txid, 1, block)["blockhash"] == block
        if txindex:
            assert s.call("getrawtransaction", txid, 1)["blockhash"] == block
            return
        with pytest.raises(RpcError) as exc:
            s.call("getrawtransaction", txid, 1)
        assert exc.value.rpc_code == -5 and exc.value.message == (
            "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction "
            "queries. Use gettransaction for wallet transactions.")
        with pytest.raises(RpcError) as unknown:
            s.call("getrawtransaction", "ab" * 32)
        assert unknown.value.message == exc.value.message  # (any transaction outside the mempool)
    finally:
        s.stop()


def test_a_payment_to_a_dues_address_beyond_the_treasurys_gap_is_listed_without_a_restart(home, sim):
    """Issue 13, gap 1: `[members] receive` is the treasury's descriptor, so MemberData hands out
    the treasury's receive addresses from its own index. With `[treasury] gap_limit = 2` payout_mgr
    watches /0/0 and /0/1 only; six members hold /0/0 to /0/5. The sixth pays: payout_mgr, running
    all along, recognises /0/5 as its own (the chain notifier's event for MemberData's watch),
    records the output and watches its run up to it and 2 beyond. Then payout_mgr is killed
    (SIGKILL), a later member's address beyond the run is paid and mined, and its next start finds
    it (the receive discovery's gap is `[treasury] lookahead`)."""
    from actors.payout_mgr.treasury import Treasury

    descriptor = home.config["treasury"]["descriptor"]
    treasury = Treasury(descriptor, "regtest")
    config = home.root / "config.toml"
    text = config.read_text()
    members_receive = next(line for line in text.splitlines()
                           if line.startswith("receive") and text.index(line) > text.index("[members]"))
    text = text.replace(members_receive, f'receive = "{descriptor}"')
    text = text.replace('name = "dctrl demo treasury"\n', 'name = "dctrl demo treasury"\ngap_limit = 2\n')
    config.write_text(text)
    net = Network(home)
    try:
        net.start_healthy("broker", "vault", "event_logger", "chain_notifier", "member_data", "payout_mgr",
                          timeout=30)

        def show():
            return json.loads(dctrl(home, "treasury", "show", "--json").stdout)

        wait_for(lambda: (s := show())["gap"]["receive"]["acked"] == 2 and s, timeout=30,
                 what="the treasury's first two receive addresses watched")
        dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30",
              "--confirmations", "1")
        handles = [f"m{i}" for i in range(6)]
        for h in handles:
            dctrl(home, "members", "add", h, "--name", f"Member {h}", "--email", f"{h}@example.org",
                  "--plan", "regular")

        def dues_address(handle):
            return json.loads(dctrl(home, "members", "show", handle, "--json").stdout)["dues_address"]

        address = wait_for(lambda: dues_address(handles[-1]), timeout=30, what="the sixth member's dues address")
        index = next(i for i in range(50) if treasury.address(i)[0] == address)
        assert index >= 5  # beyond the treasury's watched run (0 and 1)

        txid = dctrl(home, "sim", "pay", address, "0.00100000").stdout.strip().split()[-1]
        dctrl(home, "sim", "mine", "1")
        shown = wait_for(lambda: (s := show())["utxos"] and s["utxos"][0]["state"] == "confirmed" and s,
                         timeout=60, what="the dues payment in the treasury, payout_mgr not restarted")
        (u,) = shown["utxos"]
        assert (u["txid"], u["sats"], u["branch"], u["index"], u["address"]) == (txid, 100_000, "receive", index,
                                                                                 address)
        assert shown["balance"]["confirmed_sats"] == 100_000
        # the run now reaches the paid index and gap_limit beyond it, every address watched
        wait_for(lambda: show()["gap"]["receive"]["acked"] == index + 1 + 2, timeout=30,
                 what="the treasury's run extended past the dues address")
        assert net.alive("payout_mgr")  # the same process throughout

        # kill -9 of payout_mgr; a newer member's address, beyond the run, is paid and mined while it
        # is down (its events missed): its next start finds it (the discovery looks as far past the
        # run as a payment is recognised live)
        watched_to = show()["gap"]["receive"]["watched_to"]
        later = [f"n{i}" for i in range(4)]
        for h in later:
            dctrl(home, "members", "add", h, "--name", f"Member {h}", "--email", f"{h}@example.org",
                  "--plan", "regular")
        address2 = wait_for(lambda: dues_address(later[-1]), timeout=30, what="a later member's dues address")
        index2 = next(i for i in range(50) if treasury.address(i)[0] == address2)
        assert index2 > watched_to
        net.signal("payout_mgr", signal.SIGKILL)
        txid2 = dctrl(home, "sim", "pay", address2, "0.00200000").stdout.strip().split()[-1]
        dctrl(home, "sim", "mine", "1")
        net.start_healthy("payout_mgr", timeout=30)
        shown = wait_for(lambda: (s := show())["balance"]["confirmed_sats"] == 300_000 and s, timeout=60,
                         what="the payment made while payout_mgr was down, found at its start")
        assert {(u["txid"], u["index"]) for u in shown["utxos"]} == {(txid, index), (txid2, index2)}
    finally:
        net.close()
