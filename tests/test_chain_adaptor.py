"""The ChainAdaptor contract, run against every backend over the real chain simulator."""

import time

import pytest

from actors.chain.adaptor import ChainError, Failover
from actors.chain.bitcoind import Bitcoind
from actors.chain.esplora import Esplora
from tests.harness import free_port, wait_for


@pytest.fixture
def sim(tmp_path):
    from scripts.sim.chain import ChainSim

    s = ChainSim(tmp_path / "chain", esplora_port=0)  # every backend over the same chain
    s.start()
    yield s
    s.stop()


def make_bitcoind(sim):
    return Bitcoind(sim.rpc_url, cookie_file=sim.cookie_file, zmq_endpoint=sim.zmq_endpoint)


def make_esplora(sim):
    return Esplora(sim.esplora_url, poll_min=0.05, poll_max=0.2)


BACKENDS = {"bitcoind": make_bitcoind, "esplora": make_esplora}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, sim):
    b = BACKENDS[request.param](sim)
    yield b
    b.close()


def test_tip_blocks_and_transactions(sim, backend):
    address = sim.new_address()
    txid = sim.pay(address, "0.5")
    assert txid in backend.mempool()
    tx = backend.transaction(txid)
    assert tx.height is None and tx.block_hash is None
    paid = [o for o in tx.outputs if o.address == address]
    assert len(paid) == 1 and paid[0].sats == 50_000_000 and paid[0].txid == txid
    (block_hash,) = sim.mine(1)
    tip = backend.tip()
    assert tip.hash == block_hash and backend.block_hash(tip.height) == block_hash
    block = backend.block(block_hash)
    assert block.height == tip.height and block.prev == backend.block_hash(tip.height - 1)
    assert txid in [t.txid for t in block.txs]
    confirmed = backend.transaction(txid)
    assert (confirmed.height, confirmed.block_hash) == (tip.height, block_hash)
    assert txid not in backend.mempool()
    assert backend.transaction("00" * 32) is None


def test_raw_transaction_is_the_serialization_that_hashes_to_the_txid(sim, backend):
    """What a PSBT's non-witness UTXO needs (PayoutMgr): the whole previous transaction, in the
    mempool and once mined; None for a txid the backend does not know."""
    from embit.transaction import Transaction

    address = sim.new_address()
    txid = sim.pay(address, "0.25")
    for _ in range(2):
        raw = backend.raw_transaction(txid)
        tx = Transaction.parse(raw)
        assert tx.txid().hex() == txid
        assert 25_000_000 in [o.value for o in tx.vout]
        sim.mine(1)
    # with the block holding it (how a node without -txindex finds a confirmed one)
    assert backend.raw_transaction(txid, backend.block_hash(backend.tip().height - 1)) == raw
    assert backend.raw_transaction("00" * 32) is None


def test_unspent_and_history(sim, backend):
    address = sim.new_address()
    t1 = sim.pay(address, "0.1")
    sim.mine(1)
    t2 = sim.pay(address, "0.2")
    utxos = backend.unspent([address])
    # Confirmed outputs are always reported; bitcoind's scantxoutset sees the UTXO set (no mempool).
    assert (t1, 10_000_000, backend.tip().height) in {(u.txid, u.sats, u.height) for u in utxos}
    history = [t.txid for t in backend.history(address, since_height=backend.tip().height - 1)]
    assert history[:1] == [t1] and t2 in history


def test_rbf_signal_and_fee_estimates(sim, backend):
    address = sim.new_address()
    assert backend.transaction(sim.pay(address, "0.01", rbf=True)).rbf is True
    assert backend.transaction(sim.pay(address, "0.01")).rbf is False
    fees = backend.fee_estimates((1, 6))
    assert all(v > 0 for v in fees.values())


def test_broadcast_errors_are_chain_errors(sim, backend):
    with pytest.raises(ChainError):
        backend.broadcast("00")


