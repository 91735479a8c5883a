"""BIP84 derivation from public material, and the persisted index on SQLite and PostgreSQL."""

import os
import threading
import uuid

import pytest
from embit import bip32, bip39
from embit.networks import NETWORKS

from actors.chain.addresses import AddressBook, Deriver
from actors.db import connect
from proto.errors import ConfigError

MNEMONIC = " ".join(["abandon"] * 11 + ["about"])  # BIP84's test vector
ROOT = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
ZPUB = ROOT.derive("m/84h/0h/0h").to_public().to_string(version=NETWORKS["main"]["zpub"])
VPUB = ROOT.derive("m/84h/1h/0h").to_public().to_string(version=NETWORKS["test"]["zpub"])  # a vpub
PG_URL = os.environ.get("DCTRL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def test_bip84_reference_addresses_from_the_account_zpub():
    d = Deriver(ZPUB, "mainnet")
    assert d.address(0)[0] == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"  # BIP84 m/84'/0'/0'/0/0
    assert d.address(1)[0] == "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"  # BIP84 m/84'/0'/0'/0/1
    assert d.address(0)[1] == "0014" + "c0cebcd6c3d3ca8c75dc5ec62ebe55330ef910e2"


def test_descriptor_and_xpub_agree_and_match_the_private_derivation():
    acct = ROOT.derive("m/84h/1h/0h")
    desc = f"wpkh([{ROOT.my_fingerprint.hex()}/84h/1h/0h]{acct.to_public().to_string()}/0/*)"
    by_desc, by_vpub = Deriver(desc, "regtest"), Deriver(VPUB, "regtest")
    from embit import script
    for i in (0, 1, 7, 1000):
        expected = script.p2wpkh(ROOT.derive(f"m/84h/1h/0h/0/{i}")).address(NETWORKS["regtest"])
        assert by_desc.address(i)[0] == by_vpub.address(i)[0] == expected
        assert expected.startswith("bcrt1q")


@pytest.mark.parametrize("spec, why", [
    (ROOT.derive("m/84h/0h/0h").to_string(), "private key"),
    ("wpkh(" + ROOT.derive("m/84h/1h/0h").to_string() + "/0/*)", "private key"),
    ("wpkh(" + ROOT.derive("m/84h/1h/0h").to_public().to_string() + "/0/0)", "/\\*"),
    ("xpub-not-really", "extended public key"),
])
def test_refuses_private_keys_and_nonsense(spec, why):
    with pytest.raises(ConfigError, match=why):
        Deriver(spec, "regtest")


@pytest.fixture(params=["sqlite", "postgresql"])
def book_model(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}" if request.param == "sqlite" else PG_URL
    db = connect(url)
    model = AddressBook.model(db, f"addr_{uuid.uuid4().hex[:10]}")
    db.create_tables([model])
    yield model, url
    db.drop_tables([model])
    db.close()


def test_index_is_persisted_and_never_reused(book_model):
    model, url = book_model
    book = AddressBook(model, "invoices", Deriver(VPUB, "regtest"), gap_limit=5)
    got = [book.next(label=f"i{n}") for n in range(3)]
    assert [i for i, _ in got] == [0, 1, 2]
    # A "restart": a new book over the same table continues after the last index.
    again = AddressBook(model, "invoices", Deriver(VPUB, "regtest"))
    assert again.next()[0] == 3
    assert len(set(a for _, a in book.issued())) == 4
    assert book.rescan_addresses() == [Deriver(VPUB, "regtest").address(i)[0] for i in range(3 + 5 + 1)]
    # Books are independent, each with its own account; sharing one is refused.
    other_account = ROOT.derive("m/84h/1h/1h").to_public().to_string()
    assert AddressBook(model, "members", Deriver(other_account, "regtest")).next()[0] == 0
    with pytest.raises(ConfigError, match="give each book its own account"):
        AddressBook(model, "copycat", Deriver(VPUB, "regtest")).next()


def test_concurrent_requests_get_distinct_addresses(book_model):
    model, url = book_model
    results, errors = [], []

    def worker():
        db = connect(url)  # each thread its own connection, as separate actors would have
        try:
            m = AddressBook.model(db, model._meta.table_name)
            b = AddressBook(m, "race", Deriver(VPUB, "regtest"))
            for _ in range(5):
                results.append(b.next()[1])
        except Exception as exc:
            errors.append(exc)
        finally:
            db.close()
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 15 and len(set(results)) == 15
