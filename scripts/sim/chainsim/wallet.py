"""The simulator's own keys and coins: it mines to itself and pays from its matured coinbases.

Keys are BIP84 on regtest (m/84'/1'/0'/0/i) from a random seed kept in the
state file. Index 0 is the funding address (coinbase payouts and change);
``new_address`` hands out the next indexes. The sim signs its own P2WPKH
inputs for real (BIP143, low-R); inputs it does not own (``replace`` of
someone else's transaction) keep their original witness, which no longer
verifies: the sim does not check scripts.
"""

from __future__ import annotations

import math
import secrets

from embit import bip32
from embit.networks import NETWORKS
from embit.script import Script, Witness, p2pkh, p2wpkh
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from scripts.sim.chainsim import outputs
from scripts.sim.chainsim.chain import COINBASE_MATURITY, SEQUENCE_NONFINAL, SEQUENCE_RBF, Chain, TxInfo
from scripts.sim.chainsim.errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_WALLET_INSUFFICIENT_FUNDS, RpcError

NET = NETWORKS["regtest"]
DUMMY_SIG = bytes(72)  # upper bound of a DER signature plus sighash byte, for size estimates


class SimWallet:
    def __init__(self, seed: bytes | None = None, next_index: int = 1):
        self.seed = seed or secrets.token_bytes(32)
        self.root = bip32.HDKey.from_seed(self.seed, version=NET["xprv"])
        self.next_index = next_index
        self._keys = {}
        self.funding_key = self._key(0)
        self.funding_script = p2wpkh(self.funding_key.get_public_key()).data
        self.funding_address = outputs.address(self.funding_script)

    def _key(self, index: int):
        if index not in self._keys:
            self._keys[index] = self.root.derive(f"m/84h/1h/0h/0/{index}").key
        return self._keys[index]

    def new_address(self) -> str:
        key = self._key(self.next_index)
        self.next_index += 1
        return outputs.address(p2wpkh(key.get_public_key()).data)

    # -- coins ---------------------------------------------------------------

    def spendable(self, chain: Chain):
        """(outpoint, value, confirmed) of the funding script: matured chain coins, oldest first,
        then unconfirmed change in the mempool; nothing already spent by a mempool tx."""
        spend_height = chain.height + 1
        confirmed = sorted(
            ((op, c) for op, c in chain.utxo.items()
             if c.script == self.funding_script and op not in chain.mempool_spends
             and not (c.coinbase and spend_height - c.height < COINBASE_MATURITY)),
            key=lambda item: (item[1].height, item[0]))
        coins = [(op, c.value, True) for op, c in confirmed]
        for txid, entry in chain.mempool.items():
            for n, (value, script) in enumerate(entry.tx.outputs):
                if script == self.funding_script and (txid, n) not in chain.mempool_spends:
                    coins.append(((txid, n), value, False))
        return coins

    def balance(self, chain: Chain) -> tuple[int, int]:
        """(spendable, immature) satoshis."""
        spend_height = chain.height + 1
        immature = sum(c.value for c in chain.utxo.values()
                       if c.script == self.funding_script and c.coinbase
                       and spend_height - c.height < COINBASE_MATURITY)
        return sum(v for _, v, _ in self.spendable(chain)), immature

    # -- transactions --------------------------------------------------------

    def _sign(self, tx: Transaction, values: list[int], owned: list[bool]):
        key = self.funding_key
        pub = key.get_public_key()
        for i, mine in enumerate(owned):
            if not mine:
                continue
            sighash = tx.sighash_segwit(i, p2pkh(pub), values[i], SIGHASH.ALL)
            sig = key.sign(sighash).serialize() + bytes([SIGHASH.ALL])
            tx.vin[i].witness = Witness([sig, pub.sec()])

    @staticmethod
    def _vsize_with_dummies(tx: Transaction, owned: list[bool]) -> int:
        saved = [inp.witness for inp in tx.vin]
        for inp, mine in zip(tx.vin, owned):
            if mine:
                inp.witness = Witness([DUMMY_SIG, bytes(33)])
        vsize = TxInfo(tx).vsize
        for inp, w in zip(tx.vin, saved):
            inp.witness = w
        return vsize

    def pay(self, chain: Chain, script: bytes, amount: int, *, rbf: bool, feerate_sat_vb: int) -> Transaction:
        """A signed payment of amount to script with change back to the funding address."""
        if amount < outputs.dust_threshold(script):
            raise RpcError(RPC_WALLET_INSUFFICIENT_FUNDS, "Transaction amount too small")
        coins = self.spendable(chain)
        sequence = SEQUENCE_RBF if rbf else SEQUENCE_NONFINAL
        chosen, total = [], 0
        for op, value, _ in coins:
            chosen.append((op, value))
            total += value
            tx = self._draft(chosen, [(amount, script), (0, self.funding_script)], sequence)
            fee = math.ceil(feerate_sat_vb * self._vsize_with_dummies(tx, [True] * len(chosen)))
            if total >= amount + fee:
                break
        else:
            raise RpcError(RPC_WALLET_INSUFFICIENT_FUNDS, "Insufficient funds")
        change = total - amount - fee
        outs = [(amount, script)]
        if change >= outputs.dust_threshold(self.funding_script):
            # Core puts change at a random position; so do we (never assume vout 0).
            outs.insert(secrets.randbelow(2), (change, self.funding_script))
        tx = self._draft(chosen, outs, sequence)
        self._sign(tx, [v for _, v in chosen], [True] * len(chosen))
        return tx

    def conflicting_spend(self, chain: Chain, original: TxInfo, *, extra_feerate_sat_vb: int = 2) -> Transaction:
        """Spend original's inputs again, all to the funding address, with a higher fee (RBF)."""
        values, owned = [], []
        for op in original.outpoints:
            coin = chain.coin(op)
            if coin is None:
                raise RpcError(RPC_INVALID_ADDRESS_OR_KEY, f"Input {op[0]}:{op[1]} not found")
            values.append(coin.value)
            owned.append(coin.script == self.funding_script)
        old_fee = chain.mempool[original.txid].fee
        evicted_fees = old_fee + sum(chain.mempool[t].fee for t in chain.mempool_descendants(original.txid))
        tx = Transaction(version=2, locktime=original.locktime,
                         vin=[TransactionInput(bytes.fromhex(t), n, Script(sig), SEQUENCE_RBF,
                                               Witness(list(wit)))
                              for t, n, sig, _, wit in original.inputs],
                         vout=[TransactionOutput(0, Script(self.funding_script))])
        vsize = self._vsize_with_dummies(tx, owned)
        fee = max(evicted_fees + extra_feerate_sat_vb * vsize,
                  math.ceil(old_fee * vsize / original.vsize) + vsize)
        value = sum(values) - fee
        if value < outputs.dust_threshold(self.funding_script):
            raise RpcError(RPC_WALLET_INSUFFICIENT_FUNDS, "Insufficient funds for a replacement")
        tx.vout[0].value = value
        self._sign(tx, values, owned)
        return tx

    @staticmethod
    def _draft(chosen, outs, sequence) -> Transaction:
        # locktime 0, not Core's anti-fee-sniping tip height: after a reorg to a lower tip
        # such a tx is non-final, drops out of the mempool and is not re-confirmed.
        return Transaction(version=2, locktime=0,
                           vin=[TransactionInput(bytes.fromhex(t), n, sequence=sequence) for (t, n), _ in chosen],
                           vout=[TransactionOutput(v, Script(s)) for v, s in outs])
