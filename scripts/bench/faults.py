"""`dctrl bench faults --seeds N --json [--quick]`: purchases under random kill -9 and SIGSTOP, counted.

Prints one JSON object. Everything real, as in ``dctrl bench vend``
(scripts/bench/vend.py, whose helpers this reuses): a throwaway home with real
CURVE keys; the broker, the Vault, EventLogger, BusinessData, ChainNotifier and
BusinessMgr as ``dctrl run`` processes; the agent ``dctrl-agent`` for vm1 with
mock pins as a process; the chain simulator (Core's RPC and ZMQ) and a price
publisher (the ``price_notifier`` identity, every 2 s) in this process.

**One network for all seeds** (started once: about 10 s, too slow to repeat per
seed within the time asked of ``--quick``). Each seed runs on what the seeds
before it left (the database, the agent's journal, the chain), all quiescent
by then. The output says so (``network``).

**A seed** is one scenario drawn from ``random.Random(seed)`` (see :func:`plan`):

* purchases, each at a planned moment: a press on slot 1 (2.00 CAD, below the
  zero-confirmation limit) or slot 2 (25.00 CAD: needs a confirmation) through
  the agent's control socket, as ``dctrl sim press`` does; the customer presses
  again (up to three times) if no invoice shows within 3 s; then pays the
  invoice's address from the simulator: exactly, the amount twice, half of it,
  or not at all; then a block is mined, or not;
* meanwhile faults, one after another, each at a planned moment: at random in
  the window, or tied to a purchase: a moment before its press (the press waits
  for the fault, then comes a planned 0.05 to 0.8 s later: a notifier killed
  before the invoice's watch reaches it, as in issue 9 item 1), or within 0.3 s
  after its payment. A fault is ``kill -9`` of one of the broker, the Vault,
  every actor and the agent, restarted after a planned delay as supervisord
  would (``dctrl run NAME``, ``dctrl-agent``), or SIGSTOP, then SIGCONT after
  a planned pause;
* then quiescence: a block is mined (every payment confirms, as on a real
  chain), and the bench waits, with a deadline, until every process answers
  with a heartbeat from its current pid, every invoice of the seed is closed
  (invoice lifetimes are short: ``invoice_lifetime_s`` 15 s) with no vend
  command unanswered, and every payment the simulator made has its row.
  Past that deadline it waits up to ``LATE_GRACE_S`` more (``late_quiescence``
  lists such seeds: slow, not wrong); a seed still not quiet then fails
  (``not_quiescent``), and the invoices it left open are counted again with
  the next seed, with their payments, journal entries and the pulses they
  already had (``carried_invoices``), so a vend that comes late is still tied
  to its own invoice.

**Counted** from the database (``actors.business_mgr.queries.invoice``: invoices,
``SalesPayment`` rows, vend commands), the agent's relay pins (``dctrl sim
pins vm1 --json``: every relay period) and what the simulator paid
(:func:`count` does it, on plain records):

* ``double_vends``: relay pulses beyond the items an invoice was paid for;
  ``double_vends_overall`` the same over the whole seed (all pulses against
  all items paid for);
* ``lost_paid_vends``: an invoice the simulator paid in full before its expiry
  with fewer pulses than items, and not recorded as owing that back
  (``refund_sats``, as for a failed vend);
* ``unrecorded_payments``: a transaction the simulator paid to an invoice
  address with no ``SalesPayment`` row;
* ``vends_without_payment``: a pulse for an invoice the simulator did not pay
  in full on time, or for no invoice at all;
* ``did_not_come_back``: a process with no healthy heartbeat from its current
  pid by the deadline (``ok``; the agent may say ``degraded`` for a vend
  interrupted during actuation, which is its right answer to a kill at that
  moment: a person must check the machine).

A pulse is tied to its vend command through the agent's journal (``actuating``
is written, fsynced, before the relay turns on; one vend at a time): the
latest ``actuating`` of that slot before the pulse. The pins live in the
agent's memory, so they are read right before each ``kill -9`` of the agent;
a vend journaled ``actuating`` in the moment between that read and the kill
is counted as a pulse when the journal says it completed (``done`` after the
pulse), and as ``interrupted`` otherwise (the agent then answers it
``failed``, and the invoice owes the money back).

Also listed, not counted as failures: ``paid_not_vended_refunded`` (paid on
time, no item, the whole amount owed back: e.g. a vend interrupted by the
kill, or a payment the notifier first saw after the expiry while it was
stopped) and ``presses_without_invoice``.

**Every failure** comes with its seed and the seed's timeline (what was
pressed, paid, mined, killed, stopped and restarted when, in seconds from the
seed's start) and the command that replays it (``DCTRL_BENCH_FAULTS_TIMELINE=1``:
every seed's).

Deliberately broken variant, to show the counting can fail: with
``DCTRL_BENCH_FAULTS_SKIP_RESTART=event_logger`` (a comma-separated list of
names) those processes are not restarted after a kill: each such kill counts
in ``did_not_come_back``. The output names it under ``broken_on_purpose``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from scripts.bench.chain import _Procs
from scripts.bench.vend import _cli, _edit, _signalling, _wait

ROOT = Path(__file__).resolve().parent.parent
SERVER = ("broker", "vault", "event_logger", "business_data", "chain_notifier", "business_mgr")
AGENT = "vm1"
TARGETS = SERVER + (AGENT,)
PRICE_CAD_PER_BTC = "100000.00"
SLOTS = {1: "2.00", 2: "25.00"}   # CAD; slot 2 is above the zero-conf limit (20.00): it needs a confirmation
PAYMENTS = ("exact", "twice", "too_little", "none")
LIFETIME_S = 15                    # invoice_lifetime_s for the bench (policy)
CLOSED = ("vended", "expired", "underpaid", "overpaid", "failed")
INTERRUPTED = "interrupted during actuation"
LATE_GRACE_S = 120                 # quiescence past its deadline: waited for this long more, then counted
MATCH_SLACK_S = 0.05               # the pins' wall-clock times are converted from monotonic ones


# -- the scenario ------------------------------------------------------------------

def plan(seed: int, quick: bool) -> dict:
    """Seed ``seed``'s scenario: purchases and faults with their moments (s from the start)."""
    rng = random.Random(seed)
    window = 5.0 if quick else 10.0
    purchases = []
    for _ in range(rng.randint(2, 3) if quick else rng.randint(3, 5)):
        purchases.append({"at": round(rng.uniform(0, window), 2), "slot": rng.choice(sorted(SLOTS)),
                          "pay": rng.choices(PAYMENTS, weights=(5, 2, 2, 1))[0],
                          "pay_after": round(rng.uniform(0, 1.5), 2), "mine": rng.random() < 0.5})
    purchases.sort(key=lambda p: p["at"])
    faults = []
    for _ in range(rng.randint(1, 2) if quick else rng.randint(2, 4)):
        kind = rng.choice(("kill", "stop"))
        fault = {"at": round(rng.uniform(0, window + 2), 2), "target": rng.choice(TARGETS), "kind": kind,
                 "for": round(rng.uniform(0.2, 1.5) if kind == "kill" else rng.uniform(0.3, 2.5), 2),
                 "anchor": None, "purchase": None}
        # Most faults strike near a purchase, where the sale's path runs (the notifier,
        # BusinessMgr, the agent's relay): moments a uniform draw over the window rarely hits.
        anchor = rng.choices((None, "before_press", "after_payment"), weights=(4, 3, 3))[0]
        if anchor:
            k = rng.randrange(len(purchases))
            p = purchases[k]
            fault.update(anchor=anchor, purchase=k)
            if anchor == "before_press":  # the press comes this long after the fault struck
                fault["lead"] = round(rng.uniform(0.05, 0.8), 2)
                fault["at"] = p["at"]
            else:  # it strikes this long after the payment
                fault["at"] = round(p["at"] + p["pay_after"] + rng.uniform(0, 0.3), 2)
        faults.append(fault)
    return {"seed": seed, "purchases": purchases, "faults": sorted(faults, key=lambda f: f["at"])}


