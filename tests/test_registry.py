"""The actor registry (actors/registry.py) drives `dctrl init`, the policy template, `dctrl run`,
`dctrl up` / `dctrl supervisor-config` and `dctrl status`: adding an actor is one entry."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

import pytest

from actors import registry
from actors.registry import Entry, Grants
from keys.home import Home
from keys.policy import Policy
from keys.registry import Registry
from proto.errors import DctrlError
from proto.wire import topic_frame
from scripts.cli import build_parser
from scripts.cli.provision import init_home, policy_template
from scripts.cli.run import actor_class
from scripts.cli.supervise import supervisor_config
from tests.harness import ROOT


@pytest.fixture
def fresh(tmp_path):
    return init_home(tmp_path / "home")


def programs(conf: str) -> set[str]:
    return {line[len("[program:"):-1] for line in conf.splitlines() if line.startswith("[program:")}


def test_every_server_actor_gets_a_key_and_no_agent_part_does(fresh):
    reg = Registry.load(fresh.registry_path)
    for e in registry.ENTRIES:
        if e.part == "server":
            assert fresh.key_file(e.name).exists(), e.name
            assert reg.role(e.name) == e.role
        else:
            assert e.name not in reg.names() and not fresh.key_file(e.name).exists(), e.name
    assert set(reg.names()) == {*registry.ACTOR_IDENTITIES, "admin", "vm1"}


def test_the_policy_template_holds_each_entrys_grants(fresh):
    text = fresh.policy_path.read_text()
    assert text == policy_template()
    data = tomllib.loads(text)
    policy = Policy.load(fresh.policy_path)
    for e in registry.server_actors():
        section = data["identity"].get(e.name, {})
        assert tuple(section.get("publish", ())) == e.grants.publish, e.name
        assert tuple(section.get("subscribe", ())) == e.grants.subscribe, e.name
        grants = policy.grants(e.name, e.role)
        for prefix in e.grants.publish:
            assert grants.may_publish(topic_frame(f"{prefix}.x" if prefix else "x")), (e.name, prefix)
    for role, g in registry.ROLE_GRANTS.items():
        assert tuple(data["role"][role].get("publish", ())) == g.publish
        assert tuple(data["role"][role].get("subscribe", ())) == g.subscribe
    assert tuple(data["all"]["publish"]) == registry.ALL_GRANTS.publish


def test_supervisor_config_runs_exactly_the_supervised_entries_in_order(fresh):
    fresh.config["demo"]["simulators"] = False
    conf = supervisor_config(fresh)
    # the actors, and the report server (`dctrl serve`: no bus identity) after them
    assert programs(conf) == set(registry.supervised()) | {"server"}
    order = [conf.index(f"[program:{name}]") for name in (*registry.supervised(), "server")]
    assert order == sorted(order)
    assert f"scripts.cli serve --home {fresh.root}" in conf
    from tests.harness import ROOT

    assert f"\ndirectory={ROOT}\n" in conf  # where `python -m scripts.cli` finds the packages
    for e in registry.ENTRIES:
        assert (f"scripts.cli run {e.name} --home" in conf) == e.supervised, e.name


def test_dctrl_run_resolves_each_server_actor_and_refuses_the_rest():
    for e in registry.server_actors():
        entry, cls = actor_class(e.name)
        assert entry == e and f"{cls.__module__}:{cls.__name__}" == e.cls
    for e in registry.ENTRIES:  # every dotted class exists, the agent's parts too
        module, name = e.cls.split(":")
        assert hasattr(importlib.import_module(module), name), e.cls
    with pytest.raises(DctrlError, match="part of a vending machine's agent"):
        actor_class("machine_mgr")
    with pytest.raises(DctrlError, match="unknown actor 'nope'; known: broker, vault"):
        actor_class("nope")
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for e in registry.server_actors():
        assert e.name in run_help


def test_one_new_entry_is_provisioned_granted_and_supervised(tmp_path, monkeypatch):
    new = Entry("ledger", "actors.ledger:Ledger", grants=Grants(publish=("ledger",), subscribe=("invoice",)))
    monkeypatch.setattr(registry, "ENTRIES", (*registry.ENTRIES, new))
    home = init_home(tmp_path / "home")
    assert Registry.load(home.registry_path).role("ledger") == "actor"
    assert Policy.load(home.policy_path).grants("ledger", "actor").may_publish(topic_frame("ledger.daily"))
    home.config["demo"]["simulators"] = False
    assert "ledger" in programs(supervisor_config(home))
    assert isinstance(Home(home.root), Home)


def test_reading_the_registry_imports_nothing_heavy():
    code = ("import sys, actors.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('zmq', 'peewee', 'embit', 'nacl', 'schedule', 'machine_agent', 'broker', 'keys', 'proto')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_keys_home_does_not_import_actors_or_the_agent():
    code = ("import sys, keys.home; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('actors', 'machine_agent', 'scripts')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    source = (ROOT / "keys" / "home.py").read_text()
    assert "import actors" not in source and "from actors" not in source and "machine_agent" not in source
