"""Payout PSBTs (actors/payout_mgr/psbt.py, issue 13 item 4 and 5): built with what other wallets
need to sign, co-signed by three software keys, imports checked signature by signature."""

from __future__ import annotations

import hashlib

import pytest
from embit import bip32, bip39, ec
from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from actors.payout_mgr import psbt as payout
from actors.payout_mgr.psbt import InsufficientFunds, PayoutError, Utxo
from actors.payout_mgr.treasury import Treasury
from tests.test_treasury import NET, PATH, _descriptor, _root

MNEMONICS = [bip39.mnemonic_from_bytes(bytes([i + 1]) * 16) for i in range(3)]
OUTSIDER = bip39.mnemonic_from_bytes(bytes([9]) * 16)
DEST = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # a P2WPKH of no one here


@pytest.fixture
def treasury():
    return Treasury(_descriptor(), "regtest")


def _funding(treasury, amounts, change=False, first_index=0, salt=b""):
    """A transaction paying ``amounts`` to treasury addresses, and its outputs as Utxos."""
    vin = [TransactionInput(hashlib.sha256(b"coinbase" + salt).digest(), 0)]
    vout = [TransactionOutput(a, Script(bytes.fromhex(treasury.address(first_index + i, change)[1])))
            for i, a in enumerate(amounts)]
    tx = Transaction(vin=vin, vout=vout)
    raw = tx.serialize()
    return [Utxo(tx.txid().hex(), i, a, change, first_index + i, raw) for i, a in enumerate(amounts)]


def _copy(p: PSBT) -> PSBT:
    return PSBT.from_base64(p.to_base64())


def test_a_2_of_3_from_request_to_a_finalized_transaction(treasury):
    utxos = _funding(treasury, [50_000, 200_000, 30_000])
    built = payout.build(treasury, utxos, [(DEST, 120_000)], feerate=2.0, change_index=0, max_fee=10_000)
    assert [u.sats for u in built.inputs] == [200_000]  # largest first, one is enough
    tx = built.psbt.tx
    assert [o.value for o in tx.vout] == [120_000, 200_000 - 120_000 - built.fee]
    assert built.fee == pytest.approx(2 * built.vsize, abs=2)
    # What other wallets need: every input's UTXOs (both), witness script, each co-signer's derivation
    inp = built.psbt.inputs[0]
    assert inp.non_witness_utxo is not None and inp.witness_utxo.value == 200_000
    assert inp.witness_script is not None and len(inp.bip32_derivations) == 3
    assert {d.fingerprint for d in inp.bip32_derivations.values()} == {_root(i).my_fingerprint for i in range(3)}
    change_out = built.psbt.outputs[1]
    assert change_out.witness_script is not None and len(change_out.bip32_derivations) == 3
    assert len(built.psbt.xpubs) == 3
    assert all(v.sequence == payout.RBF_SEQUENCE for v in tx.vin)

    # each co-signer signs their own copy (exported, as a file would go), the server combines
    exported = built.psbt.to_base64()
    ours = payout.decode(exported)
    copies = []
    for m in MNEMONICS[:2]:
        theirs = payout.decode(exported.encode())
        assert payout.sign(treasury, theirs, m) == 1
        copies.append(theirs)
    assert payout.signers(treasury, ours) == []
    ours, new = payout.combine(treasury, ours, copies[0])
    assert new == [_root(0).my_fingerprint.hex()] and not payout.complete(treasury, ours)
    with pytest.raises(PayoutError, match="1 of the 2 signatures"):
        payout.finalize(treasury, ours)
    ours, new = payout.combine(treasury, ours, copies[1])
    assert payout.complete(treasury, ours)
    assert payout.signers(treasury, ours) == [c.fingerprint for c in treasury.cosigners[:2]]
    final = payout.finalize(treasury, ours)
    assert final.txid() == built.psbt.tx.txid()  # segwit: the signatures do not change the txid
    # the witness: empty, two signatures in the script's key order, the script; each verifies
    w = final.vin[0].witness.items
    assert w[0] == b"" and w[-1] == inp.witness_script.data and len(w) == 4
    h = final.sighash_segwit(0, inp.witness_script, 200_000, sighash=1)
    order = [inp.witness_script.data[j + 1:j + 34] for j in range(1, 1 + 34 * 3, 34)]
    signed = [ec.PublicKey.parse(k) for k in order if any(
        ec.PublicKey.parse(k).verify(ec.Signature.parse(s[:-1]), h) for s in w[1:3])]
    assert len(signed) == 2
    raw = final.serialize()
    assert Transaction.parse(raw).txid() == final.txid()