def _describe(f) -> str:
    what = f"{f['at']:.2f}s {'kill -9' if f['kind'] == 'kill' else 'SIGSTOP'} {f['target']} {f['for']:.2f}s"
    if f["anchor"] == "before_press":
        return what + f" ({f['lead']:.2f}s before purchase {f['purchase']}'s press)"
    if f["anchor"] == "after_payment":
        return what + f" (after purchase {f['purchase']}'s payment)"
    return what


def parse_seeds(text) -> list[int]:
    """``10`` -> seeds 0..9; ``5-9`` -> 5..9; ``7,12`` or ``7,`` -> exactly those."""
    text = str(text).strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    if "-" in text:
        a, b = text.split("-", 1)
        return list(range(int(a), int(b) + 1))
    return list(range(int(text)))


# -- counting (plain records in, numbers out) ------------------------------------------------

def attribute_pulses(pulses: list[dict], journal: dict[str, dict], blind: list[tuple[float, float]]):
    """Tie each relay pulse to a vend command through the journal.

    ``pulses``: ``{"slot", "start_us", "end_us"}`` seen on the pins; ``journal``: vend id ->
    ``{"slot", "invoice", "actuating": t or None, "done": ack or None}``; ``blind``: (from, to)
    wall-clock windows in which pins could not be seen (between the last read and a kill -9).
    Returns (vend id -> pulses, unattributed pulses, interrupted vend ids)."""
    per_vend: dict[str, int] = {}
    unattributed = []
    acts = {}
    for vid, j in journal.items():
        if j.get("actuating") is not None:
            acts.setdefault(j["slot"], []).append((j["actuating"], vid))
    for slot in acts:
        acts[slot].sort()
    used = set()
    for p in sorted(pulses, key=lambda p: p["start_us"]):
        start = p["start_us"] / 1e6
        cands = [vid for t, vid in acts.get(p["slot"], []) if t <= start + MATCH_SLACK_S and vid not in used]
        if not cands:
            unattributed.append(p)
            continue
        vid = cands[-1]
        used.add(vid)
        per_vend[vid] = per_vend.get(vid, 0) + 1
    interrupted = []
    for vid, j in journal.items():
        if j.get("actuating") is None or vid in used:
            continue
        in_blind = any(a - 1.0 <= j["actuating"] <= b for a, b in blind)
        ack = j.get("done") or {}
        if in_blind and (ack.get("status") == "vended" or ack.get("pulsed_ms")):
            per_vend[vid] = per_vend.get(vid, 0) + 1  # done is journaled after the pulse: it happened
        elif in_blind:
            interrupted.append(vid)  # killed between actuating and done: may have pulsed
        # else: journaled actuating, never seen on the pins although they were watched: no pulse
    return per_vend, unattributed, interrupted


