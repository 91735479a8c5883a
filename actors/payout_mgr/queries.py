"""PayoutMgr's read queries (``dctrl treasury show``, reports): each takes the database and returns
plain data. No bus, no embit: the addresses are read as PayoutMgr stored them."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

import peewee

from .models import BOOKS, LIVE, TABLES, USED_ON_CHAIN, PayoutAddress, PayoutPrice, PayoutUtxo, PayoutWatch


def has_tables(database) -> bool:
    return all(database.table_exists(m._meta.table_name) for m in TABLES)


def _last_used(book: str) -> int | None:
    """The highest index of ``book`` with history: an output recorded, or found by the discovery."""
    branch = BOOKS[book]
    paid = PayoutUtxo.select(peewee.fn.MAX(PayoutUtxo.position)).where(PayoutUtxo.branch == branch).scalar()
    found = (PayoutAddress.select(peewee.fn.MAX(PayoutAddress.position))
             .where((PayoutAddress.book == book) & (PayoutAddress.label == USED_ON_CHAIN)).scalar())
    known = [i for i in (paid, found) if i is not None]
    return max(known) if known else None


def last_used(database, book: str) -> int | None:
    with database.bind_ctx(TABLES):
        return _last_used(book)


def gap(database, book: str, gap_limit: int) -> dict:
    """How far ``book``'s watched addresses reach beyond its last used index: PayoutMgr keeps
    ``gap_limit`` unused addresses watched after the last used one (what a restoring wallet scans)."""
    with database.bind_ctx(TABLES):
        used = _last_used(book)
        top = PayoutAddress.select(peewee.fn.MAX(PayoutAddress.position)).where(PayoutAddress.book == book).scalar()
        watched = PayoutWatch.select().where(PayoutWatch.book == book).count()
        acked = PayoutWatch.select().where((PayoutWatch.book == book) & PayoutWatch.acked).count()
    beyond = (-1 if top is None else top) - (-1 if used is None else used)
    return {"last_used": used, "watched_to": top, "watched": watched, "acked": acked, "unused_beyond": beyond,
            "gap_limit": gap_limit}


def utxo_dict(u: PayoutUtxo, depth: int | None = None) -> dict:
    return {"txid": u.txid, "vout": u.vout, "sats": u.sats, "branch": u.branch, "index": u.position,
            "address": u.address, "state": u.state, "confirmations": u.confirmations, "height": u.height,
            "first_seen": u.first_seen, "spent_at": u.spent_at, "raw_tx": u.raw_tx is not None}


def utxos(database, states=LIVE) -> list[dict]:
    """The treasury's outputs in ``states`` (default: unspent, confirmed or not), oldest first."""
    with database.bind_ctx(TABLES):
        q = PayoutUtxo.select().order_by(PayoutUtxo.first_seen, PayoutUtxo.id)
        if states is not None:
            q = q.where(PayoutUtxo.state.in_(list(states)))
        return [utxo_dict(u) for u in q]


def spendable(database, min_confirmations: int = 1) -> list[dict]:
    """Confirmed outputs (at least ``min_confirmations``) whose raw transaction is known, with it
    (``prev_tx`` bytes): what a payout can be built from (actors/payout_mgr/psbt.py ``Utxo``)."""
    with database.bind_ctx(TABLES):
        q = (PayoutUtxo.select().where((PayoutUtxo.state == "confirmed") & PayoutUtxo.raw_tx.is_null(False)
                                       & (PayoutUtxo.confirmations >= min_confirmations))
             .order_by(PayoutUtxo.id))
        return [{**utxo_dict(u), "prev_tx": bytes(u.raw_tx)} for u in q]


def last_price(database) -> dict | None:
    with database.bind_ctx(TABLES):
        p = PayoutPrice.get_or_none(PayoutPrice.id == 1)
        if p is None:
            return None
        return {"cad_per_btc": p.cad_per_btc, "as_of": p.as_of, "received": p.received, "stale": p.stale}


