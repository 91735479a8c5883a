"""PayoutMgr's payouts on the fake runtime (actors/payout_mgr/desk.py), on SQLite and PostgreSQL:
commands from admins, building, co-signing with the demo's three software keys, broadcast once
(also across a restart between finalizing and broadcasting), the chain's answers, invalidation.

The test plays the chain notifier and, through a fake ChainAdaptor (tests/test_payout_utxos_unit.py
FakeNode, with a mempool and broadcast here), the node.
"""

from __future__ import annotations

import os

import pytest
from embit.transaction import Transaction

from actors.chain.adaptor import ChainError, TxOut
from actors.payout_mgr import ledger, service
from actors.payout_mgr import psbt as tx
from actors.payout_mgr.ledger import Payout
from proto.errors import NotGranted
from tests.test_payout_utxos_unit import FakeNode, Payouts
from tests.unit_db import add_admins, empty, unit_home

DEST = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
PRICE = "100000.00"  # CAD per BTC: 1,000 sats = 1.00 CAD


class Node(FakeNode):
    """FakeNode with a mempool: broadcast checks the inputs, refuses what it has, mine() confirms."""

    def __init__(self):
        super().__init__()
        self.broadcasts: list[str] = []
        self.refuse: str | None = None

    def fee_estimates(self, targets=(1, 3, 6, 144)):
        self._up()
        from decimal import Decimal
        return {1: Decimal("20"), 6: Decimal("3"), 144: Decimal("1")}

    def broadcast(self, raw_hex):
        self._up()
        if self.refuse:
            raise ChainError(self.refuse)
        t = Transaction.parse(bytes.fromhex(raw_hex))
        txid = t.txid().hex()
        self.broadcasts.append(txid)
        if txid in self.txs:
            raise ChainError("RPC error -27: Transaction already in block chain"
                             if self.txs[txid][1] is not None else "RPC error -26: txn-already-in-mempool")
        for v in t.vin:
            if (v.txid.hex(), v.vout) not in self.utxos:
                raise ChainError("RPC error -25: bad-txns-inputs-missingorspent")
        self.txs[txid] = (bytes.fromhex(raw_hex), None)
        return txid

    def mine(self, txid, height):
        """Confirm a transaction: its inputs leave the UTXO set, its outputs enter it."""
        raw, _ = self.txs[txid]
        t = Transaction.parse(raw)
        self.txs[txid] = (raw, height)
        for v in t.vin:
            self.utxos.pop((v.txid.hex(), v.vout), None)
        from embit.networks import NETWORKS
        for n, o in enumerate(t.vout):
            self.utxos[(txid, n)] = TxOut(txid, n, o.script_pubkey.data.hex(),
                                          o.script_pubkey.address(NETWORKS["regtest"]), o.value, height)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    """A home per database kind, with three admins besides `admin`: alice, bob and carol."""
    with unit_home(request.param, tmp_path_factory.mktemp("payout_desk") / "home", "payout_desk") as h:
        add_admins(h)
        yield h


@pytest.fixture
def desk(home):
    empty(home.database_url)
    p = Payouts(home, Node())
    p.run(0.5)  # discovery answered, every address watched
    p.rt.send("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 2,
                                "as_of": int(p.clock.time() * 1000)}, sender="price_notifier")
    yield p
    p.close()


def _fund(desk, sats, index=0):
    txid, address = desk.node.fund(desk.treasury, index, sats, confirmed_at=200)
    desk.chain(address, sats, "confirmed", txid, confirmations=1, height=200)
    desk.rt.wait_for(lambda: desk.utxo(txid).raw_tx is not None, what="the raw transaction")
    return txid


def _cmd(desk, verb, sender="alice", **body):
    body = {"id": os.urandom(16), "expires": int(desk.clock.time()) + 60, **body}
    desk.rt.send(f"cmd.payouts.{verb}", body, sender=sender)
    (ack,) = desk.rt.bodies("payouts.ack", id=body["id"])
    return ack


def _request(desk, sats=50_000, sender="alice", **kw):
    body = {"to": DEST, "sats": sats, "cad": None, "kind": "manual", "reason": "revenue share", **kw}
    return _cmd(desk, "request", sender, **body)


def _cosign(desk, pid, n, sender):
    """A co-signer signs with their demo key (HOME/demo/cosignerN.key) and imports the signatures."""
    secret = (desk.home.root / "demo" / f"cosigner{n}.key").read_text()
    with desk.db.bind_ctx(ledger.MODELS):
        theirs = tx.decode(Payout.get_by_id(pid).psbt)
    tx.sign(desk.treasury, theirs, secret)
    return _cmd(desk, "import", sender, payout=pid, psbt=service.signatures_only(theirs.to_base64()))


