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
    """The member's dues address and its ``bitcoin:`` URI, once MemberData hands them out (a
    later step of issue 12); (None, None) until then: the welcome mail says to pay at the space."""
    return None, None


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
    # sats and the rate: recorded with bitcoin payments once MemberData watches dues addresses
    return period, {"name": m["name"], "handle": handle, "sats": p.get("sats"), "cad_cents": p["cents"],
                    "rate": p.get("rate"), "txid": txid, "vout": vout, "method": p["method"],
                    "paid_through": None}  # (the Reporter's, not computed yet)


BUILDERS = {"welcome": welcome, "receipt": receipt}
