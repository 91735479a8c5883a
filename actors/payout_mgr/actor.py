"""PayoutMgr (issue 13): the treasury's outputs, tracked through the chain notifier.

Item 1 of the issue, what is here: the treasury's receive (/0/i) and change (/1/i) branches are
two address books (``treasury``, ``treasury_change``, in ``payout_address``) derived from
``[treasury] descriptor`` (actors/payout_mgr/treasury.py). Each is first *discovered*
(``cmd.chain.discover``: the chain notifier scans the branch from its own ``[treasury]`` config,
no key travels; indexes with history are recorded ``used on the chain``), then *watched*: every
index from 0 to ``gap_limit`` beyond the last used one (an output recorded there, or history
found by a discovery), each with a ``cmd.chain.watch`` carrying ``since`` (when it was first
watched), re-sent until acked and all re-sent at every start (actors/chain/watching.py, as
MemberData and BusinessMgr do). When an address is paid, the branch's watched run grows so
that ``gap_limit`` unused addresses are always watched beyond it.

Addresses others hand out: ``[business] receive`` or ``[members] receive`` may be the treasury's
descriptor (found at start by comparing their first addresses), and BusinessMgr and MemberData
then hand out receive addresses from their own index, maybe beyond the watched run. The
``[treasury] lookahead`` receive addresses past the run are kept derived (``ahead``); a
``chain.tx.seen``/``confirmed`` from chain_notifier naming one (the notifier's event for the
other component's watch) extends the run to it and records the output in one transaction, and
another watcher's ``chain.watch.ack`` naming one with a live output extends the run (this
actor's own watch then records the outputs). Unpaid addresses extend nothing. At start the
receive branch's discovery asks with the lookahead as its gap, so a payment missed while down is
found then.

Outputs (``payout_utxo``): ``chain.tx.seen`` -> ``seen``, ``chain.tx.confirmed`` ->
``confirmed`` (confirmations, height), ``chain.tx.replaced``/``removed`` -> ``removed``; a
reorg that unconfirms one sends it back to ``seen`` (the notifier's ``chain.tx.seen`` after the
reorg) or ``removed``. A watch ack's outputs are a snapshot that only moves an output forward.
The raw transaction that made each output (the PSBT's non-witness UTXO) is fetched through this
actor's own ChainAdaptor, built from ``[chain]`` as the notifier builds its own, on a worker
thread (never the loop), retried until it comes, and checked to hash to the txid.

Spent: the chain notifier reports payments *to* watched scripts, not spends *from* them, and an
output may be spent by a transaction made outside this server (a co-signer's Sparrow). So at
start and after every ``chain.block`` the worker asks the adaptor for the unspent outputs of the
addresses holding confirmed ones (``unspent``: bitcoind ``scantxoutset``, Esplora
``/address/:a/utxo``, both of the confirmed UTXO set); a confirmed output missing from the answer
whose own block still stands at its height (``block_hash(height)``, no -txindex needed) is
marked ``spent``, and the transaction spending it is found in the blocks from the tip down to
its height (``block(block_hash(h))``, at most ``[chain] rescan_limit`` blocks): ``spent_by``,
``spent_height``, ``spent_block``, from which desk.py tells a payout of ours confirmed from one
whose input was spent elsewhere (bitcoind without -txindex finds neither by txid). A spent
output whose spender's block no longer stands has its spender looked for again. (A
missing one whose transaction is no longer confirmed was reorged out: the notifier's events
say what it is now.) An output found spent in the last day is looked at too: back in the
unspent set (the spend was reorged out), it is ``confirmed`` again. A spend is therefore seen once it confirms, not while in the mempool. At
start the same query covers every watched address, and outputs found there but not recorded
(paid before this actor first watched the address, further back than the notifier rescans) are
recorded confirmed.

No descriptor: the actor runs, its health says "no [treasury] descriptor", and it does nothing
else. The payouts themselves (commands, building, broadcast, their chain states) are the mixin
actors/payout_mgr/desk.py; their books are ledger.py.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from types import SimpleNamespace

import peewee
from embit.transaction import Transaction

from keys.home import DEFAULTS as HOME_DEFAULTS
from keys.home import Home, merge
from proto.errors import ConfigError

from ..chain.addresses import AddressBook, Deriver
from ..chain.watching import Discovery, forward, send_due_watches
from ..db import connect, ensure_tables, write_transaction
from ..runtime import Actor, every, on
from . import ledger, queries
from .models import (ADDED_COLUMNS, BOOKS, CHANGE_BOOK, LIVE, RECEIVE_BOOK, TABLES, USED_ON_CHAIN, WATCHED,
                     PayoutAddress, PayoutPrice, PayoutUtxo, PayoutWatch, db)
from .desk import PayoutDesk
from .treasury import Treasury

log = logging.getLogger(__name__)

NO_TREASURY = "no [treasury] descriptor"
DISCOVERING = "checking the chain for treasury addresses already used (waiting for chain_notifier)"
CHAIN_STATES = {"seen": "seen", "mempool": "seen", "confirmed": "confirmed", "replaced": "removed",
                "removed": "removed"}
RAW_RETRY = 5.0  # s between attempts to fetch the raw transactions still missing
REVIVE_S = 86_400  # s an output found spent is still looked at: a reorg undoing the spend revives it
LOOKAHEAD_MAX = 1000  # [treasury] lookahead at most (cmd.chain.discover's largest gap)
SHARING = ("business", "members")  # the sections whose `receive` may be the treasury's descriptor
NOTIFIER = "chain_notifier"  # the one sender whose events may extend the watched run


class PayoutMgr(PayoutDesk, Actor):
    IDENTITY = "payout_mgr"

    def __init__(self, home: Home, *, adaptor=None, database=None, clock=time.time):
        from ..chain_notifier.actor import DEFAULTS as CHAIN_DEFAULTS

        self.home, self.clock = home, clock
        self.cfg = merge(HOME_DEFAULTS["treasury"], home.config.get("treasury") or {})
        self.chain_cfg = merge(CHAIN_DEFAULTS, home.config.get("chain") or {})
        self.network = self.chain_cfg["network"]
        self.depth = int(self.chain_cfg["confirm_depth"])
        self.gap_limit = int(self.cfg["gap_limit"])
        self.rescan_limit = int(self.chain_cfg["rescan_limit"])  # blocks searched back for a spend
        self.own_database = database is None
        self.database = database or connect(home.database_url)
        db.initialize(self.database)
        ensure_tables(self.database, TABLES, add_columns=ADDED_COLUMNS)
        self.adaptor = adaptor  # built on the worker (after any RPC password came from the Vault)
        self.treasury: Treasury | None = None
        self.error: str | None = None  # a descriptor that cannot be used: health degraded
        self.books: dict[str, AddressBook] = {}
        self.discoveries: dict[str, Discovery] = {}
        # [business]/[members] receive set to the treasury's descriptor: the sections that hand out
        # its receive addresses from their own index, and how far beyond the watched run a payment
        # to one is recognised (0: none shares it, nothing is looked for beyond the run)
        self.shared: list[str] = []
        self.lookahead = 0
        self.ahead: dict[str, int] = {}  # receive address -> index, for the lookahead beyond the run
        spec = (self.cfg["descriptor"] or "").strip()
        if spec:
            try:
                self.treasury = Treasury(spec, self.network, (self.cfg["change_descriptor"] or "").strip() or None)
                d = self.treasury.descriptors()
                for book, branch in BOOKS.items():
                    self.books[book] = AddressBook(PayoutAddress, book, Deriver(d[branch], self.network),
                                                   gap_limit=self.gap_limit, clock=clock)
                    self.discoveries[book] = Discovery(self.books[book], retry=float(self.cfg["watch_retry"]),
                                                       clock=clock, used_label=USED_ON_CHAIN,
                                                       section=f"[treasury] descriptor ({branch})")
                self.shared = self._sharing()
                if self.shared:
                    self.lookahead = min(max(int(self.cfg["lookahead"]), 0), LOOKAHEAD_MAX)
                    if self.lookahead != int(self.cfg["lookahead"]):
                        log.warning("[treasury] lookahead %s: %d used (0 to %d)", self.cfg["lookahead"],
                                    self.lookahead, LOOKAHEAD_MAX)
                    # the discovery at start looks as far past the run as a payment is recognised live
                    self.discoveries[RECEIVE_BOOK].gap = max(self.gap_limit, self.lookahead)
            except ConfigError as exc:
                self.treasury, self.books, self.discoveries = None, {}, {}
                self.error = str(exc)
        self.watch_due: dict[str, float] = {}  # address -> monotonic time to (re)send its watch
        self.watched: dict[str, tuple[str, int]] = {}  # address -> (book, index)
        # the worker: network calls off the loop thread; results come back through call_soon
        self.jobs: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.worker: threading.Thread | None = None
        self.chain_error: str | None = None
        self._raw_asked: set[tuple[str, int]] = set()
        self._searched: dict[tuple[str, int], int] = {}  # (worker) spender not found: the tip searched from
        self._check_queued = False
        self._check_again = False
        self.secrets: dict[str, str] = {}
        self.needed_secrets = sorted({(self.chain_cfg.get(b) or {}).get("password_secret")
                                      for b in self.chain_cfg["backends"]} - {None})
        self.secrets_ready = threading.Event()
        self._desk_init()

    def _sharing(self) -> list[str]:
        """The sections among ``SHARING`` whose ``receive`` derives the treasury's receive addresses
        (its /0/0 and /0/1). A section that cannot be read is theirs to report, not shared here."""
        ours = [self.treasury.address(i)[0] for i in (0, 1)]
        shared = []
        for section in SHARING:
            spec = ((self.home.config.get(section) or {}).get("receive") or "").strip()
            if not spec:
                continue
            try:
                d = Deriver(spec, self.network)
                if [d.address(i)[0] for i in (0, 1)] == ours:
                    shared.append(section)
            except Exception:  # (a descriptor the section's own actor refuses, and says so)
                continue
        return shared

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self):
        if self.treasury is None:
            log.warning("payout_mgr: %s: nothing to watch", self.error or NO_TREASURY)
            return
        for name in self.needed_secrets:  # an RPC password, from the Vault, as chain_notifier's
            self.runtime.request_secret(name)
        if not self.needed_secrets:
            self.secrets_ready.set()
        # Every treasury address is watched again, with a new command id, so the notifier looks
        # through its blocks again from the address's birth whatever the order of restarts.
        now = int(self.clock())
        with write_transaction(self.database):
            for a in PayoutAddress.select():
                self.watched[a.address] = (a.book, a.position)
                self._ensure_watch(a, now)
                self.watch_due[a.address] = 0.0
        log.info("payout_mgr: treasury %s, %d address(es) to watch again", self.treasury.quorum, len(self.watch_due))
        if self.shared:
            self._look_ahead()
            log.info("payout_mgr: [%s] receive hand(s) out the treasury's receive addresses: a payment up to %d "
                     "beyond the watched run is recognised", "], [".join(self.shared), self.lookahead)
        self.worker = threading.Thread(target=self._work, name="payout-chain", daemon=True)
        self.worker.start()
        self._queue_check(everything=True)
        self._fetch_missing()
        self._desk_setup()

    def on_secret(self, name, value, error):
        if value is None:
            self.chain_error = f"the Vault refused secret {name}: {error}"
            return
        self.secrets[name] = value.decode()
        if all(n in self.secrets for n in self.needed_secrets):
            self.secrets_ready.set()

    def teardown(self):
        self.stopping.set()
        self.jobs.put(None)
        if self.worker is not None:
            self.worker.join(15)
        if self.adaptor is not None:
            self.adaptor.close()
        if self.own_database:
            self.database.close()

    def health(self):
        if self.error:
            return "degraded", f"[treasury] descriptor: {self.error}"
        if self.treasury is None:
            return "ok", f"{NO_TREASURY}: nothing to watch"
        t = queries.treasury(self.database, self.gap_limit, next_count=0)
        b = t["balance"]
        detail = (f"treasury {self.treasury.quorum}: {len(t['utxos'])} UTXO(s), {b['confirmed_sats']} sats confirmed, "
                  f"{b['unconfirmed_sats']} unconfirmed; watching {len(self.watched)} address(es)")
        waiting = [BOOKS[b] for b in self.discoveries]
        if waiting:
            errors = [d.error for d in self.discoveries.values() if d.error]
            detail += f"; {' and '.join(waiting)} branch: {errors[0] if errors else DISCOVERING}"
        if self.chain_error:
            detail += f"; chain: {self.chain_error}"
        pending = ledger.pending_counts()
        if pending:
            detail += "; payouts " + ", ".join(f"{n} {s}" for s, n in sorted(pending.items()))
        if self.policy_error:
            return "degraded", f"[payouts]: {self.policy_error}; {detail}"
        return "ok", detail

    # -- discovery and watches (loop thread) ----------------------------------------------------

    @every(0.5)
    def chain_tick(self):
        if self.treasury is None or not self.runtime.ready_to_publish():
            return
        now_mono = time.monotonic()
        for d in self.discoveries.values():
            body = d.request(now_mono)
            if body is not None:
                self.publish("cmd.chain.discover", body)
        self._send_watches(now_mono)

    @on("chain.discover.ack")
    def on_discover_ack(self, msg):
        d = self.discoveries.get(msg.body["book"])
        if d is not None and d.answer(msg.body):
            del self.discoveries[msg.body["book"]]
            self._extend(msg.body["book"])
            self._queue_check(everything=True)  # coins already there (paid before we watched)

    def _ensure_watch(self, a, now: int) -> None:
        """(In a transaction) the watch of address row ``a``, due again with a new command id."""
        updated = PayoutWatch.update(command=os.urandom(16).hex(), expires=now + 60, acked=False, refused=None) \
            .where(PayoutWatch.address == a.address).execute()
        if not updated:
            PayoutWatch.create(address=a.address, book=a.book, position=a.position, since=a.issued_at,
                               command=os.urandom(16).hex(), expires=now + 60)

    def _extend(self, book: str) -> None:
        """Watch every index of ``book`` from 0 to ``gap_limit`` beyond its last used one (once its
        discovery has answered): addresses below a used one may hold coins too."""
        if book in self.discoveries or book not in self.books:
            return
        last = queries.last_used(self.database, book)
        top = (-1 if last is None else last) + self.gap_limit
        now = int(self.clock())
        added = []
        with write_transaction(self.database):
            watching = {a for (a,) in PayoutWatch.select(PayoutWatch.address).where(PayoutWatch.book == book).tuples()}
            for a in PayoutAddress.select().where(PayoutAddress.book == book):
                if a.address not in watching:  # (an index the discovery recorded as used)
                    self._ensure_watch(a, now)
                    added.append(a)
            added += self._add_run(book, top, now)
        self._watching(added)
        if added:
            log.info("treasury %s branch: watching %d more address(es), up to /%d/%d", BOOKS[book], len(added),
                     0 if book == RECEIVE_BOOK else 1, top)

    def _add_run(self, book: str, top: int, now: int) -> list:
        """(In a transaction) a row and a watch for every index of ``book`` from 0 to ``top`` not
        recorded yet; the rows made."""
        deriver = self.books[book].deriver
        have = {p for (p,) in PayoutAddress.select(PayoutAddress.position).where(PayoutAddress.book == book).tuples()}
        added = []
        for i in range(0, top + 1):
            if i in have:
                continue
            address, spk = deriver.address(i)
            added.append(PayoutAddress.create(book=book, position=i, address=address, script=spk, label=WATCHED,
                                              issued_at=now))
            self._ensure_watch(added[-1], now)
        return added

    def _watching(self, added) -> None:
        """After the rows ``added`` were committed: watch them now (and look further ahead)."""
        for a in added:
            self.watched[a.address] = (a.book, a.position)
            self.watch_due[a.address] = 0.0
        if added:
            if self.shared and any(a.book == RECEIVE_BOOK for a in added):
                self._look_ahead()
            self._send_watches(time.monotonic())

    # -- receive addresses handed out by others ([business]/[members] receive = the treasury) ----

    def _look_ahead(self) -> None:
        """Derive the ``lookahead`` receive addresses after the watched run's highest index (each
        once; those now in the run are dropped)."""
        top = max((i for book, i in self.watched.values() if book == RECEIVE_BOOK), default=-1)
        self.ahead = {a: i for a, i in self.ahead.items() if i > top}
        have = set(self.ahead.values())
        deriver = self.books[RECEIVE_BOOK].deriver
        for i in range(top + 1, top + 1 + self.lookahead):
            if i not in have:
                self.ahead[deriver.address(i)[0]] = i

    def _recognised(self, address, sender) -> int | None:
        """The receive index of ``address`` if it is one of the treasury's within the lookahead
        beyond the watched run, named by the chain notifier (None otherwise: someone else's
        address, or a publisher that may not extend the run)."""
        if sender != NOTIFIER or not isinstance(address, str):
            return None
        return self.ahead.get(address)

    def _adopt(self, index: int) -> list:
        """(In a transaction) the receive run extended to ``index``, paid though beyond it (a
        component sharing the descriptor handed it out): rows and watches for every index up to
        it, known to ``_observe`` at once. The caller calls ``_watching`` after the commit, or
        ``_unadopt`` if the transaction failed."""
        added = self._add_run(RECEIVE_BOOK, index, int(self.clock()))
        for a in added:
            self.watched[a.address] = (a.book, a.position)
        log.info("treasury receive branch: /0/%d, beyond the watched run, was paid (handed out by [%s] receive): "
                 "watching up to it", index, "], [".join(self.shared))
        return added

    def _unadopt(self, added) -> None:
        for a in added:
            self.watched.pop(a.address, None)

    def _send_watches(self, now_mono):
        send_due_watches(self.publish, PayoutWatch, self.watch_due, now_mono, self.clock(),
                         float(self.cfg["watch_retry"]),
                         lambda row: (f"treasury {BOOKS[row.book]} {row.position}", row.since))

    @on("chain.watch.ack")
    def on_watch_ack(self, msg):
        b = msg.body
        if b["address"] not in self.watched:  # someone else's watch
            self._others_watch(msg)
            return
        row = PayoutWatch.get_or_none(PayoutWatch.address == b["address"])
        if row is None or row.command != b["id"].hex() or row.acked:
            return  # an answer to an older id
        self.watch_due.pop(row.address, None)
        try:
            with write_transaction(self.database):
                PayoutWatch.update(acked=True, refused=b["reason"] if b["status"] == "refused" else None) \
                    .where(PayoutWatch.address == row.address).execute()
                if b["status"] == "refused":
                    log.error("chain_notifier refused to watch treasury address %s: %s", row.address, b["reason"])
                    new = set()
                else:
                    new = {self._observe(row.address, o["txid"], o["vout"], o["sats"], o["state"],
                                         o["confirmations"], o.get("height"), snapshot=True, seen_at=o.get("seen_at"))
                           for o in reversed(b["outputs"] or [])}
        except BaseException:
            self.watch_due[row.address] = 0.0
            raise
        self._after(new)

    def _others_watch(self, msg) -> None:
        """Another watcher's ack (BusinessMgr's, MemberData's, re-sent at their start): if it names
        a treasury receive address within the lookahead that holds a live payment, the run is
        extended to it; this actor's own watch of it, sent now, brings the outputs in its ack. An
        address handed out but unpaid extends nothing (no publisher grows the watch list for free)."""
        b = msg.body
        if b["status"] != "watching" or not any(
                isinstance(o, dict) and o.get("state") in ("mempool", "confirmed") for o in b["outputs"] or []):
            return
        index = self._recognised(b["address"], msg.sender)
        if index is None:
            return
        added = []
        try:
            with write_transaction(self.database):
                added = self._adopt(index)
        except BaseException:
            self._unadopt(added)
            raise
        self._watching(added)
        self._extend(RECEIVE_BOOK)

    # -- outputs --------------------------------------------------------------------------------

    @on("chain.tx")
    def on_chain_tx(self, msg):
        b, kind = msg.body, msg.topic.rsplit(".", 1)[1]
        if kind not in CHAIN_STATES:
            return
        index = None
        if b["address"] not in self.watched:
            # a treasury receive address another component handed out beyond the run, now paid:
            # the run is extended to it and the output recorded in one transaction (a crash before
            # the commit: the next event for it, or the discovery at the next start, finds it)
            index = self._recognised(b["address"], msg.sender) if kind in ("seen", "confirmed") else None
            if index is None:
                return
        added = []
        try:
            with write_transaction(self.database):
                if index is not None:
                    added = self._adopt(index)
                book = self._observe(b["address"], b["txid"], b["vout"], b["sats"], kind,
                                     b.get("confirmations") or 0, b.get("height"), snapshot=False, block=b.get("block"))
        except BaseException:
            self._unadopt(added)
            raise
        self._watching(added)
        self._after({book})

    def _after(self, books) -> None:
        """After outputs were recorded: the branches paid keep their gap; raw transactions fetched."""
        for book in books - {None}:
            self._extend(book)
        self._fetch_missing()

    def _observe(self, address, txid, vout, sats, kind, confirmations, height, *, snapshot, seen_at=None,
                 block=None):
        """Record what the chain says of one output (in a transaction). Returns the book whose
        address got a new output (its gap may need extending), else None."""
        state = CHAIN_STATES[kind]
        book, index = self.watched[address]
        now = int(self.clock())
        u = PayoutUtxo.get_or_none((PayoutUtxo.txid == txid) & (PayoutUtxo.vout == vout))
        if u is None:
            if state not in LIVE:
                return None  # never seen alive: nothing came in
            PayoutUtxo.create(txid=txid, vout=vout, sats=sats, branch=BOOKS[book], position=index, address=address,
                              state=state, confirmations=confirmations if state == "confirmed" else 0,
                              height=height if state == "confirmed" else None,
                              block=block if state == "confirmed" else None,
                              first_seen=seen_at if snapshot and seen_at else now, updated=now)
            log.info("treasury: %s:%d of %d sats to %s /%d/%d (%s)", txid, vout, sats, BOOKS[book],
                     0 if book == RECEIVE_BOOK else 1, index, state)
            return book
        if snapshot:
            # (forward() speaks the notifier's states; a spent output is a confirmed one to it)
            seen_as = SimpleNamespace(state={"seen": "mempool", "spent": "confirmed"}.get(u.state, u.state),
                                      confirmations=u.confirmations)
            if not forward(seen_as, {"seen": "mempool"}.get(kind, kind), confirmations):
                return None
        if state == "confirmed":
            if height != u.height or block:  # (a snapshot has the height only: the hash kept is the same block's)
                u.block = block
            u.confirmations, u.height = max(confirmations, 1), height
            if u.state != "spent":
                u.state = state
        else:  # seen again (a reorg unconfirmed it) or removed: a spend of it is undone with it
            u.state, u.confirmations, u.height, u.block, u.spent_at = state, 0, None, None, None
            u.spent_by = u.spent_height = u.spent_block = None
        u.updated = now
        u.save()
        return None

    @on("chain.block")
    def on_block(self, msg):
        self._queue_check(everything=False)

    def _queue_check(self, everything: bool) -> None:
        """Ask the worker which confirmed outputs are spent (and, ``everything``: which outputs the
        watched addresses hold that are not recorded)."""
        if self.treasury is None:
            return
        if self._check_queued and not everything:
            self._check_again = True  # one under way: once more when it is done (a block came meanwhile)
            return
        # the confirmed outputs, and those found spent in the last REVIVE_S (a reorg may undo the spend)
        rows = list(PayoutUtxo.select(PayoutUtxo.txid, PayoutUtxo.vout, PayoutUtxo.address, PayoutUtxo.state,
                                      PayoutUtxo.height, PayoutUtxo.block, PayoutUtxo.spent_by,
                                      PayoutUtxo.spent_height, PayoutUtxo.spent_block).where(
            (PayoutUtxo.state == "confirmed")
            | ((PayoutUtxo.state == "spent") & (PayoutUtxo.spent_at >= int(self.clock()) - REVIVE_S))).tuples())
        addresses = sorted(self.watched) if everything else sorted({r[2] for r in rows})
        if not addresses:
            return
        outpoints = {(t, v): (height, block) for t, v, _, state, height, block, *_ in rows if state == "confirmed"}
        # spent: (txid, vout) -> (its height, the spender's txid, height and block hash recorded)
        spent = {(t, v): (height, by, at, where) for t, v, _, state, height, _, by, at, where in rows
                 if state == "spent"}
        self._check_queued = True
        self.jobs.put(("check", addresses, outpoints, spent, everything))

    @every(RAW_RETRY)
    def _fetch_missing(self) -> None:
        """Ask the worker for the raw transactions of live outputs that lack theirs."""
        if self.treasury is None:
            return
        for txid, vout, block in (PayoutUtxo.select(PayoutUtxo.txid, PayoutUtxo.vout, PayoutUtxo.block)
                                  .where(PayoutUtxo.raw_tx.is_null()
                                         & PayoutUtxo.state.in_(["seen", "confirmed", "spent"])).tuples()):
            if (txid, vout) not in self._raw_asked:
                self._raw_asked.add((txid, vout))
                self.jobs.put(("raw", txid, vout, block))

    # -- the worker (network calls only; results applied on the loop) ---------------------------

    def _work(self):
        while not self.secrets_ready.wait(0.5):
            if self.stopping.is_set():
                return
        if self.adaptor is None:
            from ..chain.adaptor import Failover
            from ..chain_notifier.actor import build_backends

            try:
                self.adaptor = Failover(build_backends(self.home, self.chain_cfg, secret=self.secrets.__getitem__))
            except Exception as exc:  # (a [chain] the notifier refuses too): said in the heartbeat
                log.error("payout_mgr: no chain adaptor: %s", exc)
                self.runtime.call_soon(setattr, self, "chain_error", f"no chain adaptor: {exc}"[:300])
                return
        while not self.stopping.is_set():
            job = self.jobs.get()
            if job is None:
                return
            try:
                if job[0] == "raw":
                    raw = self.adaptor.raw_transaction(job[1], job[3])
                    self.runtime.call_soon(self._got_raw, job[1], job[2], raw)
                elif job[0] == "check":
                    self.runtime.call_soon(self._checked, *self._check(*job[1:]))
                else:  # the payouts' jobs (desk.py)
                    self._desk_job(job)
                if self.chain_error:
                    self.runtime.call_soon(self._chain_ok)
            except Exception as exc:  # ChainError, or a bug: say it in the heartbeat, retry later
                log.warning("payout_mgr: chain: %s", exc)
                self.runtime.call_soon(self._chain_failed, job, f"{type(exc).__name__}: {exc}"[:300])

    def _check(self, addresses, outpoints, spent_before, everything):
        """(Worker) the confirmed outputs spent and the transaction spending each, the spent ones
        unspent again (the spend was reorged out), and (``everything``) unrecorded unspent ones.
        ``outpoints``: (txid, vout) -> the (height, block hash) recorded; ``spent_before``: (txid,
        vout) -> (height, spent_by, spent_height, spent_block) recorded. No call here needs
        -txindex: an output missing from the unspent set is spent if the block that confirmed it
        still stands at its height, and its spender is found in the blocks (``_spenders``)."""
        unspent = self.adaptor.unspent(addresses)
        there = {(u.txid, u.vout) for u in unspent}
        revived = sorted(set(spent_before) & there)
        hashes: dict[int, str] = {}

        def at(height):
            if height not in hashes:
                hashes[height] = self.adaptor.block_hash(height)
            return hashes[height]

        tip = self.adaptor.tip().height  # (after unspent(): a spend it left out is at or below this tip)
        spent = []
        for (txid, vout), (height, block) in sorted(outpoints.items()):
            if (txid, vout) in there or height is None or height > tip:
                continue
            if block is None:  # (recorded from a snapshot: the height only) is it in the block there?
                stands = self.adaptor.raw_transaction(txid, at(height)) is not None
            else:
                stands = at(height) == block
            if stands:  # its own block is still in the chain: it was spent
                spent.append((txid, vout))
        # the spender of each output found spent now, and again of one whose recorded spender is
        # unknown or whose block was reorged away (the output may be spent by another one now)
        need = {k: outpoints[k][0] for k in spent}
        for k, (height, by, by_height, by_block) in spent_before.items():
            if k in there:
                continue
            if by is None or by_height is None or by_height > tip or at(by_height) != by_block:
                need[k] = height
        found_by = self._spenders(need, tip, at)
        spends = [(t, v, *found_by.get((t, v), (None, None, None))) for t, v in sorted(need)]
        found = []
        if everything:
            for u in unspent:
                if (u.txid, u.vout) not in outpoints and (u.txid, u.vout) not in spent_before and u.height is not None:
                    found.append((u.address, u.txid, u.vout, u.sats, min(self.depth, tip - u.height + 1), u.height,
                                  at(u.height)))
        return spends, revived, found, everything

    def _spenders(self, need, tip, at) -> dict:
        """(Worker) the confirmed transaction spending each outpoint of ``need`` ((txid, vout) ->
        the height of the block that made it, or None): (spender txid, height, block hash), found
        by reading the blocks from the tip down to the output's own height, at most
        ``[chain] rescan_limit`` blocks (a spend is usually in the last block or so: the search
        stops once every spender is found). No -txindex needed: ``block(block_hash(h))``."""
        if not need:
            return {}
        floor = max(0, tip - self.rescan_limit + 1)
        # (a spender not found before is looked for above the blocks already searched only)
        lowest = {k: max(floor, h if h is not None else floor, self._searched.get(k, -1) + 1)
                  for k, h in need.items()}
        if min(lowest.values()) > tip:
            return {}
        wanted = set(need)
        out = {}
        for height in range(tip, min(lowest.values()) - 1, -1):
            if not wanted:
                break
            block_hash = at(height)
            for t in self.adaptor.block(block_hash).txs:
                for outpoint in t.inputs:
                    if outpoint in wanted:
                        out[outpoint] = (t.txid, height, block_hash)
                        wanted.discard(outpoint)
            wanted = {k for k in wanted if lowest[k] < height}
        for k in out:
            self._searched.pop(k, None)
        for txid, vout in sorted(set(need) - set(out)):
            if (txid, vout) not in self._searched:
                log.warning("treasury: %s:%d is spent, by a transaction not found in the %d block(s) searched "
                            "([chain] rescan_limit); its payout, if any, is left as it is", txid, vout,
                            tip - lowest[(txid, vout)] + 1)
            self._searched[(txid, vout)] = tip
        return out

    # -- results (loop thread) ----------------------------------------------------------------

    def _chain_ok(self):
        self.chain_error = None

    def _chain_failed(self, job, error):
        self.chain_error = error
        if job[0] == "raw":
            self._raw_asked.discard((job[1], job[2]))  # asked again by the timer
        elif job[0] == "lookup":
            self._lookup_queued = False  # asked again after the next block or check
        elif job[0] in ("fees", "broadcast"):
            pass  # asked again by their timers
        else:
            self._check_queued = self._check_again = False
            self.runtime.call_later(RAW_RETRY, self._queue_check, job[-1])  # again shortly

    def _got_raw(self, txid, vout, raw):
        self._raw_asked.discard((txid, vout))
        if raw is None:
            return  # not known to the node (yet): asked again
        if Transaction.parse(raw).txid().hex() != txid:
            log.error("the chain backend's raw transaction for %s has another txid: not kept", txid)
            return
        PayoutUtxo.update(raw_tx=raw).where((PayoutUtxo.txid == txid) & PayoutUtxo.raw_tx.is_null()).execute()

    def _checked(self, spends, revived, found, everything):
        self._check_queued = False
        now = int(self.clock())
        books = set()
        with write_transaction(self.database):
            for txid, vout, by, by_height, by_block in spends:
                where = (PayoutUtxo.txid == txid) & (PayoutUtxo.vout == vout)
                n = PayoutUtxo.update(state="spent", spent_at=now, updated=now, spent_by=by, spent_height=by_height,
                                      spent_block=by_block).where(where & (PayoutUtxo.state == "confirmed")).execute()
                if n:
                    log.info("treasury: %s:%d spent by %s at height %s", txid, vout, by or "(not found)", by_height)
                elif by is not None:  # already spent: its spender found, or another one after a reorg
                    n = PayoutUtxo.update(spent_by=by, spent_height=by_height, spent_block=by_block, updated=now) \
                        .where(where & (PayoutUtxo.state == "spent")
                               & ((PayoutUtxo.spent_by.is_null()) | (PayoutUtxo.spent_by != by)
                                  | PayoutUtxo.spent_block.is_null() | (PayoutUtxo.spent_block != by_block))).execute()
                    if n:
                        log.info("treasury: %s:%d spent by %s at height %d", txid, vout, by, by_height)
                else:  # the recorded spender's block was reorged away and no other found (yet)
                    PayoutUtxo.update(spent_by=None, spent_height=None, spent_block=None).where(
                        where & (PayoutUtxo.state == "spent")).execute()
            for txid, vout in revived:
                n = PayoutUtxo.update(state="confirmed", spent_at=None, spent_by=None, spent_height=None,
                                      spent_block=None, updated=now).where(
                    (PayoutUtxo.txid == txid) & (PayoutUtxo.vout == vout) & (PayoutUtxo.state == "spent")).execute()
                if n:
                    log.warning("treasury: %s:%d is unspent again (the transaction spending it was reorged out)",
                                txid, vout)
            for address, txid, vout, sats, confirmations, height, block in found:
                if address in self.watched and not PayoutUtxo.select().where(
                        (PayoutUtxo.txid == txid) & (PayoutUtxo.vout == vout)).exists():
                    books.add(self._observe(address, txid, vout, sats, "confirmed", confirmations, height,
                                            snapshot=False, block=block))
        self._after(books)
        self._queue_lookup()  # (desk.py) where the payouts are, now that spends are known
        self._build_ready()  # coins may have confirmed
        if self._check_again:  # a block came while it ran
            self._check_again = False
            self._queue_check(everything=False)

    # -- the price ----------------------------------------------------------------------------

    @on("price.btc_cad")
    def on_price(self, msg):
        b = msg.body
        fields = {"cad_per_btc": b["cad_per_btc"], "as_of": b["as_of"], "received": int(self.clock()), "stale": None}
        try:
            PayoutPrice.insert(id=1, **fields).execute()
        except peewee.IntegrityError:
            PayoutPrice.update(**fields).where(PayoutPrice.id == 1).execute()

    @on("price.stale")
    def on_price_stale(self, msg):
        PayoutPrice.update(stale=msg.body["reason"]).where(PayoutPrice.id == 1).execute()


__all__ = ["PayoutMgr", "CHANGE_BOOK", "RECEIVE_BOOK"]
