"""ChainNotifier: watches scripts on the chain and publishes what happens to payments.

Events (see proto/topics.py): ``chain.tx.seen`` (mempool), ``chain.tx.confirmed``
(the confirmation count each time it grows, up to ``confirm_depth``),
``chain.tx.replaced``, ``chain.tx.removed``, ``chain.block`` (new tip),
``chain.reorg``. Each names txid, output index, address, script and satoshis,
and carries an ``event_id``: the same fact always has the same id, so a
receiver deduplicates on it.

How it stays exactly right:

* All chain work runs in one worker thread (RPC never stalls the actor's
  loop); the worker is the only writer of the ``chain_*`` tables.
* ZMQ notifications are hints. The worker reconciles over RPC on every hint,
  on a resync hint (sequence gap, reconnect) and every ``reconcile_interval``.
  A new mempool transaction's body comes with its hint (bitcoind's ``rawtx``)
  when the node sent one; otherwise it is fetched over RPC.
* A block's effects, the cursor (last processed height and hash) and the
  events they cause are committed in one transaction, events into an outbox;
  the outbox is published in order and rows are marked sent after the
  runtime has put them on the socket (in batches, when the worker is idle).
  A ``kill -9`` at any point loses nothing: unprocessed blocks are processed
  from the cursor, unsent events are sent at restart. The one duplicate
  possible (killed between sending and marking) has the same ``event_id``.
* Reorgs are found by comparing the node's block hashes with the hashes this
  notifier processed, walking back to the fork; outputs confirmed above the
  fork become unconfirmed, ``chain.reorg`` is published, and after the new
  blocks each affected output is published again in its new state.

Watch requests arrive as ``cmd.chain.watch`` commands (id, expiry, address,
label), deduplicated by id and acknowledged on ``chain.watch.ack``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time

import msgpack
from embit.networks import NETWORKS
from embit.script import address_to_scriptpubkey

from keys.home import Home
from proto.errors import DctrlError

from ..chain.adaptor import ChainError, Failover, Tx
from ..db import Statements, checkpoint_in_background, connect, ensure_tables, write_transaction
from ..runtime import Actor, on
from .models import TABLES, ChainBlock, ChainCommand, ChainCursor, ChainOutbox, ChainOutput, ChainWatched, db

log = logging.getLogger(__name__)

# Tests set DCTRL_CRASH_AT=block_committed to die right after a block's transaction
# commits and before its events are sent (the worst moment for exactly-once).
CRASH_AT = os.environ.get("DCTRL_CRASH_AT")

COMMAND_WAIT = 0.1  # s the worker waits for a hint before it looks at new watch commands again
CLOCK_SLACK = 60  # s: the watcher's clock and this notifier's may differ by this much (same server)
HEADER_SLACK = 7200  # s: a block's header time may be this far behind the time it was mined (consensus)

DISCOVER_LIMIT = 100_000  # receive indexes one discovery looks at, at most
# Address books whose used addresses the notifier can discover: name -> (config section, key).
# The treasury's two (PayoutMgr): the receive (/0/*) and change (/1/*) branches of [treasury] descriptor.
BOOKS = {"invoices": ("business", "receive"), "dues": ("members", "receive"),
         "treasury": ("treasury", "descriptor"), "treasury_change": ("treasury", "descriptor")}
TREASURY_BRANCHES = {"treasury": "receive", "treasury_change": "change"}

DEFAULTS = {
    "network": "regtest",
    "backends": ["bitcoind"],
    "confirm_depth": 6,
    "reconcile_interval": 30,
    "recent_blocks": 100,  # block hashes kept to find a fork
    "rescan_limit": 2016,  # blocks a late watch looks back through at most (two weeks)
    "bitcoind": {"rpc_url": "http://127.0.0.1:18443", "cookie_file": "sim/chain/.cookie",
                 "zmq": "tcp://127.0.0.1:28332", "user": None, "password_secret": None},
}



def event_id(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def build_backends(home: Home, cfg: dict, secret=None):
    """The configured backends, in failover order."""
    from ..chain.bitcoind import Bitcoind

    backends = []
    for name in cfg["backends"]:
        bc = cfg.get(name, {})
        if name.startswith("bitcoind"):
            cookie = bc.get("cookie_file")
            password = secret(bc["password_secret"]) if bc.get("password_secret") and secret else None
            backends.append(Bitcoind(bc["rpc_url"], user=bc.get("user"), password=password,
                                     cookie_file=(home.root / cookie) if cookie and not bc.get("user") else None,
                                     zmq_endpoint=bc.get("zmq"), name=name, network=cfg["network"]))
        elif name.startswith("esplora"):
            from ..chain.esplora import Esplora  # noqa: F401  (issue 3, next step)

            backends.append(Esplora(bc["url"], name=name, network=cfg["network"]))
        else:
            raise DctrlError(f"unknown chain backend {name!r}: bitcoind or esplora")
    return backends


class ChainNotifier(Actor):
    def __init__(self, home: Home, *, adaptor=None, database=None, clock=time.time):
        from keys.home import merge

        self.home = home
        self.cfg = merge(DEFAULTS, home.config.get("chain", {}))
        self.network = NETWORKS["regtest" if self.cfg["network"] == "regtest" else
                                "test" if self.cfg["network"] in ("testnet", "signet") else "main"]
        self.depth = int(self.cfg["confirm_depth"])
        self.clock = clock
        self.adaptor = adaptor  # built in the worker once the Vault has sent any RPC password
        self.secrets: dict[str, str] = {}
        self.needed_secrets = sorted({self.cfg.get(b, {}).get("password_secret") for b in self.cfg["backends"]} - {None})
        self.secrets_ready = threading.Event()
        self._secret_refused_at = None
        self.own_database = database is None  # closed at teardown only if opened here
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        ensure_tables(self.database, TABLES, add_columns={ChainOutput: ["seen_at", "replaced_by"],
                                                          ChainBlock: ["processed_at"],
                                                          ChainWatched: ["rescanned_since"]})  # (older versions)
        self.sql = Statements(self.database)  # a payment's path: fixed statements (see actors/db.py)
        self.commands: queue.Queue = queue.Queue()
        self.sent: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.worker = None
        self._checkpoints = None
        self.status = {"tip": None, "node_tip": None, "backend": None, "error": None, "watched": 0,
                       "synced": False}
        self._watched: dict[str, tuple[str, str | None]] = {}
        # mempool txids already looked at -> the scripts they pay (so a new watch finds a payment
        # that arrived before it without fetching the whole mempool again)
        self._mempool_checked: dict[str, frozenset] = {}
        self._recheck: list[str] = []  # txids paying a newly watched script: record them now
        self._inflight: set[int] = set()  # outbox rows handed to the loop thread, not yet confirmed sent

    # -- lifecycle ------------------------------------------------------------

    def setup(self):
        for name in self.needed_secrets:  # RPC passwords live in the Vault, sealed to us
            self.runtime.request_secret(name)
        if not self.needed_secrets:
            self.secrets_ready.set()
        self._checkpoints = checkpoint_in_background(self.database)  # no WAL copy on a payment's commit
        self.worker = threading.Thread(target=self._work, name="chain-worker", daemon=True)
        self.worker.start()

    def on_secret(self, name, value, error):
        if value is None:  # asked again by the worker shortly (the policy may not be reloaded yet)
            self.status["error"] = f"the Vault refused secret {name}: {error}"
            self._secret_refused_at = time.monotonic()
            return
        self.secrets[name] = value.decode()
        if all(n in self.secrets for n in self.needed_secrets):
            self.secrets_ready.set()

    def teardown(self):
        self.stopping.set()
        if self.worker:
            self.worker.join(15)
        if self.adaptor is not None:
            self.adaptor.close()
        if self._checkpoints is not None:
            self._checkpoints.stop()
        if self.own_database:
            self.database.close()

    def health(self):
        s = self.status
        if not s["synced"] and not s["error"]:
            return "starting", "not yet in step with the node"
        if s["error"]:
            return "degraded", f"{s['backend'] or 'chain'}: {s['error']}"
        lag = (s["node_tip"] - s["tip"]) if s["tip"] is not None and s["node_tip"] is not None else None
        return "ok", f"backend {s['backend']}, tip {s['tip']}, lag {lag}, watching {s['watched']}"

    # -- commands from the bus ------------------------------------------------

    @on("cmd.chain.discover")
    def discover_command(self, msg):
        """cmd.chain.discover {"id", "expires", "book": "invoices", "start": 0, "gap": 20}"""
        self.commands.put(("discover", msg.sender, msg.body))

    @on("cmd.chain.watch")
    def watch_command(self, msg):
        """cmd.chain.watch {"id": <16 bytes>, "expires": <unix s>, "address": "bcrt1...", "label": "invoice 7"}"""
        self.commands.put(("watch", msg.sender, msg.body))

    # -- the worker -----------------------------------------------------------

    def _work(self):
        try:
            self._run_worker()
        except Exception as exc:  # never silently: the heartbeat says the worker is gone
            log.exception("chain worker died")
            self.status["error"] = f"chain worker failed: {type(exc).__name__}: {exc}"[:300]

    def _run_worker(self):
        self.database.connect(reuse_if_open=True)
        self._load()
        while not self.secrets_ready.wait(0.5):  # watch commands wait in their queue meanwhile
            if self.stopping.is_set():
                return
            if not self.status["error"]:
                self.status["error"] = f"waiting for secrets {self.needed_secrets} from the Vault"
            refused = self._secret_refused_at
            if refused is not None and time.monotonic() - refused > 10:
                self._secret_refused_at = None
                for name in self.needed_secrets:
                    if name not in self.secrets:
                        self.runtime.request_secret(name)
        if self.adaptor is None:
            self.adaptor = Failover(build_backends(self.home, self.cfg, secret=self.secrets.__getitem__))
        next_reconcile = 0.0
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._handle_commands()  # (a watch may rescan blocks: RPC, so inside the try)
                self.recheck_mempool()
                hints = self.adaptor.hints(COMMAND_WAIT)
                if not hints:  # idle: a good moment to mark what went out
                    self._mark_sent()
                kinds = {h.kind for h in hints}
                for h in hints:
                    if h.kind == "resync":
                        log.info("resync: %s", h.value)
                due = time.monotonic() >= next_reconcile
                if due or kinds & {"block", "resync"}:
                    self.sync_blocks()
                    self.sync_mempool()
                    if due:
                        next_reconcile = time.monotonic() + self.cfg["reconcile_interval"]
                elif "tx" in kinds:  # the fast path: look at just the announced transactions
                    self.check_txs([h.value for h in hints if h.kind == "tx"],
                                   {h.value: h.tx for h in hints if h.tx is not None})
                self.status.update(error=None, backend=self.adaptor.name, synced=True)
                backoff = 1.0
            except ChainError as exc:
                if self.status["error"] != str(exc):
                    log.error("chain backend trouble: %s", exc)
                self.status.update(error=str(exc), backend=self.adaptor.name)  # say it in the heartbeat
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                next_reconcile = 0.0
            except Exception as exc:  # a bug or a database fault: say it in the heartbeat, not just the log
                log.exception("chain worker failed; retrying in %.0f s", backoff)
                self.status["error"] = f"chain worker failed: {type(exc).__name__}: {exc}"[:300]
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            self._flush_outbox()
            if self.sent.qsize() >= 200:
                self._mark_sent()
        self._mark_sent()

    def _load(self):
        self._watched = {w.script: (w.address, w.label) for w in ChainWatched.select()}
        self.status["watched"] = len(self._watched)
        cursor = ChainCursor.get_or_none(id=1)
        self.status["tip"] = cursor.height if cursor else None

    # -- watches --------------------------------------------------------------

    def _handle_commands(self):
        while True:
            try:
                kind, sender, body = self.commands.get_nowait()
            except queue.Empty:
                return
            if kind == "discover":  # a read: answered afresh every time, nothing recorded
                if body["expires"] < self.clock():
                    result = {"status": "refused", "reason": "command expired", "highest": None, "scanned": 0}
                else:
                    result = self.discover(body["book"], body["start"], body["gap"])
                self._answer("chain.discover.ack", {"id": body["id"], "book": body["book"], **result})
                continue
            cid = body["id"].hex()
            done = ChainCommand.get_or_none(id=cid)
            if done is not None:
                result = json.loads(done.result)  # a retry: acknowledge again, do nothing twice
            elif body["expires"] < self.clock():
                result = {"status": "refused", "reason": "command expired", "script": ""}
            else:
                # If the rescan fails (the node is away) nothing is recorded and no ack goes out:
                # the watcher's retry, with the same id, does it all again.
                result = self.watch(body["address"], body.get("label"), since=body.get("since"))
                ChainCommand.create(id=cid, result=json.dumps(result))
            outputs = self.outputs(result["script"]) if result["status"] == "watching" else None
            self._answer("chain.watch.ack", {"id": body["id"], "address": body["address"], **result,
                                             "outputs": outputs})

    def watch(self, address: str, label: str | None, since: int | None = None) -> dict:
        """Add ``address`` to the watched set; returns the ack fields.

        ``since`` (unix s) is when the watcher handed the address out: payments to it in
        blocks this notifier processed before it watched the script (it was down, or the
        watch came late) are looked for again, so the order of restarts never loses one."""
        try:
            script = address_to_scriptpubkey(address)
            if script.address(self.network) != address:
                raise ValueError("address is for another network")
        except Exception as exc:  # embit raises several types for bad addresses
            return {"status": "refused", "reason": f"not a {self.cfg['network']} address: {exc}"[:200], "script": ""}
        script_hex = script.data.hex()
        known = ChainWatched.get_or_none(script=script_hex)
        watched_from = known.created if known else int(self.clock())
        if known is None:
            ChainWatched.insert(script=script_hex, address=address, label=label, created=watched_from) \
                .on_conflict_ignore().execute()
        self._watched[script_hex] = (address, label)
        done = known.rescanned_since if known else None
        # A watcher sends every watch again at each of its starts (with the address's birth): a
        # rescan already done back to that birth is not done again. (Without this, each start of
        # member_data refetched every block since each member's address was handed out, beyond
        # the few block times kept: about 1,900 blocks for an address a month old, per address.)
        if since is not None and (done is None or int(since) < done):
            if self._rescan(script_hex, int(since), watched_from):
                ChainWatched.update(rescanned_since=int(since)).where(ChainWatched.script == script_hex).execute()
        # A payment to it may already be waiting in the mempool (the customer was quick).
        self._recheck.extend(t for t, scripts in self._mempool_checked.items() if script_hex in scripts)
        self.status["watched"] = len(self._watched)
        log.info("watching %s (%s)", address, label or "no label")
        return {"status": "watching", "reason": None, "script": script_hex}

    def discover(self, book: str, start: int, gap: int) -> dict:
        """The highest receive index of ``book``'s xpub at or after ``start`` that has been
        used: a gap-limit scan, as a wallet restoring from a seed does. Used means the node
        sees coins at it (a node without an address index cannot see spent ones), or this
        notifier recorded a payment to it, or a mempool transaction pays it."""
        from ..chain.addresses import Deriver

        section, key = BOOKS.get(book, (None, None))
        spec = (self.home.config.get(section) or {}).get(key) if section else None
        if not spec:
            reason = f"unknown address book {book!r}" if section is None else f"no [{section}] {key} configured"
            return {"status": "refused", "reason": reason, "highest": None, "scanned": 0}
        try:
            if book in TREASURY_BRANCHES:  # a k-of-n multisig: one branch of it, as PayoutMgr derives it
                from ..payout_mgr.treasury import Treasury

                change = (self.home.config.get("treasury") or {}).get("change_descriptor") or None
                spec = Treasury(spec, self.cfg["network"], change).descriptors()[TREASURY_BRANCHES[book]]
            deriver = Deriver(spec, self.cfg["network"])
        except DctrlError as exc:
            return {"status": "refused", "reason": f"[{section}] {key}: {exc}"[:500], "highest": None, "scanned": 0}
        in_mempool = frozenset().union(*self._mempool_checked.values()) if self._mempool_checked else frozenset()
        highest, index, scanned = None, start, 0
        while scanned < DISCOVER_LIMIT and index < 2**31 - gap:
            window = [(index + i, *deriver.address(index + i)) for i in range(gap)]
            scripts = [spk for _, _, spk in window]
            recorded = {r[0] for r in self.sql.rows(
                'SELECT DISTINCT "script" FROM "chain_output" WHERE "script" IN ({})'.format(
                    ", ".join("?" * len(scripts))), *scripts)}
            used = self.adaptor.used([a for _, a, _ in window])
            hits = [i for i, a, spk in window if a in used or spk in recorded or spk in in_mempool]
            scanned += gap
            if not hits:
                break
            highest, index = max(hits), max(hits) + 1
        if highest is not None:
            log.info("address book %s: receive index %d is used on the chain (looked at %d from %d)", book,
                     highest, scanned, start)
        return {"status": "done", "reason": None, "highest": highest, "scanned": scanned}

    @staticmethod
    def outputs(script: str, limit: int = 64) -> list[dict]:
        """What this notifier knows now of payments to ``script`` (newest first), for a watcher
        that reconciles after a restart: every event it may have missed, as current state."""
        rows = (ChainOutput.select().where(ChainOutput.script == script)
                .order_by(ChainOutput.id.desc()).limit(limit))
        return [{"txid": r.txid, "vout": r.vout, "sats": r.sats, "state": r.state,
                 "confirmations": r.confirmations, "height": r.height, "rbf": r.rbf, "seen_at": r.seen_at,
                 "by": r.replaced_by} for r in rows]

    # -- blocks ---------------------------------------------------------------

    def _rescan(self, script: str, since: int, watched_from: int) -> bool:
        """Record payments to ``script`` in blocks processed while it was not watched; True when
        the walk is complete (False: nothing processed yet, so nothing to walk; an exception: the
        node is away, and the watch is not acked).

        Walks back from the cursor. A block processed more than ``CLOCK_SLACK`` s before
        ``since`` was mined before the address existed: the walk ends there. One processed
        after ``watched_from`` was already scanned with the script watched: skipped without
        a query. Others (processed before the watch, or of unknown processing time) are
        fetched and scanned, down to a header time ``HEADER_SLACK`` before ``since``
        (miners' clocks) or ``rescan_limit`` blocks. The usual watch, for an address just
        handed out, stops at the first block and costs no RPC."""
        cursor = ChainCursor.get_or_none(id=1)
        if cursor is None:  # nothing processed yet: the first sync starts at the tip, which it rescans below
            return False
        known = {b.height: b for b in ChainBlock.select().where(ChainBlock.height <= cursor.height)}
        found, scanned = 0, 0
        for height in range(cursor.height, max(-1, cursor.height - int(self.cfg["rescan_limit"])), -1):
            kb = known.get(height)
            if kb is not None and kb.processed_at is not None:
                if kb.processed_at < since - CLOCK_SLACK:
                    break
                if kb.processed_at > watched_from:
                    continue
            block = self.adaptor.block(kb.hash if kb is not None else self.adaptor.block_hash(height))
            if block.time < since - HEADER_SLACK:
                break
            scanned += 1
            with write_transaction(self.database):
                found += self._record_block_outputs(block, {script}, rescan=True)
        else:
            if cursor.height - int(self.cfg["rescan_limit"]) >= 0:
                log.warning("rescan for %s stopped after %d blocks (rescan_limit)", script, self.cfg["rescan_limit"])
        if found:
            with write_transaction(self.database):
                self._confirmations(cursor.height)
        if scanned:
            log.info("rescanned %d block(s) for %s handed out at %d: %d payment(s) found", scanned,
                     self._watched[script][0], since, found)
        return True

    def sync_blocks(self):
        tip = self.adaptor.tip()
        self.status["node_tip"] = tip.height
        cursor = ChainCursor.get_or_none(id=1)
        if cursor is None:  # first start: follow from the current tip
            with write_transaction(self.database):
                ChainCursor.create(id=1, height=tip.height, hash=tip.hash)
                self._remember_block(tip.height, tip.hash, processed_at=None)  # not processed: a watch rescans it
            self.status["tip"] = tip.height
            log.info("following the chain from height %d", tip.height)
            return
        if cursor.hash == tip.hash:
            return
        fork = self._find_fork(cursor)
        if fork < cursor.height:
            self._unconfirm_above(fork, cursor, tip)
        for height in range(fork + 1, tip.height + 1):
            block = self.adaptor.block(self.adaptor.block_hash(height))
            with write_transaction(self.database):
                self._process_block(block)
                ChainCursor.update(height=block.height, hash=block.hash).where(ChainCursor.id == 1).execute()
                self._remember_block(block.height, block.hash)
                ChainBlock.delete().where(ChainBlock.height <= block.height - self.cfg["recent_blocks"]).execute()
                if height == tip.height:
                    self._confirmations(block.height)
                    self._enqueue("chain.block", {"height": block.height, "hash": block.hash,
                                                  "prev": block.prev, "time": block.time},
                                  event_id("block", block.hash))
            self.status["tip"] = block.height
            if CRASH_AT == "block_committed":  # fault injection for the tests: like kill -9 here
                os._exit(137)
            if self.stopping.is_set():
                return

    def _remember_block(self, height, block_hash, processed_at=0):
        """Record the hash at ``height`` and when it was processed (an upsert PostgreSQL and
        SQLite both speak: peewee's on_conflict_replace is SQLite and MySQL only)."""
        at = int(self.clock()) if processed_at == 0 else processed_at
        ChainBlock.insert(height=height, hash=block_hash, processed_at=at) \
            .on_conflict(conflict_target=[ChainBlock.height],
                         update={ChainBlock.hash: block_hash, ChainBlock.processed_at: at}).execute()

    def _find_fork(self, cursor) -> int:
        height = cursor.height
        while height >= 0:
            known = ChainBlock.get_or_none(height=height)
            if known is None:  # older than we keep: treat as the fork point
                return height
            if self.adaptor.block_hash(height) == known.hash:
                return height
            height -= 1
        return -1

    def _unconfirm_above(self, fork, cursor, tip):
        depth = cursor.height - fork
        log.warning("reorg: %d block(s) above height %d replaced (old tip %s, new tip %s)",
                    depth, fork, cursor.hash[:16], tip.hash[:16])
        fork_hash = ChainBlock.get(height=fork).hash if fork >= 0 else "00" * 32
        with write_transaction(self.database):
            self._enqueue("chain.reorg", {"fork_height": max(fork, 0), "depth": depth, "old_tip": cursor.hash,
                                          "new_tip": tip.hash}, event_id("reorg", cursor.hash, tip.hash))
            ChainOutput.update(state="mempool", height=None, block=None, confirmations=0,
                               generation=ChainOutput.generation + 1) \
                .where((ChainOutput.state == "confirmed") & (ChainOutput.height > fork)).execute()
            ChainBlock.delete().where(ChainBlock.height > fork).execute()
            ChainCursor.update(height=fork, hash=fork_hash).where(ChainCursor.id == 1).execute()

    def _process_block(self, block):
        for tx in block.txs:
            self._replaced_by(tx)
        self._record_block_outputs(block, self._watched)

    def _record_block_outputs(self, block, scripts, *, rescan=False) -> int:
        """Record outputs of ``block`` paying any of ``scripts`` as confirmed there (inside
        the caller's transaction); returns how many. A payment found by a rescan, never
        seen live, counts as first seen at its block's time (no later than now)."""
        found = 0
        for tx in block.txs:
            for out in tx.outputs:
                if out.script not in scripts:
                    continue
                found += 1
                address, label = self._watched[out.script]
                row = ChainOutput.get_or_none(txid=out.txid, vout=out.vout)
                if row is None:
                    first_seen = min(block.time, int(self.clock())) if rescan else int(self.clock())
                    ChainOutput.create(txid=out.txid, vout=out.vout, script=out.script, address=address,
                                       sats=out.sats, label=label, state="confirmed", height=block.height,
                                       block=block.hash, rbf=tx.rbf, inputs=json.dumps(tx.inputs),
                                       seen_at=first_seen)
                elif row.state != "confirmed" or row.block != block.hash:
                    ChainOutput.update(state="confirmed", height=block.height, block=block.hash) \
                        .where(ChainOutput.id == row.id).execute()
        return found

    def _conflicting(self, tx: Tx) -> list[int]:
        """Ids of tracked unconfirmed outputs whose transaction spends an input ``tx`` spends
        (one indexed read: this runs for every transaction the node announces)."""
        if not tx.inputs:
            return []
        spent = set(tx.inputs)
        candidates = self.sql.rows('SELECT "id", "inputs" FROM "chain_output" WHERE "state" = ? AND "txid" <> ?',
                                   "mempool", tx.txid)
        return [rid for rid, inputs in candidates if spent & {tuple(i) for i in json.loads(inputs)}]

    def _replaced_by(self, tx: Tx, conflicting=None):
        """Tracked unconfirmed outputs whose transaction conflicts with ``tx`` are replaced."""
        for rid in self._conflicting(tx) if conflicting is None else conflicting:
            row = self.sql.first(ChainOutput, '"id" = ?', rid)
            self.sql.update(ChainOutput, '"id" = ?', (row.id,), state="replaced", replaced_by=tx.txid)
            self._enqueue("chain.tx.replaced", {**self._output_fields(row), "by": tx.txid},
                          event_id("replaced", row.txid, row.vout, tx.txid))
            log.warning("payment %s:%d replaced by %s", row.txid, row.vout, tx.txid)

    def _confirmations(self, tip_height):
        rows = ChainOutput.select().where((ChainOutput.state == "confirmed") & (ChainOutput.confirmations < self.depth))
        for row in rows:
            count = min(self.depth, tip_height - row.height + 1)
            if count > row.confirmations:
                ChainOutput.update(confirmations=count).where(ChainOutput.id == row.id).execute()
                self._enqueue("chain.tx.confirmed", {**self._output_fields(row), "confirmations": count,
                                                     "height": row.height, "block": row.block},
                              event_id("confirmed", row.txid, row.vout, row.block, count))

    # -- mempool --------------------------------------------------------------

    def check_txs(self, txids, bodies=None):
        """Record watched outputs of these (announced) transactions if they are in the mempool.
        ``bodies``: txid -> the unconfirmed Tx, where the announcement carried it (no query)."""
        for txid in txids:
            if txid in self._mempool_checked:
                continue
            tx = bodies.get(txid) if bodies else None
            if tx is None:
                tx = self.adaptor.transaction(txid)
            if tx is not None and tx.height is None:
                paying = [out for out in tx.outputs if out.script in self._watched]
                conflicting = self._conflicting(tx)  # (this worker is the only writer: still true below)
                if paying or conflicting:  # most of a node's transactions are neither: no write lock
                    with write_transaction(self.database):
                        self._replaced_by(tx, conflicting)
                        for out in paying:
                            self._seen(tx, out)
            # Only once recorded: a transaction that failed to commit is looked at again.
            self._mempool_checked[txid] = frozenset(o.script for o in tx.outputs) if tx is not None else frozenset()
        if len(self._mempool_checked) > 200_000:  # the next full sync trims it to the mempool
            self._mempool_checked.clear()

    def recheck_mempool(self):
        """Look again at mempool transactions paying scripts watched since they were checked."""
        if self._recheck:  # payments that arrived before their address was watched
            txids, self._recheck = self._recheck, []
            for t in txids:
                self._mempool_checked.pop(t, None)
            self.check_txs(txids)

    def sync_mempool(self):
        txids = self.adaptor.mempool()
        self._mempool_checked = {t: s for t, s in self._mempool_checked.items() if t in txids}
        self.check_txs(sorted(txids - self._mempool_checked.keys()))
        # Tracked unconfirmed outputs that left the mempool without confirming.
        tip_moved = None
        for row in ChainOutput.select().where(ChainOutput.state == "mempool"):
            if row.txid in txids:
                if row.generation > 0 and row.confirmations == 0:
                    self._seen_again(row)
                continue
            tx = self.adaptor.transaction(row.txid)
            if tx is not None and tx.height is not None:
                continue  # confirmed: the next block sync records it
            # Without -txindex (bitcoind's default) a confirmed transaction is not found by its
            # txid: gone from the mempool may mean mined in a block this notifier has not synced.
            # Only when the tip is still the block it synced last is it really gone.
            if tip_moved is None:
                cursor = ChainCursor.get_or_none(id=1)
                tip_moved = cursor is None or self.adaptor.tip().hash != cursor.hash
            if tip_moved:
                continue  # the block sync, next, records it confirmed; or this is asked again then
            with write_transaction(self.database):
                ChainOutput.update(state="removed").where(ChainOutput.id == row.id).execute()
                reason = "unconfirmed by a reorg and not back in the mempool" if row.generation else "left the mempool"
                self._enqueue("chain.tx.removed", {**self._output_fields(row), "reason": reason},
                              event_id("removed", row.txid, row.vout, row.generation))
            log.warning("payment %s:%d removed: %s", row.txid, row.vout, reason)

    def _seen(self, tx: Tx, out):
        address, label = self._watched[out.script]
        if self.sql.rows('SELECT 1 FROM "chain_output" WHERE "txid" = ? AND "vout" = ?', out.txid, out.vout):
            return
        row = self.sql.create(ChainOutput, txid=out.txid, vout=out.vout, script=out.script, address=address,
                              sats=out.sats, label=label, state="mempool", rbf=tx.rbf, inputs=json.dumps(tx.inputs),
                              seen_at=int(self.clock()))
        self._enqueue("chain.tx.seen", {**self._output_fields(row), "rbf": tx.rbf},
                      event_id("seen", row.txid, row.vout, 0))
        log.info("payment seen: %s:%d %d sats to %s", row.txid, row.vout, row.sats, address)

    def _seen_again(self, row):
        """A reorg put this output back in the mempool: say so once per reorg."""
        eid = event_id("seen", row.txid, row.vout, row.generation)
        if ChainOutbox.get_or_none(event_id=eid) is None:
            with write_transaction(self.database):
                self._enqueue("chain.tx.seen", {**self._output_fields(row), "rbf": row.rbf}, eid)

    # -- outbox ---------------------------------------------------------------

    @staticmethod
    def _output_fields(row) -> dict:
        return {"txid": row.txid, "vout": row.vout, "address": row.address, "script": row.script,
                "sats": row.sats, "label": row.label}

    def _enqueue(self, topic, body, eid):
        """Record an event in the outbox (inside the caller's transaction)."""
        packed = msgpack.packb({**body, "event_id": eid} if topic.startswith("chain.tx.") else body,
                               use_bin_type=True)
        self.sql.execute('INSERT INTO "chain_outbox" ("event_id", "topic", "body", "sent") VALUES (?, ?, ?, ?) '
                         'ON CONFLICT DO NOTHING', eid, topic, packed, False)

    def _answer(self, topic, body):
        """Acknowledgements are answers, not facts: published directly, not via the outbox."""
        self.runtime.publish(topic, body)

    def _flush_outbox(self):
        rows = [r for r in self.sql.rows('SELECT "id", "topic", "body" FROM "chain_outbox" WHERE "sent" = ? '
                                         'ORDER BY "id" LIMIT ?', False, 500 + len(self._inflight))
                if r[0] not in self._inflight]
        if rows:
            self._inflight.update(rid for rid, _, _ in rows)
            self.runtime.call_soon(self._send, [(rid, topic, msgpack.unpackb(body, raw=False))
                                                for rid, topic, body in rows])

    def _send(self, batch):
        """In the loop thread: put events on the socket, then tell the worker which went out."""
        for rid, topic, body in batch:
            self.sent.put((rid, self.runtime.ready_to_publish() and self.runtime.publish(topic, body)))

    def _mark_sent(self):
        done = []
        while True:
            try:
                rid, ok = self.sent.get_nowait()
            except queue.Empty:
                break
            self._inflight.discard(rid)
            if ok:
                done.append(rid)
        if done:
            with write_transaction(self.database):  # one commit for the batch
                for rid in done:
                    self.sql.execute('UPDATE "chain_outbox" SET "sent" = ? WHERE "id" = ?', True, rid)
