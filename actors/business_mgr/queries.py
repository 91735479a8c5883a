"""BusinessMgr's read queries (for the CLI and reports): each takes the database and returns plain data."""

from __future__ import annotations

from .models import TABLES, SalesInvoice, SalesPayment, SalesVend


def _invoice_dict(inv) -> dict:
    return {"invoice": inv.id, "mode": inv.mode, "machine": inv.machine, "slot": inv.slot, "product": inv.product,
            "price_cents": inv.price_cents, "items": inv.items, "cad_per_btc": inv.cad_per_btc,
            "due_sats": inv.due_sats, "tolerance_sats": inv.tolerance_sats, "zero_conf": inv.zero_conf,
            "confirmations": inv.confirmations, "address": inv.address, "state": inv.state, "reason": inv.reason,
            "created": inv.created, "expires": inv.expires, "paid_at": inv.paid_at, "closed_at": inv.closed_at,
            "received_sats": inv.received_sats, "late_sats": inv.late_sats, "credit_sats": inv.credit_sats,
            "lost_sats": inv.lost_sats, "vended": inv.vended, "refund_sats": refund_sats(inv)}


def refund_sats(inv) -> int:
    """What the space owes back on this invoice (for the payout work): late payments always;
    everything received if nothing was sold; what was not delivered (at the quoted unit
    price) if a vend failed; the excess otherwise."""
    if inv.state in ("expired", "underpaid"):
        return inv.received_sats + inv.late_sats
    if inv.state == "failed":
        unit = inv.due_sats // inv.items if inv.due_sats and inv.items else 0
        return max(0, inv.received_sats - inv.vended * unit) + inv.late_sats
    return inv.credit_sats + inv.late_sats


def invoices(database, *, state: str | None = None, limit: int = 50, before: int | None = None) -> list[dict]:
    """Invoices, newest first: of ``state`` if given, with ids below ``before`` if given (the
    report server's pages), at most ``limit``."""
    q = SalesInvoice.select().order_by(SalesInvoice.id.desc()).limit(limit)
    if state:
        q = q.where(SalesInvoice.state == state)
    if before is not None:
        q = q.where(SalesInvoice.id < before)
    return [_invoice_dict(i) for i in q.bind(database)]


def invoices_before(database, *, before: int | None = None, limit: int = 50) -> list[dict]:
    """A page of invoices, newest first: those numbered below ``before`` (None: the newest), at
    most ``limit`` (the report server's /invoices, paged by number)."""
    return invoices(database, before=before, limit=limit)


_LAST_USED_SQL = (
    'SELECT MAX(a."position") FROM "sales_address" a WHERE a."book" = ? AND (a."label" = ? OR EXISTS '
    '(SELECT 1 FROM "sales_invoice" i JOIN "sales_payment" p ON p."invoice_id" = i."id" '
    'WHERE i."address" = a."address"))')
_REUSABLE_SQL = (  # issued after the last used one, every invoice at it closed unpaid long enough ago
    'SELECT a."address" FROM "sales_address" a WHERE a."book" = ? AND a."position" > ? '
    'AND EXISTS (SELECT 1 FROM "sales_invoice" i WHERE i."address" = a."address") '
    'AND NOT EXISTS (SELECT 1 FROM "sales_invoice" i WHERE i."address" = a."address" AND '
    '(i."closed_at" IS NULL OR i."closed_at" > ? OR EXISTS '
    '(SELECT 1 FROM "sales_payment" p WHERE p."invoice_id" = i."id"))) '
    'ORDER BY a."position" LIMIT 1')
USED_ON_CHAIN = "used on the chain (found at start)"


def address_gap(database, book: str = "invoices", gap_limit: int = 20) -> dict:
    """How far the run of unused invoice addresses reaches: a wallet restored from the xpub
    finds every payment only while ``gap`` stays within its gap limit (20 by default)."""
    if not database.table_exists("sales_address"):
        return {"issued": 0, "next": 0, "last_used": None, "gap": 0, "gap_limit": gap_limit}
    cur = database.execute_sql(_sql(database, 'SELECT COUNT(*), MAX("position") FROM "sales_address" '
                                              'WHERE "book" = ?'), (book,))
    issued, last = cur.fetchone()
    used = database.execute_sql(_sql(database, _LAST_USED_SQL), (book, USED_ON_CHAIN)).fetchone()[0]
    nxt = 0 if last is None else last + 1
    return {"issued": issued, "next": nxt, "last_used": used, "gap": nxt - (-1 if used is None else used) - 1,
            "gap_limit": gap_limit}


def _sql(database, sql: str) -> str:
    return sql if database.param == "?" else sql.replace("?", database.param)


def invoice(database, number: int) -> dict | None:
    with database.bind_ctx(TABLES):
        inv = SalesInvoice.get_or_none(SalesInvoice.id == number)
        if inv is None:
            return None
        out = _invoice_dict(inv)
        out["payments"] = [{"txid": p.txid, "vout": p.vout, "sats": p.sats, "state": p.state,
                            "confirmations": p.confirmations, "late": p.late, "counted": p.counted,
                            "first_seen": p.first_seen}
                           for p in inv.payments.order_by(SalesPayment.id)]
        out["vends"] = [{"id": v.id, "item": v.item, "state": v.state, "attempts": v.attempts, "created": v.created,
                         "expires": v.expires, "acked_at": v.acked_at, "reason": v.reason, "pulsed_ms": v.pulsed_ms}
                        for v in inv.vends.order_by(SalesVend.created, SalesVend.item)]
    return out
