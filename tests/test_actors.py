"""EventLogger, the runtime's isolation and shutdown, and `dctrl up` under supervisord."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

from actors.runtime import Actor, Runtime, on
from tests.harness import ROOT, dctrl, topic_is, wait_for


def _events(home, *args):
    return [json.loads(line) for line in dctrl(home, "events", "query", "--json", *args).stdout.splitlines()]


def test_event_logger_records_everything_with_verdicts(home, network, clients):
    tx = clients(home, "admin")
    tx.publish("debug.logged", {"n": 42})
    # A forgery the broker cannot tell (well formed, from the connection's own identity, signed
    # with another key: the broker drops bytes that cannot be an envelope at all).
    import nacl.signing

    from proto import wire
    proxy = tx.runtime.proxy
    proxy.seq += 1000
    tx.send_raw(wire.seal(nacl.signing.SigningKey.generate(), "debug.garbage",
                          wire.pack_payload("admin", proxy.boot, proxy.seq, proxy.token.raw, {"n": 1})))
    rows = wait_for(lambda: [r for r in _events(home, "--topic", "debug") if r["topic"].startswith("debug.")]
                    if len(_events(home, "--topic", "debug")) >= 2 else None, what="both debug events in the log")
    good = next(r for r in rows if r["topic"] == "debug.logged")
    bad = next(r for r in rows if r["topic"] == "debug.garbage")
    assert (good["verdict"], good["sender"], good["body"]) == ("accepted", "admin", {"n": 42})
    assert (bad["verdict"], bad["code"]) == ("rejected", "bad_signature")
    # --since and --sender filter; the plain format prints one line per event.
    assert _events(home, "--topic", "debug", "--since", "1d", "--sender", "nobody") == []
    plain = dctrl(home, "events", "query", "--topic", "debug.logged").stdout
    assert "accepted" in plain and '{"n": 42}' in plain


def test_events_tail_follows_new_events(home, network, clients):
    tail = subprocess.Popen([sys.executable, "-m", "scripts.cli", "events", "tail", "--topic", "debug.tail", "--json",
                             "--home", str(home.root)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tx = clients(home, "admin")
        lines = []
        reader = threading.Thread(target=lambda: lines.append(tail.stdout.readline()), daemon=True)
        reader.start()
        # tail starts at "now": publish until one line arrives (the first may precede its start).
        n = 0
        while reader.is_alive():
            n += 1
            tx.publish("debug.tail", {"n": n})
            reader.join(0.5)
            assert n < 40, "events tail printed nothing"
        rec = json.loads(lines[0])
        assert rec["topic"] == "debug.tail" and rec["verdict"] == "accepted" and rec["body"]["n"] >= 1
    finally:
        tail.terminate()
        tail.wait(10)


def test_event_logger_survives_kill_9_and_keeps_every_synced_record(home, network, clients):
    tx = clients(home, "admin")
    for i in range(50):
        tx.publish("debug.before", {"i": i})
    wait_for(lambda: len(_events(home, "--topic", "debug.before")) == 50, what="50 events logged")
    # kill -9 mid-stream, then restart: the torn tail (if any) is cut, nothing synced is lost.
    network.signal("event_logger", signal.SIGKILL)
    network.start("event_logger")
    watch = clients(home, "admin", prefixes=["health.event_logger"])
    watch.expect(topic_is("health.event_logger", status="ok"))
    tx.publish("debug.after", {"i": 1})
    wait_for(lambda: _events(home, "--topic", "debug.after"), what="logging to resume after restart")
    assert [r["body"]["i"] for r in _events(home, "--topic", "debug.before")] == list(range(50))
    seqs = [r["log_seq"] for r in _events(home)]  # (the log's own record numbers; "seq" is the sender's)
    assert seqs == list(range(len(seqs)))


def test_event_logger_detects_sequence_gaps(home, network, clients):
    watch = clients(home, "admin", prefixes=["events.gap"])
    tx = clients(home, "admin")
    tx.publish("debug.gap", {"n": 1})
    tx.runtime.call_soon(lambda: setattr(tx.runtime.proxy, "seq", tx.runtime.proxy.seq + 5))  # 5 messages "lost"
    tx.publish("debug.gap", {"n": 2})
    d = watch.expect(lambda d: d.message and d.message.topic == "events.gap" and d.message.body["sender"] == "admin")
    assert d.message.body["missing"] == 5
    wait_for(lambda: _events(home, "--topic", "events.gap"), what="the gap event in the log")


class Fragile(Actor):
    """Raises on bad input, blocks on slow input; must keep serving."""

    def __init__(self):
        self.handled = []
        self.release = threading.Event()

    @on("debug.fragile.boom")
    def boom(self, msg):
        raise RuntimeError("handler bug")

    @on("debug.fragile.ok")
    def ok(self, msg):
        self.handled.append(msg.body["n"])

    @on("debug.fragile.slow", blocking=True)
    def slow(self, msg):
        self.release.wait(30)
        self.handled.append("slow")


def test_failing_and_blocking_handlers_do_not_stop_the_actor(home, network, clients):
    watch = clients(home, "admin", prefixes=["error.admin"])
    actor = Fragile()
    rt = Runtime(actor, home.bus_settings("admin"))
    t = threading.Thread(target=rt.run, daemon=True)
    t.start()
    try:
        wait_for(rt.proxy.token_valid, what="the fragile actor's token")
        tx = clients(home, "admin")
        tx.publish("debug.fragile.slow", {})
        tx.publish("debug.fragile.boom", {})
        tx.publish("debug.fragile.ok", {"n": 1})
        wait_for(lambda: actor.handled == [1], what="ok handled while slow still blocks")
        d = watch.expect(topic_is("error.admin", kind="handler", code="handler_error"))
        assert "handler bug" in d.message.body["reason"] and d.message.body["topic"] == "debug.fragile.boom"
        actor.release.set()
        wait_for(lambda: actor.handled == [1, "slow"], what="the slow handler to finish")
        assert rt.counters["handler_errors"] == 1
    finally:
        actor.release.set()
        rt.stop()
        t.join(10)
    assert not t.is_alive()


def test_sigterm_stops_actors_and_broker_cleanly(home, network):
    assert network.signal("vault", signal.SIGTERM) == 0
    assert network.signal("event_logger", signal.SIGTERM) == 0
    assert network.signal("broker", signal.SIGTERM) == 0
    assert "vault stopping" in network.log("vault") and "broker stopped" in network.log("broker")


def test_dctrl_up_runs_everything_under_supervisord(home, clients):
    conf = dctrl(home, "supervisor-config").stdout
    for program in ("broker", "vault", "event_logger", "price_notifier", "chain_notifier", "business_data",
                    "member_data", "member_mail", "reporter", "business_mgr", "payout_mgr", "sim_exchanges", "sim_chain",
                    "sim_smtp",
                    "agent_vm1"):
        assert f"[program:{program}]" in conf
    up = subprocess.Popen([sys.executable, "-m", "scripts.cli", "up", "--home", str(home.root)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    try:
        out = dctrl(home, "status", "--until", "30", check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        for name in ("broker", "vault", "event_logger", "price_notifier", "chain_notifier", "business_data",
                     "member_data", "member_mail", "reporter", "business_mgr", "payout_mgr", "vm1"):
            line = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
            assert " ok " in line
        price = dctrl(home, "price", "show", "--json", check=False)
        assert price.returncode == 0 and '"cad_per_btc"' in price.stdout, price.stdout + price.stderr
        # Business data through the real CLI, to the business_data actor and its database.
        dctrl(home, "machines", "add", "vm1", "--location", "front door")
        dctrl(home, "slots", "set", "vm1", "1", "--product", "Club-Mate", "--price-cad", "3.50", "--stock", "12")
        assert "Club-Mate" in dctrl(home, "slots", "list", "vm1").stdout
        # The README's demo: a press on the simulated machine, the payment it asks for, one vend.
        out = dctrl(home, "sim", "press", "vm1", "1").stdout
        assert "invoice 1: Club-Mate, 3.50 CAD = " in out
        address, amount = out.split("dctrl sim pay ")[1].split()
        dctrl(home, "sim", "pay", address, amount)
        wait_for(lambda: json.loads(dctrl(home, "invoices", "list", "--json").stdout)[0]["state"] == "vended",
                 timeout=30, what="invoice 1 vended")
        acks = dctrl(home, "events", "query", "--topic", "machine.vm1.vend.ack", "--json").stdout
        assert '"status": "vended"' in acks and '"pulsed_ms": 500' in acks
        # The README's member mail: a new member's welcome lands in the demo sink's Maildir.
        dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
        dctrl(home, "members", "add", "ada", "--name", "Ada Lovelace", "--email", "ada@example.org",
              "--plan", "regular")
        maildir = home.root / "sim" / "mail" / "new"
        (mailed,) = wait_for(lambda: list(maildir.glob("*")) if maildir.is_dir() else [], timeout=30,
                             what="the welcome in the demo's Maildir")
        assert "Subject: Welcome to DCTRL, Ada Lovelace" in mailed.read_text()
        assert json.loads(dctrl(home, "mail", "outbox", "--json").stdout)[0]["state"] == "sent"
        # The README's walk goes on: ada pays her dues address from the chain simulator, and the
        # receipt lands in the Maildir too (the same commands as the README's "Member mail").
        uri = wait_for(lambda: re.search(r"bitcoin:(\w+)\?amount=([0-9.]+)",
                                         dctrl(home, "members", "show", "ada").stdout), timeout=60,
                       what="ada's dues address with one month's amount at a fresh price")
        address, amount = uri.groups()
        txid = dctrl(home, "sim", "pay", address, amount).stdout.strip().split()[-1]
        dctrl(home, "sim", "mine", "1")

        from scripts.sim.smtp import messages

        def receipt():  # (the outbox key's header is folded: txid:vout is long)
            return [m for m in messages(maildir.parent)
                    if " ".join(str(m["X-Dctrl-Mail"]).split()).startswith(f"receipt ada {txid}:")]
        (mailed,) = wait_for(receipt, timeout=60, what="the dues receipt in the demo's Maildir")
        cents = json.loads(dctrl(home, "members", "show", "ada", "--json").stdout)["payments"][0]["cents"]
        assert cents >= 4000  # (the amount shown is rounded up to the satoshi)
        assert mailed["Subject"] == f"DCTRL: receipt for {cents // 100}.{cents % 100:02d} CAD"
        # (the README's `grep -h "^Subject:" var/sim/mail/new/*`)
        subjects = sorted(line for f in maildir.glob("*") for line in f.read_text().splitlines()
                          if line.startswith("Subject:"))
        assert subjects == [f"Subject: DCTRL: receipt for {cents // 100}.{cents % 100:02d} CAD",
                            "Subject: Welcome to DCTRL, Ada Lovelace"], subjects
        sent = dctrl(home, "mail", "outbox", "--state", "sent").stdout
        assert re.search(rf"receipt +ada +{txid[:20]}", sent), sent
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    # supervisord stopped its children too: nothing answers any more.
    out = dctrl(home, "status", "--wait", "2", check=False)
    assert out.returncode == 1 and "down" in out.stdout


def test_machine_agent_joins_the_bus_without_server_dependencies(home, network, clients, tmp_path):
    dctrl(home, "agent-config", "vm1", "--out", str(tmp_path / "vm1"))
    assert oct(os.stat(tmp_path / "vm1" / "vm1.key").st_mode & 0o777) == "0o600"
    watch = clients(home, "admin", prefixes=["health.vm1"])
    script = ("import sys, runpy; sys.argv = ['dctrl-agent', '--config', sys.argv[1]];"
              "import machine_agent.main as m; import threading, os, signal;"
              "t = threading.Timer(20, lambda: os.kill(os.getpid(), signal.SIGTERM)); t.daemon = True; t.start();"
              "rc = m.main(sys.argv[1:]);"
              "bad = [x for x in ('peewee', 'bottle', 'psycopg2') if x in sys.modules];"
              "print('SERVER-MODULES', bad); sys.exit(rc)")
    agent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "vm1" / "agent.toml")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        d = watch.expect(topic_is("health.vm1", role="machine", status="ok"), timeout=20)
        assert d.message.body["pid"] == agent.pid
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=15)
    assert agent.returncode == 0, out
    assert "SERVER-MODULES []" in out
    assert (tmp_path / "vm1" / "state" / "boot").read_text().strip() == "1"