def count(invoices: list[dict], payments: list[dict], pulses: list[dict], journal: dict[str, dict],
          blind=(), health: dict | None = None, prior: dict[int, int] | None = None) -> dict:
    """The five counts (and what each is made of) for one seed.

    ``invoices``: :func:`actors.business_mgr.queries.invoice` dicts (with ``payments`` and ``vends``);
    ``payments``: what the simulator paid, ``{"address", "txid", "sats", "at"}`` (``at``: unix s
    when it was sent); ``pulses``, ``journal``, ``blind``: see :func:`attribute_pulses`;
    ``health``: name -> None if it came back, else why not; ``prior``: invoice -> pulses an earlier
    seed already counted for it (an invoice an earlier seed left open, counted again here with
    what came late)."""
    per_vend, unattributed, interrupted = attribute_pulses(pulses, journal, list(blind))
    vend_invoice = {v["id"]: inv["invoice"] for inv in invoices for v in inv.get("vends", [])}
    by_address: dict[str, list[dict]] = {}
    for inv in sorted(invoices, key=lambda i: i["created"]):
        by_address.setdefault(inv["address"], []).append(inv)
    recorded = {p["txid"] for inv in invoices for p in inv.get("payments", [])}

    def invoice_paid(pay):  # the newest invoice at that address opened before the payment
        cands = [i for i in by_address.get(pay["address"], []) if i["created"] <= pay["at"] + 1]
        return cands[-1] if cands else None

    sim_on_time: dict[int, int] = {}
    sim_all: dict[int, int] = {}
    unrecorded = []
    for pay in payments:
        inv = invoice_paid(pay)
        if pay["txid"] not in recorded:
            unrecorded.append({**pay, "invoice": inv["invoice"] if inv else None})
        if inv is None:
            continue
        sim_all[inv["invoice"]] = sim_all.get(inv["invoice"], 0) + pay["sats"]
        if pay["at"] <= inv["expires"] - 1:  # (expires is whole seconds)
            sim_on_time[inv["invoice"]] = sim_on_time.get(inv["invoice"], 0) + pay["sats"]

    pulses_of: dict[int, int] = dict(prior or {})
    without = [{"pulse": p, "why": "no vend command in the journal before it"} for p in unattributed]
    for vid, n in per_vend.items():
        inv_id = vend_invoice.get(vid)
        if inv_id is None:
            without.extend({"vend": vid, "why": "a vend command BusinessMgr never recorded"} for _ in range(n))
            continue
        pulses_of[inv_id] = pulses_of.get(inv_id, 0) + n

    double, lost, refunded, rows = [], [], [], []
    total_entitled = 0
    for inv in invoices:
        i = inv["invoice"]
        due = inv["due_sats"] or 0
        paid_on_time = sim_on_time.get(i, 0)
        entitled = inv["items"] if due and paid_on_time >= due - inv["tolerance_sats"] else 0
        total_entitled += entitled
        n = pulses_of.get(i, 0)
        row = {"invoice": i, "slot": inv["slot"], "state": inv["state"], "due_sats": due,
               "paid_on_time_sats": paid_on_time, "paid_sats": sim_all.get(i, 0), "items_paid": entitled,
               "pulses": n, "refund_sats": inv["refund_sats"], "reason": inv.get("reason")}
        rows.append(row)
        if entitled == 0:
            without.extend({"invoice": row, "why": "not paid in full on time"} for _ in range(n))
        elif n > entitled:
            double.append(row)
        elif n < entitled:
            unit = due // inv["items"] if inv["items"] else due
            if inv["refund_sats"] >= (entitled - n) * unit:
                refunded.append(row)
            else:
                lost.append(row)
    total_pulses = sum(per_vend.values()) + len(unattributed) + sum((prior or {}).values())
    counts = {
        "double_vends": sum(r["pulses"] - r["items_paid"] for r in double),
        "double_vends_overall": max(0, total_pulses - total_entitled),
        "lost_paid_vends": len(lost),
        "unrecorded_payments": len(unrecorded),
        "vends_without_payment": len(without),
        "did_not_come_back": sum(1 for why in (health or {}).values() if why is not None),
    }
    return {
        "counts": counts,
        "pulses": total_pulses, "items_paid": total_entitled, "interrupted_vends": len(interrupted),
        "invoices": rows,
        "failures": {"double_vends": double, "lost_paid_vends": lost, "unrecorded_payments": unrecorded,
                     "vends_without_payment": without,
                     "did_not_come_back": {k: v for k, v in (health or {}).items() if v is not None}},
        "paid_not_vended_refunded": refunded,
    }


