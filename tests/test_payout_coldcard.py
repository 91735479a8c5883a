"""The treasury's Coldcard multisig setup file imported by Coldcard's own code (issue 13).

Coldcard's import of a multisig file is ``MultisigWallet.from_file`` in its open-source firmware
(github.com/Coldcard/firmware, ``shared/multisig.py``, MicroPython). tests/wallets/coldcard/
harness.py runs that module unchanged under CPython, as co-signer 1's Coldcard (its seed stands in
for the device's secret), with Coldcard's C crypto library (``ngu``) written over embit and the
screens and menus inert; see its docstring for every stand-in. What runs is Coldcard's: the
parsing of each line (name, policy, format, derivation, fingerprint: xpub), the key checks
(chain, depth against the derivation, "my key" derived from the seed and compared, no key twice)
and, for "Address Explorer", ``yield_addresses`` (script and address from the imported wallet).

The firmware is not a package on any registry (and not vendored here): set COLDCARD_FIRMWARE to a
checkout with its ckcc-protocol submodule (``git clone https://github.com/Coldcard/firmware &&
git -C firmware submodule update --init external/ckcc-protocol``). Without it this file skips,
in CI too. Last run against firmware 8eb0e008f63f (2026-08-22) and ckcc-protocol abf040789b6e.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.payout_mgr.treasury import Treasury
from tests.test_treasury import _descriptor, _root

FIRMWARE = os.environ.get("COLDCARD_FIRMWARE")
pytestmark = pytest.mark.skipif(
    not FIRMWARE or not (Path(FIRMWARE) / "shared" / "multisig.py").is_file(),
    reason="COLDCARD_FIRMWARE does not name a checkout of github.com/Coldcard/firmware (see the docstring)")


def _device(seed_index: int, chain: str = "XRT"):
    from tests.wallets.coldcard.harness import device
    return device(Path(FIRMWARE), _root(seed_index), chain)


def test_a_cosigners_coldcard_imports_the_file_and_shows_our_addresses():
    t = Treasury(_descriptor(), "regtest")
    with _device(0) as ms:
        w = ms.MultisigWallet.from_file(t.coldcard("dctrl treasury"))
        assert (w.name, w.M, w.N, w.addr_fmt, w.bip67) == ("dctrl treasury", 2, 3, ms.AF_P2WSH, True)
        assert [(ms.xfp2str(x).lower(), d, xpub) for x, d, xpub in w.xpubs] == [
            (c.fingerprint, c.path, c.xpub) for c in t.cosigners]
        for branch in (0, 1):
            shown = [(i, a) for i, a, _, _ in w.yield_addresses(0, 3, change_idx=branch)]
            assert shown == [(i, t.address(i, bool(branch))[0]) for i in range(3)]


def test_every_cosigner_of_a_3_of_5_imports_it():
    t = Treasury(_descriptor(3, 5), "regtest")
    for i in range(5):
        with _device(i) as ms:
            w = ms.MultisigWallet.from_file(t.coldcard("a long treasury name, cut"))
            assert (w.M, w.N, len(w.name)) == (3, 5, 20)
            assert next(w.yield_addresses(7, 1, change_idx=1))[1] == t.address(7, change=True)[0]


def test_coldcards_checks_are_live():
    """What a Coldcard refuses, to show these are its real checks: a device that is not a
    co-signer, a device on another chain, a file whose fingerprint does not derive our key."""
    t = Treasury(_descriptor(), "regtest")
    text = t.coldcard("dctrl treasury")
    with _device(9) as ms, pytest.raises(AssertionError, match="my key not included"):
        ms.MultisigWallet.from_file(text)
    with _device(0, chain="BTC") as ms, pytest.raises(AssertionError, match="wrong chain"):
        ms.MultisigWallet.from_file(text)
    mine = t.cosigners[0]
    other = t.cosigners[1].xpub
    tampered = text.replace(f"{mine.fingerprint.upper()}: {mine.xpub}", f"{mine.fingerprint.upper()}: {other}")
    with _device(0) as ms, pytest.raises(AssertionError, match="wrong pubkey"):
        ms.MultisigWallet.from_file(tampered)
