"""PayoutMgr's treasury outputs on the fake runtime (actors/testing.py), on SQLite and PostgreSQL.

The test plays the chain notifier (discovery answers, watch acks, chain.* events) and, through a
fake ChainAdaptor handed to PayoutMgr, the node its worker asks for raw transactions and for the
unspent outputs (spent detection). The home is `dctrl init`'s: its demo 2-of-3 treasury.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from actors.chain.adaptor import Block, ChainError, Tip, Tx, TxOut
from actors.payout_mgr import queries
from actors.payout_mgr.actor import PayoutMgr
from actors.payout_mgr.models import PayoutUtxo
from actors.payout_mgr.treasury import Treasury
from actors.testing import FakeClock, FakeRuntime
from keys.home import Home
from tests.unit_db import empty, unit_home

GAP = 20


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("payout_unit") / "home", "payout_unit") as h:
        yield h


class FakeNode:
    """The chain as PayoutMgr's own adaptor sees it: transactions (raw, height), block hashes,
    blocks (the transactions at a height) and the UTXO set. Like a bitcoind without -txindex (its
    default), it finds a confirmed transaction only when told the block holding it:
    ``transaction()`` finds only unconfirmed ones (``txindex = True``: every one)."""

    name = "fake"
    txindex = False

    def __init__(self):
        self.txs: dict[str, tuple[bytes, int | None]] = {}
        self.utxos: dict[tuple[str, int], TxOut] = {}
        self.blocks: dict[int, str] = {}  # height -> hash (reorged: another one)
        self.height = 200
        self.down = False
        self.unspent_asked: list[list[str]] = []
        self.blocks_read: list[int] = []

    def block_hash(self, height):
        self._up()
        return self.blocks.setdefault(height, hashlib.sha256(b"block %d" % height).hexdigest())

    def _up(self):
        if self.down:
            raise ChainError("fake: connection refused")

    def fund(self, treasury, index, sats, change=False, confirmed_at=None, salt=None):
        """A transaction paying ``sats`` to the treasury's address; (txid, address)."""
        address, spk = treasury.address(index, change)
        vin = [TransactionInput(hashlib.sha256(salt or os.urandom(8)).digest(), 0)]
        tx = Transaction(vin=vin, vout=[TransactionOutput(sats, Script(bytes.fromhex(spk)))])
        txid = tx.txid().hex()
        self.txs[txid] = (tx.serialize(), confirmed_at)
        if confirmed_at is not None:
            self.utxos[(txid, 0)] = TxOut(txid, 0, spk, address, sats, confirmed_at)
        return txid, address

    # -- the ChainAdaptor calls PayoutMgr makes --

    def raw_transaction(self, txid, block_hash=None):
        self._up()
        raw, height = self.txs.get(txid, (None, None))
        if height is not None and block_hash != self.block_hash(height):
            return None  # no -txindex: a confirmed transaction is found in its block only
        return raw

    def transaction(self, txid):
        self._up()
        if txid not in self.txs:
            return None
        raw, height = self.txs[txid]
        if height is not None and not self.txindex:
            return None  # bitcoind without -txindex: "No such mempool transaction"
        return self._tx(txid, raw, height)

    @staticmethod
    def _tx(txid, raw, height, block_hash=None):
        t = Transaction.parse(raw)
        return Tx(txid, (), tuple((v.txid.hex(), v.vout) for v in t.vin), False, height, block_hash)

    def block(self, block_hash):
        """The block with that hash: the transactions confirmed at its height (the fake's chain
        has one block per height; a reorg gives the height another hash)."""
        self._up()
        height = next(h for h in range(self.height + 1) if self.block_hash(h) == block_hash)
        self.blocks_read.append(height)
        return Block(height, block_hash, self.block_hash(height - 1) if height else "00" * 32, 1,
                     tuple(self._tx(t, raw, h, block_hash) for t, (raw, h) in self.txs.items() if h == height))

    def unspent(self, addresses):
        self._up()
        self.unspent_asked.append(list(addresses))
        from embit.script import address_to_scriptpubkey

        by_script = {address_to_scriptpubkey(a).data.hex(): a for a in addresses}
        return [TxOut(u.txid, u.vout, u.script, by_script[u.script], u.sats, u.height) for u in self.utxos.values()
                if u.script in by_script]

    def tip(self):
        self._up()
        return Tip(self.height, "ab" * 32)

    def close(self):
        pass


