"""The treasury descriptor (actors/payout_mgr/treasury.py, issue 13 item 1): what is accepted,
what is refused and why, the addresses it derives, and the files co-signers import."""

from __future__ import annotations

import json

import pytest
from embit import bip32, bip39, script
from embit.descriptor import Descriptor
from embit.descriptor.checksum import add_checksum
from embit.networks import NETWORKS

from actors.chain.addresses import Deriver
from actors.payout_mgr.treasury import Treasury
from proto.errors import ConfigError

NET = NETWORKS["regtest"]
PATH = "m/48h/1h/0h/2h"


def _root(i: int) -> bip32.HDKey:
    """Co-signer i's master key, from a fixed mnemonic (a person's wallet, in the tests)."""
    return bip32.HDKey.from_seed(bip39.mnemonic_to_seed(bip39.mnemonic_from_bytes(bytes([i + 1]) * 16)),
                                 version=NET["xprv"])


def _key(i: int, branch: str = "<0;1>", fingerprint: str | None = None) -> str:
    root = _root(i)
    account = root.derive(PATH).to_public().to_string(version=NET["xpub"])
    fp = fingerprint or root.my_fingerprint.hex()
    return f"[{fp}{PATH[1:]}]{account}/{branch}/*"


def _descriptor(k: int = 2, n: int = 3, branch: str = "<0;1>", **kw) -> str:
    return f"wsh(sortedmulti({k},{','.join(_key(i, branch, **kw) for i in range(n))}))"


def _expected(index: int, change: int, k: int = 2, n: int = 3) -> str:
    """The address worked out by hand: each co-signer's child key, sorted, k-of-n CHECKMULTISIG, P2WSH."""
    pubs = sorted(_root(i).derive(f"{PATH}/{change}/{index}").get_public_key().sec() for i in range(n))
    ws = script.Script(bytes([0x50 + k]) + b"".join(bytes([33]) + p for p in pubs) + bytes([0x50 + n, 0xAE]))
    return script.p2wsh(ws).address(NET)


@pytest.mark.parametrize("index", [0, 1, 7, 2**31 - 1])
def test_addresses_are_the_sorted_k_of_n_of_each_cosigners_child_key(index):
    t = Treasury(_descriptor(), "regtest")
    assert t.address(index)[0] == _expected(index, 0)
    assert t.address(index, change=True)[0] == _expected(index, 1)
    assert t.address(index)[0] != t.address(index, change=True)[0]


def test_a_3_of_5_derives_too():
    t = Treasury(_descriptor(3, 5), "regtest")
    assert t.quorum == "3 of 5"
    assert t.address(4)[0] == _expected(4, 0, 3, 5)


def test_two_single_branch_descriptors_are_the_same_wallet_as_the_multipath_one():
    multipath = Treasury(_descriptor(), "regtest")
    d = multipath.descriptors()
    two = Treasury(d["receive"], "regtest", change_spec=d["change"])
    for i in (0, 3):
        assert two.address(i) == multipath.address(i)
        assert two.address(i, change=True) == multipath.address(i, change=True)
    assert two.descriptors() == d


def test_the_exported_descriptors_carry_valid_checksums_and_load_back():
    d = Treasury(_descriptor(), "regtest").descriptors()
    assert add_checksum("raw(deadbeef)") == "raw(deadbeef)#89f8spxm"  # BIP 380's own example
    for text in d.values():
        body, checksum = text.split("#")
        assert add_checksum(body) == text and len(checksum) == 8
        Descriptor.from_string(text)
    assert "/<0;1>/*" in d["multipath"] and "/0/*" in d["receive"] and "/1/*" in d["change"]
    tampered = d["multipath"][:-1] + ("q" if d["multipath"][-1] != "q" else "p")
    with pytest.raises(ConfigError, match="checksum #.* does not match"):
        Treasury(tampered, "regtest")  # (embit alone ignores a checksum)
    with pytest.raises(ConfigError, match="checksum #.* does not match"):
        Deriver(tampered, "regtest")


