"""The chain simulator against Bitcoin Core: real HTTP and ZMQ over loopback, free ports.

Shapes are checked against responses recorded from real bitcoind servers in
tests/fixtures/bitcoind (see tests/fixtures/README.md). Where the fixtures are older
than Core 28 (the version the sim answers as) the difference is asserted
explicitly: ``warnings`` is an array since 28, scriptPubKey has ``desc`` and a
single ``address`` since 22/23, JSON-RPC 2.0 replies omit the null member.

ZMQ hash bodies are compared with ``body.hex()``: bitcoind writes the hash in
RPC display order (zmqpublishnotifier.cpp reverses the internal bytes; its
functional test asserts ``hashblock.receive().hex() == getblockhash(..)``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import selectors
import socket
import stat
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import zmq
from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from scripts.sim.chain import (
    ChainSim, cmd_sim_address, cmd_sim_mine, cmd_sim_pay, cmd_sim_reorg, cmd_sim_replace)
from tests.harness import wait_for

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "bitcoind"
DEADLINE = 10.0
REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- helpers -------------------------------------------------------------------

def fixture(name: str):
    """A recorded bitcoind response; the result part of an envelope."""
    text = (FIXTURES / name).read_text()
    if name.endswith(".txt"):
        return text
    data = json.loads(text, parse_float=Decimal)
    if isinstance(data, dict) and "result" in data and "id" in data:
        return data["result"]
    return data


def fixture_raw(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(), parse_float=Decimal)


def dsha256(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


class RawRpc:
    """JSON-RPC over a bare http.client connection, to see statuses, headers and bytes."""

    def __init__(self, sim: ChainSim, user=None, password=None):
        self.port = sim.rpc_server.port
        u, p = sim.auth
        self.user = u if user is None else user
        self.password = p if password is None else password

    def post(self, payload, *, auth=True, path="/"):
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=DEADLINE)
        try:
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def call(self, method, *params, id=1):
        status, _, body = self.post({"jsonrpc": "1.0", "id": id, "method": method, "params": list(params)})
        return status, body


class ZmqTap:
    """A SUB socket that is really subscribed before the test acts (no slow-joiner loss)."""

    def __init__(self, sim: ChainSim, *topics: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(sim.zmq_endpoint)
        sim.wait_zmq_subscribed(*topics, timeout=DEADLINE)
        self.seen: list[tuple[str, bytes, int]] = []

    def recv(self, timeout=DEADLINE):
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no zmq message within {timeout} s (seen so far: "
                                 f"{[(t, s) for t, _, s in self.seen]})")
        frames = self.sock.recv_multipart()
        assert len(frames) == 3, f"bitcoind sends 3 frames, got {len(frames)}"
        assert len(frames[2]) == 4, "the sequence frame is a uint32"
        msg = (frames[0].decode(), frames[1], struct.unpack("<I", frames[2])[0])
        self.seen.append(msg)
        return msg

    def until(self, predicate, timeout=DEADLINE):
        """Messages up to and including the first one matching predicate(topic, body)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            got.append(msg)
            if predicate(msg[0], msg[1]):
                return got

    def close(self):
        self.sock.close(linger=0)
        self.ctx.term()


def seq_events(msgs):
    """(hash hex, label, mempool sequence or None) of the sequence-topic messages."""
    out = []
    for topic, body, _ in msgs:
        if topic == "sequence":
            label = chr(body[32])
            mseq = struct.unpack("<Q", body[33:])[0] if label in "AR" else None
            assert len(body) == (41 if label in "AR" else 33)
            out.append((body[:32].hex(), label, mseq))
    return out


