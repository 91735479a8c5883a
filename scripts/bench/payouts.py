"""`dctrl bench payouts`: a payout built, signed 2 of 3 and finalized from a treasury of 2,000
UTXOs, against embit alone doing the same in the same run (issue 13's benchmark, the PSBT part).

- ``payout_ms``: what PayoutMgr and two co-signers do: ``psbt.build`` (largest-first selection
  over every UTXO, each input checked against its previous transaction, every co-signer's
  derivations, both UTXOs, global xpubs), then per co-signer: sign a copy, cut it to the
  signatures (``service.signatures_only``), ``psbt.combine`` (each signature verified against
  our own sighash); then ``psbt.finalize``. Each run starts with the treasury's derivation
  cache empty (a running PayoutMgr has most of it warm: this is the slower case).
- ``baseline_ms``: embit alone: the same selection by a sort, a PSBT with only what signing
  needs (witness UTXO, witness script, derivations), ``sign_with`` for two keys on the one PSBT,
  the witnesses put together. No checks, no copies.
- ``ratio`` = payout_ms / baseline_ms (target: at most 2).
- ``restart_s``: PayoutMgr started again on a database holding 2,000 treasury outputs and 200
  pending payouts (100 waiting for signatures, 100 signed and not yet broadcast): from
  constructing the actor to every signed payout broadcast again and every pending one looked up
  on the chain (target: under 5 s). In process, hosted by ``_Host`` below (the loop's part of
  a runtime: ``call_soon`` and the actor's start, no sockets) with an in-process node that
  answers at once: the bus connection and the interpreter's start are not in it; the database
  work and the worker's round trips are.

Each UTXO comes from a transaction of its own (one output to the treasury and one elsewhere),
values spread from 10,000 to 100,000 sats; the payout is 1,000,000 sats (about 20 inputs).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from decimal import Decimal


def _treasury_and_keys():
    from embit import bip32, bip39
    from embit.networks import NETWORKS

    from actors.payout_mgr.treasury import Treasury

    net = NETWORKS["regtest"]
    mnemonics = [bip39.mnemonic_from_bytes(hashlib.sha256(b"dctrl bench cosigner %d" % i).digest()[:16])
                 for i in range(3)]
    keys = []
    for m in mnemonics:
        root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(m), version=net["xprv"])
        account = root.derive("m/48h/1h/0h/2h").to_public().to_string(version=net["xpub"])
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{account}/<0;1>/*")
    return Treasury(f"wsh(sortedmulti(2,{','.join(keys)}))", "regtest"), mnemonics


def _utxos(treasury, n: int, seed: int = 7):
    from embit.script import Script
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    from actors.payout_mgr.psbt import Utxo

    rng = random.Random(seed)
    other = Script(bytes.fromhex("0014") + bytes(20))
    out = []
    for i in range(n):
        sats = rng.randrange(10_000, 100_001)
        spk = Script(bytes.fromhex(treasury.address(i % 500, change=bool(i % 2))[1]))
        tx = Transaction(vin=[TransactionInput(hashlib.sha256(b"fund %d" % i).digest(), 0)],
                         vout=[TransactionOutput(sats, spk), TransactionOutput(rng.randrange(1000, 10**8), other)])
        out.append(Utxo(tx.txid().hex(), 0, sats, bool(i % 2), i % 500, tx.serialize()))
    return out


def _ours(treasury, mnemonics, utxos, amount, dest):
    from actors.payout_mgr import psbt as tx
    from actors.payout_mgr.service import signatures_only

    built = tx.build(treasury, utxos, [(dest, amount)], feerate=Decimal("2"), change_index=0, max_fee=10**6)
    exported = built.psbt.to_base64()
    ours = tx.decode(exported)
    for m in mnemonics[:2]:
        theirs = tx.decode(exported)
        tx.sign(treasury, theirs, m)
        ours, _ = tx.combine(treasury, ours, tx.decode(signatures_only(theirs)))
    return tx.finalize(treasury, ours), len(built.inputs)


def _baseline(treasury, mnemonics, utxos, amount, dest):
    from embit import bip32, bip39
    from embit.psbt import PSBT, DerivationPath
    from embit.script import Script, Witness, address_to_scriptpubkey
    from embit.transaction import Transaction, TransactionInput, TransactionOutput

    chosen, total = [], 0
    fee_per_input, fee_fixed = 2 * 105, 2 * 120
    for u in sorted(utxos, key=lambda u: -u.sats):
        chosen.append(u)
        total += u.sats
        if total >= amount + fee_fixed + fee_per_input * len(chosen) + 1000:
            break
    fee = fee_fixed + fee_per_input * len(chosen)
    change_spk = Script(bytes.fromhex(treasury.address(0, change=True)[1]))
    t = Transaction(vin=[TransactionInput(bytes.fromhex(u.txid), u.vout, sequence=0xFFFFFFFD) for u in chosen],
                    vout=[TransactionOutput(amount, address_to_scriptpubkey(dest)),
                          TransactionOutput(total - amount - fee, change_spk)])
    p = PSBT(t)
    for inp, u in zip(p.inputs, chosen):
        d = treasury.derived(u.index, u.change)
        inp.witness_utxo = TransactionOutput(u.sats, d.script_pubkey())
        inp.witness_script = d.witness_script()
        for c, k in zip(treasury.cosigners, d.keys):
            inp.bip32_derivations[k.key.get_public_key()] = DerivationPath(bytes.fromhex(c.fingerprint),
                                                                           k.origin.derivation)
    for m in mnemonics[:2]:
        p.sign_with(bip32.HDKey.from_seed(bip39.mnemonic_to_seed(m), version=treasury.net["xprv"]))
    final = p.tx
    for i, inp in enumerate(p.inputs):
        sigs = list(inp.partial_sigs.values())[:2]
        final.vin[i].witness = Witness([b""] + sigs + [inp.witness_script.data])
    return final, len(chosen)


def _timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 1), out


def main(args) -> int:
    quick = bool(getattr(args, "quick", False))
    n = 200 if quick else 2000
    repeat = 3 if quick else 5
    treasury, mnemonics = _treasury_and_keys()
    utxos = _utxos(treasury, n)
    amount = 1_000_000
    dest = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    _ours(treasury, mnemonics, utxos, amount, dest)  # warm up imports and caches for both
    _baseline(treasury, mnemonics, utxos, amount, dest)
    def cold():  # the treasury's derivation cache emptied: no help from the runs before
        type(treasury)._derived.cache_clear()
        return _ours(treasury, mnemonics, utxos, amount, dest)
    ours_ms, (_, inputs) = _timed(cold, repeat)
    base_ms, (_, base_inputs) = _timed(lambda: _baseline(treasury, mnemonics, utxos, amount, dest), repeat)
    pending = 20 if quick else 200
    out = {"suite": "payouts", "utxos": n, "inputs": inputs, "baseline_inputs": base_inputs,
           "payout_ms": ours_ms, "baseline_ms": base_ms,
           "ratio": round(ours_ms / base_ms, 2) if base_ms else math.inf, "target_ratio": 2.0,
           "pending": pending, "restart_s": _restart(n, pending), "target_restart_s": 5.0}
    print(json.dumps(out, sort_keys=True))
    return 0


class _Host:
    """What PayoutMgr asks of its runtime while it starts, without the bus: ``call_soon`` from
    its worker (run here by ``pump``); nothing is published (not connected)."""

    def __init__(self, actor):
        import queue

        self.actor, self.calls = actor, queue.Queue()
        actor.runtime = self

    def call_soon(self, fn, *args):
        self.calls.put((fn, args))

    def call_later(self, delay, fn, *args):
        pass

    def ready_to_publish(self):
        return False

    def publish(self, topic, body):
        return False

    def request_secret(self, name):
        pass

    def pump(self, until, timeout):
        import queue

        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise RuntimeError("payouts bench: PayoutMgr's start-up work did not finish in time")
            try:
                fn, args = self.calls.get(timeout=0.05)
            except queue.Empty:
                continue
            fn(*args)


class _Node:
    """An in-process node for the restart measurement: answers at once, counts what it is asked."""

    name = "bench"

    def __init__(self):
        self.broadcasts, self.lookups = 0, 0

    def tip(self):
        from actors.chain.adaptor import Tip
        return Tip(300, "00" * 32)

    def block_hash(self, height):
        return hashlib.sha256(b"%d" % height).hexdigest()

    def unspent(self, addresses):
        return []

    def raw_transaction(self, txid, block_hash=None):
        return None

    def transaction(self, txid):
        self.lookups += 1
        return None

    def broadcast(self, raw_hex):
        self.broadcasts += 1
        return ""

    def fee_estimates(self, targets=(1, 3, 6, 144)):
        return {6: Decimal("2")}

    def close(self):
        pass


def _restart(n_utxos: int, pending: int) -> float:
    """Seconds from constructing PayoutMgr to its start-up work done (see the module's doc)."""
    import tempfile
    from pathlib import Path

    from actors.payout_mgr import ledger, service
    from actors.payout_mgr import psbt as tx
    from actors.payout_mgr.actor import PayoutMgr
    from actors.payout_mgr.models import PayoutUtxo
    from scripts.cli.provision import init_home

    with tempfile.TemporaryDirectory() as tmp:
        home = init_home(Path(tmp) / "home")
        first = PayoutMgr(home, adaptor=_Node())  # makes the tables
        treasury = first.treasury
        now = int(time.time())
        utxos = _utxos(treasury, n_utxos)
        PayoutUtxo.insert_many([{"txid": u.txid, "vout": u.vout, "sats": u.sats, "branch": "change" if u.change
                                 else "receive", "position": u.index, "address": treasury.address(u.index, u.change)[0],
                                 "state": "confirmed", "confirmations": 6, "height": 100, "first_seen": now,
                                 "updated": now, "raw_tx": u.prev_tx} for u in utxos]).execute()
        policy = ledger.settings({"approvals": 0, "max_payout_cad": "1000000", "daily_limit_cad": "100000000"})
        secrets = [(home.root / "demo" / f"cosigner{i}.key").read_text() for i in (1, 2)]
        dest = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        for i in range(pending):
            p = ledger.request(policy, kind="manual", destination=dest, sats=5_000, rate=Decimal("100000"),
                               rate_as_of=now, reason="bench", by="admin")
            p = service.build(treasury, policy, p.id, utxos, rate=Decimal("2"), change_index=i)
            if i % 2:
                ours = tx.decode(p.psbt)
                for secret in secrets:
                    theirs = tx.decode(p.psbt)
                    tx.sign(treasury, theirs, secret)
                    ours, _ = tx.combine(treasury, ours, theirs)
                ledger.add_signatures(p.id, psbt_b64=ours.to_base64(), fingerprints=tx.signers(treasury, ours),
                                      identity="admin", complete=True)
                ledger.finalized(p.id, tx.finalize(treasury, ours).serialize().hex(), "admin")
        first.database.close()

        node = _Node()
        start = time.perf_counter()
        actor = PayoutMgr(home, adaptor=node)
        host = _Host(actor)
        actor.setup()
        host.pump(lambda: node.broadcasts >= pending // 2 and node.lookups >= pending and not actor._lookup_queued,
                  timeout=60)
        took = time.perf_counter() - start
        actor.teardown()
        return round(took, 2)
