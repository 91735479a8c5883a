"""MemberData's read queries: each takes the database and returns plain data.

For other actors (the coming Reporter and MemberMail), the CLI and reports; they never write
these tables. Nothing here derives a status or a balance: that is the Reporter's, from these
facts, with its own ``as_of``. What is derived here is only what the facts say directly: the
plan in force on a date, whether a member has left, the groups they are in.
"""

from __future__ import annotations

import datetime

from peewee import fn

from .models import (DUES_BOOK, PERIODS, USED_ON_CHAIN, MemberAddress, MemberAdjustment, MemberChainPayment,
                     MemberFact, MemberMember, MemberPayment, MemberPlanVersion, MemberPrice, MemberWatch,
                     format_cents)
from .models import opt_out_kinds


def today(clock_time: float) -> str:
    """The UTC calendar date of a unix time, ISO."""
    return datetime.datetime.fromtimestamp(int(clock_time), datetime.timezone.utc).date().isoformat()


# -- plans -------------------------------------------------------------------------

def _plan_row(p) -> dict:
    return {"name": p.name, "version": p.version, "cents": p.cents, "cad": format_cents(p.cents),
            "period": p.period, "grace_days": p.grace_days, "confirmations": p.confirmations,
            "term_days": p.term_days, "created": p.created}


def plan_versions(database, name: str | None = None) -> list[dict]:
    """Every stored version, oldest first (optionally of one plan)."""
    q = MemberPlanVersion.select().order_by(MemberPlanVersion.version)
    if name is not None:
        q = q.where(MemberPlanVersion.name == name)
    return [_plan_row(p) for p in q.bind(database)]


def plans(database) -> list[dict]:
    """Each plan's current terms (its latest version), by name."""
    current: dict[str, dict] = {}
    for p in plan_versions(database):  # ascending: the latest wins
        current[p["name"]] = p
    return [current[n] for n in sorted(current)]


def plan(database, name: str) -> dict | None:
    versions = plan_versions(database, name)
    return versions[-1] if versions else None


# -- members -----------------------------------------------------------------------

def handles(database) -> set[str]:
    """Every handle ever given (forgotten ones included: a handle is never reused)."""
    return {h for (h,) in MemberMember.select(MemberMember.handle).bind(database).tuples()}


def facts(database, handle: str | None = None) -> list[dict]:
    """Facts in the order recorded (of one member, or of all)."""
    q = MemberFact.select().order_by(MemberFact.id)
    if handle is not None:
        q = q.where(MemberFact.handle == handle)
    return [{"id": f.id, "handle": f.handle, "kind": f.kind, "on": f.on, "plan": f.plan, "group": f.group,
             "detail": f.detail, "created": f.created} for f in q.bind(database)]


def payments(database, handle: str | None = None) -> list[dict]:
    q = MemberPayment.select().order_by(MemberPayment.id)
    if handle is not None:
        q = q.where(MemberPayment.handle == handle)
    return [{"id": p.id, "handle": p.handle, "on": p.on, "method": p.method, "cents": p.cents,
             "cad": format_cents(p.cents), "note": p.note, "txid_vout": p.txid_vout, "created": p.created}
            for p in q.bind(database)]


def adjustments(database, handle: str | None = None) -> list[dict]:
    q = MemberAdjustment.select().order_by(MemberAdjustment.id)
    if handle is not None:
        q = q.where(MemberAdjustment.handle == handle)
    return [{"id": a.id, "handle": a.handle, "on": a.on, "cents": a.cents, "cad": format_cents(a.cents),
             "note": a.note, "reverses": a.reverses, "created": a.created} for a in q.bind(database)]


def state_from_facts(fs: list[dict], as_of: str | None = None) -> dict:
    """What a member's facts (in recording order) say as of ``as_of`` (ISO date; None: all):
    the plan in force (the plan fact with the latest effective date not after ``as_of``; of
    two on one date, the later recorded), whether they have left and when, their groups."""
    plan_name, plan_on, left, groups = None, None, None, set()
    for f in fs:
        if as_of is not None and f["on"] > as_of:
            continue
        kind = f["kind"]
        if kind == "plan" and (plan_on is None or f["on"] >= plan_on):
            plan_name, plan_on = f["plan"], f["on"]
        elif kind == "left":
            left = f["on"]
        elif kind == "rejoined":
            left = None
        elif kind == "group_joined":
            groups.add(f["group"])
        elif kind == "group_left":
            groups.discard(f["group"])
    return {"plan": plan_name, "left": left, "groups": sorted(groups)}


