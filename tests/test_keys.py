"""Keys, the registry, the policy and the home, on real files in tmp_path (no mocks)."""

from __future__ import annotations

import json
import os
import stat

import nacl.signing
import pytest
import zmq

from keys.bus import next_boot
from keys.files import atomic_write, file_stamp, read_secret_file, write_json
from actors.registry import ACTOR_IDENTITIES
from keys.home import Home
from keys.identity import IdentityKeys
from keys.policy import Grants, Policy
from keys.registry import Registry
from proto.errors import ConfigError, DctrlError, InsecureKeyFile, ProtocolError, UnknownIdentity
from scripts.cli.provision import DEMO_MACHINE, init_home

T0 = 1_700_000_000


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def write_private(path, data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode()
    atomic_write(path, data, mode=0o600)


# ---------------------------------------------------------------------------
# IdentityKeys
# ---------------------------------------------------------------------------

def test_identity_keys_generate_save_load_round_trip(tmp_path):
    keys = IdentityKeys.generate("vm1", version=3)
    assert keys.name == "vm1" and keys.version == 3
    assert len(keys.curve_public) == 40 and len(keys.curve_secret) == 40 and len(keys.sign_seed) == 32
    assert zmq.curve_public(keys.curve_secret) == keys.curve_public
    assert keys.sign_public == bytes(nacl.signing.SigningKey(keys.sign_seed).verify_key)
    path = tmp_path / "vm1.key"
    keys.save(path)
    assert mode(path) == 0o600
    loaded = IdentityKeys.load(path)
    assert loaded == keys
    # the loaded key really signs like the original
    sig = loaded.signing_key.sign(b"hello").signature
    nacl.signing.VerifyKey(keys.sign_public).verify(b"hello", sig)
    assert json.loads(path.read_text())["sign_seed"] == keys.sign_seed.hex()
    assert IdentityKeys.generate("vm1") != keys


def test_identity_keys_save_overwrites_with_private_mode(tmp_path):
    path = tmp_path / "k.key"
    path.write_text("old")
    os.chmod(path, 0o644)
    keys = IdentityKeys.generate("vm1")
    keys.save(path)
    assert mode(path) == 0o600 and IdentityKeys.load(path) == keys
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temp file left behind


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o602, 0o620, 0o610, 0o601, 0o700 | 0o070])
def test_identity_keys_refuse_a_readable_key_file(tmp_path, bad_mode):
    path = tmp_path / "vm1.key"
    IdentityKeys.generate("vm1").save(path)
    os.chmod(path, bad_mode)
    with pytest.raises(InsecureKeyFile) as info:
        IdentityKeys.load(path)
    assert "chmod 600" in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, PermissionError)
    assert info.value.code == "insecure_key_file"


def test_identity_keys_accept_owner_only_modes(tmp_path):
    path = tmp_path / "vm1.key"
    keys = IdentityKeys.generate("vm1")
    keys.save(path)
    for ok in (0o600, 0o400):
        os.chmod(path, ok)
        assert IdentityKeys.load(path) == keys


def test_identity_keys_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        IdentityKeys.load(tmp_path / "nobody.key")
    assert "dctrl keys add" in str(info.value)


def _keyfile(**over):
    k = IdentityKeys.generate("vm1")
    d = {"name": k.name, "version": k.version, "curve_public": k.curve_public.decode(),
         "curve_secret": k.curve_secret.decode(), "sign_seed": k.sign_seed.hex()}
    for key, value in over.items():
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    return json.dumps(d)


OTHER = IdentityKeys.generate("other")
CORRUPT = {
    "empty": "",
    "not-json": "{name: vm1",
    "binary": b"\xff\xfe\x00garbage",
    "list": "[]",
    "null": "null",
    "string": '"vm1"',
    "no-name": _keyfile(name=None),
    "no-seed": _keyfile(sign_seed=None),
    "bad-name": _keyfile(name="VM 1"),
    "name-int": _keyfile(name=5),
    "version-word": _keyfile(version="two"),
    "seed-not-hex": _keyfile(sign_seed="zz" * 32),
    "seed-short": _keyfile(sign_seed="ab" * 31),
    "seed-long": _keyfile(sign_seed="ab" * 33),
    "seed-int": _keyfile(sign_seed=7),
    "curve-mismatch": _keyfile(curve_public=OTHER.curve_public.decode()),
    "curve-secret-short": _keyfile(curve_secret="abc"),
}


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_identity_keys_corrupt_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "vm1.key"
    write_private(path, content)
    with pytest.raises(ConfigError) as info:
        IdentityKeys.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [
    _keyfile(curve_public=5),
    _keyfile(curve_secret=12345),
    _keyfile(curve_secret="~" * 40),
], ids=["curve-public-int", "curve-secret-int", "curve-secret-not-z85"])
def test_identity_keys_wrongly_typed_curve_keys_are_config_errors(tmp_path, content):
    path = tmp_path / "vm1.key"
    write_private(path, content)
    with pytest.raises(ConfigError):
        IdentityKeys.load(path)


