"""bitcoind backend: JSON-RPC through python-bitcoinrpc, hints from its ZMQ ``sequence`` and ``rawtx``.

Works with a node that has no wallet and no ``-txindex`` for what the
notifier needs (blocks, mempool, ``scantxoutset``). ZMQ is only a hint:
a sequence gap, a (re)connect or a malformed message yields a ``resync``
hint, and consumers reconcile over RPC then and on a timer.

Authentication: user and password (from the Vault in production), or the
node's cookie file, re-read when the node answers 401 (it changes at every
node restart). Passwords never appear in errors or logs.
"""

from __future__ import annotations

import http.client
import logging
import socket
import struct
import threading
import urllib.parse
from collections import OrderedDict
from decimal import Decimal
from pathlib import Path

import zmq
from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
from embit.networks import NETWORKS
from embit.script import address_to_scriptpubkey
from embit.transaction import Transaction

from .adaptor import Block, ChainError, Hint, Tip, Tx, TxOut

log = logging.getLogger(__name__)

SATS = Decimal(100_000_000)
NOT_FOUND = -5  # RPC_INVALID_ADDRESS_OR_KEY: "No such mempool or blockchain transaction"
FINAL_SEQUENCE = 0xFFFFFFFE


def btc_to_sats(amount) -> int:
    value = Decimal(str(amount)) * SATS
    if value != value.to_integral_value():
        raise ChainError(f"amount {amount} has more than 8 decimals")
    return int(value)


