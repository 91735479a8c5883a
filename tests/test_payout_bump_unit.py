"""`payouts bump` (RBF, BIP 125) on the fake runtime, on SQLite and PostgreSQL: a broadcast payout's
replacement is a new payout (``replaces``) spending the same inputs, paying the same destination
the same amount and a higher fee out of the change; the claims move to it; whichever of the two
confirms is the payment, the other is ``replaced`` or ``invalidated``, never paid twice.

The fixtures and helpers are tests/test_payout_desk_unit.py's (a fake node with a mempool)."""

from __future__ import annotations

import math
from decimal import Decimal

from embit.transaction import Transaction

from actors.payout_mgr import ledger
from actors.payout_mgr import psbt as tx
from tests.test_payout_desk_unit import _cmd, _cosign, _events, _fund, _payout, _request, desk, home  # noqa: F401


def _broadcast_payout(desk, fund=200_000, sats=50_000):
    """A payout requested, approved, signed by co-signers 1 and 3 and broadcast (in the fake mempool)."""
    _fund(desk, fund)
    pid = _request(desk, sats=sats)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 1, "alice")
    _cosign(desk, pid, 3, "carol")
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "broadcast", what="the broadcast")
    return pid


def _claims(desk):
    with desk.db.bind_ctx(ledger.MODELS):
        return {c.key: c.payout for c in ledger.PayoutClaim.select()}


def _bump(desk, pid, feerate, sender="alice"):
    return _cmd(desk, "bump", sender, payout=pid, feerate=feerate)


def test_the_replacement_spends_the_same_inputs_pays_the_same_and_a_higher_fee(desk):
    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    ack = _bump(desk, pid, "10")
    assert (ack["status"], ack["state"]) == ("done", "awaiting_signatures"), ack
    rid = ack["payout"]
    r = _payout(desk, rid)
    assert rid != pid and r.replaces == pid and r.kind == p.kind and r.requested_by == "alice"
    assert (r.destination, r.sats, r.change_index, r.invoice) == (p.destination, p.sats, p.change_index, p.invoice)
    assert r.outpoints == p.outpoints
    old, new = tx.decode(p.psbt).tx, tx.decode(r.psbt).tx
    assert [(i.txid, i.vout) for i in new.vin] == [(i.txid, i.vout) for i in old.vin]  # all of them (BIP 125)
    assert all(i.sequence == tx.RBF_SEQUENCE for i in new.vin)
    assert [o.script_pubkey.data for o in new.vout] == [o.script_pubkey.data for o in old.vout]
    assert new.vout[0].value == old.vout[0].value == 50_000
    # rules 3 and 4: a higher absolute fee, by at least the incremental relay fee (1 sat/vB) times the size
    assert r.fee >= p.fee + r.vsize and r.fee >= math.ceil(10 * r.vsize)
    assert Decimal(r.fee) / r.vsize > Decimal(p.fee) / p.vsize
    assert r.change_sats == p.change_sats - (r.fee - p.fee) == new.vout[1].value
    assert sum(o.value for o in old.vout) - sum(o.value for o in new.vout) == r.fee - p.fee
    # the inputs' claims moved to the replacement, none released; the original stays broadcast
    assert set(_claims(desk).values()) == {rid} and len(_claims(desk)) == len(p.outpoints)
    assert _payout(desk, pid).state == "broadcast"
    assert desk.rt.last("payout.awaiting_signatures", payout=rid)["reason"].startswith(f"replaces payout {pid}")


def test_bumped_and_signed_the_replacement_confirms_and_the_original_is_replaced(desk):
    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    rid = _bump(desk, pid, "12")["payout"]
    assert _cosign(desk, rid, 2, "bob")["state"] == "awaiting_signatures"
    assert _cosign(desk, rid, 3, "carol")["state"] == "signed"
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "broadcast", what="the replacement broadcast")
    r = _payout(desk, rid)
    assert desk.node.broadcasts == [p.txid, r.txid]
    assert _payout(desk, pid).state == "broadcast"  # both can still confirm
    del desk.node.txs[p.txid]  # the node evicts the original (BIP 125)
    desk.node.mine(r.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "confirmed", what="the replacement confirmed")
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "replaced", what="the original replaced")
    assert f"replaced by payout {rid}" in _payout(desk, pid).state_reason
    assert "confirmed" not in _events(desk, pid) and _events(desk, pid)[-1] == "replaced"
    assert _events(desk, rid) == ["awaiting_signatures", "signature", "signature", "signed", "broadcast",
                                  "confirmed"]
    assert set(_claims(desk).values()) == {rid}
    desk.block(202)  # later lookups change nothing: paid once
    desk.rt.run_pending()
    assert (_payout(desk, pid).state, _payout(desk, rid).state) == ("replaced", "confirmed")
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.Payout.select().where(ledger.Payout.state == "confirmed").count() == 1


