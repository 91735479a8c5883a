"""The `dctrl` command line as an operator meets it: every install, every listing, pipes, by hand.

The CLI runs as a real subprocess (``python -m scripts.cli``, what the ``dctrl`` entry point
calls); where a command needs the bus, a real broker, Vault and EventLogger run as processes.
Installs without an extra are stood in for by a ``sitecustomize`` whose import hook refuses
the extra's modules, exactly as a missing package does (``ModuleNotFoundError``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.cli import build_parser
from tests.harness import ROOT, BusClient, dctrl, topic_is, wait_for

SERVER_MODULES = ("embit", "peewee", "bottle", "psycopg2", "bitcoinrpc", "supervisor")
AGENT_MODULES = ("gpiozero", "smbus2")

BLOCKER = """\
import sys

BLOCKED = set({blocked!r})


class NotInstalled:
    '''An install without these packages: importing one fails as if it were absent.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def without(tmp_path, *modules) -> dict:
    """An environment for a subprocess in which ``modules`` are not installed."""
    site = tmp_path / ("site-without-" + "-".join(sorted(modules))[:40])
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=tuple(modules)))
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}


def run(*args, env=None, timeout=60, input=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env or {**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=timeout, input=input)


def command_paths(parser=None, path=()):
    """Every command and action: ("keys",), ("keys", "list"), ..."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield (*path, name)
                yield from command_paths(sp, (*path, name))


# -- every install: `pip install .`, `dctrl[agent]`, `dctrl[server]` ------------------------------

HELP_ALL = """\
import contextlib, io, sys
from scripts.cli import main
failed = []
for path in {paths!r}:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main([*path, "--help"])
    except SystemExit as exc:
        if exc.code == 0 and "usage: dctrl" in out.getvalue():
            continue
    except BaseException as exc:
        pass
    failed.append(" ".join(path))
print("FAILED", failed)
"""


@pytest.mark.parametrize("missing", [SERVER_MODULES + AGENT_MODULES, SERVER_MODULES],
                         ids=["no-extra", "agent-only"])
def test_help_of_every_command_works_on_every_install(tmp_path, missing):
    env = without(tmp_path, *missing)
    # Positive control: the hook really hides them (else this test could not fail).
    probe = subprocess.run([sys.executable, "-c", "import embit"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'embit'" in probe.stderr
    top = run("--help", env=env)
    assert top.returncode == 0 and "usage: dctrl" in top.stdout and "Traceback" not in top.stderr, top.stderr
    paths = sorted(command_paths())
    assert len(paths) > 40
    every = subprocess.run([sys.executable, "-c", HELP_ALL.format(paths=paths)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert "FAILED []" in every.stdout, every.stdout + every.stderr


@pytest.mark.parametrize("command", [
    ["db"], ["invoices", "list"], ["machines", "list"], ["run", "business_mgr"], ["sim", "chain"]])
def test_a_command_that_needs_the_server_install_says_so_in_one_line(home, tmp_path, command):
    done = run(*command, "--home", str(home.root), env=without(tmp_path, *SERVER_MODULES), timeout=30)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr  # one line
    assert "pip install 'dctrl[server]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"dctrl {' '.join(command[:2]) if command[0] != 'run' else 'run'}: ")


def test_init_without_the_server_install_says_so_and_writes_nothing(tmp_path):
    target = tmp_path / "newhome"
    done = run("init", "--home", str(target), env=without(tmp_path, *SERVER_MODULES))
    assert done.returncode != 0 and "pip install 'dctrl[server]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not target.exists()


def test_a_bug_that_is_a_missing_module_of_ours_still_has_its_traceback(home, tmp_path):
    """The one-line hint is for the extras' modules only: anything else missing is a bug to see."""
    done = run("db", "--home", str(home.root), env=without(tmp_path, "actors"))
    assert done.returncode != 0 and "Traceback" in done.stderr and "pip install" not in done.stderr


# -- conventions -----------------------------------------------------------------------------------

def test_home_is_accepted_before_and_after_the_command(home, tmp_path):
    p = build_parser()
    assert p.parse_args(["--home", "A", "keys", "list"]).home == "A"
    assert p.parse_args(["keys", "list", "--home", "B"]).home == "B"
    assert p.parse_args(["--home", "A", "status", "--home", "B"]).home == "B"  # the nearest wins
    assert p.parse_args(["--home", "A", "sim", "pay", "x", "1"]).home == "A"
    assert p.parse_args(["status"]).home is None  # then $DCTRL_HOME, else ./var
    before = run("--home", str(home.root), "keys", "list", "--json")
    after = run("keys", "list", "--json", "--home", str(home.root))
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert "admin" in {k["name"] for k in json.loads(before.stdout)}
    # and a home given before the command really is the one used
    nowhere = run("--home", str(tmp_path / "nowhere"), "keys", "list")
    assert nowhere.returncode != 0 and "nowhere" in nowhere.stderr


def test_every_command_action_and_argument_has_a_help_line():
    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                lines = {a.dest: a.help for a in action._choices_actions}
                for name, sp in action.choices.items():
                    if not lines.get(name):
                        missing.append(f"{' '.join(path + [name])} (no line in `{' '.join(path)} --help`)")
                    if not sp.description:
                        missing.append(f"{' '.join(path + [name])} --help (no description)")
                    walk(sp, path + [name])
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    walk(build_parser(), ["dctrl"])
    assert missing == []


LISTINGS = {("status",), ("keys", "list"), ("vault", "list"), ("machines", "list"), ("slots", "list"),
            ("policy", "show"), ("invoices", "list"), ("invoices", "show"), ("events", "query"), ("events", "tail"),
            ("chain", "status"), ("price", "show"), ("sim", "pins")}


def test_every_listing_takes_json():
    parser = build_parser()

    def options(path):
        p = parser
        for name in path:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        return {o for a in p._actions for o in a.option_strings}
    listings = {p for p in command_paths() if p[-1] in ("list", "show", "query", "tail", "status", "pins")}
    assert LISTINGS <= listings | {("status",)}, "a listing of this test is gone: update LISTINGS"
    assert [p for p in sorted(listings | LISTINGS) if "--json" not in options(p)] == []


def test_keys_list_and_vault_list_in_json(home):
    dctrl(home, "keys", "add", "vm2", "--role", "machine")
    dctrl(home, "keys", "rotate", "vm2", "--grace", "600")
    dctrl(home, "keys", "revoke", "vm1")
    rows = json.loads(dctrl(home, "keys", "list", "--json").stdout)
    by = {(r["name"], r["version"]): r for r in rows}
    assert by[("vm2", 2)]["state"] == "current" and by[("vm2", 1)]["state"] == "grace"
    assert by[("vm2", 1)]["not_after"] > time.time() + 500 and by[("vm1", 1)]["state"] == "revoked"
    assert by[("admin", 1)]["role"] == "admin" and len(by[("admin", 1)]["curve_public"]) == 40
    table = dctrl(home, "keys", "list").stdout
    assert re.search(r"vm2 +machine +1 grace, \d+ s left", table), table
    assert json.loads(dctrl(home, "vault", "list", "--json").stdout) == []
    dctrl(home, "vault", "set-secret", "smtp_password", input="hunter2hunter2")
    dctrl(home, "vault", "set-secret", "bitcoind_rpc_password", input="x" * 20)
    assert json.loads(dctrl(home, "vault", "list", "--json").stdout) == ["bitcoind_rpc_password", "smtp_password"]


def test_pub_refuses_bad_hex_and_wrong_sizes_before_joining_the_bus(home):
    """No network here: these are refused by the CLI itself, in one line."""
    body = {"id": "zz" * 16, "expires": 1, "name": "vm9", "location": None}
    bad = dctrl(home, "pub", "cmd.business.machine.add", json.dumps(body), "--as", "admin", check=False)
    assert bad.returncode == 2 and "body.id: bytes are given as hex" in bad.stderr, bad.stderr
    short = dctrl(home, "pub", "cmd.business.machine.add", json.dumps({**body, "id": "00ff"}), "--as", "admin",
                  check=False)
    assert short.returncode == 2 and "expected 16 bytes, got 2" in short.stderr, short.stderr


# -- on the bus ------------------------------------------------------------------------------------

def test_pub_sends_hex_strings_as_bytes_where_the_schema_has_bytes(home, network, clients):
    rx = clients(home, "admin", prefixes=["cmd.business.machine.add", "debug.hexed"])
    cmd_id = bytes(range(16))
    body = {"id": cmd_id.hex(), "expires": int(time.time()) + 60, "name": "vm9", "location": None}
    dctrl(home, "pub", "cmd.business.machine.add", json.dumps(body), "--as", "admin")
    d = rx.expect(topic_is("cmd.business.machine.add", name="vm9"), what="the hand-made command")
    assert d.message.body["id"] == cmd_id and d.message.body["location"] is None
    prefixed = {**body, "id": "hex:" + (b"\xff" * 16).hex(), "name": "vm8"}
    dctrl(home, "pub", "cmd.business.machine.add", json.dumps(prefixed), "--as", "admin")
    d = rx.expect(topic_is("cmd.business.machine.add", name="vm8"))
    assert d.message.body["id"] == b"\xff" * 16
    # free-form bodies: only "hex:" strings are bytes; a plain string stays a string
    dctrl(home, "pub", "debug.hexed", json.dumps({"blob": "hex:00ff", "text": "00ff", "deep": ["hex:ab"]}),
          "--as", "admin")
    d = rx.expect(topic_is("debug.hexed"))
    assert d.message.body == {"blob": b"\x00\xff", "text": "00ff", "deep": [b"\xab"]}


def _closed_pipe():
    """A pipe whose reader is already gone: the first write to it fails (EPIPE), as after `| head -1`."""
    r, w = os.pipe()
    os.close(r)
    return w


def _run_into_closed_pipe(home, *args, timeout=30):
    w = _closed_pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", *args, "--home", str(home.root)], cwd=ROOT,
                                stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_output_into_a_closed_pipe_ends_quietly(home, network, clients):
    wait_for(lambda: dctrl(home, "events", "query", "--limit", "1").stdout.strip(), what="a logged event")
    # Positive control: the same command into a live pipe prints.
    assert dctrl(home, "events", "query").stdout.count("\n") >= 1
    for args in (["events", "query"], ["events", "query", "--json"], ["events", "tail"], ["keys", "list"],
                 ["sub", "health", "--as", "admin", "--timeout", "20"]):
        t0 = time.monotonic()
        rc, err = _run_into_closed_pipe(home, *args)
        assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, (args, err)
        assert rc == 141, (args, rc, err)
        if args[0] in ("sub", "events") and args[1:2] != ["query"]:
            assert time.monotonic() - t0 < 15, f"{args} went on after its reader left"


def test_events_query_exclude_leaves_out_whole_topic_prefixes(home, network, clients):
    tx = clients(home, "admin")
    for n in range(3):
        tx.publish("debug.kept", {"n": n})
    tx.publish("debug.dropped", {"n": 9})
    wait_for(lambda: "debug.dropped" in dctrl(home, "events", "query", "--topic", "debug").stdout,
             what="the debug events logged")
    wait_for(lambda: '"health.' in dctrl(home, "events", "query", "--json").stdout, what="heartbeats logged")
    everything = [json.loads(ln) for ln in dctrl(home, "events", "query", "--json").stdout.splitlines()]
    topics = {r["topic"] for r in everything}
    assert any(t.startswith("health.") for t in topics) and "debug.kept" in topics  # positive control
    kept = [json.loads(ln) for ln in dctrl(home, "events", "query", "--json", "--exclude", "health.",
                                           "--exclude", "debug.dropped", "--exclude", "vault").stdout.splitlines()]
    left = {r["topic"] for r in kept}
    assert "debug.kept" in left and not any(t.startswith(("health.", "vault.")) or t == "debug.dropped"
                                            for t in left), left
    last = everything[-1]["log_seq"]  # (more are logged meanwhile: compare what both saw)
    assert [r["log_seq"] for r in kept if r["log_seq"] <= last] == [
        r["log_seq"] for r in everything
        if not r["topic"].startswith(("health.", "vault.")) and r["topic"] != "debug.dropped"]
    # whole segments: "debug.kep" is not a prefix of debug.kept
    partial = dctrl(home, "events", "query", "--topic", "debug", "--exclude", "debug.kep").stdout
    assert "debug.kept" in partial
    # --limit counts what is shown
    limited = dctrl(home, "events", "query", "--json", "--exclude", "health", "--limit", "2").stdout.splitlines()
    assert len(limited) == 2 and not any('"topic": "health.' in ln for ln in limited)
    refused = dctrl(home, "events", "query", "--exclude", "", check=False)
    assert refused.returncode == 2 and "--exclude needs a topic prefix" in refused.stderr


# -- the chain simulator's human lines ----------------------------------------------------------------

def test_sim_pay_and_mine_print_a_human_line_and_keep_stdout_for_scripts(tmp_path):
    from scripts.sim.chain import ChainSim

    with ChainSim(tmp_path / "chain") as sim:
        conn = ["--rpc-url", sim.rpc_url, "--cookie", str(sim.cookie_file)]
        address = run("sim", "address", *conn).stdout.strip()
        assert address.startswith("bcrt1")
        pay = run("sim", "pay", address, "0.0015", *conn)
        assert pay.returncode == 0, pay.stderr
        txid = pay.stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", txid), pay.stdout  # T=$(dctrl sim pay ...) still works
        assert pay.stderr.strip() == (f"paid 0.0015 BTC to {address}: transaction {txid} is in the mempool; "
                                      "confirm it with `dctrl sim mine 1`")
        height = sim.chain.height
        mine = run("sim", "mine", "2", *conn)
        assert mine.returncode == 0, mine.stderr
        hashes = mine.stdout.split()
        assert len(hashes) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
        assert mine.stderr.strip() == (f"mined 2 blocks, the tip is now at height {height + 2}; "
                                       "1 transaction from the mempool confirmed")
        one = run("sim", "mine", *conn)
        assert one.stderr.strip() == (f"mined 1 block, the tip is now at height {height + 3}; "
                                      "0 transactions from the mempool confirmed")


# -- invoices: what is owed back ---------------------------------------------------------------------

def _invoices(home, rows):
    """Invoices as BusinessMgr records them, written with its own models (it is not running here)."""
    from actors.business_mgr.models import TABLES, SalesInvoice
    from actors.db import connect

    database = connect(home.database_url)
    try:
        with database.bind_ctx(TABLES):
            database.create_tables(TABLES, safe=True)
            for n, (state, due, received, late, credit) in enumerate(rows, start=1):
                SalesInvoice.create(mode="invoice", machine="vm1", slot=1, product="Club-Mate", price_cents=350,
                                    due_sats=due, address=f"bcrt1qaddress{n:04d}", state=state, created=1_800_000_000 + n,
                                    expires=1_800_000_900 + n, received_sats=received, late_sats=late,
                                    credit_sats=credit, vended=1 if state in ("vended", "overpaid") else 0)
    finally:
        database.close()


def test_invoices_list_shows_and_filters_what_is_owed_back(home):
    _invoices(home, [
        ("vended", 2726, 2726, 0, 0),      # 1: exact: nothing owed
        ("expired", 2726, 1000, 0, 0),     # 2: paid too little, expired: all of it back
        ("vended", 2726, 2726, 500, 0),    # 3: sold, then a late payment
        ("overpaid", 2726, 3000, 0, 274),  # 4: paid too much: the excess
        ("open", 2726, 0, 0, 0),           # 5: nothing yet
    ])
    table = dctrl(home, "invoices", "list").stdout.splitlines()
    assert "OWED" in table[0].split()
    owed_column = {int(ln.split()[0]): ln.split()[5] for ln in table[1:]}
    assert owed_column == {1: "-", 2: "1000", 3: "500", 4: "274", 5: "-"}, table
    everything = json.loads(dctrl(home, "invoices", "list", "--json").stdout)
    assert {i["invoice"]: i["refund_sats"] for i in everything} == {1: 0, 2: 1000, 3: 500, 4: 274, 5: 0}
    owed = json.loads(dctrl(home, "invoices", "list", "--owed", "--json").stdout)
    assert [i["invoice"] for i in owed] == [4, 3, 2]
    text = dctrl(home, "invoices", "list", "--owed").stdout
    assert "owed back: 1774 sats on 3 invoice(s)" in text and not re.search(r"^ +[15] ", text, re.M), text
    assert [i["invoice"] for i in json.loads(
        dctrl(home, "invoices", "list", "--owed", "--state", "vended", "--json").stdout)] == [3]
    newest = dctrl(home, "invoices", "list", "--owed", "--limit", "2").stdout
    assert "owed back: 774 sats on 2 invoice(s) (the newest 2; --limit for more)" in newest, newest
    assert "no invoices with anything owed back in state open" in dctrl(
        home, "invoices", "list", "--owed", "--state", "open").stdout
