"""Payout transactions as PSBTs (BIP 174) that co-signers sign in their own wallets (issue 13).

Pure: embit and the treasury, no database, no bus. PayoutMgr keeps what this module returns.

Building (:func:`build`): coin selection over the treasury's UTXOs, the fee at a fee rate the
caller bounds, change to the treasury's change branch, and on every input the witness UTXO, the
whole previous transaction (non-witness UTXO: hardware wallets check the amounts against it),
the witness script and each co-signer's BIP32 derivation with its 33-byte public key; on the
change output its witness script and derivations (so a wallet shows it as its own); the global
xpubs with their real fingerprints. What Electrum needed to sign an embit-built 2-of-3, and what
Coldcard needs to verify the change.

Co-signing (:func:`combine`): a PSBT signed elsewhere is taken only if its unsigned transaction
is exactly ours (same txid: an output, an amount or the fee altered is refused), and only the
signatures it adds that are valid ECDSA signatures, SIGHASH_ALL, of OUR input data (amounts and
scripts from our own record, never from the imported file) by the key OUR derivations name for
that co-signer on that input. Anything else refuses the whole import with a reason. A key that
signs twice is one signer (signatures are keyed by public key).

Signing in software (:func:`sign`): a BIP 39 mnemonic or an extended private key (the master
key, or a co-signer's account key at its origin path), held by a person and never stored.

Finalizing (:func:`finalize`): k signatures per input, in the witness script's key order.
"""

from __future__ import annotations

import math
from decimal import Decimal
from dataclasses import dataclass

from embit import bip32, bip39, ec
from embit.psbt import PSBT, DerivationPath
from embit.script import Script, Witness, address_to_scriptpubkey
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from proto.errors import DctrlError

from .treasury import Treasury

SIGHASH_ALL = 1
RBF_SEQUENCE = 0xFFFFFFFD  # every payout can be replaced (`payouts bump`)
SIG_BYTES = 73  # the longest DER signature plus its sighash byte: the fee is never short


class PayoutError(DctrlError):
    """A payout that cannot be built, or a PSBT refused; the message says why."""
    code = "payout_refused"


class InsufficientFunds(PayoutError):
    code = "insufficient_funds"


@dataclass(frozen=True)
class Utxo:
    """A treasury output: where it is, what it holds, which address (branch, index) it pays,
    and the raw transaction that made it (the PSBT's non-witness UTXO)."""
    txid: str
    vout: int
    sats: int
    change: bool
    index: int
    prev_tx: bytes

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True)
class Built:
    psbt: PSBT
    inputs: tuple[Utxo, ...]
    fee: int
    vsize: int
    change_sats: int  # 0: no change output (the remainder was below dust and went to the fee)


# -- sizes and dust ---------------------------------------------------------------------------

def _varint_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5


def vsize(n_inputs: int, output_scripts: list[bytes], k: int, n: int) -> int:
    """The virtual size of a payout once signed (k signatures of ``SIG_BYTES`` per input)."""
    ws_len = 3 + 34 * n
    base = 4 + _varint_len(n_inputs) + 41 * n_inputs + _varint_len(len(output_scripts)) + 4
    base += sum(8 + _varint_len(len(s)) + len(s) for s in output_scripts)
    witness = 2 + n_inputs * (_varint_len(k + 2) + 1 + k * (1 + SIG_BYTES) + _varint_len(ws_len) + ws_len)
    return math.ceil((4 * base + witness) / 4)


def dust_limit(script_pubkey: bytes) -> int:
    """Bitcoin Core's dust threshold at its 3 sat/vB dust relay fee: the output's size plus the
    size of spending it (67 bytes for a witness program, 148 for the rest), times 3."""
    size = 8 + _varint_len(len(script_pubkey)) + len(script_pubkey)
    witness_program = len(script_pubkey) >= 4 and (script_pubkey[0] == 0 or 0x51 <= script_pubkey[0] <= 0x60)
    return (size + (67 if witness_program else 148)) * 3


def output_script(address: str, treasury: Treasury) -> bytes:
    try:
        spk = address_to_scriptpubkey(address)
    except Exception:
        raise PayoutError(f"{address!r} is not a bitcoin address") from None
    if spk.address(treasury.net) != address:
        raise PayoutError(f"{address} is not an address of the {treasury.network_name} network")
    return spk.data


# -- building ---------------------------------------------------------------------------------

