"""Esplora's REST API (Blockstream's electrs) over the simulator's live chain.

Routes, shapes, statuses and error bodies follow Blockstream/electrs
``src/rest.rs``:

- Plain text (``text/plain``, no trailing newline): ``/blocks/tip/height``,
  ``/blocks/tip/hash``, ``/block-height/:h``, ``/tx/:txid/hex``,
  ``/block/:hash/header``, ``/block/:hash/txid/:i`` and ``POST /tx``'s txid.
- JSON is compact (serde_json), amounts are integer satoshis, fee rates and
  ``difficulty`` are floats, ``bits`` is an integer.
- Errors are plain text with a status: ``Block not found`` / ``Transaction
  not found`` 404, ``Invalid hex string`` (a malformed hash) 400, ``Invalid
  number`` 400, ``Invalid Bitcoin address`` 400, an unknown route 404
  ``endpoint does not exist "/path"``. A rejected ``POST /tx`` is 400 with
  bitcoind's error as electrs relays it: ``sendrawtransaction RPC error
  -26: min relay fee not met, ...``.
- ``/tx/:txid/status`` of an unknown txid is ``{"confirmed":false}`` (electrs
  does not look the tx up for a status); ``/block/:hash/status`` of an
  unknown or stale block is ``{"in_best_chain":false,"height":null,"next_best":null}``.
- Stale blocks: ``/block/:hash`` and ``/block/:hash/txs`` answer 404 (electrs
  only has headers of the best chain), ``/block/:hash/txids`` still answers.
  A transaction that is only in stale blocks (and not in the mempool) is
  served with ``{"confirmed":false}``, as electrs' txstore keeps it; one that
  was replaced or evicted from the mempool is 404.
- ``/address/:addr/utxo`` lists confirmed outputs not spent in the mempool,
  then unconfirmed ones (Query::utxo); ``/address/:addr/txs`` up to 50 mempool
  transactions then up to 25 confirmed ones, each newest first.
- ``/fee-estimates`` maps targets 1-25, 144, 504, 1008 to the sim's
  ``estimatesmartfee`` rate in sat/vB.

Every request reads the chain under the sim's lock, as the JSON-RPC server does
(scripts/sim/chainsim/rpc.py, JsonRpcEndpoint); ``POST /tx`` runs Core's
``sendrawtransaction`` of the RPC layer and saves the state afterwards.
"""

from __future__ import annotations

import json
import logging
import math
from http.server import BaseHTTPRequestHandler

from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.chain import Block, TxInfo, difficulty
from scripts.sim.chainsim.errors import RpcError
from scripts.sim.chainsim.rpc import NodeRpc
from scripts.sim.chainsim.rpcserver import KeepAliveHTTPServer

log = logging.getLogger(__name__)

CHAIN_TXS_PER_PAGE = 25
MAX_MEMPOOL_TXS = 50
BLOCK_LIMIT = 10
VSIZE_BIN_WIDTH = 50_000
FEE_TARGETS = tuple(range(1, 26)) + (144, 504, 1008)
SERVER_TIMEOUT = 30
TEXT = "text/plain"
JSON = "application/json"


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _not_found(what: str) -> HttpError:
    return HttpError(404, what)


class _NoRoute(Exception):
    """No route matches: electrs' 404 ``endpoint does not exist "/path"``."""


# -- rust-bitcoin's script asm and esplora's script types -----------------------

def _opcode_name(op: int) -> str:
    if op == 0x00:
        return "OP_0"
    if op <= 0x4B:
        return f"OP_PUSHBYTES_{op}"
    if op == 0x4F:
        return "OP_PUSHNUM_NEG1"
    if 0x51 <= op <= 0x60:
        return f"OP_PUSHNUM_{op - 0x50}"
    if op == 0xB1:
        return "OP_CLTV"
    if op == 0xB2:
        return "OP_CSV"
    if 0xBB <= op <= 0xFE:
        return f"OP_RETURN_{op}"
    if op == 0xFF:
        return "OP_INVALIDOPCODE"
    return outputs._NAMES[op]


