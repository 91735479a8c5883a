"""SubscriptionMgr: an XSUB/XPUB broker that checks every message and subscription.

* Transport: both sockets are CURVE servers with the broker's key. A ZAP
  authenticator on the same context admits only valid keys of the registry
  and names the identity as the connection's ``User-Id``
  (``ZAP_ENFORCE_DOMAIN`` on, so no handler means no entry).
* Publish ACL: each message on XSUB must be exactly two frames and its topic
  frame must be granted to the publisher's ``User-Id``; else it is dropped and
  ``broker.denied`` says why. ``vault.req.NAME`` is granted to NAME alone,
  whatever the policy says (the Vault rations requests by NAME unverified).
  The loop works frame by frame with bound methods and pyzmq's C-level send,
  and caches the per-identity topic verdicts.
* Publish limits: each identity has a token bucket (``[broker] publish_rate``
  messages per second, ``publish_burst`` at once; roles in
  ``publish_unlimited_roles`` have none). An envelope that cannot be valid
  (shorter than the smallest valid header plus a signature, longer than
  ``wire.MAX_ENVELOPE``) is dropped, and so is one whose header ``src`` is not
  the connection's ``User-Id``: an identity cannot republish another's signed
  messages on a topic both may publish. The check reads the header bytes where
  ``wire.pack_payload`` puts them (a slice compare); only a payload laid out
  otherwise is parsed, and only up to its ``src``.
* Subscribe ACL: XPUB runs with ``XPUB_MANUAL``; a subscription is applied
  only within the subscriber's grants (``b""`` is narrowed to them). XSUB
  subscribes to everything once; individual (un)subscriptions never go
  upstream. Anything else a subscriber sends is dropped.
* Subscription limits: a prefix longer than ``wire.MAX_TOPIC`` can never match
  and is refused; an identity holds at most ``[broker] max_subscriptions``
  distinct prefixes over all its connections, and a connection past twice that
  many refused subscriptions is cut off (libzmq keeps each prefix a peer sent,
  refused or not, until its connection ends). The broker counts, per identity
  and prefix, the subscriptions applied less the unsubscriptions, explicit or
  made up by XPUB for a departed peer (once per prefix the peer held). Those
  carry no ``User-Id``: one is charged to the identity holding the prefix, or
  to every holder when several identities hold it (a count then errs low, by
  at most the prefixes an identity shares with others). ``health.broker``
  counts what is held.
* Hot reload: the registry and policy are re-read when their files change.
  Only the connections concerned are cut off, never the whole bus: a
  connection whose key stopped being valid (revoked, or a rotated key past its
  grace), and the subscribing connections of an identity whose grants changed
  (it reconnects, renews its token with the new grants and subscribes again).
  The ZAP handler puts the connection's key on every message (``X-Key``
  metadata); subscription frames carry the connection's fd, so the broker
  knows each subscribing connection's identity, key and peer address, and a
  publishing connection with a lost key is found by its next message. Cutting
  off is ``shutdown()`` of that TCP socket under libzmq, checked against the
  recorded peer address so a reused fd is left alone. An edit that cannot be
  applied leaves the previous files in force, and ``health.broker`` says so
  (``degraded``, why in its detail) until the files are fixed.

The broker is also an identity on its own bus: it asks the Vault for a token
(its request goes straight out of XPUB), catches the reply on XSUB, and signs
its ``broker.denied`` and ``health.broker`` events like any actor.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import signal
import socket
import struct
import time

import msgpack
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from keys.bus import next_boot
from keys.files import file_stamp
from keys.home import Home
from keys.identity import IdentityKeys
from keys.policy import Policy, load_registry_and_policy
from keys.registry import Registry
from proto import wire
from proto.authproxy import AuthProxy, NoToken
from proto.errors import ConfigError, DctrlError
from proto.version import VERSION  # the package metadata (setup.cfg)

log = logging.getLogger(__name__)

ZAP_DOMAIN = "dctrl"
USER_ID = b"User-Id"
X_KEY = b"X-Key"  # ZAP metadata on every message: the connection's Curve key (z85), see RegistryAuthenticator
DRAIN = 2000  # messages per poll wake-up before looking at the other socket
SUBSCRIPTION_FRAME_MAX = 1024  # bytes; a useful one is at most 1 + wire.MAX_TOPIC
# Messages queued per peer and direction; beyond it the XPUB drops what a lagging subscriber has
# not taken (uncounted), and the XSUB stops reading the publisher (TCP pushes back).
PEER_QUEUE = 100_000

# The header as wire.pack_payload lays it out: a map of 8, "v": 1, "id": bin8 of 16 bytes
# (at 9..25), then "src" and the sender's name. Anything else takes the slow path.
HEAD = b"\x88\xa1v\x01\xa2id\xc4\x10"
SRC_AT = len(HEAD) + wire.MSG_ID_LEN
# The smallest envelope a receiver could accept: the 8 header keys with the shortest values.
MIN_ENVELOPE = len(wire.pack_payload("a", 0, 0, None, {}, msg_id=bytes(wire.MSG_ID_LEN), ts_ms=0)) + wire.SIG_LEN
_HEADER_LIMITS = dict(max_str_len=wire.MAX_ENVELOPE, max_bin_len=wire.MAX_ENVELOPE, max_array_len=4096,
                      max_map_len=1024, max_ext_len=0)


def _malloc_trim():
    """Hand freed heap back to the system (libzmq's subscription tries of a departed peer are
    freed into malloc's arenas, which glibc keeps otherwise)."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc(0)


_libc = None
_send = zmq.backend.Socket.send  # pyzmq's C-level send, without the Python wrapper around it


class _Peer:
    """What the broker keeps per publishing identity: topic verdicts, the expected header
    bytes for its ``src``, and its publish token bucket."""

    __slots__ = ("verdicts", "tag", "tokens", "stamp", "rate", "burst", "suspect")

    def __init__(self, uid, rate, burst, now, suspect=False):
        self.suspect = suspect  # some key of uid stopped being valid: check each message's key
        self.verdicts: dict[bytes, bool] = {}
        self.tag = b"\xa3src" + msgpack.packb(uid)
        if rate > 0:
            self.rate, self.burst = float(rate), float(max(burst, 1))
        else:  # not limited
            self.rate, self.burst = 0.0, float("inf")
        self.tokens, self.stamp = self.burst, now


def envelope_problem(uid: str, buf, max_envelope=wire.MAX_ENVELOPE) -> tuple[str, str] | None:
    """``(code, reason)`` if the envelope ``buf`` cannot be a valid message from ``uid``.

    Reads only up to the header's ``src``; the rest (signature, token, body) is the
    receivers' to check."""
    n = len(buf)
    if n < MIN_ENVELOPE:
        return "bad_envelope", f"envelope of {n} bytes is shorter than the smallest valid one ({MIN_ENVELOPE})"
    if n > max_envelope:
        return "too_large", f"envelope of {n} bytes exceeds {max_envelope} ([bus] max_message_bytes)"
    try:
        u = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=n, **_HEADER_LIMITS)
        u.feed(buf[:-wire.SIG_LEN])
        size = u.read_map_header()
        if size != len(wire.HEADER_KEYS):
            return "bad_envelope", f"payload is a map of {size} keys, not the {len(wire.HEADER_KEYS)} header keys"
        for _ in range(size):
            if u.unpack() == "src":
                src = u.unpack()
                break
            u.skip()
        else:
            return "bad_envelope", "payload has no src"
    except Exception as exc:  # msgpack raises many types
        return "bad_envelope", f"payload header is not msgpack ({type(exc).__name__})"
    if src != uid:
        return "wrong_src", f"envelope src {str(src)[:40]!r} is not the connection's identity {uid}"
    return None