def select(utxos: list[Utxo], outputs: list[bytes], amount: int, feerate: Decimal | float, treasury: Treasury,
           change_script: bytes) -> tuple[list[Utxo], int, int]:
    """(inputs, fee, change sats): the largest UTXOs first until they pay ``amount``, the fee at
    ``feerate`` sat/vB, and change above dust (or no change, the remainder to the fee)."""
    k, n = treasury.threshold, len(treasury.cosigners)
    chosen, total = [], 0
    for u in sorted(utxos, key=lambda u: (-u.sats, u.txid, u.vout)):
        chosen.append(u)
        total += u.sats
        fee_with = math.ceil(feerate * vsize(len(chosen), outputs + [change_script], k, n))
        change = total - amount - fee_with
        if change >= dust_limit(change_script):
            return chosen, fee_with, change
        fee_without = math.ceil(feerate * vsize(len(chosen), outputs, k, n))
        if total - amount >= fee_without:
            return chosen, total - amount, 0
    need = amount + math.ceil(feerate * vsize(max(1, len(chosen)), outputs, k, n))
    raise InsufficientFunds(f"the treasury holds {total} sats in {len(utxos)} spendable outputs; "
                            f"this payout needs {need} with its fee")


def _derivations(treasury: Treasury, derived) -> dict:
    """Each co-signer's public key in a derived descriptor, with its fingerprint and full path."""
    return {key.key.get_public_key(): DerivationPath(bytes.fromhex(c.fingerprint), key.origin.derivation)
            for c, key in zip(treasury.cosigners, derived.keys)}


def build(treasury: Treasury, utxos: list[Utxo], destinations: list[tuple[str, int]], *, feerate: Decimal | float,
          change_index: int, max_fee: int) -> Built:
    """A payout of ``destinations`` ((address, sats), ...) from ``utxos`` at ``feerate`` sat/vB,
    refused when an output is dust, the fee would exceed ``max_fee`` or the funds do not reach."""
    if not destinations:
        raise PayoutError("a payout needs at least one destination")
    scripts = []
    for address, sats in destinations:
        spk = output_script(address, treasury)
        if not isinstance(sats, int) or sats < dust_limit(spk):
            raise PayoutError(f"{sats} sats to {address} is below the dust limit of {dust_limit(spk)} sats: "
                              "nodes would not relay it")
        scripts.append(spk)
    change_addr, change_spk = treasury.address(change_index, change=True)
    change_script = bytes.fromhex(change_spk)
    amount = sum(s for _, s in destinations)
    inputs, fee, change = select(utxos, scripts, amount, feerate, treasury, change_script)
    if fee > max_fee:
        raise PayoutError(f"the fee would be {fee} sats, above the bound of {max_fee} sats")
    vin = [TransactionInput(bytes.fromhex(u.txid), u.vout, sequence=RBF_SEQUENCE) for u in inputs]
    vout = [TransactionOutput(s, Script(spk)) for (_, s), spk in zip(destinations, scripts)]
    if change:
        vout.append(TransactionOutput(change, Script(change_script)))
    psbt = PSBT(Transaction(version=2, vin=vin, vout=vout, locktime=0))
    for inp, u in zip(psbt.inputs, inputs):
        prev = Transaction.parse(u.prev_tx)
        if prev.txid().hex() != u.txid or u.vout >= len(prev.vout) or prev.vout[u.vout].value != u.sats:
            raise PayoutError(f"the recorded transaction of {u.outpoint} does not match its output")
        derived = treasury.derived(u.index, u.change)
        if prev.vout[u.vout].script_pubkey.data != derived.script_pubkey().data:
            raise PayoutError(f"{u.outpoint} does not pay the treasury address it was recorded at")
        inp.non_witness_utxo = prev
        inp.witness_utxo = prev.vout[u.vout]
        inp.witness_script = derived.witness_script()
        inp.bip32_derivations.update(_derivations(treasury, derived))
    if change:
        out = psbt.outputs[-1]
        derived = treasury.derived(change_index, True)
        out.witness_script = derived.witness_script()
        out.bip32_derivations.update(_derivations(treasury, derived))
    for c in treasury.cosigners:
        xpub = bip32.HDKey.from_string(c.xpub)
        psbt.xpubs[xpub] = DerivationPath(bytes.fromhex(c.fingerprint),
                                          bip32.parse_path(c.path))
    n_vsize = vsize(len(inputs), [o.script_pubkey.data for o in psbt.tx.vout], treasury.threshold,
                    len(treasury.cosigners))
    return Built(psbt, tuple(inputs), fee, n_vsize, change)


# -- replacing (RBF, BIP 125) ------------------------------------------------------------------