def test_identity_keys_repr_never_shows_secrets():
    keys = IdentityKeys.generate("vm1")
    for text in (repr(keys), str(keys), f"{keys}", f"{keys!r}", repr([keys]), repr({"k": keys})):
        assert keys.curve_secret.decode() not in text
        assert keys.sign_seed.hex() not in text
        assert repr(keys.sign_seed) not in text
        assert "vm1" in text and keys.curve_public.decode() in text


@pytest.mark.parametrize("name", ["", "VM1", "1vm", "vm 1", "a" * 33, "vm.1", "v\u00e9"])
def test_identity_keys_generate_refuses_bad_names(name):
    with pytest.raises(ProtocolError):
        IdentityKeys.generate(name)


def test_read_secret_file_and_file_stamp(tmp_path):
    path = tmp_path / "s"
    write_private(path, b"secret")
    assert read_secret_file(path) == b"secret"
    stamp = file_stamp(path)
    assert stamp is not None and stamp[1] == 6
    write_private(path, b"secret2")
    assert file_stamp(path) != stamp
    assert file_stamp(tmp_path / "none") is None
    write_json(tmp_path / "j.json", {"b": 1, "a": [1]})
    assert mode(tmp_path / "j.json") == 0o644
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1], "b": 1}


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "registry.json")


def test_registry_add_save_load(reg):
    vm1, vault = IdentityKeys.generate("vm1"), IdentityKeys.generate("vault")
    reg.add(vm1, "machine")
    reg.add(vault, "actor")
    reg.save()
    assert mode(reg.path) == 0o644
    loaded = Registry.load(reg.path)
    assert loaded.names() == ["vault", "vm1"]
    assert loaded.role("vm1") == "machine" and loaded.role("vault") == "actor"
    assert loaded.revoked_up_to("vm1") == 0 and loaded.revocations() == []
    cur = loaded.current("vm1")
    assert (cur.name, cur.role, cur.version, cur.curve, cur.sign, cur.not_after) == \
        ("vm1", "machine", 1, vm1.curve_public, vm1.sign_public, None)
    assert abs(cur.created - __import__("time").time()) < 60
    assert loaded.key("vm1", 1) == cur and loaded.keys_of("vm1") == [cur]
    assert loaded.by_curve(vm1.curve_public) == cur
    assert loaded.by_curve(vault.curve_public).name == "vault"
    assert loaded.by_curve(OTHER.curve_public) is None
    assert loaded.by_curve(b"") is None
    assert loaded.next_expiry() is None


def test_registry_load_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        Registry.load(tmp_path / "absent.json")
    assert "dctrl init" in str(info.value)
    for content in ("", "{", "{}", '{"identities": []}', '{"identities": null}'):
        (tmp_path / "r.json").write_text(content)
        with pytest.raises(ConfigError):
            Registry.load(tmp_path / "r.json")


@pytest.mark.parametrize("content", ["[]", '"x"', '{"identities": {"vm1": {}}}',
                                     '{"identities": {"vm1": {"role": "machine", "keys": [{}]}}}'])
def test_registry_load_malformed_content_is_a_config_error(tmp_path, content):
    (tmp_path / "r.json").write_text(content)
    with pytest.raises(ConfigError):
        Registry.load(tmp_path / "r.json")


