"""The test kit: host an actor without sockets, and build only messages the bus would accept.

For tests only (as nameko ships ``worker_factory`` and gpiozero its
MockFactory). Nothing in the package imports this module, and a test checks
that no production entry point loads it (tests/test_testkit.py). It adds no
switch to the real :class:`~actors.runtime.Runtime`: the runtime verifies
every message as before; this module replaces the runtime, in a test, by one
that verifies nothing because every message it is given was built here.

:class:`Messages` builds a message as a receiver would see it after the bus:
the body is checked against the schema registry (``proto/topics.py``) and,
given the home, the sender against the policy's publish grants, then sealed
and signed into the two wire frames, and decoded again by the bus's own
decoder (:func:`proto.wire.decode`), so a test cannot hand a handler a body
the real bus would refuse (a missing key, a float, a wrong type, an unknown
topic, a bad sender name) and sees the types a receiver sees (bytes stay
bytes, tuples become lists).

:class:`FakeRuntime` hosts an actor (or several parts of one identity, as the
agent's) the way the Runtime does -- the same handler collection, checks and
prefix matching (:mod:`actors.dispatch`), setup in order, teardown in
reverse -- and:

* records what the actor publishes (:attr:`FakeRuntime.published`), each body
  checked against its schema as the real AuthProxy checks before sealing;
* runs ``@every`` jobs and ``call_later`` callbacks on a :class:`FakeClock`
  that only :meth:`FakeRuntime.advance` moves;
* runs ``blocking=True`` handlers inline (default) or queues them for
  :meth:`FakeRuntime.run_pool` (``blocking="pool"``), deterministically;
* records secret requests and lets the test answer them (:meth:`FakeRuntime.give_secret`);
* takes ``publish`` and ``call_soon`` from other threads (an actor's worker)
  into a queue the test pumps (:meth:`FakeRuntime.run_pending`, :meth:`FakeRuntime.wait_for`),
  as the real loop does.

Example::

    clock = FakeClock()
    rt = FakeRuntime(BusinessData(home, database=db, clock=clock.time), name="business_data", clock=clock)
    rt.start()
    rt.send("cmd.business.machine.add", {"id": os.urandom(16), "expires": int(clock.time()) + 60,
                                         "name": "vm1", "location": None}, sender="admin")
    assert rt.last("business.ack")["status"] == "done"
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import os
import threading
import time
import types

import msgpack
import nacl.signing

from proto import wire
from proto.errors import DctrlError, NotGranted, UnknownTopic
from proto.topics import REGISTRY

from .dispatch import Handlers, combined_health
from .runtime import Actor, Delivery

T0 = 1_800_000_000.0  # a fixed wall-clock start (2027-01-15)
_PARSED: dict = {}  # (class, path) -> (the file's stamp, Registry or Policy): for the grant check


class FakeClock:
    """Wall and monotonic time that move only when told (:meth:`advance`)."""

    def __init__(self, wall: float = T0, monotonic: float = 10_000.0):
        self.wall, self.mono = float(wall), float(monotonic)

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    @contextlib.contextmanager
    def patch(self, *modules):
        """Within the block, ``time.time`` and ``time.monotonic`` as seen by ``modules`` (which
        did ``import time``) are this clock; everything else of ``time`` is the real one."""
        fake = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
        fake.time, fake.monotonic = self.time, self.monotonic
        saved = [(m, m.time) for m in modules]
        try:
            for m in modules:
                m.time = fake
            yield self
        finally:
            for m, real in saved:
                m.time = real


class Messages:
    """Builds messages as a handler receives them from the bus, refusing what the bus would refuse.

    Given a ``home``, a message is also refused (:class:`~proto.errors.NotGranted`) unless the
    sender's registered role and ``policy.toml`` grant it the topic, as the broker checks every
    publish; ``bypass_broker=True`` builds one anyway, to test an actor's own check of the sender
    (a message only a broken or bypassed broker would deliver)."""

    def __init__(self, schemas=REGISTRY, clock=time.time, home=None):
        self.schemas = schemas
        self.clock = clock
        self.home = home
        self._keys: dict[str, nacl.signing.SigningKey] = {}
        self._seq = collections.Counter()

    def grant_check(self, topic: str, sender: str) -> None:
        if self.home is None:
            return
        from keys.policy import Policy
        from keys.registry import Registry

        try:
            role = self._loaded(Registry, self.home.registry_path).role(sender)
        except DctrlError:
            raise NotGranted(f"{sender} is not in the registry: the broker admits no such connection") from None
        if not self._loaded(Policy, self.home.policy_path).grants(sender, role).may_publish(wire.topic_frame(topic)):
            raise NotGranted(f"the policy does not let {sender} publish {topic}: the broker would drop it")

    def _loaded(self, cls, path):
        """``cls.load(path)``, parsed again only when the file changed (as the broker reloads it)."""
        st = os.stat(path)
        key = (cls, str(path))
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = _PARSED.get(key)
        if cached is None or cached[0] != stamp:
            if len(_PARSED) > 256:
                _PARSED.clear()
            cached = _PARSED[key] = (stamp, cls.load(path))
        return cached[1]

    def schema_check(self, topic: str, body: dict) -> None:
        schema = self.schemas.schema_for(topic)
        if schema is None:
            raise UnknownTopic(f"no schema for topic {topic}")
        schema.check(body)

    def frames(self, topic: str, body: dict, *, sender: str, boot: int = 1, seq: int | None = None,
               bypass_broker: bool = False) -> list[bytes]:
        """The two wire frames of ``body`` on ``topic`` from ``sender`` (schema-checked, signed)."""
        self.schema_check(topic, body)
        if not bypass_broker:
            self.grant_check(topic, sender)
        key = self._keys.get(sender)
        if key is None:
            key = self._keys[sender] = nacl.signing.SigningKey.generate()
        if seq is None:
            self._seq[sender] += 1
            seq = self._seq[sender]
        payload = wire.pack_payload(sender, boot, seq, None, body, ts_ms=int(self.clock() * 1000))
        return wire.seal(key, topic, payload)

    def build(self, topic: str, body: dict, *, sender: str, **kw) -> wire.Message:
        """A decoded :class:`proto.wire.Message`, as the runtime hands it to a handler."""
        frames = self.frames(topic, body, sender=sender, **kw)
        msg = wire.decode(frames)  # the bus's own decoder: types and limits as a receiver sees them
        wire.verify_signature(self._keys[sender].verify_key, msg)
        return msg


class _Revoked:
    """The AuthProxy's verifier as far as the Vault uses it: the revocations it was told of."""

    def __init__(self):
        self.revoked: dict[str, int] = {}

    def revoke(self, identity: str, up_to: int) -> None:
        self.revoked[identity] = max(up_to, self.revoked.get(identity, 0))


