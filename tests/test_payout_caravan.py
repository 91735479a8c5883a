"""The treasury's exports handed to Caravan's own code (issue 13): the Caravan wallet file, the
descriptor and a payout's PSBT, read by Caravan's published libraries (@caravan/bitcoin,
@caravan/psbt, @caravan/descriptors, versions pinned in tests/wallets/caravan/package-lock.json,
installed by `make wallets`) the way Caravan's coordinator reads them when a co-signer imports
the wallet and then a PSBT to sign. tests/wallets/caravan/check.mjs runs them under node and says
what Caravan made of each thing; what it says is compared here with what dctrl itself derives.

Not embit (which builds everything here) and not BDK (tests/test_payout_wallets.py). The
coordinator's wallet-file check is a function of the app (not published): check.mjs applies the
same @caravan/bitcoin validators it calls. Without node: skipped, with the reason; in CI (CI=true)
a failure instead, so the check is never silently lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from embit import bip32

from actors.payout_mgr import psbt as tx
from actors.payout_mgr.treasury import Treasury
from tests.test_payout_psbt import DEST, MNEMONICS, _funding
from tests.test_treasury import _descriptor, _key, _root

CARAVAN = Path(__file__).parent / "wallets" / "caravan"
INDEXES = [0, 1, 19]


def _unavailable() -> str | None:
    node = shutil.which("node")
    if not node:
        return "node is not installed: Caravan's libraries run on node (20 or later; then `make wallets`)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if not re.match(r"v(\d+)", version) or int(re.match(r"v(\d+)", version).group(1)) < 20:
        return f"node {version} is too old for Caravan's libraries (20 or later)"
    if not (CARAVAN / "node_modules" / "@caravan" / "psbt").is_dir():
        return "Caravan's libraries are not installed: run `make wallets` (npm ci --prefix tests/wallets/caravan)"
    return None


@pytest.fixture(autouse=True, scope="module")
def _caravan_installed():
    why = _unavailable()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"the Caravan check cannot run in CI: {why}")
    if why:
        pytest.skip(why)


def caravan(**job) -> dict:
    """What Caravan's code makes of ``job`` (check.mjs's JSON; its summary goes to stderr)."""
    r = subprocess.run(["node", "check.mjs"], cwd=CARAVAN, input=json.dumps(job), capture_output=True,
                       text=True, timeout=120)
    print(r.stderr)  # shown by pytest for a failing test (-rA shows it always)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _apostrophe(path: str) -> str:
    return path.replace("h", "'")


@pytest.fixture(scope="module")
def treasury():
    return Treasury(_descriptor(), "regtest")


@pytest.fixture(scope="module")
def payout(treasury):
    """A payout's PSBT (two inputs, change at index 4) and a copy co-signer 2 signed in dctrl."""
    built = tx.build(treasury, _funding(treasury, [100_000, 50_000]), [(DEST, 120_000)], feerate=Decimal(2),
                     change_index=4, max_fee=10_000)
    signed = tx.decode(built.psbt.to_base64())
    assert tx.sign(treasury, signed, MNEMONICS[1]) == 2
    seen = caravan(wallet=treasury.caravan("dctrl treasury"), descriptor=treasury.descriptors()["multipath"],
                   indexes=INDEXES, psbt=built.psbt.to_base64(), signed=signed.to_base64())
    return built, signed, seen


def test_caravan_loads_the_wallet_file_and_derives_our_addresses(treasury, payout):
    _, _, seen = payout
    assert seen["config"] == {"accepted": True, "errors": []}
    for i in INDEXES:
        # the coordinator's braids (@caravan/bitcoin), from the file's xpubs, fingerprints and paths
        assert seen["braid"]["receive"][str(i)]["address"] == treasury.address(i)[0]
        assert seen["braid"]["change"][str(i)]["address"] == treasury.address(i, change=True)[0]
        assert seen["braid"]["receive"][str(i)]["witnessScript"] == treasury.witness_script(i).data.hex()
        # caravan-rs's own parser of a wallet file (in @caravan/descriptors)
        assert seen["caravanRs"]["receive"][str(i)] == treasury.address(i)[0]
        assert seen["caravanRs"]["change"][str(i)] == treasury.address(i, change=True)[0]
    assert (seen["caravanRs"]["network"], seen["caravanRs"]["addressType"]) == ("regtest", "P2WSH")
    # the key origins Caravan derived at receive 19 are the treasury's co-signers'
    derived = seen["braid"]["receive"]["19"]["bip32Derivation"]
    assert [(d["xfp"], d["path"]) for d in derived] == [
        (c.fingerprint, _apostrophe(c.path) + "/0/19") for c in treasury.cosigners]