def test_several_inputs_each_signed_and_a_binary_psbt_imports(treasury):
    utxos = _funding(treasury, [40_000, 40_000, 40_000])
    built = payout.build(treasury, utxos, [(DEST, 100_000)], feerate=1.0, change_index=3, max_fee=5_000)
    assert len(built.inputs) == 3
    ours = _copy(built.psbt)
    for m in MNEMONICS[1:]:
        theirs = payout.decode(built.psbt.serialize())  # binary
        assert payout.sign(treasury, theirs, m) == 3
        ours, _ = payout.combine(treasury, ours, theirs)
    assert payout.signers(treasury, ours) == [c.fingerprint for c in treasury.cosigners[1:]]
    tx = payout.finalize(treasury, ours)
    assert all(len(v.witness.items) == 4 for v in tx.vin)


def test_the_same_key_signing_twice_is_one_signer(treasury):
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    ours = _copy(built.psbt)
    for _ in range(2):
        theirs = _copy(built.psbt)
        payout.sign(treasury, theirs, MNEMONICS[0])
        ours, new = payout.combine(treasury, ours, theirs)
    assert new == []  # nothing new the second time
    assert payout.signers(treasury, ours) == [treasury.cosigners[0].fingerprint]
    assert not payout.complete(treasury, ours)


def test_an_account_xprv_at_its_origin_signs_like_the_mnemonic(treasury):
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    account = _root(2).derive(PATH).to_string(version=NET["xprv"])
    theirs = _copy(built.psbt)
    assert payout.sign(treasury, theirs, account) == 1
    ours, new = payout.combine(treasury, _copy(built.psbt), theirs)
    assert new == [treasury.cosigners[2].fingerprint]


def test_a_key_outside_the_descriptor_cannot_sign_or_import(treasury):
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    with pytest.raises(PayoutError, match="not one of the treasury's co-signers"):
        payout.sign(treasury, _copy(built.psbt), OUTSIDER)
    # a signature by an outside key slipped into an imported PSBT: refused, nothing taken
    theirs = _copy(built.psbt)
    payout.sign(treasury, theirs, MNEMONICS[0])
    outsider = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(OUTSIDER)).derive("m/0/0")
    h = theirs.sighash(0, sighash=1)
    theirs.inputs[0].partial_sigs[outsider.get_public_key()] = outsider.key.sign(h).serialize() + b"\x01"
    ours = _copy(built.psbt)
    with pytest.raises(PayoutError, match="not a key of this treasury"):
        payout.combine(treasury, ours, theirs)
    assert payout.signers(treasury, ours) == [] and not ours.inputs[0].partial_sigs


def test_altered_outputs_or_fee_are_refused(treasury):
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    for alter in ("amount", "fee"):
        theirs = _copy(built.psbt)
        if alter == "amount":
            theirs.outputs[0].value += 1_000  # to the destination, out of the change
            theirs.outputs[1].value -= 1_000
        else:
            theirs.outputs[1].value -= 5_000  # a larger fee
        payout.sign(treasury, theirs, MNEMONICS[0])
        with pytest.raises(PayoutError, match="not this payout's"):
            payout.combine(treasury, _copy(built.psbt), theirs)


def test_a_signature_over_other_amounts_is_refused(treasury):
    """The imported file's UTXO amounts are not trusted: a signature made over a forged amount
    (the fee-overpayment attack on segwit v0) does not verify against ours."""
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    theirs = _copy(built.psbt)
    theirs.inputs[0].witness_utxo.value = 90_000
    theirs.inputs[0].non_witness_utxo = None
    payout.sign(treasury, theirs, MNEMONICS[0])
    with pytest.raises(PayoutError, match="does not sign this transaction"):
        payout.combine(treasury, _copy(built.psbt), theirs)