class AddressInUse(ConfigError):
    """The broker's port is another process's (another home on the same ports?)."""

    code = "address_in_use"


def _port_holder(endpoint) -> str:
    """``in use by pid 42: dctrl run broker --home /srv/a``, as far as /proc tells."""
    from urllib.parse import urlsplit

    from keys.procinfo import port_holder

    try:
        port = urlsplit(endpoint).port
    except ValueError:
        port = None
    return f"in use by {port_holder(port)}" if port else "in use"


class RegistryAuthenticator(ThreadAuthenticator):
    """ZAP handler: admits valid registry keys; the User-Id is the identity name."""

    def __init__(self, context, broker: "Broker"):
        super().__init__(context, log=logging.getLogger("broker.zap"))
        self.broker = broker

    def callback(self, domain, z85_key: bytes) -> bool:
        key = self.broker.registry.by_curve(z85_key)
        if key is None:
            self.broker.refusals.put(z85_key.decode(errors="replace"))
        return key is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85_key = z85.encode(client_public_key)
        key = self.broker.registry.by_curve(z85_key)
        self._granted_key = z85_key  # for the reply this handshake gets next, in this same thread
        return key.name if key else "?"

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        """pyzmq's reply, plus the connection's key as the ``X-Key`` metadata property: libzmq
        puts it on every message of the connection, so the broker knows which key (of several
        versions of one identity) a connection holds and can cut off exactly that one."""
        key, self._granted_key = getattr(self, "_granted_key", None), None
        if status_code != b"200" or key is None:
            return super()._send_zap_reply(request_id, status_code, status_text, user_id)
        user = user_id.encode() if isinstance(user_id, str) else user_id
        metadata = bytes([len(X_KEY)]) + X_KEY + struct.pack(">I", len(key)) + key  # ZMTP property
        self.zap_socket.send_multipart([b"1.0", request_id, status_code, status_text, user, metadata])


