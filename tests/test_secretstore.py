"""Tests for actors.secretstore: the Vault's encrypted store of operational secrets."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import stat

import nacl.pwhash.argon2id
import nacl.utils
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.secretstore import (
    InsecureKeyFile,
    SecretStore,
    SecretStoreError,
    UnknownSecret,
    WrongKey,
    create_key_file,
    load_key_file,
    open_sealed,
    seal_for,
)

FAST = {
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}
SMTP = b"smtp-password-\x00\xffZebra42!"
RPC = b"bitcoind-rpc-password-Quokka99"


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "vault.key"
    create_key_file(path)
    return path


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "secrets.json"


@pytest.fixture
def store(key_file, store_path):
    return SecretStore.create(store_path, key=load_key_file(key_file))


# ---------------------------------------------------------------- key files


def test_key_file_is_0600_hex_of_32_bytes_and_loads(key_file):
    assert mode_of(key_file) == 0o600
    text = key_file.read_text()
    assert len(text.strip()) == 64
    key = load_key_file(key_file)
    assert key == bytes.fromhex(text.strip())
    assert len(key) == 32


def test_key_files_are_random(tmp_path):
    create_key_file(tmp_path / "a")
    create_key_file(tmp_path / "b")
    assert load_key_file(tmp_path / "a") != load_key_file(tmp_path / "b")


def test_create_key_file_refuses_to_overwrite(key_file):
    before = key_file.read_bytes()
    with pytest.raises(FileExistsError):
        create_key_file(key_file)
    assert key_file.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_load_key_file_refuses_group_or_other_access(key_file, mode):
    os.chmod(key_file, mode)
    with pytest.raises(InsecureKeyFile) as info:
        load_key_file(key_file)
    assert isinstance(info.value, PermissionError)
    assert isinstance(info.value, SecretStoreError)
    message = str(info.value)
    assert str(key_file) in message
    assert f"chmod 600 {key_file}" in message
    assert key_file.read_text().strip() not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_key_file_accepts_owner_only_modes(key_file, mode):
    os.chmod(key_file, mode)
    assert len(load_key_file(key_file)) == 32


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 31, "ab" * 33])
def test_load_key_file_refuses_malformed_content(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(SecretStoreError, match="malformed"):
        load_key_file(path)


# ---------------------------------------------------------------- round trips


def test_round_trip_with_key_file_and_reopen(key_file, store_path):
    key = load_key_file(key_file)
    store = SecretStore.create(store_path, key=key)
    assert store.names() == []
    store.set("smtp.password", SMTP)
    store.set("bitcoind_rpc-password", RPC)
    assert store.get("smtp.password") == SMTP
    assert store.get("bitcoind_rpc-password") == RPC
    assert store.names() == ["bitcoind_rpc-password", "smtp.password"]

    reopened = SecretStore.open(store_path, key=load_key_file(key_file))
    assert reopened.names() == ["bitcoind_rpc-password", "smtp.password"]
    assert reopened.get("smtp.password") == SMTP
    assert reopened.get("bitcoind_rpc-password") == RPC


def test_round_trip_with_passphrase_and_reopen(store_path):
    store = SecretStore.create(store_path, passphrase="correct horse battery", **FAST)
    store.set("smtp", SMTP)
    assert store.get("smtp") == SMTP

    doc = json.loads(store_path.read_text())
    assert doc["kdf"]["alg"] == "argon2id"
    assert doc["kdf"]["opslimit"] == FAST["opslimit"]
    assert doc["kdf"]["memlimit"] == FAST["memlimit"]

    reopened = SecretStore.open(store_path, passphrase="correct horse battery")
    assert reopened.get("smtp") == SMTP


def test_file_format(store, store_path):
    store.set("smtp", SMTP)
    doc = json.loads(store_path.read_text())
    assert doc["version"] == 1
    assert doc["kdf"] is None
    assert isinstance(doc["check"], str)
    assert set(doc["secrets"]) == {"smtp"}
    entry = doc["secrets"]["smtp"]
    assert set(entry) == {"box", "updated"}
    assert entry["updated"].endswith("Z") and "T" in entry["updated"]
    assert store.updated("smtp") == entry["updated"]


def test_overwrite_and_delete(store, store_path, key_file):
    store.set("smtp", b"old")
    store.set("smtp", b"new")
    assert store.get("smtp") == b"new"
    store.set("rpc", RPC)
    store.delete("smtp")
    assert store.names() == ["rpc"]
    with pytest.raises(UnknownSecret):
        store.get("smtp")
    with pytest.raises(UnknownSecret):
        store.delete("smtp")
    reopened = SecretStore.open(store_path, key=load_key_file(key_file))
    assert reopened.names() == ["rpc"]


def test_unknown_secret_is_a_key_error_naming_the_secret(store):
    with pytest.raises(KeyError) as info:
        store.get("nope")
    assert isinstance(info.value, UnknownSecret)
    assert isinstance(info.value, SecretStoreError)
    assert info.value.name == "nope"
    assert "'nope'" in str(info.value)


def test_empty_value_round_trips(store):
    store.set("empty", b"")
    assert store.get("empty") == b""


def test_value_must_be_bytes(store):
    with pytest.raises(TypeError):
        store.set("smtp", "a str is not bytes")
    assert store.names() == []


# ---------------------------------------------------------------- wrong keys


def test_wrong_key_is_refused(store, store_path):
    store.set("smtp", SMTP)
    with pytest.raises(WrongKey) as info:
        SecretStore.open(store_path, key=nacl.utils.random(32))
    assert isinstance(info.value, PermissionError)
    assert "wrong key" in str(info.value)
    assert str(store_path) in str(info.value)


def test_wrong_passphrase_is_refused(store_path):
    SecretStore.create(store_path, passphrase="right one", **FAST).set("smtp", SMTP)
    with pytest.raises(WrongKey) as info:
        SecretStore.open(store_path, passphrase="wrong one")
    assert "wrong passphrase" in str(info.value)
    assert "right one" not in str(info.value) and "wrong one" not in str(info.value)


def test_passphrase_store_refuses_a_key_and_vice_versa(store, store_path, tmp_path):
    with pytest.raises(WrongKey, match="passphrase"):
        SecretStore.open(store_path, passphrase="anything")
    other = tmp_path / "pass.json"
    SecretStore.create(other, passphrase="pw", **FAST)
    with pytest.raises(WrongKey, match="passphrase"):
        SecretStore.open(other, key=nacl.utils.random(32))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"key": b"k" * 32, "passphrase": "pw"}],
)
def test_exactly_one_of_key_or_passphrase(store_path, kwargs):
    with pytest.raises(ValueError):
        SecretStore.create(store_path, **kwargs)
    assert not store_path.exists()


@pytest.mark.parametrize("key", [b"", b"k" * 31, b"k" * 33])
def test_key_must_be_32_bytes(store_path, key):
    with pytest.raises(ValueError):
        SecretStore.create(store_path, key=key)
    assert not store_path.exists()


# ---------------------------------------------------------------- at rest


def test_store_file_is_0600_and_holds_no_plaintext(store, store_path, key_file):
    assert mode_of(store_path) == 0o600
    values = {"smtp": SMTP, "rpc": RPC, "short": b"Xyzzy-plugh-7"}
    for name, value in values.items():
        store.set(name, value)
    assert mode_of(store_path) == 0o600
    raw = store_path.read_bytes()
    for value in values.values():
        assert value not in raw
        assert value.hex().encode() not in raw
    # nor the key, nor the check plaintext
    assert load_key_file(key_file).hex().encode() not in raw
    assert b"dctrl-vault-check" not in raw
    # and no temp files left behind
    assert sorted(p.name for p in store_path.parent.iterdir() if not p.name.endswith(".lock")) == [
        "secrets.json",
        "vault.key",
    ]


def test_passphrase_store_holds_no_plaintext(store_path):
    store = SecretStore.create(store_path, passphrase="hunter2-passphrase", **FAST)
    store.set("smtp", SMTP)
    raw = store_path.read_bytes()
    assert SMTP not in raw
    assert b"hunter2-passphrase" not in raw
    assert mode_of(store_path) == 0o600


def test_repr_and_errors_do_not_leak_the_key(store, key_file):
    key = load_key_file(key_file)
    store.set("smtp", SMTP)
    text = repr(store)
    assert "secrets.json" in text
    for leak in (key.hex(), repr(key), repr(SMTP)):
        assert leak not in text
    with pytest.raises(TypeError):
        pickle.dumps(store)


def test_logs_never_contain_values_or_key(store, store_path, key_file, caplog):
    caplog.set_level(logging.DEBUG, logger="actors.secretstore")
    key = load_key_file(key_file)
    other = SecretStore.open(store_path, key=key)
    store.set("smtp", SMTP)
    other.reload_if_changed()
    assert other.get("smtp") == SMTP
    other.delete("smtp")
    assert "smtp" in caplog.text  # names are logged...
    for leak in (repr(SMTP), SMTP.decode("latin-1"), SMTP.hex(), key.hex()):
        assert leak not in caplog.text  # ...values and keys never


def test_ciphertext_moved_to_another_name_is_refused(store, store_path, key_file):
    store.set("smtp", SMTP)
    store.set("rpc", RPC)
    doc = json.loads(store_path.read_text())
    doc["secrets"]["rpc"] = dict(doc["secrets"]["smtp"])  # overwrite rpc with smtp's box
    doc["secrets"]["copy"] = dict(doc["secrets"]["smtp"])
    store_path.write_text(json.dumps(doc))

    tampered = SecretStore.open(store_path, key=load_key_file(key_file))
    assert tampered.get("smtp") == SMTP
    for name in ("rpc", "copy"):
        with pytest.raises(SecretStoreError, match="different name") as info:
            tampered.get(name)
        assert repr(SMTP) not in str(info.value)


def test_tampered_ciphertext_is_refused(store, store_path, key_file):
    store.set("smtp", SMTP)
    doc = json.loads(store_path.read_text())
    blob = bytearray(base64.b64decode(doc["secrets"]["smtp"]["box"]))
    blob[-1] ^= 1
    doc["secrets"]["smtp"]["box"] = base64.b64encode(bytes(blob)).decode()
    store_path.write_text(json.dumps(doc))
    tampered = SecretStore.open(store_path, key=load_key_file(key_file))
    with pytest.raises(SecretStoreError, match="failed authentication"):
        tampered.get("smtp")


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 2, "kdf": null, "check": "", "secrets": {}}',
        '{"version": 1, "kdf": null, "check": "", "secrets": []}',
        '{"version": 1, "kdf": {"alg": "scrypt"}, "check": "", "secrets": {}}',
    ],
)
def test_malformed_store_file_is_refused(store_path, content):
    store_path.write_text(content)
    with pytest.raises(SecretStoreError):
        SecretStore.open(store_path, key=b"k" * 32)


def test_absurd_kdf_limits_in_file_are_refused(store_path):
    SecretStore.create(store_path, passphrase="pw", **FAST)
    doc = json.loads(store_path.read_text())
    doc["kdf"]["memlimit"] = 2**40
    store_path.write_text(json.dumps(doc))
    with pytest.raises(SecretStoreError, match="memlimit"):
        SecretStore.open(store_path, passphrase="pw")


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["", "a" * 65, "Upper", "with space", "slash/name", "nul\x00", "ünïcode", "semi;colon", "tab\t"],
)
def test_bad_names_are_refused(store, name):
    with pytest.raises(ValueError):
        store.set(name, b"v")
    with pytest.raises(ValueError):
        store.get(name)
    assert store.names() == []


def test_non_str_name_is_refused(store):
    with pytest.raises(TypeError):
        store.set(b"smtp", b"v")


@pytest.mark.parametrize("name", ["a", "a" * 64, "smtp.password", "rpc_pass-2", "0", "...", "-_."])
def test_good_names_are_accepted(store, name):
    store.set(name, b"v")
    assert store.get(name) == b"v"


# ---------------------------------------------------------------- create


def test_create_refuses_to_overwrite(store, store_path, key_file):
    store.set("smtp", SMTP)
    before = store_path.read_bytes()
    with pytest.raises(FileExistsError):
        SecretStore.create(store_path, key=nacl.utils.random(32))
    with pytest.raises(FileExistsError):
        SecretStore.create(store_path, passphrase="pw", **FAST)
    assert store_path.read_bytes() == before
    assert SecretStore.open(store_path, key=load_key_file(key_file)).get("smtp") == SMTP


def test_open_missing_store_raises_file_not_found(store_path):
    with pytest.raises(FileNotFoundError):
        SecretStore.open(store_path, key=b"k" * 32)


# ---------------------------------------------------------------- reload / concurrency


def test_reload_if_changed_sees_another_instances_write(store, store_path, key_file):
    key = load_key_file(key_file)
    other = SecretStore.open(store_path, key=key)
    assert store.reload_if_changed() is False

    other.set("smtp", SMTP)
    assert "smtp" not in store.names()
    assert store.reload_if_changed() is True
    assert store.get("smtp") == SMTP
    assert store.reload_if_changed() is False

    other.delete("smtp")
    assert store.reload_if_changed() is True
    assert store.names() == []


def test_own_write_does_not_count_as_a_change(store):
    store.set("smtp", SMTP)
    assert store.reload_if_changed() is False


def test_writers_do_not_lose_each_others_updates(store, store_path, key_file):
    key = load_key_file(key_file)
    other = SecretStore.open(store_path, key=key)
    store.set("smtp", SMTP)
    other.set("rpc", RPC)  # other never reloaded explicitly
    store.set("third", b"3")
    fresh = SecretStore.open(store_path, key=key)
    assert fresh.names() == ["rpc", "smtp", "third"]
    assert fresh.get("smtp") == SMTP and fresh.get("rpc") == RPC


def test_reload_refuses_a_store_recreated_with_another_key(store, store_path):
    store.set("smtp", SMTP)
    store_path.unlink()
    SecretStore.create(store_path, key=nacl.utils.random(32)).set("smtp", b"impostor")
    with pytest.raises(WrongKey):
        store.reload_if_changed()
    assert store.get("smtp") == SMTP  # in-memory state untouched


# ---------------------------------------------------------------- sealing for the bus


def test_seal_for_and_open_sealed_round_trip():
    public, secret = zmq.curve_keypair()
    sealed = seal_for(public, SMTP)
    assert SMTP not in sealed
    assert open_sealed(secret, sealed) == SMTP
    assert seal_for(public, SMTP) != sealed  # ephemeral sender key each time


def test_open_sealed_with_another_secret_key_fails():
    public, _secret = zmq.curve_keypair()
    _other_public, other_secret = zmq.curve_keypair()
    sealed = seal_for(public, SMTP)
    with pytest.raises(SecretStoreError) as info:
        open_sealed(other_secret, sealed)
    assert other_secret.decode() not in str(info.value)


def test_open_sealed_refuses_altered_data():
    public, secret = zmq.curve_keypair()
    sealed = bytearray(seal_for(public, SMTP))
    sealed[-1] ^= 1
    with pytest.raises(SecretStoreError):
        open_sealed(secret, bytes(sealed))


@pytest.mark.parametrize("bad_key", [b"", b"short", b"~" * 40, b"0" * 45])
def test_seal_for_refuses_malformed_keys(bad_key):
    with pytest.raises(ValueError):
        seal_for(bad_key, b"v")


# ---------------------------------------------------------------- property


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.from_regex(r"[a-z0-9_.-]{1,64}", fullmatch=True),
    value=st.binary(max_size=2048),
)
def test_arbitrary_values_round_trip(tmp_path, name, value):
    # One store for all examples (the fixture is function-scoped on purpose).
    path = tmp_path / "prop.json"
    key = b"\x07" * 32
    store = SecretStore.open(path, key=key) if path.exists() else SecretStore.create(path, key=key)
    store.set(name, value)
    assert store.get(name) == value
    assert SecretStore.open(path, key=key).get(name) == value
    public, secret = zmq.curve_keypair()
    assert open_sealed(secret, seal_for(public, value)) == value
