"""`dctrl sim chain`: a regtest bitcoind stand-in for the demo and the tests.

It speaks Bitcoin Core 28's JSON-RPC (HTTP Basic auth with a ``.cookie``,
JSON-RPC 1.0 and 2.0, batches, Core's error envelopes and HTTP statuses,
amounts printed with 8 decimals) and publishes bitcoind's ZMQ notifications
(``hashblock``, ``hashtx``, ``rawblock``, ``rawtx``, ``sequence``; three
frames ``[topic, body, uint32 LE sequence]``; 32-byte hashes in RPC display
order, so ``body.hex() == getbestblockhash()``, exactly as bitcoind sends them:
see scripts/sim/chainsim/zmqpub.py). Blocks and transactions are
real serializations (embit), so txids, wtxids, block hashes, merkle roots and
raw bodies are what bitcoind would produce for them.

In-process::

    from scripts.sim.chain import ChainSim
    with ChainSim(tmp_path / "chain") as sim:   # free ports; premines 101 blocks on first start
        sim.rpc_url, sim.auth_url, sim.zmq_endpoint, sim.cookie_file
        sim.wait_zmq_subscribed("rawtx", "sequence")     # after a SUB connects
        txid = sim.pay(sim.new_address(), "0.0015", rbf=True)
        sim.mine(); sim.replace(txid); sim.reorg(2); sim.drop_zmq(1); sim.stop_rpc(0.5)

As a process: ``python -m scripts.sim.chain --datadir D [--rpc-port 18443] [--zmq-port 28332]``
(or ``dctrl sim chain`` once wired in); ``dctrl sim pay ADDRESS AMOUNT`` etc. drive it over RPC.

RPC methods (Core's parameters, positional or named): getblockchaininfo,
getnetworkinfo, getblockcount, getbestblockhash, getblockhash,
getblockheader, getblock (verbosity 0-3), getchaintips, getdifficulty,
getrawtransaction (verbosity 0-2, blockhash), decoderawtransaction,
getrawmempool (verbose, mempool_sequence), getmempoolentry,
getmempoolancestors, getmempooldescendants, getmempoolinfo, gettxout,
scantxoutset (start/status/abort; ``addr()`` and ``raw()`` descriptors),
sendrawtransaction (maxfeerate, maxburnamount), estimatesmartfee,
getzmqnotifications, generatetoaddress, uptime, help, stop.
Sim-only: sim_newaddress, sim_pay, sim_mine, sim_replace, sim_reorg,
sim_drop_zmq, sim_stop_rpc, sim_info.

Simplifications (where the sim is not bitcoind):

- Scripts and signatures are not verified. The sim signs its own P2WPKH
  inputs for real; anything else submitted is accepted whatever its witness
  (a replacement of a foreign tx keeps the old, now invalid, witness).
- getrawtransaction behaves as if ``-txindex`` were on: it finds mempool
  transactions and every transaction in a known block (a tx only in a stale
  block comes back with ``confirmations: 0``, as Core's txindex does).
- Policy covers what clients trip over (missing/spent inputs -25, coinbase
  maturity, min relay fee, dust, standard outputs, non-final, full-RBF rules
  3/4/6 and "adds unconfirmed" -26, maxfeerate, maxburnamount) but not
  ancestor/descendant package limits, TRUC (v3) rules, sigop limits or BIP68.
- A mined block takes the whole mempool (no weight limit, parents first).
- sim_pay transactions have locktime 0 (Core's wallet would set the tip height
  against fee sniping; such a tx turns non-final after a reorg to a lower tip
  and would not be re-confirmed). Change goes to a random output position.
- estimatesmartfee answers a fixed rate (1 sat/vB unless configured).
- No P2P: connections 0, every submitted tx stays ``unbroadcast``.
- ``sim_reorg`` is "invalidate, then mine": the disconnected txs re-enter the
  mempool (A) before the new blocks confirm them, and only the new tip gets a
  hashblock/rawblock. A disconnected tx that conflicts with the mempool is
  dropped.
- The ZMQ socket is an XPUB (identical on the wire to bitcoind's PUB) so that
  ``wait_zmq_subscribed`` can tell when a subscriber is really listening.
- Help texts are one usage line, not Core's full help.
"""

from __future__ import annotations

import sys

from scripts.sim.chainsim.cli import (
    cmd_sim_address, cmd_sim_chain, cmd_sim_drop_zmq, cmd_sim_mine, cmd_sim_pay,
    cmd_sim_reorg, cmd_sim_replace, cmd_sim_stop_rpc, default_datadir, main, rpc_call)
from scripts.sim.chainsim.errors import RpcError
from scripts.sim.chainsim.sim import DEFAULT_RPC_PORT, DEFAULT_ZMQ_PORT, ChainSim

__all__ = [
    "ChainSim", "RpcError", "DEFAULT_RPC_PORT", "DEFAULT_ZMQ_PORT", "main",
    "default_datadir",
    "rpc_call", "cmd_sim_chain", "cmd_sim_address", "cmd_sim_pay", "cmd_sim_mine", "cmd_sim_replace",
    "cmd_sim_reorg", "cmd_sim_drop_zmq", "cmd_sim_stop_rpc",
]

if __name__ == "__main__":
    sys.exit(main())