def spend_tx(outpoint: tuple[str, int], value: int, script: bytes, *, outputs: int = 1) -> str:
    """A raw segwit tx spending outpoint to script (value split over `outputs` outputs), with a dummy
    witness: the sim does not check scripts."""
    values = [value // outputs] * outputs
    values[0] += value - sum(values)
    tx = Transaction(version=2, locktime=0,
                     vin=[TransactionInput(bytes.fromhex(outpoint[0]), outpoint[1], sequence=0xFFFFFFFD,
                                           witness=Witness([bytes(71), bytes([2]) + bytes(32)]))],
                     vout=[TransactionOutput(v, Script(script)) for v in values])
    return tx.serialize().hex()


# -- fixtures --------------------------------------------------------------------

@pytest.fixture
def sim(tmp_path):
    s = ChainSim(tmp_path / "chain").start()
    yield s
    s.stop()


@pytest.fixture
def rpc(sim):
    return AuthServiceProxy(sim.auth_url, timeout=DEADLINE)


@pytest.fixture
def raw(sim):
    return RawRpc(sim)


@pytest.fixture
def taps(sim):
    made = []

    def make(*topics):
        tap = ZmqTap(sim, *topics)
        made.append(tap)
        return tap
    yield make
    for tap in made:
        tap.close()


# -- HTTP, auth and envelopes ------------------------------------------------------

def test_cookie_and_auth_failure_look_like_bitcoind(sim, raw):
    mode = stat.S_IMODE(os.stat(sim.cookie_file).st_mode)
    assert mode == 0o600
    user, _, password = sim.cookie_file.read_text().partition(":")
    assert user == "__cookie__" and re.fullmatch(r"[0-9a-f]{64}", password)

    status, headers, body = RawRpc(sim, password="wrong").post({"method": "getblockcount", "id": 1})
    assert (status, body) == (401, b"")
    assert headers["www-authenticate"] == 'Basic realm="jsonrpc"'
    status, headers, body = raw.post({"method": "getblockcount", "id": 1}, auth=False)
    assert (status, body, headers["www-authenticate"]) == (401, b"", 'Basic realm="jsonrpc"')

    bad = AuthServiceProxy(sim.auth_url.replace(password, "0" * 64), timeout=DEADLINE)
    with pytest.raises(JSONRPCException) as err:
        bad.getblockcount()
    assert err.value.code == -342 and "401" in err.value.message
    assert AuthServiceProxy(sim.auth_url, timeout=DEADLINE).getblockcount() == 101


def test_unknown_method_is_404_with_core_envelope(sim, rpc, raw):
    core = fixture_raw("gavin_2010_v0.3.12.method_not_found_-32601.http404_body.HISTORICAL.json")
    status, headers, body = raw.post({"method": "getinfo_nonexistent", "params": [], "id": "123"})
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert body.endswith(b"\n")
    reply = json.loads(body)
    assert reply == core
    assert list(reply) == list(core) == ["result", "error", "id"]
    with pytest.raises(JSONRPCException) as err:
        rpc.getinfo_nonexistent()
    assert err.value.code == -32601 and err.value.message == "Method not found"
    # JSON-RPC 2.0 (Core 28+): HTTP 200, the error member only.
    status, _, body = raw.post({"jsonrpc": "2.0", "method": "nope", "id": 7})
    assert status == 200
    assert json.loads(body) == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 7}


def test_rpc_errors_are_500_with_core_envelope(sim, rpc, raw):
    cli = fixture("masteringbitcoin3_mainnet.getrawtransaction_notfound.cli_output.LINEWRAPPED_BY_SOURCE.txt")
    core_message = " ".join(line.strip() for line in cli.splitlines()[2:] if line.strip())
    status, body = raw.call("getrawtransaction", "ab" * 32, id="x1")
    assert status == 500
    reply = json.loads(body)
    assert list(reply) == ["result", "error", "id"] and reply["result"] is None and reply["id"] == "x1"
    assert reply["error"] == {"code": -5, "message": core_message}
    with pytest.raises(JSONRPCException) as err:
        rpc.getblockhash(10_000)
    assert (err.value.code, err.value.message) == (-8, "Block height out of range")
    status, body = raw.call("getblockhash", "x")
    assert status == 500 and json.loads(body)["error"]["code"] == -3
    status, _, body = raw.post(b"{not json")
    assert status == 500
    assert json.loads(body) == {"result": None, "error": {"code": -32700, "message": "Parse error"}, "id": None}
    status, _, body = raw.post({"method": 5, "id": 1})
    assert status == 400 and json.loads(body)["error"]["code"] == -32600


def test_batch_answers_an_array_in_order(sim, raw):
    batch = [
        {"jsonrpc": "1.0", "id": "a", "method": "getblockcount", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "getbestblockhash", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "no_such_method"},
        {"jsonrpc": "2.0", "method": "getblockcount"},  # a notification: no answer
        {"id": None, "method": "getblockhash", "params": [0]},
    ]
    status, headers, body = raw.post(batch)
    assert status == 200 and headers["content-type"] == "application/json"
    replies = json.loads(body)
    assert replies == [
        {"result": 101, "error": None, "id": "a"},
        {"jsonrpc": "2.0", "result": sim.chain.tip.hash, "id": 2},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 3},
        {"result": REGTEST_GENESIS, "error": None, "id": None},
    ]
    status, _, body = raw.post([{"jsonrpc": "2.0", "method": "getblockcount"}])
    assert (status, body) == (204, b"")


