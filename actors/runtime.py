"""The actor runtime: an actor is a plain class; the runtime owns everything else.

An actor declares handlers and jobs with decorators that only record metadata::

    class Greeter(Actor):
        @on("debug.hello")
        def hello(self, msg):
            '''debug.hello {"who": "vm1"} -> debug.greeting'''
            self.publish("debug.greeting", {"to": msg.body["who"]})

        @every(60)
        def tick(self):
            ...

The runtime owns the context, the sockets, the poller, framing, signing and
verification (the AuthProxy), token requests and renewal, heartbeats
(``health.NAME``), reconnects with backoff and jitter, key rotation, clean
shutdown on SIGTERM and error isolation: a message that fails verification
or a handler that raises is logged and reported on ``error.NAME``; the actor
keeps running. Handlers marked ``blocking=True`` run on a thread pool so the
loop never stalls; :meth:`Actor.publish` is safe from any thread.

Handlers never touch zmq, so tests can call them with a decoded message: the
test kit (:mod:`actors.testing`, tests only) hosts an actor on a fake runtime
that dispatches the same way (:mod:`actors.dispatch`) without sockets.

A runtime hosts one actor or several *parts* of one identity
(``Runtime([notifier, sim, mgr], settings)``, the machine agent): every part's
``@on`` handlers and ``@every`` jobs are served, parts are set up in order and
torn down in reverse, and their health is combined. A handler it cannot serve
(on an object a part holds but the runtime does not host, or on a prefix no
topic family falls under) is an error at start (:class:`~actors.dispatch.HandlerError`);
one outside the identity's subscribe grants is named in an error log line when
the token arrives (the broker would pass it nothing).

Tokens, secrets and key rotation are decided by a socket-free
:class:`~actors.session.Session`; the runtime sends what it returns. Tokens
come from a token source: by default the Vault, asked over the bus; the Vault's
own runtime is given one that mints locally (``token_source=``).

Stopping. :meth:`Runtime.stop` (any thread) and the SIGTERM/SIGINT handlers
(``run(handle_signals=True)``) set a plain flag and write a byte to the loop's
wake pipe; the loop sleeps on that pipe with its sockets, or on the pipe alone
while it waits out a reconnect backoff. A signal handler runs in the main
thread between two bytecodes of whatever that thread was doing, which may be
inside a ``threading`` primitive (``Event.wait`` holds its condition's lock)
or holding ``_wake_lock``: a handler that took either lock would wait for
itself forever. So the handlers take no lock; they may skip the lock because
the pipe is closed in the loop thread, which is the main thread whenever they
are installed, and the fd is marked gone before it is closed.
"""

from __future__ import annotations

import collections
import gc
import heapq
import logging
import math
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import schedule
import zmq
from zmq.utils.monitor import recv_monitor_message

from actors.registry import ACTOR_IDENTITIES
from keys.bus import BusSettings, next_boot
from keys.files import atomic_write
from keys.identity import IdentityKeys
from proto import wire
from proto.authproxy import AuthProxy, NoToken, ReplayGuard, boot_id, describe_rejection
from proto.errors import BadToken, DctrlError
from proto.topics import REGISTRY
from proto.version import VERSION  # the package metadata (setup.cfg)

from .dispatch import Handlers, HandlerError, combined_health
from .session import Session, VaultTokens

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 10_000
DRAIN = 1000
INTAKE_BATCH = 64  # requests served from an actor's intake per loop pass (bounded work)
LOG_INTERVAL = 10.0  # refusals are logged once per (kind, code) per interval, then summarised


def on(prefix: str, *, blocking=False, raw=False):
    """Register a handler for topics under ``prefix`` (whole segments; ``""`` for all).

    ``raw=True`` handlers also receive refused messages: they are called with
    a :class:`Delivery` (frames, message or None, error or None).
    """
    def mark(fn):
        fn._dctrl_on = (prefix, blocking, raw)
        return fn
    return mark


def every(seconds: float):
    """Register a job run every ``seconds`` by the loop (never overlapping itself)."""
    def mark(fn):
        fn._dctrl_every = seconds
        return fn
    return mark


class Delivery:
    __slots__ = ("frames", "message", "error")

    def __init__(self, frames, message, error):
        self.frames, self.message, self.error = frames, message, error


def _claimed_sender(frames) -> str:
    """Who a refused message says it is from (unverified), for the report."""
    try:
        return wire.decode(frames).sender
    except DctrlError:
        return "?"


