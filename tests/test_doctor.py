"""`dctrl doctor` (scripts/cli/doctor.py) and the agent's systemd unit (`dctrl agent-config --systemd`).

The doctor runs as the real CLI against real homes: a key file others can read, a database
missing a table or a column, a running broker and Vault and the broker stopped."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keys.home import Home
from scripts.cli import doctor
from tests.harness import ROOT, Network, dctrl, home_on, new_home


def run_doctor(home, *args):
    """(exit code, {check name: check}) of `dctrl doctor --json`."""
    proc = dctrl(home, "doctor", "--json", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    # exit 1 exactly when a check FAILed, and "ok" says the same
    failed = any(c["status"] == "FAIL" for c in checks.values())
    assert proc.returncode == (1 if failed else 0) and report["ok"] is not failed
    return proc.returncode, checks


def lines(home, *args) -> dict:
    """The text lines of `dctrl doctor`, by check name."""
    proc = dctrl(home, "doctor", *args, check=False)
    out = {}
    for line in proc.stdout.splitlines():
        status, name = line[:4].strip(), line[6:18].strip()
        out[name] = (status, line)
    return out


@pytest.fixture
def home(tmp_path):
    return new_home(tmp_path / "home")


def test_a_key_file_others_can_read_fails_naming_it_and_the_fix(home):
    key = home.key_file("admin")
    _, checks = run_doctor(home, "--offline")
    if checks["file modes"]["status"] == "warn":  # made by this process, umask 022 (dctrl's is 077)
        subprocess.run(checks["file modes"]["fix"], shell=True, check=True)  # the fix it gives
        _, checks = run_doctor(home, "--offline")
    assert checks["file modes"]["status"] == "ok", checks["file modes"]

    os.chmod(key, 0o644)
    os.chmod(home.root, 0o755)
    code, checks = run_doctor(home, "--offline")
    files = checks["file modes"]
    assert files["status"] == "FAIL" and code == 1
    assert str(key) in files["summary"] and f"chmod 600 {key}" in files["fix"]
    assert f"chmod 700 {home.root}" in files["fix"]
    text = lines(home, "--offline")["file modes"]
    assert text[0] == "FAIL" and str(key) in text[1] and f"fix: chmod 700 {home.root} && chmod 600 {key}" in text[1]

    os.chmod(key, 0o600)
    os.chmod(home.root, 0o700)
    _, checks = run_doctor(home, "--offline")
    assert checks["file modes"]["status"] == "ok", checks["file modes"]


def test_a_log_others_can_read_is_a_warning(home):
    log = home.log_dir / "broker.log"
    log.write_text("x\n")
    os.chmod(log, 0o644)
    check = doctor.check_files(home)
    assert check.status == "warn" and str(log) in check.summary and check.fix == f"chmod -R go-rwx {home.root}"


def _make_schema(home):
    """Every table the actors make, as doctor.expected_schema says they do."""
    from actors.db import connect

    database = connect(home.database_url)
    models = [model for _, model, _ in doctor.expected_schema(database)]
    with database.bind_ctx(models):  # (the models' own database proxies are left as they are)
        database.create_tables(models)
    return database


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_database_missing_a_table_or_a_column_fails(database, tmp_path):
    with home_on(database, tmp_path / "home", prefix="doctor") as home:
        _database_missing_a_table_or_a_column_fails(home)


def _database_missing_a_table_or_a_column_fails(home):
    _, checks = run_doctor(home, "--offline")
    assert checks["database"]["status"] == "warn" and "no tables yet" in checks["database"]["summary"]

    database = _make_schema(home)
    _, checks = run_doctor(home, "--offline")
    assert checks["database"]["status"] == "ok", checks["database"]
    kind = "PostgreSQL" if home.database_url.startswith("postgres") else "SQLite"
    assert checks["database"]["summary"].startswith(kind), checks["database"]

    database.execute_sql('DROP TABLE "sales_outbox"')
    database.execute_sql('DROP INDEX "business_slot_sticker_address"')
    database.execute_sql('ALTER TABLE "business_slot" DROP COLUMN "sticker_address"')  # added at start
    database.execute_sql('ALTER TABLE "member_fact" DROP COLUMN "kind"')                 # added by no version
    database.close()
    code, checks = run_doctor(home, "--offline")
    db = checks["database"]
    assert db["status"] == "FAIL" and code == 1
    assert "table sales_outbox missing" in db["summary"]
    assert "business_slot lacks column sticker_address" in db["summary"]
    assert "member_fact lacks column kind" in db["summary"]
    assert "start business_data, business_mgr" in db["fix"] and "member_fact: columns no version adds" in db["fix"]


def test_the_schema_covers_every_table_an_actor_makes_from_a_factory():
    """Outboxes and address books are made by a model factory in an actor's setup, not listed in
    a models module: each one named in the actors' code is in doctor.expected_schema."""
    from actors.db import connect

    made = set()
    for path in (ROOT / "actors").rglob("*.py"):
        made |= set(re.findall(r'(?:Outbox\.model_for|AddressBook\.model)\(self\.database, "(\w+)"\)', path.read_text()))
    assert len(made) >= 6, made  # the search itself works
    database = connect("sqlite:///:memory:")
    expected = {model._meta.table_name for _, model, _ in doctor.expected_schema(database)}
    assert made <= expected, made - expected


