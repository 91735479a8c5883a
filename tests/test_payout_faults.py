"""Issue 13's "Bad input and faults" that the other payout tests leave open.

On real processes (broker, Vault, event_logger, chain_notifier, payout_mgr, the chain simulator;
SQLite and PostgreSQL, the setup of tests/test_payouts.py): payout_mgr killed with ``kill -9``
between finalizing and broadcasting (the node unreachable meanwhile) is broadcast once after its
restart; then a reorg takes the confirmed payout out of the chain and back to the mempool: the
payout goes back to ``broadcast``, then ``confirmed`` again, the destination paid once.

On the fake runtime and the fake node (tests/test_payout_desk_unit.py's ``desk``): the broadcast
refused by the node for a reason other than a connection (the payout stays ``signed`` with the
node's reason, no ``broadcast`` event, tried again); a reorg whose replacement chain confirms
another spend of an input (the payout, once confirmed, is ``invalidated``, never left reported paid).

The map of every item of the list to its test is in docs/architecture.md (Payouts: what the tests
show).
"""

from __future__ import annotations

import signal
import sys
from decimal import Decimal

import pytest
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from actors.payout_mgr import psbt as tx
from tests.harness import BusClient, Network, chain_sim, dctrl, home_on, wait_for
from tests.test_payout_desk_unit import PRICE as DESK_PRICE
from tests.test_payout_desk_unit import Node, _cmd, _cosign, _events, _fund, _payout, _request
from tests.test_payout_desk_unit import home  # noqa: F401 (the fake runtime's home, module-scoped)
from tests.test_payout_utxos_unit import Payouts
from tests.test_payouts import payout_show, price_and_fund
from tests.unit_db import empty

# -- real processes -------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def proc_home(request, tmp_path):
    """As tests/test_payouts.py's ``home``: `dctrl init`'s, with the demo 2-of-3 treasury."""
    with home_on(request.param, tmp_path / "home", "payout_faults") as h:
        yield h


@pytest.fixture
def sim(proc_home):
    with chain_sim(proc_home, txindex=False) as s:  # bitcoind's default: what production sees
        yield s



def _reorg_into_the_mempool(sim, depth=1):
    """A reorg of ``depth`` blocks whose replacement blocks are empty: the disconnected
    transactions wait in the mempool (``sim_reorg`` would confirm them again in its first new
    block, too quickly for anyone to see them unconfirmed). The sim's own steps (Chain.reorg)
    with an empty first block, under its lock; the notifications are the sim's (ZMQ)."""
    chain = sim.chain
    with sim._lock:
        gone = [chain.disconnect_tip() for _ in range(depth)]
        for block in reversed(gone):
            for t in block.txs[1:]:
                chain.accept(t, bypass_limits=True)
        for _ in range(depth + 1):
            chain.connect(chain.build_block(sim.wallet.funding_script, []), announce_tip=False)
        chain.notify.tip_updated(chain.tip)
        sim.save()
    return [t.txid for b in gone for t in b.txs[1:]]


@pytest.mark.slow
def test_killed_between_finalizing_and_broadcasting_then_reorged_out_it_is_paid_once(proc_home, sim):
    home = proc_home
    from actors.payout_mgr.treasury import Treasury

    treasury = Treasury(home.config["treasury"]["descriptor"], "regtest")
    key = [home.root / "demo" / f"cosigner{n}.key" for n in (1, 2, 3)]
    dctrl(home, "keys", "add", "bob", "--role", "admin")
    net = Network(home)
    prices = None
    try:
        net.start_healthy("broker", "vault", "event_logger", "chain_notifier", "payout_mgr", timeout=30)
        prices = BusClient(home, "price_notifier")
        price_and_fund(home, prices, treasury)
        dest = sim.new_address()
        assert "payout 1: requested" in dctrl(home, "payouts", "request", "--to", dest, "--sats", "100000",
                                              "--reason", "kill -9 test").stdout
        dctrl(home, "payouts", "approve", "1", "--as", "bob")
        wait_for(lambda: payout_show(home)["state"] == "awaiting_signatures", timeout=30, what="the PSBT built")
        dctrl(home, "payouts", "sign", "1", "--key", str(key[0]))

        # the node unreachable (every RPC connection closed unanswered): the last signature
        # finalizes the payout, which is kept `signed`; the broadcast fails, with the reason
        sim.rpc_server.refuse_for(3600)
        assert "payout 1: signed" in dctrl(home, "payouts", "sign", "1", "--key", str(key[2])).stdout
        v = wait_for(lambda: (s := payout_show(home))["state_reason"] and
                     s["state_reason"].startswith("not broadcast yet") and s, timeout=30,
                     what="the broadcast to fail")
        assert v["state"] == "signed" and v["txid"]
        text = dctrl(home, "payouts", "show", "1").stdout
        assert "payout 1 (manual): signed - not broadcast yet" in text, text
        assert net.signal("payout_mgr", signal.SIGKILL) == -signal.SIGKILL
        assert v["txid"] not in sim.call("getrawmempool")  # (in-process: not through the refused RPC)

        # the node back, payout_mgr restarted: broadcast from the kept final transaction, once
        sim.rpc_server.refuse_for(0)
        net.start_healthy("payout_mgr", timeout=30)
        b = wait_for(lambda: (s := payout_show(home))["state"] == "broadcast" and s, timeout=30,
                     what="the payout broadcast after the restart")
        assert b["txid"] == v["txid"] and sim.call("getrawmempool") == [v["txid"]]
        dctrl(home, "sim", "mine", "1")
        wait_for(lambda: payout_show(home)["state"] == "confirmed", timeout=30, what="the payout confirmed")

        # a reorg: its block is replaced by empty ones; the payout is back in the mempool
        assert _reorg_into_the_mempool(sim) == [v["txid"]]
        assert sim.call("getrawmempool") == [v["txid"]]
        r = wait_for(lambda: (s := payout_show(home))["state"] == "broadcast" and s, timeout=30,
                     what="the payout back to broadcast after the reorg")
        assert r["state_reason"] == "reorged out"
        dctrl(home, "sim", "mine", "1")
        c = wait_for(lambda: (s := payout_show(home))["state"] == "confirmed" and s, timeout=30,
                     what="the payout confirmed again")
        assert [h["state"] for h in c["history"]] == ["requested", "awaiting_signatures", "signed", "broadcast",
                                                      "confirmed", "broadcast", "confirmed"]
        paid = sim.call("scantxoutset", "start", [f"addr({dest})"])
        assert [(u["txid"], u["amount"]) for u in paid["unspents"]] == [(v["txid"], Decimal("0.00100000"))]
        log = net.log("payout_mgr")
        assert log.count(f"payout 1 broadcast: {v['txid']}") == 1, log
    finally:
        sim.rpc_server.refuse_for(0)
        if prices is not None:
            prices.close()
        net.close()