class Payouts:
    """PayoutMgr on a fake runtime, with the test as chain notifier."""

    def __init__(self, home, node=None):
        self.home = home
        self.node = node or FakeNode()
        self.clock = FakeClock()
        self._patch = self.clock.patch(sys.modules[PayoutMgr.__module__])
        self._patch.__enter__()
        cfg = home.config["treasury"]
        self.treasury = Treasury(cfg["descriptor"], "regtest", cfg.get("change_descriptor") or None)
        self.start()

    def start(self):
        self.actor = PayoutMgr(self.home, adaptor=self.node, clock=self.clock.time)
        self.rt = FakeRuntime(self.actor, name="payout_mgr", clock=self.clock, home=self.home).start()
        self.answered = 0

    def restart(self):
        self.rt.stop()
        self.start()

    def close(self):
        try:
            self.rt.stop()
        finally:
            self._patch.__exit__(None, None, None)

    @property
    def db(self):
        return self.actor.database

    # -- the chain notifier --

    def serve(self, highest=None, outputs=None):
        """Answer every discovery and watch published since the last call. ``highest``: book ->
        the highest used index; ``outputs``: address -> the watch ack's outputs."""
        published = self.rt.published
        while self.answered < len(published):
            topic, body = published[self.answered]
            self.answered += 1
            if topic == "cmd.chain.discover":
                self.rt.send("chain.discover.ack", {"id": body["id"], "book": body["book"], "status": "done",
                                                    "reason": None, "highest": (highest or {}).get(body["book"]),
                                                    "scanned": body["gap"]}, sender="chain_notifier")
            elif topic == "cmd.chain.watch":
                self.rt.send("chain.watch.ack", {"id": body["id"], "address": body["address"],
                                                 "script": "0020" + "00" * 32, "status": "watching", "reason": None,
                                                 "outputs": (outputs or {}).get(body["address"], [])},
                             sender="chain_notifier")

    def run(self, seconds=1.0, **serve):
        self.serve(**serve)
        for _ in range(max(1, round(seconds / 0.25))):
            self.rt.advance(0.25)
            self.serve(**serve)

    def chain(self, address, sats, state, tx, confirmations=0, vout=0, height=None):
        body = {"event_id": hashlib.sha256(f"{state}{tx}{vout}{confirmations}".encode()).hexdigest(), "txid": tx,
                "vout": vout, "address": address, "script": "0020" + "00" * 32, "sats": sats, "label": None}
        if state == "seen":
            body["rbf"] = False
        elif state == "confirmed":
            height = height or 200
            if self.node.txs.get(tx, (None, None))[1] is None and tx in self.node.txs:  # mined now
                self.node.txs[tx] = (self.node.txs[tx][0], height)
            body.update(confirmations=confirmations, height=height, block=self.node.block_hash(height))
        elif state == "replaced":
            body["by"] = None
        elif state == "removed":
            body["reason"] = "reorged out"
        self.rt.send(f"chain.tx.{state}", body, sender="chain_notifier")
        self.serve()

    def block(self, height):
        self.node.height = height
        self.rt.send("chain.block", {"height": height, "hash": "cd" * 32, "prev": "ef" * 32, "time": 1},
                     sender="chain_notifier")

    # -- reading --

    def utxo(self, txid, vout=0):
        with self.db.bind_ctx([PayoutUtxo]):
            return PayoutUtxo.get_or_none((PayoutUtxo.txid == txid) & (PayoutUtxo.vout == vout))

    def shown(self):
        return queries.treasury(self.db, GAP)

    def watched(self, branch):
        """The addresses watched on ``branch`` (the last cmd.chain.watch of each), by index."""
        change = branch == "change"
        index = {self.treasury.address(i, change)[0]: i for i in range(200)}
        return sorted({index[b["address"]] for b in self.rt.bodies("cmd.chain.watch") if b["address"] in index})


