"""Config files refuse what they do not know (issue 9, item 7).

An unknown key (``ulr`` for ``url``) or a wrong type (``confirm_depth = "six"``) in
config.toml, policy.toml or agent.toml is an error naming the file and the key, at load
time: `dctrl` commands print it in one line, an actor refuses to start with it (exit 78,
no traceback), the machine agent too. What `dctrl init`, the harness and the defaults
write is still accepted (the positive controls).
"""

import subprocess
import sys

import pytest

from actors import price_notifier
from actors.business_mgr import models as business_mgr
from actors.chain_notifier import actor as chain_notifier
from actors.member_mail import models as member_mail_models
from actors.payout_mgr import ledger as payout_ledger
from keys import home as home_module
from keys.home import Home
from keys.policy import Policy
from keys.schema import AGENT, CONFIG, POLICY, check
from machine_agent import config as agent_config
from proto.errors import ConfigError
from tests.harness import ROOT, dctrl, new_home


@pytest.fixture
def home(tmp_path):
    return new_home(tmp_path / "home")


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1))


# -- config.toml --------------------------------------------------------------------

CONFIG_CASES = [
    # (old text of the file from `dctrl init`, its replacement, the error after the file's path)
    ('url = "sqlite', 'ulr = "sqlite', "[database] unknown key 'ulr' (did you mean 'url'?)"),
    ("confirm_depth = 6", 'confirm_depth = "six"', "[chain] confirm_depth must be an integer, not 'six'"),
    ("confirm_depth = 6", "confirm_dpeth = 6", "[chain] unknown key 'confirm_dpeth' (did you mean 'confirm_depth'?)"),
    ("\n[chain.bitcoind]\n", "\n[chain.bitcoin]\n", "unknown table [chain.bitcoin] (did you mean [chain.bitcoind]?)"),
    ('cookie_file = "sim', 'cookie = "sim', "[chain.bitcoind] unknown key 'cookie' (did you mean 'cookie_file'?)"),
    ("[chain]\n", "[chian]\n", "unknown section [chian] (did you mean [chain]?)"),
    ("simulators = true", 'simulators = "yes"', "[demo] simulators must be true or false, not 'yes'"),
    ("[business]\n", "[business]\nmax_invoices_per_minut = 3\n",
     "[business] unknown key 'max_invoices_per_minut' (did you mean 'max_invoices_per_minute'?)"),
    ("[price.sources]\n", "[price.sources]\nbinance = \"http://x\"\n", "[price.sources] unknown key 'binance' (known: kraken, coinbase, bitstamp, coingecko, fx)"),
    ("token_lifetime = 900", "token_lifetime = 9.5", "[vault] token_lifetime must be an integer, not 9.5"),
    ("[bus]\n", "[bus]\nmax_message_bytes = \"64k\"\n", "[bus] max_message_bytes must be an integer, not '64k'"),
    ("[runtime]\n", "[runtime]\nheartbeat_intreval = 1\n",
     "[runtime] unknown key 'heartbeat_intreval' (did you mean 'heartbeat_interval'?)"),
]


@pytest.mark.parametrize("old,new,message", CONFIG_CASES, ids=[c[2][:40] for c in CONFIG_CASES])
def test_an_unknown_key_or_a_wrong_type_in_config_toml_names_file_and_key(home, old, new, message):
    path = home.root / "config.toml"
    Home(home.root)  # the positive control: as `dctrl init` and the harness wrote it
    edit(path, old, new)
    with pytest.raises(ConfigError) as info:
        Home(home.root)
    assert str(info.value) == f"{path}: {message}"


def test_dctrl_commands_print_the_config_error_in_one_line(home):
    path = home.root / "config.toml"
    edit(path, "confirm_depth = 6", 'confirm_depth = "six"')
    out = dctrl(home, "status", "--wait", "1", check=False)
    assert out.returncode == 2
    assert out.stderr == f"dctrl: {path}: [chain] confirm_depth must be an integer, not 'six'\n"