def test_python_bitcoinrpc_batch_trips_on_core28_v2_replies(sim):
    """AuthServiceProxy.batch_ sends "jsonrpc": "2.0" and then reads reply['error'], which Core 28+
    omits on success: it raises KeyError against a real node too (jgarzik/python-bitcoinrpc#112)."""
    proxy = AuthServiceProxy(sim.auth_url, timeout=DEADLINE)
    with pytest.raises(KeyError, match="error"):
        proxy.batch_([["getblockcount"], ["getbestblockhash"]])


def test_named_parameters_and_wrong_types(sim, raw):
    status, _, body = raw.post({"jsonrpc": "2.0", "id": 1, "method": "getblock",
                                "params": {"blockhash": sim.chain.tip.hash, "verbosity": 0}})
    assert status == 200 and json.loads(body)["result"] == sim.chain.tip.raw.hex()
    status, _, body = raw.post({"id": 1, "method": "getblock", "params": {"hash": sim.chain.tip.hash}})
    assert status == 500 and json.loads(body)["error"] == {"code": -8, "message": "Unknown named parameter hash"}
    status, body = raw.call("getblockheader", "zz" * 32)
    assert json.loads(body)["error"] == {"code": -8, "message": f"hash must be hexadecimal string (not '{'zz' * 32}')"}


# -- result shapes ------------------------------------------------------------------

def test_chain_info_shapes_match_recorded_bitcoind(sim, rpc, raw):
    info = rpc.getblockchaininfo()
    for name in ("sandshrew_mainnet_2023-12.getblockchaininfo.envelope.json",
                 "masteringbitcoin3_mainnet_2023-07.getblockchaininfo.raw_http_body.json"):
        assert list(info) == list(fixture(name))
    assert info["chain"] == "regtest" and info["blocks"] == info["headers"] == 101
    assert info["warnings"] == []  # Core 28: an array (the fixtures predate it)
    assert info["chainwork"] == f"{2 * 102:064x}"
    _, body = raw.call("getblockchaininfo")
    assert '"difficulty":4.656542373906925e-10' in body.decode()

    assert rpc.getblockhash(0) == REGTEST_GENESIS
    assert isinstance(rpc.getblockcount(), int)
    assert HEX64.match(rpc.getbestblockhash())
    assert rpc.getbestblockhash() == rpc.getblockhash(rpc.getblockcount())

    middle = rpc.getblockhash(50)
    header = rpc.getblockheader(middle)
    assert list(header) == list(fixture("sandshrew_mainnet_2023-12.getblockheader.verbose.envelope.json"))
    block = rpc.getblock(middle)
    assert list(block) == list(fixture("sandshrew_mainnet_2023-12.getblock.verbosity1.envelope.json"))
    assert (block["height"], block["confirmations"], block["bits"]) == (50, 52, "207fffff")
    raw_header = bytes.fromhex(rpc.getblockheader(middle, False))
    assert dsha256(raw_header)[::-1].hex() == middle
    raw_block = bytes.fromhex(rpc.getblock(middle, 0))
    assert raw_block[:80] == raw_header and len(raw_block) == block["size"]

    net = rpc.getnetworkinfo()
    assert set(net) == set(fixture("masteringbitcoin3_mainnet_v24.0.1.getnetworkinfo.result.EDITED_BY_SOURCE.json"))
    recorded = fixture("unidentified-readme_mainnet_v24.0.1.getnetworkinfo.envelope.REFORMATTED_BY_SOURCE.json")
    assert [set(n) for n in net["networks"]] == [set(n) for n in recorded["networks"]]
    fee = rpc.estimatesmartfee(6)
    assert list(fee) == list(fixture("masteringbitcoin3_mainnet_2023.estimatesmartfee_144.result.json"))
    assert fee == {"feerate": Decimal("0.00001000"), "blocks": 6}
    zmq_info = rpc.getzmqnotifications()
    entry_keys = [list(e) for e in fixture("learningbitcoin.getzmqnotifications.result.json")]
    assert all(list(e) == entry_keys[0] for e in zmq_info)
    assert {e["type"] for e in zmq_info} == {"pubhashblock", "pubhashtx", "pubrawblock", "pubrawtx", "pubsequence"}
    assert all(e["address"] == sim.zmq_endpoint for e in zmq_info)