class Bitcoind:
    def __init__(self, rpc_url: str, *, user=None, password=None, cookie_file=None, zmq_endpoint=None,
                 timeout=10.0, name="bitcoind", network="regtest"):
        parsed = urllib.parse.urlsplit(rpc_url)
        self.host = parsed.netloc.rsplit("@", 1)[-1]
        self.scheme = parsed.scheme or "http"
        self.user, self.password = user, password
        self.cookie_file = Path(cookie_file) if cookie_file else None
        self.zmq_endpoint = zmq_endpoint
        self.timeout = timeout
        self.name = name
        self.network = NETWORKS["regtest" if network == "regtest" else "test" if network in ("testnet", "signet") else "main"]
        self._local = threading.local()
        self._zmq = None

    # -- RPC ------------------------------------------------------------------

    def _credentials(self):
        if self.user is not None:
            return self.user, self.password or ""
        if self.cookie_file is None:
            raise ChainError(f"{self.name}: no RPC credentials (user/password or cookie_file)")
        try:
            user, _, password = self.cookie_file.read_text().strip().partition(":")
        except OSError as exc:
            raise ChainError(f"{self.name}: cannot read cookie file {self.cookie_file}: {exc.strerror}") from None
        return user, password

    def _proxy(self):
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            user, password = self._credentials()
            url = f"{self.scheme}://{urllib.parse.quote(user)}:{urllib.parse.quote(password)}@{self.host}"
            proxy = self._local.proxy = AuthServiceProxy(url, timeout=self.timeout)
        return proxy

    def rpc(self, method: str, *params):
        """Call ``method``; RPC errors raise ChainError with Core's code (``.rpc_code``)."""
        for attempt in (1, 2):
            try:
                return getattr(self._proxy(), method)(*params)
            except JSONRPCException as exc:
                err = exc.error if isinstance(exc.error, dict) else {"code": None, "message": str(exc)}
                self._local.proxy = None
                if err.get("code") == -342 and "401" in str(err.get("message")) and attempt == 1:
                    continue  # cookie rotated by a node restart: read it again once
                if err.get("code") == -342:
                    raise ChainError(f"{self.name}: {method}: {_http_reason(err.get('message'))}") from None
                error = ChainError(f"{self.name}: {method}: error {err.get('code')}: {err.get('message')}")
                error.rpc_code = err.get("code")
                raise error from None
            except ChainError:
                raise  # ours already (a ChainError is also an OSError)
            except (OSError, http.client.HTTPException, socket.timeout, ValueError) as exc:
                self._local.proxy = None
                if attempt == 1 and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                                     ConnectionResetError)):
                    continue  # a kept-alive connection the node closed: reconnect once
                raise ChainError(f"{self.name}: {method}: {type(exc).__name__}: {exc}") from None

    # -- queries ----------------------------------------------------------------

    def tip(self) -> Tip:
        info = self.rpc("getblockchaininfo")
        return Tip(int(info["blocks"]), info["bestblockhash"])

    def block_hash(self, height: int) -> str:
        return self.rpc("getblockhash", height)

    def block(self, block_hash: str) -> Block:
        b = self.rpc("getblock", block_hash, 2)
        txs = tuple(self._tx(t, b["height"], b["hash"]) for t in b["tx"])
        return Block(int(b["height"]), b["hash"], b.get("previousblockhash", "00" * 32), int(b["time"]), txs)

    def _tx(self, t, height=None, block_hash=None) -> Tx:
        outputs = tuple(
            TxOut(t["txid"], int(o["n"]), o["scriptPubKey"]["hex"], o["scriptPubKey"].get("address"),
                  btc_to_sats(o["value"]))
            for o in t["vout"])
        inputs = tuple((i["txid"], int(i["vout"])) for i in t["vin"] if "txid" in i)
        rbf = any(int(i.get("sequence", 0xFFFFFFFF)) < FINAL_SEQUENCE for i in t["vin"] if "txid" in i)
        return Tx(t["txid"], outputs, inputs, rbf, height, block_hash)

    def transaction(self, txid: str) -> Tx | None:
        try:
            t = self.rpc("getrawtransaction", txid, True)
        except ChainError as exc:
            if getattr(exc, "rpc_code", None) == NOT_FOUND:
                return None
            raise
        if t.get("blockhash") and t.get("confirmations", 0) > 0:
            height = int(self.rpc("getblockheader", t["blockhash"], True)["height"])
            return self._tx(t, height, t["blockhash"])
        return self._tx(t)

    def raw_transaction(self, txid: str, block_hash: str | None = None) -> bytes | None:
        """The transaction's serialization (with its witnesses), or None if the node does not know it.
        A confirmed one is found without -txindex only given ``block_hash``, the block holding it."""
        try:
            params = (txid, False, block_hash) if block_hash else (txid, False)
            return bytes.fromhex(self.rpc("getrawtransaction", *params))
        except ChainError as exc:
            if getattr(exc, "rpc_code", None) == NOT_FOUND:
                return None
            raise
        except ValueError:
            raise ChainError(f"{self.name}: getrawtransaction {txid}: not hex") from None

    def mempool(self) -> set[str]:
        return set(self.rpc("getrawmempool"))

    def unspent(self, addresses: list[str]) -> list[TxOut]:
        if not addresses:
            return []
        by_script = {address_to_scriptpubkey(a).data.hex(): a for a in addresses}
        res = self.rpc("scantxoutset", "start", [f"addr({a})" for a in addresses])
        return [TxOut(u["txid"], int(u["vout"]), u["scriptPubKey"], by_script.get(u["scriptPubKey"]),
                      btc_to_sats(u["amount"]), u.get("height")) for u in res.get("unspents", [])]

    def used(self, addresses: list[str]) -> set[str]:
        """Those of ``addresses`` that hold coins now (one ``scantxoutset`` over the UTXO set).

        A node without an address index cannot say whether an address received coins
        that are spent since: callers add what they recorded themselves."""
        return {u.address for u in self.unspent(addresses) if u.address}

    def history(self, address: str, since_height: int = 0) -> list[Tx]:
        """Transactions paying or spending ``address`` since a height, then the mempool's.

        Without a wallet or an address index this scans blocks: fine for a
        watch-only notifier that keeps its own cursor, slow for a long range.
        """
        script = address_to_scriptpubkey(address).data.hex()
        found: list[Tx] = []
        ours: set[tuple[str, int]] = set()
        tip = self.tip().height
        for height in range(since_height, tip + 1):
            for tx in self.block(self.block_hash(height)).txs:
                if _touches(tx, script, ours):
                    found.append(tx)
        for txid in sorted(self.mempool()):
            tx = self.transaction(txid)
            if tx is not None and _touches(tx, script, ours):
                found.append(tx)
        return found

    def broadcast(self, raw_hex: str) -> str:
        return self.rpc("sendrawtransaction", raw_hex)

    def fee_estimates(self, targets=(1, 3, 6, 144)) -> dict[int, Decimal]:
        out = {}
        for target in targets:
            res = self.rpc("estimatesmartfee", target)
            if "feerate" in res:  # BTC per kvB -> sat per vB
                out[target] = (Decimal(str(res["feerate"])) * SATS / 1000).quantize(Decimal("0.001"))
        return out

    # -- hints from ZMQ -------------------------------------------------------

    def hints(self, timeout: float) -> list[Hint]:
        """Hints from bitcoind's ``sequence`` notifications within ``timeout`` seconds.

        Call from one thread only (it owns the ZMQ socket). Without a ZMQ
        endpoint it just waits and asks for a resync (polling).
        """
        if not self.zmq_endpoint:
            threading.Event().wait(timeout)
            return [Hint("resync", "polling")]
        if self._zmq is None:
            self._zmq = _SequenceListener(self.zmq_endpoint)
            return [Hint("resync", "connected to ZMQ")]
        return self._zmq.hints(timeout)

    def close(self):
        if self._zmq is not None:
            self._zmq.close()
            self._zmq = None


