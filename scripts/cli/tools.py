"""Short-lived bus clients for the CLI: publish once, subscribe and print, status.

They run on the same :class:`~actors.runtime.Runtime` as every actor, so what
they show is exactly what an actor with that identity would see.
"""

from __future__ import annotations

import json
import os
import time

from actors.runtime import Actor, Delivery, Runtime, every, on
from proto.describe import describe_frames, jsonable


class PublishOnce(Actor):
    """Publishes one message as soon as it has a token, then stops."""

    def __init__(self, topic, body):
        self.topic, self.body, self.sent = topic, body, False

    def setup(self):
        self.publish(self.topic, self.body)

    @every(0.05)
    def done(self):
        if self.runtime.proxy.token_valid() and not self.runtime.outbox:
            self.sent = True
            self.runtime.stop()


class Subscriber(Actor):
    """Prints (or collects) every message under a prefix with its verdict."""

    def __init__(self, prefix, *, count=None, timeout=None, sink=print, json_lines=True):
        self.prefix, self.count, self.sink, self.json_lines = prefix, count, sink, json_lines
        self.deadline = time.monotonic() + timeout if timeout else None
        self.seen = 0

    def deliver(self, d: Delivery):
        """Raw handler on ``prefix`` (registered by :func:`run_subscriber`)."""
        rec = describe_frames(d.frames, d.message, d.error)
        self.seen += 1
        if self.json_lines:
            self.sink(json.dumps(rec, sort_keys=True))
        else:
            self.sink(f"{rec['verdict']:<8} {rec['topic']} from {rec['sender']}: "
                      f"{json.dumps(rec['body']) if rec['body'] is not None else rec['reason']}")
        if self.count and self.seen >= self.count:
            self.runtime.stop()

    @every(0.1)
    def check_timeout(self):
        if self.deadline and time.monotonic() >= self.deadline:
            self.runtime.stop()


def run_subscriber(settings, prefix, **kw) -> Subscriber:
    actor = Subscriber(prefix, **kw)
    rt = Runtime(actor, settings)
    rt.add_handler(prefix, actor.deliver, raw=True)
    rt.run(handle_signals=True)
    return actor


class StatusCollector(Actor):
    """Collects ``health.*`` heartbeats for a while."""

    def __init__(self, duration):
        self.until = time.monotonic() + duration
        self.latest: dict[str, dict] = {}

    @on("health")
    def beat(self, msg):
        if msg.body["pid"] == os.getpid() and msg.sender == self.name:
            return  # our own heartbeat
        self.latest[msg.sender] = {**msg.body, "seen": time.time(), "ts": msg.ts}

    @every(0.1)
    def check(self):
        if time.monotonic() >= self.until:
            self.runtime.stop()


class CommandsUntilAcked(Actor):
    """Sends several commands, each retried until its ack arrives, at most ``window`` unanswered
    at a time (so a thousand-row import does not send a thousand messages a second); stops when
    every one is answered or at the deadline. ``acks`` maps each command's id to its ack.

    As :class:`CommandOnce`: the receiver deduplicates by id, so retrying is safe, and every
    command expires with the deadline, so none is acted on after the sender gave up."""

    def __init__(self, commands, ack_prefix, *, timeout=15.0, retry=1.0, window=50):
        expires = int(time.time() + timeout)
        self.commands = [(topic, {**body, "id": os.urandom(16), "expires": expires}) for topic, body in commands]
        self.ack_prefix, self.retry, self.window = ack_prefix, retry, window
        self.deadline = time.monotonic() + timeout
        self.next_send: dict[bytes, float] = {}
        self.acks: dict[bytes, dict] = {}
        self._ids = {body["id"] for _, body in self.commands}

    def setup(self):
        self.runtime.add_handler(self.ack_prefix, self._ack)

    def _ack(self, msg):
        cid = msg.body.get("id")
        if cid in self._ids and cid not in self.acks:
            self.acks[cid] = msg.body
            if len(self.acks) == len(self.commands):
                self.runtime.stop()

    @every(0.05)
    def tick(self):
        now = time.monotonic()
        if now >= self.deadline or len(self.acks) == len(self.commands):
            self.runtime.stop()
            return
        if not self.runtime.proxy.token_valid():
            return
        waiting = 0
        for topic, body in self.commands:
            if body["id"] in self.acks:
                continue
            waiting += 1
            if waiting > self.window:
                break
            if now >= self.next_send.get(body["id"], 0.0):
                self.publish(topic, body)
                self.next_send[body["id"]] = now + self.retry


__all__ = ["CommandsUntilAcked", "PublishOnce", "Subscriber", "StatusCollector", "describe_frames", "jsonable"]


class CommandOnce(Actor):
    """Sends a command (``id`` and ``expires`` in its body) until an ack with that id arrives.

    The receiver deduplicates by id, so retrying is safe; an expired command
    is refused by the receiver, so retrying past ``expires`` is pointless.
    """

    def __init__(self, topic, body, ack_prefix, *, timeout=15.0, retry=1.0):
        self.topic, self.ack_prefix = topic, ack_prefix
        self.body = {**body, "id": os.urandom(16), "expires": int(time.time() + timeout)}
        self.deadline = time.monotonic() + timeout
        self.retry = retry
        self.next_send = 0.0
        self.ack = None

    def setup(self):
        self.runtime.add_handler(self.ack_prefix, self._ack)

    def _ack(self, msg):
        if msg.body.get("id") == self.body["id"]:
            self.ack = msg.body
            self.runtime.stop()

    @every(0.1)
    def tick(self):
        now = time.monotonic()
        if now >= self.deadline:
            self.runtime.stop()
        elif now >= self.next_send and self.runtime.proxy.token_valid():
            self.publish(self.topic, self.body)
            self.next_send = now + self.retry


def send_command(home, as_name: str, topic: str, body: dict, ack_topic: str, *, timeout: float, who: str) -> dict:
    """One command as ``as_name``, retried until ``who`` answers on ``ack_topic``; its ack, or
    DctrlError when unanswered at the deadline. (A refusal is the caller's to word: the ack's
    ``status`` says it.)"""
    import threading

    from actors.runtime import Runtime
    from proto.errors import DctrlError

    actor = CommandsUntilAcked([(topic, body)], ack_topic, timeout=timeout)
    Runtime(actor, home.bus_settings(as_name)).run(
        handle_signals=threading.current_thread() is threading.main_thread())
    (ack,) = [actor.acks.get(b["id"]) for _, b in actor.commands]
    if ack is None:
        raise DctrlError(f"no answer from {who} within {timeout:g} s (is it running? `dctrl status`)")
    return ack
