"""`dctrl bench vend`: from a paying transaction's notification to the relay pin going active.

Prints one JSON object. Everything real: a throwaway home; the broker, the
Vault, ChainNotifier, BusinessData and BusinessMgr as processes; the machine
agent ``dctrl-agent`` for vm1 as a process with mock pins; the chain
simulator (Core's RPC and ZMQ) in this process. Only the price is published
from here, as the ``price_notifier`` identity.

For each vend: a button press on the simulated machine (its control socket)
opens an invoice; once the ChainNotifier watches the address, the simulator
pays it; every 10 vends a block is mined (as on a real chain, payments
confirm: unconfirmed ones do not pile up by the hundred). **Latency** is from
the simulator's ZMQ ``sequence`` notification of that transaction (when a
plain ZMQ subscriber in this process receives it) to the relay pin going
active in the agent (the MockPin's recorded time; both are wall-clock times on
this host). The path: ChainNotifier (the body from ``rawtx``, commit, outbox)
-> broker -> BusinessMgr (commit, signed vend command) -> broker -> the agent
(signature and token checks, fsynced journal) -> the pin.

**Baseline**, same payments, same run: the notification plus one
``getrawtransaction``, done directly here: what a plain RPC-based payment
detector takes before it knows anything (ChainNotifier itself now reads the
body from the ``rawtx`` notification and skips that RPC).

**Diagnostics**: ``segments_*`` split each vend where this process's
subscriber heard ``chain.tx.seen`` and the vend command (each share includes
a broker hop; this process is busy too, so a segment can be off by a
millisecond either way); ``slowest`` lists the five slowest vends so split;
``cpu_ms_per_vend`` is each process's CPU time over the run divided by the
vends (timers and heartbeats included).

**Agent**: resident memory (VmRSS and peak VmHWM from /proc) after the run,
and start-up time from spawning ``dctrl-agent`` to its first heartbeat on the
bus (keys loaded, CURVE handshake, a token from the Vault).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scripts.bench.chain import _pct, _Procs, _summary, observe_announcements

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"p99_ms_max": 10, "agent_rss_mb_max": 40, "agent_startup_s_max": 1.5}


def _status_kb(pid, field) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


# The listener's handlers notify this after each message; the bench waits on it rather than
# polling, which on two cores would take CPU from the processes being measured.
_changed = threading.Condition()


def _signalling(handler):
    def handle(msg):
        handler(msg)
        with _changed:
            _changed.notify_all()
    return handle


def _cpu_ms(pid) -> float:
    """User plus system CPU time of a process so far, in ms (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    with _changed:
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            _changed.wait(min(left, 0.05))  # (also looks again now and then: files, sockets)


def _edit(text: str, pattern: str, repl: str) -> str:
    """``re.sub`` that fails when nothing matched: a changed template must not silently
    leave the bench measuring a differently configured machine."""
    text, n = re.subn(pattern, repl, text, count=1)
    if n != 1:
        raise RuntimeError(f"bench setup: {pattern!r} not found in the generated configuration")
    return text


def _cli(home, *args):
    subprocess.run([sys.executable, "-m", "scripts.cli", *args, "--home", str(home.root)], cwd=ROOT, check=True,
                   capture_output=True, timeout=60)


def run_vend_bench(quick=True, vends=None) -> dict:
    from actors.business_mgr.models import btc
    from actors.chain.bitcoind import Bitcoind
    from actors.runtime import Actor, Runtime
    from keys.home import Home
    from machine_agent.config import load_machine
    from scripts.bench.bus import free_ports
    from scripts.cli.provision import init_home
    from scripts.sim.chain import ChainSim
    from scripts.sim.machine import request

    vends = vends or (50 if quick else 200)
    tmp = Path(tempfile.mkdtemp(prefix="dctrl-bench-vend-"))
    procs = sim = rt = agent = zsub = observer = None
    stop = threading.Event()
    try:
        pub_port, sub_port, ex_port, rpc_port, zmq_port = free_ports(5)
        home = init_home(tmp / "home", publish_endpoint=f"tcp://127.0.0.1:{pub_port}",
                        subscribe_endpoint=f"tcp://127.0.0.1:{sub_port}", exchanges_port=ex_port,
                        chain_rpc_port=rpc_port, chain_zmq_port=zmq_port)
        config = home.root / "config.toml"
        # One vend after another: no per-machine limit on invoices (a guard for stuck buttons).
        config.write_text(_edit(config.read_text(), r"(\[business\]\nreceive = .*\n)",
                                r"\1max_invoices_per_minute = 1000000\n") + "\n[runtime]\nheartbeat_interval = 1\n")
        home = Home(home.root)
        # The demo machine with short pulses and drops, so 200 vends take seconds, not minutes.
        agent_toml = home.root / "agents" / "vm1" / "agent.toml"
        text = _edit(agent_toml.read_text(), r"\npulse_ms = 500\n", "\npulse_ms = 20\n")
        text = _edit(text, r"\n(\[drop\]\n(?:.*\n)*?simulate = true.*\n)", r"\n\1simulate_delay_ms = 5\n")
        agent_toml.write_text(text)
        sim = ChainSim(home.root / "sim" / "chain", rpc_port=rpc_port, zmq_port=zmq_port).start()
        procs = _Procs(home)
        for name in ("broker", "vault", "business_data", "chain_notifier"):
            procs.start(name)

        heard: dict[str, dict] = {}
        opened: list[dict] = []
        watching: set[str] = set()
        done: dict[str, str] = {}
        seen_at: dict[str, float] = {}      # txid -> chain.tx.seen heard here
        command_at: dict[str, float] = {}   # invoice -> its first vend command heard here
        tips: set[int] = set()               # chain.block heights heard here

        class Listener(Actor):
            def beat(self_, msg):
                heard.setdefault(msg.body["name"], {}).setdefault("first", time.time())
                heard[msg.body["name"]]["status"] = msg.body["status"]

            def invoice(self_, msg):
                if msg.topic == "invoice.opened":
                    opened.append(msg.body)
                elif msg.body["state"] in ("vended", "failed", "overpaid"):
                    done[msg.body["invoice"]] = msg.body["state"]

            def ack(self_, msg):
                if msg.body["status"] == "watching":
                    watching.add(msg.body["address"])

            def seen(self_, msg):
                seen_at.setdefault(msg.body["txid"], time.time())

            def command(self_, msg):
                command_at.setdefault(msg.body["invoice"], time.time())

        listener = Listener()
        rt = Runtime(listener, home.bus_settings("admin"))
        rt.add_handler("health", _signalling(listener.beat))
        rt.add_handler("invoice", _signalling(listener.invoice))
        rt.add_handler("chain.watch.ack", _signalling(listener.ack))
        rt.add_handler("chain.tx.seen", listener.seen)
        rt.add_handler("cmd.machine.vm1.vend", listener.command)
        rt.add_handler("chain.block", _signalling(lambda msg: tips.add(msg.body["height"])))
        threading.Thread(target=rt.run, daemon=True).start()
        prices = Runtime(Actor(), home.bus_settings("price_notifier"))
        threading.Thread(target=prices.run, daemon=True).start()

        def publish_price():
            prices.publish("price.btc_cad", {"cad_per_btc": "100000.00", "sources": [], "used": 3,
                                             "as_of": int(time.time() * 1000)})

        for name in ("broker", "vault", "business_data", "chain_notifier"):
            _wait(lambda: heard.get(name, {}).get("status") == "ok", 60, f"{name} healthy")
        _cli(home, "machines", "add", "vm1")
        _cli(home, "slots", "set", "vm1", "1", "--product", "bench", "--price-cad", "1.00")
        procs.start("business_mgr")
        _wait(lambda: "business_mgr" in heard, 60, "business_mgr up")
        publish_price()
        _wait(lambda: heard["business_mgr"].get("status") == "ok", 30, "business_mgr ok with a price")

        # -- the agent: start-up time to its first heartbeat ----------------------------
        t_spawn = time.time()
        log = open(home.log_dir / "vm1.bench.log", "ab")
        agent = subprocess.Popen([sys.executable, "-m", "machine_agent.main", "--config", str(agent_toml)],
                                 cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        startup_s = _wait(lambda: heard.get("vm1", {}).get("first"), 30, "vm1's first heartbeat") - t_spawn
        sock = agent_toml.parent / "state" / "sim.sock"
        _wait(sock.exists, 10, "vm1's control socket")

        # When did the simulator announce each transaction (wall clock, to compare with the pin)?
        announced, observer, zsub = observe_announcements(sim, stop, time.time)
        direct = Bitcoind(sim.rpc_url, cookie_file=sim.cookie_file)

        pids = {**{name: p.pid for name, p in procs.procs.items()}, "agent": agent.pid, "bench": os.getpid()}
        cpu0 = {name: _cpu_ms(pid) for name, pid in pids.items()}
        latencies, baseline = [], []
        segments = {"chain_notifier": [], "business_mgr": [], "agent": []}
        last_price = time.monotonic()
        debounce_s, released = load_machine(agent_toml).inputs.buttons.debounce_ms / 1000, 0.0
        for i in range(vends):
            if time.monotonic() - last_price > 20:
                publish_price()
                last_price = time.monotonic()
            if i and i % 10 == 0:  # a block now and then, as on a real chain: payments confirm
                sim.mine(1)
                height = direct.tip().height
                _wait(lambda: height in tips, 30, f"chain.block {height}")
            n = len(opened)
            # A press within the buttons' debounce window of the last release is a bounce, and
            # the agent rightly ignores it: a vend can end sooner than that after its press.
            time.sleep(max(0.0, released + debounce_s - time.monotonic()))
            request(sock, {"op": "press", "slot": 1, "hold_ms": 60}, machine="vm1", timeout=5)
            released = time.monotonic()
            inv = _wait(lambda: len(opened) > n and opened[n], 10, "invoice.opened")
            _wait(lambda: inv["address"] in watching, 10, "the invoice address watched")
            txid = sim.pay(inv["address"], btc(inv["sats"]))
            _wait(lambda: inv["invoice"] in done, 10, f"invoice {inv['invoice']} vended")
            if done[inv["invoice"]] != "vended":
                raise RuntimeError(f"invoice {inv['invoice']} ended {done[inv['invoice']]}")
            t0 = time.monotonic()
            direct.transaction(txid)
            baseline.append((time.monotonic() - t0) * 1000)
            relay = next(p for p in request(sock, {"op": "pins"}, machine="vm1", timeout=5)["pins"]
                         if p["role"] == "relay:1")
            on_us = relay["periods"][-1][0]
            latencies.append((on_us / 1e6 - announced[txid]) * 1000)
            # Where the time goes, as heard by this process's subscriber (each hop's share
            # includes one broker hop and one signature check).
            segments["chain_notifier"].append((seen_at[txid] - announced[txid]) * 1000)
            segments["business_mgr"].append((command_at[inv["invoice"]] - seen_at[txid]) * 1000)
            segments["agent"].append((on_us / 1e6 - command_at[inv["invoice"]]) * 1000)
        cpu_per_vend = {name: round((_cpu_ms(pid) - cpu0[name]) / vends, 1) for name, pid in pids.items()}
        slowest = sorted(range(vends), key=latencies.__getitem__, reverse=True)[:5]
        rss_mb = _status_kb(agent.pid, "VmRSS") / 1024
        hwm_mb = _status_kb(agent.pid, "VmHWM") / 1024
        pulses = len(relay["periods"])
        result = {
            "suite": "vend", "quick": quick, "vends": vends, "relay_pulses": pulses,
            "latency_ms": _summary(latencies),
            "baseline_ms": _summary(baseline),
            "ratio_p50": round(_pct(latencies, 50) / _pct(baseline, 50), 2),
            "segments_p50_ms": {k: round(_pct(v, 50), 3) for k, v in segments.items()},
            "segments_p99_ms": {k: round(_pct(v, 99), 3) for k, v in segments.items()},
            "slowest": [{"vend": n, "latency_ms": round(latencies[n], 3),
                         **{k: round(segments[k][n], 3) for k in segments}} for n in slowest],
            "cpu_ms_per_vend": cpu_per_vend,
            "agent": {"rss_mb": round(rss_mb, 1), "peak_rss_mb": round(hwm_mb, 1),
                      "startup_s": round(startup_s, 3)},
            "targets": TARGETS,
            "meets_targets": (_pct(latencies, 99) < TARGETS["p99_ms_max"] and hwm_mb < TARGETS["agent_rss_mb_max"]
                              and startup_s < TARGETS["agent_startup_s_max"] and pulses == vends),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg": [round(x, 2) for x in os.getloadavg()]},
        }
        return result
    finally:
        stop.set()
        if observer is not None:
            observer.join(2)
        if zsub is not None:
            zsub.close(0)
        if agent is not None and agent.poll() is None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        if rt is not None:
            rt.stop()
        if procs is not None:
            procs.close()
        if sim is not None:
            sim.stop()
        if os.environ.get("DCTRL_BENCH_KEEP"):  # for a look at the processes' logs afterwards
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(args) -> int:
    result = run_vend_bench(quick=bool(getattr(args, "quick", False)))
    print(json.dumps(result))
    return 0
