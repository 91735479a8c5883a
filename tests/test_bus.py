"""The secure bus end to end: real broker, Vault and EventLogger processes, real keys."""

import json

from tests.harness import dctrl, topic_is


def test_status_lists_every_server_actor_healthy(home, network):
    out = dctrl(home, "status", "--json", "--until", "20", "--expect", "broker,vault,event_logger")
    report = json.loads(out.stdout)
    assert report["missing"] == []
    for name in ("broker", "vault", "event_logger"):
        assert report["actors"][name]["status"] == "ok"
        assert report["actors"][name]["token_exp"] > 0


def test_pub_and_sub_tools(home, network, clients):
    import subprocess
    import sys

    from tests.harness import ROOT

    sub = subprocess.Popen([sys.executable, "-m", "scripts.cli", "sub", "debug", "--as", "admin", "--count", "1",
                            "--timeout", "30", "--json", "--home", str(home.root)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until the subscriber is on the bus (its heartbeat is visible), then publish.
    watcher = clients(home, "admin", prefixes=["health.admin"])
    watcher.expect(lambda d: d.message and d.message.body["pid"] == sub.pid, timeout=20, what="the sub tool's heartbeat")
    dctrl(home, "pub", "debug.hello", '{"n": 7}', "--as", "admin")
    out, err = sub.communicate(timeout=30)
    assert sub.returncode == 0, err
    rec = json.loads(out.splitlines()[0])
    assert (rec["topic"], rec["sender"], rec["verdict"], rec["body"]) == ("debug.hello", "admin", "accepted", {"n": 7})


def test_message_reaches_subscriber_verified(home, network, clients):
    rx = clients(home, "admin", prefixes=["debug"])
    tx = clients(home, "admin")
    tx.publish("debug.ping", {"k": "v"})
    d = rx.expect(topic_is("debug.ping", k="v"))
    assert d.error is None and d.message.sender == "admin"