@pytest.fixture
def payouts(home):
    empty(home.database_url)
    p = Payouts(home)
    yield p
    p.close()


def test_discovery_comes_first_then_every_index_up_to_the_gap_is_watched(payouts):
    payouts.rt.advance(3.0)  # asked (and asked again), not answered: nothing watched yet
    asked = payouts.rt.bodies("cmd.chain.discover")
    assert {b["book"] for b in asked} == {"treasury", "treasury_change"} and len(asked) >= 4
    assert all(b["start"] == 0 and b["gap"] == GAP for b in asked)
    assert not payouts.rt.bodies("cmd.chain.watch")
    assert "waiting for chain_notifier" in payouts.actor.health()[1]
    # the change branch has history up to /1/3 (a co-signer's wallet spent from it)
    payouts.run(0.5, highest={"treasury_change": 3})
    assert payouts.watched("receive") == list(range(GAP))
    assert payouts.watched("change") == list(range(3 + GAP + 1))  # 0..3 may hold coins, then 20 unused
    w = payouts.rt.bodies("cmd.chain.watch", address=payouts.treasury.address(0)[0])[0]
    assert w["label"] == "treasury receive 0" and int(payouts.clock.time()) - 2 <= w["since"] <= payouts.clock.time()
    shown = payouts.shown()
    assert shown["gap"]["receive"] == {"last_used": None, "watched_to": GAP - 1, "watched": GAP, "acked": GAP,
                                       "unused_beyond": GAP, "gap_limit": GAP}
    assert shown["gap"]["change"]["last_used"] == 3 and shown["gap"]["change"]["unused_beyond"] == GAP
    assert [a["index"] for a in shown["next_addresses"]] == [0, 1, 2, 3, 4]
    assert "waiting for chain_notifier" not in payouts.actor.health()[1]
    # a restart watches every address again (new ids), and asks the discovery from past the last one
    payouts.restart()
    payouts.rt.take()
    payouts.answered = 0
    payouts.run(0.5)
    assert payouts.watched("receive") == list(range(GAP))
    assert {b["start"] for b in payouts.rt.bodies("cmd.chain.discover", book="treasury")} == {GAP}


def test_an_unacked_watch_is_sent_again_until_acked(payouts):
    payouts.run(0.5)
    address = payouts.treasury.address(7)[0]
    payouts.rt.advance(5.0)  # all acked: no more
    assert len(payouts.rt.bodies("cmd.chain.watch", address=address)) == 1
    payouts.restart()
    payouts.rt.take()
    payouts.answered = 10**9  # the notifier is away: nothing answered
    payouts.rt.advance(5.0)
    assert len(payouts.rt.bodies("cmd.chain.watch", address=address)) >= 2


def test_a_payment_extends_the_gap_on_its_branch(payouts):
    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 5, 100_000)
    payouts.chain(address, 100_000, "seen", txid)
    assert payouts.watched("receive") == list(range(5 + GAP + 1))
    assert payouts.watched("change") == list(range(GAP))  # the other branch is unchanged
    assert [a["index"] for a in payouts.shown()["next_addresses"]] == [6, 7, 8, 9, 10]
    # paid at the last watched index: 20 more beyond it
    txid2, address2 = payouts.node.fund(payouts.treasury, 25, 50_000)
    payouts.chain(address2, 50_000, "confirmed", txid2, confirmations=1)
    assert payouts.watched("receive") == list(range(25 + GAP + 1))
    g = payouts.shown()["gap"]["receive"]
    assert (g["last_used"], g["watched_to"], g["unused_beyond"]) == (25, 45, GAP)


