"""SIGTERM and SIGINT at every state of the runtime's loop: the process always ends, promptly.

A Python signal handler runs in the main thread between two bytecodes of whatever that
thread was doing. The runtime's handler once called ``threading.Event.set()`` (and took
the wake pipe's lock) while the main thread could be inside ``Event.wait()`` on that same
event, holding its condition's lock: a process waiting out a reconnect backoff after the
broker refused its key hung for ever on SIGTERM (seen as ``Condition.__enter__`` under
``Runtime.stop``). It also spun a whole core meanwhile, so it sat in that window often.

Two kinds of test:

- Real processes (``dctrl run`` and small scripts over the runtime) get real signals in
  each state: running, in a reconnect backoff, in ``setup()``, in ``teardown()``.
- A deterministic sweep, in a subprocess so that a deadlock is a failure and not a hung
  suite: the runtime's own installed handler is called at the n-th profiler event of the
  main thread once the loop is in a given state, for every n over one pass through that
  state, which is where a real signal's handler can run. Each run must then end.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from keys.home import Home
from tests.harness import ROOT, Network, dctrl, wait_for

# -- the sweep (runs in a subprocess: python -c "from tests.test_signals import sweep; ...") --------

TRIAL_HANG = 20.0  # seconds a single run may take before the sweep dumps every stack and fails
POKE_S = 0.002     # the poker's call_soon period: loop iterations stay short, so a sweep is quick


class _Trial:
    """One Runtime run in the main thread. Once ``state`` is reached the profiler counts the
    main thread's events; with ``inject_at`` it calls the installed SIGTERM handler at that
    event. Without it (calibration) the window is measured and the run stopped afterwards."""

    def __init__(self, settings, state, inject_at=None, token=None):
        from actors.runtime import Actor, Runtime

        trial = self

        class Probe(Actor):
            def setup(self):
                trial.in_setup = True
                # What real setups do: start a thread and wait for it (the agent's sim control
                # socket), publish before there is a token, ask for work on the loop thread.
                ready = threading.Event()
                threading.Thread(target=ready.set, daemon=True).start()
                ready.wait(5)
                self.publish(f"debug.{self.name}", {"n": 1})
                self.runtime.call_soon(lambda: None)
                trial.in_setup = False
                trial.setup_done = True

            def teardown(self):
                trial.in_teardown = True
                trial.tearing_down = True

        self.state, self.inject_at = state, inject_at
        self.in_setup = self.setup_done = self.in_teardown = self.tearing_down = False
        self.armed = False
        self.count = 0
        self.window = None
        self.ticks = 0  # the poker's calls run on the loop, after the state was reached
        self.posted = 0  # the poker's calls posted so far
        self.posted_at_arm = None
        self.injected_at = None
        self.finished = threading.Event()
        self.rt = Runtime(Probe(), settings)
        if token is not None:
            # The calibration run's token from the Vault, which answers an identity 30 times a
            # minute: the sweep's hundreds of runs reuse it (same keys, same identity).
            self.rt.proxy.set_token(token)

    # the state, as the profiler sees it
    def _reached(self) -> bool:
        if self.state == "setup":
            return self.in_setup
        if self.state == "backoff":
            # the broker refused the handshake: no sockets until the reconnect that is due
            return self.rt.sub is None and self.rt._reconnect_at is not None
        if self.state == "running":
            # connected, with a token, its first heartbeat out: the loop's steady state
            return self.rt.connected and self.rt.counters["published"] >= 1 and self.setup_done
        if self.state == "shutdown":
            return self.tearing_down
        raise ValueError(self.state)

    def _window_over(self) -> bool:
        if self.state == "setup":
            return self.setup_done
        if self.state in ("backoff", "running"):
            # two of the poker's calls posted after the state was reached have run: at least one
            # whole loop iteration, its wait included (calls already queued when it was reached
            # run at once, without a wait: counting those closed the window after 16 events
            # once, on a loaded machine, instead of the usual 106)
            return self.ticks >= 2
        return False  # shutdown: until run() returns

    def _profile(self, frame, event, arg):
        if not self.armed:
            if not self._reached():
                return
            self.armed, self.posted_at_arm = True, self.posted
            self.handler = signal.getsignal(signal.SIGTERM)  # what run() installed
        if self.handler is None or signal.getsignal(signal.SIGTERM) is not self.handler:
            # run() has put the previous handler back: its part is over.
            self.handler = None
            if self.window is None:
                self.window = self.count
            return
        if self.window is None and self._window_over():
            self.window = self.count
        if self.inject_at is not None and self.injected_at is None and self.count == self.inject_at:
            self.injected_at = self.count
            self.injected_mono = time.monotonic()
            self.handler(signal.SIGTERM, frame)
        self.count += 1

    def _tick(self, posted):
        if self.posted_at_arm is not None and posted > self.posted_at_arm:
            self.ticks += 1

    def _poke(self):
        """Another thread: keep the loop iterating; stop it where the trial needs a stop that
        is not the signal's (to begin a shutdown; to end a calibration run)."""
        stopped = False
        while not self.finished.wait(POKE_S):
            self.posted += 1
            self.rt.call_soon(functools.partial(self._tick, self.posted))
            if stopped:
                continue
            if self.state == "shutdown" and self.rt.connected and self.setup_done:
                self.rt.stop()
                stopped = True
            elif self.inject_at is None and self.window is not None:
                self.rt.stop()
                stopped = True

    def run(self) -> float:
        poker = threading.Thread(target=self._poke, daemon=True)
        poker.start()
        sys.setprofile(self._profile)
        try:
            self.rt.run(handle_signals=True)
        finally:
            sys.setprofile(None)
            ended = time.monotonic()
            self.finished.set()
            poker.join(5)
        if self.armed and self.window is None:
            self.window = self.count  # (a runtime that leaves its handler installed: until run() returned)
        return ended


