"""What each mail kind says about a member, read from MemberData's tables (its queries only).

Used by the actor when it queues a mail and by `dctrl mail preview`. Reads, never writes;
no bus. Each function returns ``(period, context)``: the period of the outbox key
(kind, handle, period) and the template's data (templates.SAMPLES says which keys), or
raises :class:`NoMail` saying why there is no such mail for this member.

Keys (docs/architecture.md, "Member mail"):

- ``welcome``: period ``""``: once per member, ever (a rejoin does not welcome again).
- ``receipt``: period ``txid:vout`` for a bitcoin payment (the output counted once by
  MemberData), ``payment:<id>`` for a cash or e-transfer one (its member_payment row).
- ``overdue``, ``lapsed``, ``reinstated``: period the day of the Reporter's transition
  (``member.status`` ``on``, ISO): the same transition is mailed once (its event again, the
  catch-up from ``report_transition``), a later transition of the same kind is a new day.
  The mail's data is the member's state *today*: a member who has paid since the transition
  (or left) gets no overdue or lapsed mail, one lapsed again gets no reinstated mail
  (:class:`NoMail`).
- ``reminder``: period the start of the period it is for (``dues.upcoming_charge``): one
  reminder per period, whichever day of the notice window it is queued.
- ``statement``: period the month it covers (``2027-01``).
- ``payout``: period ``payout:N``: one mail per co-signer (``[member_mail] cosigners``, member
  handles) per payout, ever. Its data is PayoutMgr's row (``actors/payout_mgr/ledger.py``,
  peewee only), read when the mail is queued: a payout no longer awaiting signatures (signed,
  cancelled, expired) is not mailed (:class:`NoMail`).

The dues arithmetic is the Reporter's (its readers ``inputs.load`` and ``fast.state``, and
``dues.upcoming_charge``/``dues.schedule``: pure, no bus), computed here from MemberData's tables.
"""

from __future__ import annotations

import datetime
from datetime import date

import peewee

from ..member_data import queries as members
from ..payout_mgr.ledger import Payout, PayoutSignature
from ..reporter.dues import DuesError, MemberState, Status, schedule, upcoming_charge
from ..reporter.fast import state as member_state
from ..reporter.inputs import load
from ..reporter.models import ReportTransition

PAID = (Status.PREPAID, Status.CURRENT)
OWING = (Status.DUE, Status.OVERDUE, Status.LAPSED)


def utc_today() -> date:
    return datetime.datetime.now(datetime.timezone.utc).date()


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


def dues_state(database, handle: str, as_of: date):
    """(history, plans, MemberState on ``as_of``) of one member, by the Reporter's rules."""
    inputs = load(database, as_of, handle=handle)
    if handle in inputs.broken:
        raise NoMail(f"member {handle}: {inputs.broken[handle]}")
    if not inputs.histories:
        raise NoMail(f"no member {handle}")
    history = inputs.histories[0]
    try:
        return history, inputs.plans, member_state(history, inputs.plans, as_of)
    except DuesError as exc:
        raise NoMail(f"member {handle}: {exc}") from None


