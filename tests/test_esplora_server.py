"""The chain simulator's Esplora REST server, over raw HTTP (urllib / http.client).

Shapes are checked against responses recorded from real Esplora servers in
tests/fixtures/esplora (see tests/fixtures/README.md): field names and order, JSON
types (satoshis as integers), plain-text bodies without a trailing newline,
error bodies and statuses. Values are checked against the sim's own
JSON-RPC view of the same chain.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from scripts.sim.chainsim import esplora as esplora_mod
from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.errors import ChainSimError
from scripts.sim.chain import ChainSim

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "esplora"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
UNKNOWN_TXID = "ab" * 32
MAINNET_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def fixture(name: str):
    return json.loads(fixture_text(name))


class Reply:
    def __init__(self, status: int, content_type: str, body: bytes):
        self.status, self.content_type, self.body = status, content_type, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self):
        assert self.content_type == "application/json", self.content_type
        return json.loads(self.body)


def request(sim, path: str, data: bytes | None = None) -> Reply:
    req = urllib.request.Request(sim.esplora_url + path, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, resp.headers.get("Content-Type"), resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get("Content-Type"), exc.read())


def get_json(sim, path: str):
    reply = request(sim, path)
    assert reply.status == 200, (path, reply.status, reply.body)
    return reply.json()


def get_text(sim, path: str) -> str:
    reply = request(sim, path)
    assert (reply.status, reply.content_type) == (200, "text/plain"), (path, reply.status, reply.body)
    return reply.text


def assert_error(reply: Reply, status: int, body: str):
    assert (reply.status, reply.content_type, reply.text) == (status, "text/plain", body)


def sats(btc) -> int:
    return int(Decimal(btc) * 100_000_000)


@pytest.fixture
def sim(tmp_path):
    s = ChainSim(tmp_path / "chain", esplora_port=0)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def world(sim):
    """A confirmed payment, an RBF payment replaced in the mempool, and a plain one pending."""
    address = sim.new_address()
    w = {"address": address}
    w["t1"] = sim.pay(address, "0.1")
    (w["b1"],) = sim.mine(1)
    w["t2"] = sim.pay(address, "0.2", rbf=True)
    w["t2_hex"] = sim.call("getrawtransaction", w["t2"])
    w["t3"] = sim.replace(w["t2"])
    w["t4"] = sim.pay(address, "0.05")
    return w


# -- tips, heights, lifecycle --------------------------------------------------

def test_tip_endpoints_are_plain_text_without_newline(sim):
    height, tip_hash = get_text(sim, "/blocks/tip/height"), get_text(sim, "/blocks/tip/hash")
    assert height == str(sim.call("getblockcount")) and tip_hash == sim.call("getbestblockhash")
    assert HEX64.match(tip_hash) and not tip_hash.endswith("\n") and not height.endswith("\n")
    recorded = fixture_text("mempoolspace_docs_mainnet.blocks_tip_hash.txt")
    assert HEX64.match(recorded) and len(tip_hash) == len(recorded)  # the recording has no newline either
    assert re.fullmatch(r"\d+", fixture_text("mempoolspace_docs_mainnet.blocks_tip_height.txt"))
    assert get_text(sim, f"/block-height/{height}") == tip_hash
    assert get_text(sim, "/block-height/0") == sim.call("getblockhash", 0)
    assert_error(request(sim, f"/block-height/{int(height) + 1}"), 404, "Block not found")
    assert_error(request(sim, "/block-height/-1"), 400, "Invalid number")
    (new,) = sim.mine(1)
    assert get_text(sim, "/blocks/tip/hash") == new and get_text(sim, "/blocks/tip/height") == str(int(height) + 1)


def test_unknown_route_and_keep_alive(sim):
    reply = request(sim, "/block/hash/" + "00" * 32)
    recorded = fixture_text("blockstream_enterprise_2025-08.error_endpoint_does_not_exist.txt").strip()
    assert recorded.startswith('endpoint does not exist "/block/hash/')
    assert_error(reply, 404, 'endpoint does not exist "/block/hash/' + "00" * 32 + '"')
    assert esplora_mod._Handler.disable_nagle_algorithm is True
    conn = http.client.HTTPConnection("127.0.0.1", sim.esplora_server.port, timeout=10)
    try:
        for _ in range(3):  # HTTP/1.1 keep-alive: one connection, several requests
            conn.request("GET", "/blocks/tip/height")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == str(sim.chain.height).encode()
    finally:
        conn.close()


def test_esplora_is_off_by_default_and_stops_with_the_sim(tmp_path):
    off = ChainSim(tmp_path / "off")
    off.start()
    try:
        assert off.esplora_server is None
        with pytest.raises(ChainSimError, match="esplora_port"):
            off.esplora_url
    finally:
        off.stop()
    on = ChainSim(tmp_path / "on", esplora_port=0)
    on.start()
    url = on.esplora_url
    on.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/blocks/tip/height", timeout=5)


# -- blocks --------------------------------------------------------------------

def test_block_shape_matches_the_recordings_and_the_rpc(sim, world):
    block = get_json(sim, f"/block/{world['b1']}")
    recorded = fixture("mempoolspace_mainnet_2023-03.block_778903.json")
    assert list(block) == list(recorded) == list(fixture("mempoolspace_docs_mainnet.block_363366.json"))
    for key, value in recorded.items():  # bits is an integer, difficulty a number, ids hex strings
        assert isinstance(block[key], type(value)) or (key == "difficulty" and isinstance(block[key], float)), key
    rpc = sim.call("getblock", world["b1"])
    assert block == {"id": rpc["hash"], "height": rpc["height"], "version": rpc["version"], "timestamp": rpc["time"],
                     "tx_count": rpc["nTx"], "size": rpc["size"], "weight": rpc["weight"],
                     "merkle_root": rpc["merkleroot"], "previousblockhash": rpc["previousblockhash"],
                     "mediantime": rpc["mediantime"], "nonce": rpc["nonce"], "bits": int(rpc["bits"], 16),
                     "difficulty": float(rpc["difficulty"])}
    genesis = get_json(sim, "/block/" + sim.call("getblockhash", 0))
    assert genesis["previousblockhash"] is None and genesis["height"] == 0
    assert get_json(sim, f"/block/{world['b1']}/txids") == rpc["tx"]
    assert world["t1"] in rpc["tx"]
    tip_hash = sim.call("getbestblockhash")
    assert get_json(sim, f"/block/{world['b1']}/status") == {"in_best_chain": True, "height": rpc["height"],
                                                             "next_best": rpc.get("nextblockhash")}
    assert get_json(sim, f"/block/{tip_hash}/status") == {"in_best_chain": True, "height": sim.chain.height,
                                                          "next_best": None}
    assert_error(request(sim, f"/block/{UNKNOWN_TXID}"), 404, "Block not found")
    assert_error(request(sim, f"/block/{UNKNOWN_TXID}/txids"), 404, "Block not found")
    assert_error(request(sim, "/block/xyz"), 400, "Invalid hex string")
    assert get_json(sim, f"/block/{UNKNOWN_TXID}/status") == {"in_best_chain": False, "height": None,
                                                              "next_best": None}


def test_block_txs_pages_of_25_and_address_paging(sim):
    address = sim.new_address()
    paid = [sim.pay(address, "0.001") for _ in range(30)]
    (block_hash,) = sim.mine(1)
    txids = get_json(sim, f"/block/{block_hash}/txids")
    assert len(txids) == 31 and set(paid) <= set(txids)
    first, second = get_json(sim, f"/block/{block_hash}/txs"), get_json(sim, f"/block/{block_hash}/txs/25")
    assert len(first) == 25 and len(second) == 6
    assert get_json(sim, f"/block/{block_hash}/txs/0") == first
    assert [t["txid"] for t in first + second] == txids
    coinbase = first[0]
    assert coinbase["fee"] == 0 and coinbase["vin"][0]["is_coinbase"] is True
    assert coinbase["vin"][0]["prevout"] is None and coinbase["vin"][0]["vout"] == 0xFFFFFFFF
    assert coinbase["vin"][0]["txid"] == "00" * 32
    assert all(t["status"] == {"confirmed": True, "block_height": sim.chain.height, "block_hash": block_hash,
                               "block_time": sim.chain.tip.time} for t in first + second)
    assert_error(request(sim, f"/block/{block_hash}/txs/5"), 400, "start index must be a multiple of 25")
    assert_error(request(sim, f"/block/{block_hash}/txs/50"), 400, "start index out of range")
    # /address/:addr/txs: 25 confirmed, newest first, then /txs/chain/:last_seen_txid for the rest
    page1 = get_json(sim, f"/address/{address}/txs")
    assert len(page1) == 25 and all(t["status"]["confirmed"] for t in page1)
    page2 = get_json(sim, f"/address/{address}/txs/chain/{page1[-1]['txid']}")
    assert len(page2) == 5
    assert sorted(t["txid"] for t in page1 + page2) == sorted(paid)
    assert get_json(sim, f"/address/{address}/txs/chain") == page1
    assert get_json(sim, f"/address/{address}/txs/chain/{page2[-1]['txid']}") == []
    assert get_json(sim, f"/address/{address}/txs/chain/{UNKNOWN_TXID}") == []


# -- transactions ----------------------------------------------------------------

def test_unconfirmed_tx_shape_and_values(sim, world):
    tx = get_json(sim, f"/tx/{world['t4']}")
    recorded = fixture("mempoolspace_mainnet_2025-04.tx.b6a53d8a.unconfirmed_p2pkh.json")
    del recorded["sigops"]  # mempool.space's own addition; Blockstream's esplora has none
    assert list(tx) == list(recorded)
    assert tx["status"] == recorded["status"] == {"confirmed": False}
    vin = tx["vin"][0]
    # a segwit input adds "witness" (omitted when empty) between scriptsig_asm and is_coinbase
    assert [k for k in vin if k != "witness"] == list(recorded["vin"][0])
    assert list(vin).index("witness") == list(vin).index("scriptsig_asm") + 1
    assert list(vin["prevout"]) == list(recorded["vin"][0]["prevout"]) == list(recorded["vout"][0])
    assert all(list(o) == list(recorded["vout"][0]) for o in tx["vout"])
    rpc = sim.call("getrawtransaction", world["t4"], 2)
    assert tx["txid"] == rpc["txid"] and (tx["version"], tx["locktime"]) == (rpc["version"], rpc["locktime"])
    assert (tx["size"], tx["weight"]) == (rpc["size"], rpc["weight"])
    assert tx["fee"] == sats(sim.call("getmempoolentry", world["t4"])["fees"]["base"]) and isinstance(tx["fee"], int)
    parent_out = sim.call("getrawtransaction", vin["txid"], 1)["vout"][vin["vout"]]
    assert vin["prevout"]["value"] == sats(parent_out["value"])
    assert vin["prevout"]["scriptpubkey"] == parent_out["scriptPubKey"]["hex"]
    assert vin["witness"] == rpc["vin"][0]["txinwitness"] and vin["sequence"] == rpc["vin"][0]["sequence"]
    assert vin["is_coinbase"] is False and vin["scriptsig"] == "" and vin["scriptsig_asm"] == ""
    paid = [o for o in tx["vout"] if o.get("scriptpubkey_address") == world["address"]]
    assert len(paid) == 1 and paid[0]["value"] == 5_000_000 and isinstance(paid[0]["value"], int)
    assert paid[0]["scriptpubkey_type"] == "v0_p2wpkh"
    program = paid[0]["scriptpubkey"][4:]
    assert paid[0]["scriptpubkey"] == "0014" + program
    assert paid[0]["scriptpubkey_asm"] == f"OP_0 OP_PUSHBYTES_20 {program}"
    assert sum(o["value"] for o in tx["vout"]) + tx["fee"] == sum(i["prevout"]["value"] for i in tx["vin"])
    assert get_json(sim, f"/tx/{world['t4']}/status") == {"confirmed": False}
    hex_reply = request(sim, f"/tx/{world['t4']}/hex")
    assert (hex_reply.status, hex_reply.content_type) == (200, "text/plain")
    assert hex_reply.text == sim.call("getrawtransaction", world["t4"])


def test_confirmed_tx_status_and_errors(sim, world):
    (block_hash,) = sim.mine(1)
    height, block_time = sim.chain.height, sim.chain.tip.time
    status = {"confirmed": True, "block_height": height, "block_hash": block_hash, "block_time": block_time}
    assert list(status) == list(fixture("blockstream_mainnet_2020-11.address_utxo.18HLJ9mi.json")[0]["status"])
    assert get_json(sim, f"/tx/{world['t4']}")["status"] == status
    assert get_json(sim, f"/tx/{world['t4']}/status") == status
    b1 = sim.call("getblockheader", world["b1"])
    assert get_json(sim, f"/tx/{world['t1']}/status") == {"confirmed": True, "block_height": b1["height"],
                                                         "block_hash": world["b1"], "block_time": b1["time"]}
    assert_error(request(sim, f"/tx/{UNKNOWN_TXID}"), 404, "Transaction not found")
    assert_error(request(sim, f"/tx/{UNKNOWN_TXID}/hex"), 404, "Transaction not found")
    assert_error(request(sim, "/tx/1234"), 400, "Invalid hex string")
    assert_error(request(sim, "/tx/" + "zz" * 32), 400, "Invalid hex string")
    # electrs answers a status without looking the transaction up
    assert get_json(sim, f"/tx/{UNKNOWN_TXID}/status") == {"confirmed": False}


def test_rbf_replacement(sim, world):
    assert world["t3"] != world["t2"]
    assert_error(request(sim, f"/tx/{world['t2']}"), 404, "Transaction not found")
    assert_error(request(sim, f"/tx/{world['t2']}/hex"), 404, "Transaction not found")
    replacement = get_json(sim, f"/tx/{world['t3']}")
    assert replacement["status"] == {"confirmed": False}
    txids = get_json(sim, "/mempool/txids")
    assert world["t3"] in txids and world["t2"] not in txids and world["t4"] in txids
    assert sorted(txids) == sorted(sim.call("getrawmempool"))
    # the replaced payment never reached the address: only t1 (confirmed) and t4 (pending) did
    history = [t["txid"] for t in get_json(sim, f"/address/{world['address']}/txs")]
    assert world["t2"] not in history and world["t3"] not in history
    # re-broadcasting the replaced tx: 400 with bitcoind's reason, as electrs relays it
    reply = request(sim, "/tx", world["t2_hex"].encode())
    assert (reply.status, reply.content_type) == (400, "text/plain")
    assert reply.text.startswith("sendrawtransaction RPC error -26: insufficient fee, rejecting replacement "
                                 f"{world['t2']}")


# -- addresses -------------------------------------------------------------------

def test_address_stats_txs_and_utxos(sim, world):
    address = world["address"]
    info = get_json(sim, f"/address/{address}")
    stats_keys = ["funded_txo_count", "funded_txo_sum", "spent_txo_count", "spent_txo_sum", "tx_count"]
    assert list(info) == ["address", "chain_stats", "mempool_stats"] and info["address"] == address
    assert info["chain_stats"] == dict(zip(stats_keys, [1, 10_000_000, 0, 0, 1]))
    assert info["mempool_stats"] == dict(zip(stats_keys, [1, 5_000_000, 0, 0, 1]))

    txs = get_json(sim, f"/address/{address}/txs")
    assert [t["txid"] for t in txs] == [world["t4"], world["t1"]]  # mempool first, then confirmed
    assert txs[0]["status"] == {"confirmed": False} and txs[1]["status"]["block_hash"] == world["b1"]
    assert [t["txid"] for t in get_json(sim, f"/address/{address}/txs/mempool")] == [world["t4"]]
    assert [t["txid"] for t in get_json(sim, f"/address/{address}/txs/chain")] == [world["t1"]]

    utxos = get_json(sim, f"/address/{address}/utxo")
    recorded = fixture("blockstream_mainnet_2020-11.address_utxo.18HLJ9mi.json")
    assert all(list(u) == list(recorded[0]) for u in utxos)
    b1 = sim.call("getblockheader", world["b1"])
    t1_vout = next(i for i, o in enumerate(txs[1]["vout"]) if o.get("scriptpubkey_address") == address)
    t4_vout = next(i for i, o in enumerate(txs[0]["vout"]) if o.get("scriptpubkey_address") == address)
    assert utxos == [
        {"txid": world["t1"], "vout": t1_vout, "status": {"confirmed": True, "block_height": b1["height"],
                                                           "block_hash": world["b1"], "block_time": b1["time"]},
         "value": 10_000_000},
        {"txid": world["t4"], "vout": t4_vout, "status": {"confirmed": False}, "value": 5_000_000}]

    (block_hash,) = sim.mine(1)
    info = get_json(sim, f"/address/{address}")
    assert info["chain_stats"] == dict(zip(stats_keys, [2, 15_000_000, 0, 0, 2]))
    assert info["mempool_stats"] == dict(zip(stats_keys, [0, 0, 0, 0, 0]))
    assert [t["txid"] for t in get_json(sim, f"/address/{address}/txs")] == [world["t4"], world["t1"]]
    assert all(u["status"]["confirmed"] for u in get_json(sim, f"/address/{address}/utxo"))


def test_address_spending_counts(sim):
    """The funding address spends: spent_txo counts and the spending tx in its history."""
    funding = sim.funding_address
    txid = sim.pay(sim.new_address(), "1")
    stats = get_json(sim, f"/address/{funding}")["mempool_stats"]
    tx = get_json(sim, f"/tx/{txid}")
    spent = sum(i["prevout"]["value"] for i in tx["vin"])
    change = sum(o["value"] for o in tx["vout"] if o.get("scriptpubkey_address") == funding)
    assert stats["tx_count"] == 1 and stats["spent_txo_count"] == len(tx["vin"]) and stats["spent_txo_sum"] == spent
    assert stats["funded_txo_sum"] == change
    assert [t["txid"] for t in get_json(sim, f"/address/{funding}/txs/mempool")] == [txid]
    spent_outpoints = {(i["txid"], i["vout"]) for i in tx["vin"]}
    assert not spent_outpoints & {(u["txid"], u["vout"]) for u in get_json(sim, f"/address/{funding}/utxo")}


def test_invalid_addresses(sim):
    for bad in ("nonsense", MAINNET_ADDRESS, "bcrt1qinvalidchecksum0000000000000000000000"):
        for suffix in ("", "/txs", "/txs/chain", "/utxo"):
            assert_error(request(sim, f"/address/{bad}{suffix}"), 400, "Invalid Bitcoin address")


# -- mempool, fees, broadcast ------------------------------------------------------

def test_mempool_backlog_and_fee_estimates(sim, world):
    backlog = get_json(sim, "/mempool")
    assert list(backlog) == ["count", "vsize", "total_fee", "fee_histogram"]
    entries = sim.call("getrawmempool", True)
    assert backlog["count"] == len(entries) == 2
    assert backlog["vsize"] == sum(e["vsize"] for e in entries.values())
    assert backlog["total_fee"] == sum(sats(e["fees"]["base"]) for e in entries.values())
    hist = backlog["fee_histogram"]
    assert all(isinstance(rate, float) and isinstance(size, int) for rate, size in hist)
    assert sum(size for _, size in hist) == backlog["vsize"]
    assert [r for r, _ in hist] == sorted((r for r, _ in hist), reverse=True)
    sim.mine(1)
    assert get_json(sim, "/mempool") == {"count": 0, "vsize": 0, "total_fee": 0, "fee_histogram": []}
    assert get_json(sim, "/mempool/txids") == []

    estimates = get_json(sim, "/fee-estimates")
    recorded = fixture("blockstream_2025-07.fee-estimates.REQUOTED.json")
    assert list(estimates) == list(recorded)  # targets 1-25, 144, 504, 1008
    feerate = sats(sim.call("estimatesmartfee", 6)["feerate"]) / 1000  # sat/vB
    assert all(isinstance(v, float) and v == feerate for v in estimates.values())


def test_broadcast(sim):
    address = sim.new_address()
    with sim._lock:
        tx = sim.wallet.pay(sim.chain, outputs.decode_address(address), 12_345, rbf=False, feerate_sat_vb=3)
    raw = tx.serialize().hex()
    reply = request(sim, "/tx", raw.encode())
    assert (reply.status, reply.content_type) == (200, "text/plain") and HEX64.match(reply.text)
    txid = reply.text
    assert txid in get_json(sim, "/mempool/txids") and get_text(sim, f"/tx/{txid}/hex") == raw
    assert request(sim, "/tx", raw.encode()).text == txid  # already in the mempool: the txid again
    sim.mine(1)
    assert (sim.chain.tx_location(txid) is not None) and sim.chain.tx_location(txid).hash == sim.chain.tip.hash
    assert_error(request(sim, "/tx", raw.encode()), 400,
                 "sendrawtransaction RPC error -27: Transaction outputs already in utxo set")
    recorded = fixture_text("electrs_PR133_2024-12.post_tx_error_body.txt")
    assert_error(request(sim, "/tx", b"00"), 400, recorded)
    assert [u["value"] for u in get_json(sim, f"/address/{address}/utxo")] == [12_345]


# -- reorg and locking ---------------------------------------------------------------

def test_reorg(sim, world):
    (old_tip,) = sim.mine(1)  # confirms t3 and t4
    old_height = sim.chain.height
    assert get_json(sim, f"/tx/{world['t4']}/status")["block_hash"] == old_tip
    new_blocks = sim.reorg(1)
    assert get_text(sim, "/blocks/tip/hash") == new_blocks[-1]
    assert get_text(sim, "/blocks/tip/height") == str(old_height + 1)
    assert get_text(sim, f"/block-height/{old_height}") == new_blocks[0] != old_tip
    assert get_json(sim, f"/block/{old_tip}/status") == {"in_best_chain": False, "height": None, "next_best": None}
    assert_error(request(sim, f"/block/{old_tip}"), 404, "Block not found")
    assert world["t4"] in get_json(sim, f"/block/{old_tip}/txids")  # stored by hash, stale or not
    status = get_json(sim, f"/tx/{world['t4']}/status")
    assert status == {"confirmed": True, "block_height": old_height, "block_hash": new_blocks[0],
                      "block_time": sim.call("getblockheader", new_blocks[0])["time"]}
    parent = sim.call("getblockhash", old_height - 1)
    assert get_json(sim, f"/block/{parent}/status")["next_best"] == new_blocks[0]
    history = get_json(sim, f"/address/{world['address']}/txs")
    assert [(t["txid"], t["status"].get("block_hash")) for t in history] == [
        (world["t4"], new_blocks[0]), (world["t1"], world["b1"])]


def test_requests_read_the_chain_under_the_sim_lock(sim, monkeypatch):
    """Every request runs holding the sim's lock (as the RPC server does); with payments and
    blocks in one thread and reads in another, every read answers, consistently."""
    address = sim.new_address()
    done = threading.Event()
    errors = []
    held = []
    route = esplora_mod.EsploraApi._route

    def checked_route(self, *args):
        held.append(sim._lock._is_owned())  # RLock: owned by the calling (handler) thread
        return route(self, *args)

    monkeypatch.setattr(esplora_mod.EsploraApi, "_route", checked_route)

    def writer():
        try:
            for _ in range(15):
                sim.pay(address, "0.001")
                sim.pay(address, "0.001")
                sim.mine(1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        while not done.is_set() or reads < 5:
            backlog = get_json(sim, "/mempool")
            assert sum(size for _, size in backlog["fee_histogram"]) == backlog["vsize"]
            info = get_json(sim, f"/address/{address}")
            assert info["chain_stats"]["funded_txo_count"] + info["mempool_stats"]["funded_txo_count"] == \
                info["chain_stats"]["tx_count"] + info["mempool_stats"]["tx_count"]
            txs = get_json(sim, f"/address/{address}/txs")
            heights = [t["status"]["block_height"] for t in txs if t["status"]["confirmed"]]
            assert heights == sorted(heights, reverse=True)
            reads += 1
    finally:
        thread.join()
    assert not errors
    assert reads >= 5 and len(held) == 3 * reads and all(held)
    reply = request(sim, "/tx", b"00")  # a POST, too
    assert reply.status == 400 and held[-1] is True
    info = get_json(sim, f"/address/{address}")
    assert info["chain_stats"]["tx_count"] == 30 and info["mempool_stats"]["tx_count"] == 0