def test_the_original_confirms_first_and_the_replacement_is_dropped(desk):
    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    rid = _bump(desk, pid, "8")["payout"]
    _cosign(desk, rid, 1, "alice")
    _cosign(desk, rid, 2, "bob")
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "broadcast", what="the replacement broadcast")
    desk.node.mine(p.txid, 201)  # a miner took the original (the replacement stays in this fake mempool)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the original confirmed")
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "invalidated", what="the replacement dropped")
    assert f"payout {pid}" in _payout(desk, rid).state_reason and "confirmed instead" in _payout(desk, rid).state_reason
    assert "confirmed" not in _events(desk, rid)
    assert set(_claims(desk).values()) == {pid}  # the claims back with the payment that confirmed
    desk.block(202)
    desk.rt.run_pending()
    assert (_payout(desk, pid).state, _payout(desk, rid).state) == ("confirmed", "invalidated")


def test_the_original_confirms_while_the_replacement_waits_for_signatures(desk):
    pid = _broadcast_payout(desk)
    rid = _bump(desk, pid, "8")["payout"]
    desk.node.mine(_payout(desk, pid).txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "invalidated", what="the replacement dropped")
    assert _payout(desk, pid).state == "confirmed"
    assert _cosign(desk, rid, 1, "alice")["status"] == "refused"


def test_a_bump_cancelled_gives_the_claims_back_to_the_original_and_it_can_be_bumped_again(desk):
    pid = _broadcast_payout(desk)
    before = _claims(desk)
    rid = _bump(desk, pid, "6")["payout"]
    refused = _bump(desk, pid, "7")
    assert refused["status"] == "refused" and f"already has a replacement, payout {rid}" in refused["reason"]
    assert _cmd(desk, "cancel", "bob", payout=rid, reason="wrong rate")["state"] == "cancelled"
    assert _claims(desk) == before  # moved back, never released while the original may confirm
    again = _bump(desk, pid, "7")
    assert again["status"] == "done" and set(_claims(desk).values()) == {again["payout"]}


def test_bumps_refused_with_the_reason(desk):
    _fund(desk, 200_000, index=1)
    unsigned = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=unsigned, reason=None)
    ack = _bump(desk, unsigned, "10")
    assert ack["status"] == "refused" and "awaiting_signatures: only a broadcast payout" in ack["reason"]
    assert "no payout 999" in _bump(desk, 999, "10")["reason"]
    _cmd(desk, "cancel", "bob", payout=unsigned, reason="not this one")

    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    rate = Decimal(p.fee) / p.vsize
    ack = _bump(desk, pid, str(rate.quantize(Decimal("0.001"))))
    assert ack["status"] == "refused" and "is not above the payout's fee rate" in ack["reason"], ack
    assert "is not above" in _bump(desk, pid, "1")["reason"]
    ack = _bump(desk, pid, "500")
    assert ack["status"] == "refused" and "above the [payouts] max_feerate of 200" in ack["reason"], ack
    desk.actor.policy["max_fee_sats"] = p.fee + 500
    ack = _bump(desk, pid, "50")
    assert ack["status"] == "refused" and "above the [payouts] max_fee_sats" in ack["reason"], ack
    assert _claims(desk) and set(_claims(desk).values()) == {pid}  # nothing moved by a refusal
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.Payout.select().where(ledger.Payout.replaces.is_null(False)).count() == 0


def test_change_that_cannot_pay_the_higher_fee_is_refused(desk):
    pid = _broadcast_payout(desk, fund=60_000, sats=50_000)
    p = _payout(desk, pid)
    assert 0 < p.change_sats < 10_000
    ack = _bump(desk, pid, "150")
    assert ack["status"] == "refused" and "without falling below the dust limit" in ack["reason"], ack


def test_bump_psbt_rule_4_raises_a_rate_too_close_to_the_old_one(desk):
    """Asked for barely more than the old rate, the fee still grows by 1 sat/vB × the size (rule 4)."""
    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    asked = (Decimal(p.fee) / p.vsize + Decimal("0.1")).quantize(Decimal("0.01"))
    built = tx.bump(desk.treasury, tx.decode(p.psbt), old_fee=p.fee, change_index=p.change_index, feerate=asked,
                    max_fee=100_000, max_feerate=Decimal(200))
    assert built.fee == p.fee + built.vsize
    final = Transaction.parse(built.psbt.tx.serialize())
    assert final.vout[1].value == p.change_sats - built.vsize