def test_caravan_descriptors_and_ours_are_one_wallet(treasury, payout):
    _, _, seen = payout
    # the descriptors the coordinator makes from the loaded wallet file: dctrl reads them as its own
    # (Caravan writes 48' where we write 48h, so the strings and checksums differ)
    theirs = seen["descriptors"]
    assert theirs["multipath"] != treasury.descriptors()["multipath"]
    assert Treasury(theirs["multipath"], "regtest").descriptors() == treasury.descriptors()
    assert Treasury(theirs["receive"], "regtest", change_spec=theirs["change"]).address(7) == treasury.address(7)
    # our descriptor imported into Caravan (getWalletFromDescriptor) is the wallet file's wallet
    wallet = json.loads(treasury.caravan("dctrl treasury"))
    imported = seen["fromDescriptor"]
    assert (imported["requiredSigners"], imported["addressType"], imported["network"]) == (2, "P2WSH", "regtest")
    assert imported["keyOrigins"] == [{k: x[k] for k in ("bip32Path", "xpub", "xfp")}
                                      for x in wallet["extendedPublicKeys"]]


def test_a_cosigner_in_caravan_recognises_our_psbt(treasury, payout):
    built, _, seen = payout
    p = seen["psbt"]
    assert p["version"] == 0
    utxos = built.inputs
    assert len(p["inputs"]) == len(utxos) == 2
    for inp, u, ours in zip(p["inputs"], utxos, built.psbt.inputs):
        assert (inp["txid"], inp["vout"]) == (u.txid, u.vout)
        assert inp["nonWitnessUtxo"] == u.prev_tx.hex() and inp["witnessUtxo"]["value"] == u.sats
        # the witness script is a 2 of 3 of the wallet's keys at the path the derivations name
        assert inp["witnessScript"] == treasury.witness_script(u.index, u.change).data.hex()
        assert (inp["multisig"]["m"], inp["multisig"]["n"]) == (2, 3)
        assert inp["multisig"]["address"] == treasury.address(u.index, u.change)[0]
        assert [(d["xfp"], d["path"]) for d in inp["bip32Derivation"]] == [
            (c.fingerprint, f"{_apostrophe(c.path)}/{int(u.change)}/{u.index}") for c in treasury.cosigners]
        assert {d["pubkey"] for d in inp["bip32Derivation"]} == {k.sec().hex() for k in ours.bip32_derivations}
        # Caravan, from the wallet file alone, finds the input its own: script, witness script,
        # every derivation (fingerprint, path, key)
        assert inp["wallet"]["mine"], inp["wallet"]
        assert (inp["wallet"]["branch"], inp["wallet"]["index"]) == (int(u.change), u.index)
    dest, change = p["outputs"]
    assert (dest["address"], dest["value"]) == (DEST, 120_000) and not dest["wallet"]["mine"]
    assert (change["address"], change["value"]) == (treasury.address(4, change=True)[0], built.change_sats)
    assert change["wallet"]["mine"] and (change["wallet"]["branch"], change["wallet"]["index"]) == (1, 4)
    # the global xpubs: the wallet file's keys, fingerprints and paths
    assert [(g["xfp"], g["path"], g["extendedPubkey"]) for g in p["globalXpubs"]] == [
        (c.fingerprint, _apostrophe(c.path), bip32.HDKey.from_string(c.xpub).serialize().hex())
        for c in treasury.cosigners]


def test_the_signature_request_caravan_makes_of_it(treasury, payout):
    built, _, seen = payout
    p = seen["psbt"]
    fee = sum(u.sats for u in built.inputs) - sum(o.value for o in built.psbt.tx.vout)
    assert fee == built.fee
    for c, view in zip(treasury.cosigners, p["translated"]):
        # what Caravan hands a signing device for this co-signer (translatePSBT)
        assert "error" not in view, view
        assert [(i["txid"], i["index"], i["amountSats"], i["address"]) for i in view["inputs"]] == [
            (u.txid, u.vout, u.sats, treasury.address(u.index, u.change)[0]) for u in built.inputs]
        assert [(o["address"], o["amountSats"]) for o in view["outputs"]] == [
            (DEST, 120_000), (treasury.address(4, change=True)[0], built.change_sats)]
        assert [(s["xfp"], s["path"]) for s in view["signing"]] == [
            (c.fingerprint, f"{_apostrophe(c.path)}/0/{u.index}") for u in built.inputs]
    # the same transaction seen as a PSBTv2 (PsbtV2.FromV0)
    assert p["v2"]["amounts"] == [o.value for o in built.psbt.tx.vout]
    assert p["v2"]["scripts"] == [o.script_pubkey.data.hex() for o in built.psbt.tx.vout]