class Actor:
    """Base class. Subclasses may override :meth:`setup`, :meth:`teardown`,
    :meth:`health` and :meth:`after_batch`, and add ``@on``/``@every`` methods."""

    role = "actor"
    runtime: "Runtime"

    @property
    def name(self) -> str:
        return self.runtime.proxy.name

    def publish(self, topic: str, body: dict) -> None:
        self.runtime.publish(topic, body)

    def setup(self) -> None:
        """Called once in the loop thread before the first message."""

    def teardown(self) -> None:
        """Called once on shutdown, before the sockets close."""

    def health(self) -> tuple[str, str | None]:
        """(status, detail) for the heartbeat; status is ok or degraded."""
        return "ok", None

    def after_batch(self) -> None:
        """Called after each batch of received messages (e.g. to flush a log)."""

    def reconnected(self) -> None:
        """Called in the loop thread when the connection to the broker is back after a loss
        (a broker restart, a network cut). Publish/subscribe is at most once: whatever was
        published to or by this process meanwhile may be gone, so ask again for what matters."""

    def on_secret(self, name: str, value: bytes | None, error: str | None) -> None:
        """Called in the loop thread with a secret asked for by :meth:`Runtime.request_secret`
        (``value``), or with the Vault's refusal (``error``)."""



class Runtime:
    """Runs ``actor`` -- one Actor, or an iterable of parts of one identity -- on the bus as
    ``settings.name``. ``token_source`` says where tokens come from (default: the Vault, over
    the bus; see :mod:`actors.session`); ``intake`` is an optional object that takes messages
    under its ``prefix`` before any verification (only the Vault's runtime has one: ``offer(frames)
    -> bool``, cheap, False drops the message; ``pending``; ``take(n) -> [frames]``)."""

    def __init__(self, actor, settings: BusSettings, *, clock=time.time, workers=4, token_source=None,
                 intake=None, schemas=REGISTRY):
        self.parts = [actor] if isinstance(actor, Actor) else list(actor)
        if not self.parts:
            raise HandlerError("a runtime needs at least one part")
        self.actor = self.parts[0]
        self.settings = settings
        self.intake = intake
        self.token_source = token_source or VaultTokens()
        keys = IdentityKeys.load(settings.key_file)
        journal = settings.journal_file
        if journal is None and settings.name in ACTOR_IDENTITIES:
            # a server actor keeps its replay window across restarts, as the agent does
            journal = settings.boot_file.with_name(f"{settings.name}.replay.json")
        self.dispatch = Handlers(self.parts, schemas)  # raises HandlerError before anything is opened
        self.proxy = AuthProxy(keys, settings.vault_public, boot_id(next_boot(settings.boot_file)),
                               clock=clock, registry_auth=self.token_source.registry_auth, schemas=schemas,
                               replay=ReplayGuard(journal_file=journal, clock=clock, save=atomic_write))
        self.session = Session(self.proxy, settings.key_file, token_source=self.token_source,
                               on_token=self._token_installed, on_secret=self._on_secret)
        self.clock = clock
        self.handlers = self.dispatch.on  # (prefix frame, fn, blocking, raw)
        self.scheduler = schedule.Scheduler()
        for seconds, fn in self.dispatch.every:
            self.scheduler.every(seconds).seconds.do(self._guarded, fn, "job")
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.keys.name}-work")
        self.outbox: collections.deque = collections.deque()  # (topic, body) awaiting a token
        self.crossthread: collections.deque = collections.deque()
        self.later: list = []  # heap of (monotonic due, n, fn, args): call_later
        self._later_n = 0
        self.counters = collections.Counter(received=0, accepted=0, rejected=0, handler_errors=0, published=0)
        self._errors_window: dict = {}
        self._log_window: dict = {}  # (kind, code) -> [start, refusals not logged]
        self.log_interval = LOG_INTERVAL
        self._loop_thread = None
        self._stopping = False  # set by stop() and the signal handlers; a plain store (see the module doc)
        self._stop_signal = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # _wake() against the pipe's close in _shutdown()
        self._idle_poller = zmq.Poller()  # no sockets (a reconnect backoff): the wake pipe alone
        self._idle_poller.register(self._wake_r, zmq.POLLIN)
        self._monitors = 0
        self.started = time.monotonic()
        self.connected = self._was_connected = False
        self.ctx = zmq.Context()
        self.pub = self.sub = self.monitor = None
        self._reconnect_at = None
        self._backoff = 1.0
        self._outside_said: set = set()  # handlers outside the subscribe grants, last said (a log line)
        for part in self.parts:
            part.runtime = self

    @property
    def keys(self) -> IdentityKeys:
        return self.proxy.keys

    @property
    def secrets_wanted(self) -> dict:
        return self.session.secrets_wanted

    # -- the parts ------------------------------------------------------------

    def _setup_parts(self):
        for part in self.parts:  # a part that fails to set up stops the start (as one actor's did)
            part.setup()

    def _teardown_parts(self):
        for part in reversed(self.parts):
            self._guarded(part.teardown, "teardown")

    def _each_part(self, method, kind, *args):
        for part in self.parts:
            self._guarded(getattr(part, method), kind, *args)

    def _health(self):
        if len(self.parts) == 1:
            return self.actor.health()
        return combined_health([p.health() for p in self.parts])

    def _on_secret(self, name, value, error):
        self._each_part("on_secret", "on_secret", name, value, error)

    # -- sockets --------------------------------------------------------------

    def _client(self, kind, endpoint):
        s = self.ctx.socket(kind)
        s.linger = 500
        s.curve_serverkey = self.settings.broker_public
        s.curve_publickey = self.keys.curve_public
        s.curve_secretkey = self.keys.curve_secret
        s.heartbeat_ivl = self.settings.heartbeat_ivl_ms
        s.heartbeat_timeout = self.settings.heartbeat_timeout_ms
        s.maxmsgsize = self.settings.max_message_bytes
        s.reconnect_ivl = 100 + random.randrange(100)  # jitter: peers do not reconnect in lockstep
        s.reconnect_ivl_max = 5000
        s.sndhwm = s.rcvhwm = 50_000
        s.connect(endpoint)
        return s

    def _open_sockets(self):
        self.pub = self._client(zmq.PUB, self.settings.publish_endpoint)
        self.sub = self._client(zmq.SUB, self.settings.subscribe_endpoint)
        # A monitor endpoint of our own: pyzmq's default is named after the socket's fd, which a
        # reconnect can reuse while libzmq may still hold the old monitor's endpoint (EADDRINUSE).
        self._monitors += 1
        self.monitor = self.sub.get_monitor_socket(
            addr=f"inproc://dctrl-monitor-{id(self):x}-{self._monitors}",
            events=zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
        name = self.keys.name
        prefixes = {wire.prefix_frame(p) for p in (f"vault.token.{name}", f"vault.secret.{name}", "vault.revoked")}
        prefixes |= {h[0] for h in self.handlers}
        for p in sorted(prefixes):
            self.sub.setsockopt(zmq.SUBSCRIBE, p)
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.session.connected()

    def _close_sockets(self):
        # The monitor is stopped before its PAIR socket closes: libzmq's I/O thread sends each
        # event to that PAIR with a blocking send, holding the monitor's lock, so a PAIR closed
        # first can hang that thread and then disable_monitor() with it (libzmq #3575, pyzmq
        # #1020; seen here in a shutdown right after connecting, about once in a thousand).
        if self.sub is not None:
            self.sub.disable_monitor()
        for s in (self.monitor, self.sub, self.pub):
            if s is not None:
                s.close(linger=500 if self._stopping else 0)
        self.pub = self.sub = self.monitor = None
        self.connected = False

    # -- public API -----------------------------------------------------------

    def publish(self, topic: str, body: dict) -> bool:
        """Sign and send; queued until a token arrives. Safe from any thread.

        Returns True only when called in the loop thread and the message went
        to the socket now (callers with an outbox mark rows sent on that).
        """
        if threading.get_ident() != self._loop_thread:
            self.call_soon(self.publish, topic, body)
            return False
        if not self.proxy.token_valid() or self.pub is None:
            if len(self.outbox) >= OUTBOX_LIMIT:
                log.error("outbox full without a token; dropping %s", topic)
                return False
            self.outbox.append((topic, body))
            return False
        try:
            frames = self.proxy.seal(topic, body)
        except NoToken:
            self.outbox.append((topic, body))
            return False
        self.pub.send_multipart(frames)
        self.counters["published"] += 1
        return True

    def ready_to_publish(self) -> bool:
        """True when :meth:`publish` from the loop thread would send now (a valid token and a
        connection to the broker) rather than queue or be dropped by a PUB socket with no peer:
        outboxes publish only then, so nothing is queued twice or marked sent while lost."""
        return self.pub is not None and self.connected and self.proxy.token_valid()

    def add_handler(self, prefix: str, fn, *, blocking=False, raw=False) -> None:
        """Register a handler at run time (same meaning as ``@on``, and refused the same way if no
        topic family falls under ``prefix``); loop thread or before run()."""
        frame = self.dispatch.add(prefix, fn, blocking, raw)
        if self.sub is not None:
            self.sub.setsockopt(zmq.SUBSCRIBE, frame)

    def request_secret(self, name: str) -> None:
        """Ask the Vault for a secret; retried until it answers (any thread)."""
        if threading.get_ident() != self._loop_thread:
            self.call_soon(self.request_secret, name)
            return
        self.session.want_secret(name)

    def _ask_for_secrets(self):
        for frames in self.session.secret_requests():
            self.pub.send_multipart(frames)

    def call_soon(self, fn, *args) -> None:
        """Run ``fn(*args)`` in the loop thread (sockets are not thread-safe). Any thread."""
        self.crossthread.append((fn, args))
        self._wake()

    def call_later(self, delay: float, fn, *args) -> None:
        """Run ``fn(*args)`` in the loop thread ``delay`` seconds from now. Loop thread only."""
        self._later_n += 1
        heapq.heappush(self.later, (time.monotonic() + delay, self._later_n, fn, args))

    def stop(self):
        """End the loop (it finishes its iteration, then shuts down). Any thread; not from a
        signal handler (the loop installs its own, see :meth:`_on_signal`)."""
        self._stopping = True
        self._wake()

    def _on_signal(self, signum, frame):
        """SIGTERM/SIGINT: a flag and a byte to the wake pipe, no lock (see the module doc)."""
        self._stopping = True
        self._stop_signal = signum
        fd = self._wake_w  # read once: _shutdown() marks it -1 before closing it
        if fd >= 0:
            try:
                os.write(fd, b"x")
            except OSError:
                pass  # full: the loop is awake already

    def _wake(self):
        with self._wake_lock:
            if self._wake_w < 0:
                return  # the loop has ended: its pipe's fd may by now be another file's
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # already awake

    # -- the loop -------------------------------------------------------------

    def run(self, *, handle_signals=False):
        """Run until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``)."""
        self._loop_thread = threading.get_ident()
        previous = {}
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self._run()
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # (None: not installed from Python; nothing to restore)
                    signal.signal(sig, handler)

    def _run(self):
        self._open_sockets()
        log.info("%s starting (boot %d), broker %s", self.keys.name, self.proxy.boot, self.settings.subscribe_endpoint)
        try:
            self._setup_parts()
            # Everything made so far (modules, keys, the actor) lives as long as the process:
            # leave it out of the collector's full passes, which otherwise walk all of it
            # (15 ms seen on the agent, landing on whatever message was in flight).
            gc.freeze()
            next_health = time.monotonic()
            next_keycheck = time.monotonic() + 2
            while not self._stopping:
                now = time.monotonic()
                if self._reconnect_at is not None and now >= self._reconnect_at:
                    self._reconnect_at = None
                    self._open_sockets()
                if self.sub is not None and now >= self.session.next_token_request:
                    self._maybe_request_token()
                if now >= next_health and self.proxy.token_valid():
                    next_health = now + self.settings.heartbeat_interval
                    self._heartbeat()
                if now >= next_keycheck:
                    next_keycheck = now + 2
                    self._check_key_rotation()
                    self._summarise_refusals()
                if self.secrets_wanted and self.sub is not None:
                    self._ask_for_secrets()
                self.scheduler.run_pending()
                timeout = self._timeout(next_health)
                events = dict(self.poller.poll(timeout)) if self.sub is not None else self._idle(timeout)
                if self.sub is not None and self.sub in events:
                    self._drain()
                if self.intake is not None and self.intake.pending:
                    self._serve_intake()
                if self.monitor is not None and self.monitor in events:
                    self._monitor_events()
                if events.get(self._wake_r):
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                self._run_crossthread()
                while self.later and self.later[0][0] <= time.monotonic():
                    _, _, fn, args = heapq.heappop(self.later)
                    self._guarded(fn, "call_later", *args)
        finally:
            self._shutdown()

    def _run_crossthread(self):
        while self.crossthread:
            fn, args = self.crossthread.popleft()
            self._guarded(fn, "call_soon", *args)

    def _idle(self, timeout_ms):
        """Sleep without sockets (a reconnect backoff) until the timeout or a wake-up."""
        return dict(self._idle_poller.poll(timeout_ms))

    def _timeout(self, next_health) -> int:
        """Milliseconds until the loop has something to do. Only deadlines that can fire count:
        with no token the heartbeat and the secret requests wait for one, and with no sockets
        (a reconnect backoff) so do token requests; a past one that cannot fire would make
        the loop spin (seen: a whole core while a refused key waited out its backoff)."""
        now = time.monotonic()
        deadlines = [now + 1.0]
        if self.proxy.token_valid():
            deadlines.append(next_health)
        deadlines.extend(self.session.deadlines(self.sub is not None))
        if self.later:
            deadlines.append(self.later[0][0])
        idle = self.scheduler.idle_seconds
        if idle is not None:
            deadlines.append(now + max(0.0, idle))
        if self._reconnect_at is not None:
            deadlines.append(self._reconnect_at)
        if self.intake is not None and self.intake.pending:
            return 0
        return max(0, math.ceil((min(deadlines) - now) * 1000))

    def _drain(self):
        recv = self.sub.recv_multipart
        intake = self.intake
        for _ in range(DRAIN):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if intake is not None and len(frames) == 2 and frames[0].startswith(intake.prefix):
                # queued (or refused) before any verification: verified later, fairly
                self.counters["received"] += 1
                if not intake.offer(frames):
                    self.counters["throttled"] += 1
                continue
            self._deliver(frames)
        self._each_part("after_batch", "after_batch")
        self._guarded(self.proxy.replay.flush, "replay_flush")

    def _serve_intake(self):
        """Verify and handle a bounded batch from the actor's intake (the rest waits for the
        next pass of the loop, after the sockets have been read again)."""
        for frames in self.intake.take(INTAKE_BATCH):
            self.counters["received"] -= 1  # (counted when queued)
            self._deliver(frames)
        self._guarded(self.proxy.replay.flush, "replay_flush")

    def _deliver(self, frames):
        self.counters["received"] += 1
        try:
            msg, error = self.proxy.open(frames), None
        except DctrlError as exc:
            msg, error = None, exc
        except Exception as exc:  # a bug, not bad input: still never kill the loop
            log.exception("verifier failed on a message")
            msg, error = None, exc
        topic = frames[0] if frames else b""
        raw_handlers = [h for h in self.handlers if h[3] and topic.startswith(h[0])]
        if error is not None:
            self.counters["rejected"] += 1
            if not (topic.startswith(b"vault.req.") and isinstance(error, BadToken)):
                # (token requests are untokened by design: only the Vault can verify them, and
                # a listener to everything, like the event logger, is not to complain of them)
                self._report("rejected", topic, _claimed_sender(frames), error)
            for _, fn, blocking, _ in raw_handlers:
                self._dispatch(fn, Delivery(frames, None, error), blocking)
            return
        self.counters["accepted"] += 1
        if msg.topic.startswith("vault."):
            self._guarded(self._vault_message, "vault_message", msg)
        for prefix, fn, blocking, raw in self.handlers:
            if msg.topic_bytes.startswith(prefix):
                self._dispatch(fn, Delivery(frames, msg, None) if raw else msg, blocking)

    def _dispatch(self, fn, arg, blocking):
        if blocking:
            self.pool.submit(self._guarded, fn, "handler", arg)
        else:
            self._guarded(fn, "handler", arg)

    def _guarded(self, fn, kind, *args):
        try:
            fn(*args)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            log.exception("%s %s failed", kind, getattr(fn, "__name__", fn))
            topic = args[0].topic_bytes if args and isinstance(args[0], wire.Message) else b""
            self._report("handler", topic, args[0].sender if topic else "-", exc)

    def _report(self, kind, topic: bytes, sender, exc):
        """Log and publish on error.NAME, at most once a second per (kind, code)."""
        code, reason = describe_rejection(exc)
        if kind == "handler":
            code = "handler_error"
        key = (kind, code)
        now = time.monotonic()
        if kind == "rejected":
            self._log_refusal(key, now, topic, sender, reason)
        window = self._errors_window.get(key)
        if window and now - window[0] < 1.0:
            window[1] += 1
            return
        self._errors_window[key] = [now, 0]
        self.publish(f"error.{self.keys.name}", {
            "kind": kind, "topic": topic[:255].decode(errors="replace").rstrip("."), "sender": sender,
            "code": code, "reason": reason, "suppressed": window[1] if window else 0})

    def _log_refusal(self, key, now, topic, sender, reason):
        """One WARNING per (kind, code) per LOG_INTERVAL; the others are counted and summarised
        when the interval is over (at the next refusal, or by :meth:`_summarise_refusals`)."""
        window = self._log_window.get(key)
        if window is not None and now - window[0] < self.log_interval:
            window[1] += 1
            return
        if window is not None and window[1]:
            self._log_summary(key, window, now)
        self._log_window[key] = [now, 0]
        log.warning("refused %s from %s: %s (%s)", topic[:80].decode(errors="replace"), sender, reason, key[1])

    def _log_summary(self, key, window, now):
        log.warning("refused %d more messages (%s) in the last %.0f s", window[1], key[1], now - window[0])

    def _summarise_refusals(self):
        now = time.monotonic()
        for key, window in list(self._log_window.items()):
            if now - window[0] >= self.log_interval:
                if window[1]:
                    self._log_summary(key, window, now)
                del self._log_window[key]

    # -- tokens, revocations, keys ------------------------------------------

    def _vault_message(self, msg):
        refusal = self.session.vault_message(msg)
        if refusal is not None:
            self._report("rejected", msg.topic_bytes, msg.sender, refusal)

    def _token_installed(self):
        while self.outbox and self.proxy.token_valid():
            self.publish(*self.outbox.popleft())
        outside = self.dispatch.outside(self.proxy.token.subscribe)
        said = {(p, getattr(fn, "__qualname__", repr(fn))) for p, fn in outside}
        if said and said != self._outside_said:  # once per change (tokens are renewed every few minutes)
            log.error("handler(s) %s are outside %s's subscribe grants: the broker passes no message to "
                      "them (grant the topics in policy.toml, or remove the handlers)",
                      ", ".join(f"{name} on {p.decode().rstrip('.') or '(all)'}" for p, name in sorted(said)),
                      self.keys.name)
        self._outside_said = said

    def _maybe_request_token(self):
        frames = self.session.token_step()
        if frames is not None:
            self.pub.send_multipart(frames)

    def _check_key_rotation(self):
        if self.session.keys_rotated():
            self._close_sockets()
            self._open_sockets()

    def _monitor_events(self):
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                again = self._was_connected
                if again:
                    # The broker cuts us off when our key or grants change: renew the token so its
                    # grants follow the current policy.
                    log.info("reconnected to the broker; renewing the token")
                    self.session.reconnected()
                self.connected = self._was_connected = True
                self._backoff = 1.0
                if again:
                    self._each_part("reconnected", "reconnected")
            elif kind == zmq.EVENT_DISCONNECTED:
                self.connected = False
            elif kind in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                          zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                # A refused handshake is final for a libzmq socket: start over later.
                delay = self._backoff * random.uniform(0.8, 1.2)
                self._backoff = min(self._backoff * 2, 60.0)
                log.error("handshake with the broker failed: our key unknown or revoked, or the broker's "
                          "public key we pin is not its current one (after `dctrl keys rotate broker`, "
                          "update broker_public_key): retrying in %.1f s", delay)
                self._close_sockets()
                self._reconnect_at = time.monotonic() + delay
                return

    def _heartbeat(self):
        status, detail = self._health()
        tok = self.proxy.token
        self.publish(f"health.{self.keys.name}", {
            "name": self.keys.name, "role": self.actor.role, "version": VERSION, "pid": os.getpid(),
            "uptime": int(time.monotonic() - self.started), "interval": self.settings.heartbeat_interval,
            "token_exp": tok.expires_at if tok else None, "status": status, "detail": detail,
            "counters": dict(self.counters),
        })

    def _shutdown(self):
        if self._stop_signal is not None:
            log.info("%s stopping (%s)", self.keys.name, signal.Signals(self._stop_signal).name)
        else:
            log.info("%s stopping", self.keys.name)
        self._teardown_parts()
        self.pool.shutdown(wait=True, cancel_futures=False)
        self._run_crossthread()
        self._guarded(self.proxy.replay.flush, "replay_flush", True)
        self._close_sockets()
        self.ctx.term()
        with self._wake_lock:
            # Marked gone before closed: a signal handler (no lock, this thread) that runs
            # between the two sees -1, never a closed number another file may get.
            r, w = self._wake_r, self._wake_w
            self._wake_w = -1
            self._wake_r = -1
            os.close(w)
            os.close(r)
