"""`dctrl treasury export|show` (scripts/cli/treasury.py) on `dctrl init`'s demo treasury, and the
clear errors when no treasury is configured or payout_mgr has not run yet."""

from __future__ import annotations

import json

import pytest

from actors.payout_mgr.treasury import Treasury
from tests.harness import dctrl, new_home


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return new_home(tmp_path_factory.mktemp("treasury_cli") / "home")


def test_export_gives_the_configured_descriptor_and_wallet_files(home, tmp_path):
    t = Treasury(home.config["treasury"]["descriptor"], "regtest")
    d = t.descriptors()
    assert dctrl(home, "treasury", "export").stdout == d["multipath"] + "\n"
    assert dctrl(home, "treasury", "export", "--branches").stdout == f"{d['receive']}\n{d['change']}\n"
    caravan = json.loads(dctrl(home, "treasury", "export", "--format", "caravan").stdout)
    assert caravan["name"] == "dctrl demo treasury" and caravan["quorum"] == {"requiredSigners": 2, "totalSigners": 3}
    assert [k["xfp"] for k in caravan["extendedPublicKeys"]] == [c.fingerprint for c in t.cosigners]
    out = tmp_path / "cc.txt"
    said = dctrl(home, "treasury", "export", "--format", "coldcard", "--out", str(out)).stdout
    assert "2 of 3" in said and out.read_text() == t.coldcard("dctrl demo treasury")
    assert out.stat().st_mode & 0o777 == 0o600
    # the demo's co-signers' mnemonics are the descriptor's keys (so the demo can sign)
    from embit import bip32, bip39

    fps = [bip32.HDKey.from_seed(bip39.mnemonic_to_seed((home.root / "demo" / f"cosigner{i}.key").read_text().strip()))
           .my_fingerprint.hex() for i in (1, 2, 3)]
    assert fps == [c.fingerprint for c in t.cosigners]


def test_show_before_payout_mgr_ran_says_so(home):
    out = dctrl(home, "treasury", "show", check=False)
    assert out.returncode != 0 and "payout_mgr has not run on this database" in out.stderr


def test_no_treasury_is_a_clear_error(tmp_path):
    h = new_home(tmp_path / "home")
    cfg = h.root / "config.toml"
    text = cfg.read_text()
    start = text.index('descriptor = "wsh(')
    cfg.write_text(text[:start] + 'descriptor = ""' + text[text.index("\n", start):])
    for action in (["show"], ["export"], ["export", "--format", "caravan"]):
        out = dctrl(h, "treasury", *action, check=False)
        assert out.returncode != 0 and "no treasury configured: set [treasury] descriptor" in out.stderr, out.stderr