def bump(treasury: Treasury, original: PSBT, *, old_fee: int, change_index: int | None, feerate: Decimal,
         max_fee: int, max_feerate: Decimal, incremental: Decimal = Decimal(1)) -> Built:
    """A replacement of ``original`` (BIP 125): ALL its inputs (the original can then never confirm
    as well), the same outputs, the fee raised to ``feerate`` sat/vB and taken from the change.
    Rule 3 and 4: the new fee is at least the old one plus ``incremental`` × the new vsize, so the
    fee rate asked is raised when it would not be enough. Refused: a rate not above the
    original's, a rate above ``max_feerate`` or a fee above ``max_fee``, no change output, or
    change that would fall below dust. No input is added (the coins of other payouts stay theirs)."""
    feerate = Decimal(feerate)
    t = original.tx
    k, n = treasury.threshold, len(treasury.cosigners)
    scripts = [o.script_pubkey.data for o in t.vout]
    size = vsize(len(t.vin), scripts, k, n)
    old_rate = Decimal(old_fee) / size
    if feerate <= old_rate:
        raise PayoutError(f"{feerate} sat/vB is not above the payout's fee rate of {old_rate:.2f} sat/vB "
                          f"({old_fee} sats for {size} vB)")
    fee = max(math.ceil(feerate * size), old_fee + math.ceil(incremental * size))
    if Decimal(fee) / size > Decimal(str(max_feerate)):
        raise PayoutError(f"{Decimal(fee) / size:.2f} sat/vB (BIP 125: at least the old fee plus {incremental} "
                          f"sat/vB) is above the [payouts] max_feerate of {max_feerate} sat/vB")
    if fee > max_fee:
        raise PayoutError(f"the fee would be {fee} sats, above the [payouts] max_fee_sats of {max_fee} sats")
    if change_index is None:
        raise PayoutError("the payout has no change output to take a higher fee from")
    change_spk = bytes.fromhex(treasury.address(change_index, change=True)[1])
    at = [i for i, s in enumerate(scripts) if s == change_spk]
    if len(at) != 1:
        raise PayoutError("the payout has no change output to take a higher fee from")
    c = at[0]
    change = t.vout[c].value - (fee - old_fee)
    if change < dust_limit(change_spk):
        raise PayoutError(f"the change of {t.vout[c].value} sats cannot pay {fee - old_fee} sats more of fee "
                          f"without falling below the dust limit of {dust_limit(change_spk)} sats")
    vin = [TransactionInput(v.txid, v.vout, sequence=RBF_SEQUENCE) for v in t.vin]
    vout = [TransactionOutput(change if i == c else o.value, o.script_pubkey) for i, o in enumerate(t.vout)]
    psbt = PSBT(Transaction(version=t.version, vin=vin, vout=vout, locktime=t.locktime))
    for mine, theirs in zip(psbt.inputs, original.inputs):
        mine.non_witness_utxo, mine.witness_utxo = theirs.non_witness_utxo, theirs.witness_utxo
        mine.witness_script = theirs.witness_script
        mine.bip32_derivations.update(theirs.bip32_derivations)
    for mine, theirs in zip(psbt.outputs, original.outputs):
        mine.witness_script = theirs.witness_script
        mine.bip32_derivations.update(theirs.bip32_derivations)
    psbt.xpubs.update(original.xpubs)
    return Built(psbt, (), fee, size, change)


# -- reading back -----------------------------------------------------------------------------

def txid(psbt: PSBT) -> str:
    """The payout's txid (of the unsigned transaction; segwit signatures do not change it)."""
    return psbt.tx.txid().hex()


def decode(data: bytes | str) -> PSBT:
    """A PSBT from a file's bytes: binary (BIP 174 magic) or base64 text."""
    try:
        if isinstance(data, bytes) and data.startswith(b"psbt\xff"):
            return PSBT.parse(data)
        text = data.decode("ascii") if isinstance(data, bytes) else data
        return PSBT.from_base64(text.strip())
    except Exception as exc:
        raise PayoutError(f"not a PSBT: {exc}") from None


def _cosigner_of(treasury: Treasury, psbt_input) -> dict:
    """Public key (sec) -> co-signer fingerprint, from OUR derivations of an input."""
    return {pub.sec(): der.fingerprint.hex() for pub, der in psbt_input.bip32_derivations.items()}


def signers(treasury: Treasury, psbt: PSBT) -> list[str]:
    """The fingerprints of the co-signers whose signature is on every input."""
    per_input = []
    for inp in psbt.inputs:
        keys = _cosigner_of(treasury, inp)
        per_input.append({keys[p.sec()] for p in inp.partial_sigs if p.sec() in keys})
    common = set.intersection(*per_input) if per_input else set()
    return [c.fingerprint for c in treasury.cosigners if c.fingerprint in common]


def complete(treasury: Treasury, psbt: PSBT) -> bool:
    return all(len(inp.partial_sigs) >= treasury.threshold for inp in psbt.inputs)


