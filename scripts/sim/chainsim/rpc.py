"""Bitcoin Core's JSON-RPC: the method subset, its result shapes, and the envelope rules.

Shapes follow Bitcoin Core 28.0 (the first release with full-RBF by default):
``warnings`` is an array (``-deprecatedrpc=warnings`` gives the old string),
JSON-RPC 2.0 requests get 2.0 replies (``"jsonrpc": "2.0"``, ``result`` XOR
``error``, HTTP 200, notifications answered 204), legacy 1.0/1.1 requests get
``{"result", "error", "id"}`` with HTTP 404 for -32601, 400 for -32600 and
500 for any other error. Batches are always HTTP 200.

Methods whose name starts with ``sim_`` do not exist in bitcoind: they drive
the simulation (see :mod:`scripts.sim.chain`).
"""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.chain import MEMPOOL_HEIGHT, Block, TxInfo, difficulty
from scripts.sim.chainsim.errors import (
    RPC_DESERIALIZATION_ERROR, RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND, RPC_MISC_ERROR, RPC_PARSE_ERROR, RPC_TYPE_ERROR, RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR, Rejected, RpcError)
from scripts.sim.chainsim.jsonfmt import BTC, COIN, dumps, parse_amount

log = logging.getLogger(__name__)

CORE_VERSION = 280000
CORE_SUBVERSION = "/Satoshi:28.0.0/"
PROTOCOL_VERSION = 70016
NOT_FOUND_TX = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
# Bitcoin Core's answer without -txindex (its default), for any transaction not in the mempool
NO_TXINDEX = ("No such mempool transaction. Use -txindex or provide a block hash to enable blockchain "
              "transaction queries. Use gettransaction for wallet transactions.")
DEFAULT_MAX_RAW_TX_FEE_RATE = COIN // 10  # 0.10 BTC/kvB
IBD_MAX_TIP_AGE = 24 * 3600


# -- parameters --------------------------------------------------------------

_TYPE_NAMES = {"num": "number", "str": "string", "bool": "bool", "arr": "array", "obj": "object",
               "amount": "number", "any": "any"}


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class Param:
    def __init__(self, name: str, type_: str, required: bool = False, default=None, aliases=()):
        self.name, self.type, self.required, self.default = name, type_, required, default
        self.names = (name, *aliases)

    def matches(self, value) -> bool:
        actual = _json_type(value)
        if self.type == "any":
            return True
        if self.type == "amount":
            return actual in ("number", "string")
        return actual == _TYPE_NAMES[self.type]

    def usage(self) -> str:
        shown = f'"{self.name}"' if self.type == "str" else self.name
        return shown if self.required else f"( {shown} )"


class Method:
    def __init__(self, name, fn, params, category, summary, mutates):
        self.name, self.fn, self.params, self.category = name, fn, params, category
        self.summary, self.mutates = summary, mutates

    def usage(self) -> str:
        line = " ".join([self.name, *(p.usage() for p in self.params)])
        return f"{line}\n\n{self.summary}\n"

    def bind(self, params) -> dict:
        by_position: list
        if isinstance(params, list):
            required = sum(1 for p in self.params if p.required)
            if len(params) > len(self.params) or len(params) < required:
                raise RpcError(RPC_MISC_ERROR, self.usage())
            by_position = list(params) + [None] * (len(self.params) - len(params))
        else:
            by_position = [None] * len(self.params)
            for key, value in params.items():
                for i, p in enumerate(self.params):
                    if key in p.names:
                        by_position[i] = value
                        break
                else:
                    raise RpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {key}")
        mismatch = {}
        for i, (p, value) in enumerate(zip(self.params, by_position)):
            if value is None and not p.required:
                continue
            if value is None or not p.matches(value):
                mismatch[f"Position {i + 1} ({p.name})"] = (
                    f"JSON value of type {_json_type(value)} is not of expected type {_TYPE_NAMES[p.type]}")
        if mismatch:
            raise RpcError(RPC_TYPE_ERROR, "Wrong type passed:\n" + json.dumps(mismatch, indent=4))
        return {p.name: (value if value is not None else p.default) for p, value in zip(self.params, by_position)}


def rpc(name, *params, category="Blockchain", summary="", mutates=False):
    def mark(fn):
        fn._rpc = (name, params, category, summary, mutates)
        return fn
    return mark


