"""The secure bus end to end: real broker, Vault and EventLogger processes, real keys."""

import json
import os

import pytest

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


def test_call_later_runs_on_the_loop_thread_in_due_order(home):
    """Runtime.call_later: each call runs once, in the loop thread, no earlier than asked,
    in order of due time (ties in order of asking)."""
    import threading
    import time

    from tests.harness import BusClient, wait_for

    client = BusClient(home, "admin", wait_token=False)  # the loop runs with or without a broker
    ran = []
    asked = {}

    def note(name):
        ran.append((name, time.monotonic() - asked[name], threading.get_ident()))

    def schedule():
        for name, delay in (("late", 0.15), ("soon", 0.02), ("tie1", 0.05), ("tie2", 0.05)):
            asked[name] = time.monotonic()
            client.runtime.call_later(delay, note, name)
    client.runtime.call_soon(schedule)
    wait_for(lambda: len(ran) == 4, what="four delayed calls")
    try:
        assert [name for name, _, _ in ran] == ["soon", "tie1", "tie2", "late"]
        assert all(waited >= delay for (_, waited, _), delay in zip(ran, (0.02, 0.05, 0.05, 0.15)))
        assert {ident for _, _, ident in ran} == {client.thread.ident}
    finally:
        client.runtime.stop()
        client.thread.join(10)


def test_a_stopped_loop_ignores_wakeups_and_never_writes_to_a_reused_fd(home):
    """After the loop has shut down, stop(), call_soon() and publish() from other threads are
    no-ops: its wake pipe is closed, and the fd number may already belong to another file."""
    from tests.harness import BusClient

    client = BusClient(home, "admin", wait_token=False)
    old_w = client.runtime._wake_w
    client.close()
    with pytest.raises(OSError):
        os.fstat(old_w)  # closed with the loop
    r, w = os.pipe()
    os.dup2(w, old_w)  # another file now holds the loop's old number
    try:
        os.set_blocking(r, False)
        client.runtime.stop()
        client.runtime.call_soon(print, "never")
        client.runtime.publish("debug.after", {"n": 1})
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing was written into it
    finally:
        for fd in {r, w, old_w}:  # (the new pipe may have got the old number itself)
            os.close(fd)