def test_a_payment_seen_then_confirmed_with_its_raw_transaction(payouts):
    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 0, 250_000)
    payouts.chain(address, 250_000, "seen", txid)
    u = payouts.utxo(txid)
    assert (u.state, u.confirmations, u.branch, u.position, u.sats) == ("seen", 0, "receive", 0, 250_000)
    b = payouts.shown()["balance"]
    assert (b["confirmed_sats"], b["unconfirmed_sats"]) == (0, 250_000)
    # the worker fetches the raw transaction (off the loop thread)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).raw_tx is not None, what="the raw transaction")
    assert Transaction.parse(bytes(payouts.utxo(txid).raw_tx)).txid().hex() == txid
    assert queries.spendable(payouts.db) == []  # not confirmed yet
    payouts.chain(address, 250_000, "confirmed", txid, confirmations=1, height=201)
    u = payouts.utxo(txid)
    assert (u.state, u.confirmations, u.height) == ("confirmed", 1, 201)
    b = payouts.shown()["balance"]
    assert (b["confirmed_sats"], b["unconfirmed_sats"]) == (250_000, 0)
    (s,) = queries.spendable(payouts.db)
    assert (s["txid"], s["vout"], s["sats"], s["branch"], s["index"]) == (txid, 0, 250_000, "receive", 0)
    assert s["prev_tx"] == payouts.node.txs[txid][0]
    # repeated events change nothing; more confirmations are counted
    payouts.chain(address, 250_000, "confirmed", txid, confirmations=1, height=201)
    payouts.chain(address, 250_000, "confirmed", txid, confirmations=3, height=201)
    assert payouts.utxo(txid).confirmations == 3
    # and the CAD at the last price
    payouts.rt.send("price.btc_cad", {"cad_per_btc": "50000.00", "sources": [], "used": 2,
                                      "as_of": int(payouts.clock.time() * 1000)}, sender="price_notifier")
    assert payouts.shown()["balance"]["confirmed_cad"] == "125.00"


def test_a_raw_transaction_the_node_cannot_give_is_asked_again(payouts):
    payouts.run(0.5)
    payouts.node.down = True
    txid, address = payouts.node.fund(payouts.treasury, 1, 10_000)
    payouts.chain(address, 10_000, "seen", txid)
    payouts.rt.wait_for(lambda: payouts.actor.chain_error, what="the chain error")
    assert "connection refused" in payouts.actor.health()[1] and payouts.utxo(txid).raw_tx is None
    payouts.node.down = False
    payouts.rt.advance(6.0)  # the retry timer
    payouts.rt.wait_for(lambda: payouts.utxo(txid).raw_tx is not None, what="the raw transaction, asked again")
    payouts.rt.wait_for(lambda: payouts.actor.chain_error is None, what="the error cleared")


def test_a_confirmed_payment_reorged_out_goes_back_to_seen_then_removed(payouts):
    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 2, 80_000)
    payouts.chain(address, 80_000, "confirmed", txid, confirmations=2, height=199)  # first seen in a block
    assert payouts.utxo(txid).state == "confirmed"
    # its raw transaction asked with the block holding it (the node has no -txindex)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).raw_tx is not None, what="the raw transaction, from its block")
    payouts.rt.send("chain.reorg", {"fork_height": 198, "depth": 2, "old_tip": "aa" * 32, "new_tip": "bb" * 32},
                    sender="chain_notifier")
    payouts.chain(address, 80_000, "seen", txid)  # back in the mempool
    u = payouts.utxo(txid)
    assert (u.state, u.confirmations, u.height) == ("seen", 0, None)
    assert payouts.shown()["balance"] == {"confirmed_sats": 0, "unconfirmed_sats": 80_000}
    payouts.chain(address, 80_000, "removed", txid)  # and then gone (a double spend won)
    assert payouts.utxo(txid).state == "removed"
    assert payouts.shown()["balance"] == {"confirmed_sats": 0, "unconfirmed_sats": 0}
    assert payouts.shown()["utxos"] == []
    # a stale snapshot (a watch ack after a restart) does not bring it back
    payouts.restart()
    payouts.run(0.5, outputs={address: [{"txid": txid, "vout": 0, "sats": 80_000, "state": "mempool",
                                         "confirmations": 0, "height": None, "rbf": False, "seen_at": 1, "by": None}]})
    assert payouts.utxo(txid).state == "removed"
    # but being mined after all does
    payouts.chain(address, 80_000, "confirmed", txid, confirmations=1, height=205)
    assert payouts.utxo(txid).state == "confirmed"