class _Proxy:
    """What actors read of the runtime's AuthProxy: the identity's name (and, for the Vault,
    the revocations its verifier applies)."""

    def __init__(self, name):
        self.name = name
        self.verifier = _Revoked()

    def token_valid(self) -> bool:
        return True


class HandlerFailed(AssertionError):
    """A handler, job or callback raised on the fake runtime (``raise_errors=True``)."""


class FakeRuntime:
    """Hosts ``actor`` (an Actor or an iterable of parts) as ``name`` without sockets (see the module doc)."""

    def __init__(self, actor, *, name: str, clock: FakeClock | None = None, schemas=REGISTRY,
                 blocking: str = "inline", raise_errors: bool = True, home=None):
        if blocking not in ("inline", "pool"):
            raise ValueError("blocking is 'inline' or 'pool'")
        self.parts = [actor] if isinstance(actor, Actor) else list(actor)
        self.actor = self.parts[0]
        self.clock = clock or FakeClock()
        self.schemas = schemas
        self.messages = Messages(schemas, clock=self.clock.time, home=home)  # home: the broker's grants too
        self.dispatch = Handlers(self.parts, schemas)  # the Runtime's own collection and checks
        self.handlers = self.dispatch.on
        self.proxy = _Proxy(wire.check_name(name))
        self.blocking, self.raise_errors = blocking, raise_errors
        self.published: list[tuple[str, dict]] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.secrets_requested: list[str] = []
        self.counters = collections.Counter(received=0, accepted=0, rejected=0, handler_errors=0, published=0)
        self.connected = True  # False: ready_to_publish() says no, as with no broker
        self.pool: collections.deque = collections.deque()  # blocking handlers waiting (blocking="pool")
        self._jobs = [[self.clock.monotonic() + s, s, fn] for s, fn in self.dispatch.every]
        self._later: list = []
        self._later_n = 0
        self._crossthread: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._loop_thread = threading.get_ident()
        self.started = False
        for part in self.parts:
            part.runtime = self

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> "FakeRuntime":
        self._loop_thread = threading.get_ident()
        for part in self.parts:
            part.setup()
        self.started = True
        self.run_pending()
        return self

    def stop(self) -> None:
        for part in reversed(self.parts):
            self._guarded(part.teardown, "teardown")
        self.run_pending()
        self.started = False

    def health(self) -> tuple[str, str | None]:
        if len(self.parts) == 1:
            return self.actor.health()
        return combined_health([p.health() for p in self.parts])

    def reconnect(self) -> None:
        """As after a broker restart: every part's ``reconnected()``."""
        for part in self.parts:
            self._guarded(part.reconnected, "reconnected")
        self.run_pending()

    # -- what actors call ----------------------------------------------------------

    def publish(self, topic: str, body: dict) -> bool:
        if threading.get_ident() != self._loop_thread:
            self.call_soon(self.publish, topic, body)
            return False
        self.messages.schema_check(topic, body)  # as the AuthProxy does before sealing
        # what a receiver gets: msgpack there and back (and the envelope's size limit)
        packed = wire.pack_payload(self.name, 1, 1, None, body)
        if len(packed) + wire.SIG_LEN > wire.MAX_ENVELOPE:
            raise wire.TooLarge(f"{topic}: an envelope of {len(packed) + wire.SIG_LEN} bytes")
        self.published.append((topic, msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False)))
        self.counters["published"] += 1
        return True

    def ready_to_publish(self) -> bool:
        return self.connected

    def add_handler(self, prefix: str, fn, *, blocking=False, raw=False) -> None:
        self.dispatch.add(prefix, fn, blocking, raw)

    def call_soon(self, fn, *args) -> None:
        with self._lock:
            self._crossthread.append((fn, args))

    def call_later(self, delay: float, fn, *args) -> None:
        self._later_n += 1
        heapq.heappush(self._later, (self.clock.monotonic() + delay, self._later_n, fn, args))

    def request_secret(self, name: str) -> None:
        """Recorded in :attr:`secrets_requested`; the test answers with :meth:`give_secret`."""
        self.secrets_requested.append(name)

    def give_secret(self, name: str, value: bytes | None = None, error: str | None = None) -> None:
        """The Vault's answer to a secret request: every part's ``on_secret``."""
        for part in self.parts:
            self._guarded(part.on_secret, "on_secret", name, value, error)
        self.run_pending()

    @property
    def name(self) -> str:
        return self.proxy.name

    # -- what tests call -------------------------------------------------------------

    def build(self, topic: str, body: dict, *, sender: str, **kw) -> wire.Message:
        return self.messages.build(topic, body, sender=sender, **kw)

    def send(self, topic: str, body: dict, *, sender: str, **kw) -> wire.Message:
        """Build a message (schema-checked) and deliver it; returns it (to deliver it again)."""
        msg = self.build(topic, body, sender=sender, **kw)
        self.deliver(msg)
        return msg

    def deliver(self, msg: wire.Message) -> None:
        """Hand an accepted message to every matching handler, as the Runtime does, then every
        part's ``after_batch`` and what other threads queued meanwhile."""
        self.counters["received"] += 1
        self.counters["accepted"] += 1
        frames = [msg.topic_bytes, msg.payload + msg.signature]
        for _, fn, blocking, raw in self.dispatch.matching(msg.topic_bytes):
            arg = Delivery(frames, msg, None) if raw else msg
            if blocking and self.blocking == "pool":
                self.pool.append((fn, arg))
            else:
                self._guarded(fn, "handler", arg)
        for part in self.parts:
            self._guarded(part.after_batch, "after_batch")
        self.run_pending()

    def run_pool(self) -> int:
        """Run the queued blocking handlers, in arrival order; returns how many ran."""
        n = 0
        while self.pool:
            fn, arg = self.pool.popleft()
            self._guarded(fn, "handler", arg)
            n += 1
        self.run_pending()
        return n

    def run_pending(self) -> int:
        """Run what other threads handed to the loop (``call_soon``, their ``publish``)."""
        n = 0
        while True:
            with self._lock:
                if not self._crossthread:
                    return n
                fn, args = self._crossthread.popleft()
            self._guarded(fn, "call_soon", *args)
            n += 1

    def wait_for(self, predicate, timeout: float = 5.0, what: str = "condition"):
        """Pump :meth:`run_pending` until ``predicate()`` is truthy (for actors with threads of
        their own, e.g. MachineMgr's vend worker); real time, not the fake clock."""
        deadline = time.monotonic() + timeout
        while True:
            self.run_pending()
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.002)

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, running every ``@every`` job and ``call_later``
        callback at the moment it falls due, in time order."""
        end = self.clock.monotonic() + seconds
        while True:
            due = [j[0] for j in self._jobs] + ([self._later[0][0]] if self._later else [])
            nxt = min(due, default=None)
            if nxt is None or nxt > end:
                break
            self.clock.advance(max(0.0, nxt - self.clock.monotonic()))
            if self._later and self._later[0][0] <= nxt:
                _, _, fn, args = heapq.heappop(self._later)
                self._guarded(fn, "call_later", *args)
            else:
                job = min(self._jobs, key=lambda j: j[0])
                job[0] = self.clock.monotonic() + job[1]
                self._guarded(job[2], "job")
            self.run_pending()
        self.clock.advance(max(0.0, end - self.clock.monotonic()))
        self.run_pending()

    def run_jobs(self) -> None:
        """Run every ``@every`` job once now (without moving the clock)."""
        for job in self._jobs:
            self._guarded(job[2], "job")
        self.run_pending()

    # -- reading what was published ------------------------------------------------------

    def topics(self) -> list[str]:
        return [t for t, _ in self.published]

    def bodies(self, topic: str, **match) -> list[dict]:
        """Bodies published on ``topic`` (exactly) whose items include ``match``."""
        return [b for t, b in self.published if t == topic and all(b.get(k) == v for k, v in match.items())]

    def last(self, topic: str, **match) -> dict:
        found = self.bodies(topic, **match)
        if not found:
            raise AssertionError(f"nothing published on {topic} matching {match}; published: {self.topics()}")
        return found[-1]

    def take(self) -> list[tuple[str, dict]]:
        """Everything published so far, forgotten here."""
        out, self.published = self.published, []
        return out

    # -- errors ------------------------------------------------------------------------

    def _guarded(self, fn, kind, *args):
        try:
            fn(*args)
        except Exception as exc:
            self.counters["handler_errors"] += 1
            self.errors.append((kind, exc))
            if self.raise_errors:
                raise HandlerFailed(f"{kind} {getattr(fn, '__qualname__', fn)} raised {exc!r}") from exc


__all__ = ["FakeClock", "FakeRuntime", "HandlerFailed", "Messages", "T0"]