# -- the fake runtime and node --------------------------------------------------------------------

@pytest.fixture
def desk(home):  # noqa: F811
    """tests/test_payout_desk_unit.py's ``desk``, with desk.py's monotonic clock the fake one too
    (its rebroadcast timer then falls due when the test advances the clock)."""
    empty(home.database_url)
    p = Payouts(home, Node())
    with p.clock.patch(sys.modules["actors.payout_mgr.desk"]):
        p.restart()  # (built again under the patch)
        p.run(0.5)
        p.rt.send("price.btc_cad", {"cad_per_btc": DESK_PRICE, "sources": [], "used": 2,
                                    "as_of": int(p.clock.time() * 1000)}, sender="price_notifier")
        yield p
        p.close()


def _signed(desk, refuse):
    """A funded, approved payout; co-signers 1 and 2 sign while the node refuses with ``refuse``."""
    txid = _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 1, "alice")
    desk.node.refuse = refuse
    assert _cosign(desk, pid, 2, "bob")["state"] == "signed"
    return txid, pid


MIN_RELAY = "RPC error -26: min relay fee not met, 141 < 153"


def test_a_broadcast_the_node_refuses_stays_signed_with_its_reason_and_is_tried_again(desk):
    _, pid = _signed(desk, MIN_RELAY)
    desk.rt.wait_for(lambda: _payout(desk, pid).state_reason == f"not broadcast yet: {MIN_RELAY}",
                     what="the node's reason kept")
    p = _payout(desk, pid)
    assert p.state == "signed" and "broadcast" not in _events(desk, pid)
    from actors.payout_mgr import service
    assert service.summary(desk.treasury, p)["state"] == "signed"
    # tried again (every REBROADCAST s; forced here): the node takes it this time
    from actors.payout_mgr.desk import REBROADCAST
    desk.rt.advance(REBROADCAST / 2)  # not yet
    desk.rt.run_pending()
    assert desk.node.broadcasts == [] and _payout(desk, pid).state == "signed"
    desk.node.refuse = None
    desk.rt.advance(2 * REBROADCAST)  # (the timer's phase: due within two periods)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast tried again")
    assert desk.node.broadcasts == [p.txid] and _events(desk, pid).count("broadcast") == 1
    assert _payout(desk, pid).state_reason == "the node took it"


def test_a_broadcast_refused_because_an_input_is_spent_stays_signed_until_the_spend_confirms(desk):
    """An input spent in the node's mempool by another transaction (a co-signer's own wallet):
    the node refuses; the payout stays `signed` with that reason until the other spend confirms,
    then it is `invalidated` and its other claims are released."""
    coin, pid = _signed(desk, "RPC error -26: txn-mempool-conflict")
    desk.rt.wait_for(lambda: "txn-mempool-conflict" in (_payout(desk, pid).state_reason or ""),
                     what="the node's refusal kept")
    assert _payout(desk, pid).state == "signed" and "broadcast" not in _events(desk, pid)
    spend = Transaction(vin=[TransactionInput(bytes.fromhex(coin), 0)],
                        vout=[TransactionOutput(190_000, Script(bytes.fromhex("0014" + "33" * 20)))])
    desk.node.txs[spend.txid().hex()] = (spend.serialize(), None)
    desk.node.mine(spend.txid().hex(), 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "invalidated", what="the payout invalidated")
    assert "spent by another transaction" in _payout(desk, pid).state_reason
    assert _events(desk, pid)[-1] == "invalidated" and "broadcast" not in _events(desk, pid)
    from actors.payout_mgr import ledger
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.claimed_outpoints() == set()