def cad(sats: int, cad_per_btc: str) -> str:
    """``sats`` in CAD at ``cad_per_btc``, rounded down to the cent (Decimal, never a float)."""
    cents = (Decimal(sats) * Decimal(cad_per_btc) / 1_000_000).to_integral_value(rounding=ROUND_FLOOR)
    return f"{cents / 100:.2f}"


def treasury(database, gap_limit: int, next_count: int = 5) -> dict:
    """Balances (sats; CAD at the last price, if any), the unspent outputs, the next receive
    addresses and the gap of each branch."""
    live = utxos(database)
    confirmed = sum(u["sats"] for u in live if u["state"] == "confirmed")
    unconfirmed = sum(u["sats"] for u in live if u["state"] == "seen")
    price = last_price(database)
    with database.bind_ctx(TABLES):
        used = _last_used("treasury")
        q = (PayoutAddress.select().where((PayoutAddress.book == "treasury")
                                          & (PayoutAddress.position > (-1 if used is None else used)))
             .order_by(PayoutAddress.position).limit(next_count))
        nxt = [{"index": a.position, "address": a.address} for a in q]
    out = {"balance": {"confirmed_sats": confirmed, "unconfirmed_sats": unconfirmed},
           "utxos": live, "next_addresses": nxt, "price": price,
           "gap": {BOOKS[b]: gap(database, b, gap_limit) for b in BOOKS}}
    if price is not None:
        out["balance"].update(confirmed_cad=cad(confirmed, price["cad_per_btc"]),
                              unconfirmed_cad=cad(unconfirmed, price["cad_per_btc"]))
    return out


# -- payouts (the report server's /payouts page) -----------------------------------------------------

# awaiting signatures first (what a co-signer is asked for), then the other payouts not finished
PAYOUT_ORDER = ("awaiting_signatures", "requested", "signed", "broadcast")


def payouts(database, *, limit: int = 50, offset: int = 0) -> dict:
    """Payouts for a listing: those awaiting signatures first, then requested, signed and
    broadcast ones, then the finished ones newest first; each with its approvals, rejections and
    signatures counted (no PSBT, no raw transaction). ``total`` counts every payout, ``pending``
    those not finished, by state."""
    from . import ledger

    P, A, S = ledger.Payout, ledger.PayoutApproval, ledger.PayoutSignature
    with database.bind_ctx(ledger.MODELS):
        rank = peewee.Case(P.state, [(s, i) for i, s in enumerate(PAYOUT_ORDER)], len(PAYOUT_ORDER))
        rows = list(P.select(P.id, P.kind, P.state, P.state_reason, P.sats, P.cad_cents, P.destination, P.reason,
                             P.invoice, P.requested_by, P.requested_at, P.expires_at, P.txid, P.fee, P.updated_at)
                    .order_by(rank, P.id.desc()).limit(limit).offset(offset))
        ids = [p.id for p in rows]
        votes: dict[tuple[int, str], int] = {}
        signed: dict[int, int] = {}
        if ids:
            for pid, decision, n in (A.select(A.payout, A.decision, peewee.fn.COUNT(A.id)).where(A.payout.in_(ids))
                                     .group_by(A.payout, A.decision).tuples()):
                votes[pid, decision] = n
            for pid, n in S.select(S.payout, peewee.fn.COUNT(S.id)).where(S.payout.in_(ids)).group_by(S.payout).tuples():
                signed[pid] = n
        total = P.select().count()
        pending = {s: n for s, n in P.select(P.state, peewee.fn.COUNT(P.id)).where(P.state.in_(ledger.PENDING))
                   .group_by(P.state).tuples()}
    return {"total": total, "pending": pending, "payouts": [
        {"id": p.id, "kind": p.kind, "state": p.state, "state_reason": p.state_reason, "sats": p.sats,
         "cad": None if p.cad_cents is None else f"{p.cad_cents / 100:.2f}", "destination": p.destination,
         "reason": p.reason, "invoice": p.invoice, "requested_by": p.requested_by, "requested_at": p.requested_at,
         "expires_at": p.expires_at, "txid": p.txid, "fee": p.fee, "updated_at": p.updated_at,
         "approvals": votes.get((p.id, "approve"), 0), "rejections": votes.get((p.id, "reject"), 0),
         "signatures": signed.get(p.id, 0)} for p in rows]}