def combine(treasury: Treasury, ours: PSBT, theirs: PSBT) -> tuple[PSBT, list[str]]:
    """``ours`` with the valid signatures ``theirs`` adds; returns it and the fingerprints of the
    co-signers who added at least one. Raises PayoutError, naming the reason, for a PSBT of
    another transaction, a signature by a key outside the descriptor or for another input, a
    signature that does not verify, or a sighash other than ALL."""
    if txid(theirs) != txid(ours):
        raise PayoutError(f"the PSBT is for transaction {txid(theirs)}, not this payout's {txid(ours)}: "
                          "its inputs, outputs, amounts or fee differ")
    if len(theirs.inputs) != len(ours.inputs):
        raise PayoutError("the PSBT has another number of inputs")
    added: dict[int, dict] = {}
    unsigned = ours.tx  # (PSBT.tx builds a new transaction at each use: once, so its BIP 143 hashes are kept)
    for i, (mine, other) in enumerate(zip(ours.inputs, theirs.inputs)):
        keys = _cosigner_of(treasury, mine)
        # from OUR utxo and witness script
        h = unsigned.sighash_segwit(i, mine.witness_script, mine.utxo.value, sighash=SIGHASH_ALL)
        for pub, sig in other.partial_sigs.items():
            if pub.sec() not in keys:
                raise PayoutError(f"input {i}: a signature by {pub.sec().hex()}, which is not a key of "
                                  "this treasury for that input")
            if not sig or sig[-1] != SIGHASH_ALL:
                raise PayoutError(f"input {i}: a signature with sighash {sig[-1] if sig else None}, not ALL")
            try:
                valid = pub.verify(ec.Signature.parse(sig[:-1]), h)
            except Exception:
                valid = False
            if not valid:
                raise PayoutError(f"input {i}: the signature of co-signer {keys[pub.sec()]} does not sign "
                                  "this transaction")
            if pub not in mine.partial_sigs:
                added.setdefault(i, {})[pub] = sig
    for i, sigs in added.items():
        ours.inputs[i].partial_sigs.update(sigs)
    new = {_cosigner_of(treasury, ours.inputs[i])[p.sec()] for i, sigs in added.items() for p in sigs}
    return ours, [c.fingerprint for c in treasury.cosigners if c.fingerprint in new]


# -- signing in software ----------------------------------------------------------------------

def signing_key(treasury: Treasury, secret: str, passphrase: str = ""):
    """What :func:`sign` signs with, from a BIP 39 mnemonic or an extended private key."""
    from embit.descriptor.arguments import Key, KeyOrigin

    text = " ".join(secret.split())
    if " " in text:
        if not bip39.mnemonic_is_valid(text):
            raise PayoutError("not a valid BIP 39 mnemonic (a word or the checksum is wrong)")
        root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(text, passphrase), version=treasury.net["xprv"])
    else:
        try:
            root = bip32.HDKey.from_string(text)
        except Exception:
            raise PayoutError("the key file holds neither a BIP 39 mnemonic nor an extended private key") from None
        if not root.is_private:
            raise PayoutError("that is a public key: signing needs the private one")
    for c in treasury.cosigners:
        if root.depth == 0 and root.my_fingerprint.hex() == c.fingerprint:
            return root
        account = root.to_public().to_string(version=treasury.net["xpub"])
        if account == c.xpub:  # an account key at its origin path
            return Key(root, KeyOrigin(bytes.fromhex(c.fingerprint), bip32.parse_path(c.path)), None)
    raise PayoutError("this key is not one of the treasury's co-signers (no fingerprint or account matches)")


def sign(treasury: Treasury, psbt: PSBT, secret: str, passphrase: str = "") -> int:
    """Sign every input the key can, SIGHASH_ALL; returns the number of signatures added."""
    key = signing_key(treasury, secret, passphrase)
    before = sum(len(i.partial_sigs) for i in psbt.inputs)
    psbt.sign_with(key, sighash=SIGHASH_ALL)
    return sum(len(i.partial_sigs) for i in psbt.inputs) - before


# -- finalizing -------------------------------------------------------------------------------

def finalize(treasury: Treasury, psbt: PSBT) -> Transaction:
    """The signed transaction: per input the threshold's signatures in the witness script's key
    order. Raises PayoutError when an input has fewer."""
    tx = psbt.tx
    for i, inp in enumerate(psbt.inputs):
        ws = inp.witness_script
        order = [ws.data[j + 1:j + 34] for j in range(1, 1 + 34 * len(treasury.cosigners), 34)]
        by_key = {p.sec(): s for p, s in inp.partial_sigs.items()}
        sigs = [by_key[k] for k in order if k in by_key][:treasury.threshold]
        if len(sigs) < treasury.threshold:
            raise PayoutError(f"input {i} has {len(sigs)} of the {treasury.threshold} signatures it needs")
        tx.vin[i].witness = Witness([b""] + sigs + [ws.data])
    return tx