def test_registry_rotate_grace_period(reg):
    old = IdentityKeys.generate("vm1")
    reg.add(old, "machine")
    new = reg.rotate("vm1", grace=100, now=T0)
    assert new.name == "vm1" and new.version == 2 and new.curve_public != old.curve_public
    reg.save()
    reg = Registry.load(reg.path)  # survives a reload
    k1, k2 = reg.key("vm1", 1, now=T0), reg.key("vm1", 2, now=T0)
    assert k1.not_after == T0 + 100 and k2.not_after is None
    assert reg.current("vm1") == k2 and k2.sign == new.sign_public
    for now in (T0, T0 + 99):
        assert reg.is_valid(k1, now) and reg.by_curve(old.curve_public, now) == k1
    for now in (T0 + 100, T0 + 10_000):
        assert not reg.is_valid(k1, now)
        assert reg.by_curve(old.curve_public, now) is None
        with pytest.raises(UnknownIdentity):
            reg.key("vm1", 1, now=now)
        assert reg.by_curve(new.curve_public, now) == k2
    assert reg.next_expiry(now=T0) == T0 + 100
    assert reg.next_expiry(now=T0 + 99) == T0 + 100
    assert reg.next_expiry(now=T0 + 100) is None


def test_registry_rotate_never_extends_an_existing_grace(reg):
    reg.add(IdentityKeys.generate("vm1"), "machine")
    reg.rotate("vm1", grace=100, now=T0)
    reg.rotate("vm1", grace=1000, now=T0 + 10)
    ends = {k.version: k.not_after for k in reg.keys_of("vm1")}
    assert ends == {1: T0 + 100, 2: T0 + 1010, 3: None}
    reg.rotate("vm1", grace=0, now=T0 + 20)  # grace 0 ends every old key now
    ends = {k.version: k.not_after for k in reg.keys_of("vm1")}
    assert ends == {1: T0 + 20, 2: T0 + 20, 3: T0 + 20, 4: None}
    assert [k.version for k in reg.keys_of("vm1") if reg.is_valid(k, T0 + 20)] == [4]
    assert reg.next_expiry(now=T0) == T0 + 20


def test_registry_revoke_and_readmit(reg):
    first = IdentityKeys.generate("vm1")
    reg.add(first, "machine")
    second = reg.rotate("vm1", grace=3600, now=T0)
    reg.add(IdentityKeys.generate("vm2"), "machine")
    assert reg.revoke("vm1") == 2
    reg.save()
    reg = Registry.load(reg.path)
    assert reg.revoked_up_to("vm1") == 2
    assert reg.revocations() == [{"identity": "vm1", "up_to": 2}]
    for k in reg.keys_of("vm1"):
        assert not reg.is_valid(k, now=T0)
    for keys in (first, second):
        assert reg.by_curve(keys.curve_public, now=T0) is None
        with pytest.raises(UnknownIdentity):
            reg.key("vm1", keys.version, now=T0)
    assert reg.by_curve(reg.current("vm2").curve) is not None  # others untouched
    third = reg.rotate("vm1", grace=3600, now=T0)
    assert third.version == 3
    assert reg.by_curve(third.curve_public, now=T0).version == 3
    assert reg.by_curve(second.curve_public, now=T0) is None  # the grace does not resurrect revoked keys
    assert reg.current("vm1").version == 3 and reg.role("vm1") == "machine"


def test_registry_duplicate_and_bad_role(reg):
    reg.add(IdentityKeys.generate("vm1"), "machine")
    reg.save()
    before = reg.path.read_text()
    with pytest.raises(ConfigError) as info:
        reg.add(IdentityKeys.generate("vm1"), "machine")
    assert "rotate" in str(info.value)
    with pytest.raises(ConfigError):
        Registry.load(reg.path).add(IdentityKeys.generate("vm1"), "actor")
    for role in ("root", "", "Machine", None):
        with pytest.raises(ConfigError):
            reg.add(IdentityKeys.generate("vm2"), role)
    assert reg.names() == ["vm1"]
    bad = IdentityKeys("Bad Name", 1, OTHER.curve_public, OTHER.curve_secret, OTHER.sign_seed)
    with pytest.raises(DctrlError):
        reg.add(bad, "actor")
    assert reg.names() == ["vm1"]
    reg.save()
    assert json.loads(reg.path.read_text()) == json.loads(before)


@pytest.mark.parametrize("call", [
    lambda r: r.role("ghost"), lambda r: r.revoked_up_to("ghost"), lambda r: r.current("ghost"),
    lambda r: r.keys_of("ghost"), lambda r: r.key("ghost", 1), lambda r: r.rotate("ghost", 10),
    lambda r: r.revoke("ghost"), lambda r: r.key("vm1", 2),
], ids=["role", "revoked_up_to", "current", "keys_of", "key", "rotate", "revoke", "missing-version"])
def test_registry_unknown_identity(reg, call):
    reg.add(IdentityKeys.generate("vm1"), "machine")
    with pytest.raises(UnknownIdentity):
        call(reg)
    assert reg.names() == ["vm1"]


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------