@pytest.mark.parametrize("actor", ["chain_notifier", "vault", "broker"])
def test_an_actor_with_a_bad_config_exits_78_with_one_line_and_no_traceback(home, actor):
    path = home.root / "config.toml"
    edit(path, 'url = "sqlite', 'ulr = "sqlite')
    proc = subprocess.run([sys.executable, "-m", "scripts.cli", "run", actor, "--home", str(home.root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr == f"dctrl: {path}: [database] unknown key 'ulr' (did you mean 'url'?)\n"


def test_what_the_defaults_hold_is_valid_and_every_default_has_a_schema_entry():
    """The schema (keys/schema.py) and the DEFAULTS of the home and of each actor name the
    same keys with values of the right type: a new setting cannot be refused as unknown,
    and a misspelt one in a DEFAULTS dict fails here."""
    def without_none(d):
        return {k: without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    sections = {**home_module.DEFAULTS, "business": business_mgr.DEFAULTS,
                "chain": chain_notifier.DEFAULTS, "price": price_notifier.DEFAULTS,
                "member_mail": member_mail_models.DEFAULTS, "payouts": payout_ledger.DEFAULTS}
    for name, table in sections.items():
        check({name: without_none(table)}, CONFIG, "defaults")
    # and the other way round: every section the schema knows has defaults (or is [business]'s receive,
    # [vault]'s key, the backends' tables: filled in by `dctrl init` or the operator)
    assert set(CONFIG.keys) == set(sections)


def test_a_home_written_by_init_and_every_key_set_loads(home):
    """Every key of every section, set to its default's value, is accepted (no valid key refused)."""
    path = home.root / "config.toml"
    extra = ("\n[broker]\nreload_interval = 0.5\ndenied_events_per_second = 10\n"
             "[event_logger]\nsegment_mb = 16\nfsync_interval_ms = 50\n"
             '[chain.esplora]\nurl = "http://127.0.0.1:3002"\n'
             '[chain.bitcoind2]\nrpc_url = "http://127.0.0.1:8332"\nuser = "dctrl"\npassword_secret = "rpc"\n')
    text = path.read_text().replace("[vault]\n", "[vault]\nrevocations_interval = 30\n"
                                    'passphrase_file = "vault/passphrase"\n', 1)
    text = text.replace("confirm_depth = 6\n", "confirm_depth = 6\nreconcile_interval = 30\nrecent_blocks = 100\n"
                        "rescan_limit = 2016\n", 1)
    business = "".join(f"{k} = {v!r}\n" for k, v in business_mgr.DEFAULTS.items() if k != "receive")
    text = text.replace("[business]\n", "[business]\n" + business, 1)
    price = "".join(f"{k} = {v!r}\n" for k, v in price_notifier.DEFAULTS.items() if k != "sources")
    path.write_text(text + extra + "[price]\n" + price)
    loaded = Home(home.root).config
    assert loaded["chain"]["esplora"]["url"] == "http://127.0.0.1:3002"
    assert loaded["business"]["late_window"] == business_mgr.DEFAULTS["late_window"]
    assert loaded["price"]["max_cad"] == price_notifier.DEFAULTS["max_cad"]


# -- policy.toml ----------------------------------------------------------------------

POLICY_CASES = [
    ("[identity.broker]\npublish", "[identity.broker]\npublsh",
     "[identity.broker] unknown key 'publsh' (did you mean 'publish'?)"),
    ("[role.machine]", "[role.machin]", "unknown table [role.machin] (did you mean [role.machine]?)"),
    ("[secrets]", "[secret]", "unknown section [secret] (did you mean [secrets]?)"),
    ('subscribe = ["vault.token', 'subscibe = ["vault.token', "[all] unknown key 'subscibe' (did you mean 'subscribe'?)"),
]


@pytest.mark.parametrize("old,new,message", POLICY_CASES, ids=[c[2][:40] for c in POLICY_CASES])
def test_an_unknown_key_in_policy_toml_names_file_and_key(home, old, new, message):
    path = home.policy_path
    Policy.load(path)  # the positive control: the policy `dctrl init` wrote
    edit(path, old, new)
    with pytest.raises(ConfigError) as info:
        Policy.load(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_the_broker_refuses_to_start_on_a_policy_with_a_typo(home):
    edit(home.policy_path, "[identity.vault]\npublish", "[identity.vault]\npublsh")
    proc = subprocess.run([sys.executable, "-m", "scripts.cli", "run", "broker", "--home", str(home.root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert proc.stderr == (f"dctrl: {home.policy_path}: [identity.vault] unknown key 'publsh' "
                           "(did you mean 'publish'?)\n")


def test_policy_tables_named_by_the_operator_are_accepted():
    p = Policy({"identity": {"anyone": {"publish": ["debug.{self}"]}}, "secrets": {"smtp": ["anyone"]},
                "role": {"admin": {"subscribe": [""]}}})
    assert p.secret_readers("smtp") == frozenset({"anyone"})
    check({"identity": {"x": {}}, "secrets": {}}, POLICY, "policy.toml")


# -- agent.toml ------------------------------------------------------------------------

AGENT_CASES = [
    ('state_dir = "state"\n', 'state_dir = "state"\npin = "mock"\n', "unknown key 'pin' (did you mean 'pins'?)"),
    ('state_dir = "state"\n', 'state_dir = "state"\ni2c_bus = "1"\n', "i2c_bus must be an integer, not '1'"),
    ("\npulse_ms = 500", "\npulse = 500", "[slots.1] unknown key 'pulse' (did you mean 'pulse_ms'?)"),
    ("broker_public_key =", "broker_key =", "[bus] unknown key 'broker_key' (did you mean 'broker_public_key'?)"),
    ("\n[slots.1]\n", "\n[slot.1]\n", "unknown section [slot] (did you mean [slots]?)"),
    ("\n[slots.1]\n", "\n[slots.one]\n", "unknown table [slots.one] (known: <slot number>)"),
]


@pytest.mark.parametrize("old,new,message", AGENT_CASES, ids=[c[2][:40] for c in AGENT_CASES])
def test_an_unknown_key_or_a_wrong_type_in_agent_toml_names_file_and_key(home, old, new, message):
    path = home.root / "agents" / "vm1" / "agent.toml"
    agent_config.load(path)  # the positive control: the demo machine's, from `dctrl init`
    agent_config.load_machine(path)
    edit(path, old, new)
    for load in (agent_config.load, agent_config.load_machine):
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), str(info.value)


def test_dctrl_agent_refuses_a_typo_in_one_line(home):
    path = home.root / "agents" / "vm1" / "agent.toml"
    edit(path, "\npulse_ms = 500\n", "\npulse_ms = 500\nactive_hihg = true\n")
    proc = subprocess.run([sys.executable, "-m", "machine_agent.main", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (f"dctrl-agent: {path}: [slots.1] unknown key 'active_hihg' "
                           "(did you mean 'active_high'?)\n")


def test_every_agent_key_the_loader_reads_is_in_the_schema(home, tmp_path):
    """The documented agent.toml (machine_agent/config.py's docstring) loads: no valid key refused."""
    path = home.root / "agents" / "vm1" / "agent.toml"
    text = path.read_text().replace('state_dir = "state"\n', 'state_dir = "state"\ni2c_bus = 1\nclock = "system"\n'
                                    "heartbeat_interval = 1\n", 1)
    text = text.replace("\n[slots.1]\n", "\n[slots.1]\nactive_high = true\n", 1)
    path.write_text(text + '\n[[sensors]]\nname = "temp"\ni2c = 0x48\nregister = 0\nkind = "lm75"\nunit = "C"\n'
                    "interval_s = 60\n")
    assert agent_config.load(path).heartbeat_interval == 1
    machine = agent_config.load_machine(path)
    assert machine.slots[1].active_high is True and machine.inputs.sensors[0].name == "temp"
    check({"buttons": {"1": "gpio:5"}}, AGENT, "agent.toml")