def script_asm(script: bytes) -> str:
    """rust-bitcoin's Script::to_asm() (``OP_0 OP_PUSHBYTES_20 <hex>``), as esplora prints it."""
    parts, i, n = [], 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op <= 0x4B:
            size = op
        elif op in (0x4C, 0x4D, 0x4E):
            width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
            if i + width > n:
                parts.append("<unexpected end>")
                break
            size = int.from_bytes(script[i:i + width], "little")
            i += width
        else:
            size = 0
        parts.append(_opcode_name(op))
        if size:
            if i + size > n:
                parts.append("<push past end>")
                break
            parts.append(script[i:i + size].hex())
            i += size
    return " ".join(parts)


def script_type(script: bytes) -> str:
    """The ``scriptpubkey_type`` names of electrs' TxOutValue, in its order of tests."""
    kind, _ = outputs.classify(script)
    if not script:
        return "empty"
    if script[0] == outputs.OP_RETURN:
        return "op_return"
    return {"pubkey": "p2pk", "pubkeyhash": "p2pkh", "scripthash": "p2sh", "witness_v0_keyhash": "v0_p2wpkh",
            "witness_v0_scripthash": "v0_p2wsh", "witness_v1_taproot": "v1_p2tr"}.get(kind, "unknown")


def script_address(script: bytes):
    """rust-bitcoin's Address::from_script: none for p2pk, OP_RETURN and bare scripts."""
    if not script or outputs.classify(script)[0] in ("pubkey", "nulldata", "multisig", "nonstandard"):
        return None
    return outputs.address(script)


def _last_push(script: bytes):
    last = None
    for op, data in outputs.iter_ops(script):
        if op is None or op > outputs.OP_16:
            return None
        last = data if data is not None else b""
    return last


def _hash(value: str) -> str:
    """BlockHash/Txid::from_str: 64 hex digits, else 400 ``Invalid hex string``."""
    if len(value) != 64:
        raise HttpError(400, "Invalid hex string")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise HttpError(400, "Invalid hex string") from None
    return value.lower()