def members(database, as_of: str | None = None) -> list[dict]:
    """Every member, by handle: handle, plan (in force as of ``as_of``, default all facts), joined,
    left (None: a member now), groups, forgotten. No name or email: see :func:`member`."""
    by_handle: dict[str, list] = {}
    for f in facts(database):
        by_handle.setdefault(f["handle"], []).append(f)
    out = []
    for m in MemberMember.select().order_by(MemberMember.handle).bind(database):
        state = state_from_facts(by_handle.get(m.handle, []), as_of)
        out.append({"handle": m.handle, "plan": state["plan"], "joined": m.joined, "left": state["left"],
                    "groups": state["groups"], "forgotten": m.forgotten is not None})
    return out


def changes_after(database, fact_id: int, payment_id: int, kinds=("joined",), limit: int = 1000) -> dict:
    """Rows recorded after the given ids, oldest first: ``facts`` [(id, handle, kind)] of
    ``kinds`` and ``payments`` [(id, handle)], at most ``limit`` of each, up to the highest ids
    there were when asked (``max_fact``, ``max_payment``; 0 for none). For a reader that catches up on member.changed events it
    missed (MemberMail, after a restart): the ids only grow (one writer, in commit order)."""
    max_fact = MemberFact.select(fn.MAX(MemberFact.id)).bind(database).scalar() or 0  # (first: a row
    max_payment = MemberPayment.select(fn.MAX(MemberPayment.id)).bind(database).scalar() or 0  # added now waits)
    facts_ = list(MemberFact.select(MemberFact.id, MemberFact.handle, MemberFact.kind)
                  .where((MemberFact.id > fact_id) & (MemberFact.id <= max_fact) & MemberFact.kind.in_(list(kinds)))
                  .order_by(MemberFact.id).limit(limit).tuples().bind(database))
    pays = list(MemberPayment.select(MemberPayment.id, MemberPayment.handle)
                .where((MemberPayment.id > payment_id) & (MemberPayment.id <= max_payment))
                .order_by(MemberPayment.id).limit(limit).tuples().bind(database))
    return {"facts": facts_, "payments": pays, "max_fact": max_fact, "max_payment": max_payment}


def email_of(database, handle: str) -> str | None:
    """The member's mail address now (None: no such member, or forgotten). For MemberMail, which
    reads it just before sending, so a changed address is used by mail queued before the change."""
    row = (MemberMember.select(MemberMember.email).where(MemberMember.handle == handle)
           .bind(database).first())
    return row.email if row is not None else None


def opted_out(database, handle: str, kind: str) -> bool:
    """Whether the member opted out of mail ``kind`` (``reminder``, ``statement``; never others).
    For MemberMail's dispatcher, asked just before sending."""
    row = (MemberMember.select(MemberMember.mail_opt_out).where(MemberMember.handle == handle)
           .bind(database).first())
    return row is not None and kind in opt_out_kinds(row.mail_opt_out)


def dues_addresses(database, handle: str) -> list[dict]:
    """Every dues address handed out to the member, the current one (the newest) last, with
    whether the chain notifier has acknowledged its watch."""
    if not database.table_exists(MemberAddress._meta.table_name):
        return []
    acked = {w.address: w.acked for w in MemberWatch.select().where(MemberWatch.handle == handle).bind(database)}
    return [{"index": a.position, "address": a.address, "issued_at": a.issued_at, "watched": acked.get(a.address, False),
             "uri": f"bitcoin:{a.address}"}
            for a in MemberAddress.select().where((MemberAddress.book == "dues") & (MemberAddress.label == handle))
            .order_by(MemberAddress.position).bind(database)]


def dues_uri(address: str, cents: int | None = None, cad_per_btc=None) -> str:
    """The BIP21 URI of a dues address; with ``cents`` at ``cad_per_btc`` (a Decimal), the amount
    in BTC (rounded up to the satoshi: never less than the dues)."""
    if cents is None or cad_per_btc is None:
        return f"bitcoin:{address}"
    from decimal import ROUND_CEILING, Decimal

    sats = int((Decimal(cents) * 1_000_000 / Decimal(cad_per_btc)).to_integral_value(rounding=ROUND_CEILING))
    return f"bitcoin:{address}?amount={sats // 100_000_000}.{sats % 100_000_000:08d}"