def test_a_reorg_that_swaps_which_transaction_confirmed_keeps_the_payment_paid_once(desk):
    pid = _broadcast_payout(desk)
    p = _payout(desk, pid)
    rid = _bump(desk, pid, "12")["payout"]
    _cosign(desk, rid, 2, "bob")
    _cosign(desk, rid, 3, "carol")
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "broadcast", what="the replacement broadcast")
    r = _payout(desk, rid)
    original_raw = desk.node.txs.pop(p.txid)[0]
    desk.node.mine(r.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "replaced", what="the original replaced")
    # block 201 reorged away; the new chain has the original instead (the replacement dropped)
    del desk.node.txs[r.txid]
    desk.node.blocks[201] = "a2" * 32  # another block at that height
    desk.node.txs[p.txid] = (original_raw, None)
    desk.node.mine(p.txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, pid).state == "confirmed", what="the original confirmed after all")
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "invalidated", what="the replacement dropped")
    with desk.db.bind_ctx(ledger.MODELS):
        assert ledger.Payout.select().where(ledger.Payout.state == "confirmed").count() == 1
    assert set(_claims(desk).values()) == {pid}


def test_a_replacement_bumped_again_and_the_newest_confirms(desk):
    pid = _broadcast_payout(desk)
    r1 = _bump(desk, pid, "6")["payout"]
    refused = _bump(desk, pid, "20")
    assert "already has a replacement" in refused["reason"]
    _cosign(desk, r1, 1, "alice")
    _cosign(desk, r1, 2, "bob")
    desk.rt.wait_for(lambda: _payout(desk, r1).state == "broadcast", what="the first replacement broadcast")
    ack = _bump(desk, r1, "20")
    assert ack["status"] == "done", ack
    r2 = ack["payout"]
    assert _payout(desk, r2).replaces == r1 and _payout(desk, r2).fee > _payout(desk, r1).fee
    _cosign(desk, r2, 1, "alice")
    _cosign(desk, r2, 3, "carol")
    desk.rt.wait_for(lambda: _payout(desk, r2).state == "broadcast", what="the second replacement broadcast")
    for old in (pid, r1):
        desk.node.txs.pop(_payout(desk, old).txid, None)
    desk.node.mine(_payout(desk, r2).txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, r2).state == "confirmed", what="the newest confirmed")
    desk.rt.wait_for(lambda: _payout(desk, pid).state == _payout(desk, r1).state == "replaced",
                     what="both older ones replaced")
    assert set(_claims(desk).values()) == {r2}


def test_a_replacement_not_signed_in_time_expires_and_the_original_keeps_its_inputs(desk):
    pid = _broadcast_payout(desk)
    before = _claims(desk)
    rid = _bump(desk, pid, "9")["payout"]
    desk.clock.advance(desk.actor.policy["open_hours"] * 3600)
    desk.rt.advance(60)
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "expired", what="the replacement expired")
    assert _payout(desk, pid).state == "broadcast" and _claims(desk) == before


def test_a_signed_payout_the_node_refuses_for_its_fee_can_be_bumped(desk):
    """The node refuses the final transaction (its fee below the minimum relay fee): it stays
    `signed`, retried, and the way on is a replacement at a higher rate for the co-signers to
    sign; the replacement is broadcast and confirms, the original is `replaced`, paid once."""
    _fund(desk, 200_000)
    pid = _request(desk)["payout"]
    _cmd(desk, "approve", "bob", payout=pid, reason=None)
    _cosign(desk, pid, 1, "alice")
    desk.node.refuse = "RPC error -26: min relay fee not met, 150 < 300"
    assert _cosign(desk, pid, 3, "carol")["state"] == "signed"
    desk.rt.wait_for(lambda: "min relay fee not met" in (_payout(desk, pid).state_reason or ""),
                     what="the node's refusal kept")
    desk.node.refuse = None  # (the fake node takes anything now; the original's retry waits a minute)
    ack = _bump(desk, pid, "10")
    assert (ack["status"], ack["state"]) == ("done", "awaiting_signatures"), ack
    rid = ack["payout"]
    _cosign(desk, rid, 1, "alice")
    _cosign(desk, rid, 2, "bob")
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "broadcast", what="the replacement broadcast")
    desk.node.mine(_payout(desk, rid).txid, 201)
    desk.block(201)
    desk.rt.wait_for(lambda: _payout(desk, rid).state == "confirmed", what="the replacement confirmed")
    assert _payout(desk, pid).state == "replaced"
    assert set(_claims(desk).values()) <= {rid}