def test_a_sighash_other_than_all_is_refused(treasury):
    built = payout.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=1.0,
                         change_index=0, max_fee=5_000)
    theirs = _copy(built.psbt)
    payout.sign(treasury, theirs, MNEMONICS[0])
    (pub, sig), = theirs.inputs[0].partial_sigs.items()
    theirs.inputs[0].partial_sigs[pub] = sig[:-1] + b"\x83"  # SINGLE|ANYONECANPAY
    with pytest.raises(PayoutError, match="not ALL"):
        payout.combine(treasury, _copy(built.psbt), theirs)


def test_insufficient_funds_dust_and_a_fee_above_the_bound(treasury):
    utxos = _funding(treasury, [10_000, 5_000])
    with pytest.raises(InsufficientFunds, match="holds 15000 sats in 2"):
        payout.build(treasury, utxos, [(DEST, 15_000)], feerate=1.0, change_index=0, max_fee=5_000)
    with pytest.raises(PayoutError, match="below the dust limit of 294"):
        payout.build(treasury, utxos, [(DEST, 293)], feerate=1.0, change_index=0, max_fee=5_000)
    with pytest.raises(PayoutError, match="above the bound of 100 sats"):
        payout.build(treasury, utxos, [(DEST, 5_000)], feerate=10.0, change_index=0, max_fee=100)
    with pytest.raises(PayoutError, match="not a bitcoin address"):
        payout.build(treasury, utxos, [("nonsense", 5_000)], feerate=1.0, change_index=0, max_fee=5_000)
    with pytest.raises(PayoutError, match="not an address of the regtest network"):
        payout.build(treasury, utxos, [("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", 5_000)], feerate=1.0,
                     change_index=0, max_fee=5_000)


def test_a_remainder_below_dust_goes_to_the_fee_not_to_a_change_output(treasury):
    utxos = _funding(treasury, [10_000])
    fee_no_change = payout.vsize(1, [payout.output_script(DEST, treasury)], 2, 3)
    built = payout.build(treasury, utxos, [(DEST, 10_000 - fee_no_change - 100)], feerate=1.0, change_index=0,
                         max_fee=5_000)
    assert built.change_sats == 0 and len(built.psbt.tx.vout) == 1
    assert built.fee == fee_no_change + 100


def test_a_recorded_utxo_that_does_not_match_its_transaction_is_refused(treasury):
    (u,) = _funding(treasury, [100_000])
    forged = Utxo(u.txid, u.vout, 200_000, u.change, u.index, u.prev_tx)
    with pytest.raises(PayoutError, match="does not match its output"):
        payout.build(treasury, [forged], [(DEST, 50_000)], feerate=1.0, change_index=0, max_fee=5_000)
    moved = Utxo(u.txid, u.vout, u.sats, u.change, u.index + 1, u.prev_tx)
    with pytest.raises(PayoutError, match="does not pay the treasury address"):
        payout.build(treasury, [moved], [(DEST, 50_000)], feerate=1.0, change_index=0, max_fee=5_000)


def test_the_fee_rate_is_met_once_signed(treasury):
    """The estimate counts the longest signatures, so the real fee rate is never below the one asked."""
    built = payout.build(treasury, _funding(treasury, [60_000, 60_000]), [(DEST, 100_000)], feerate=3.0,
                         change_index=0, max_fee=50_000)
    ours = _copy(built.psbt)
    for m in MNEMONICS[:2]:
        theirs = _copy(built.psbt)
        payout.sign(treasury, theirs, m)
        ours, _ = payout.combine(treasury, ours, theirs)
    tx = payout.finalize(treasury, ours)
    stripped = Transaction(version=tx.version, vin=[TransactionInput(v.txid, v.vout, sequence=v.sequence)
                                                    for v in tx.vin], vout=tx.vout, locktime=tx.locktime)
    weight = 3 * len(stripped.serialize()) + len(tx.serialize())
    real_vsize = -(-weight // 4)
    assert real_vsize <= built.vsize
    assert built.fee / real_vsize >= 3.0