def test_transaction_and_mempool_shapes_match_recorded_bitcoind(sim, rpc):
    addr = rpc.sim_newaddress()
    txid = rpc.sim_pay(addr, "0.25000000", True)

    assert rpc.getrawmempool() == [txid]
    assert all(HEX64.match(t) for t in fixture("sandshrew_mainnet_2023-12.getrawmempool.verbose_false.envelope.json"))
    entry = rpc.getmempoolentry(txid)
    core_entry = fixture("sandshrew_mainnet_2023-12.getmempoolentry.envelope.json")
    assert list(entry) == list(core_entry) and list(entry["fees"]) == list(core_entry["fees"])
    assert entry["bip125-replaceable"] is True and entry["unbroadcast"] is True
    assert list(rpc.getmempoolinfo()) == list(fixture("sandshrew_mainnet_2023-12.getmempoolinfo.envelope.json"))
    assert rpc.getrawmempool(True)[txid] == entry

    mempool_tx = rpc.getrawtransaction(txid, True)
    core_mempool = fixture("learningbitcoin_testnet_2020_pre-v22.getrawtransaction.verbose."
                           "95d51e81.mempool_p2sh-p2wpkh.result.json")
    assert list(mempool_tx) == list(core_mempool)
    assert list(mempool_tx["vin"][0]) == list(core_mempool["vin"][0])
    decoded_core = fixture("masteringbitcoin3_mainnet.decoderawtransaction.466200308696.result.TRUNCATED_BY_SOURCE.json")
    spk_keys = list(decoded_core["vout"][1]["scriptPubKey"])  # Core 23+: asm, desc, hex, address, type
    assert all(list(v["scriptPubKey"]) == spk_keys for v in mempool_tx["vout"])
    paid = next(v for v in mempool_tx["vout"] if v["scriptPubKey"]["address"] == addr)
    assert paid["value"] == Decimal("0.25") and paid["scriptPubKey"]["type"] == "witness_v0_keyhash"
    assert paid["scriptPubKey"]["desc"].startswith(f"addr({addr})#")
    assert rpc.getrawtransaction(txid) == mempool_tx["hex"]

    out = rpc.gettxout(txid, paid["n"])
    core_out = fixture("sandshrew_mainnet_2023-12.gettxout.envelope.json")
    assert list(out) == list(core_out) and list(out["scriptPubKey"]) == list(core_out["scriptPubKey"])
    assert out["confirmations"] == 0

    block_hash = rpc.sim_mine(1)[0]
    confirmed = rpc.getrawtransaction(txid, True)
    core_confirmed = fixture("learningbitcoin_testnet_2020_pre-v22.getrawtransaction.verbose."
                             "f68de52d.confirmed_p2wsh.result.json")
    assert list(confirmed) == list(core_confirmed)
    assert (confirmed["blockhash"], confirmed["confirmations"]) == (block_hash, 1)
    assert rpc.gettxout(txid, paid["n"])["confirmations"] == 1
    detailed = rpc.getrawtransaction(txid, 2)
    assert detailed["fee"] == entry["fees"]["base"] and "prevout" in detailed["vin"][0]
    block = rpc.getblock(block_hash, 2)
    assert [t["txid"] for t in block["tx"]] == rpc.getblock(block_hash)["tx"]
    assert "fee" in block["tx"][1] and "fee" not in block["tx"][0]
    assert rpc.getmempoolinfo()["size"] == 0

    scan = rpc.scantxoutset("start", [f"addr({addr})"])
    assert list(scan) == list(fixture("lley154-readme_testnet.scantxoutset.result.json"))
    assert set(scan["unspents"][0]) >= {"txid", "vout", "scriptPubKey", "desc", "amount", "coinbase", "height"}


def test_decoding_a_recorded_mainnet_transaction_matches_core(rpc):
    """Real serialization: a recorded raw tx gives the txid, wtxid and sizes bitcoind printed for it."""
    hex_tx = fixture("masteringbitcoin3_mainnet.getrawtransaction."
                     "466200308696215bbc949d5141a49a4138ecdfdfaa2a8029c1f9bcecd1f96177.hex.txt").strip()
    core = fixture("masteringbitcoin3_mainnet.decoderawtransaction.466200308696.result.TRUNCATED_BY_SOURCE.json")
    ours = rpc.decoderawtransaction(hex_tx)
    for key in ("txid", "hash", "version", "size", "vsize", "weight", "locktime"):
        assert ours[key] == core[key], key
    for mine, theirs in zip(ours["vout"], core["vout"]):
        assert mine["value"] == theirs["value"] and mine["scriptPubKey"]["type"] == theirs["scriptPubKey"]["type"]
    assert ours["vout"][1]["scriptPubKey"]["asm"] == core["vout"][1]["scriptPubKey"]["asm"]
    desc = ours["vout"][0]["scriptPubKey"]["desc"]  # the book truncated the middle: compare the ends
    assert desc.startswith("rawtr(3b41daba4c9ace578369740f15e5ec880c28279ee7f51b") and desc.endswith("6ev")
    sandshrew = fixture("sandshrew_mainnet_2023-12.getrawtransaction.verbose_false.envelope.json")
    assert rpc.decoderawtransaction(sandshrew)["txid"].startswith("9d92bea8")


