"""The simulated chain: blocks, UTXO set, mempool, mining, replacement and reorgs.

Serialization is real (embit transactions, 80-byte headers, merkle roots,
BIP141 witness commitments, regtest proof of work with bits 0x207fffff), and
the mempool applies the policy checks a client can trip over (missing or
spent inputs, coinbase maturity, fees, dust, full-RBF replacement rules).
Scripts and signatures are NOT validated: any witness is accepted.

Hashes are kept in RPC display order (hex of the reversed double-SHA256);
``*_le`` attributes hold the internal byte order.

Every state change reports to a :class:`Notifier` in the order Bitcoin Core's
validation interface does, so the ZMQ publisher can mirror bitcoind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time

from embit import compact
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.errors import Rejected
from scripts.sim.chainsim.jsonfmt import COIN, MAX_MONEY, format_feerate, format_money

log = logging.getLogger(__name__)

MEMPOOL_HEIGHT = 0x7FFFFFFF
COINBASE_MATURITY = 100
REGTEST_BITS = 0x207FFFFF
HALVING_INTERVAL = 150  # regtest
BLOCK_VERSION = 0x20000000  # VERSIONBITS_TOP_BITS, what regtest generate* produces
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_NONFINAL = 0xFFFFFFFE
SEQUENCE_RBF = 0xFFFFFFFD
MIN_RELAY_FEERATE = 1000  # sat/kvB
INCREMENTAL_RELAY_FEERATE = 1000  # sat/kvB
MAX_REPLACEMENT_CANDIDATES = 100
MAX_STANDARD_WEIGHT = 400_000
LOCKTIME_THRESHOLD = 500_000_000
NULL_TXID = "00" * 32

GENESIS_COINBASE = bytes.fromhex(
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d01"
    "04455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f6620"
    "7365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548"
    "271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b"
    "8d578a4c702b6bf11d5fac00000000")
GENESIS_TIME, GENESIS_NONCE = 1296688602, 2


def dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def target_from_bits(bits: int) -> int:
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    return mantissa >> (8 * (3 - exponent)) if exponent <= 3 else mantissa << (8 * (exponent - 3))


def block_work(bits: int) -> int:
    return (1 << 256) // (target_from_bits(bits) + 1)


def difficulty(bits: int) -> float:
    """Core's GetDifficulty(), same floating point steps."""
    shift = (bits >> 24) & 0xFF
    diff = float(0x0000FFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


def merkle_root(hashes_le: list[bytes]) -> bytes:
    level = list(hashes_le)
    if not level:
        return bytes(32)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def bip34_script(height: int) -> bytes:
    """``CScript() << nHeight << OP_0`` as Core's CreateNewBlock writes it."""
    if height == 0:
        push = b"\x00"
    elif 1 <= height <= 16:
        push = bytes([0x50 + height])
    else:
        n, body = height, bytearray()
        while n:
            body.append(n & 0xFF)
            n >>= 8
        if body[-1] & 0x80:
            body.append(0)
        push = bytes([len(body)]) + bytes(body)
    return push + b"\x00"


class TxInfo:
    """One transaction with everything the RPCs and the mempool need precomputed."""

    __slots__ = ("tx", "raw", "txid", "txid_le", "wtxid", "wtxid_le", "size", "stripped_size",
                 "weight", "vsize", "is_coinbase", "inputs", "outputs", "version", "locktime")

    def __init__(self, tx: Transaction):
        self.tx = tx
        self.raw = tx.serialize()
        stripped = io.BytesIO()
        stripped.write(tx.version.to_bytes(4, "little"))
        stripped.write(compact.to_bytes(len(tx.vin)))
        for inp in tx.vin:
            stripped.write(inp.serialize())
        stripped.write(compact.to_bytes(len(tx.vout)))
        for out in tx.vout:
            stripped.write(out.serialize())
        stripped.write(tx.locktime.to_bytes(4, "little"))
        stripped = stripped.getvalue()
        self.txid_le = dsha256(stripped)
        self.txid = self.txid_le[::-1].hex()
        self.wtxid_le = dsha256(self.raw)
        self.wtxid = self.wtxid_le[::-1].hex()
        self.size = len(self.raw)
        self.stripped_size = len(stripped)
        self.weight = self.stripped_size * 3 + self.size
        self.vsize = (self.weight + 3) // 4
        self.version = tx.version
        self.locktime = tx.locktime
        self.inputs = [(inp.txid.hex(), inp.vout, inp.script_sig.data, inp.sequence, list(inp.witness.items))
                       for inp in tx.vin]
        self.outputs = [(out.value, out.script_pubkey.data) for out in tx.vout]
        self.is_coinbase = len(self.inputs) == 1 and self.inputs[0][0] == NULL_TXID \
            and self.inputs[0][1] == 0xFFFFFFFF

    @classmethod
    def from_raw(cls, raw: bytes) -> "TxInfo":
        """Parse strictly: the bytes must re-serialize identically (else ValueError)."""
        try:
            tx = Transaction.parse(raw)
        except Exception as exc:  # embit raises several kinds on garbage
            raise ValueError(f"undecodable transaction: {exc}") from None
        info = cls(tx)
        if info.raw != raw or not info.inputs:
            raise ValueError("non-canonical transaction encoding")
        return info

    @property
    def outpoints(self):
        return [(t, n) for t, n, *_ in self.inputs]


class Block:
    __slots__ = ("version", "prev", "merkle_le", "time", "bits", "nonce", "txs", "height",
                 "hash", "hash_le", "header", "size", "stripped_size", "weight", "chainwork", "_raw")

    def __init__(self, version, prev: str, time_: int, bits: int, nonce: int, txs: list[TxInfo]):
        self.version, self.prev, self.time, self.bits, self.nonce = version, prev, time_, bits, nonce
        self.txs = txs
        self.merkle_le = merkle_root([t.txid_le for t in txs])
        self.height = None
        self.chainwork = None
        self._raw = None
        self._rehash()
        body_tx = b"".join(t.raw for t in txs)
        count = compact.to_bytes(len(txs))
        self.size = 80 + len(count) + len(body_tx)
        self.stripped_size = 80 + len(count) + sum(t.stripped_size for t in txs)
        self.weight = self.stripped_size * 3 + self.size

    def _rehash(self):
        self.header = (self.version.to_bytes(4, "little") + bytes.fromhex(self.prev)[::-1] + self.merkle_le
                       + self.time.to_bytes(4, "little") + self.bits.to_bytes(4, "little")
                       + self.nonce.to_bytes(4, "little"))
        self.hash_le = dsha256(self.header)
        self.hash = self.hash_le[::-1].hex()
        self._raw = None

    def set_nonce(self, nonce: int):
        self.nonce = nonce
        self._rehash()

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.header + compact.to_bytes(len(self.txs)) + b"".join(t.raw for t in self.txs)
        return self._raw

    @property
    def merkleroot(self) -> str:
        return self.merkle_le[::-1].hex()

    @classmethod
    def from_raw(cls, raw: bytes) -> "Block":
        stream = io.BytesIO(raw)
        header = stream.read(80)
        count = compact.read_from(stream)
        txs = [TxInfo(Transaction.read_from(stream)) for _ in range(count)]
        if stream.read(1):
            raise ValueError("trailing data after block")
        block = cls(int.from_bytes(header[0:4], "little"), header[4:36][::-1].hex(),
                    int.from_bytes(header[68:72], "little"), int.from_bytes(header[72:76], "little"),
                    int.from_bytes(header[76:80], "little"), txs)
        if block.header != header:
            raise ValueError("block header does not match its transactions")
        return block


class Coin:
    __slots__ = ("value", "script", "height", "coinbase")

    def __init__(self, value: int, script: bytes, height: int, coinbase: bool):
        self.value, self.script, self.height, self.coinbase = value, script, height, coinbase


class MempoolEntry:
    __slots__ = ("tx", "fee", "time", "height", "unbroadcast")

    def __init__(self, tx: TxInfo, fee: int, time_: int, height: int, unbroadcast: bool):
        self.tx, self.fee, self.time, self.height, self.unbroadcast = tx, fee, time_, height, unbroadcast

    @property
    def feerate(self) -> int:
        """sat/kvB as CFeeRate(fee, vsize) computes it."""
        return self.fee * 1000 // self.tx.vsize


class Notifier:
    """What the chain reports, in bitcoind's order. The base class ignores everything."""

    def transaction(self, tx: TxInfo):
        """A tx entered the mempool or is in a connected/disconnected block (rawtx, hashtx)."""

    def mempool_added(self, tx: TxInfo, mempool_sequence: int):
        """sequence ``A``."""

    def mempool_removed(self, tx: TxInfo, mempool_sequence: int):
        """sequence ``R``: removed for any reason other than block inclusion."""

    def block_connected(self, block: Block):
        """sequence ``C`` (after ``transaction`` for each of its txs)."""

    def block_disconnected(self, block: Block):
        """sequence ``D`` (after ``transaction`` for each of its txs)."""

    def tip_updated(self, block: Block):
        """hashblock, rawblock: once per tip change, the new tip only."""


def make_genesis() -> Block:
    coinbase = TxInfo(Transaction.parse(GENESIS_COINBASE))
    return Block(1, NULL_TXID, GENESIS_TIME, REGTEST_BITS, GENESIS_NONCE, [coinbase])


class Chain:
    """The state. Not thread-safe by itself: the owner serializes calls."""

    def __init__(self, notifier: Notifier | None = None, clock=time.time):
        self.notify = notifier or Notifier()
        self.clock = clock
        self.blocks: dict[str, Block] = {}
        self.active: list[Block] = []
        self.utxo: dict[tuple[str, int], Coin] = {}
        self.txs: dict[str, TxInfo] = {}
        self.tx_blocks: dict[str, list[str]] = {}
        self.mempool: dict[str, MempoolEntry] = {}
        self.mempool_spends: dict[tuple[str, int], str] = {}
        self.mempool_sequence = 1
        genesis = make_genesis()
        genesis.height, genesis.chainwork = 0, block_work(genesis.bits)
        self.blocks[genesis.hash] = genesis
        self.active.append(genesis)
        # The genesis coinbase is not in the UTXO set (and not retrievable), as in Core.
        self.txs[genesis.txs[0].txid] = genesis.txs[0]
        self.tx_blocks[genesis.txs[0].txid] = [genesis.hash]

    # -- queries -------------------------------------------------------------

    @property
    def tip(self) -> Block:
        return self.active[-1]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    @property
    def genesis(self) -> Block:
        return self.active[0]

    def in_active_chain(self, block: Block) -> bool:
        return block.height is not None and block.height < len(self.active) and self.active[block.height] is block

    def median_time_past(self, block: Block) -> int:
        times = []
        b = block
        while b is not None and len(times) < 11:
            times.append(b.time)
            b = self.blocks.get(b.prev)
        times.sort()
        return times[len(times) // 2]

    def next_block(self, block: Block):
        if self.in_active_chain(block) and block.height + 1 < len(self.active):
            return self.active[block.height + 1]
        return None

    def confirmations(self, block: Block) -> int:
        return self.height - block.height + 1 if self.in_active_chain(block) else -1

    def tx_location(self, txid: str):
        """(block in the active chain or, failing that, the last stale block holding txid) or None."""
        found = None
        for h in self.tx_blocks.get(txid, ()):
            b = self.blocks[h]
            if self.in_active_chain(b):
                return b
            found = b
        return found

    def coin(self, op: tuple[str, int], include_mempool: bool = True):
        """The unspent output at op (CCoinsViewMemPool when include_mempool), ignoring mempool spends."""
        if include_mempool and op[0] in self.mempool:
            outs = self.mempool[op[0]].tx.outputs
            if op[1] < len(outs):
                value, script = outs[op[1]]
                return Coin(value, script, MEMPOOL_HEIGHT, False)
            return None
        return self.utxo.get(op)

    def spent_coins(self, tx: TxInfo):
        """The outputs tx spends, looked up by txid in every known transaction (for fees, prevouts)."""
        coins = []
        for prev_txid, n, *_ in tx.inputs:
            prev = self.txs.get(prev_txid)
            if prev is None or n >= len(prev.outputs):
                return None
            loc = self.tx_location(prev_txid)
            value, script = prev.outputs[n]
            coins.append(Coin(value, script, loc.height if loc is not None else MEMPOOL_HEIGHT, prev.is_coinbase))
        return coins

    def fee_of(self, tx: TxInfo):
        if tx.is_coinbase:
            return None
        coins = self.spent_coins(tx)
        if coins is None:
            return None
        return sum(c.value for c in coins) - sum(v for v, _ in tx.outputs)

    def mempool_parents(self, txid: str) -> set[str]:
        return {t for t, *_ in self.mempool[txid].tx.inputs if t in self.mempool}

    def mempool_children(self, txid: str) -> set[str]:
        tx = self.mempool[txid].tx
        return {self.mempool_spends[(txid, n)] for n in range(len(tx.outputs)) if (txid, n) in self.mempool_spends}

    def _closure(self, txid: str, step) -> set[str]:
        seen, todo = set(), [txid]
        while todo:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        seen.discard(txid)
        return seen

    def mempool_ancestors(self, txid: str) -> set[str]:
        return self._closure(txid, self.mempool_parents)

    def mempool_descendants(self, txid: str) -> set[str]:
        return self._closure(txid, self.mempool_children)

    def signals_rbf(self, txid: str) -> bool:
        """BIP125 opt-in, inherited from unconfirmed ancestors (IsRBFOptIn)."""
        for t in {txid} | self.mempool_ancestors(txid):
            if any(seq <= SEQUENCE_RBF for _, _, _, seq, _ in self.mempool[t].tx.inputs):
                return True
        return False

    def _next_mempool_sequence(self) -> int:
        seq = self.mempool_sequence
        self.mempool_sequence += 1
        return seq

    # -- mempool -------------------------------------------------------------

    def accept(self, tx: TxInfo, *, bypass_limits: bool = False, entry_time: int | None = None,
               unbroadcast: bool = False) -> list[str]:
        """Core's AcceptToMemoryPool. Returns the txids it replaced; raises Rejected."""
        fee, evict = self.validate(tx, bypass_limits=bypass_limits)
        # Accepted: evict what it replaces (R each), then add it (A).
        for txid in self._removal_order(evict):
            self._remove(txid, reason="replaced")
        self.mempool[tx.txid] = MempoolEntry(tx, fee, int(entry_time if entry_time is not None else self.clock()),
                                             self.height, unbroadcast)
        for op in tx.outpoints:
            self.mempool_spends[op] = tx.txid
        self.txs[tx.txid] = tx
        seq = self._next_mempool_sequence()
        self.notify.transaction(tx)
        self.notify.mempool_added(tx, seq)
        return sorted(evict)

    def validate(self, tx: TxInfo, *, bypass_limits: bool = False) -> tuple[int, set[str]]:
        """The checks of accept() without changing anything: (fee, txids it would replace)."""
        if tx.is_coinbase:
            raise Rejected("coinbase")
        if not tx.outputs:
            raise Rejected("bad-txns-vout-empty")
        ops = tx.outpoints
        if len(set(ops)) != len(ops):
            raise Rejected("bad-txns-inputs-duplicate")
        if sum(v for v, _ in tx.outputs) > MAX_MONEY:
            raise Rejected("bad-txns-txouttotal-toolarge")
        if any(t == NULL_TXID for t, _ in ops):
            raise Rejected("bad-txns-prevout-null")
        if not bypass_limits:
            self._check_standard(tx)
        if not self._is_final(tx):
            raise Rejected("non-final")
        if tx.txid in self.mempool:
            if self.mempool[tx.txid].tx.wtxid == tx.wtxid:
                raise Rejected("txn-already-in-mempool")
            raise Rejected("txn-same-nonwitness-data-in-mempool")
        conflicts = {self.mempool_spends[op] for op in ops if op in self.mempool_spends}
        coins = []
        for op in ops:
            coin = self.coin(op)
            if coin is None:
                if any((tx.txid, n) in self.utxo for n in range(len(tx.outputs))):
                    raise Rejected("txn-already-known")
                raise Rejected("bad-txns-inputs-missingorspent", missing_inputs=True)
            coins.append(coin)
        spend_height = self.height + 1
        for coin in coins:
            if coin.coinbase and spend_height - coin.height < COINBASE_MATURITY:
                raise Rejected("bad-txns-premature-spend-of-coinbase",
                               f"tried to spend coinbase at depth {spend_height - coin.height}")
        value_in = sum(c.value for c in coins)
        value_out = sum(v for v, _ in tx.outputs)
        if value_in < value_out:
            raise Rejected("bad-txns-in-belowout",
                           f"value in ({format_money(value_in)}) < value out ({format_money(value_out)})")
        fee = value_in - value_out
        if not bypass_limits:
            min_fee = MIN_RELAY_FEERATE * tx.vsize // 1000
            if fee < min_fee:
                raise Rejected("min relay fee not met", f"{fee} < {min_fee}")
        evict: set[str] = set()
        if conflicts:
            evict = self._replacement_checks(tx, fee, conflicts)
        return fee, evict

    def _check_standard(self, tx: TxInfo):
        if tx.version < 1 or tx.version > 3:
            raise Rejected("version")
        if tx.weight > MAX_STANDARD_WEIGHT:
            raise Rejected("tx-size")
        if tx.stripped_size < 65:
            raise Rejected("tx-size-small")
        for _, _, script_sig, _, _ in tx.inputs:
            if len(script_sig) > 1650:
                raise Rejected("scriptsig-size")
            if not outputs.is_push_only(script_sig):
                raise Rejected("scriptsig-not-pushonly")
        data_outputs = 0
        for value, script in tx.outputs:
            if not outputs.is_standard_output(script):
                raise Rejected("scriptpubkey")
            if outputs.classify(script)[0] == "nulldata":
                data_outputs += 1
            elif value < outputs.dust_threshold(script):
                raise Rejected("dust")
        if data_outputs > 1:
            raise Rejected("multi-op-return")

    def _is_final(self, tx: TxInfo) -> bool:
        if tx.locktime == 0:
            return True
        if all(seq == SEQUENCE_FINAL for _, _, _, seq, _ in tx.inputs):
            return True
        limit = self.height + 1 if tx.locktime < LOCKTIME_THRESHOLD else self.median_time_past(self.tip)
        return tx.locktime < limit

    def _replacement_checks(self, tx: TxInfo, fee: int, conflicts: set[str]) -> set[str]:
        """Core 28 with mempoolfullrbf=1: every conflict is replaceable if the rules are met."""
        evict = set(conflicts)
        for c in conflicts:
            evict |= self.mempool_descendants(c)
        for t, _ in tx.outpoints:
            if t in evict:
                raise Rejected("bad-txns-spends-conflicting-tx", f"{tx.txid} spends conflicting transaction {t}")
        new_rate = fee * 1000 // tx.vsize
        for c in sorted(conflicts):
            old_rate = self.mempool[c].feerate
            if new_rate <= old_rate:
                raise Rejected("insufficient fee", f"rejecting replacement {tx.txid}; new feerate "
                               f"{format_feerate(new_rate)} <= old feerate {format_feerate(old_rate)}")
        if len(evict) > MAX_REPLACEMENT_CANDIDATES:
            raise Rejected("too many potential replacements",
                           f"rejecting replacement {tx.txid}; too many potential replacements "
                           f"({len(evict)} > {MAX_REPLACEMENT_CANDIDATES})")
        parents_of_conflicts = {t for c in conflicts for t, _ in self.mempool[c].tx.outpoints}
        for idx, (t, _) in enumerate(tx.outpoints):
            if t not in parents_of_conflicts and t in self.mempool:
                raise Rejected("replacement-adds-unconfirmed",
                               f"replacement {tx.txid} adds unconfirmed input, idx {idx}")
        original = sum(self.mempool[t].fee for t in evict)
        if fee < original:
            raise Rejected("insufficient fee", f"rejecting replacement {tx.txid}, less fees than conflicting "
                           f"txs; {format_money(fee)} < {format_money(original)}")
        relay = INCREMENTAL_RELAY_FEERATE * tx.vsize // 1000
        if fee - original < relay:
            raise Rejected("insufficient fee", f"rejecting replacement {tx.txid}, not enough additional fees "
                           f"to relay; {format_money(fee - original)} < {format_money(relay)}")
        return evict

    def _removal_order(self, txids) -> list[str]:
        """Children before parents, so that a removal never leaves an orphan behind."""
        order = [t for t in self.mempool if t in txids]
        return list(reversed(order))

    def _remove(self, txid: str, reason: str):
        entry = self.mempool.pop(txid)
        for op in entry.tx.outpoints:
            if self.mempool_spends.get(op) == txid:
                del self.mempool_spends[op]
        # Core increments the mempool sequence for every removal, but notifies (R)
        # only for reasons other than block inclusion.
        seq = self._next_mempool_sequence()
        if reason != "block":
            self.notify.mempool_removed(entry.tx, seq)

    def remove_with_descendants(self, txid: str, reason: str):
        doomed = {txid} | self.mempool_descendants(txid)
        for t in self._removal_order(doomed):
            self._remove(t, reason)

    def topo_mempool(self) -> list[str]:
        """Mempool txids with every parent before its children."""
        done, order = set(), []

        def visit(t):
            if t in done:
                return
            done.add(t)
            for p in sorted(self.mempool_parents(t)):
                visit(p)
            order.append(t)

        for t in list(self.mempool):
            visit(t)
        return order

    # -- blocks --------------------------------------------------------------

    def build_block(self, payout_script: bytes, txids: list[str], when: int | None = None) -> Block:
        """A valid next block: coinbase (BIP34 height, witness commitment), the txs, regtest PoW."""
        height = self.height + 1
        txs = [self.mempool[t].tx for t in txids]
        fees = sum(self.mempool[t].fee for t in txids)
        wtxids = [bytes(32)] + [t.wtxid_le for t in txs]
        commitment = dsha256(merkle_root(wtxids) + bytes(32))
        coinbase = Transaction(
            version=2,
            vin=[TransactionInput(bytes(32), 0xFFFFFFFF, Script(bip34_script(height)), SEQUENCE_FINAL,
                                  Witness([bytes(32)]))],
            vout=[TransactionOutput(subsidy(height) + fees, Script(payout_script)),
                  TransactionOutput(0, Script(bytes.fromhex("6a24aa21a9ed") + commitment))],
            locktime=0)
        now = int(self.clock() if when is None else when)
        block_time = max(self.median_time_past(self.tip) + 1, now)
        block = Block(BLOCK_VERSION, self.tip.hash, block_time, REGTEST_BITS, 0, [TxInfo(coinbase)] + txs)
        target = target_from_bits(REGTEST_BITS)
        nonce = 0
        while int.from_bytes(block.hash_le, "little") > target or block.hash in self.blocks:
            nonce += 1
            block.set_nonce(nonce)
        return block

    def connect(self, block: Block, *, announce_tip: bool = True):
        """Connect a block on the tip (ConnectTip + the notifications that follow it)."""
        if block.prev != self.tip.hash:
            raise ValueError("block does not extend the tip")
        block.height = self.height + 1
        block.chainwork = self.tip.chainwork + block_work(block.bits)
        self.blocks[block.hash] = block
        for tx in block.txs:
            if not tx.is_coinbase:
                for op in tx.outpoints:
                    if self.utxo.pop(op, None) is None:
                        raise ValueError(f"block spends a missing output {op[0]}:{op[1]}")
            for n, (value, script) in enumerate(tx.outputs):
                if not outputs.is_unspendable(script):
                    self.utxo[(tx.txid, n)] = Coin(value, script, block.height, tx.is_coinbase)
            holders = self.tx_blocks.setdefault(tx.txid, [])
            if block.hash not in holders:
                holders.append(block.hash)
            self.txs.setdefault(tx.txid, tx)
        self.active.append(block)
        # removeForBlock: the block's txs leave silently, conflicts with an R.
        spent = {op for tx in block.txs if not tx.is_coinbase for op in tx.outpoints}
        for tx in block.txs:
            if tx.txid in self.mempool:
                self._remove(tx.txid, reason="block")
        for op in spent:
            other = self.mempool_spends.get(op)
            if other is not None and other in self.mempool:
                self.remove_with_descendants(other, reason="conflict")
        for tx in block.txs:
            self.notify.transaction(tx)
        self.notify.block_connected(block)
        if announce_tip:
            self.notify.tip_updated(block)

    def index_stale(self, block: Block):
        """Remember a block that is not on the active chain (used when loading saved state)."""
        parent = self.blocks[block.prev]
        block.height = parent.height + 1
        block.chainwork = parent.chainwork + block_work(block.bits)
        self.blocks[block.hash] = block
        for tx in block.txs:
            self.txs.setdefault(tx.txid, tx)
            holders = self.tx_blocks.setdefault(tx.txid, [])
            if block.hash not in holders:
                holders.append(block.hash)

    def disconnect_tip(self) -> Block:
        block = self.tip
        if block.height == 0:
            raise ValueError("cannot disconnect the genesis block")
        for tx in reversed(block.txs):
            for n in range(len(tx.outputs)):
                self.utxo.pop((tx.txid, n), None)
            if tx.is_coinbase:
                continue
            for prev_txid, n in tx.outpoints:
                prev = self.txs[prev_txid]
                loc = self.tx_location(prev_txid)
                value, script = prev.outputs[n]
                self.utxo[(prev_txid, n)] = Coin(value, script, loc.height, prev.is_coinbase)
        self.active.pop()
        for tx in block.txs:
            self.notify.transaction(tx)
        self.notify.block_disconnected(block)
        return block

    def mine(self, payout_script: bytes, n: int = 1, *, when: int | None = None) -> list[Block]:
        """generatetoaddress: n blocks, the mempool in the first; each announced as the tip."""
        mined = []
        for i in range(n):
            txids = self.topo_mempool() if i == 0 else []
            block = self.build_block(payout_script, txids, when)
            self.connect(block, announce_tip=True)
            mined.append(block)
        return mined

    def reorg(self, depth: int, payout_script: bytes) -> list[Block]:
        """Disconnect depth blocks, return their txs to the mempool, mine depth+1 blocks.

        Notifications: for each disconnected block its txs (rawtx/hashtx) and D;
        A for each tx that re-enters the mempool; then for each new block its
        txs and C; finally hashblock/rawblock for the new tip only.
        """
        if depth < 1 or depth >= self.height:
            raise ValueError(f"depth must be between 1 and {self.height - 1}")
        disconnected = [self.disconnect_tip() for _ in range(depth)]
        for block in reversed(disconnected):
            for tx in block.txs[1:]:
                if any(op in self.mempool_spends for op in tx.outpoints):
                    continue  # conflicts with a mempool tx: stays out (brief: "unless they conflict")
                try:
                    self.accept(tx, bypass_limits=True)
                except Rejected as exc:
                    log.debug("%s does not return to the mempool: %s", tx.txid, exc)
        # removeForReorg: mempool txs that now spend an immature coinbase leave with an R.
        spend_height = self.height + 1
        for txid in list(self.mempool):
            if txid not in self.mempool:
                continue
            for op in self.mempool[txid].tx.outpoints:
                coin = self.coin(op)
                if coin is None or (coin.coinbase and spend_height - coin.height < COINBASE_MATURITY):
                    self.remove_with_descendants(txid, reason="reorg")
                    break
        new = []
        for i in range(depth + 1):
            block = self.build_block(payout_script, self.topo_mempool() if i == 0 else [])
            self.connect(block, announce_tip=False)
            new.append(block)
        self.notify.tip_updated(self.tip)
        return new