def test_the_wallet_files_name_every_cosigner_with_their_real_fingerprint_and_path():
    t = Treasury(_descriptor(), "regtest")
    fingerprints = {_root(i).my_fingerprint.hex() for i in range(3)}
    caravan = json.loads(t.caravan("dctrl treasury"))
    assert caravan["quorum"] == {"requiredSigners": 2, "totalSigners": 3}
    assert caravan["addressType"] == "P2WSH" and caravan["network"] == "regtest"
    assert {k["xfp"] for k in caravan["extendedPublicKeys"]} == fingerprints
    assert {k["bip32Path"] for k in caravan["extendedPublicKeys"]} == {"m/48'/1'/0'/2'"}
    accounts = {_root(i).derive(PATH).to_public().to_string(version=NET["xpub"]) for i in range(3)}
    assert {k["xpub"] for k in caravan["extendedPublicKeys"]} == accounts
    coldcard = t.coldcard("dctrl treasury")
    assert "Policy: 2 of 3" in coldcard and "Format: P2WSH" in coldcard
    for fp in fingerprints:
        assert f"{fp.upper()}: " in coldcard
    assert "00000000" not in coldcard + json.dumps(caravan)


@pytest.mark.parametrize("spec, reason", [
    ("wpkh(" + _key(0, "0") + ")", "must be wsh\\(sortedmulti"),
    (_descriptor().replace("sortedmulti", "multi"), "must be wsh\\(sortedmulti"),
    ("sh(" + _descriptor() + ")", "must be wsh\\(sortedmulti"),
    (_descriptor(fingerprint="00000000"), "fingerprint 00000000"),
    (_descriptor().replace("[" + _root(1).my_fingerprint.hex() + "/48h/1h/0h/2h]", ""), "key 2 has no origin"),
    (_descriptor(4, 3), "not a descriptor|4 of 3"),
    (_descriptor(branch="0"), "give the change branch"),
    ("wsh(sortedmulti(2," + ",".join([_key(0), _key(0), _key(1)]) + "))", "same key twice"),
    ("wsh(sortedmulti(2," + ",".join(_key(i).split("]")[0] + "]" + _root(i).derive(PATH).to_public()
                                     .to_string(version=NET["xpub"]) for i in range(3)) + "))",
     "must end in /\\*"),
])
def test_refused_with_the_reason(spec, reason):
    with pytest.raises(ConfigError, match=reason):
        Treasury(spec, "regtest")


def test_a_private_key_is_refused_and_not_echoed():
    root = _root(0)
    xprv = root.derive(PATH).to_string(version=NET["xprv"])
    spec = _descriptor().replace(_key(0).split("]")[1].split("/")[0], xprv)
    with pytest.raises(ConfigError, match="key 1 is a private key") as err:
        Treasury(spec, "regtest")
    assert xprv not in str(err.value)


def test_a_mainnet_key_on_regtest_is_refused():
    main = NETWORKS["main"]
    keys = [f"[{_root(i).my_fingerprint.hex()}/48h/0h/0h/2h]"
            f"{_root(i).derive('m/48h/0h/0h/2h').to_public().to_string(version=main['xpub'])}/<0;1>/*"
            for i in range(3)]
    spec = f"wsh(sortedmulti(2,{','.join(keys)}))"
    with pytest.raises(ConfigError, match="not a regtest key"):
        Treasury(spec, "regtest")
    assert Treasury(spec, "mainnet").address(0)[0].startswith("bc1q")


def test_a_change_descriptor_of_other_keys_is_refused():
    receive = Treasury(_descriptor(), "regtest").descriptors()["receive"]
    other = Treasury(_descriptor(2, 4), "regtest").descriptors()["change"]
    with pytest.raises(ConfigError, match="change_descriptor must be the descriptor with /1/"):
        Treasury(receive, "regtest", change_spec=other)
    with pytest.raises(ConfigError, match="change_descriptor must be"):
        Treasury(receive, "regtest", change_spec=receive)


def test_sales_and_dues_may_receive_straight_into_the_treasury():
    """`[business] receive` and `[members] receive` accept the treasury's descriptor: their
    addresses are the treasury's receive branch."""
    t = Treasury(_descriptor(), "regtest")
    deriver = Deriver(t.descriptors()["multipath"], "regtest")
    assert [deriver.address(i) for i in range(3)] == [t.address(i) for i in range(3)]