def _day(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _now_state(database, handle: str, today) -> MemberState:
    return dues_state(database, handle, _day(today or utc_today()))[2]


def overdue(database, handle: str, on=None, today=None) -> tuple[str, dict]:
    """The overdue mail of the transition on ``on`` (default today), with today's arrears."""
    m = _member(database, handle)
    s = _now_state(database, handle, today)
    if s.status not in OWING:
        raise NoMail(f"member {handle} is {s.status} now: nothing overdue to mail")
    on = _day(on or s.as_of).isoformat()
    unpaid = s.first_unpaid
    address, uri = dues_address(database, handle)
    return on, {"name": m["name"], "handle": handle, "due_date": (unpaid.start.isoformat() if unpaid else on),
                "balance_cents": max(0, -s.balance_cents), "address": address, "uri": uri}


def lapsed(database, handle: str, on=None, today=None) -> tuple[str, dict]:
    """The lapsed mail of the transition on ``on``: the membership lapsed that day."""
    m = _member(database, handle)
    s = _now_state(database, handle, today)
    if s.status not in OWING:
        raise NoMail(f"member {handle} is {s.status} now: not lapsed any more")
    on = _day(on or s.as_of).isoformat()
    address, _ = dues_address(database, handle)
    return on, {"name": m["name"], "handle": handle, "since": on, "address": address}


def reinstated(database, handle: str, on=None, today=None) -> tuple[str, dict]:
    """The reinstated mail of the transition from lapsed to a paid status on ``on``."""
    m = _member(database, handle)
    s = _now_state(database, handle, today)
    if s.status not in PAID:
        raise NoMail(f"member {handle} is {s.status} now: not reinstated")
    on = _day(on or s.as_of).isoformat()
    return on, {"name": m["name"], "handle": handle, "paid_through": s.paid_through.isoformat()}


def reminder(database, handle: str, today=None, notice_days: int = 7) -> tuple[str, dict]:
    """The reminder of the member's next period if it starts within ``notice_days`` of today and
    is not covered (:func:`actors.reporter.dues.upcoming_charge`); its start is the period."""
    m = _member(database, handle)
    s = _now_state(database, handle, today)
    period = upcoming_charge(s, notice_days)
    if period is None:
        raise NoMail(f"member {handle} ({s.status}) has no uncovered period starting within {notice_days} days")
    address, uri = dues_address(database, handle)
    return period.start.isoformat(), {"name": m["name"], "handle": handle, "days": (period.start - s.as_of).days,
                                      "due_date": period.start.isoformat(), "dues_cents": period.dues_cents,
                                      "address": address, "uri": uri}


def month_of(day: date) -> tuple[date, date]:
    """The first and last day of ``day``'s month."""
    first = day.replace(day=1)
    following = (first + datetime.timedelta(days=32)).replace(day=1)
    return first, following - datetime.timedelta(days=1)


def previous_month(day: date) -> date:
    """The first day of the month before ``day``'s."""
    return month_of(day.replace(day=1) - datetime.timedelta(days=1))[0]


def statement(database, handle: str, month=None) -> tuple[str, dict]:
    """The statement of ``month`` (its first day, a date or ``YYYY-MM``; default the previous
    month): the dues charged (periods starting in it), payments and adjustments dated in it,
    and the status, balance and paid-through on its last day. None for a member not yet
    joined by its end, or left by then (the status ``left``), or forgotten."""
    if month is None:
        month = previous_month(utc_today())
    elif isinstance(month, str):
        month = date.fromisoformat(month + "-01" if len(month) == 7 else month)
    first, last = month_of(month)
    m = _member(database, handle)
    history, plans, s = dues_state(database, handle, last)
    if s.status is None or s.status == Status.LEFT:
        raise NoMail(f"member {handle} is {s.status or 'not a member yet'} on {last}: no statement")
    lines = [(p.start.isoformat(), 0, f"dues, {p.plan.name} plan", -p.dues_cents)
             for p in schedule(history, plans, last) if p.start >= first]
    lo, hi = first.isoformat(), last.isoformat()
    for p in m["payments"]:
        if lo <= p["on"] <= hi:
            what = f"payment {p['txid_vout'][:8]}:{p['txid_vout'].split(':')[1]}" if p["txid_vout"] else \
                f"payment ({p['method']})"
            lines.append((p["on"], 1, what, p["cents"]))
    for a in m["adjustments"]:
        if lo <= a["on"] <= hi:
            lines.append((a["on"], 2, a["note"][:30], a["cents"]))
    lines.sort()
    return first.isoformat()[:7], {
        "name": m["name"], "handle": handle, "month": first.isoformat()[:7], "balance_cents": s.balance_cents,
        "status": s.status.value, "paid_through": s.paid_through.isoformat(),
        "lines": [{"date": d, "what": what, "cad_cents": cents} for d, _, what, cents in lines]}


def _utc(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def payout_row(database, payout_id: int):
    """PayoutMgr's row of payout ``payout_id`` (None: no such payout, or payout_mgr never ran here)."""
    if not database.table_exists(Payout._meta.table_name):
        return None
    return Payout.select().where(Payout.id == payout_id).bind(database).first()


def payout(database, handle: str, payout_id: int, needed: int | None = None) -> tuple[str, dict]:
    """The mail asking co-signer ``handle`` (a member) to sign payout ``payout_id``: read from
    PayoutMgr's table (the event carries no destination, and a redelivered event of a payout
    signed or cancelled since must not ask anyone). ``needed``: the signatures the treasury needs
    (the event's, or ``[treasury] descriptor``'s k; None: not said)."""
    m = _member(database, handle)
    p = payout_row(database, payout_id)
    if p is None:
        raise NoMail(f"no payout {payout_id} in PayoutMgr's table")
    if p.state != "awaiting_signatures":
        raise NoMail(f"payout {payout_id} is {p.state}: not awaiting signatures")
    signers = (PayoutSignature.select().where(PayoutSignature.payout == p.id).bind(database).count()
               if database.table_exists(PayoutSignature._meta.table_name) else 0)
    return f"payout:{p.id}", {
        "name": m["name"], "handle": handle, "payout": p.id, "payout_kind": p.kind, "sats": p.sats,
        "cad_cents": p.cad_cents, "destination": p.destination, "reason": p.reason,
        "requested_by": p.requested_by, "requested_at": _utc(p.requested_at), "expires_at": _utc(p.expires_at),
        "fee": p.fee, "txid": p.txid, "replaces": p.replaces, "needed": needed, "signers": signers}


def payouts_awaiting(database, above: int) -> list[int]:
    """The ids of the payouts awaiting signatures whose id is above ``above`` (the first-start
    mark: older ones are history), oldest first; [] when payout_mgr never ran here. Few rows: a
    payout awaits signatures at most ``[payouts] open_hours``."""
    if not database.table_exists(Payout._meta.table_name):
        return []
    return [i for (i,) in Payout.select(Payout.id).where((Payout.state == "awaiting_signatures") & (Payout.id > above))
            .order_by(Payout.id).tuples().bind(database)]


def payouts_top(database) -> int:
    """The highest payout id there is (0: none, or payout_mgr never ran here)."""
    if not database.table_exists(Payout._meta.table_name):
        return 0
    return Payout.select(peewee.fn.MAX(Payout.id)).bind(database).scalar() or 0


BUILDERS = {"welcome": welcome, "receipt": receipt, "overdue": overdue, "lapsed": lapsed, "reinstated": reinstated,
            "reminder": reminder, "statement": statement, "payout": payout}
# The kinds queued on a member.status transition (the Reporter's), by (previous, status): see
# status_mail_kind.
STATUS_KINDS = ("overdue", "lapsed", "reinstated")


def status_mail_kind(previous: str | None, status: str) -> str | None:
    """The mail a transition from ``previous`` to ``status`` calls for, if any: ``overdue`` on
    entering overdue, ``lapsed`` on entering lapsed, ``reinstated`` from lapsed to prepaid or
    current. From overdue back to a paid status is no reinstatement (the membership never
    lapsed; the payment's receipt says it), nor lapsed to due (still owing)."""
    if status == Status.OVERDUE and previous != Status.OVERDUE:
        return "overdue"
    if status == Status.LAPSED and previous != Status.LAPSED:
        return "lapsed"
    if previous == Status.LAPSED and status in PAID:
        return "reinstated"
    return None


def transitions_after(database, last_id: int, limit: int = 1000) -> dict:
    """The Reporter's transitions recorded after row ``last_id`` of ``report_transition``,
    oldest first, at most ``limit``: ``rows`` [(id, handle, previous, status, on)] and ``max``
    (the highest id there is; 0 for none or no table yet: the Reporter has not run)."""
    if not database.table_exists(ReportTransition._meta.table_name):
        return {"rows": [], "max": 0}
    t = ReportTransition
    top = t.select(peewee.fn.MAX(t.id)).bind(database).scalar() or 0
    rows = list(t.select(t.id, t.handle, t.previous, t.status, t.on)
                .where((t.id > last_id) & (t.id <= top)).order_by(t.id).limit(limit).tuples().bind(database))
    return {"rows": rows, "max": top}
