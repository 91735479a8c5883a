"""bitcoind's ZMQ notifications (-zmqpubhashblock/-zmqpubhashtx/-zmqpubrawblock/-zmqpubrawtx/-zmqpubsequence).

Every message is three frames ``[topic, body, uint32 LE sequence]``; the
sequence counts per topic from 0. Bodies:

- ``hashtx``/``hashblock``: the 32-byte hash in RPC display order, i.e. the
  reverse of the internal (double-SHA256) bytes: ``body.hex()`` equals the hex
  that getbestblockhash / getrawtransaction show. That is what Bitcoin Core
  sends (src/zmq/zmqpublishnotifier.cpp reverses ``hash.begin()`` into the
  buffer; test/functional/interface_zmq.py asserts
  ``hashblock.receive().hex() == getblockhash(..)``), whatever doc/zmq.md's
  "Little Endian" note suggests.
- ``rawtx``/``rawblock``: the serialization with witness data.
- ``sequence``: hash (same byte order) + ``C``/``D``, or + ``A``/``R`` + the
  mempool sequence as uint64 LE.

All topics go out on one socket, in bitcoind's order. The socket is an XPUB
(wire-identical to bitcoind's PUB for subscribers) so that tests can wait for
a subscription to arrive instead of guessing (:meth:`wait_subscribed`).
"""

from __future__ import annotations

import logging
import struct
import threading
import time

import zmq

from scripts.sim.chainsim.chain import Block, Notifier, TxInfo

log = logging.getLogger(__name__)

TOPICS = ("hashblock", "hashtx", "rawblock", "rawtx", "sequence")
DEFAULT_HWM = 1000


class ZmqPublisher(Notifier):
    def __init__(self, endpoint: str, hwm: int = DEFAULT_HWM):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._lock = threading.Lock()
        self._seq = {t: 0 for t in TOPICS}
        self._drop = 0
        self._subscribed: dict[bytes, int] = {}
        self.hwm = hwm
        try:
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.SNDHWM, hwm)
            self._sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            self._sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            self._sock.bind(endpoint)
            self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except Exception:
            self.close()
            raise

    # -- sending -------------------------------------------------------------

    def drop_next(self, n: int):
        """The next n messages are counted (their sequence numbers are used) but not sent."""
        with self._lock:
            self._drop += n

    def _send(self, topic: str, body: bytes):
        with self._lock:
            if self._sock.closed:
                return
            self._drain_subscriptions()
            seq = self._seq[topic]
            self._seq[topic] = (seq + 1) & 0xFFFFFFFF
            if self._drop > 0:
                self._drop -= 1
                log.info("dropping zmq %s #%d as asked", topic, seq)
                return
            try:
                self._sock.send_multipart([topic.encode(), body, struct.pack("<I", seq)], flags=zmq.NOBLOCK)
            except zmq.Again:  # at the high-water mark a PUB drops silently; so do we
                log.debug("zmq %s #%d dropped at the high-water mark", topic, seq)

    def sequences(self) -> dict[str, int]:
        """The next sequence number of every topic."""
        with self._lock:
            return dict(self._seq)

    # -- chain notifications -------------------------------------------------

    def transaction(self, tx: TxInfo):
        self._send("hashtx", tx.txid_le[::-1])
        self._send("rawtx", tx.raw)

    def mempool_added(self, tx: TxInfo, mempool_sequence: int):
        self._send("sequence", tx.txid_le[::-1] + b"A" + struct.pack("<Q", mempool_sequence))

    def mempool_removed(self, tx: TxInfo, mempool_sequence: int):
        self._send("sequence", tx.txid_le[::-1] + b"R" + struct.pack("<Q", mempool_sequence))

    def block_connected(self, block: Block):
        self._send("sequence", block.hash_le[::-1] + b"C")

    def block_disconnected(self, block: Block):
        self._send("sequence", block.hash_le[::-1] + b"D")

    def tip_updated(self, block: Block):
        self._send("hashblock", block.hash_le[::-1])
        self._send("rawblock", block.raw)

    # -- subscriptions -------------------------------------------------------

    def _drain_subscriptions(self):
        while True:
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self._subscribed[frame[1:]] = self._subscribed.get(frame[1:], 0) + 1
            elif frame[:1] == b"\x00" and self._subscribed.get(frame[1:], 0) > 0:
                self._subscribed[frame[1:]] -= 1

    def wait_subscribed(self, *topics: str, timeout: float = 10.0) -> None:
        """Block until a subscriber has subscribed to each topic (any subscription if none given).

        A SUB socket's subscription reaches the publisher some time after
        ``connect()``; messages published before that are lost to it (ZMQ's
        slow joiner). Tests call this instead of sleeping.
        """
        wanted = [t.encode() for t in topics]
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._drain_subscriptions()
                have = {k for k, n in self._subscribed.items() if n > 0}
                if (wanted and all(any(w.startswith(h) for h in have) for w in wanted)) or (not wanted and have):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no zmq subscription for {topics or 'anything'} within {timeout} s")
                # Wait on the socket itself (a subscription arriving), at most 50 ms with the lock held.
                self._sock.poll(timeout=min(50, int(left * 1000) + 1), flags=zmq.POLLIN)

    def close(self):
        with self._lock:
            if not self._sock.closed:
                self._sock.close(linger=0)
        if not self._ctx.closed:
            self._ctx.term()