def test_an_output_spent_elsewhere_is_marked_spent_at_the_next_block(payouts):
    payouts.run(0.5)
    t = payouts.treasury
    spent, a1 = payouts.node.fund(t, 3, 40_000, confirmed_at=200)
    kept, a2 = payouts.node.fund(t, 4, 60_000, confirmed_at=200)
    gone, a3 = payouts.node.fund(t, 2, 70_000, change=True, confirmed_at=199)
    for txid, address, sats, height in ((spent, a1, 40_000, 200), (kept, a2, 60_000, 200), (gone, a3, 70_000, 199)):
        payouts.chain(address, sats, "confirmed", txid, confirmations=1, height=height)
    payouts.block(201)
    payouts.rt.wait_for(lambda: payouts.actor._check_queued is False, what="the first check")
    assert {payouts.utxo(x).state for x in (spent, kept, gone)} == {"confirmed"}  # the control
    # a co-signer's Sparrow spends one; another's own transaction is reorged out (not spent: the
    # notifier's events say what becomes of it)
    del payouts.node.utxos[(spent, 0)]
    del payouts.node.utxos[(gone, 0)]
    payouts.node.txs[gone] = (payouts.node.txs[gone][0], None)
    payouts.node.blocks[199] = "ee" * 32  # the block that confirmed it is no longer at its height
    payouts.block(202)
    payouts.rt.wait_for(lambda: payouts.utxo(spent).state == "spent", what="the spend noticed")
    assert payouts.utxo(spent).spent_at is not None
    assert (payouts.utxo(kept).state, payouts.utxo(gone).state) == ("confirmed", "confirmed")
    asked = payouts.node.unspent_asked[-1]
    assert set(asked) == {a1, a2, a3}  # only the addresses holding confirmed outputs
    assert payouts.shown()["balance"]["confirmed_sats"] == 130_000
    assert [u["txid"] for u in queries.utxos(payouts.db, states=["spent"])] == [spent]
    # later confirmations of the spent output keep it spent
    payouts.chain(a1, 40_000, "confirmed", spent, confirmations=3, height=200)
    assert (payouts.utxo(spent).state, payouts.utxo(spent).confirmations) == ("spent", 3)


def test_coins_paid_before_the_treasury_was_watched_are_found_at_start(payouts):
    """The notifier's discovery finds history at /0/2; the watch's rescan goes back only from
    the address's birth: the start's check of the unspent outputs records the coins there."""
    txid, address = payouts.node.fund(payouts.treasury, 2, 123_456, confirmed_at=150)
    payouts.run(0.5, highest={"treasury": 2})
    payouts.rt.wait_for(lambda: payouts.utxo(txid) is not None, what="the old coins found")
    u = payouts.utxo(txid)
    assert (u.state, u.sats, u.position, u.height, u.confirmations) == ("confirmed", 123_456, 2, 150, 6)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).raw_tx is not None, what="its raw transaction")
    assert payouts.shown()["gap"]["receive"]["watched_to"] == 2 + GAP


def test_no_descriptor_runs_and_does_nothing(tmp_path):
    from tests.harness import new_home

    h = new_home(tmp_path / "home")
    cfg = h.root / "config.toml"
    text = cfg.read_text()
    start = text.index('descriptor = "wsh(')
    cfg.write_text(text[:start] + 'descriptor = ""' + text[text.index("\n", start):])
    clock = FakeClock()
    actor = PayoutMgr(Home(h.root), adaptor=FakeNode(), clock=clock.time)
    rt = FakeRuntime(actor, name="payout_mgr", clock=clock, home=Home(h.root)).start()
    try:
        rt.advance(3.0)
        assert rt.published == []
        assert actor.health() == ("ok", "no [treasury] descriptor: nothing to watch")
    finally:
        rt.stop()


def test_a_descriptor_that_cannot_be_used_is_said_in_health(tmp_path):
    from tests.harness import new_home

    h = new_home(tmp_path / "home")
    cfg = h.root / "config.toml"
    cfg.write_text(cfg.read_text().replace("wsh(sortedmulti(2,", "wsh(sortedmulti(4,", 1))
    actor = PayoutMgr(Home(h.root), adaptor=FakeNode())
    try:
        status, detail = actor.health()
        assert status == "degraded" and "[treasury] descriptor" in detail
    finally:
        actor.teardown()