def test_hints_report_new_txs_and_blocks_and_gaps(sim, backend):
    assert [h.kind for h in backend.hints(0.2)] == ["resync"]  # the first call connects: reconcile
    if backend.name.startswith("bitcoind"):
        sim.wait_zmq_subscribed("sequence")
    address = sim.new_address()

    def saw(kind, value):
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen += backend.hints(0.2)
            if any(h.kind == kind and (value is None or h.value == value) for h in seen):
                return seen
        raise AssertionError(f"no {kind} hint for {value} in {seen}")
    txid = sim.pay(address, "0.001")
    saw("tx", txid)
    (block_hash,) = sim.mine(1)
    saw("block", block_hash)
    if backend.name.startswith("bitcoind"):  # a lost notification is a gap, and a gap means resync
        sim.drop_zmq(3)  # a payment's hashtx, rawtx and sequence notifications
        sim.pay(address, "0.001")
        sim.pay(address, "0.001")
        assert any(h.kind == "resync" and "gap" in h.value for h in saw("resync", None))


def test_bitcoind_tx_hints_carry_the_body_from_rawtx(sim):
    """A mempool acceptance ("A") hint carries the transaction parsed from the rawtx that came
    just before it, equal to what getrawtransaction says; block transactions' bodies never
    ride on a hint, and a hint whose rawtx was lost is a plain txid (the consumer asks)."""
    b = make_bitcoind(sim)
    try:
        b.hints(0.1)  # connects
        sim.wait_zmq_subscribed("sequence", "rawtx")
        address = sim.new_address()

        def tx_hints(want):
            got, deadline = [], time.monotonic() + 15
            while time.monotonic() < deadline and not any(h.kind == "tx" and h.value == want for h in got):
                got += b.hints(0.2)
            return [h for h in got if h.kind == "tx"]

        for rbf in (True, False):
            txid = sim.pay(address, "0.002", rbf=rbf)
            (hint,) = [h for h in tx_hints(txid) if h.value == txid]
            by_rpc = b.transaction(txid)
            assert hint.tx is not None and hint.tx.txid == txid and hint.tx.height is None
            assert hint.tx.rbf is rbf and hint.tx.inputs == by_rpc.inputs
            assert [(o.txid, o.vout, o.script, o.sats) for o in hint.tx.outputs] == \
                [(o.txid, o.vout, o.script, o.sats) for o in by_rpc.outputs]
        sim.mine(1)  # rawtx for each block transaction, coinbase included: no hint carries one
        txid = sim.pay(address, "0.003")
        assert all(h.tx is None or h.tx.txid == h.value for h in tx_hints(txid))
        coinbase = [tx for tx in b._zmq.bodies.values() if not tx.inputs]
        assert coinbase and coinbase[0].rbf is False  # parsed as a coinbase: no spent outpoints
        sim.drop_zmq(2)  # the next payment's hashtx and rawtx: its "A" comes without a body
        txid = sim.pay(address, "0.004")
        (hint,) = [h for h in tx_hints(txid) if h.value == txid]
        assert hint.tx is None
    finally:
        b.close()


def test_wrong_password_and_dead_node(sim):
    bad = Bitcoind(sim.rpc_url, user="__cookie__", password="wrong")
    with pytest.raises(ChainError, match="refused our RPC credentials"):
        bad.tip()
    dead = Bitcoind(f"http://127.0.0.1:{free_port()}", user="u", password="p", timeout=2)
    with pytest.raises(ChainError, match="ConnectionRefused"):
        dead.tip()


def test_rpc_error_and_dropped_connection(sim):
    b = make_bitcoind(sim)
    with pytest.raises(ChainError, match="error -8|error -5|error -1"):
        b.rpc("getblockhash", 10**6)
    sim.stop_rpc(1.0)  # the node drops connections for a second
    with pytest.raises(ChainError):
        b.tip()
    wait_for(lambda: _answers(b), what="the node to answer again")


def _answers(b):
    try:
        return b.tip().height >= 0
    except ChainError:
        return False


def test_failover_uses_the_next_backend_and_says_which(sim):
    dead = Bitcoind(f"http://127.0.0.1:{free_port()}", user="u", password="p", timeout=2, name="primary")
    good = Bitcoind(sim.rpc_url, cookie_file=sim.cookie_file, name="secondary")
    f = Failover([dead, good])
    assert f.tip().hash == good.tip().hash
    assert f.last_used == "secondary" and "primary" in f.errors
    with pytest.raises(ChainError, match="every chain backend failed"):
        Failover([dead]).tip()