def test_amounts_are_printed_with_eight_decimals(sim, rpc, raw):
    addr = rpc.sim_newaddress()
    txid = rpc.sim_pay(addr, "1.5")
    bodies = [raw.call("getmempoolentry", txid)[1], raw.call("getmempoolinfo")[1],
              raw.call("getrawtransaction", txid, True)[1], raw.call("estimatesmartfee", 2)[1],
              raw.call("getnetworkinfo")[1], raw.call("sim_info")[1]]
    rpc.sim_mine(1)
    n = next(v["n"] for v in rpc.getrawtransaction(txid, True)["vout"] if v["scriptPubKey"]["address"] == addr)
    bodies += [raw.call("gettxout", txid, n)[1], raw.call("scantxoutset", "start", [f"addr({addr})"])[1],
               raw.call("getblock", sim.chain.tip.hash, 2)[1]]
    amount_keys = ("value", "amount", "total_amount", "feerate", "relayfee", "incrementalfee", "base", "modified",
                   "ancestor", "descendant", "fee", "total_fee", "mempoolminfee", "minrelaytxfee",
                   "incrementalrelayfee", "balance", "immature")
    pattern = re.compile(r'"(' + "|".join(amount_keys) + r')":(-?[0-9][0-9.eE+-]*)')
    found = [m for body in bodies for m in pattern.findall(body.decode())]
    assert len(found) >= 20
    bad = [(k, v) for k, v in found if not re.fullmatch(r"-?\d+\.\d{8}", v)]
    assert not bad, bad
    assert '"amount":1.50000000' in bodies[7].decode() and '"value":0.00000000' in bodies[8].decode()


# -- ZMQ ------------------------------------------------------------------------------

def test_zmq_frames_byte_order_and_counters(sim, rpc, taps):
    tap = taps("hashblock", "hashtx", "rawtx", "rawblock", "sequence")
    addr = rpc.sim_newaddress()
    txid = rpc.sim_pay(addr, "0.001")
    got = tap.until(lambda t, b: t == "sequence")
    assert [(t, s) for t, _, s in got] == [("hashtx", 0), ("rawtx", 0), ("sequence", 0)]
    assert got[0][1].hex() == txid  # display order, as bitcoind sends it
    assert Transaction.parse(got[1][1]).txid().hex() == txid
    assert seq_events(got) == [(txid, "A", 1)]
    assert rpc.getrawmempool(False, True) == {"txids": [txid], "mempool_sequence": 2}

    block_hash = rpc.sim_mine(1)[0]
    got = tap.until(lambda t, b: t == "rawblock")
    assert [(t, s) for t, _, s in got] == [("hashtx", 1), ("rawtx", 1), ("hashtx", 2), ("rawtx", 2),
                                          ("sequence", 1), ("hashblock", 0), ("rawblock", 0)]
    coinbase, paid = Transaction.parse(got[1][1]), Transaction.parse(got[3][1])
    assert paid.txid().hex() == txid and coinbase.vin[0].vout == 0xFFFFFFFF
    assert seq_events(got) == [(block_hash, "C", None)]
    hashblock = got[5][1]
    assert hashblock.hex() == rpc.getbestblockhash() == block_hash
    assert hashblock[::-1].hex() != block_hash
    assert dsha256(got[6][1][:80])[::-1].hex() == block_hash
    assert rpc.getblock(block_hash, 0) == got[6][1].hex()
    # Removal for block inclusion sends no R but still counts in the mempool sequence.
    assert rpc.getrawmempool(False, True) == {"txids": [], "mempool_sequence": 3}


def test_sim_drop_zmq_leaves_a_sequence_gap(sim, rpc, taps):
    tap = taps("hashblock", "hashtx", "sequence", "rawblock")
    rpc.sim_mine(1)
    tap.until(lambda t, b: t == "rawblock")
    # One empty block publishes hashtx, rawtx, sequence C, hashblock, rawblock: drop the first four.
    rpc.sim_drop_zmq(4)
    rpc.sim_mine(1)
    rpc.sim_mine(1)
    tap.until(lambda t, b: t == "rawblock" and tap.seen[-1][2] == 2)
    seqs = {topic: [s for t, _, s in tap.seen if t == topic] for topic in ("hashblock", "hashtx", "sequence", "rawblock")}
    assert seqs == {"hashblock": [0, 2], "hashtx": [0, 2], "sequence": [0, 2], "rawblock": [0, 1, 2]}