def _payout(desk, pid):
    with desk.db.bind_ctx(ledger.MODELS):
        return Payout.get_by_id(pid)


def _events(desk, pid):
    return [t.split(".", 1)[1] for t, b in desk.rt.published if t.startswith("payout.") and b["payout"] == pid]


def test_a_payout_from_request_to_confirmed(desk):
    _fund(desk, 200_000)
    ack = _request(desk)
    assert (ack["status"], ack["state"]) == ("done", "requested")
    pid = ack["payout"]
    refused = _cmd(desk, "approve", "alice", payout=pid, reason=None)
    assert refused["status"] == "refused" and "cannot approve their own" in refused["reason"]
    assert _cmd(desk, "approve", "bob", payout=pid, reason=None)["status"] == "done"
    p = _payout(desk, pid)
    assert p.state == "awaiting_signatures" and p.change_index == 0
    assert Decimal_rate(p) >= 3  # the node's estimate for 6 blocks
    assert _cosign(desk, pid, 1, "alice")["state"] == "awaiting_signatures"
    assert _cosign(desk, pid, 3, "carol")["state"] == "signed"
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast")
    assert desk.node.broadcasts == [p.txid]
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the confirmation")
    assert _events(desk, pid) == ["requested", "awaiting_signatures", "signature", "signature", "signed",
                                  "broadcast", "confirmed"]
    view = service.summary(desk.treasury, _payout(desk, pid))
    assert [s["brought_by"] for s in view["signers"] if s["signed"]] == ["alice", "carol"]


def Decimal_rate(p):
    from decimal import Decimal
    return Decimal(p.fee) / p.vsize


def test_a_command_retried_is_applied_once(desk):
    body = {"id": os.urandom(16), "expires": int(desk.clock.time()) + 60, "to": DEST, "sats": 10_000, "cad": None,
            "kind": "manual", "reason": "twice"}
    for _ in range(2):
        desk.rt.send("cmd.payouts.request", body, sender="alice")
    a, b = desk.rt.bodies("payouts.ack", id=body["id"])
    assert a == b and a["status"] == "done"
    with desk.db.bind_ctx(ledger.MODELS):
        assert Payout.select().count() == 1


def test_requests_refused_with_the_reason(desk):
    assert "one of the two" in _request(desk, sats=None)["reason"]
    assert "not an address of the regtest network" in _request(
        desk, to="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")["reason"]
    assert "above the per-payout limit" in _request(desk, sats=10**9)["reason"]
    assert "no payout 1" in _cmd(desk, "bump", payout=1, feerate="5")["reason"]
    with pytest.raises(NotGranted):  # a machine cannot ask for money: the policy grants admins only
        _request(desk, sender="vm1")
    desk.rt.send("price.stale", {"reason": "sources disagree", "fresh": 1, "needed": 2, "sources": []},
                 sender="price_notifier")
    ack = _request(desk, sats=None, cad="10.00")
    assert ack["status"] == "refused" and "no fresh BTC/CAD price" in ack["reason"]


def test_an_amount_in_cad_is_turned_into_sats_at_the_price_now(desk):
    ack = _request(desk, sats=None, cad="12.34")
    assert _payout(desk, ack["payout"]).sats == 12_340 and _payout(desk, ack["payout"]).cad_cents == 1234


def test_without_money_a_payout_waits_with_the_reason_and_is_built_when_coins_come(desk):
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    p = _payout(desk, pid)
    assert p.state == "requested" and "waiting: the treasury holds 0 sats" in p.state_reason
    _fund(desk, 100_000, index=3)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "awaiting_signatures", what="the payout built")


def test_killed_between_finalizing_and_broadcasting_it_is_broadcast_once_after_restart(desk):
    _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 2, "bob")
    desk.node.down = True  # the node unreachable: finalized, kept, not broadcast
    assert _cosign(desk, pid, 3, "carol")["state"] == "signed"
    desk.rt.wait_for(lambda: (_payout(desk, pid).state_reason or "").startswith("not broadcast yet: fake: "
                                                                                "connection refused"),
                     what="the broadcast to fail")
    assert _payout(desk, pid).state == "signed" and desk.node.broadcasts == []
    desk.node.down = False
    desk.restart()
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast after the restart")
    assert desk.node.broadcasts == [_payout(desk, pid).txid]
    assert [e for e in _events(desk, pid) if e == "broadcast"] == ["broadcast"]


