"""PayoutMgr's work between the books (ledger.py) and the transactions (psbt.py): build a
payout's PSBT from the treasury's unclaimed outputs, take signatures, finalize, and say what a
payout does in terms a co-signer can check (issue 13 items 4 and 5).

No bus: the actor calls these with what it knows (the UTXOs, the fee estimate, the next change
index) and publishes what they return. Each step is one ledger transaction.
"""

from __future__ import annotations

import time
from decimal import Decimal

from embit.psbt import PSBT

from . import ledger
from . import psbt as tx
from .ledger import BUMPABLE, Payout, PayoutRefused
from .treasury import Treasury


def feerate(policy: dict, estimates: dict[int, Decimal]) -> Decimal:
    """The fee rate (sat/vB) for the policy's target: the adaptor's estimate for that target
    (or the nearest slower one it gave), kept within [min_feerate, max_feerate]; the minimum
    when the node gives none (a payout can be bumped)."""
    target = policy["fee_target_blocks"]
    usable = sorted(t for t in estimates if t >= target) or sorted(estimates, reverse=True)
    rate = Decimal(estimates[usable[0]]) if usable else Decimal(str(policy["min_feerate"]))
    low, high = Decimal(str(policy["min_feerate"])), Decimal(str(policy["max_feerate"]))
    return min(max(rate, low), high)


def build(treasury: Treasury, policy: dict, payout_id: int, utxos: list[tx.Utxo], *, rate: Decimal,
          change_index: int, by: str = "payout_mgr", clock=time.time) -> Payout:
    """The payout's PSBT from the outputs no other payout has claimed; its inputs claimed."""
    p = Payout.get_by_id(payout_id)
    if p.state != "requested":
        raise PayoutRefused(f"payout {p.id} is {p.state}")
    taken = ledger.claimed_outpoints()
    free = [u for u in utxos if u.outpoint not in taken]
    built = tx.build(treasury, free, [(p.destination, p.sats)], feerate=rate, change_index=change_index,
                     max_fee=policy["max_fee_sats"])
    return ledger.attach(p.id, psbt_b64=built.psbt.to_base64(), txid=tx.txid(built.psbt),
                         inputs=[u.outpoint for u in built.inputs], fee=built.fee, vsize=built.vsize,
                         change_sats=built.change_sats, change_index=change_index, by=by, clock=clock)


def bump(treasury: Treasury, policy: dict, payout_id: int, feerate: Decimal, by: str,
         clock=time.time) -> Payout:
    """A broadcast payout's replacement (RBF) at ``feerate`` sat/vB: a new payout replacing it,
    for the co-signers to sign (psbt.bump says what a replacement may be)."""
    o = Payout.get_or_none(Payout.id == payout_id)
    if o is None:
        raise PayoutRefused(f"no payout {payout_id}")
    if o.state not in BUMPABLE:
        raise PayoutRefused(f"payout {o.id} is {o.state}: only a broadcast payout still unconfirmed, or a signed "
                            "one the node has not taken (a fee too low), can be bumped")
    built = tx.bump(treasury, tx.decode(o.psbt), old_fee=o.fee, change_index=o.change_index, feerate=feerate,
                    max_fee=policy["max_fee_sats"], max_feerate=Decimal(str(policy["max_feerate"])),
                    incremental=ledger.INCREMENTAL_FEERATE)
    return ledger.replacement(o.id, psbt_b64=built.psbt.to_base64(), txid=tx.txid(built.psbt), fee=built.fee,
                              vsize=built.vsize, change_sats=built.change_sats, feerate=feerate, by=by,
                              policy=policy, clock=clock)


def take_signatures(treasury: Treasury, payout_id: int, data: bytes | str, identity: str,
                    clock=time.time) -> tuple[Payout, list[str]]:
    """A PSBT signed elsewhere: its valid signatures kept (psbt.combine refuses anything else),
    and the payout finalized once k co-signers are on every input. Returns the payout and the
    fingerprints that signed for the first time."""
    p = Payout.get_by_id(payout_id)
    if p.state != "awaiting_signatures":
        raise PayoutRefused(f"payout {p.id} is {p.state}: it takes no signatures")
    ours, new = tx.combine(treasury, tx.decode(p.psbt), tx.decode(data))
    done = tx.complete(treasury, ours)
    p = ledger.add_signatures(p.id, psbt_b64=ours.to_base64(), fingerprints=tx.signers(treasury, ours),
                              identity=identity, complete=done, clock=clock)
    if done:
        final = tx.finalize(treasury, ours)
        p = ledger.finalized(p.id, final.serialize().hex(), identity, clock=clock)
    return p, new


def signatures_only(psbt: str | PSBT) -> str:
    """The PSBT (base64, or parsed) cut to the unsigned transaction and the partial signatures,
    for the bus (a message is at most 64 KiB, and whole previous transactions can be larger;
    the receiver uses its own record of them anyway)."""
    full = PSBT.from_base64(psbt) if isinstance(psbt, str) else psbt
    slim = PSBT(full.tx)
    for mine, theirs in zip(slim.inputs, full.inputs):
        mine.partial_sigs.update(theirs.partial_sigs)
    return slim.to_base64()


def summary(treasury: Treasury, p: Payout) -> dict:
    """What a co-signer checks before signing: where the money goes, the change verified as the
    treasury's own (derived again here, never taken from the PSBT's word), the fee and its rate,
    who has signed. Plain data."""
    out = {"id": p.id, "kind": p.kind, "state": p.state, "reason": p.reason, "requested_by": p.requested_by,
           "destination": p.destination, "sats": p.sats, "cad_cents": p.cad_cents, "rate": p.rate,
           "txid": p.txid, "fee": p.fee, "vsize": p.vsize, "outputs": [], "signers": [],
           "needed": treasury.threshold, "feerate": None, "replaces": p.replaces,
           "replaced_by": [q.id for q in Payout.select(Payout.id).where(Payout.replaces == p.id).order_by(Payout.id)]}
    if not p.psbt:
        return out
    psbt = tx.decode(p.psbt)
    for o in psbt.outputs:
        address = o.script_pubkey.address(treasury.net)
        ours = False
        for der in o.bip32_derivations.values():
            branch, index = der.derivation[-2], der.derivation[-1]
            if branch == 1 and treasury.address(index, change=True)[1] == o.script_pubkey.data.hex():
                ours = True
        out["outputs"].append({"address": address, "sats": o.value, "change": ours})
    out["feerate"] = str((Decimal(p.fee) / p.vsize).quantize(Decimal("0.01"))) if p.vsize else None
    signed = set(tx.signers(treasury, psbt))
    names = {s.fingerprint: s.identity for s in
             ledger.PayoutSignature.select().where(ledger.PayoutSignature.payout == p.id)}
    out["signers"] = [{"fingerprint": c.fingerprint, "signed": c.fingerprint in signed,
                       "brought_by": names.get(c.fingerprint)} for c in treasury.cosigners]
    return out