def test_replace_sends_r_for_the_old_and_a_for_the_new(sim, rpc, taps):
    tap = taps("sequence", "rawtx")
    txid = rpc.sim_pay(rpc.sim_newaddress(), "0.02", True)
    tap.until(lambda t, b: t == "sequence")
    old_fee = rpc.getmempoolentry(txid)["fees"]["base"]
    new_txid = rpc.sim_replace(txid)
    got = tap.until(lambda t, b: t == "sequence" and b[32:33] == b"A")
    assert seq_events(got) == [(txid, "R", 2), (new_txid, "A", 3)]
    assert Transaction.parse(next(b for t, b, _ in got if t == "rawtx")).txid().hex() == new_txid
    assert rpc.getrawmempool() == [new_txid]
    assert rpc.getmempoolentry(new_txid)["fees"]["base"] > old_fee
    with pytest.raises(JSONRPCException) as err:
        rpc.getrawtransaction(txid)
    assert err.value.code == -5
    replacement = rpc.getrawtransaction(new_txid, True)
    old_inputs = {(i["txid"], i["vout"]) for i in replacement["vin"]}
    assert len(old_inputs) == 1
    assert [v["scriptPubKey"]["address"] for v in replacement["vout"]] == [rpc.sim_info()["funding_address"]]


def test_reorg_disconnects_then_connects_and_reconfirms(sim, rpc, taps):
    tap = taps("sequence", "hashblock")
    rpc.sim_mine(1)                                   # 102
    txid = rpc.sim_pay(rpc.sim_newaddress(), "0.3")
    old_block = rpc.sim_mine(1)[0]                    # 103, holds txid
    old_102 = rpc.getblockhash(102)
    tap.until(lambda t, b: t == "hashblock" and b.hex() == old_block)
    hashblock_seq = tap.seen[-1][2]
    assert rpc.getrawtransaction(txid, True)["blockhash"] == old_block

    new_blocks = rpc.sim_reorg(2)
    assert len(new_blocks) == 3
    got = tap.until(lambda t, b: t == "hashblock")
    events = seq_events(got)
    assert [(h, label) for h, label, _ in events if label in "CD"] == \
        [(old_block, "D"), (old_102, "D"), (new_blocks[0], "C"), (new_blocks[1], "C"), (new_blocks[2], "C")]
    assert (txid, "A") in [(h, label) for h, label, _ in events]
    hashblocks = [(b.hex(), s) for t, b, s in got if t == "hashblock"]
    assert hashblocks == [(new_blocks[-1], hashblock_seq + 1)]  # only the new tip is announced

    assert rpc.getblockcount() == 104 and rpc.getbestblockhash() == new_blocks[-1]
    confirmed = rpc.getrawtransaction(txid, True)
    assert confirmed["blockhash"] == new_blocks[0] != old_block
    assert rpc.getblock(confirmed["blockhash"])["height"] == 102 and confirmed["confirmations"] == 3
    assert rpc.getblock(old_block)["confirmations"] == -1
    tips = rpc.getchaintips()
    core_tip_keys = list(fixture("sandshrew_mainnet_2023-12.getchaintips.envelope.json")[0])
    assert all(list(t) == core_tip_keys for t in tips)
    assert {"height": 103, "hash": old_block, "branchlen": 2, "status": "valid-fork"} in tips


# -- sendrawtransaction and the UTXO set ---------------------------------------------------

