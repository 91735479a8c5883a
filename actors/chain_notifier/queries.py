"""ChainNotifier's read queries (for the CLI and reports): each takes the database and returns plain data.

Only ChainNotifier writes the ``chain_*`` tables; these read them, and find nothing (not an
error) where it has never run.
"""

from __future__ import annotations

from .models import TABLES, ChainCursor, ChainOutput, ChainWatched


def cursor(database) -> dict | None:
    """The last block processed ({height, hash}), or None before the first."""
    if not database.table_exists(ChainCursor._meta.table_name):
        return None
    with database.bind_ctx(TABLES):
        row = ChainCursor.get_or_none(ChainCursor.id == 1)
        return None if row is None else {"height": row.height, "hash": row.hash}


def watched(database) -> list[dict]:
    """Every watched address, oldest first."""
    if not database.table_exists(ChainWatched._meta.table_name):
        return []
    q = ChainWatched.select().order_by(ChainWatched.created, ChainWatched.address).bind(database)
    return [{"address": w.address, "label": w.label, "created": w.created} for w in q]


def outputs(database, *, address: str | None = None, state: str | None = None, limit: int = 100) -> list[dict]:
    """Outputs paying watched addresses (newest first), optionally of one address or state
    (mempool | confirmed | replaced | removed)."""
    if not database.table_exists(ChainOutput._meta.table_name):
        return []
    q = ChainOutput.select().order_by(ChainOutput.id.desc()).limit(limit)
    if address is not None:
        q = q.where(ChainOutput.address == address)
    if state is not None:
        q = q.where(ChainOutput.state == state)
    return [{"txid": o.txid, "vout": o.vout, "address": o.address, "sats": o.sats, "label": o.label,
             "state": o.state, "height": o.height, "block": o.block, "confirmations": o.confirmations,
             "rbf": o.rbf, "seen_at": o.seen_at, "replaced_by": o.replaced_by}
            for o in q.bind(database)]