def test_a_broadcast_whose_answer_was_lost_counts_when_the_node_says_it_has_it(desk):
    """Killed after the node took the transaction, before that was recorded: the broadcast at the
    next start meets "already in the mempool", which is the payout broadcast, once."""
    _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 1, "alice")
    desk.node.down = True
    _cosign(desk, pid, 2, "bob")
    desk.rt.wait_for(lambda: (_payout(desk, pid).state_reason or "").startswith("not broadcast yet"),
                     what="the broadcast to fail")
    p = _payout(desk, pid)
    desk.node.txs[p.txid] = (bytes.fromhex(p.raw_tx), None)  # it reached the node after all
    desk.node.down = False
    desk.restart()
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the payout broadcast")
    assert desk.node.broadcasts == [p.txid]  # one attempt, answered "already in the mempool"
    assert "had it already" in _payout(desk, pid).state_reason


def test_an_input_spent_elsewhere_while_signatures_are_collected_invalidates_the_payout(desk):
    txid = _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 1, "alice")
    # a co-signer spends the same coin from their own wallet; it confirms
    from embit.script import Script
    from embit.transaction import TransactionInput, TransactionOutput
    other = Transaction(vin=[TransactionInput(bytes.fromhex(txid), 0)],
                        vout=[TransactionOutput(190_000, Script(bytes.fromhex("0014" + "22" * 20)))])
    desk.node.txs[other.txid().hex()] = (other.serialize(), None)
    desk.node.mine(other.txid().hex(), 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "invalidated", what="the payout invalidated")
    assert "spent by another transaction" in _payout(desk, pid).state_reason
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.claimed_outpoints() == set()
    assert _cosign(desk, pid, 2, "bob")["status"] == "refused"


def test_a_payout_co_signers_finalized_elsewhere_is_recognised_by_its_txid(desk):
    _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    p = _payout(desk, pid)
    psbt = tx.decode(p.psbt)  # signed and finalized in Sparrow, say, and broadcast from there
    for n in (1, 2):
        tx.sign(desk.treasury, psbt, (desk.home.root / "demo" / f"cosigner{n}.key").read_text())
    final = tx.finalize(desk.treasury, psbt)
    desk.node.broadcast(final.serialize().hex())
    desk.block(200)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the payout recognised")
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="its confirmation")


def test_two_payouts_take_different_coins(desk):
    _fund(desk, 120_000, index=0)
    _fund(desk, 120_000, index=1)
    a, b = (_request(desk, sats=100_000)["payout"] for _ in range(2))
    for pid in (a, b):
        _cmd(desk, "approve", "bob", payout=pid, reason=None)
    pa, pb = _payout(desk, a), _payout(desk, b)
    assert pa.state == pb.state == "awaiting_signatures"
    assert set(pa.outpoints).isdisjoint(pb.outpoints)
    assert pa.change_index != pb.change_index


# -- a node without -txindex (bitcoind's default): the fake's transaction() finds only unconfirmed ones --

def _signed_and_broadcast(desk, sats=50_000, fund=200_000):
    txid = _fund(desk, fund)
    pid = _request(desk, sats=sats)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    with desk.db.bind_ctx(ledger.MODELS):  # as a refund's claim on its invoice
        ledger.PayoutClaim.create(key="invoice:4242", payout=pid)
    _cosign(desk, pid, 1, "alice")
    _cosign(desk, pid, 3, "carol")
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast")
    return txid, pid


def test_our_payout_confirmed_on_a_node_without_txindex_is_confirmed_and_keeps_its_claims(desk):
    """The bug: once mined, getrawtransaction finds it no more and its input is spent; m3 read
    that as "spent by another transaction", invalidated the paid payout and released its
    invoice's claim (a second refund possible). Its spender is found in the blocks instead."""
    assert desk.node.txindex is False
    funding, pid = _signed_and_broadcast(desk)
    p = _payout(desk, pid)
    desk.node.mine(p.txid, 201)
    assert desk.node.transaction(p.txid) is None  # the node finds it no more
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the confirmation")
    assert _payout(desk, pid).state_reason == "confirmed at height 201"
    u = desk.utxo(funding)
    assert (u.state, u.spent_by, u.spent_height, u.spent_block) == ("spent", p.txid, 201, desk.node.block_hash(201))
    with desk.db.bind_ctx(ledger.MODELS):
        claims = {c.key: c.payout for c in ledger.PayoutClaim.select()}
    assert claims.get("invoice:4242") == pid and claims.get(f"utxo:{funding}:0") == pid
    # later blocks, lookups and a restart change nothing: still paid, once
    for h in (202, 203):
        desk.node.height = h
        desk.block(h)
        desk.rt.advance(1.0)
    desk.restart()
    desk.rt.advance(2.0)
    desk.rt.wait_for(lambda: desk.actor._check_queued is False and desk.actor._lookup_queued is False,
                     what="the start's checks")
    assert _payout(desk, pid).state == "confirmed"
    assert "invalidated" not in _events(desk, pid)