# -- the network -----------------------------------------------------------------------

class Network:
    """The processes, the simulator, a heartbeat listener and a price publisher, with the
    means to kill, stop and restart any process."""

    def __init__(self, tmp: Path, skip_restart=()):
        self.tmp = tmp
        self.skip_restart = set(skip_restart)
        self.procs = self.sim = self.listener_rt = self.price_rt = self.db = None
        self.agent = None
        self.beats: dict[str, dict] = {}      # name -> the last heartbeat (with "at": monotonic)
        self.periods: dict[int, dict[int, int | None]] = {}   # slot -> {start_us: end_us} seen on the pins
        self.blind: list[tuple[float, float]] = []            # pins unseen (last read, kill -9 of the agent)
        self.stopped: set[str] = set()
        self.left_open: set[int] = set()      # invoices a seed left open (its quiescence not reached)
        self.pulses_of: dict[int, int] = {}   # invoice -> pulses counted for it so far
        self.paid: list[dict] = []            # every payment the simulator made, all seeds
        self.counted_until = 0.0              # the pins' read of the last count (wall clock)

    # -- start and stop -----------------------------------------------------------------

    def start(self):
        from actors.db import connect
        from actors.runtime import Actor, Runtime, every
        from keys.home import Home
        from machine_agent.config import load_machine
        from scripts.bench.bus import free_ports
        from scripts.cli.provision import init_home
        from scripts.sim.chain import ChainSim

        pub_port, sub_port, ex_port, rpc_port, zmq_port = free_ports(5)
        home = init_home(self.tmp / "home", publish_endpoint=f"tcp://127.0.0.1:{pub_port}",
                        subscribe_endpoint=f"tcp://127.0.0.1:{sub_port}", exchanges_port=ex_port,
                        chain_rpc_port=rpc_port, chain_zmq_port=zmq_port)
        config = home.root / "config.toml"
        # Vend commands retried every second; an invoice paid on time waiting for its block is
        # looked at again every 2 s; no per-machine limit on invoices (the scenario presses often).
        config.write_text(_edit(config.read_text(), r"(\[business\]\nreceive = .*\n)",
                                r"\1max_invoices_per_minute = 1000000\nvend_retry = 1\nreconcile_interval = 2\n")
                          + "\n[runtime]\nheartbeat_interval = 1\n")
        self.home = home = Home(home.root)
        self.agent_toml = home.root / "agents" / AGENT / "agent.toml"
        text, n = re.subn(r"\npulse_ms = 500\n", "\npulse_ms = 100\n", self.agent_toml.read_text())
        if n != len(SLOTS):
            raise RuntimeError(f"bench setup: {n} slots with pulse_ms = 500 in the demo agent.toml, not {len(SLOTS)}")
        text = _edit(text, r"\n(\[drop\]\n(?:.*\n)*?simulate = true.*\n)", r"\n\1simulate_delay_ms = 20\n")
        self.agent_toml.write_text(text)
        machine = load_machine(self.agent_toml)
        self.journal_file = machine.journal_file
        self.sock = machine.state_dir / "sim.sock"
        self.debounce_s = machine.inputs.buttons.debounce_ms / 1000
        self.sim = ChainSim(home.root / "sim" / "chain", rpc_port=rpc_port, zmq_port=zmq_port).start()
        self.procs = _Procs(home)
        for name in ("broker", "vault", "event_logger", "business_data", "chain_notifier"):
            self.procs.start(name)

        beats = self.beats

        class Listener(Actor):
            def beat(self_, msg):
                beats[msg.body["name"]] = {**msg.body, "at": time.monotonic()}

        listener = Listener()
        self.listener_rt = Runtime(listener, home.bus_settings("admin"))
        self.listener_rt.add_handler("health", _signalling(listener.beat))
        threading.Thread(target=self.listener_rt.run, daemon=True).start()

        class Prices(Actor):
            @every(2.0)
            def publish_price(self_):
                self_.publish("price.btc_cad", {"cad_per_btc": PRICE_CAD_PER_BTC, "sources": [], "used": 3,
                                                "as_of": int(time.time() * 1000)})

        self.price_rt = Runtime(Prices(), home.bus_settings("price_notifier"))
        threading.Thread(target=self.price_rt.run, daemon=True).start()

        for name in ("broker", "vault", "event_logger", "business_data", "chain_notifier"):
            _wait(lambda: self.beats.get(name, {}).get("status") == "ok", 60, f"{name} healthy")
        _cli(home, "machines", "add", AGENT)
        for slot, price in SLOTS.items():
            _cli(home, "slots", "set", AGENT, str(slot), "--product", f"item{slot}", "--price-cad", price)
        _cli(home, "policy", "set", "invoice_lifetime_s", str(LIFETIME_S))
        self.procs.start("business_mgr")
        _wait(lambda: self.beats.get("business_mgr", {}).get("status") == "ok", 60, "business_mgr ok with a price")
        self.start_agent()
        _wait(lambda: self.beats.get(AGENT, {}).get("pid") == self.agent.pid, 30, "vm1's first heartbeat")
        _wait(self.sock.exists, 10, "vm1's control socket")
        self.db = connect(home.database_url)

    def start_agent(self):
        log = open(self.home.log_dir / f"{AGENT}.bench.log", "ab")
        self.agent = subprocess.Popen([sys.executable, "-m", "machine_agent.main", "--config", str(self.agent_toml)],
                                      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def proc(self, name) -> subprocess.Popen:
        return self.agent if name == AGENT else self.procs.procs[name]

    def close(self):
        for name in list(self.stopped):
            self.cont(name)
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for rt in (self.listener_rt, self.price_rt):
            if rt is not None:
                rt.stop()
        if self.procs is not None:
            self.procs.close()
        if self.sim is not None:
            self.sim.stop()
        if self.db is not None:
            self.db.close()

    # -- faults -------------------------------------------------------------------------

    def kill(self, name) -> int:
        p = self.proc(name)
        if name == AGENT:
            self.read_pins()  # the pins live in the agent's memory: read them first
            read_at = time.time()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if name == AGENT:
            self.blind.append((read_at, time.time()))
        return p.pid

    def restart(self, name) -> int | None:
        if name in self.skip_restart:
            return None
        if name == AGENT:
            self.start_agent()
        else:
            self.procs.start(name)
        return self.proc(name).pid

    def stop(self, name) -> int:
        pid = self.proc(name).pid
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(name)
        return pid

    def cont(self, name):
        os.kill(self.proc(name).pid, signal.SIGCONT)
        self.stopped.discard(name)

    # -- what happened ------------------------------------------------------------------

    def read_pins(self):
        from scripts.sim.machine import request

        reply = request(self.sock, {"op": "pins"}, machine=AGENT, timeout=5)
        for pin in reply["pins"]:
            if pin["role"].startswith("relay:"):
                seen = self.periods.setdefault(int(pin["role"].split(":")[1]), {})
                for start, end in pin["periods"]:
                    if seen.get(start) is None:
                        seen[start] = end

    def pulses(self, since: float) -> list[dict]:
        return [{"slot": slot, "start_us": s, "end_us": e} for slot, seen in self.periods.items()
                for s, e in sorted(seen.items()) if s / 1e6 >= since]

    def journal(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        try:
            lines = self.journal_file.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line (kill -9 mid-write)
            j = out.setdefault(rec["id"], {"slot": None, "invoice": None, "actuating": None, "done": None,
                                           "t": rec["t"]})
            if rec["event"] in ("received", "actuating"):
                j["slot"], j["invoice"] = rec.get("slot"), rec.get("invoice")
                if rec["event"] == "actuating":
                    j["actuating"] = rec["t"]
            elif rec["event"] == "done":
                j["done"] = rec["ack"]
        return out

    def invoices_since(self, first: int) -> list[dict]:
        """The invoices from ``first`` on, after those an earlier seed left open."""
        from actors.business_mgr.queries import invoice

        ids = [r[0] for r in self.db.execute_sql('SELECT "id" FROM "sales_invoice" WHERE "id" >= ? ORDER BY "id"',
                                                 (first,)).fetchall()]
        return [invoice(self.db, i) for i in sorted(self.left_open) + ids]

    def last_invoice(self) -> int:
        row = self.db.execute_sql('SELECT MAX("id") FROM "sales_invoice"').fetchone()
        return row[0] or 0

    def healthy(self, name) -> bool:
        b = self.beats.get(name)
        p = self.proc(name)
        if b is None or p.poll() is not None or b.get("pid") != p.pid:
            return False
        return b["status"] == "ok" or (name == AGENT and INTERRUPTED in (b.get("detail") or ""))


# -- one seed ------------------------------------------------------------------------------

def run_seed(net: Network, seed: int, quick: bool) -> dict:
    from actors.business_mgr.models import btc
    from proto.errors import DctrlError
    from scripts.sim.machine import request

    scenario = plan(seed, quick)
    first = net.last_invoice() + 1
    carried = {str(i) for i in net.left_open}  # (the journal names invoices as strings)
    t0, wall0 = time.monotonic(), time.time()
    timeline: list[dict] = []
    lock = threading.Lock()
    sim_payments: list[dict] = []
    no_invoice = []
    errors = []
    paid = [threading.Event() for _ in scenario["purchases"]]  # set once a purchase paid (or gave up)
    struck = [threading.Event() for _ in scenario["faults"]]   # set once a fault struck (or was given up)

    def note(what, **kw):
        with lock:
            timeline.append({"t": round(time.monotonic() - t0, 2), "what": what, **kw})

    def at(t):  # the plan's moment (a planned time, not a stand-in for a condition)
        time.sleep(max(0.0, t0 + t - time.monotonic()))

    def new_invoice(slot, after):
        row = net.db.execute_sql('SELECT "id", "address", "due_sats", "expires" FROM "sales_invoice" WHERE '
                                 '"id" > ? AND "machine" = ? AND "slot" = ? AND "mode" = ? ORDER BY "id" LIMIT 1',
                                 (after, AGENT, slot, "invoice")).fetchone()
        return row

    def purchases():
        released = 0.0
        for n, p in enumerate(scenario["purchases"]):
            at(p["at"])
            for i, f in enumerate(scenario["faults"]):
                if f["anchor"] == "before_press" and f["purchase"] == n:
                    if not struck[i].wait(10):  # (the faults before it still running)
                        note(f"purchase {n}: fault {i} had not struck after 10 s; pressing anyway")
                    time.sleep(f["lead"])  # (planned)
            after = net.last_invoice()
            inv = None
            for attempt in range(3):
                time.sleep(max(0.0, released + net.debounce_s - time.monotonic()))  # (a quicker press is a bounce)
                try:
                    request(net.sock, {"op": "press", "slot": p["slot"], "hold_ms": 60}, machine=AGENT, timeout=2)
                    note(f"purchase {n}: press slot {p['slot']}" + (f" (again, {attempt + 1})" if attempt else ""))
                except DctrlError as exc:
                    note(f"purchase {n}: press slot {p['slot']} not taken: {str(exc)[:80]}")
                released = time.monotonic()
                try:
                    inv = _wait(lambda: new_invoice(p["slot"], after), 3, "invoice")
                    break
                except TimeoutError:
                    continue
            if inv is None:
                no_invoice.append(n)
                note(f"purchase {n}: no invoice after 3 presses")
                paid[n].set()
                continue
            number, address, due, expires = inv
            note(f"purchase {n}: invoice {number} for {due} sats, pays {p['pay']}")
            time.sleep(p["pay_after"])  # the customer takes out a phone (planned)
            amounts = {"exact": [due], "twice": [due, due], "too_little": [due // 2], "none": []}[p["pay"]]
            for sats in amounts:
                sent = time.time()
                txid = net.sim.pay(address, btc(sats))
                with lock:
                    sim_payments.append({"address": address, "txid": txid, "sats": sats, "at": sent})
                note(f"purchase {n}: paid {sats} sats to invoice {number}", txid=txid)
            paid[n].set()
            if p["mine"]:
                net.sim.mine(1)
                note("mined a block")

    def faults():
        for i, f in enumerate(scenario["faults"]):
            if f["anchor"] == "after_payment":  # its offset after that payment, however late it came
                p = scenario["purchases"][f["purchase"]]
                paid[f["purchase"]].wait()
                at(time.monotonic() - t0 + f["at"] - p["at"] - p["pay_after"])
            else:
                at(f["at"])
            name = f["target"]
            if f["kind"] == "kill":
                pid = net.kill(name)
                struck[i].set()
                note(f"kill -9 {name} (pid {pid})")
                time.sleep(f["for"])  # supervisord's restart delay (planned)
                new = net.restart(name)
                note(f"restarted {name} (pid {new})" if new else f"NOT restarted {name} (broken on purpose)")
            else:
                pid = net.stop(name)
                struck[i].set()
                note(f"SIGSTOP {name} (pid {pid})")
                time.sleep(f["for"])  # (planned)
                net.cont(name)
                note(f"SIGCONT {name}")

    def guarded(fn):
        def run():
            try:
                fn()
            except Exception as exc:  # a bench error: reported, never taken for a clean seed
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
                note(f"bench error in {fn.__name__}: {exc}")
            finally:
                for e in paid + struck:  # (nobody waits for what will not come)
                    e.set()
        return run

    threads = [threading.Thread(target=guarded(fn), daemon=True) for fn in (purchases, faults)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # -- quiescence -------------------------------------------------------------------
    net.sim.mine(1)
    note("quiescence: mined a block; waiting for every process, invoice and payment")
    quiet = time.monotonic()
    expires = [r[0] for r in net.db.execute_sql('SELECT "expires" FROM "sales_invoice" WHERE "id" >= ?',
                                                (first,)).fetchall()]
    deadline = max([20.0] + [e - time.time() + 20 for e in expires])

    def settled():
        # Every process that should run (one not restarted on purpose is not waited for) has
        # said it is healthy since the quiescence began.
        expected = [n for n in TARGETS if n not in net.skip_restart or net.proc(n).poll() is None]
        if not all(net.healthy(n) and net.beats[n]["at"] > quiet for n in expected):
            return False
        invs = net.invoices_since(first)
        if any(i["state"] not in CLOSED or any(v["state"] == "sent" for v in i["vends"]) for i in invs):
            return False
        rows = {p["txid"] for i in invs for p in i["payments"]}
        return all(p["txid"] in rows for p in sim_payments)

    quiescent = True
    try:
        _wait(settled, deadline, "quiescence")
        note("quiet")
    except TimeoutError:
        # Late is not wrong (a loaded machine restarts processes slowly), but counting now
        # would take what is still to come for lost, and the next seed would see it as
        # vends without payment. Wait some more; past that, the seed fails for it.
        note(f"quiescence not reached within {deadline:.0f} s; waiting up to {LATE_GRACE_S} s more")
        try:
            _wait(settled, LATE_GRACE_S, "quiescence")
            note("quiet (late)")
        except TimeoutError:
            quiescent = False
            note("quiescence not reached: counting what is there; what is left open is counted again "
                 "with the next seed")
    quiet_after = round(time.monotonic() - quiet, 1)
    health = {}
    for name in TARGETS:
        if net.healthy(name):
            health[name] = None
        else:
            b = net.beats.get(name) or {}
            p = net.proc(name)
            health[name] = (f"pid {p.pid} " + ("exited" if p.poll() is not None else "running")
                            + f"; last heartbeat from pid {b.get('pid')}: {b.get('status')} {b.get('detail') or ''}")
    since = min(wall0, net.counted_until or wall0)  # (a late pulse after the last seed's count is this one's)
    try:
        net.read_pins()
        net.counted_until = time.time()
    except DctrlError as exc:
        errors.append(f"pins: {exc}")
    # This seed's commands, and those of the invoices an earlier seed left open.
    journal = {vid: j for vid, j in net.journal().items() if j["t"] >= wall0 - 1 or j["invoice"] in carried}
    invoices = net.invoices_since(first)
    carried_addresses = {i["address"] for i in invoices if str(i["invoice"]) in carried}
    earlier = [p for p in net.paid if p["address"] in carried_addresses]
    net.paid.extend(sim_payments)
    result = count(invoices, earlier + sim_payments, net.pulses(since), journal,
                   [(a, b) for a, b in net.blind if a >= wall0], health,
                   prior={int(i): net.pulses_of.get(int(i), 0) for i in carried})
    net.pulses_of.update({r["invoice"]: r["pulses"] for r in result["invoices"]})
    net.left_open = {i["invoice"] for i in invoices
                     if i["state"] not in CLOSED or any(v["state"] == "sent" for v in i["vends"])}
    out = {"seed": seed, **result["counts"], "pulses": result["pulses"], "items_paid": result["items_paid"],
           "invoices": len(result["invoices"]), "payments": len(sim_payments),
           "interrupted_vends": result["interrupted_vends"],
           "paid_not_vended_refunded": len(result["paid_not_vended_refunded"]),
           "presses_without_invoice": len(no_invoice),
           "faults": [_describe(f) for f in scenario["faults"]],
           "quiescent": quiescent, "quiet_after_s": quiet_after, "deadline_s": round(deadline, 1),
           "carried_invoices": sorted(int(i) for i in carried),
           "seconds": round(time.monotonic() - t0, 1)}
    failed = any(result["counts"].values()) or errors or not quiescent
    if failed or result["paid_not_vended_refunded"] or os.environ.get("DCTRL_BENCH_FAULTS_TIMELINE"):
        out["timeline"] = timeline
        out["details"] = {k: v for k, v in result["failures"].items() if v}
        if result["paid_not_vended_refunded"]:
            out["details"]["paid_not_vended_refunded"] = result["paid_not_vended_refunded"]
        out["invoice_table"] = result["invoices"]
    if errors:
        out["bench_errors"] = errors
    return out


# -- the run -------------------------------------------------------------------------------

def run_faults_bench(seeds, quick=True) -> dict:
    seeds = parse_seeds(seeds) if not isinstance(seeds, list) else seeds
    skip = [s for s in os.environ.get("DCTRL_BENCH_FAULTS_SKIP_RESTART", "").split(",") if s]
    unknown = set(skip) - set(TARGETS)
    if unknown:
        raise ValueError(f"DCTRL_BENCH_FAULTS_SKIP_RESTART: unknown {sorted(unknown)}; known: {', '.join(TARGETS)}")
    tmp = Path(tempfile.mkdtemp(prefix="dctrl-bench-faults-"))
    net = Network(tmp, skip_restart=skip)
    started = time.monotonic()
    per_seed = []
    try:
        net.start()
        startup = time.monotonic() - started
        for seed in seeds:
            per_seed.append(run_seed(net, seed, quick))
    finally:
        net.close()
        if os.environ.get("DCTRL_BENCH_KEEP"):  # for a look at the processes' logs afterwards
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    keys = ("double_vends", "double_vends_overall", "lost_paid_vends", "unrecorded_payments",
            "vends_without_payment", "did_not_come_back")
    totals = {k: sum(s[k] for s in per_seed) for k in keys}
    extra = ("pulses", "items_paid", "invoices", "payments", "interrupted_vends", "paid_not_vended_refunded",
             "presses_without_invoice")
    failed = [s["seed"] for s in per_seed if any(s[k] for k in keys) or s.get("bench_errors") or not s["quiescent"]]
    flag = " --quick" if quick else ""
    return {
        "suite": "faults", "quick": quick, "seeds": seeds,
        "network": "one network for all seeds (started once; each seed runs on the state the seeds before it "
                   "left, quiescent)",
        "totals": totals,
        "also": {k: sum(s[k] for s in per_seed) for k in extra},
        "faults": sum(len(s["faults"]) for s in per_seed),
        "not_quiescent": [s["seed"] for s in per_seed if not s["quiescent"]],
        "late_quiescence": [s["seed"] for s in per_seed if s["quiescent"] and s["quiet_after_s"] > s["deadline_s"]],
        "failed_seeds": failed,
        "replay": [f"dctrl bench faults --seeds {s}-{s} --json{flag}" for s in failed],
        "broken_on_purpose": {"skip_restart": skip} if skip else None,
        "per_seed": per_seed,
        "startup_s": round(startup, 1),
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]},
    }


def main(args) -> int:
    result = run_faults_bench(getattr(args, "seeds", None) or "3", quick=bool(getattr(args, "quick", False)))
    print(json.dumps(result))
    return 1 if result["failed_seeds"] else 0
