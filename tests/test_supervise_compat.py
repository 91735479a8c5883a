"""supervisord configs written before scripts/ was split (issue 11) keep working: their programs
run ``python -m scripts.supervise child -- python -m scripts.cli run NAME``, and the new
template runs ``scripts.cli.supervise``. Both start a child under a real supervisord."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keys.procinfo import cmdline, describe_command
from scripts.cli.supervise import supervisor_config
from tests.harness import ROOT, wait_for

# [program:NAME] as the template of scripts/supervise.py wrote it before the split (commit 290f890).
OLD_PROGRAM = """\
[program:{name}]
command={python} -m scripts.supervise child -- {python} -m scripts.cli run {name} --home {home}
directory={cwd}
environment=PYTHONUNBUFFERED="1"
priority=10
autostart=true
autorestart=unexpected
exitcodes=78
startsecs=2
startretries=5
stopsignal=TERM
stopwaitsecs=10
stopasgroup=true
killasgroup=true
umask=077
redirect_stderr=true
stdout_logfile={log}/{name}.log
stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
"""


def _config_head(home) -> str:
    return "".join([
        "[supervisord]\n",
        f"logfile={home.log_dir}/supervisord.log\n",
        f"pidfile={home.run_dir}/supervisord.pid\n",
        "nodaemon=true\n",
        "umask=077\n",
        "\n[unix_http_server]\n",
        f"file={home.run_dir}/supervisor.sock\n",
        "chmod=0700\n",
        "\n[rpcinterface:supervisor]\n",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        "\n[supervisorctl]\n",
        f"serverurl=unix://{home.run_dir}/supervisor.sock\n\n",
    ])


def _broker_runs_under(home, conf_text) -> list[str]:
    """Run supervisord on ``conf_text`` until its broker is RUNNING; the broker's command line."""
    conf = home.root / "supervisord-test.conf"
    conf.write_text(conf_text)
    supervisord = os.path.join(os.path.dirname(sys.executable), "supervisord")
    sup = subprocess.Popen([supervisord, "-n", "-c", str(conf)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sup_log = home.log_dir / "supervisord.log"
        wait_for(lambda: sup_log.exists() and "success: broker entered RUNNING state" in sup_log.read_text(),
                 timeout=60, what="supervisord to run the broker")
        pid_file = home.run_dir / "broker.pid"  # written once `dctrl run broker` holds its run lock
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60, what="the broker's pid")
        return cmdline(int(pid_file.read_text().split()[0]))
    finally:
        sup.terminate()
        sup.wait(30)


@pytest.mark.parametrize("template", ["old", "new"])
def test_a_supervisord_config_starts_the_broker(home, template):
    if template == "old":
        text = _config_head(home) + OLD_PROGRAM.format(name="broker", python=sys.executable, cwd=ROOT,
                                                       home=home.root, log=home.log_dir)
    else:
        home.config["demo"]["simulators"] = False  # the broker alone
        text = supervisor_config(home, actors=("broker",))
        assert "-m scripts.cli.supervise child -- " in text
    args = _broker_runs_under(home, text)
    # The child exec'd `dctrl run broker` (the supervise step is gone from the process).
    assert args[1:3] == ["-m", "scripts.cli"] and args[3:5] == ["run", "broker"], args
    assert describe_command(args) == f"dctrl run broker --home {home.root}"


def test_the_old_child_entry_point_refuses_a_bad_command_line():
    proc = subprocess.run([sys.executable, "-m", "scripts.supervise", "child"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "usage: python -m scripts.cli.supervise child -- COMMAND" in proc.stderr


def test_the_broker_names_a_ports_holder_without_importing_scripts():
    """The broker sits below scripts/: it takes port_holder from keys/procinfo.py."""
    code = ("import sys, broker.broker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scripts'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "import scripts" not in (ROOT / "broker" / "broker.py").read_text()
    assert "from scripts" not in (ROOT / "broker" / "broker.py").read_text()