def test_a_spent_check_the_node_could_not_answer_is_tried_again(payouts):
    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 6, 30_000, confirmed_at=200)
    payouts.chain(address, 30_000, "confirmed", txid, confirmations=1, height=200)
    payouts.rt.wait_for(lambda: payouts.actor._check_queued is False, what="the start's checks")
    del payouts.node.utxos[(txid, 0)]  # spent elsewhere
    payouts.node.down = True
    payouts.block(201)
    payouts.rt.wait_for(lambda: payouts.actor.chain_error, what="the check failing")
    assert payouts.utxo(txid).state == "confirmed"
    payouts.node.down = False
    payouts.rt.advance(6.0)  # tried again without waiting for the next block
    payouts.rt.wait_for(lambda: payouts.utxo(txid).state == "spent", what="the spend noticed on the retry")


def test_a_spend_reorged_out_makes_the_output_confirmed_again(payouts):
    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 8, 90_000, confirmed_at=200)
    payouts.chain(address, 90_000, "confirmed", txid, confirmations=1, height=200)
    payouts.rt.wait_for(lambda: payouts.actor._check_queued is False, what="the start's checks")
    utxo = payouts.node.utxos.pop((txid, 0))
    payouts.block(201)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).state == "spent", what="the spend noticed")
    payouts.node.utxos[(txid, 0)] = utxo  # the block with the spend is reorged away
    payouts.block(201)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).state == "confirmed", what="unspent again")
    assert payouts.utxo(txid).spent_at is None and payouts.shown()["balance"]["confirmed_sats"] == 90_000


def test_an_older_payout_utxo_table_gets_the_spender_columns_on_upgrade(home):
    """payout_utxo made before spent_by/spent_height/spent_block: PayoutMgr adds them (nullable)
    and keeps the rows."""
    empty(home.database_url)
    p = Payouts(home)
    try:
        txid, address = p.node.fund(p.treasury, 1, 10_000, confirmed_at=200)
        p.run(0.5)
        p.chain(address, 10_000, "confirmed", txid, confirmations=1, height=200)
        for column in ("spent_by", "spent_height", "spent_block"):
            p.db.execute_sql(f"ALTER TABLE payout_utxo DROP COLUMN {column}")
        assert "spent_by" not in {c.name for c in p.db.get_columns("payout_utxo")}
        p.restart()
        assert {"spent_by", "spent_height", "spent_block"} <= {c.name for c in p.db.get_columns("payout_utxo")}
        u = p.utxo(txid)
        assert (u.state, u.spent_by, u.spent_height, u.spent_block) == ("confirmed", None, None, None)
    finally:
        p.close()


def test_the_spender_of_an_output_is_found_in_the_blocks_and_found_again_after_a_reorg(payouts):
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    payouts.run(0.5)
    txid, address = payouts.node.fund(payouts.treasury, 9, 70_000, confirmed_at=200)
    payouts.chain(address, 70_000, "confirmed", txid, confirmations=1, height=200)
    payouts.rt.wait_for(lambda: payouts.actor._check_queued is False, what="the start's checks")

    def spend(salt):
        t = Transaction(vin=[TransactionInput(bytes.fromhex(txid), 0)],
                        vout=[TransactionOutput(60_000 - salt, Script(bytes.fromhex("0014" + "44" * 20)))])
        return t.txid().hex(), t.serialize()

    first, raw = spend(0)
    payouts.node.txs[first] = (raw, 203)
    del payouts.node.utxos[(txid, 0)]
    payouts.node.blocks_read.clear()
    payouts.block(205)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).spent_by == first, what="the spender found")
    u = payouts.utxo(txid)
    assert (u.state, u.spent_height, u.spent_block) == ("spent", 203, payouts.node.block_hash(203))
    assert payouts.node.blocks_read == [205, 204, 203]  # from the tip down, stopping once found
    # the next block: the spender's block still stands, nothing read again
    payouts.node.blocks_read.clear()
    payouts.block(206)
    payouts.rt.wait_for(lambda: payouts.actor._check_queued is False, what="the check")
    assert payouts.node.blocks_read == []
    # a reorg from 203: another transaction spends it in the new chain, at 204
    second, raw2 = spend(1)
    del payouts.node.txs[first]
    payouts.node.txs[second] = (raw2, 204)
    for h in range(203, 207):
        payouts.node.blocks[h] = hashlib.sha256(b"other %d" % h).hexdigest()
    payouts.block(206)
    payouts.rt.wait_for(lambda: payouts.utxo(txid).spent_by == second, what="the new spender found")
    u = payouts.utxo(txid)
    assert (u.state, u.spent_height, u.spent_block) == ("spent", 204, payouts.node.block_hash(204))


