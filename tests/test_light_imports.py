"""Readers of the data import no bus (issue 11, item 3).

The models and read queries of each component live apart from its actor, so a
reader (the CLI, the coming report server) can load them without zmq, the
runtime, the scheduler or embit. Each check runs in a fresh interpreter: the
test process itself has loaded everything long ago.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("zmq", "schedule", "embit", "actors.runtime")

LIGHT = [
    "actors.business_mgr",
    "actors.business_mgr.models",
    "actors.business_mgr.queries",
    "actors.business_data",
    "actors.business_data.models",
    "actors.business_data.queries",
    "actors.chain_notifier",
    "actors.chain_notifier.models",
    "actors.chain_notifier.queries",
    "actors.member_data",
    "actors.member_data.models",
    "actors.member_data.queries",
    "actors.payout_mgr",
    "actors.payout_mgr.models",
    "actors.payout_mgr.queries",
    "actors.event_logger",
    "actors.event_logger.queries",
    "actors.eventlog",
]


def _loaded_after(module: str) -> set[str]:
    code = (f"import sys, {module}\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", LIGHT)
def test_models_and_queries_load_no_bus(module):
    loaded = _loaded_after(module)
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"import {module} loads {heavy}"


def test_the_check_sees_a_heavy_import():
    """The actor modules do load the bus: the check above would notice a regression."""
    loaded = _loaded_after("actors.business_mgr.actor")
    assert "zmq" in loaded and "actors.runtime" in loaded and "embit" in loaded


@pytest.mark.parametrize("module", ["proto.authproxy", "proto.sealed", "proto.errors", "proto.version"])
def test_proto_imports_no_keys_and_no_zmq(module):
    """proto is the lowest layer: nothing above it (keys), no sockets (issue 11, item 2)."""
    loaded = _loaded_after(module)
    above = sorted(m for m in loaded if m.split(".")[0] in ("keys", "actors", "broker", "machine_agent", "scripts", "zmq"))
    assert above == [], f"import {module} loads {above}"


@pytest.mark.parametrize("module", ["keys.bus", "machine_agent.config"])
def test_the_bus_settings_need_no_home(module):
    """An agent's bus settings come from keys/bus.py: no home, no provisioning, no zmq."""
    loaded = _loaded_after(module)
    assert "keys.home" not in loaded and "zmq" not in loaded and "actors" not in loaded


def test_chain_queries_read_plain_data(tmp_path):
    """The chain's read queries on a database ChainNotifier's tables live in."""
    from actors.chain_notifier import queries
    from actors.chain_notifier.models import TABLES, ChainCursor, ChainOutput, ChainWatched
    from actors.db import connect

    database = connect(f"sqlite:///{tmp_path / 'chain.sqlite3'}")
    try:
        assert queries.cursor(database) is None
        with database.bind_ctx(TABLES):
            database.create_tables(TABLES)
            assert queries.cursor(database) is None and queries.watched(database) == [] == queries.outputs(database)
            ChainCursor.create(id=1, height=7, hash="ab" * 32)
            ChainWatched.create(script="0014" + "00" * 20, address="bcrt1qa", label="inv 1", created=10)
            for vout, state in enumerate(("mempool", "confirmed")):
                ChainOutput.create(txid="cd" * 32, vout=vout, script="0014" + "00" * 20, address="bcrt1qa",
                                   sats=1000 + vout, state=state, seen_at=11)
        assert queries.cursor(database) == {"height": 7, "hash": "ab" * 32}
        assert queries.watched(database) == [{"address": "bcrt1qa", "label": "inv 1", "created": 10}]
        assert [o["vout"] for o in queries.outputs(database)] == [1, 0]
        assert [o["sats"] for o in queries.outputs(database, state="mempool")] == [1000]
        assert queries.outputs(database, address="bcrt1qother") == []
    finally:
        database.close()
