"""ChainSim: the chain, the sim's wallet, the ZMQ publisher and the RPC server in one object.

Usable in-process (threads) from tests::

    with ChainSim(tmp_path / "chain") as sim:      # rpc_port=0, zmq_port=0: free ports
        rpc = AuthServiceProxy(sim.auth_url)
        txid = sim.pay(sim.new_address(), "0.001")
        sim.mine()

``esplora_port=0`` (a free port) or a port also serves Esplora's REST API over
the same chain at ``sim.esplora_url`` (scripts/sim/chainsim/esplora.py).

State is saved to ``<datadir>/chain.json`` after every change (blocks as raw
hex, the mempool, the wallet seed) and loaded on start, so a restart keeps
the chain. Like bitcoind after a restart, the mempool sequence starts again
at 1 and the ZMQ sequence numbers at 0.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from decimal import Decimal
from pathlib import Path

from keys.files import atomic_write
from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.chain import Block, Chain, Notifier, TxInfo
from scripts.sim.chainsim.errors import (
    RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, ChainSimError, Rejected, RpcError)
from scripts.sim.chainsim.jsonfmt import parse_amount, to_python
from scripts.sim.chainsim.rpc import IBD_MAX_TIP_AGE, JsonRpcEndpoint, NodeRpc
from scripts.sim.chainsim.rpcserver import RpcHttpServer
from scripts.sim.chainsim.wallet import SimWallet
from scripts.sim.chainsim.zmqpub import ZmqPublisher

log = logging.getLogger(__name__)

STATE_FILE = "chain.json"
STATE_FORMAT = "dctrl-chainsim/1"
COOKIE_USER = "__cookie__"
DEFAULT_RPC_PORT = 18443
DEFAULT_ZMQ_PORT = 28332
PREMINE = 101
DEFAULT_PAY_FEERATE = 2  # sat/vB
DEFAULT_ESTIMATE_FEERATE = 1000  # sat/kvB: what estimatesmartfee answers
PREMINE_AGE = 3 * 3600  # s: how old the premined blocks are (under the 24 h after which a node is in IBD)


class ChainSim:
    """A regtest bitcoind stand-in. ``start()`` binds and serves; ``stop()`` is idempotent."""

    def __init__(self, datadir, rpc_port: int = 0, zmq_port: int = 0, user: str | None = None,
                 password: str | None = None, *, host: str = "127.0.0.1", premine: int = PREMINE,
                 estimate_feerate: int = DEFAULT_ESTIMATE_FEERATE, deprecated_rpc=(), clock=time.time,
                 esplora_port: int | None = None, txindex: bool = True):
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither (cookie authentication)")
        self.datadir = Path(datadir)
        self.host = host
        self._rpc_port, self._zmq_port = rpc_port, zmq_port
        self._esplora_port = esplora_port  # None: no Esplora REST server; 0: a free port
        self._user, self._password = user, password
        self.premine = premine
        self.feerate = estimate_feerate
        self.deprecated_rpc = set(deprecated_rpc)
        self.clock = clock
        # False: getrawtransaction finds a confirmed transaction only given its block hash, as
        # bitcoind without -txindex (its default) does
        self.txindex = txindex
        self._lock = threading.RLock()
        self.chain: Chain | None = None
        self.wallet: SimWallet | None = None
        self.publisher: ZmqPublisher | None = None
        self.rpc_server: RpcHttpServer | None = None
        self.esplora_server = None
        self.cookie_file: Path | None = None
        self._auth = None
        self._ibd_latched = False
        self.stopped = threading.Event()  # set once stop() has finished
        self.stop_requested = threading.Event()  # the `stop` RPC or a signal asked for it
        self._stop_lock = threading.Lock()
        self._started = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "ChainSim":
        if self._started:
            return self
        self._started = True
        try:
            self.datadir.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._load_or_create()
                self.publisher = ZmqPublisher(f"tcp://{self.host}:{self._zmq_port or '*'}")
                self.chain.notify = self.publisher
            if self._password is None:
                self._auth = (COOKIE_USER, secrets.token_hex(32))
                self.cookie_file = self.datadir / ".cookie"
                _write_private(self.cookie_file, f"{self._auth[0]}:{self._auth[1]}")
            else:
                self._auth = (self._user, self._password)
            node = NodeRpc(self)
            endpoint = JsonRpcEndpoint(node, self._lock, self.save)
            self.rpc_server = RpcHttpServer(self.host, self._rpc_port, endpoint, *self._auth)
            self.rpc_server.after_reply = self._after_reply
            self.rpc_server.start()
            if self._esplora_port is not None:
                from scripts.sim.chainsim.esplora import EsploraHttpServer

                self.esplora_server = EsploraHttpServer(self.host, self._esplora_port, self)
                self.esplora_server.start()
        except BaseException:
            self.stop()
            raise
        log.info("chain sim up: rpc %s, zmq %s, height %d", self.rpc_url, self.zmq_endpoint, self.chain.height)
        return self

    def stop(self):
        """Stop serving, save, remove the cookie. Idempotent; returns once all of it is done."""
        with self._stop_lock:
            if self.stopped.is_set():
                return
            if self.rpc_server is not None:
                self.rpc_server.stop()
            if self.esplora_server is not None:
                self.esplora_server.stop()
            with self._lock:
                if self.chain is not None and self.wallet is not None:
                    self.chain.notify = Notifier()
                    self.save()
                if self.publisher is not None:
                    self.publisher.close()
            if self.cookie_file is not None:
                try:
                    self.cookie_file.unlink()
                except FileNotFoundError:
                    pass
            self.stopped.set()

    def request_stop(self):
        """The ``stop`` RPC: the reply goes out first, then the sim stops (from another thread)."""
        self.stop_requested.set()

    def _after_reply(self):
        if self.stop_requested.is_set() and not self.stopped.is_set():
            threading.Thread(target=self.stop, name="chainsim-stop", daemon=True).start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- endpoints -----------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.rpc_server.port}"

    @property
    def esplora_url(self) -> str:
        """Base URL of the Esplora REST API (``esplora_port`` not None), e.g. ``http://127.0.0.1:3002``."""
        if self.esplora_server is None:
            raise ChainSimError("the Esplora server is off: start ChainSim with esplora_port=0 (or a port)")
        return f"http://{self.host}:{self.esplora_server.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return self._auth

    @property
    def auth_url(self) -> str:
        """URL with credentials, for python-bitcoinrpc's AuthServiceProxy."""
        return f"http://{self._auth[0]}:{self._auth[1]}@{self.host}:{self.rpc_server.port}"

    @property
    def zmq_endpoint(self) -> str:
        return self.publisher.endpoint

    def wait_zmq_subscribed(self, *topics: str, timeout: float = 10.0):
        """Return once a ZMQ subscriber has subscribed to these topics (see ZmqPublisher.wait_subscribed)."""
        self.publisher.wait_subscribed(*topics, timeout=timeout)

    # -- state ---------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.datadir / STATE_FILE

    def _load_or_create(self):
        if self.state_file.exists():
            self._load(json.loads(self.state_file.read_text()))
            return
        self.chain = Chain(clock=self.clock)
        self.wallet = SimWallet()
        if self.premine:
            # Like a node started on an existing datadir: these blocks exist before ZMQ is up, and
            # they are old, as a real chain's earlier blocks are (stamped PREMINE_AGE ago). Stamped
            # now, every watch with a birth (`since`) took them for blocks mined after it and
            # fetched all of them again: 40 treasury addresses times 101 blocks at PayoutMgr's start.
            self.chain.mine(self.wallet.funding_script, self.premine, when=int(self.clock()) - PREMINE_AGE)
        self.save()

    def _load(self, state: dict):
        if state.get("format") != STATE_FORMAT:
            raise ChainSimError(f"{self.state_file}: not a chain sim state ({state.get('format')!r})")
        chain = Chain(clock=self.clock)
        for raw in state["blocks"]:
            chain.connect(Block.from_raw(bytes.fromhex(raw)), announce_tip=False)
        for raw in state.get("stale_blocks", []):
            chain.index_stale(Block.from_raw(bytes.fromhex(raw)))
        for item in state.get("mempool", []):
            try:
                chain.accept(TxInfo.from_raw(bytes.fromhex(item["hex"])), bypass_limits=True,
                             entry_time=item.get("time"), unbroadcast=item.get("unbroadcast", False))
            except (Rejected, ValueError) as exc:
                log.warning("saved mempool transaction dropped on load: %s", exc)
        chain.mempool_sequence = 1  # a restarted bitcoind starts counting again
        self.chain = chain
        self.wallet = SimWallet(bytes.fromhex(state["seed"]), state.get("next_index", 1))

    def save(self):
        """Write the state atomically (temp file + rename)."""
        with self._lock:
            chain = self.chain
            stale = sorted((b for b in chain.blocks.values() if not chain.in_active_chain(b)),
                           key=lambda b: b.height)
            state = {
                "format": STATE_FORMAT, "network": "regtest",
                "seed": self.wallet.seed.hex(), "next_index": self.wallet.next_index,
                "blocks": [b.raw.hex() for b in chain.active[1:]],
                "stale_blocks": [b.raw.hex() for b in stale],
                "mempool": [{"hex": chain.mempool[t].tx.raw.hex(), "time": chain.mempool[t].time,
                             "unbroadcast": chain.mempool[t].unbroadcast} for t in chain.topo_mempool()],
            }
            atomic_write(self.state_file, json.dumps(state).encode(), mode=0o644, durable=False)  # as before: no fsync on the pay path

    def initial_block_download(self) -> bool:
        """Core's latch: true while the tip is older than 24 h, false for good once it is not."""
        if not self._ibd_latched and self.chain.tip.time >= self.clock() - IBD_MAX_TIP_AGE:
            self._ibd_latched = True
        return not self._ibd_latched

    def test_accept(self, tx: TxInfo) -> int:
        return self.chain.validate(tx)[0]

    # -- control (also the sim_* RPCs) ---------------------------------------

    def call(self, method: str, *params):
        """Run an RPC in-process (no HTTP); amounts come back as Decimal. Raises RpcError."""
        node = NodeRpc(self)
        with self._lock:
            result, mutates = node.execute(method, list(params))
            if mutates:
                self.save()
        self._after_reply()
        return to_python(result)

    def new_address(self) -> str:
        with self._lock:
            addr = self.wallet.new_address()
            self.save()
        return addr

    @property
    def funding_address(self) -> str:
        return self.wallet.funding_address

    def pay(self, address: str, amount, rbf: bool = False, feerate: int | None = None) -> str:
        """Pay ``amount`` BTC (str, Decimal or int; never float) to address; returns the txid."""
        if isinstance(amount, float):
            raise TypeError("amounts are str or Decimal BTC, never float")
        if isinstance(amount, Decimal):
            amount = format(amount, "f")
        with self._lock:
            txid = self._pay(address, parse_amount(amount, allow_zero=False), rbf, feerate)
            self.save()
        return txid

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        with self._lock:
            hashes = self._mine(n, address)
            self.save()
        return hashes

    def replace(self, txid: str) -> str:
        with self._lock:
            if txid not in self.chain.mempool:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
            new = self._replace(txid)
            self.save()
        return new

    def reorg(self, depth: int) -> list[str]:
        with self._lock:
            hashes = self._reorg(depth)
            self.save()
        return hashes

    def drop_zmq(self, n: int = 1):
        self.publisher.drop_next(n)

    def stop_rpc(self, seconds: float):
        self.rpc_server.refuse_for(seconds)

    # Internals, called with the lock held (by the methods above or by the RPC layer).

    def _pay(self, address: str, sats: int, rbf: bool, feerate: int | None) -> str:
        try:
            script = outputs.decode_address(address)
        except outputs.InvalidAddress as exc:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid address: {exc}") from None
        feerate = DEFAULT_PAY_FEERATE if feerate is None else feerate
        if feerate < 1:
            raise RpcError(RPC_INVALID_PARAMETER, "feerate must be at least 1 sat/vB")
        tx = TxInfo(self.wallet.pay(self.chain, script, sats, rbf=rbf, feerate_sat_vb=feerate))
        try:
            self.chain.accept(tx, unbroadcast=True)
        except Rejected as exc:
            raise exc.to_rpc() from None
        return tx.txid

    def _mine(self, n: int, address: str | None) -> list[str]:
        if n < 1 or n > 10_000:
            raise RpcError(RPC_INVALID_PARAMETER, "n must be between 1 and 10000")
        script = self.wallet.funding_script
        if address is not None:
            try:
                script = outputs.decode_address(address)
            except outputs.InvalidAddress:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return [b.hash for b in self.chain.mine(script, n)]

    def _replace(self, txid: str) -> str:
        original = self.chain.mempool[txid].tx
        tx = TxInfo(self.wallet.conflicting_spend(self.chain, original))
        try:
            self.chain.accept(tx, unbroadcast=True)
        except Rejected as exc:
            raise exc.to_rpc() from None
        return tx.txid

    def _reorg(self, depth: int) -> list[str]:
        try:
            return [b.hash for b in self.chain.reorg(depth, self.wallet.funding_script)]
        except ValueError as exc:
            raise RpcError(RPC_INVALID_PARAMETER, str(exc)) from None


def _write_private(path: Path, text: str):
    """Write a 0600 file atomically, as bitcoind writes .cookie (temp file, then rename)."""
    atomic_write(path, text.encode(), mode=0o600)