def parse_raw_tx(raw: bytes) -> Tx:
    """An unconfirmed transaction from its serialization (a ``rawtx`` notification).
    Output addresses are left None: consumers match on scripts."""
    t = Transaction.parse(raw)
    txid = t.txid().hex()
    outputs = tuple(TxOut(txid, n, o.script_pubkey.data.hex(), None, int(o.value)) for n, o in enumerate(t.vout))
    spends = [i for i in t.vin if not (i.vout == 0xFFFFFFFF and i.txid == bytes(32))]  # not a coinbase
    inputs = tuple((i.txid.hex(), int(i.vout)) for i in spends)
    rbf = any(i.sequence < FINAL_SEQUENCE for i in spends)
    return Tx(txid, outputs, inputs, rbf)


def _touches(tx: Tx, script: str, ours: set) -> bool:
    hit = False
    for o in tx.outputs:
        if o.script == script:
            ours.add((o.txid, o.vout))
            hit = True
    return hit or any(i in ours for i in tx.inputs)


def _http_reason(message) -> str:
    text = str(message or "")
    if "401" in text:
        return "the node refused our RPC credentials (HTTP 401)"
    return text[:200]


class _SequenceListener:
    """SUB to bitcoind's ``sequence`` and ``rawtx`` topics: 3 frames, a uint32 LE counter per topic.

    ``sequence`` drives the hints; a gap in its counter means a resync. ``rawtx``
    only supplies bodies: Core publishes a transaction's ``rawtx`` just before its
    ``sequence`` "A" (mempool acceptance), so the "A" hint carries the parsed
    transaction and the consumer skips a ``getrawtransaction``. The txid is
    computed here from the body, so a body can only ever stand for the txid it
    hashes to; without one (lost, unparsable, the topic not enabled on the node)
    the hint is a plain txid and the consumer asks over RPC as before. ``rawtx``
    is also sent for every transaction of a connected block; those bodies are
    never announced with "A" and age out of the bounded buffer."""

    BODIES = 2000  # rawtx bodies kept while waiting for their "A"

    def __init__(self, endpoint):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = 0  # never drop on our side; gaps are still detected
        self.sock.setsockopt(zmq.SUBSCRIBE, b"sequence")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"rawtx")
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.last_seq = None
        self.bodies: OrderedDict[str, Tx] = OrderedDict()

    def hints(self, timeout):
        out: list[Hint] = []
        events = dict(self.poller.poll(int(timeout * 1000)))
        if self.monitor in events:
            while self.monitor.poll(0):
                self.monitor.recv_multipart()
            self.last_seq = None
            out.append(Hint("resync", "ZMQ (re)connected"))
        if self.sock in events:
            for _ in range(10_000):
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if frames[0] == b"rawtx":
                    self._body(frames)
                else:
                    out.extend(self._parse(frames))
        return out

    def _body(self, frames):
        if len(frames) != 3:
            return
        try:
            tx = parse_raw_tx(frames[1])
        except Exception as exc:  # embit raises several types; the RPC path still works
            log.warning("unparsable rawtx notification (%d bytes) ignored: %s", len(frames[1]), exc)
            return
        self.bodies[tx.txid] = tx
        while len(self.bodies) > self.BODIES:
            self.bodies.popitem(last=False)

    def _parse(self, frames) -> list[Hint]:
        if len(frames) != 3 or len(frames[2]) != 4 or len(frames[1]) < 33:
            return [Hint("resync", "malformed ZMQ notification")]
        (seq,) = struct.unpack("<I", frames[2])
        hints = []
        if self.last_seq is not None and seq != (self.last_seq + 1) & 0xFFFFFFFF:
            hints.append(Hint("resync", f"ZMQ sequence gap: {self.last_seq} -> {seq}"))
        self.last_seq = seq
        # Core writes the hash already reversed into RPC display order
        # (zmqpublishnotifier.cpp: data[31 - i] = hash.begin()[i]); no flip here.
        hash_hex, label = frames[1][:32].hex(), frames[1][32:33]
        if label in (b"C", b"D"):
            hints.append(Hint("block", hash_hex))
        elif label == b"A":
            hints.append(Hint("tx", hash_hex, self.bodies.pop(hash_hex, None)))
        elif label == b"R":
            hints.append(Hint("tx", hash_hex))
        else:
            hints.append(Hint("resync", f"unknown sequence label {label!r}"))
        return hints

    def close(self):
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()
