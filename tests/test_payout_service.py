"""A payout from request to a final transaction through the books and the PSBTs
(actors/payout_mgr/service.py), with three software co-signers, on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest

from actors.payout_mgr import ledger, service
from actors.payout_mgr import psbt as tx
from actors.payout_mgr.ledger import Payout, PayoutRefused
from actors.payout_mgr.treasury import Treasury
from embit.transaction import Transaction
from tests.test_payout_ledger import DEST, RATE, Clock, _policy, books, db_url  # noqa: F401 (books and db_url: fixtures)
from tests.test_payout_psbt import MNEMONICS, _funding
from tests.test_treasury import _descriptor


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def treasury():
    return Treasury(_descriptor(), "regtest")


def _requested(policy, clock, sats=50_000, by="alice"):
    p = ledger.request(policy, kind="manual", destination=DEST, sats=sats, rate=RATE, rate_as_of=clock(),
                       reason="revenue share", by=by, clock=clock)
    return p


def _cosign(treasury, p, mnemonic, identity):
    """What `dctrl payouts sign` does: sign a copy locally, send the signatures only."""
    theirs = tx.decode(Payout.get_by_id(p.id).psbt)
    tx.sign(treasury, theirs, mnemonic)  # (0 added when this key has signed already)
    return service.take_signatures(treasury, p.id, service.signatures_only(theirs.to_base64()), identity)


def test_request_approve_build_two_of_three_sign_final(books, clock, treasury):
    policy = _policy(approvals=1)
    utxos = _funding(treasury, [80_000, 30_000])
    p = _requested(policy, clock)
    p, ready = ledger.decide(p.id, "bob", "approve", policy, clock=clock)
    assert ready
    p = service.build(treasury, policy, p.id, utxos, rate=Decimal("2"), change_index=0, clock=clock)
    assert p.state == "awaiting_signatures" and ledger.claimed_outpoints() == {utxos[0].outpoint}
    view = service.summary(treasury, p)
    assert [(o["address"], o["sats"], o["change"]) for o in view["outputs"]] == [
        (DEST, 50_000, False), (treasury.address(0, change=True)[0], 80_000 - 50_000 - p.fee, True)]
    assert Decimal(view["feerate"]) >= 2 and view["needed"] == 2
    p, new = _cosign(treasury, p, MNEMONICS[0], "alice")
    assert new == [treasury.cosigners[0].fingerprint] and p.state == "awaiting_signatures"
    p, new = _cosign(treasury, p, MNEMONICS[0], "alice")  # the same key again
    assert new == [] and p.state == "awaiting_signatures"
    p, new = _cosign(treasury, p, MNEMONICS[2], "carol")
    assert p.state == "signed"
    final = Transaction.parse(bytes.fromhex(p.raw_tx))
    assert final.txid().hex() == p.txid
    view = service.summary(treasury, Payout.get_by_id(p.id))
    assert [(s["signed"], s["brought_by"]) for s in view["signers"]] == [(True, "alice"), (False, None),
                                                                         (True, "carol")]
    with pytest.raises(PayoutRefused, match="is signed: it takes no signatures"):
        _cosign(treasury, p, MNEMONICS[1], "bob")


def test_two_payouts_take_different_coins_and_the_third_finds_none(books, clock, treasury):
    policy = _policy(approvals=0)
    utxos = _funding(treasury, [60_000, 60_000])
    a, b, c = (_requested(policy, clock) for _ in range(3))
    a = service.build(treasury, policy, a.id, utxos, rate=Decimal("1"), change_index=0, clock=clock)
    b = service.build(treasury, policy, b.id, utxos, rate=Decimal("1"), change_index=1, clock=clock)
    assert set(a.outpoints).isdisjoint(b.outpoints) and len(ledger.claimed_outpoints()) == 2
    with pytest.raises(tx.InsufficientFunds, match="holds 0 sats in 0 spendable outputs"):
        service.build(treasury, policy, c.id, utxos, rate=Decimal("1"), change_index=2, clock=clock)
    assert Payout.get_by_id(c.id).state == "requested"
    ledger.cancel(a.id, "alice", "not needed", clock=clock)  # its coin is free again
    c = service.build(treasury, policy, c.id, utxos, rate=Decimal("1"), change_index=2, clock=clock)
    assert c.outpoints == a.outpoints


def test_a_change_output_is_only_ours_if_it_derives_so(books, clock, treasury):
    """A PSBT whose metadata calls a stranger's output change must not be shown as change."""
    policy = _policy(approvals=0)
    p = service.build(treasury, policy, _requested(policy, clock).id, _funding(treasury, [80_000]),
                      rate=Decimal("1"), change_index=0, clock=clock)
    forged = tx.decode(p.psbt)
    forged.outputs[0].bip32_derivations.update(forged.outputs[1].bip32_derivations)  # "DEST is change too"
    p.psbt = forged.to_base64()
    assert [o["change"] for o in service.summary(treasury, p)["outputs"]] == [False, True]


@pytest.mark.parametrize("estimates, expected", [
    ({1: Decimal("20"), 6: Decimal("5"), 144: Decimal("1.5")}, Decimal("5")),
    ({1: Decimal("20"), 144: Decimal("1.5")}, Decimal("1.5")),      # the nearest slower target
    ({1: Decimal("20"), 3: Decimal("12")}, Decimal("12")),          # none slower: the slowest given
    ({}, Decimal("1")),                                               # none: the minimum
    ({6: Decimal("900")}, Decimal("200")),                            # bounded
    ({6: Decimal("0.2")}, Decimal("1")),
])
def test_the_fee_rate_follows_the_estimate_within_bounds(estimates, expected):
    assert service.feerate(_policy(), estimates) == expected