def test_sendrawtransaction_refusals(sim, rpc, raw):
    txid = rpc.sim_pay(rpc.sim_newaddress(), "0.01", True)
    tx = rpc.getrawtransaction(txid, True)
    spent = (tx["vin"][0]["txid"], tx["vin"][0]["vout"])
    funding = bytes.fromhex(tx["vout"][0]["scriptPubKey"]["hex"])
    coin_value = int(rpc.gettxout(*spent, False)["value"] * 100_000_000)
    fee = int(rpc.getmempoolentry(txid)["fees"]["base"] * 100_000_000)

    # In the mempool: a conflicting spend paying less is refused (-26), one paying more replaces it.
    cheap = spend_tx(spent, coin_value - fee + 50, funding)
    with pytest.raises(JSONRPCException) as err:
        rpc.sendrawtransaction(cheap)
    assert err.value.code == -26 and err.value.message.startswith("insufficient fee, rejecting replacement")
    # More fee in total (rules 3 and 4 hold) but a lower feerate than the original (rule 6): refused.
    old_rate = fee * 1000 // rpc.getmempoolentry(txid)["vsize"]
    vsize = rpc.decoderawtransaction(spend_tx(spent, coin_value, funding, outputs=9))["vsize"]
    big = spend_tx(spent, coin_value - fee - vsize, funding, outputs=9)
    assert (fee + vsize) * 1000 // vsize <= old_rate
    with pytest.raises(JSONRPCException) as err:
        rpc.sendrawtransaction(big)
    assert err.value.code == -26
    assert err.value.message.endswith(f"<= old feerate 0.0000{old_rate:04d} BTC/kvB")
    assert rpc.sendrawtransaction(tx["hex"]) == txid  # already in the mempool: the txid again

    rpc.sim_mine(1)
    again = spend_tx(spent, coin_value - 10_000, funding)
    with pytest.raises(JSONRPCException) as err:
        rpc.sendrawtransaction(again)
    assert (err.value.code, err.value.message) == (-25, "bad-txns-inputs-missingorspent")
    status, body = raw.call("sendrawtransaction", again, id=9)
    assert status == 500
    assert json.loads(body) == {"result": None, "error": {"code": -25, "message": "bad-txns-inputs-missingorspent"},
                                "id": 9}
    with pytest.raises(JSONRPCException) as err:
        rpc.sendrawtransaction(tx["hex"])
    assert (err.value.code, err.value.message) == (-27, "Transaction outputs already in utxo set")
    core = fixture_raw("electrs_PR133_2024-12.sendrawtransaction_error_-22.http500_body.json")
    status, body = raw.call("sendrawtransaction", "00", id=136)
    assert status == 500 and json.loads(body) == core


def test_sendrawtransaction_replacement_is_announced(sim, rpc, taps):
    tap = taps("sequence")
    txid = rpc.sim_pay(rpc.sim_newaddress(), "0.01")
    tx = rpc.getrawtransaction(txid, True)
    spent = (tx["vin"][0]["txid"], tx["vin"][0]["vout"])
    coin_value = int(rpc.gettxout(*spent, False)["value"] * 100_000_000)
    fee = int(rpc.getmempoolentry(txid)["fees"]["base"] * 100_000_000)
    better = spend_tx(spent, coin_value - fee - 1000, bytes.fromhex(tx["vout"][0]["scriptPubKey"]["hex"]))
    new_txid = rpc.sendrawtransaction(better)
    got = tap.until(lambda t, b: b[32:33] == b"A" and b[:32].hex() == new_txid)
    assert [(h, label) for h, label, _ in seq_events(got)] == [(txid, "A"), (txid, "R"), (new_txid, "A")]
    assert rpc.getrawmempool() == [new_txid]


def test_scantxoutset_finds_unspent_outputs_until_spent(sim, rpc):
    addr = rpc.sim_newaddress()
    assert rpc.scantxoutset("start", [f"addr({addr})"])["unspents"] == []
    txid = rpc.sim_pay(addr, "0.5")
    assert rpc.scantxoutset("start", [f"addr({addr})"])["unspents"] == []  # the UTXO set only: not the mempool
    rpc.sim_mine(1)
    scan = rpc.scantxoutset("start", [{"desc": f"addr({addr})"}])
    assert scan["height"] == 102 and scan["bestblock"] == rpc.getbestblockhash()
    assert scan["total_amount"] == Decimal("0.50000000")
    (u,) = scan["unspents"]
    assert (u["txid"], u["amount"], u["coinbase"], u["height"]) == (txid, Decimal("0.5"), False, 102)
    assert u["desc"].startswith(f"addr({addr})#") and u["scriptPubKey"] == rpc.gettxout(txid, u["vout"])[
        "scriptPubKey"]["hex"]

    spender = spend_tx((txid, u["vout"]), 50_000_000 - 1_000, bytes.fromhex(u["scriptPubKey"]))
    spend_txid = rpc.sendrawtransaction(spender)
    rpc.sim_mine(1)
    scan = rpc.scantxoutset("start", [f"addr({addr})"])
    assert [x["txid"] for x in scan["unspents"]] == [spend_txid]
    assert rpc.gettxout(txid, u["vout"]) is None
    with pytest.raises(JSONRPCException) as err:
        rpc.scantxoutset("start", ["addr(bc1qwafvze0200nh9vkq4jmlf4sy0tn0ga5w0zpkpg)"])
    assert err.value.code == -5  # a mainnet address on regtest


