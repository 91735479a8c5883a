"""The ChainAdaptor interface, its value types and failover across backends.

A backend answers questions about the chain (tip, blocks, transactions,
unspent outputs, mempool, fees, broadcast) and produces *hints*: "a
transaction may have arrived", "the tip may have moved", "resync: something
may have been missed". Hints are never trusted as facts: a consumer (the
ChainNotifier) reconciles with queries on every hint, on every resync and on
a timer. Amounts are integer satoshis; fee rates are ``Decimal`` sat/vB.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from proto.errors import DctrlError

log = logging.getLogger(__name__)


class ChainError(DctrlError, ConnectionError):
    """A backend could not answer (down, refused our password, returned an error)."""

    code = "chain_error"


@dataclass(frozen=True)
class Tip:
    height: int
    hash: str


@dataclass(frozen=True)
class TxOut:
    txid: str
    vout: int
    script: str  # scriptPubKey hex
    address: str | None
    sats: int
    height: int | None = None  # unspent(): the height of the block that confirmed it, when the backend says


@dataclass(frozen=True)
class Tx:
    txid: str
    outputs: tuple[TxOut, ...]
    inputs: tuple[tuple[str, int], ...]  # spent outpoints; () for a coinbase
    rbf: bool  # signals BIP125 replaceability (any input nSequence < 0xfffffffe)
    height: int | None = None  # None while unconfirmed
    block_hash: str | None = None


@dataclass(frozen=True)
class Block:
    height: int
    hash: str
    prev: str
    time: int
    txs: tuple[Tx, ...] = field(repr=False)


@dataclass(frozen=True)
class Hint:
    """``kind`` is ``tx`` (txid), ``block`` (hash) or ``resync`` (reason).

    A ``tx`` hint may carry the transaction itself (``tx``, unconfirmed), when the
    backend's notification included its body and the txid was computed from that
    body: the consumer then needs no query to look at it."""

    kind: str
    value: str
    tx: Tx | None = field(default=None, repr=False, compare=False)


class ChainAdaptor(Protocol):
    name: str

    def tip(self) -> Tip: ...
    def block_hash(self, height: int) -> str: ...
    def block(self, block_hash: str) -> Block: ...
    def transaction(self, txid: str) -> Tx | None: ...
    # its serialization; None: unknown. block_hash: the block holding it, which lets a node without
    # -txindex find a confirmed transaction
    def raw_transaction(self, txid: str, block_hash: str | None = None) -> bytes | None: ...
    def mempool(self) -> set[str]: ...
    def unspent(self, addresses: list[str]) -> list[TxOut]: ...
    def history(self, address: str, since_height: int = 0) -> list[Tx]: ...
    def used(self, addresses: list[str]) -> set[str]: ...
    def broadcast(self, raw_hex: str) -> str: ...
    def fee_estimates(self, targets=(1, 3, 6, 144)) -> dict[int, Decimal]: ...
    def hints(self, timeout: float) -> list[Hint]: ...
    def close(self) -> None: ...


class Failover:
    """Backends in order of preference; a call that fails moves on to the next.

    ``last_used`` names the backend that answered the last call; ``errors``
    holds each backend's last error. Hints come from the first backend that
    has a hint source working.
    """

    def __init__(self, backends: list[ChainAdaptor]):
        if not backends:
            raise ValueError("at least one chain backend is needed")
        self.backends = backends
        self.last_used: str | None = None
        self.errors: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.last_used or self.backends[0].name

    def _call(self, method, *args, **kw):
        failures = []
        for backend in self.backends:
            try:
                result = getattr(backend, method)(*args, **kw)
            except ChainError as exc:
                if self.errors.get(backend.name) != str(exc):
                    log.warning("%s failed %s: %s", backend.name, method, exc)
                self.errors[backend.name] = str(exc)
                failures.append(f"{backend.name}: {exc}")
                continue
            if self.last_used != backend.name:
                log.info("chain backend now %s", backend.name)
            self.last_used = backend.name
            self.errors.pop(backend.name, None)
            return result
        raise ChainError("every chain backend failed: " + "; ".join(failures))

    def tip(self):
        return self._call("tip")

    def block_hash(self, height):
        return self._call("block_hash", height)

    def block(self, block_hash):
        return self._call("block", block_hash)

    def transaction(self, txid):
        return self._call("transaction", txid)

    def raw_transaction(self, txid, block_hash=None):
        return self._call("raw_transaction", txid, block_hash)

    def mempool(self):
        return self._call("mempool")

    def unspent(self, addresses):
        return self._call("unspent", addresses)

    def used(self, addresses):
        return self._call("used", addresses)

    def history(self, address, since_height=0):
        return self._call("history", address, since_height)

    def broadcast(self, raw_hex):
        return self._call("broadcast", raw_hex)

    def fee_estimates(self, targets=(1, 3, 6, 144)):
        return self._call("fee_estimates", targets)

    def hints(self, timeout):
        for backend in self.backends:
            try:
                return backend.hints(timeout)
            except ChainError as exc:
                self.errors[backend.name] = str(exc)
        return [Hint("resync", "no hint source")]

    def close(self):
        for b in self.backends:
            b.close()