def test_caravan_validates_the_signatures_dctrl_signs(treasury, payout):
    built, signed, seen = payout
    cosigner = _root(1)
    expected = [cosigner.derive(f"{treasury.cosigners[1].path}/0/{u.index}").get_public_key().sec().hex()
                for u in built.inputs]
    assert [(s["input"], s["pubkey"], s["validatedAs"]) for s in seen["signatures"]] == [
        (i, k, k) for i, k in enumerate(expected)]


def test_change_branch_inputs_of_a_3_of_5(payout):
    t = Treasury(_descriptor(3, 5), "regtest")
    built = tx.build(t, _funding(t, [80_000, 70_000], change=True, first_index=3), [(DEST, 100_000)],
                     feerate=Decimal(3), change_index=9, max_fee=20_000)
    seen = caravan(wallet=t.caravan("3 of 5"), indexes=[0, 3], psbt=built.psbt.to_base64())
    assert seen["config"]["accepted"]
    assert seen["braid"]["change"]["3"]["address"] == t.address(3, change=True)[0]
    assert [(i["wallet"]["mine"], i["wallet"]["branch"], i["wallet"]["index"], i["multisig"]["m"],
             i["multisig"]["n"]) for i in seen["psbt"]["inputs"]] == [(True, 1, 3, 3, 5), (True, 1, 4, 3, 5)]
    assert seen["psbt"]["outputs"][1]["wallet"]["mine"]
    assert all(len(v["signing"]) == 2 for v in seen["psbt"]["translated"])


def test_caravan_refuses_what_does_not_match(treasury, payout):
    """The checks above can fail: a wallet file whose fingerprint or key is not the treasury's."""
    built, _, _ = payout
    wallet = json.loads(treasury.caravan("dctrl treasury"))
    wallet["extendedPublicKeys"][1]["xfp"] = "deadbeef"
    seen = caravan(wallet=json.dumps(wallet), indexes=[0], psbt=built.psbt.to_base64())
    assert seen["config"]["accepted"]  # a well-formed file; its wallet is not the PSBT's
    assert [i["wallet"]["mine"] for i in seen["psbt"]["inputs"]] == [False, False]
    assert not seen["psbt"]["outputs"][1]["wallet"]["mine"]
    assert "Signing key details not included" in seen["psbt"]["translated"][1]["error"]

    other = json.loads(treasury.caravan("dctrl treasury"))
    mainnet = bip32.HDKey.from_string(_key(2).split("]")[1].split("/")[0]).to_string(version=bytes.fromhex("0488b21e"))
    other["extendedPublicKeys"][2]["xpub"] = mainnet
    seen = caravan(wallet=json.dumps(other))
    assert not seen["config"]["accepted"]
    assert seen["config"]["errors"] == ["key 3: Extended public key must begin with 'xpub' or 'tpub'."]


def test_a_replacement_psbt_too(treasury, payout):
    """`payouts bump` sends co-signers a new PSBT: Caravan sees it as the same wallet's, the fee
    raised out of the change."""
    built, _, _ = payout
    bumped = tx.bump(treasury, built.psbt, old_fee=built.fee, change_index=4, feerate=Decimal(5),
                     max_fee=10_000, max_feerate=Decimal(50))
    seen = caravan(wallet=treasury.caravan("dctrl treasury"), psbt=bumped.psbt.to_base64())["psbt"]
    assert all(i["wallet"]["mine"] for i in seen["inputs"]) and seen["outputs"][1]["wallet"]["mine"]
    assert [(o["address"], o["value"]) for o in seen["outputs"]] == [
        (DEST, 120_000), (treasury.address(4, change=True)[0], built.change_sats - (bumped.fee - built.fee))]
    assert [i["sequence"] for i in seen["inputs"]] == [tx.RBF_SEQUENCE] * 2