# -- operations -----------------------------------------------------------------------------

def test_sim_stop_rpc_closes_connections_for_a_while(sim, rpc, raw):
    assert rpc.getblockcount() == 101  # a kept-alive connection
    rpc.sim_stop_rpc(0.5)
    with pytest.raises((ConnectionError, http.client.HTTPException, socket.timeout)):
        raw.call("getblockcount")
    with pytest.raises((ConnectionError, http.client.HTTPException, socket.timeout)):
        rpc.getblockcount()

    def answers():
        try:
            return raw.call("getblockcount") == (200, b'{"result":101,"error":null,"id":1}\n')
        except (ConnectionError, http.client.HTTPException, socket.timeout):
            return False
    wait_for(answers, what="the RPC server to answer again")


def test_restart_keeps_the_chain_and_mempool(tmp_path):
    with ChainSim(tmp_path / "chain") as sim:
        addr = sim.new_address()
        first = sim.pay(addr, "0.1")
        sim.mine()
        waiting = sim.pay(addr, Decimal("0.2"), rbf=True)
        tip, height, cookie = sim.chain.tip.hash, sim.chain.height, sim.cookie_file.read_text()
    assert not (tmp_path / "chain" / ".cookie").exists()
    with ChainSim(tmp_path / "chain") as again:
        rpc = AuthServiceProxy(again.auth_url, timeout=DEADLINE)
        assert (rpc.getbestblockhash(), rpc.getblockcount()) == (tip, height)
        assert rpc.getrawtransaction(first, True)["confirmations"] == 1
        assert rpc.getrawmempool(False, True) == {"txids": [waiting], "mempool_sequence": 1}
        assert again.cookie_file.read_text() != cookie
        assert rpc.sim_newaddress() != addr


def test_configured_user_and_password_and_legacy_warnings(tmp_path):
    with ChainSim(tmp_path / "c", user="alice", password="s3cret", deprecated_rpc=("warnings",)) as sim:
        assert sim.cookie_file is None and not (tmp_path / "c" / ".cookie").exists()
        rpc = AuthServiceProxy(f"http://alice:s3cret@127.0.0.1:{sim.rpc_server.port}", timeout=DEADLINE)
        assert rpc.getblockchaininfo()["warnings"] == ""
        status, _, _ = RawRpc(sim, user="__cookie__").post({"method": "getblockcount", "id": 1})
        assert status == 401


def test_process_and_cli_commands(tmp_path, capsys):
    datadir = tmp_path / "chain"
    proc = subprocess.Popen([sys.executable, "-m", "scripts.sim.chain", "--datadir", str(datadir),
                             "--rpc-port", "0", "--zmq-port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout=20), "the sim printed no ready line"
        ready = proc.stdout.readline()
        fields = dict(part.split("=", 1) for part in ready.split()[3:])
        assert ready.startswith("chain sim ready:") and fields["height"] == "101"
        assert fields["cookie"] == str(datadir / ".cookie")
        args = argparse.Namespace(rpc_url=fields["rpc"], cookie=fields["cookie"], home=None, datadir=None)

        assert cmd_sim_address(args) == 0
        address = capsys.readouterr().out.strip()
        assert address.startswith("bcrt1q")
        assert cmd_sim_pay(argparse.Namespace(**vars(args), address=address, amount="0.0042", rbf=True)) == 0
        txid = capsys.readouterr().out.strip()
        assert HEX64.match(txid)
        assert cmd_sim_replace(argparse.Namespace(**vars(args), txid=txid)) == 0
        new_txid = capsys.readouterr().out.strip()
        assert HEX64.match(new_txid) and new_txid != txid
        assert cmd_sim_mine(argparse.Namespace(**vars(args), n=2)) == 0
        assert len(capsys.readouterr().out.split()) == 2
        assert cmd_sim_reorg(argparse.Namespace(**vars(args), depth=1)) == 0
        assert len(capsys.readouterr().out.split()) == 2

        user, _, password = Path(fields["cookie"]).read_text().partition(":")
        rpc = AuthServiceProxy(fields["rpc"].replace("http://", f"http://{user}:{password}@"), timeout=DEADLINE)
        assert rpc.getblockcount() == 104
        assert rpc.getrawtransaction(new_txid, True)["confirmations"] == 3
        assert rpc.stop() == "Bitcoin Core stopping"
        assert proc.wait(timeout=20) == 0
        assert not (datadir / ".cookie").exists()
        assert json.loads((datadir / "chain.json").read_text())["format"] == "dctrl-chainsim/1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