def as_int(value) -> int:
    if isinstance(value, Decimal):
        if value != value.to_integral_value():
            raise RpcError(RPC_MISC_ERROR, "JSON integer out of range")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {_json_type(value)} is not of expected type number")
    return value


def parse_hash(value, name: str) -> str:
    """Core's ParseHashV()."""
    if not isinstance(value, str):
        raise RpcError(RPC_TYPE_ERROR, f"JSON value of type {_json_type(value)} is not of expected type string")
    if len(value) != 64:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise RpcError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')") from None
    return value.lower()


def parse_verbosity(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        return 1 if value else 0
    return as_int(value)


# -- the node ----------------------------------------------------------------

class NodeRpc:
    """The method handlers. ``sim`` gives the chain, wallet, publisher and server controls."""

    def __init__(self, sim):
        self.sim = sim
        self.started = time.time()
        self.methods: dict[str, Method] = {}
        for attr in dir(self):
            fn = getattr(self, attr)
            meta = getattr(fn, "_rpc", None)
            if meta:
                name, params, category, summary, mutates = meta
                self.methods[name] = Method(name, fn, list(params), category, summary, mutates)

    @property
    def chain(self):
        return self.sim.chain

    def execute(self, name: str, params):
        method = self.methods.get(name)
        if method is None:
            raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        args = method.bind(params)
        return method.fn(**args), method.mutates

    # -- shapes --------------------------------------------------------------

    def _warnings(self):
        return "" if "warnings" in self.sim.deprecated_rpc else []

    def _header_json(self, b: Block) -> dict:
        chain = self.chain
        out = {"hash": b.hash, "confirmations": chain.confirmations(b), "height": b.height,
               "version": b.version, "versionHex": f"{b.version:08x}", "merkleroot": b.merkleroot,
               "time": b.time, "mediantime": chain.median_time_past(b), "nonce": b.nonce,
               "bits": f"{b.bits:08x}", "difficulty": difficulty(b.bits), "chainwork": f"{b.chainwork:064x}",
               "nTx": len(b.txs)}
        if b.height > 0:
            out["previousblockhash"] = b.prev
        nxt = chain.next_block(b)
        if nxt is not None:
            out["nextblockhash"] = nxt.hash
        return out

    def _tx_json(self, tx: TxInfo, *, include_hex: bool = True, undo: bool = False) -> dict:
        """Core's TxToUniv(); undo adds vin[].prevout and fee (verbosity 3 / getrawtransaction 2)."""
        coins = self.chain.spent_coins(tx) if undo and not tx.is_coinbase else None
        out = {"txid": tx.txid, "hash": tx.wtxid, "version": tx.version, "size": tx.size, "vsize": tx.vsize,
               "weight": tx.weight, "locktime": tx.locktime}
        vin = []
        for i, (prev_txid, n, script_sig, sequence, witness) in enumerate(tx.inputs):
            if tx.is_coinbase:
                item = {"coinbase": script_sig.hex()}
            else:
                item = {"txid": prev_txid, "vout": n,
                        "scriptSig": {"asm": outputs.asm(script_sig, sighash_decode=True), "hex": script_sig.hex()}}
            if witness:
                item["txinwitness"] = [w.hex() for w in witness]
            if coins is not None:
                c = coins[i]
                item["prevout"] = {"generated": c.coinbase, "height": c.height, "value": BTC(c.value),
                                   "scriptPubKey": outputs.script_pubkey_json(c.script)}
            item["sequence"] = sequence
            vin.append(item)
        out["vin"] = vin
        out["vout"] = [{"value": BTC(v), "n": n, "scriptPubKey": outputs.script_pubkey_json(s)}
                       for n, (v, s) in enumerate(tx.outputs)]
        if coins is not None:
            out["fee"] = BTC(sum(c.value for c in coins) - sum(v for v, _ in tx.outputs))
        if include_hex:
            out["hex"] = tx.raw.hex()
        return out

    def _entry_json(self, txid: str) -> dict:
        chain = self.chain
        e = chain.mempool[txid]
        anc = chain.mempool_ancestors(txid)
        desc = chain.mempool_descendants(txid)
        pool = chain.mempool
        return {
            "vsize": e.tx.vsize, "weight": e.tx.weight, "time": e.time, "height": e.height,
            "descendantcount": len(desc) + 1, "descendantsize": e.tx.vsize + sum(pool[t].tx.vsize for t in desc),
            "ancestorcount": len(anc) + 1, "ancestorsize": e.tx.vsize + sum(pool[t].tx.vsize for t in anc),
            "wtxid": e.tx.wtxid,
            "fees": {"base": BTC(e.fee), "modified": BTC(e.fee),
                     "ancestor": BTC(e.fee + sum(pool[t].fee for t in anc)),
                     "descendant": BTC(e.fee + sum(pool[t].fee for t in desc))},
            "depends": sorted(chain.mempool_parents(txid)),
            "spentby": sorted(chain.mempool_children(txid)),
            "bip125-replaceable": chain.signals_rbf(txid),
            "unbroadcast": e.unbroadcast,
        }

    def _block(self, value, name: str) -> Block:
        h = parse_hash(value, name)
        block = self.chain.blocks.get(h)
        if block is None:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return block

    def _mempool_txid(self, value) -> str:
        txid = parse_hash(value, "parameter 1")
        if txid not in self.chain.mempool:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
        return txid

    # -- blockchain ----------------------------------------------------------

    @rpc("getblockchaininfo", summary="Returns an object containing various state info regarding blockchain "
                                      "processing.")
    def getblockchaininfo(self):
        chain = self.chain
        tip = chain.tip
        return {"chain": "regtest", "blocks": chain.height, "headers": chain.height, "bestblockhash": tip.hash,
                "difficulty": difficulty(tip.bits), "time": tip.time, "mediantime": chain.median_time_past(tip),
                "verificationprogress": 1.0, "initialblockdownload": self.sim.initial_block_download(),
                "chainwork": f"{tip.chainwork:064x}",
                "size_on_disk": sum(b.size + 8 for b in chain.blocks.values()), "pruned": False,
                "warnings": self._warnings()}

    @rpc("getblockcount", summary="Returns the height of the most-work fully-validated chain.")
    def getblockcount(self):
        return self.chain.height

    @rpc("getbestblockhash", summary="Returns the hash of the best (tip) block in the most-work fully-validated "
                                     "chain.")
    def getbestblockhash(self):
        return self.chain.tip.hash

    @rpc("getblockhash", Param("height", "num", True),
         summary="Returns hash of block in best-block-chain at height provided.")
    def getblockhash(self, height):
        height = as_int(height)
        if height < 0 or height > self.chain.height:
            raise RpcError(RPC_INVALID_PARAMETER, "Block height out of range")
        return self.chain.active[height].hash

    @rpc("getblockheader", Param("blockhash", "str", True), Param("verbose", "bool", default=True),
         summary="If verbose is false, returns a string that is serialized, hex-encoded data for blockheader "
                 "'hash'.\nIf verbose is true, returns an Object with information about blockheader <hash>.")
    def getblockheader(self, blockhash, verbose):
        block = self._block(blockhash, "hash")
        return self._header_json(block) if verbose else block.header.hex()

    @rpc("getblock", Param("blockhash", "str", True), Param("verbosity", "any", default=1, aliases=("verbose",)),
         summary="If verbosity is 0, returns a string that is serialized, hex-encoded data for block 'hash'.\n"
                 "If verbosity is 1, returns an Object with information about block <hash>.\n"
                 "If verbosity is 2, returns an Object with information about block <hash> and information "
                 "about each transaction.\nIf verbosity is 3, returns an Object with information about block "
                 "<hash> and information about each transaction, including prevout information for inputs.")
    def getblock(self, blockhash, verbosity):
        block = self._block(blockhash, "blockhash")
        verbosity = parse_verbosity(verbosity, 1)
        if verbosity <= 0:
            return block.raw.hex()
        out = self._header_json(block)
        out.update({"strippedsize": block.stripped_size, "size": block.size, "weight": block.weight})
        if verbosity == 1:
            out["tx"] = [t.txid for t in block.txs]
        else:
            txs = []
            for t in block.txs:
                item = self._tx_json(t, include_hex=True, undo=not t.is_coinbase and block.height > 0)
                if verbosity == 2:
                    for vin in item["vin"]:
                        vin.pop("prevout", None)
                txs.append(item)
            out["tx"] = txs
        return out

    @rpc("getchaintips", summary="Return information about all known tips in the block tree, including the "
                                 "main chain as well as orphaned branches.")
    def getchaintips(self):
        chain = self.chain
        parents = {b.prev for b in chain.blocks.values()}
        tips = [b for b in chain.blocks.values() if b.hash not in parents or b is chain.tip]
        tips.sort(key=lambda b: -b.height)
        out = []
        for b in tips:
            if b is chain.tip:
                out.append({"height": b.height, "hash": b.hash, "branchlen": 0, "status": "active"})
                continue
            fork, length = b, 0
            while not chain.in_active_chain(fork):
                fork = chain.blocks[fork.prev]
                length += 1
            out.append({"height": b.height, "hash": b.hash, "branchlen": length, "status": "valid-fork"})
        return out

    @rpc("getdifficulty", summary="Returns the proof-of-work difficulty as a multiple of the minimum difficulty.")
    def getdifficulty(self):
        return difficulty(self.chain.tip.bits)

    @rpc("gettxout", Param("txid", "str", True), Param("n", "num", True),
         Param("include_mempool", "bool", default=True),
         summary="Returns details about an unspent transaction output.")
    def gettxout(self, txid, n, include_mempool):
        chain = self.chain
        op = (parse_hash(txid, "txid"), as_int(n))
        if include_mempool:
            if op in chain.mempool_spends:
                return None
            coin = chain.coin(op, include_mempool=True)
        else:
            coin = chain.utxo.get(op)
        if coin is None:
            return None
        confirmations = 0 if coin.height == MEMPOOL_HEIGHT else chain.height - coin.height + 1
        return {"bestblock": chain.tip.hash, "confirmations": confirmations, "value": BTC(coin.value),
                "scriptPubKey": outputs.script_pubkey_json(coin.script), "coinbase": coin.coinbase}

    @rpc("scantxoutset", Param("action", "str", True), Param("scanobjects", "arr"),
         summary="Scans the unspent transaction output set for entries that match certain output descriptors.")
    def scantxoutset(self, action, scanobjects):
        if action == "status":
            return None
        if action == "abort":
            return False
        if action != "start":
            raise RpcError(RPC_INVALID_PARAMETER, f"Invalid action '{action}'")
        if scanobjects is None:
            raise RpcError(RPC_INVALID_PARAMETER, "scanobjects argument is required for the start action")
        scripts = set()
        for obj in scanobjects:
            desc = obj.get("desc") if isinstance(obj, dict) else obj
            if not isinstance(desc, str):
                raise RpcError(RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object")
            scripts.add(_descriptor_script(desc))
        chain = self.chain
        tip = chain.tip
        unspents, total = [], 0
        found = sorted(((op, c) for op, c in chain.utxo.items() if c.script in scripts),
                       key=lambda item: (item[1].height, item[0]))
        for (txid, n), coin in found:
            total += coin.value
            unspents.append({"txid": txid, "vout": n, "scriptPubKey": coin.script.hex(),
                             "desc": outputs.descriptor(coin.script), "amount": BTC(coin.value),
                             "coinbase": coin.coinbase, "height": coin.height,
                             "blockhash": chain.active[coin.height].hash,
                             "confirmations": chain.height - coin.height + 1})
        return {"success": True, "txouts": len(chain.utxo), "height": chain.height, "bestblock": tip.hash,
                "unspents": unspents, "total_amount": BTC(total)}

    # -- mempool -------------------------------------------------------------

    @rpc("getrawmempool", Param("verbose", "bool", default=False), Param("mempool_sequence", "bool", default=False),
         summary="Returns all transaction ids in memory pool as a json array of string transaction ids.")
    def getrawmempool(self, verbose, mempool_sequence):
        chain = self.chain
        if verbose and mempool_sequence:
            raise RpcError(RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values.")
        txids = chain.topo_mempool()
        if verbose:
            return {t: self._entry_json(t) for t in txids}
        if mempool_sequence:
            return {"txids": txids, "mempool_sequence": chain.mempool_sequence}
        return txids

    @rpc("getmempoolentry", Param("txid", "str", True), summary="Returns mempool data for given transaction")
    def getmempoolentry(self, txid):
        return self._entry_json(self._mempool_txid(txid))

    @rpc("getmempoolancestors", Param("txid", "str", True), Param("verbose", "bool", default=False),
         summary="If txid is in the mempool, returns all in-mempool ancestors.")
    def getmempoolancestors(self, txid, verbose):
        found = sorted(self.chain.mempool_ancestors(self._mempool_txid(txid)))
        return {t: self._entry_json(t) for t in found} if verbose else found

    @rpc("getmempooldescendants", Param("txid", "str", True), Param("verbose", "bool", default=False),
         summary="If txid is in the mempool, returns all in-mempool descendants.")
    def getmempooldescendants(self, txid, verbose):
        found = sorted(self.chain.mempool_descendants(self._mempool_txid(txid)))
        return {t: self._entry_json(t) for t in found} if verbose else found

    @rpc("getmempoolinfo", summary="Returns details on the active state of the TX memory pool.")
    def getmempoolinfo(self):
        pool = self.chain.mempool
        return {"loaded": True, "size": len(pool), "bytes": sum(e.tx.vsize for e in pool.values()),
                "usage": sum(e.tx.size * 2 + 576 for e in pool.values()),
                "total_fee": BTC(sum(e.fee for e in pool.values())), "maxmempool": 300_000_000,
                "mempoolminfee": BTC(1000), "minrelaytxfee": BTC(1000), "incrementalrelayfee": BTC(1000),
                "unbroadcastcount": sum(1 for e in pool.values() if e.unbroadcast), "fullrbf": True}

    # -- raw transactions ----------------------------------------------------

    @rpc("getrawtransaction", Param("txid", "str", True), Param("verbosity", "any", default=0, aliases=("verbose",)),
         Param("blockhash", "str"), category="Rawtransactions",
         summary="By default, this call only returns a transaction if it is in the mempool. (A simulator "
                 "started with txindex=True behaves as if -txindex were set: it finds every transaction it knows "
                 "in the active chain.)")
    def getrawtransaction(self, txid, verbosity, blockhash):
        chain = self.chain
        txid = parse_hash(txid, "parameter 1")
        verbosity = parse_verbosity(verbosity, 0)
        if txid == chain.genesis.txs[0].txid:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "The genesis block coinbase is not considered an ordinary "
                                                       "transaction and cannot be retrieved")
        result = {}
        if blockhash is not None:
            block = chain.blocks.get(parse_hash(blockhash, "parameter 3"))
            if block is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
            tx = next((t for t in block.txs if t.txid == txid), None)
            if tx is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "No such transaction found in the provided block. "
                                                           "Use gettransaction for wallet transactions.")
            result["in_active_chain"] = chain.in_active_chain(block)
        elif txid in chain.mempool:
            tx, block = chain.mempool[txid].tx, None
        elif chain.tx_blocks.get(txid) and not getattr(self.sim, "txindex", True):
            # bitcoind without -txindex (its default): a confirmed transaction needs its block hash
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, NO_TXINDEX)
        elif chain.tx_blocks.get(txid):
            block = chain.tx_location(txid)
            tx = next(t for t in block.txs if t.txid == txid)
        else:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY,
                           NOT_FOUND_TX if getattr(self.sim, "txindex", True) else NO_TXINDEX)
        if verbosity <= 0:
            return tx.raw.hex()
        result.update(self._tx_json(tx, include_hex=True,
                                    undo=verbosity >= 2 and block is not None and not tx.is_coinbase))
        if block is not None:
            result["blockhash"] = block.hash
            if chain.in_active_chain(block):
                result["confirmations"] = chain.height - block.height + 1
                result["time"] = block.time
                result["blocktime"] = block.time
            else:
                result["confirmations"] = 0
        return result

    @rpc("decoderawtransaction", Param("hexstring", "str", True), Param("iswitness", "bool"),
         category="Rawtransactions", summary="Return a JSON object representing the serialized, hex-encoded "
                                             "transaction.")
    def decoderawtransaction(self, hexstring, iswitness):
        return self._tx_json(_decode_tx(hexstring), include_hex=False)

    @rpc("sendrawtransaction", Param("hexstring", "str", True), Param("maxfeerate", "amount"),
         Param("maxburnamount", "amount"), category="Rawtransactions", mutates=True,
         summary="Submit a raw transaction (serialized, hex-encoded) to local node and network.")
    def sendrawtransaction(self, hexstring, maxfeerate, maxburnamount):
        chain = self.chain
        tx = _decode_tx(hexstring)
        max_burn = parse_amount(maxburnamount) if maxburnamount is not None else 0
        for value, script in tx.outputs:
            if outputs.is_unspendable(script) and value > max_burn:
                raise RpcError(RPC_VERIFY_ERROR, "Unspendable output exceeds maximum configured by user "
                                                 "(maxburnamount)")
        max_rate = parse_amount(maxfeerate) if maxfeerate is not None else DEFAULT_MAX_RAW_TX_FEE_RATE
        if max_rate >= COIN:
            raise RpcError(RPC_INVALID_PARAMETER, "Fee rates larger than or equal to 1BTC/kvB are not accepted")
        if any((tx.txid, n) in chain.utxo for n in range(len(tx.outputs))):
            raise RpcError(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction outputs already in utxo set")
        if tx.txid in chain.mempool:
            return tx.txid
        try:
            fee = self.sim.test_accept(tx)
            max_fee = -(-max_rate * tx.vsize // 1000)
            if max_rate > 0 and fee > max_fee:
                raise RpcError(RPC_VERIFY_ERROR, "Fee exceeds maximum configured by user (e.g. -maxtxfee, "
                                                 "maxfeerate)")
            chain.accept(tx, unbroadcast=True)
        except Rejected as exc:
            raise exc.to_rpc() from None
        return tx.txid

    # -- util, network, mining, zmq, control -----------------------------------

    @rpc("estimatesmartfee", Param("conf_target", "num", True), Param("estimate_mode", "str", default="unset"),
         category="Util", summary="Estimates the approximate fee per kilobyte needed for a transaction to begin "
                                  "confirmation within conf_target blocks if possible.")
    def estimatesmartfee(self, conf_target, estimate_mode):
        target = as_int(conf_target)
        if target < 1 or target > 1008:
            raise RpcError(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
        if estimate_mode.lower() not in ("unset", "economical", "conservative"):
            raise RpcError(RPC_INVALID_PARAMETER, 'Invalid estimate_mode parameter, must be one of: "unset", '
                                                  '"economical", "conservative"')
        return {"feerate": BTC(self.sim.feerate), "blocks": max(2, target)}

    @rpc("getnetworkinfo", category="Network", summary="Returns an object containing various state info "
                                                       "regarding P2P networking.")
    def getnetworkinfo(self):
        networks = [{"name": n, "limited": n in ("onion", "i2p", "cjdns"), "reachable": n in ("ipv4", "ipv6"),
                     "proxy": "", "proxy_randomize_credentials": False}
                    for n in ("ipv4", "ipv6", "onion", "i2p", "cjdns")]
        return {"version": CORE_VERSION, "subversion": CORE_SUBVERSION, "protocolversion": PROTOCOL_VERSION,
                "localservices": "0000000000000c09",
                "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
                "localrelay": True, "timeoffset": 0, "networkactive": True, "connections": 0,
                "connections_in": 0, "connections_out": 0, "networks": networks, "relayfee": BTC(1000),
                "incrementalfee": BTC(1000), "localaddresses": [], "warnings": self._warnings()}

    @rpc("getzmqnotifications", category="Zmq", summary="Returns information about the active ZeroMQ "
                                                        "notifications.")
    def getzmqnotifications(self):
        pub = self.sim.publisher
        return [{"type": f"pub{t}", "address": pub.endpoint, "hwm": pub.hwm}
                for t in ("hashblock", "hashtx", "rawblock", "rawtx", "sequence")]

    @rpc("generatetoaddress", Param("nblocks", "num", True), Param("address", "str", True),
         Param("maxtries", "num", default=1_000_000), category="Generating", mutates=True,
         summary="Mine to a specified address and return the block hashes.")
    def generatetoaddress(self, nblocks, address, maxtries):
        try:
            script = outputs.decode_address(address)
        except outputs.InvalidAddress:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address") from None
        return [b.hash for b in self.chain.mine(script, max(0, as_int(nblocks)))]

    @rpc("uptime", category="Control", summary="Returns the total uptime of the server.")
    def uptime(self):
        return int(time.time() - self.started)

    @rpc("help", Param("command", "str"), category="Control", summary="List all commands, or get help for a "
                                                                      "specified command.")
    def help(self, command):
        if command is not None:
            method = self.methods.get(command)
            return method.usage() if method else f"help: unknown command: {command}"
        lines, category = [], None
        for m in sorted(self.methods.values(), key=lambda m: (m.category, m.name)):
            if m.category != category:
                if lines:
                    lines.append("")
                lines.append(f"== {m.category} ==")
                category = m.category
            lines.append(m.usage().split("\n")[0])
        return "\n".join(lines)

    @rpc("stop", category="Control", summary="Request a graceful shutdown of the simulator.")
    def stop(self):
        self.sim.request_stop()
        return "Bitcoin Core stopping"

    @rpc("sim_newaddress", category="Sim", mutates=True,
         summary="(sim only) A fresh regtest P2WPKH address from the sim's own keys.")
    def sim_newaddress(self):
        return self.sim.wallet.new_address()

    @rpc("sim_pay", Param("address", "str", True), Param("amount", "amount", True), Param("rbf", "bool", default=False),
         Param("feerate", "num"), category="Sim", mutates=True,
         summary="(sim only) Pay amount BTC to address from the sim's coins into the mempool; feerate in sat/vB "
                 "(default 2); rbf signals BIP125. Returns the txid.")
    def sim_pay(self, address, amount, rbf, feerate):
        return self.sim._pay(address, parse_amount(amount, allow_zero=False), rbf,
                             as_int(feerate) if feerate is not None else None)

    @rpc("sim_mine", Param("n", "num", default=1), Param("address", "str"), category="Sim", mutates=True,
         summary="(sim only) Mine n blocks (the mempool goes into the first), to the sim or to address. Returns "
                 "the block hashes.")
    def sim_mine(self, n, address):
        return self.sim._mine(as_int(n), address)

    @rpc("sim_replace", Param("txid", "str", True), category="Sim", mutates=True,
         summary="(sim only) Replace a mempool transaction by a higher-fee spend of the same inputs to the sim. "
                 "Returns the new txid.")
    def sim_replace(self, txid):
        return self.sim._replace(self._mempool_txid(txid))

    @rpc("sim_reorg", Param("depth", "num", True), category="Sim", mutates=True,
         summary="(sim only) Disconnect depth blocks and mine depth+1 new ones. Returns the new block hashes.")
    def sim_reorg(self, depth):
        return self.sim._reorg(as_int(depth))

    @rpc("sim_drop_zmq", Param("n", "num", default=1), category="Sim",
         summary="(sim only) Do not send the next n ZMQ messages (their sequence numbers are used: a gap).")
    def sim_drop_zmq(self, n):
        self.sim.publisher.drop_next(as_int(n))
        return None

    @rpc("sim_stop_rpc", Param("seconds", "num", True), category="Sim",
         summary="(sim only) For this many seconds, close every RPC connection without an answer.")
    def sim_stop_rpc(self, seconds):
        self.sim.rpc_server.refuse_for(float(seconds))
        return None

    @rpc("sim_info", category="Sim", summary="(sim only) The sim's funding address, balance and counters.")
    def sim_info(self):
        spendable, immature = self.sim.wallet.balance(self.chain)
        return {"funding_address": self.sim.wallet.funding_address, "balance": BTC(spendable),
                "immature": BTC(immature), "mempool_sequence": self.chain.mempool_sequence,
                "zmq_sequences": self.sim.publisher.sequences(), "zmq_endpoint": self.sim.publisher.endpoint}


def _decode_tx(hexstring) -> TxInfo:
    try:
        return TxInfo.from_raw(bytes.fromhex(hexstring))
    except ValueError:
        raise RpcError(RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input.") \
            from None


def _descriptor_script(desc: str) -> bytes:
    from embit.descriptor.checksum import checksum as desc_checksum

    body, _, given = desc.partition("#")
    if given:
        want = desc_checksum(body)
        if given != want:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY,
                           f"Provided checksum '{given}' does not match computed checksum '{want}'")
    if body.startswith("addr(") and body.endswith(")"):
        try:
            return outputs.decode_address(body[5:-1])
        except outputs.InvalidAddress:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Address is not valid") from None
    if body.startswith("raw(") and body.endswith(")"):
        try:
            return bytes.fromhex(body[4:-1])
        except ValueError:
            raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, "Raw script is not hex") from None
    raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"sim: only addr() and raw() descriptors are supported, not '{desc}'")


# -- JSON-RPC over HTTP: the envelope ----------------------------------------

V1, V2 = "1.0", "2.0"
_ABSENT = object()


class _Request:
    __slots__ = ("id", "version", "method", "params")

    def __init__(self):
        self.id = None  # Core's JSONRPCRequest starts with id = null
        self.version = V1
        self.method = None
        self.params = []

    def parse(self, obj):
        """Core's JSONRPCRequest::parse(); raises RpcError."""
        if not isinstance(obj, dict):
            raise RpcError(RPC_INVALID_REQUEST, "Invalid Request object")
        self.id = obj.get("id", _ABSENT)
        version = obj.get("jsonrpc")
        if version is not None:
            if not isinstance(version, str):
                raise RpcError(RPC_INVALID_REQUEST, "jsonrpc field must be a string")
            if version == "1.0":
                self.version = V1
            elif version == "2.0":
                self.version = V2
            else:
                raise RpcError(RPC_INVALID_REQUEST, "JSON-RPC version not supported")
        method = obj.get("method")
        if method is None:
            raise RpcError(RPC_INVALID_REQUEST, "Missing method")
        if not isinstance(method, str):
            raise RpcError(RPC_INVALID_REQUEST, "Method must be a string")
        self.method = method
        params = obj.get("params")
        if params is None:
            params = []
        elif not isinstance(params, (list, dict)):
            raise RpcError(RPC_INVALID_REQUEST, "Params must be an array or object")
        self.params = params

    @property
    def notification(self) -> bool:
        return self.id is _ABSENT and self.version == V2


def reply_obj(result, error, req: _Request) -> dict:
    """Core's JSONRPCReplyObj()."""
    out = {}
    if req.version == V2:
        out["jsonrpc"] = "2.0"
    if error is None:
        out["result"] = result
        if req.version == V1:
            out["error"] = None
    else:
        if req.version == V1:
            out["result"] = None
        out["error"] = error
    if req.id is not _ABSENT:
        out["id"] = req.id
    return out


class JsonRpcEndpoint:
    """Turns an authenticated POST body into (HTTP status, reply bytes or None) like httprpc.cpp."""

    def __init__(self, node: NodeRpc, lock, after_change):
        self.node = node
        self.lock = lock
        self.after_change = after_change

    def _exec(self, req: _Request):
        with self.lock:
            try:
                result, mutates = self.node.execute(req.method, req.params)
            except RpcError:
                raise
            except Exception as exc:  # a bug: answer like Core does for a std::exception, log the trace
                log.exception("RPC %s failed", req.method)
                raise RpcError(RPC_MISC_ERROR, str(exc)) from None
            if mutates:
                self.after_change()
        return result

    def _exec_one(self, req: _Request, catch_errors: bool) -> dict:
        if not catch_errors:
            return reply_obj(self._exec(req), None, req)
        try:
            return reply_obj(self._exec(req), None, req)
        except RpcError as exc:
            return reply_obj(None, exc.to_json(), req)

    def handle(self, body: bytes):
        req = _Request()
        try:
            try:
                payload = json.loads(body.decode("utf-8"), parse_float=Decimal)
            except (UnicodeDecodeError, ValueError):
                raise RpcError(RPC_PARSE_ERROR, "Parse error") from None
            if isinstance(payload, dict):
                req.parse(payload)
                reply = self._exec_one(req, catch_errors=req.version == V2)
                if req.notification:
                    return 204, None
            elif isinstance(payload, list):
                reply = []
                for item in payload:
                    one = _Request()
                    try:
                        one.parse(item)
                        response = self._exec_one(one, catch_errors=True)
                    except RpcError as exc:
                        response = reply_obj(None, exc.to_json(), one)
                    if not one.notification:
                        reply.append(response)
                if not reply and payload:
                    return 204, None
            else:
                raise RpcError(RPC_PARSE_ERROR, "Top-level object parse error")
            return 200, (dumps(reply) + "\n").encode()
        except RpcError as exc:
            status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(exc.rpc_code, 500)
            return status, (dumps(reply_obj(None, exc.to_json(), req)) + "\n").encode()