@pytest.fixture
def shared(home):
    """PayoutMgr on a home whose `[members] receive` is the treasury's descriptor: MemberData
    hands out the treasury's receive addresses from its own index (issue 13, gap 1)."""
    empty(home.database_url)
    members = dict(home.config["members"])
    home.config["members"]["receive"] = home.config["treasury"]["descriptor"]
    p = None
    try:
        p = Payouts(home)
        yield p
    finally:
        if p is not None:
            p.close()
        home.config["members"] = members


def _others_ack(payouts, address, outputs, sender="chain_notifier"):
    """The notifier's ack of another watcher's watch (MemberData's) of ``address``."""
    payouts.rt.send("chain.watch.ack", {"id": os.urandom(16), "address": address, "script": "0020" + "00" * 32,
                                        "status": "watching", "reason": None, "outputs": outputs},
                    sender=sender, bypass_broker=sender != "chain_notifier")


def _receive_watched(payouts, upto):
    index = {payouts.treasury.address(i)[0]: i for i in range(upto)}
    return sorted({index[b["address"]] for b in payouts.rt.bodies("cmd.chain.watch") if b["address"] in index})


def test_a_payment_beyond_the_run_to_an_address_members_hand_out_is_recorded_and_the_run_extended(shared):
    payouts = shared
    assert payouts.actor.shared == ["members"] and payouts.actor.lookahead == 200
    payouts.run(0.5)
    # the discovery at start looks as far past the run as a payment is recognised while running
    gaps = {b["book"]: b["gap"] for b in payouts.rt.bodies("cmd.chain.discover")}
    assert gaps == {"treasury": 200, "treasury_change": GAP}
    assert payouts.watched("receive") == list(range(GAP))
    # /0/60 (a member's dues address, beyond the run) is paid: recorded, and the run reaches 60 + GAP
    txid, address = payouts.node.fund(payouts.treasury, 60, 70_000)
    payouts.chain(address, 70_000, "seen", txid)
    u = payouts.utxo(txid)
    assert (u.state, u.sats, u.branch, u.position, u.address) == ("seen", 70_000, "receive", 60, address)
    assert _receive_watched(payouts, 120) == list(range(60 + GAP + 1))
    g = payouts.shown()["gap"]["receive"]
    assert (g["last_used"], g["watched_to"]) == (60, 80)
    # confirmed: the same output, not a second one
    payouts.chain(address, 70_000, "confirmed", txid, confirmations=1)
    assert payouts.utxo(txid).state == "confirmed" and payouts.shown()["balance"]["confirmed_sats"] == 70_000
    # the lookahead moved with the run: /0/250 (within 200 of /0/80) is recognised too
    txid2, address2 = payouts.node.fund(payouts.treasury, 250, 1_000)
    payouts.chain(address2, 1_000, "confirmed", txid2, confirmations=1)
    assert payouts.utxo(txid2).position == 250
    # a restart: every address watched again, the discovery from past the run with the lookahead as gap
    payouts.restart()
    payouts.rt.take()
    payouts.answered = 0
    payouts.run(0.5)
    asked = payouts.rt.bodies("cmd.chain.discover", book="treasury")
    assert {(b["start"], b["gap"]) for b in asked} == {(250 + GAP + 1, 200)}
    assert PayoutUtxo.select().count() == 2