POLICY = {
    "all": {"publish": ["health.{self}", "error.{self}", "vault.req.{self}"],
            "subscribe": ["vault.token.{self}", "vault.revoked"]},
    "role": {"machine": {"publish": ["machine.{self}", "health.{self}"], "subscribe": ["cmd.machine.{self}"]},
             "admin": {"publish": ["debug"], "subscribe": [""]}},
    "identity": {"vm1": {"publish": ["special.vm1.only"]}, "vault": {"publish": ["vault"], "subscribe": ["vault.req"]}},
    "secrets": {"smtp_password": ["member_mail", "vault"], "nobody": []},
}


def test_policy_self_expansion_and_union():
    p = Policy(POLICY)
    g = p.grants("vm1", "machine")
    assert g.publish == (b"health.vm1.", b"error.vm1.", b"vault.req.vm1.", b"machine.vm1.", b"special.vm1.only.")
    assert g.subscribe == (b"vault.token.vm1.", b"vault.revoked.", b"cmd.machine.vm1.")
    g2 = p.grants("vm2", "machine")  # no identity table: [all] + [role] only
    assert g2.publish == (b"health.vm2.", b"error.vm2.", b"vault.req.vm2.", b"machine.vm2.")
    vault = p.grants("vault", "actor")  # no role table for actor
    assert vault.publish == (b"health.vault.", b"error.vault.", b"vault.req.vault.", b"vault.")
    assert vault.subscribe == (b"vault.token.vault.", b"vault.revoked.", b"vault.req.")
    assert p.grants("vm1", "machine") is g  # cached
    assert p.grants("vm1", "admin") != g  # the role is part of the key
    assert Policy({}).grants("x", "actor") == Grants((), ())


def test_policy_self_grant_is_whole_segment():
    g = Policy(POLICY).grants("vm1", "machine")
    for topic in (b"machine.vm1.", b"machine.vm1.vend.", b"health.vm1."):
        assert g.may_publish(topic), topic
    for topic in (b"machine.vm10.", b"machine.vm1x.", b"machine.", b"health.vm10.", b"vault.token.vm1.",
                  b"special.vm1.", b"cmd.machine.vm1."):
        assert not g.may_publish(topic), topic
    assert not Policy(POLICY).grants("vm10", "machine").may_publish(b"machine.vm1.")


def test_policy_subscription_narrowing():
    g = Policy(POLICY).grants("vm1", "machine")
    assert g.subscription(b"cmd.machine.vm1.") == (b"cmd.machine.vm1.",)
    assert g.subscription(b"cmd.machine.vm1.reboot.") == (b"cmd.machine.vm1.reboot.",)
    assert g.subscription(b"vault.revoked.") == (b"vault.revoked.",)
    assert g.subscription(b"") == (b"vault.token.vm1.", b"vault.revoked.", b"cmd.machine.vm1.")
    assert g.subscription(b"vault.") == (b"vault.token.vm1.", b"vault.revoked.")
    assert g.subscription(b"cmd.machine.vm1") == (b"cmd.machine.vm1.",)  # a partial segment narrows too
    for outside in (b"cmd.machine.vm10.", b"cmd.machine.vm2.", b"chain.", b"vault.token.vm2.", b"vault.req.",
                    b"x"):
        assert g.subscription(outside) == (), outside
    admin = Policy(POLICY).grants("root", "admin")
    for anything in (b"", b"chain.", b"cmd.machine.vm10."):
        assert admin.subscription(anything) == (anything,)


@pytest.mark.parametrize("grant", ["machine vm1", "caf\u00e9", "a..b", "machine.*", "{other}", "machine.{self}.#",
                                   "a/b", "tab\there"])
@pytest.mark.parametrize("where", ["all", "role", "identity"])
def test_policy_bad_grant_fails_at_load(grant, where):
    table = {"publish": ["health.{self}", grant]}
    data = {"all": table} if where == "all" else {where: {"x": table}}
    with pytest.raises(ConfigError) as info:
        Policy(data, source="policy.toml")
    assert "policy.toml" in str(info.value)