def test_the_broker_reachable_and_stopped(home):
    net = Network(home).start_healthy("broker", "vault")
    try:
        code, checks = run_doctor(home, "--wait", "2.5")
        broker = checks["broker"]
        assert broker["status"] == "ok", broker
        assert home.config["bus"]["publish_endpoint"] in broker["summary"]
        assert home.config["bus"]["subscribe_endpoint"] in broker["summary"]
        tokens = checks["tokens"]
        assert tokens["status"] == "ok", tokens
        assert {d["name"] for d in tokens["details"]} >= {"broker", "vault"}
        assert checks["keys"]["status"] == "ok", checks["keys"]

        # A machine's key rotated while its agent is away: a warning naming it, until its grace ends.
        dctrl(home, "keys", "rotate", "vm1", "--grace", "7200")
        _, checks = run_doctor(home, "--wait", "2.5")
        assert checks["keys"]["status"] == "warn" and "vm1 key v1 ends in" in checks["keys"]["summary"]
        assert "not heard on the bus" in checks["keys"]["summary"]

        net.signal("broker")
        code, checks = run_doctor(home, "--timeout", "2")
        broker = checks["broker"]
        assert broker["status"] == "FAIL" and code == 1, broker
        assert "no handshake within 2 s" in broker["summary"] and "dctrl up" in broker["fix"]
        assert checks["tokens"]["status"] == "warn"
    finally:
        net.close()


def test_a_key_the_broker_does_not_admit_fails(home):
    """The handshake is a real CURVE + ZAP one: a revoked admin key is refused."""
    net = Network(home).start_healthy("broker", "vault")
    try:
        dctrl(home, "keys", "add", "ops", "--role", "admin")
        dctrl(home, "keys", "revoke", "ops")
        check = doctor.check_broker(Home(home.root), "ops", timeout=10)
        assert check.status == "FAIL" and "refused ops's key" in check.summary, check
    finally:
        net.close()


def test_simulators_are_said_and_fail_on_mainnet(home):
    check = doctor.check_simulators(home)
    assert check.status == "warn" and "[demo] simulators = true" in check.summary
    assert "[price.sources] bitstamp, coinbase, coingecko, fx, kraken are the exchange simulator" in check.summary
    text = (home.root / "config.toml").read_text().replace('network = "regtest"', 'network = "mainnet"')
    (home.root / "config.toml").write_text(text)
    check = doctor.check_simulators(Home(home.root))
    assert check.status == "FAIL" and "on mainnet" in check.summary


def test_a_clock_nothing_can_judge_is_a_warning(monkeypatch):
    import machine_agent.clock

    monkeypatch.setattr(shutil, "which", lambda name: None)

    def no_adjtimex():
        raise OSError("no adjtimex here")
    monkeypatch.setattr(machine_agent.clock, "read_timex", no_adjtimex)
    monkeypatch.setattr(doctor, "TIMESYNC_FLAG", "/nonexistent/synchronized")
    check = doctor.check_clock()
    assert check.status == "warn" and check.summary.startswith("unknown")
    monkeypatch.setattr(machine_agent.clock, "read_timex", lambda: (machine_agent.clock.TIME_ERROR, None))
    check = doctor.check_clock()
    assert check.status == "FAIL" and "not synchronised" in check.summary and "timedatectl set-ntp" in check.fix
    monkeypatch.setattr(machine_agent.clock, "read_timex", lambda: (machine_agent.clock.TIME_OK, None))
    assert doctor.check_clock().status == "ok"


def _unit(text) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # (Environment= twice)
    parser.optionxform = str
    parser.read_string(text)
    return parser


def test_agent_config_systemd_unit(home, tmp_path):
    install = tmp_path / "opt" / "dctrl-agent"
    text = dctrl(home, "agent-config", "vm1", "--systemd", "--install-dir", str(install)).stdout
    unit = _unit(text)
    service = unit["Service"]
    assert service["User"] == "dctrl" and "gpio" in service["SupplementaryGroups"].split()
    assert service["Restart"] == "always" and int(service["RestartSec"]) > 0
    for target in ("network-online.target", "time-sync.target"):
        assert target in unit["Unit"]["After"].split() and target in unit["Unit"]["Wants"].split()
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["ExecStart"] == f"{install}/venv/bin/dctrl-agent --config {install}/agent.toml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    # The folder `--out` writes, copied to the install dir: the agent's own loader puts its state
    # where the unit lets it write, and nowhere else.
    out = tmp_path / "vm1"
    dctrl(home, "agent-config", "vm1", "--out", str(out), "--install-dir", str(install))
    assert (out / "dctrl-agent.service").read_text() == text
    shutil.copytree(out, install)
    from machine_agent.config import load_machine

    assert str(load_machine(install / "agent.toml").state_dir) == service["ReadWritePaths"]

    refused = dctrl(home, "agent-config", "admin", "--systemd", check=False)
    assert refused.returncode == 2 and "not a machine identity" in refused.stderr
    refused = dctrl(home, "agent-config", "vm1", "--systemd", "--install-dir", "opt/x", check=False)
    assert refused.returncode == 2 and "absolute path" in refused.stderr


