"""The treasury and its PSBTs checked against an independent wallet: BDK (the Bitcoin Dev Kit,
bdkpython, the wallet library behind several wallets), not embit, which builds them.

What it shows: a wallet set up from `dctrl treasury export`'s descriptor derives the same
receive and change addresses; a co-signer's wallet holding only its own private key signs our
PSBT (it refuses one without the previous transactions, which is why we send them), recognises
our change as its own, and two such signatures finalized by BDK make byte for byte the
transaction our own finalize makes. Electrum and Sparrow themselves are not run here.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from actors.payout_mgr import psbt as tx
from actors.payout_mgr.treasury import Treasury
from tests.test_payout_psbt import DEST, _funding
from tests.test_treasury import NET, _descriptor, _key, _root

import bdkpython as bdk  # noqa: E402 (a dev dependency, setup.cfg: never skipped)
KIND, NETWORK = bdk.NetworkKind.TEST, bdk.Network.REGTEST


def _watch_only(treasury: Treasury):
    d = bdk.Descriptor(treasury.descriptors()["multipath"], KIND)
    return bdk.Wallet.create_from_two_path_descriptor(d, NETWORK, bdk.Persister.new_in_memory())


def _cosigner_wallet(i: int):
    """Co-signer i's own wallet: its private key, the other two public."""
    root = _root(i)
    origin = f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]"
    xprv = root.derive("m/48h/1h/0h/2h").to_string(version=NET["xprv"])

    def branch(b):
        keys = [origin + xprv + f"/{b}/*" if j == i else _key(j, str(b)) for j in range(3)]
        return bdk.Descriptor(f"wsh(sortedmulti(2,{','.join(keys)}))", KIND)
    return bdk.Wallet(branch(0), branch(1), NETWORK, bdk.Persister.new_in_memory())


@pytest.fixture
def treasury():
    return Treasury(_descriptor(), "regtest")


def test_a_wallet_set_up_from_the_export_derives_the_same_addresses(treasury):
    w = _watch_only(treasury)
    for i in (0, 1, 19, 500):
        assert str(w.peek_address(bdk.KeychainKind.EXTERNAL, i).address) == treasury.address(i)[0]
        assert str(w.peek_address(bdk.KeychainKind.INTERNAL, i).address) == treasury.address(i, change=True)[0]
    d = treasury.descriptors()
    two = bdk.Wallet(bdk.Descriptor(d["receive"], KIND), bdk.Descriptor(d["change"], KIND), NETWORK,
                     bdk.Persister.new_in_memory())
    assert str(two.peek_address(bdk.KeychainKind.INTERNAL, 7).address) == treasury.address(7, change=True)[0]


def test_cosigner_wallets_sign_our_psbt_and_finalize_to_our_own_transaction(treasury):
    built = tx.build(treasury, _funding(treasury, [100_000, 50_000]), [(DEST, 120_000)], feerate=Decimal(2),
                     change_index=4, max_fee=10_000)
    exported = built.psbt.to_base64()
    # the change output is recognised as the treasury's own by a wallet that only has the descriptor
    change = built.psbt.tx.vout[1].script_pubkey.data
    assert _watch_only(treasury).is_mine(bdk.Script(change))
    assert not _watch_only(treasury).is_mine(bdk.Script(built.psbt.tx.vout[0].script_pubkey.data))

    ours = tx.decode(exported)
    signed_by_bdk = []
    for i in (0, 2):
        theirs = bdk.Psbt(exported)
        _cosigner_wallet(i).sign(theirs)
        signed_by_bdk.append(theirs)
        ours, new = tx.combine(treasury, ours, tx.decode(theirs.serialize()))
        assert new == [treasury.cosigners[i].fingerprint]
    assert tx.complete(treasury, ours)
    mine = tx.finalize(treasury, ours).serialize()

    combined = signed_by_bdk[0].combine(signed_by_bdk[1])
    assert _watch_only(treasury).finalize_psbt(combined)
    theirs = combined.extract_tx()
    assert bytes(theirs.serialize()) == mine  # same signatures (RFC 6979), same witness order
    assert str(theirs.compute_txid()) == tx.txid(built.psbt)


def test_a_wallet_refuses_to_sign_without_the_previous_transactions(treasury):
    """Why every input carries the whole previous transaction, not only the witness UTXO."""
    built = tx.build(treasury, _funding(treasury, [100_000]), [(DEST, 50_000)], feerate=Decimal(1),
                     change_index=0, max_fee=10_000)
    bare = tx.decode(built.psbt.to_base64())
    for inp in bare.inputs:
        inp.non_witness_utxo = None
    with pytest.raises(bdk.SignerError) as refused:
        _cosigner_wallet(1).sign(bdk.Psbt(bare.to_base64()))
    assert type(refused.value).__name__ == "MissingNonWitnessUtxo"
    assert _cosigner_wallet(1).sign(bdk.Psbt(built.psbt.to_base64())) is False  # signed, not final (1 of 2)