def sweep(home_root: str, state: str, name: str, key_file: str = "") -> int:
    """Calibrate the window of ``state``, then one run per event in it with the SIGTERM handler
    called there. Prints a summary line; exits non-zero (stacks dumped) if a run hangs."""
    import dataclasses

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    home = Home(home_root)
    settings = home.bus_settings(name)
    if key_file:
        settings = dataclasses.replace(settings, key_file=Path(key_file), boot_file=Path(key_file + ".boot"))
    faulthandler.dump_traceback_later(TRIAL_HANG, exit=True)
    calibration = _Trial(settings, state)
    calibration.run()
    window = calibration.window
    token = calibration.rt.proxy.token.raw if calibration.rt.proxy.token_valid() else None
    if not window:
        print(f"SWEEP-BROKEN {state}: the state was {'reached' if calibration.armed else 'never reached'}, "
              f"window {window}", flush=True)
        return 3
    missed, slowest = [], 0.0
    for n in range(window):
        faulthandler.dump_traceback_later(TRIAL_HANG, exit=True)
        trial = _Trial(settings, state, inject_at=n, token=token)
        ended = trial.run()
        if trial.injected_at is None:
            missed.append(n)  # (shutdown only: this run's shutdown had fewer events)
            continue
        slowest = max(slowest, ended - trial.injected_mono)
    faulthandler.cancel_dump_traceback_later()
    print(f"SWEEP {state} window={window} missed={','.join(map(str, missed))} slowest={slowest:.3f}", flush=True)
    return 0


def _sweep(home, state, name, key_file=""):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_signals import sweep; sys.exit(sweep(*sys.argv[1:]))",
         str(home.root), state, name, key_file],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("SWEEP")]
    assert proc.returncode == 0 and summary, (
        f"the sweep of SIGTERM over the {state} state failed (exit {proc.returncode}; a hang is a run that "
        f"had not ended {TRIAL_HANG} s after its signal):\n{proc.stdout[-3000:]}\n{proc.stderr[-12000:]}")
    fields = dict(f.split("=", 1) for f in summary[-1].split()[2:])
    missed = [int(n) for n in fields["missed"].split(",") if n]
    return int(fields["window"]), missed, float(fields["slowest"])


@pytest.fixture
def bus(home):
    """Broker and Vault as processes; ``mallory`` has a key the registry revoked before they started."""
    dctrl(home, "keys", "add", "mallory", "--role", "actor")
    dctrl(home, "keys", "revoke", "mallory")
    net = Network(home).start_healthy("broker", "vault")
    yield net
    net.close()


@pytest.mark.slow
@pytest.mark.parametrize("state", ["backoff", "running", "setup", "shutdown"])
def test_sigterm_handler_at_every_point_of_a_state_ends_the_run(home, bus, state):
    """Deterministic: the handler the runtime installs, called at each profiler event of one pass
    through ``state``. The old handler hung for ever in ``backoff`` (inside ``Event.wait``) and in
    ``shutdown`` (under the wake pipe's lock)."""
    name = "mallory" if state == "backoff" else "admin"
    window, missed, slowest = _sweep(home, state, name)
    assert window >= 20, f"a pass through {state} has {window} events: the sweep saw too little to mean anything"
    assert all(n >= window * 0.8 for n in missed), f"runs where the handler was never reached: {missed}"
    assert slowest < 5.0, f"a run took {slowest:.1f} s to end after its signal"