@pytest.mark.parametrize("data", [
    {"all": {"publish": "health"}}, {"all": {"subscribe": [1]}}, {"all": 5}, {"role": []},
    {"identity": "vm1"}, {"secrets": {"smtp": "vault"}}, {"secrets": {"smtp": [1]}}, {"secrets": []},
    {"role": {"machine": {"publish": [None]}}},
], ids=repr)
def test_policy_bad_shapes_are_config_errors(data):
    with pytest.raises(ConfigError):
        Policy(data)


@pytest.mark.parametrize("data", [{"role": {"machine": ["machine.{self}"]}}, {"identity": {"vm1": "debug"}}],
                         ids=["role-list", "identity-str"])
def test_policy_non_table_entries_are_config_errors(data):
    with pytest.raises(ConfigError):
        Policy(data)


def test_policy_secret_readers():
    p = Policy(POLICY)
    assert p.secret_readers("smtp_password") == frozenset({"member_mail", "vault"})
    assert p.secret_readers("nobody") == frozenset()
    assert p.secret_readers("unknown") == frozenset()
    assert Policy({}).secret_readers("smtp_password") == frozenset()


def test_policy_load_from_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[all]\npublish = ["health.{self}"]\n[role.machine]\nsubscribe = ["cmd.machine.{self}"]\n'
                    '[secrets]\nrpc = ["payout"]\n')
    p = Policy.load(path)
    assert p.grants("vm1", "machine") == Grants((b"health.vm1.",), (b"cmd.machine.vm1.",))
    assert p.secret_readers("rpc") == frozenset({"payout"})
    assert p.source == str(path)


def test_policy_load_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        Policy.load(tmp_path / "absent.toml")
    assert "dctrl init" in str(info.value)
    path = tmp_path / "policy.toml"
    path.write_text('[all\npublish = ["health"]\n')
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    assert str(path) in str(info.value)
    path.write_text('[all]\npublish = ["health", "bad grant"]\n')
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    assert str(path) in str(info.value) and "bad grant" in str(info.value)


# ---------------------------------------------------------------------------
# Home
# ---------------------------------------------------------------------------

@pytest.fixture
def fresh_home(tmp_path):
    return init_home(tmp_path / "home")


def test_home_init_layout_and_modes(fresh_home):
    root = fresh_home.root
    assert root.is_absolute()
    for sub, want in (("keys", 0o700), ("vault", 0o700), ("events", 0o700), ("run", 0o700), ("log", 0o755),
                      ("demo", 0o700)):
        assert (root / sub).is_dir() and mode(root / sub) == want, sub
    # the demo treasury's three co-signers' mnemonics (for the demo only), private to the user
    cosigners = sorted((root / "demo").glob("cosigner*.key"))
    assert [p.name for p in cosigners] == ["cosigner1.key", "cosigner2.key", "cosigner3.key"]
    for p in cosigners:
        assert mode(p) == 0o600 and len(p.read_text().split()) == 12, p
    key_files = sorted(fresh_home.keys_dir.glob("*.key"))
    names = [*ACTOR_IDENTITIES, "admin", DEMO_MACHINE]
    assert sorted(p.stem for p in key_files) == sorted(names)
    for p in key_files:
        assert mode(p) == 0o600, p
    for p in (root / "vault").iterdir():
        assert mode(p) == 0o600, p
    assert mode(fresh_home.vault_dir / "token.key") == 0o600
    assert mode(fresh_home.registry_path) == 0o644
    assert not [p for p in root.rglob("*.tmp")]

    reg = Registry.load(fresh_home.registry_path)
    assert reg.names() == sorted(names)
    assert {n: reg.role(n) for n in names} == {"broker": "actor", "vault": "actor", "event_logger": "actor",
                                               "chain_notifier": "actor", "price_notifier": "actor",
                                               "business_mgr": "actor", "business_data": "actor", "member_data": "actor",
                                               "reporter": "actor", "member_mail": "actor",
                                               "payout_mgr": "actor",
                                               "admin": "admin", "vm1": "machine"}
    for name in names:
        keys = IdentityKeys.load(fresh_home.key_file(name))
        assert keys.name == name and reg.current(name).curve == keys.curve_public
        assert reg.current(name).sign == keys.sign_public
    assert bytes(fresh_home.vault_signing_key().verify_key) == bytes(fresh_home.vault_public)
    assert fresh_home.database_url == f"sqlite:///{root / 'dctrl.sqlite3'}"
    # the policy template is valid and gives vm1 its own machine topics only
    g = Policy.load(fresh_home.policy_path).grants("vm1", "machine")
    assert g.may_publish(b"machine.vm1.") and not g.may_publish(b"machine.vm10.")
    assert g.subscription(b"") == (b"vault.token.vm1.", b"vault.secret.vm1.", b"vault.revoked.",
                                   b"cmd.machine.vm1.")


