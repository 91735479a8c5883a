"""Test harness: real broker and actors as processes over loopback, real CURVE keys.

Nothing here mocks the bus. A :class:`Network` starts ``dctrl run NAME``
processes for a fresh home with free ports; a :class:`BusClient` is a real
Runtime (signing, tokens, verification) running in a thread of the test
process, collecting every delivery under its prefixes with the verdict.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from actors.runtime import Actor, Delivery, Runtime
from keys.home import Home
from scripts.cli.provision import init_home

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 15.0


def _port_slice() -> tuple[int, int]:
    """This process's range of ports: below the kernel's ephemeral range, split between xdist workers."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low, high = 10_000, max(10_500, ephemeral)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    width = (high - low) // 8
    return low + (n % 8) * width, low + (n % 8 + 1) * width


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now, for a server a test starts later. Not one the kernel picks
    (binding port 0 gives one of its ephemeral range, which every outgoing connection on the
    machine draws from too, and hands the same port to the next caller once released: a
    chain simulator failed with "Address already in use" on 127.0.0.1:35171): a random one
    below that range, from this xdist worker's own slice, never the same twice in a process."""
    low, high = _port_slice()
    for _ in range(500):
        port = random.randrange(low, high)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}..{high}")


def new_home(path, heartbeat_interval=1, database_url=None) -> Home:
    """A fresh home on free loopback ports; heartbeats every second so tests wait less."""
    home = init_home(path, publish_endpoint=f"tcp://127.0.0.1:{free_port()}",
                    subscribe_endpoint=f"tcp://127.0.0.1:{free_port()}", exchanges_port=free_port(),
                    chain_rpc_port=free_port(), chain_zmq_port=free_port(), smtp_port=free_port(),
                    server_port=free_port(), database_url=database_url)
    with open(home.root / "config.toml", "a") as f:
        f.write(f"\n[runtime]\nheartbeat_interval = {heartbeat_interval}\n")
    return Home(home.root)


@contextlib.contextmanager
def pg_schema(prefix="t"):
    """A fresh PostgreSQL schema; yields a database URL whose connections use it (for
    actors running as processes). Dropped at the end."""
    from scripts.bench import pg_schema_url
    from tests.test_db import PG_URL

    with pg_schema_url(PG_URL, prefix) as url:
        yield url


@contextlib.contextmanager
def chain_sim(home, **options):
    """The chain simulator on the home's demo ports (`dctrl init` configured [chain] for them),
    stopped at the end; ``options`` go to ChainSim (``txindex=False``: bitcoind's default)."""
    from scripts.sim.chain import ChainSim

    demo = home.config["demo"]
    s = ChainSim(home.root / "sim" / "chain", rpc_port=demo["chain_rpc_port"], zmq_port=demo["chain_zmq_port"],
                 **options)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@contextlib.contextmanager
def home_on(database, path, prefix="t"):
    """A fresh home on ``database``: "sqlite" (a file in the home) or "postgresql" (a
    schema of its own, named from ``prefix``, dropped at the end)."""
    if database == "sqlite":
        yield new_home(path)
        return
    with pg_schema(prefix) as url:
        yield new_home(path, database_url=url)


def wait_for(predicate, timeout=DEADLINE, interval=0.02, what="condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def publish_until_heard(tx: BusClient, rx: BusClient, topic: str, timeout=DEADLINE, what=None) -> Delivery:
    """Publish ``{"n": 1}``, ``{"n": 2}``, ... on ``topic`` from ``tx`` until ``rx`` accepts one; return it.

    After the broker cuts a peer off (its grants or key changed) it handshakes again on its
    own schedule, and what is published before both ends are back is lost (the bus is at
    most once): a test that needs one message through publishes until one is."""
    n = itertools.count(1)

    def heard():
        tx.publish(topic, {"n": next(n)})
        try:
            return rx.expect(topic_is(topic), timeout=0.25)
        except AssertionError:
            return None
    what = what or f"{topic} from {tx.runtime.keys.name} to be heard"
    return wait_for(heard, timeout=timeout, interval=0, what=what)


def dctrl(home: Home, *args, timeout=60, input=None, check=True) -> subprocess.CompletedProcess:
    """Run the real CLI as a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "scripts.cli", *args, "--home", str(home.root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"dctrl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Network:
    """Processes of one home; every one is stopped at close()."""

    def __init__(self, home: Home):
        self.home = home
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, *names, env=None):
        for name in names:
            logf = open(self.home.log_dir / f"{name}.test.log", "ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "scripts.cli", "run", name, "--home", str(self.home.root)],
                cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
            logf.close()
        return self

    def start_healthy(self, *names, timeout=20):
        """Start these processes and wait for each one's ``ok`` heartbeat."""
        self.start(*names)
        watcher = BusClient(self.home, "admin", prefixes=["health"])
        try:
            for name in names:
                watcher.expect(topic_is(f"health.{name}", status="ok"), timeout=timeout, what=f"health.{name}")
        finally:
            watcher.close()
        return self

    def log(self, name) -> str:
        return (self.home.log_dir / f"{name}.test.log").read_text(errors="replace")

    def signal(self, name, sig=signal.SIGTERM, timeout=10) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout)

    def alive(self, name) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def close(self):
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Collector(Actor):
    role = "test"

    def __init__(self):
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.history: list[Delivery] = []
        self.secrets: dict[str, tuple] = {}

    def on_secret(self, name, value, error):
        self.secrets[name] = (value, error)

    def deliver(self, d: Delivery):
        self.deliveries.put(d)


class BusClient:
    """A real Runtime in a thread: publish as ``name``, collect deliveries under ``prefixes``."""

    def __init__(self, home: Home, name: str, prefixes=(), settings=None, wait_token=True):
        self.actor = Collector()
        self.runtime = Runtime(self.actor, settings or home.bus_settings(name))
        for p in prefixes:
            self.runtime.add_handler(p, self.actor.deliver, raw=True)
        self.crashed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"client-{name}", daemon=True)
        self.thread.start()
        if wait_token:
            wait_for(self.runtime.proxy.token_valid, what=f"a token for {name}")

    def _run(self):
        try:
            self.runtime.run()
        except BaseException as exc:
            self.crashed = exc
            raise

    def publish(self, topic, body):
        self.runtime.publish(topic, body)

    def send_raw(self, frames):
        """Send frames as they are (bypassing the AuthProxy), from the loop thread."""
        done = threading.Event()

        def send():
            self.runtime.pub.send_multipart(frames)
            done.set()
        self.runtime.call_soon(send)
        wait_for(done.is_set, what="raw send")

    def expect(self, predicate, timeout=DEADLINE, what="a matching message") -> Delivery:
        """The first delivery (in order, from now or earlier unseen) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        for d in self.actor.history:
            if predicate(d):
                self.actor.history.remove(d)
                return d
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            try:
                d = self.actor.deliveries.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if predicate(d):
                return d
            self.actor.history.append(d)

    def drain(self):
        while True:
            try:
                self.actor.history.append(self.actor.deliveries.get_nowait())
            except queue.Empty:
                return list(self.actor.history)

    def close(self):
        self.runtime.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), f"{self.thread.name} did not stop within 10 s"
        if self.crashed is not None:
            raise AssertionError(f"{self.thread.name}'s loop died before the test closed it") from self.crashed


def topic_is(topic, **body):
    """Predicate: an accepted message on ``topic`` whose body has these items."""
    def pred(d):
        m = d.message
        return (m is not None and m.topic == topic
                and all(m.body.get(k) == v for k, v in body.items()))
    return pred