# -- real processes, real signals ----------------------------------------------------------------

def _cpu_seconds(pid) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_sigterm_ends_a_process_waiting_out_a_refused_key_and_it_does_not_spin(home):
    dctrl(home, "keys", "revoke", "event_logger")  # before the broker starts: never a token
    net = Network(home).start_healthy("broker", "vault")
    try:
        net.start("event_logger")
        # (the wording of the refusal is the runtime's; that it retries is what matters here)
        wait_for(lambda: re.search(r"ERROR actors\.runtime: .*retrying in", net.log("event_logger")),
                 what="the broker's refusal and the backoff")
        pid = net.procs["event_logger"].pid
        # A measurement over a fixed second, not a wait for a condition: a backoff costs no CPU.
        before, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(1.0)
        used, elapsed = _cpu_seconds(pid) - before, time.monotonic() - t0
        assert used < 0.25 * elapsed, f"{used:.2f} s of CPU in {elapsed:.2f} s of backoff: the loop spins"
        t0 = time.monotonic()
        rc = net.signal("event_logger", signal.SIGTERM, timeout=5)
        took = time.monotonic() - t0
    finally:
        net.close()
    assert rc == 0 and took < 3.0, (rc, took)
    log = net.log("event_logger")
    assert "event_logger stopping (SIGTERM)" in log and "Traceback" not in log, log[-2000:]


@pytest.mark.slow
def test_sigterm_and_sigint_end_a_running_actor(home):
    net = Network(home).start_healthy("broker", "vault", "event_logger", "business_data")
    try:
        t0 = time.monotonic()
        rc_term = net.signal("event_logger", signal.SIGTERM, timeout=5)
        rc_int = net.signal("business_data", signal.SIGINT, timeout=5)
        took = time.monotonic() - t0
    finally:
        net.close()
    assert (rc_term, rc_int) == (0, 0) and took < 5.0, (rc_term, rc_int, took)
    assert "event_logger stopping (SIGTERM)" in net.log("event_logger")
    assert "business_data stopping (SIGINT)" in net.log("business_data")


SCRIPT = textwrap.dedent("""
    import logging, sys, threading, time
    from pathlib import Path
    from actors.runtime import Actor, Runtime, every
    from keys.home import Home

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    marks = Path(sys.argv[2])
    def mark(what):
        with open(marks, "a") as f:
            f.write(what + "\\n")

    class Slow(Actor):
        '''setup() or teardown() takes HOLD seconds, as a slow real one would (a database, a drain).'''
        def setup(self):
            if sys.argv[3] == "setup":
                mark("in setup")
                threading.Event().wait(float(sys.argv[4]))
            mark("setup done")

        @every(0.05)
        def job(self):
            mark("loop ran")

        def teardown(self):
            if sys.argv[3] == "teardown":
                mark("in teardown")
                threading.Event().wait(float(sys.argv[4]))
            mark("teardown done")

    Runtime(Slow(), Home(sys.argv[1]).bus_settings("admin")).run(handle_signals=True)
    mark("exited")
""")


def _slow_actor(home, tmp_path, where, hold):
    marks = tmp_path / f"marks-{where}"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(home.root), str(marks), where, str(hold)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, (lambda: marks.read_text().splitlines() if marks.exists() else [])


@pytest.mark.slow
def test_sigterm_during_setup_ends_the_process_after_setup_without_running_the_loop(home, bus, tmp_path):
    proc, marks = _slow_actor(home, tmp_path, "setup", 1.5)
    try:
        wait_for(lambda: "in setup" in marks(), what="the actor in its setup")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert marks() == ["in setup", "setup done", "teardown done", "exited"], marks()
    assert took < 1.5 + 3.0 and "stopping (SIGTERM)" in err and "Traceback" not in err, (took, err[-2000:])


@pytest.mark.slow
def test_sigterm_and_sigint_during_shutdown_do_not_interrupt_or_hang_it(home, bus, tmp_path):
    proc, marks = _slow_actor(home, tmp_path, "teardown", 1.5)
    try:
        wait_for(lambda: "loop ran" in marks(), what="the actor's loop")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "in teardown" in marks(), what="the actor in its teardown")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert marks()[-3:] == ["in teardown", "teardown done", "exited"], marks()
    assert took < 1.5 + 3.0 and "Traceback" not in err and "KeyboardInterrupt" not in err, (took, err[-2000:])