def _number(value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise HttpError(400, "Invalid number")
    return int(value)


# -- the API over the chain -------------------------------------------------------

class EsploraApi:
    """Route a request to (status, content type, body). Call with the sim's lock held."""

    def __init__(self, sim):
        self.sim = sim
        self.node = NodeRpc(sim)

    @property
    def chain(self):
        return self.sim.chain

    # shapes

    def _tx_status(self, txid: str) -> dict:
        chain = self.chain
        block = chain.tx_location(txid)
        if txid in chain.mempool or block is None or not chain.in_active_chain(block):
            return {"confirmed": False}
        return {"confirmed": True, "block_height": block.height, "block_hash": block.hash,
                "block_time": block.time}

    def _txout(self, value: int, script: bytes) -> dict:
        out = {"scriptpubkey": script.hex(), "scriptpubkey_asm": script_asm(script),
               "scriptpubkey_type": script_type(script)}
        addr = script_address(script)
        if addr is not None:
            out["scriptpubkey_address"] = addr
        out["value"] = value
        return out

    def _prevout(self, txid: str, n: int):
        prev = self.chain.txs.get(txid)
        if prev is None or n >= len(prev.outputs):
            return None
        return prev.outputs[n]

    def _tx_json(self, tx: TxInfo, status: dict | None = None) -> dict:
        vin, value_in, complete = [], 0, True
        for prev_txid, n, script_sig, sequence, witness in tx.inputs:
            prevout = None if tx.is_coinbase else self._prevout(prev_txid, n)
            if prevout is None:
                complete = False
            else:
                value_in += prevout[0]
            item = {"txid": prev_txid, "vout": n,
                    "prevout": self._txout(*prevout) if prevout is not None else None,
                    "scriptsig": script_sig.hex(), "scriptsig_asm": script_asm(script_sig)}
            if witness:
                item["witness"] = [w.hex() for w in witness]
            item["is_coinbase"] = tx.is_coinbase
            item["sequence"] = sequence
            if prevout is not None:
                item.update(self._inner_scripts(prevout[1], script_sig, witness))
            vin.append(item)
        fee = value_in - sum(v for v, _ in tx.outputs) if complete and not tx.is_coinbase else 0
        return {"txid": tx.txid, "version": tx.version, "locktime": tx.locktime, "vin": vin,
                "vout": [self._txout(v, s) for v, s in tx.outputs], "size": tx.size, "weight": tx.weight,
                "fee": fee, "status": status if status is not None else self._tx_status(tx.txid)}

    @staticmethod
    def _inner_scripts(prev_script: bytes, script_sig: bytes, witness) -> dict:
        """electrs' get_innerscripts: the p2sh redeem script and the p2wsh witness script, as asm."""
        out = {}
        kind = outputs.classify(prev_script)[0]
        redeem = _last_push(script_sig) if kind == "scripthash" else None
        if redeem is not None:
            out["inner_redeemscript_asm"] = script_asm(redeem)
        wrapped = redeem is not None and outputs.classify(redeem)[0] == "witness_v0_scripthash"
        if (kind == "witness_v0_scripthash" or wrapped) and witness:
            out["inner_witnessscript_asm"] = script_asm(witness[-1])
        return out

    def _block_json(self, b: Block) -> dict:
        chain = self.chain
        return {"id": b.hash, "height": b.height, "version": b.version, "timestamp": b.time,
                "tx_count": len(b.txs), "size": b.size, "weight": b.weight, "merkle_root": b.merkleroot,
                "previousblockhash": b.prev if b.height > 0 else None, "mediantime": chain.median_time_past(b),
                "nonce": b.nonce, "bits": b.bits, "difficulty": difficulty(b.bits)}

    def _find_tx(self, txid: str) -> TxInfo:
        chain = self.chain
        if txid in chain.mempool:
            return chain.mempool[txid].tx
        if chain.tx_blocks.get(txid):
            return chain.txs[txid]
        raise _not_found("Transaction not found")

    def _best_block(self, block_hash: str) -> Block:
        block = self.chain.blocks.get(_hash(block_hash))
        if block is None or not self.chain.in_active_chain(block):
            raise _not_found("Block not found")
        return block

    def _address_script(self, addr: str) -> bytes:
        try:
            return outputs.decode_address(addr)
        except outputs.InvalidAddress:
            raise HttpError(400, "Invalid Bitcoin address") from None

    # address history

    def _touches(self, tx: TxInfo, script: bytes) -> bool:
        if any(s == script for _, s in tx.outputs):
            return True
        if tx.is_coinbase:
            return False
        return any((p := self._prevout(t, n)) is not None and p[1] == script for t, n in tx.outpoints)

    def _chain_history(self, script: bytes) -> list[tuple[TxInfo, Block]]:
        """Confirmed transactions touching script, newest first."""
        found = []
        for block in reversed(self.chain.active):
            for tx in reversed(block.txs):
                if self._touches(tx, script):
                    found.append((tx, block))
        return found

    def _mempool_history(self, script: bytes) -> list[TxInfo]:
        pool = self.chain.mempool
        return [pool[t].tx for t in reversed(list(pool)) if self._touches(pool[t].tx, script)]

    def _stats(self, txs, script: bytes) -> dict:
        stats = {"funded_txo_count": 0, "funded_txo_sum": 0, "spent_txo_count": 0, "spent_txo_sum": 0,
                 "tx_count": 0}
        for tx in txs:
            stats["tx_count"] += 1
            for value, s in tx.outputs:
                if s == script and not outputs.is_unspendable(s):
                    stats["funded_txo_count"] += 1
                    stats["funded_txo_sum"] += value
            if not tx.is_coinbase:
                for t, n in tx.outpoints:
                    p = self._prevout(t, n)
                    if p is not None and p[1] == script:
                        stats["spent_txo_count"] += 1
                        stats["spent_txo_sum"] += p[0]
        return stats

    def _confirmed_json(self, pairs) -> list[dict]:
        return [self._tx_json(tx, {"confirmed": True, "block_height": b.height, "block_hash": b.hash,
                                   "block_time": b.time}) for tx, b in pairs]

    def _unconfirmed_json(self, txs) -> list[dict]:
        return [self._tx_json(tx, {"confirmed": False}) for tx in txs]

    def _utxos(self, script: bytes) -> list[dict]:
        chain = self.chain
        out = []
        confirmed = sorted(((op, c) for op, c in chain.utxo.items()
                            if c.script == script and op not in chain.mempool_spends),
                           key=lambda item: (item[1].height, item[0]))
        for (txid, n), coin in confirmed:
            block = chain.active[coin.height]
            out.append({"txid": txid, "vout": n, "status": {"confirmed": True, "block_height": block.height,
                                                             "block_hash": block.hash, "block_time": block.time},
                        "value": coin.value})
        for txid, entry in chain.mempool.items():
            for n, (value, s) in enumerate(entry.tx.outputs):
                if s == script and (txid, n) not in chain.mempool_spends and not outputs.is_unspendable(s):
                    out.append({"txid": txid, "vout": n, "status": {"confirmed": False}, "value": value})
        return out

    # mempool

    def _backlog(self) -> dict:
        entries = []
        for e in self.chain.mempool.values():
            vsize_float = e.tx.weight / 4
            entries.append((e.fee / vsize_float, math.ceil(vsize_float), e.fee))
        histogram, bin_size, last_rate = [], 0, 0.0
        for rate, vsize, _ in sorted(entries, key=lambda x: x[0], reverse=True):
            if bin_size > VSIZE_BIN_WIDTH and last_rate != rate:
                histogram.append([last_rate, bin_size])
                bin_size = 0
            last_rate = rate
            bin_size += vsize
        if bin_size > 0:
            histogram.append([last_rate, bin_size])
        return {"count": len(entries), "vsize": sum(v for _, v, _ in entries),
                "total_fee": sum(f for _, _, f in entries), "fee_histogram": histogram}

    # the router

    def handle(self, method: str, path: str, body: bytes):
        """(status, content type, body bytes). Raises nothing: errors become plain-text replies."""
        try:
            result = self._route(method, path, body)
        except _NoRoute:
            return 404, TEXT, f"endpoint does not exist {json.dumps(path)}".encode()
        except HttpError as exc:
            return exc.status, TEXT, exc.message.encode()
        except Exception as exc:  # a bug in the sim: answer like electrs' catch-all, log the trace
            log.exception("esplora %s %s failed", method, path)
            return 500, TEXT, f"Internal server error: {exc}".encode()
        if isinstance(result, str):
            return 200, TEXT, result.encode()
        if isinstance(result, bytes):
            return 200, "application/octet-stream", result
        return 200, JSON, json.dumps(result, separators=(",", ":")).encode()

    def _route(self, method: str, path: str, body: bytes):
        chain = self.chain
        p = path.split("/")[1:]
        p += [None] * (5 - len(p)) if len(p) < 5 else []
        if len(p) > 5:
            raise _NoRoute()
        a, b, c, d, e = p
        if method == "GET":
            if a == "blocks" and b == "tip" and c == "hash" and d is None:
                return chain.tip.hash
            if a == "blocks" and b == "tip" and c == "height" and d is None:
                return str(chain.height)
            if a == "blocks" and c is None:
                start = chain.height if b is None or not b.isdigit() else int(b)
                if start > chain.height:
                    raise _not_found("Block not found")
                return [self._block_json(chain.active[h]) for h in range(start, max(-1, start - BLOCK_LIMIT), -1)]
            if a == "block-height" and b is not None and c is None:
                height = _number(b)
                if height > chain.height:
                    raise _not_found("Block not found")
                return chain.active[height].hash
            if a == "block" and b is not None:
                return self._block_route(b, c, d, e)
            if a == "tx" and b is not None:
                return self._tx_route(b, c, d, e)
            if a == "address" and b is not None:
                return self._address_route(b, c, d, e)
            if a == "mempool" and b is None:
                return self._backlog()
            if a == "mempool" and b == "txids" and c is None:
                return list(chain.mempool)
            if a == "fee-estimates" and b is None:
                rate = self.sim.feerate / 1000
                return {str(t): rate for t in FEE_TARGETS}
        if method == "POST" and a == "tx" and b is None:
            return self._broadcast(body)
        raise _NoRoute()

    def _block_route(self, block_hash, c, d, e):
        chain = self.chain
        if c is None and d is None:
            return self._block_json(self._best_block(block_hash))
        if c == "status" and d is None:
            block = chain.blocks.get(_hash(block_hash))
            if block is None or not chain.in_active_chain(block):
                return {"in_best_chain": False, "height": None, "next_best": None}
            nxt = chain.next_block(block)
            return {"in_best_chain": True, "height": block.height, "next_best": nxt.hash if nxt else None}
        if c == "txids" and d is None:
            block = chain.blocks.get(_hash(block_hash))  # stored by hash: stale blocks answer too
            if block is None:
                raise _not_found("Block not found")
            return [t.txid for t in block.txs]
        if c == "txid" and d is not None and e is None:
            block = chain.blocks.get(_hash(block_hash))
            if block is None:
                raise _not_found("Block not found")
            index = _number(d)
            if index >= len(block.txs):
                raise _not_found("tx index out of range")
            return block.txs[index].txid
        if c == "header" and d is None:
            return self._best_block(block_hash).header.hex()
        if c == "raw" and d is None:
            return self._best_block(block_hash).raw
        if c == "txs" and e is None:
            block = self._best_block(block_hash)
            start = int(d) if d is not None and d.isdigit() else 0
            if start % CHAIN_TXS_PER_PAGE:
                raise HttpError(400, f"start index must be a multiple of {CHAIN_TXS_PER_PAGE}")
            if start >= len(block.txs):
                raise HttpError(400, "start index out of range")
            status = {"confirmed": True, "block_height": block.height, "block_hash": block.hash,
                      "block_time": block.time}
            return [self._tx_json(t, status) for t in block.txs[start:start + CHAIN_TXS_PER_PAGE]]
        raise _NoRoute()

    def _tx_route(self, txid, c, d, e):
        txid = _hash(txid)
        if c is None:
            return self._tx_json(self._find_tx(txid))
        if c == "status" and d is None:
            return self._tx_status(txid)
        if c == "hex" and d is None:
            return self._find_tx(txid).raw.hex()
        if c == "raw" and d is None:
            return self._find_tx(txid).raw
        raise _NoRoute()

    def _address_route(self, addr, c, d, e):
        script = self._address_script(addr)
        if c is None:
            chain_txs = [tx for tx, _ in self._chain_history(script)]
            return {"address": addr, "chain_stats": self._stats(chain_txs, script),
                    "mempool_stats": self._stats(self._mempool_history(script), script)}
        if c == "txs" and d is None:
            return (self._unconfirmed_json(self._mempool_history(script)[:MAX_MEMPOOL_TXS])
                    + self._confirmed_json(self._chain_history(script)[:CHAIN_TXS_PER_PAGE]))
        if c == "txs" and d == "chain":
            history = self._chain_history(script)
            last_seen = e.lower() if e is not None and len(e) == 64 and _is_hex(e) else None
            if last_seen is not None:
                ids = [tx.txid for tx, _ in history]
                history = history[ids.index(last_seen) + 1:] if last_seen in ids else []
            return self._confirmed_json(history[:CHAIN_TXS_PER_PAGE])
        if c == "txs" and d == "mempool" and e is None:
            return self._unconfirmed_json(self._mempool_history(script)[:MAX_MEMPOOL_TXS])
        if c == "utxo" and d is None:
            return self._utxos(script)
        raise _NoRoute()

    def _broadcast(self, body: bytes) -> str:
        try:
            hexstring = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(400, str(exc)) from None
        try:
            txid, _ = self.node.execute("sendrawtransaction", [hexstring])
        except RpcError as exc:
            raise HttpError(400, f"sendrawtransaction RPC error {exc.rpc_code}: {exc.message}") from None
        self.sim.save()
        return txid


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True


# -- HTTP --------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the
    # client's delayed ACK (see rpcserver.py).
    disable_nagle_algorithm = True
    timeout = SERVER_TIMEOUT
    server: "EsploraHttpServer"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            status, content_type, reply = self.server.api.handle(self.command, path, body)
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Date", self.date_time_string())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


class EsploraHttpServer(KeepAliveHTTPServer):
    thread_name = "chainsim-esplora"

    def __init__(self, host: str, port: int, sim):
        self.api = EsploraApi(sim)
        self.lock = sim._lock
        super().__init__((host, port), _Handler)