def test_agent_config_systemd_unit_verifies():
    """`systemd-analyze verify` accepts the unit without a warning (it needs ExecStart to exist)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed here; the unit's keys are checked by "
                    "test_agent_config_systemd_unit")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        install = Path(tmp) / "dctrl-agent"
        (install / "venv" / "bin").mkdir(parents=True)
        agent = install / "venv" / "bin" / "dctrl-agent"
        agent.write_text("#!/bin/sh\n")
        agent.chmod(0o755)
        from machine_agent.config import systemd_unit

        path = Path(tmp) / "dctrl-agent.service"
        path.write_text(systemd_unit("vm1", install_dir=str(install)))
        proc = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
        # the positive control: a key systemd does not know is a warning there
        path.write_text(systemd_unit("vm1", install_dir=str(install)).replace("NoNewPrivileges", "NoNewPrivilegez"))
        proc = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert "NoNewPrivilegez" in proc.stderr


def test_supervisor_config_for_a_system_supervisord(home, tmp_path):
    """`--programs-only --user` in a host's conf.d: the host keeps its own log, pid file and socket
    (a [supervisord] section there would replace them), and runs every program as the user."""
    import pwd

    from supervisor.options import ServerOptions

    user = pwd.getpwuid(os.getuid()).pw_name  # (supervisord checks that the user exists)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    host = tmp_path / "supervisord.conf"
    host.write_text(f"[unix_http_server]\nfile={tmp_path}/host.sock\n\n[supervisord]\nlogfile={tmp_path}/host.log\n"
                    f"pidfile={tmp_path}/host.pid\n\n[include]\nfiles = {conf_d}/*.conf\n")

    def load(*args):
        (conf_d / "dctrl.conf").write_text(dctrl(home, "supervisor-config", *args).stdout)
        options = ServerOptions()
        options.realize(args=["-c", str(host)])
        return options

    whole = load()  # the positive control: the full config takes the host's settings over
    assert whole.logfile == str(home.log_dir / "supervisord.log")
    options = load("--programs-only", "--user", user)
    assert options.logfile == str(tmp_path / "host.log") and options.pidfile == str(tmp_path / "host.pid")
    assert options.server_configs[0]["file"] == str(tmp_path / "host.sock")
    programs = {g.name: g.process_configs[0] for g in options.process_group_configs}
    assert set(programs) >= {"broker", "vault", "event_logger", "business_mgr"}
    assert all(p.uid == os.getuid() and p.umask == 0o077 for p in programs.values())


def test_every_command_in_the_deployment_guide_exists():
    """Each `dctrl ...` of docs/deployment.md names a command (and action) this dctrl has, with
    options it takes."""
    import argparse

    from scripts.cli import build_parser

    text = (ROOT / "docs" / "deployment.md").read_text()
    commands = re.findall(r"`(dctrl [^`]+)`", text)
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        commands += [line.split("|")[0] for line in block.splitlines() if line.startswith("dctrl ")]
    assert len(commands) >= 25, commands

    def subparsers(parser):
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)

    checked = 0
    for cmd in commands:
        words = cmd.split()[1:]
        parser, choices = None, subparsers(build_parser())
        while choices is not None and words and not words[0].startswith(("-", "[")):
            assert words[0] in choices, f"{cmd!r}: no command {words[0]!r}"
            parser, choices = choices[words[0]], subparsers(choices[words[0]])
            words = words[1:]
        assert parser is not None and choices is None, f"{cmd!r}: not a whole command"
        for word in words:
            option = word.strip("[]()").split("=")[0]
            if option.startswith("--"):
                assert option in parser._option_string_actions, f"{cmd!r}: no option {option}"
        checked += 1
    assert checked >= 25


def test_report_server_tokens_about_to_end_are_a_warning(home):
    assert doctor.check_server_tokens(home).status == "ok"
    dctrl(home, "server", "token", "add", "grafana", "--scope", "events", "--ttl", "90d")
    check = doctor.check_server_tokens(home)
    assert check.status == "ok" and "1 valid" in check.summary
    dctrl(home, "server", "token", "add", "treasurer", "--scope", "finance", "--ttl", "2d")
    check = doctor.check_server_tokens(home)
    assert check.status == "warn" and "1 of 2 end within 7 days: treasurer in 4" in check.summary, check
    assert "dctrl server token add" in check.fix
    dctrl(home, "server", "token", "revoke", "treasurer")
    assert doctor.check_server_tokens(home).status == "ok"
    assert lines(home, "--offline")["api tokens"][0] == "ok"