class Broker:
    def __init__(self, home: Home, *, name="broker"):
        self.home = home
        cfg = home.config
        self.bus = cfg["bus"]
        self.reload_interval = cfg["broker"]["reload_interval"]
        self.denied_rate = cfg["broker"]["denied_events_per_second"]
        self.max_subscriptions = cfg["broker"]["max_subscriptions"]
        self.publish_rate = cfg["broker"]["publish_rate"]
        self.publish_burst = cfg["broker"]["publish_burst"]
        self.unlimited_roles = frozenset(cfg["broker"]["publish_unlimited_roles"])
        self.max_envelope = min(wire.MAX_ENVELOPE, self.bus["max_message_bytes"])
        self.heartbeat_interval = cfg["runtime"]["heartbeat_interval"]
        self.keys = IdentityKeys.load(home.key_file(name))
        self.registry = Registry.load(home.registry_path)
        self.policy = Policy.load(home.policy_path)
        self._stamps = (file_stamp(home.registry_path), file_stamp(home.policy_path))
        self._valid = self._valid_keys()
        self._key_expiry = self.registry.next_expiry()
        self.proxy = AuthProxy(self.keys, home.vault_public, next_boot(home.boot_file(name)))
        self.refusals: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._peers: dict[str, _Peer] = {}  # publishing identity -> its verdicts, src tag, bucket
        self._subs: dict[str, dict[bytes, int]] = {}  # subscribing identity -> prefix -> subscriptions
        self._holders: dict[bytes, set[str]] = {}  # prefix -> the identities holding it
        self._n_subs = 0
        # subscribing connections, from their subscription frames: fd -> [identity, key, peer
        # address, refused subscriptions] (to cut one off without touching the others)
        self._conns: dict[int, list] = {}
        self._lost: frozenset[tuple[str, bytes]] = frozenset()  # (identity, key) no longer valid
        self._trim_due = False
        self._denied_window: dict[tuple, list] = {}
        self.counters = {"forwarded": 0, "denied_publish": 0, "denied_subscribe": 0,
                         "refused_connect": 0, "malformed": 0, "reloads": 0, "cut_off": 0,
                         "rate_limited": 0, "bad_envelope": 0, "wrong_src": 0, "too_large": 0}
        self.started = time.monotonic()
        self.stopping = False
        self.not_applied = None  # why the last edit of registry.json or policy.toml was refused (health)
        self.ctx = None

    # -- sockets --------------------------------------------------------------

    def _server_socket(self, kind):
        s = self.ctx.socket(kind)
        s.linger = 0
        s.curve_server = True
        s.curve_secretkey = self.keys.curve_secret
        s.curve_publickey = self.keys.curve_public
        s.zap_domain = ZAP_DOMAIN.encode()
        s.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        # libzmq cuts a peer off, silently, for a frame over this: twice the bus limit on XSUB
        # (the broker drops and reports a frame between the two, the connection stays); on
        # XPUB, where peers send only subscriptions, enough for a refused over-long prefix
        # (every prefix a peer sends is kept by libzmq until it leaves: keep them small).
        s.maxmsgsize = 2 * self.bus["max_message_bytes"] if kind == zmq.XSUB else SUBSCRIPTION_FRAME_MAX
        s.heartbeat_ivl = self.bus["heartbeat_ivl_ms"]
        s.heartbeat_timeout = self.bus["heartbeat_timeout_ms"]
        s.handshake_ivl = self.bus["handshake_ivl_ms"]
        s.sndhwm = s.rcvhwm = PEER_QUEUE
        return s

    def start(self):
        self.ctx = zmq.Context()
        self.auth = RegistryAuthenticator(self.ctx, self)
        self.auth.start()  # before any bind: without a ZAP handler CURVE admits every key
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.auth)
        self.xsub = self._server_socket(zmq.XSUB)
        self.xpub = self._server_socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        self._bind(wait=0)  # a port taken at start is another broker's: say so now, no retry
        self.xsub.send(b"\x01")  # everything, once; subscriptions are never forwarded upstream
        self.poller = zmq.Poller()
        self.poller.register(self.xsub, zmq.POLLIN)
        self.poller.register(self.xpub, zmq.POLLIN)
        log.info("broker up: listening on %s (publish) and %s (subscribe), %d identities",
                 self._listen("publish_endpoint"), self._listen("subscribe_endpoint"), len(self.registry.names()))

    def _listen(self, key) -> str:
        """Where to bind for ``[bus] key``: the endpoint, with its host replaced by ``[bus]
        listen`` when set (``0.0.0.0`` or the LAN address, so machines can reach the broker;
        local actors still connect to the endpoint)."""
        endpoint, host = self.bus[key], self.bus.get("listen")
        if not host:
            return endpoint
        scheme, rest = endpoint.split("://", 1)
        return f"{scheme}://{host}:{rest.rsplit(':', 1)[1]}"

    def _bind(self, wait=5.0):
        for sock, key in ((self.xsub, "publish_endpoint"), (self.xpub, "subscribe_endpoint")):
            endpoint = self._listen(key)
            deadline = time.monotonic() + wait
            while True:
                try:
                    sock.bind(endpoint)
                    break
                except zmq.ZMQError as exc:  # unbind is asynchronous: the port frees shortly
                    if exc.errno != zmq.EADDRINUSE:
                        raise
                    if time.monotonic() > deadline:
                        raise AddressInUse(f"broker: cannot listen on {endpoint} ([bus] {key}): "
                                           f"{_port_holder(endpoint)}") from None
                    time.sleep(0.02)

    def cut_off(self, fd: int, why: str, peer=None) -> bool:
        """End one connection by shutting its TCP socket down under libzmq, which then closes it
        as if the peer had gone (XPUB unsubscribes what it held; the peer reconnects and must
        handshake again). ``peer``: the address the connection had when recorded; a different
        one means the fd was closed and reused for another connection, which is left alone."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return False
        try:
            if peer is not None and sock.getpeername() != peer:
                return False
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # gone already
            return False
        finally:
            sock.detach()  # the fd stays libzmq's
        self.counters["cut_off"] += 1
        log.warning("cut off a connection (fd %d): %s", fd, why)
        return True

    def close(self):
        if self.ctx is None:
            return
        for s in (self.xsub, self.xpub):
            s.close(linger=0)
        self.auth.stop()
        self.ctx.term()
        self.ctx = None

    # -- the loop -------------------------------------------------------------

    def run(self):
        if self.ctx is None:
            self.start()
        if hasattr(signal, "SIGTERM"):
            try:
                signal.signal(signal.SIGTERM, lambda *_: self.stop())
            except ValueError:  # not the main thread (tests run brokers in threads)
                pass
        next_reload = next_token = next_health = 0.0
        poll = self.poller.poll
        xsub = self.xsub
        try:
            while not self.stopping:
                for sock, _ in poll(100):
                    if sock is xsub:
                        self._drain_publish()
                    else:
                        self._drain_subscriptions()
                now = time.monotonic()
                if now >= next_reload:
                    next_reload = now + self.reload_interval
                    self._maybe_reload()
                    self._report_refusals()
                    if self._trim_due:
                        self._trim_due = False
                        _malloc_trim()
                if now >= next_token:
                    next_token = now + self._token_step()
                if now >= next_health:
                    next_health = now + self.heartbeat_interval
                    self._publish_health()
        finally:
            self.close()
        log.info("broker stopped")

    def stop(self):
        self.stopping = True

    def _drain_publish(self):
        recv, xpub = self.xsub.recv, self.xpub
        send = _send  # the C method: its Python wrapper cost 0.9 of the loop's 5.1 µs a message
        peers = self._peers
        token_topic = self._token_topic
        NOBLOCK, SNDMORE = zmq.NOBLOCK, zmq.SNDMORE
        head, src_at, min_env, max_env = HEAD, SRC_AT, MIN_ENVELOPE, self.max_envelope
        now = time.monotonic()
        forwarded = 0
        for _ in range(DRAIN):
            try:
                f0 = recv(NOBLOCK, copy=False)
            except zmq.Again:
                break
            if not f0.more:
                self._deny_frames(f0, "a message must have 2 frames, got 1")
                continue
            f1 = recv(copy=False)
            if f1.more:
                n = 2
                while recv(copy=False).more:
                    n += 1
                self._deny_frames(f0, f"a message must have 2 frames, got {n + 1}")
                continue
            uid = f0.get(USER_ID)
            topic = f0.bytes
            peer = peers.get(uid)
            if peer is None:
                peer = self._peer(uid, now)
            if peer.suspect and self._lost_key(uid, f0):
                continue
            if peer.stamp != now:  # refill the bucket once per drain
                peer.tokens = min(peer.burst, peer.tokens + (now - peer.stamp) * peer.rate)
                peer.stamp = now
            if peer.tokens < 1.0:
                self.counters["rate_limited"] += 1
                self.deny(uid, "publish", topic, "rate_limited",
                          f"{uid} is over its publish rate ({self.publish_rate:g}/s, burst {self.publish_burst:g})")
                continue
            peer.tokens -= 1.0
            verdicts = peer.verdicts
            ok = verdicts.get(topic)
            if ok is None:
                ok = self._may_publish(uid, topic)
                if len(topic) <= wire.MAX_TOPIC:  # never keep a long junk topic
                    if len(verdicts) > 10_000:
                        verdicts.clear()
                    verdicts[topic] = ok
            if not ok:
                self.counters["denied_publish"] += 1
                if len(topic) > 255 or not topic.endswith(b"."):
                    self.deny(uid, "publish", topic, "bad_topic", "topic frame must be dot-terminated, at most 255 bytes")
                else:
                    self.deny(uid, "publish", topic, "not_granted", f"{uid} may not publish this topic")
                continue
            env = f1.bytes  # one copy (measured cheaper than a memoryview and its slices)
            if not (min_env <= len(env) <= max_env and env.startswith(head) and env.startswith(peer.tag, src_at)):
                problem = envelope_problem(uid, env, max_env)
                if problem is not None:
                    self.counters[problem[0]] += 1
                    self.deny(uid, "publish", topic, *problem)
                    continue
            send(xpub, topic, SNDMORE)  # a short copy beats sending the frame object
            send(xpub, f1, 0, False)
            forwarded += 1
            if topic == token_topic:
                self._token_reply(f0, f1)
        self.counters["forwarded"] += forwarded

    def _peer(self, uid, now) -> _Peer:
        try:
            role = self.registry.role(uid)
        except DctrlError:
            role = None
        rate = 0 if role in self.unlimited_roles else self.publish_rate
        suspect = any(name == uid for name, _ in self._lost)
        peer = self._peers[uid] = _Peer(uid, rate, self.publish_burst, now, suspect)
        return peer

    def _lost_key(self, uid, frame) -> bool:
        """Whether ``frame`` came over a connection whose key is no longer valid (it is then cut
        off): the publishing side of a revoked key, or of a rotated one past its grace."""
        try:
            key = frame.get(X_KEY).encode()
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return False
        if (uid, key) not in self._lost:
            return False
        self.counters["denied_publish"] += 1
        self.cut_off(fd, f"{uid} publishes with a key no longer valid")
        return True

    def _may_publish(self, uid, topic: bytes) -> bool:
        if len(topic) > 255 or not topic.endswith(b"."):
            return False
        if topic.startswith(b"vault.req.") and topic != b"vault.req.%s." % uid.encode():
            # whatever the policy grants: the Vault rations requests by this NAME before it
            # can verify them, so another identity's would spend NAME's allowance
            return False
        try:
            grants = self.policy.grants(uid, self.registry.role(uid))
        except DctrlError:
            return False
        return grants.may_publish(topic)

    def _deny_frames(self, f0, reason):
        self.counters["malformed"] += 1
        try:
            uid = f0.get("User-Id")
        except zmq.ZMQError:
            uid = "?"
        self.deny(uid, "publish", f0.bytes[:64], "bad_frames", reason)

    def _drain_subscriptions(self):
        recv = self.xpub.recv_multipart
        for _ in range(DRAIN):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            data = frames[0].bytes
            if len(frames) != 1 or not data or data[0] not in (0, 1):
                log.debug("dropped a non-subscription message from a subscriber")
                continue
            subscribe, prefix = data[0] == 1, data[1:]
            try:
                uid = frames[0].get("User-Id")
            except zmq.ZMQError:
                # XPUB's own unsubscribes for a departed peer: nothing to forward, but what
                # the broker keeps for that prefix goes
                if not subscribe:
                    self._forget(prefix)
                continue
            if subscribe:
                self._subscribe(uid, prefix, frames[0])
            else:
                self._unsubscribe(uid, prefix)

    def _conn(self, frame, uid):
        """``(fd, record)`` of the subscribing connection ``frame`` came over; the record is
        made anew when the fd now holds another connection (another peer address)."""
        try:
            fd = frame.get(zmq.SRCFD)
            key = frame.get(X_KEY).encode()
        except zmq.ZMQError:
            return None, None
        try:
            sock = socket.socket(fileno=fd)
            try:
                peer = sock.getpeername()
            finally:
                sock.detach()
        except OSError:
            peer = None
        rec = self._conns.get(fd)
        if rec is None or rec[:3] != [uid, key, peer]:
            rec = self._conns[fd] = [uid, key, peer, 0]
        return fd, rec

    def _refused(self, uid, frame):
        """Count a refused subscription on its connection. libzmq's XPUB keeps every prefix a
        peer sent, refused or not, until the connection ends: past twice ``max_subscriptions``
        refusals the connection is cut off, which frees them (so libzmq holds at most three
        times ``max_subscriptions`` prefixes of at most 1024 bytes for a connection)."""
        fd, rec = self._conn(frame, uid)
        if rec is None:
            return
        rec[3] += 1
        if rec[3] > 2 * self.max_subscriptions and self.cut_off(
                fd, f"{uid} sent more than {2 * self.max_subscriptions} refused subscriptions", rec[2]):
            del self._conns[fd]

    def _subscribe(self, uid, prefix: bytes, frame=None):
        held = self._subs.get(uid)
        if held is None or prefix not in held:
            if len(prefix) > wire.MAX_TOPIC:
                self.counters["denied_subscribe"] += 1
                self.deny(uid, "subscribe", prefix[:64], "too_long",
                          f"a prefix of {len(prefix)} bytes can never match a topic (at most {wire.MAX_TOPIC})")
                self._refused(uid, frame)
                return
            if held is not None and len(held) >= self.max_subscriptions:
                self.counters["denied_subscribe"] += 1
                self.deny(uid, "subscribe", prefix, "too_many",
                          f"{uid} holds {len(held)} subscriptions, the most allowed ([broker] max_subscriptions)")
                self._refused(uid, frame)
                return
        try:
            grants = self.policy.grants(uid, self.registry.role(uid))
            applied = grants.subscription(prefix)
        except DctrlError:
            applied = ()
        if not applied:
            self.counters["denied_subscribe"] += 1
            self.deny(uid, "subscribe", prefix, "not_granted", f"{uid} may not subscribe this prefix")
            self._refused(uid, frame)
            return
        if frame is not None:
            self._conn(frame, uid)  # known, to be cut off alone when its key or grants change
        for p in applied:
            self.xpub.setsockopt(zmq.SUBSCRIBE, p)  # applies to the pipe of the frame just received
        if held is None:
            held = self._subs[uid] = {}
        count = held.get(prefix, 0)
        held[prefix] = count + 1  # per connection holding it: one more unsubscription frees it
        if count == 0:
            self._holders.setdefault(prefix, set()).add(uid)
            self._n_subs += 1
            n = len(held)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s subscribed %r%s", uid, prefix.decode(errors="replace"),
                          "" if applied == (prefix,) else f" (narrowed to {[p.decode() for p in applied]})")
            elif n in (1, 10, 100) or n % 1000 == 0:  # a summary, not a line per prefix
                log.info("%s holds %d subscription%s", uid, n, "" if n == 1 else "s")

    def _unsubscribe(self, uid, prefix: bytes):
        try:
            applied = self.policy.grants(uid, self.registry.role(uid)).subscription(prefix)
        except DctrlError:
            applied = ()
        for p in applied:
            self.xpub.setsockopt(zmq.UNSUBSCRIBE, p)
        self._release(uid, prefix)

    def _forget(self, prefix: bytes):
        """A peer left holding ``prefix`` (XPUB says which prefix, not whose)."""
        for uid in tuple(self._holders.get(prefix, ())):
            self._release(uid, prefix)
        self._trim_due = True

    def _release(self, uid, prefix):
        held = self._subs.get(uid)
        count = held.get(prefix) if held is not None else None
        if count is None:
            return
        if count > 1:
            held[prefix] = count - 1
            return
        del held[prefix]
        self._n_subs -= 1
        if not held:
            del self._subs[uid]
        holders = self._holders.get(prefix)
        if holders is not None:
            holders.discard(uid)
            if not holders:
                del self._holders[prefix]

    # -- broker.denied --------------------------------------------------------

    def deny(self, identity, direction, topic: bytes, code, reason):
        """Log and publish a refusal, at most ``denied_rate`` events per second per kind: per
        identity, direction and code; a refused handshake per code alone (its key is the
        stranger's to choose, so keying on it would let a stranger write without limit)."""
        if isinstance(topic, bytes):
            topic_s = topic[:wire.MAX_TOPIC + 1].decode("utf-8", errors="replace").rstrip(".")
        else:
            topic_s = topic[:wire.MAX_TOPIC + 1]
        key = (direction, code) if direction == "connect" else (identity, direction, code)
        now = time.monotonic()
        window = self._denied_window.get(key)
        if window and now - window[0] < 1.0 / self.denied_rate:
            window[1] += 1
            return
        suppressed = window[1] if window else 0
        self._denied_window[key] = [now, 0]
        if len(self._denied_window) > 10_000:
            self._denied_window.clear()
        log.warning("denied %s %s %r: %s (%s)%s", direction, identity, topic_s, reason, code,
                    f", {suppressed} similar suppressed" if suppressed else "")
        self.emit("broker.denied", {"identity": str(identity)[:64], "direction": direction,
                                    "topic": topic_s[:255], "code": code, "reason": reason,
                                    "suppressed": suppressed})

    def _report_refusals(self):
        while True:
            try:
                key = self.refusals.get_nowait()
            except queue.Empty:
                return
            self.counters["refused_connect"] += 1
            self.deny(f"key:{key[:12]}", "connect", b"", "unknown_key",
                      "handshake refused: key unknown, revoked or past its grace period")

    # -- our own identity on the bus -----------------------------------------

    @property
    def _token_topic(self) -> bytes:
        return b"vault.token.%s." % self.proxy.name.encode()

    def emit(self, topic, body):
        """Publish a signed event straight out of XPUB."""
        try:
            frames = self.proxy.seal(topic, body)
        except NoToken:
            log.debug("no token yet; %s not published", topic)
            return
        self.xpub.send_multipart(frames)

    def _token_step(self) -> float:
        """Ask for a token when due; returns seconds until the next check."""
        due = self.proxy.renew_in()
        if due > 0:
            return min(due, 5.0)
        self.xpub.send_multipart(self.proxy.request("token"))
        return 1.0 + random.random()  # retry with jitter until the Vault answers

    def _token_reply(self, f0, f1):
        try:
            msg = self.proxy.open([f0.bytes, f1.bytes])
            tok = self.proxy.accept_token_reply(msg)
            if tok is None:
                return
            log.info("token received, expires in %d s", tok.expires_at - time.time())
        except DctrlError as exc:
            log.warning("token reply refused: %s", exc)

    def _publish_health(self):
        tok = self.proxy.token
        self.emit("health.broker", {
            "name": self.proxy.name, "role": "actor", "version": VERSION, "pid": os.getpid(),
            "uptime": int(time.monotonic() - self.started), "interval": self.heartbeat_interval,
            "token_exp": tok.expires_at if tok else None, "status": "degraded" if self.not_applied else "ok",
            "detail": self.not_applied,
            "counters": {**self.counters, "subscriptions": self._n_subs, "subscribing_identities": len(self._subs)},
        })

    # -- hot reload -----------------------------------------------------------

    def _maybe_reload(self):
        stamps = (file_stamp(self.home.registry_path), file_stamp(self.home.policy_path))
        expired = self._key_expiry is not None and time.time() >= self._key_expiry
        if stamps == self._stamps and not expired:
            return
        registry, policy, self.not_applied = load_registry_and_policy(self.home.registry_path, self.home.policy_path)
        if self.not_applied:
            log.error("reload failed, keeping the previous keys and policy: %s", self.not_applied)
            self._stamps = stamps
            return
        policy_changed = stamps[1] != self._stamps[1]
        old_grants = self._all_grants() if policy_changed else None
        self.registry, self.policy, self._stamps = registry, policy, stamps
        self._peers.clear()
        self.counters["reloads"] += 1
        valid = self._valid_keys()
        lost, self._valid = self._valid - valid, valid
        self._lost = frozenset((n, k) for n, k in self._lost | lost if registry.by_curve(k) is None)
        self._key_expiry = registry.next_expiry()
        log.info("reloaded keys and policy (%d identities)", len(registry.names()))
        # Only the connections concerned are cut off (a rebind of both endpoints dropped every
        # peer's messages in flight): a key no longer valid, and an identity whose grants
        # changed, which reconnects, renews its token with the new grants and subscribes again.
        changed = set()
        if policy_changed:
            new_grants = self._all_grants()
            changed = {n for n in old_grants.keys() | new_grants.keys() if old_grants.get(n) != new_grants.get(n)}
            log.info("policy changed: the grants of %s", sorted(changed) or "no identity")
        for fd, (uid, key, peer, _) in list(self._conns.items()):
            if (uid, key) in self._lost or uid in changed:
                why = "its grants changed" if uid in changed else "its key is no longer valid"
                self.cut_off(fd, f"{uid}: {why}", peer)
                del self._conns[fd]

    def _all_grants(self) -> dict:
        grants = {}
        for name in self.registry.names():
            try:
                grants[name] = self.policy.grants(name, self.registry.role(name))
            except DctrlError:
                grants[name] = None
        return grants

    def _valid_keys(self):
        now = time.time()
        return {(k.name, k.curve) for n in self.registry.names()
                for k in self.registry.keys_of(n) if self.registry.is_valid(k, now)}