def test_home_init_refuses_an_existing_home(fresh_home):
    before = {p.name: p.read_bytes() for p in fresh_home.keys_dir.iterdir()}
    with pytest.raises(ConfigError) as info:
        init_home(fresh_home.root)
    assert "already" in str(info.value)
    assert {p.name: p.read_bytes() for p in fresh_home.keys_dir.iterdir()} == before
    Home(fresh_home.root)  # still a valid home


def test_home_init_options(tmp_path):
    h = init_home(tmp_path / "h", publish_endpoint="tcp://127.0.0.1:9001",
                 subscribe_endpoint="tcp://127.0.0.1:9002", database_url="postgresql://x/y")
    again = Home(h.root)
    assert again.config["bus"]["publish_endpoint"] == "tcp://127.0.0.1:9001"
    assert again.config["bus"]["subscribe_endpoint"] == "tcp://127.0.0.1:9002"
    assert again.database_url == "postgresql://x/y"
    assert again.config["vault"]["token_lifetime"] == 900 and again.config["broker"]["reload_interval"] == 1.0


def test_home_on_a_non_home_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        Home(tmp_path)
    assert "dctrl init" in str(info.value) and str(tmp_path) in str(info.value)
    (tmp_path / "config.toml").write_text("[bus\n")
    with pytest.raises(ConfigError) as info:
        Home(tmp_path)
    assert "config.toml" in str(info.value)


def test_home_without_token_public_key(tmp_path):
    (tmp_path / "config.toml").write_text("[bus]\n")
    h = Home(tmp_path)
    with pytest.raises(ConfigError) as info:
        h.vault_public
    assert "token_public_key" in str(info.value)


def test_home_vault_key_must_be_private(fresh_home):
    os.chmod(fresh_home.vault_dir / "token.key", 0o644)
    with pytest.raises(InsecureKeyFile):
        fresh_home.vault_signing_key()


def test_next_boot_only_grows(tmp_path):
    path = tmp_path / "run" / "vm1.boot"
    path.parent.mkdir()
    boots = [next_boot(path) for _ in range(5)]
    assert boots == [1, 2, 3, 4, 5]
    assert path.read_text() == "5\n" and mode(path) == 0o600
    path.write_text("41")
    assert next_boot(path) == 42
    path.write_text("")
    assert next_boot(path) == 1


@pytest.mark.parametrize("content", ["abc", "1.5", "1 2", "0x10", "\x00"])
def test_next_boot_corrupt_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "vm1.boot"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        next_boot(path)
    assert str(path) in str(info.value)
    assert path.read_text() == content  # left for the operator to inspect


def test_home_boot_file_counter(fresh_home):
    assert fresh_home.boot_file("vm1") == fresh_home.run_dir / "vm1.boot"
    assert [next_boot(fresh_home.boot_file("vm1")) for _ in range(3)] == [1, 2, 3]
    assert next_boot(fresh_home.boot_file("admin")) == 1


def test_bus_settings(fresh_home):
    s = fresh_home.bus_settings("vm1")
    broker = IdentityKeys.load(fresh_home.key_file("broker"))
    assert s.broker_public == broker.curve_public
    assert s.name == "vm1" and s.key_file == fresh_home.key_file("vm1") and s.boot_file == fresh_home.boot_file("vm1")
    assert bytes(s.vault_public) == bytes(fresh_home.vault_signing_key().verify_key)
    assert s.publish_endpoint == fresh_home.config["bus"]["publish_endpoint"]
    assert s.max_message_bytes == 65536 and s.heartbeat_interval == 5
    # after a broker rotation the settings follow the registry
    reg = Registry.load(fresh_home.registry_path)
    new = reg.rotate("broker", grace=60)
    reg.save()
    assert fresh_home.bus_settings("vm1").broker_public == new.curve_public != broker.curve_public
