"""What each mail kind says about a member, read from MemberData's tables (its queries only).

Used by the actor when it queues a mail and by `dctrl mail preview`. Reads, never writes;
no bus. Each function returns ``(period, context)``: the period of the outbox key
(kind, handle, period) and the template's data (templates.SAMPLES says which keys), or
raises :class:`NoMail` saying why there is no such mail for this member.

Keys (docs/architecture.md, "Member mail"):

- ``welcome``: period ``""``: once per member, ever (a rejoin does not welcome again).
- ``receipt``: period ``txid:vout`` for a bitcoin payment (the output counted once by
  MemberData), ``payment:<id>`` for a cash or e-transfer one (its member_payment row).
"""

from __future__ import annotations

from ..member_data import queries as members


class NoMail(LookupError):
    """No mail of this kind for this member (unknown, forgotten, no such payment)."""


def _member(database, handle: str) -> dict:
    m = members.member(database, handle)
    if m is None:
        raise NoMail(f"no member {handle}")
    if m["forgotten"] is not None or not m["email"]:
        raise NoMail(f"member {handle} has no mail address (forgotten)")
    return m


def dues_address(database, handle: str) -> tuple[str | None, str | None]:
    """The member's current dues address and its ``bitcoin:`` URI; (None, None) when MemberData
    has none for them (no ``[members] receive``, or its discovery not answered yet): the
    welcome mail then says to pay at the space. MemberData hands the address out before it
    publishes the member's ``joined``, so the welcome that event queues carries it."""
    m = members.member(database, handle) or {}
    return m.get("dues_address"), m.get("dues_uri")


def welcome(database, handle: str) -> tuple[str, dict]:
    m = _member(database, handle)
    terms = members.plan(database, m["plan"]) if m["plan"] else None
    if terms is None:
        raise NoMail(f"member {handle} has no plan")
    address, uri = dues_address(database, handle)
    return "", {"name": m["name"], "handle": handle, "plan": m["plan"], "dues_cents": terms["cents"],
                "period": terms["period"], "address": address, "uri": uri}


def receipt(database, handle: str, payment_id: int | None = None) -> tuple[str, dict]:
    """The receipt of payment ``payment_id`` (None: the member's latest)."""
    m = _member(database, handle)
    paid = [p for p in m["payments"] if payment_id is None or p["id"] == payment_id]
    if not paid:
        raise NoMail(f"member {handle} has no payment {payment_id}" if payment_id else f"member {handle} has no payment")
    p = paid[-1]
    txid, vout = None, None
    if p["txid_vout"]:
        txid, _, vout_text = p["txid_vout"].partition(":")
        vout = int(vout_text)
    period = p["txid_vout"] if p["txid_vout"] else f"payment:{p['id']}"
    # A bitcoin payment to a dues address: its sats and the rate it was valued at (MemberData's
    # record of the output); one recorded by hand has neither.
    chain = next((c for c in members.chain_payments(database, handle) if c["payment"] == p["id"]), {})
    return period, {"name": m["name"], "handle": handle, "sats": chain.get("sats"), "cad_cents": p["cents"],
                    "rate": chain.get("cad_per_btc"), "txid": txid, "vout": vout, "method": p["method"],
                    "paid_through": None}  # (the Reporter's, not computed yet)


BUILDERS = {"welcome": welcome, "receipt": receipt}