def dues_gap(database, gap_limit: int = 20) -> dict:
    """How far the run of unused dues addresses reaches (each member holds one unpaid address,
    so it grows with the members who have not paid in bitcoin yet): a wallet restored from
    ``[members] receive`` finds every payment only if it scans at least ``gap + 1`` in a row."""
    if not database.table_exists(MemberAddress._meta.table_name):
        return {"issued": 0, "next": 0, "last_used": None, "gap": 0, "gap_limit": gap_limit}
    M, C = MemberAddress, MemberChainPayment
    import peewee

    issued, last = (M.select(peewee.fn.COUNT(M.id), peewee.fn.MAX(M.position)).where(M.book == DUES_BOOK)
                    .bind(database).tuples().first())
    used = (M.select(peewee.fn.MAX(M.position)).where((M.book == DUES_BOOK) & (
        (M.label == USED_ON_CHAIN) | M.address.in_(C.select(C.address)))).bind(database).scalar())
    nxt = 0 if last is None else last + 1
    return {"issued": issued, "next": nxt, "last_used": used, "gap": nxt - (-1 if used is None else used) - 1,
            "gap_limit": gap_limit}


def last_price(database) -> dict | None:
    """The last price MemberData accepted: {cad_per_btc, as_of (ms), sources, received (unix s)},
    or None (none yet, or the last word was that the price is stale)."""
    if not database.table_exists(MemberPrice._meta.table_name):
        return None
    row = MemberPrice.select().where(MemberPrice.id == 1).bind(database).first()
    if row is None or row.stale or row.cad_per_btc is None:
        return None
    import json

    return {"cad_per_btc": row.cad_per_btc, "as_of": row.as_of, "sources": json.loads(row.sources or "[]"),
            "received": row.received}


def chain_payments(database, handle: str | None = None) -> list[dict]:
    """Outputs paid to dues addresses, as the chain says and as counted: state, confirmations,
    the rate (and its sources, and whether it came after the payment was first seen), the
    payment it counted as and the adjustment that reversed it."""
    if not database.table_exists(MemberChainPayment._meta.table_name):
        return []
    q = MemberChainPayment.select().order_by(MemberChainPayment.first_seen, MemberChainPayment.txid_vout)
    if handle is not None:
        q = q.where(MemberChainPayment.handle == handle)
    import json

    return [{"txid_vout": p.txid_vout, "handle": p.handle, "address": p.address, "sats": p.sats, "state": p.state,
             "confirmations": p.confirmations, "first_seen": p.first_seen, "cad_per_btc": p.cad_per_btc,
             "rate_as_of": p.rate_as_of, "rate_sources": json.loads(p.rate_sources) if p.rate_sources else None,
             "rate_late": p.rate_late, "payment": p.payment, "reversal": p.reversal, "replaced_by": p.replaced_by}
            for p in q.bind(database)]


def member(database, handle: str, as_of: str | None = None) -> dict | None:
    """Everything held on one member (personal data included: for the admin's eyes, never the bus),
    or None: the member row, the derived state, and every fact, payment and adjustment."""
    m = MemberMember.select().where(MemberMember.handle == handle).bind(database).first()
    if m is None:
        return None
    fs = facts(database, handle)
    return {"handle": m.handle, "name": m.name, "email": m.email, "joined": m.joined, "created": m.created,
            "forgotten": m.forgotten, "mail_opt_out": list(opt_out_kinds(m.mail_opt_out)),
            **state_from_facts(fs, as_of), "facts": fs,
            "payments": payments(database, handle), "adjustments": adjustments(database, handle),
            "dues_addresses": (addresses := dues_addresses(database, handle)),
            "dues_address": addresses[-1]["address"] if addresses else None,
            "dues_uri": addresses[-1]["uri"] if addresses else None,
            "chain_payments": chain_payments(database, handle)}


__all__ = ["PERIODS", "adjustments", "chain_payments", "changes_after", "dues_addresses", "dues_gap",
           "dues_uri", "email_of", "last_price", "facts", "handles", "member", "members", "opted_out", "payments", "plan",
           "plan_versions",
           "plans", "state_from_facts", "today"]