def test_a_broadcast_payout_whose_input_another_transaction_spent_is_invalidated_without_txindex(desk):
    from embit.script import Script
    from embit.transaction import TransactionInput, TransactionOutput

    funding, pid = _signed_and_broadcast(desk)
    p = _payout(desk, pid)
    del desk.node.txs[p.txid]  # evicted: a co-signer's own transaction spending the same coin was mined
    other = Transaction(vin=[TransactionInput(bytes.fromhex(funding), 0)],
                        vout=[TransactionOutput(190_000, Script(bytes.fromhex("0014" + "22" * 20)))])
    desk.node.txs[other.txid().hex()] = (other.serialize(), None)
    desk.node.mine(other.txid().hex(), 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "invalidated", what="the payout invalidated")
    assert other.txid().hex() in _payout(desk, pid).state_reason
    assert desk.utxo(funding).spent_by == other.txid().hex()
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.PayoutClaim.get_or_none(ledger.PayoutClaim.key == "invoice:4242") is None  # released


def test_our_payout_reorged_out_goes_back_to_broadcast_then_confirms_again(desk):
    funding, pid = _signed_and_broadcast(desk)
    p = _payout(desk, pid)
    raw = desk.node.txs[p.txid][0]
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the confirmation")
    # block 201 reorged away: the coin is unspent again, the payout back in the mempool
    desk.node.blocks[201] = "a3" * 32
    desk.node.txs[p.txid] = (raw, None)
    for n in range(2):
        desk.node.utxos.pop((p.txid, n), None)
    funding_out = TxOut(funding, 0, *_out(desk, funding))
    desk.node.utxos[(funding, 0)] = funding_out
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="back to broadcast")
    assert _payout(desk, pid).state_reason == "reorged out"
    assert desk.utxo(funding).state == "confirmed" and desk.utxo(funding).spent_by is None
    # mined again in the new chain's next block
    desk.node.mine(p.txid, 202)
    desk.block(202)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="confirmed again")
    assert _payout(desk, pid).state_reason == "confirmed at height 202"


def _out(desk, funding):
    """(script, address, sats, height) of the funding transaction's output 0."""
    from embit.networks import NETWORKS
    raw, height = desk.node.txs[funding]
    o = Transaction.parse(raw).vout[0]
    return o.script_pubkey.data.hex(), o.script_pubkey.address(NETWORKS["regtest"]), o.value, height


def test_a_spend_older_than_rescan_limit_leaves_the_payout_as_it_is(desk):
    """A spender not found within [chain] rescan_limit blocks decides nothing (never "gone")."""
    funding, pid = _signed_and_broadcast(desk)
    p = _payout(desk, pid)
    desk.node.mine(p.txid, 201)
    desk.actor.rescan_limit = 1
    desk.node.height = 203  # the spend is 3 blocks down: beyond the 1 block searched
    desk.block(203)
    desk.rt.wait_for(lambda: desk.utxo(funding).state == "spent", what="the spend noticed")
    desk.rt.wait_for(lambda: desk.actor._lookup_queued is False, what="the lookup")
    assert desk.utxo(funding).spent_by is None and _payout(desk, pid).state == "broadcast"


def _invoice(desk, **fields):
    """A BusinessMgr invoice in the shared database (BusinessMgr's own tables, as it writes them)."""
    from actors.business_mgr.models import TABLES, SalesInvoice
    from actors.db import ensure_tables

    with desk.db.bind_ctx(TABLES):
        ensure_tables(desk.db, TABLES)
    now = int(desk.clock.time())
    row = {"mode": "invoice", "machine": "vm1", "slot": 1, "product": "club-mate", "price_cents": 350, "items": 1,
           "cad_per_btc": "50000.00", "due_sats": 7000, "address": "bcrt1qinvoice", "state": "expired",
           "created": now - 900, "expires": now - 300, **fields}
    with desk.db.bind_ctx(TABLES):
        return SalesInvoice.create(**row).id