def test_a_reorg_that_unconfirms_a_payout_sends_it_back_to_broadcast_then_confirmed(desk):
    coin, pid = _signed(desk, None)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast")
    p = _payout(desk, pid)
    coin_out = desk.node.utxos[(coin, 0)]
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the confirmation")
    assert desk.utxo(coin).spent_by == p.txid  # found in block 201 (the node has no -txindex)
    # reorged out, back in the mempool: another block at 201, the coin unspent again
    desk.node.blocks[201] = "a1" * 32
    desk.node.txs[p.txid] = (desk.node.txs[p.txid][0], None)
    for n in range(len(Transaction.parse(desk.node.txs[p.txid][0]).vout)):
        desk.node.utxos.pop((p.txid, n), None)
    desk.node.utxos[(coin, 0)] = coin_out
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="back to broadcast")
    assert _payout(desk, pid).state_reason == "reorged out"
    desk.node.mine(p.txid, 202)
    desk.block(202)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="confirmed again")
    assert _events(desk, pid)[-4:] == ["broadcast", "confirmed", "broadcast", "confirmed"]


def _change(desk, p):
    """The payout's change output: (address, vout, sats)."""
    address, spk = desk.treasury.address(p.change_index, change=True)
    t = Transaction.parse(bytes.fromhex(p.raw_tx))
    (vout,) = [n for n, o in enumerate(t.vout) if o.script_pubkey.data.hex() == spk]
    return address, vout, t.vout[vout].value


def test_a_reorg_that_confirms_another_spend_of_an_input_invalidates_a_confirmed_payout(desk):
    """Found by this test: a confirmed payout whose transaction a reorg removed, an input spent
    by another transaction in the new chain, stayed `confirmed` (paid in the books, never paid).
    The spender of the coin, found again in the new chain's blocks (the recorded one's block is
    gone), is another transaction: invalidated (no -txindex needed)."""
    coin, pid = _signed(desk, None)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast")
    p = _payout(desk, pid)
    address, vout, sats = _change(desk, p)
    desk.node.mine(p.txid, 201)
    desk.chain(address, sats, "confirmed", p.txid, confirmations=1, vout=vout, height=201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the confirmation")
    # the reorg: block 201 replaced by one that holds a co-signer's other spend of the same coin
    raw, _ = desk.node.txs.pop(p.txid)
    for n in range(len(Transaction.parse(raw).vout)):
        desk.node.utxos.pop((p.txid, n), None)
    other = Transaction(vin=[TransactionInput(bytes.fromhex(coin), 0)],
                        vout=[TransactionOutput(190_000, Script(bytes.fromhex("0014" + "22" * 20)))])
    desk.node.txs[other.txid().hex()] = (other.serialize(), None)
    desk.node.blocks[201] = "a2" * 32  # another block at that height
    desk.node.mine(other.txid().hex(), 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "invalidated", what="the payout invalidated")
    assert _payout(desk, pid).state_reason == f"an input was spent by another transaction, {other.txid().hex()}"
    assert desk.utxo(coin).spent_by == other.txid().hex()
    desk.chain(address, sats, "removed", p.txid, vout=vout)  # (the notifier's word on its change, later)
    desk.block(201)
    desk.run(1.0)
    assert _events(desk, pid)[-3:] == ["confirmed", "broadcast", "invalidated"]


def test_through_the_desk_a_key_signing_twice_counts_once_and_an_outside_key_is_refused(desk):
    """The PSBT-level checks (tests/test_payout_psbt.py) as an admin's `payouts import` meets them."""
    from embit import bip32, bip39

    from actors.payout_mgr import ledger, service

    _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    assert _cosign(desk, pid, 1, "alice")["state"] == "awaiting_signatures"
    assert _cosign(desk, pid, 1, "bob")["state"] == "awaiting_signatures"  # the same key again, by another admin
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.PayoutSignature.select().where(ledger.PayoutSignature.payout == pid).count() == 1
    assert _events(desk, pid).count("signature") == 1
    theirs = tx.decode(_payout(desk, pid).psbt)
    outsider = bip32.HDKey.from_seed(bip39.mnemonic_to_seed("zoo " * 11 + "wrong")).derive("m/0/0")
    theirs.inputs[0].partial_sigs[outsider.get_public_key()] = \
        outsider.key.sign(theirs.sighash(0, sighash=1)).serialize() + b"\x01"
    ack = _cmd(desk, "import", "carol", payout=pid, psbt=service.signatures_only(theirs.to_base64()))
    assert ack["status"] == "refused" and "not a key of this treasury" in ack["reason"], ack
    assert _payout(desk, pid).state == "awaiting_signatures" and _events(desk, pid).count("signature") == 1
