"""The import contracts (issue 11, item 1): setup.cfg's [importlinter] sections, run by
import-linter's ``lint-imports`` (``make test`` runs it before the suite, and so do these tests).

Each contract is also broken on purpose, in a copy of the packages with one import added, to
show that the check notices: a contract that cannot fail would prove nothing.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proto", "keys", "actors", "broker", "machine_agent", "scripts")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages of ``root``, not the installed ones
    return subprocess.run([LINT, "--no-cache", str(root / "setup.cfg")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 kept, 0 broken" in out.stdout, out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("proto/wire.py", "import zmq", "proto opens no sockets: no zmq"),
    ("keys/registry.py", "import actors.db", "Layers:"),
    ("actors/outbox.py", "import scripts.cli", "Layers:"),
    ("broker/broker.py", "import machine_agent.journal", "Layers:"),
    ("machine_agent/journal.py", "import peewee", "The agent (dctrl-agent) imports no database"),
    ("actors/business_mgr/queries.py", "import actors.runtime", "Readers of the data"),
    ("actors/server/pages.py", "import actors.reporter.actor", "The report server (dctrl serve)"),
    ("actors/server/api.py", "import zmq", "The report server (dctrl serve)"),
], ids=["proto-zmq", "keys-actors", "actors-scripts", "broker-agent", "agent-peewee", "queries-runtime",
        "server-actor", "server-zmq"])
def test_a_contract_broken_on_purpose_fails(tmp_path, module, line, contract):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # broken on purpose\n")
    out = lint(tmp_path)
    assert out.returncode != 0, out.stdout
    # (one import can break more than one contract: keys importing actors.db also brings
    # peewee into the agent's graph)
    assert verdict(out.stdout, contract) == "BROKEN", out.stdout


def verdict(report: str, contract: str) -> str:
    """KEPT or BROKEN: the word that follows the contract's name in the summary."""
    words = " ".join(report.split())  # import-linter wraps long names over lines
    after = words[words.index(contract) + len(contract):]
    return min(("KEPT", "BROKEN"), key=lambda w: after.find(w) if w in after else len(after))
