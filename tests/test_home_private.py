"""Issue 10 (weakness): a home is private to its user.

The database, config, policy, registry, keys, the demo machine's agent.toml, the event log and
every log are readable by their user only (files 0600, directories 0700), as made by the real
`dctrl init`, written by real actor processes and by the CLI later; and `dctrl agent-config
--out DIR` writes DIR and its files private too.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from types import SimpleNamespace

from keys.home import Home
from tests.harness import ROOT, Network, dctrl, free_port


def readable_by_others(root) -> list[str]:
    """Every path under ``root`` (itself included) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return sorted(found)


def cli_home(path) -> Home:
    """A home made by the real `dctrl init`, on free ports (the simulators' too), heartbeats
    every second; editing config.toml in place keeps its mode."""
    dctrl(SimpleNamespace(root=path), "init", "--publish-endpoint", f"tcp://127.0.0.1:{free_port()}",
          "--subscribe-endpoint", f"tcp://127.0.0.1:{free_port()}")
    text = (path / "config.toml").read_text()
    for default in ("7480", "18443", "28332"):  # [demo] exchanges, chain RPC and ZMQ ports
        assert default in text
        text = text.replace(default, str(free_port()))
    assert text.count("smtp_port = 2525") == 2  # [demo] (the SMTP sink) and [member_mail], one port
    text = text.replace("smtp_port = 2525", f"smtp_port = {free_port()}")
    with open(path / "config.toml", "w") as f:
        f.write(text + "\n[runtime]\nheartbeat_interval = 1\n")
    return Home(path)


def test_a_home_and_what_its_processes_write_stay_private(tmp_path):
    home = cli_home(tmp_path / "home")
    root = home.root
    bad = readable_by_others(root)
    assert not bad, f"after dctrl init, readable by others: {', '.join(bad)}"
    names = ("broker", "vault", "event_logger")
    for name in names:  # the harness's own log files (the test process's umask is not dctrl's)
        os.close(os.open(home.log_dir / f"{name}.test.log", os.O_WRONLY | os.O_CREAT, 0o600))
    net = Network(home).start_healthy(*names)
    try:
        dctrl(home, "keys", "add", "vm2", "--role", "machine")  # rewrites the registry
        assert (root / "events").exists() and any((root / "events").iterdir()), "the event log wrote nothing"
        bad = readable_by_others(root)
        assert not bad, f"after the actors ran and the registry was rewritten: {', '.join(bad)}"
    finally:
        net.close()
    bad = readable_by_others(root)
    assert not bad, f"after the actors stopped: {', '.join(bad)}"


def test_agent_config_out_writes_a_private_folder(tmp_path):
    home = cli_home(tmp_path / "home")
    out = tmp_path / "machines" / "vm1"
    dctrl(home, "agent-config", "vm1", "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["agent.toml", "dctrl-agent.service", "vm1.key"]
    bad = readable_by_others(out)
    assert not bad, f"readable by others: {', '.join(bad)}"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out / "agent.toml").st_mode) == 0o600


def test_dctrl_up_its_logs_and_the_machine_agent_stay_private(tmp_path):
    """Under `dctrl up`: supervisord's and every program's log, the simulators' files and the demo
    machine agent's state (dctrl-agent) are private too."""
    home = cli_home(tmp_path / "home")
    up = subprocess.Popen([sys.executable, "-m", "scripts.cli", "up", "--home", str(home.root)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    try:
        out = dctrl(home, "status", "--until", "60", check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        logs = {p.name for p in home.log_dir.iterdir()}
        assert {"supervisord.log", "broker.log", "agent_vm1.log"} <= logs, logs
        assert any((home.root / "agents" / "vm1" / "state").iterdir()), "the agent wrote no state"
        bad = readable_by_others(home.root)
        assert not bad, f"under dctrl up, readable by others: {', '.join(bad)}"
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    bad = readable_by_others(home.root)
    assert not bad, f"after dctrl up stopped, readable by others: {', '.join(bad)}"
