"""ChainAdaptor: one interface over bitcoind and Esplora (a library, not an actor)."""

from .adaptor import Block, ChainAdaptor, ChainError, Failover, Hint, Tip, Tx, TxOut

__all__ = ["Block", "ChainAdaptor", "ChainError", "Failover", "Hint", "Tip", "Tx", "TxOut"]