def test_a_refund_is_drafted_from_an_invoice_once_at_the_rate_then_or_now(desk):
    """`dctrl invoices refund`: an expired invoice paid 6,000 sats (at 50,000 CAD/BTC, 3.00 CAD)
    owes them back; "then" pays the sats, "now" their CAD value at today's price (100,000 CAD/BTC:
    3,000 sats); once per invoice while a refund of it is alive."""
    inv = _invoice(desk, received_sats=6_000)
    then = _cmd(desk, "refund", invoice=inv, to=DEST, rate="then", reason=None)
    assert then["status"] == "done", then
    p = _payout(desk, then["payout"])
    assert (p.kind, p.sats, p.invoice, p.requested_by) == ("refund", 6_000, str(inv), "alice")
    assert "refund of invoice" in p.reason and "rate then" in p.reason
    again = _cmd(desk, "refund", "bob", invoice=inv, to=DEST, rate="now", reason=None)
    assert again["status"] == "refused" and f"invoice {inv}'s refund is already taken by payout {p.id}" in again["reason"]
    _cmd(desk, "cancel", payout=p.id, reason="wrong address")
    now = _cmd(desk, "refund", "bob", invoice=inv, to=DEST, rate="now", reason="customer asked")
    assert now["status"] == "done", now
    assert (_payout(desk, now["payout"]).sats, _payout(desk, now["payout"]).reason) == (3_000, "customer asked")
    paid = _invoice(desk, state="paid", received_sats=7_000, vended=1)
    nothing = _cmd(desk, "refund", invoice=paid, to=DEST, rate="then", reason=None)
    assert nothing["status"] == "refused" and "owes nothing back" in nothing["reason"]
    assert "no invoice 999" in _cmd(desk, "refund", invoice=999, to=DEST, rate="then", reason=None)["reason"]


def test_a_refund_withdrawn_after_its_psbt_went_out_is_paid_once_if_the_co_signers_complete_it(desk):
    """Found by review: a refund cancelled while waiting for signatures released its invoice, a
    second refund of the invoice was paid, and the co-signers could still complete the first in
    their wallets: the invoice refunded twice, the first never recorded. Now the invoice stays the
    withdrawn payout's own, and its completion is recorded as paid."""
    _fund(desk, 200_000)
    inv = _invoice(desk, received_sats=6_000)
    pid = _cmd(desk, "refund", invoice=inv, to=DEST, rate="then", reason=None)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    assert _payout(desk, pid).state == "awaiting_signatures"
    _cosign(desk, pid, 1, "alice")
    assert _cmd(desk, "cancel", payout=pid, reason="changed our minds")["state"] == "cancelled"
    again = _cmd(desk, "refund", "bob", invoice=inv, to=DEST, rate="then", reason=None)
    assert again["status"] == "refused" and f"already taken by payout {pid}" in again["reason"]
    # the co-signers finish it in their own wallets and broadcast it
    p = _payout(desk, pid)
    psbt = tx.decode(p.psbt)
    tx.sign(desk.treasury, psbt, (desk.home.root / "demo" / "cosigner2.key").read_text())
    final = tx.finalize(desk.treasury, psbt)
    desk.node.broadcast(final.serialize().hex())
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the withdrawn refund recorded paid")
    assert "confirmed" in _events(desk, pid)
    assert _cmd(desk, "refund", "bob", invoice=inv, to=DEST, rate="then", reason=None)["status"] == "refused"


def test_a_withdrawn_payout_whose_coin_is_spent_elsewhere_frees_its_invoice(desk):
    txid = _fund(desk, 200_000)
    inv = _invoice(desk, received_sats=6_000)
    pid = _cmd(desk, "refund", invoice=inv, to=DEST, rate="then", reason=None)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cmd(desk, "cancel", payout=pid, reason="wrong address")
    # the coin is spent by another transaction: the withdrawn PSBT can never confirm now
    from embit.script import Script
    from embit.transaction import TransactionInput, TransactionOutput
    other = Transaction(vin=[TransactionInput(bytes.fromhex(txid), 0)],
                        vout=[TransactionOutput(190_000, Script(bytes.fromhex("0014" + "33" * 20)))])
    desk.node.txs[other.txid().hex()] = (other.serialize(), None)
    desk.node.mine(other.txid().hex(), 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _cmd(desk, "refund", "bob", invoice=inv, to=DEST, rate="then",
                                  reason=None)["status"] == "done", what="the invoice free for a new refund")
    assert _payout(desk, pid).state == "cancelled"
