"""The treasury's outputs end to end, on SQLite and PostgreSQL: broker, Vault, the chain simulator,
chain_notifier and payout_mgr as real processes, `dctrl treasury show` as a subprocess reading
payout_mgr's tables. The home is `dctrl init`'s, with its demo 2-of-3 treasury."""

from __future__ import annotations

import json

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