# -- the payout books by id (the report server's /api/payouts and /api/payouts/ID) ---------------------

def _payout_dict(p) -> dict:
    """One payout as plain data: amounts in integer sats and CAD cents (the rate as text), its
    transaction's id, inputs, fee and size once built; never the PSBT or the raw transaction."""
    return {"id": p.id, "kind": p.kind, "state": p.state, "state_reason": p.state_reason,
            "destination": p.destination, "sats": p.sats, "cad_cents": p.cad_cents, "rate": p.rate,
            "rate_as_of": p.rate_as_of, "reason": p.reason, "invoice": p.invoice, "requested_by": p.requested_by,
            "requested_at": p.requested_at, "expires_at": p.expires_at, "updated_at": p.updated_at,
            "txid": p.txid, "inputs": p.outpoints, "fee": p.fee, "vsize": p.vsize, "change_sats": p.change_sats,
            "replaces": p.replaces}


def payouts_before(database, *, state: str | None = None, before: int | None = None, limit: int = 50) -> list[dict]:
    """Payouts, newest first (ids below ``before`` if given, at most ``limit``), each with how many
    approvals and co-signers' signatures it has."""
    from peewee import fn

    from .ledger import MODELS, Payout, PayoutApproval, PayoutSignature

    with database.bind_ctx(MODELS):
        q = Payout.select().order_by(Payout.id.desc()).limit(limit)
        if state:
            q = q.where(Payout.state == state)
        if before is not None:
            q = q.where(Payout.id < before)
        rows = [_payout_dict(p) for p in q]
        ids = [r["id"] for r in rows]
        approved = dict(PayoutApproval.select(PayoutApproval.payout, fn.COUNT(PayoutApproval.id))
                        .where(PayoutApproval.payout.in_(ids) & (PayoutApproval.decision == "approve"))
                        .group_by(PayoutApproval.payout).tuples()) if ids else {}
        signed = dict(PayoutSignature.select(PayoutSignature.payout, fn.COUNT(PayoutSignature.id))
                      .where(PayoutSignature.payout.in_(ids)).group_by(PayoutSignature.payout).tuples()) if ids else {}
    for r in rows:
        r["approvals"], r["signatures"] = approved.get(r["id"], 0), signed.get(r["id"], 0)
    return rows


def payout(database, payout_id: int) -> dict | None:
    """One payout with its approvals and rejections (who, when), its co-signers' signatures (the
    co-signer's fingerprint, who brought it, when) and its history of states; None if unknown."""
    from .ledger import MODELS, Payout, PayoutApproval, PayoutHistory, PayoutSignature

    with database.bind_ctx(MODELS):
        p = Payout.get_or_none(Payout.id == payout_id)
        if p is None:
            return None
        out = _payout_dict(p)
        out["approvals"] = [{"identity": a.identity, "decision": a.decision, "at": a.at} for a in
                            PayoutApproval.select().where(PayoutApproval.payout == p.id).order_by(PayoutApproval.id)]
        out["signatures"] = [{"fingerprint": s.fingerprint, "identity": s.identity, "at": s.at} for s in
                             PayoutSignature.select().where(PayoutSignature.payout == p.id)
                             .order_by(PayoutSignature.id)]
        out["history"] = [{"state": h.state, "at": h.at, "by": h.by, "reason": h.reason} for h in
                          PayoutHistory.select().where(PayoutHistory.payout == p.id).order_by(PayoutHistory.id)]
    return out