def test_what_may_not_extend_the_run_is_ignored(shared):
    payouts = shared
    payouts.run(0.5)
    before = len(payouts.actor.watched)
    # beyond the lookahead (200 past /0/19)
    txid, address = payouts.node.fund(payouts.treasury, GAP + 200, 5_000)
    payouts.chain(address, 5_000, "seen", txid)
    # within it, but not from the chain notifier (the broker would not let another publish chain.*)
    txid2, address2 = payouts.node.fund(payouts.treasury, 30, 5_000)
    body = {"event_id": "ab" * 32, "txid": txid2, "vout": 0, "address": address2, "script": "0020" + "00" * 32,
            "sats": 5_000, "label": None, "rbf": False}
    payouts.rt.send("chain.tx.seen", body, sender="admin", bypass_broker=True)
    # a removal names no live output; another watcher's ack of an unpaid address extends nothing
    payouts.chain(address2, 5_000, "removed", txid2)
    _others_ack(payouts, payouts.treasury.address(40)[0], [])
    _others_ack(payouts, payouts.treasury.address(41)[0], [{"txid": txid2, "vout": 0, "sats": 5_000,
                                                            "state": "confirmed", "confirmations": 1, "height": 199,
                                                            "rbf": False, "seen_at": None, "by": None}],
                sender="admin")
    payouts.run(0.5)
    assert len(payouts.actor.watched) == before and PayoutUtxo.select().count() == 0
    assert payouts.watched("receive") == list(range(GAP))


def test_another_watchers_ack_of_a_paid_address_extends_the_run_and_its_own_watch_records_it(shared):
    payouts = shared
    payouts.run(0.5)
    # MemberData restarted and watched /0/45 again; the notifier has a payment to it (made while
    # payout_mgr was stopped, its events missed)
    txid, address = payouts.node.fund(payouts.treasury, 45, 9_000, confirmed_at=199)
    out = {"txid": txid, "vout": 0, "sats": 9_000, "state": "confirmed", "confirmations": 2, "height": 199,
           "rbf": False, "seen_at": None, "by": None}
    _others_ack(payouts, address, [out])
    payouts.run(0.5, outputs={address: [out]})  # payout_mgr's own watch of it, acked with the output
    u = payouts.utxo(txid)
    assert (u.state, u.position, u.confirmations) == ("confirmed", 45, 2)
    assert _receive_watched(payouts, 100) == list(range(45 + GAP + 1))
    _others_ack(payouts, address, [out])  # again: nothing twice
    payouts.run(0.5, outputs={address: [out]})
    assert PayoutUtxo.select().count() == 1


def test_without_a_component_sharing_the_descriptor_nothing_is_looked_for_beyond_the_run(payouts):
    assert payouts.actor.shared == [] and payouts.actor.lookahead == 0 and not payouts.actor.ahead
    payouts.run(0.5)
    assert {b["gap"] for b in payouts.rt.bodies("cmd.chain.discover")} == {GAP}
    txid, address = payouts.node.fund(payouts.treasury, 30, 5_000)
    payouts.chain(address, 5_000, "seen", txid)
    assert payouts.utxo(txid) is None


def test_a_payment_beyond_the_run_made_while_payout_mgr_was_down_is_found_at_its_start(shared):
    payouts = shared
    payouts.run(0.5)
    payouts.rt.stop()  # (as kill -9: nothing more runs) /0/150, a member's, is paid meanwhile
    txid, address = payouts.node.fund(payouts.treasury, 150, 8_000, confirmed_at=199)
    out = {"txid": txid, "vout": 0, "sats": 8_000, "state": "confirmed", "confirmations": 2, "height": 199,
           "rbf": False, "seen_at": None, "by": None}
    payouts.start()
    # the discovery looks 200 past the run (/0/20 on): the notifier finds /0/150 used
    payouts.run(0.5, highest={"treasury": 150}, outputs={address: [out]})
    assert {(b["start"], b["gap"]) for b in payouts.rt.bodies("cmd.chain.discover", book="treasury")} == {(GAP, 200)}
    u = payouts.utxo(txid)
    assert (u.state, u.position, u.sats) == ("confirmed", 150, 8_000)
    assert _receive_watched(payouts, 200) == list(range(150 + GAP + 1))
