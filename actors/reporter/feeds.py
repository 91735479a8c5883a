"""No member goes overdue or lapses because our own feed broke (issue 12).

The rule, as a pure function of facts the Reporter already has:

- An :class:`Outage` is a run of days on which one of our feeds was unhealthy:
  ChainNotifier behind the tip or disconnected (``chain``), or the price stale
  (``price``). ``end`` is its last unhealthy day, None while it lasts.
- Transitions are computed by :func:`actors.reporter.dues.transitions`, where a
  payment counts from the day it was *made* (for bitcoin the earliest of first
  seen and its block's time), not the day we credited it. So a payment that
  ChainNotifier only saw when it caught up after an outage, but that was made
  before the deadline, counts as on time: recomputed after the outage, the
  overdue transition simply is not there, or comes on its right date.
- What cannot be known yet is held back. A transition to ``overdue`` or
  ``lapsed`` on day d is held when
    (1) an outage is still going on ``now`` (its end is None or >= now) and
        began on or before d: a payment made by d may be unseen; or
    (2) a payment made on or before d is seen but not yet credited (pending:
        not confirmed, or no price to value it while the price is stale): it
        may still count.
  An outage that is over no longer holds anything: ChainNotifier has caught up
  (catching up is part of being healthy), so every payment made before d is
  known, credited or pending, and the transition is judged as of d.
- Transitions are published in order: the first held one and every one after
  it wait (a ``current`` after a held ``overdue`` would make no sense alone).
  ``judged_through`` is the last day whose transitions are final; the next run
  computes transitions from that day, so each is published exactly once, late
  if need be but dated the day it happened.

Other transitions (into ``current``, ``prepaid``, ``due``, ``left``) are
never held for themselves: our feed breaking can only make a member look
worse than they are, never better, since credits are never invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterable

from .dues import ONE_DAY, DuesError, MemberHistory, Plans, Status, Transition, _day, transitions

FEEDS = ("chain", "price")

# Transitions that our own feed breaking could cause wrongly.
GUARDED = frozenset({Status.OVERDUE, Status.LAPSED})


@dataclass(frozen=True)
class Outage:
    """``feed`` was unhealthy from ``start`` to ``end`` inclusive (None: still is)."""

    feed: str
    start: date
    end: date | None = None

    def __post_init__(self):
        if self.feed not in FEEDS:
            raise DuesError(f"feed must be one of {FEEDS}, not {self.feed!r}")
        _day(self.start, "outage start")
        if self.end is not None and _day(self.end, "outage end") < self.start:
            raise DuesError(f"outage ends {self.end} before it starts {self.start}")

    def ongoing(self, now: date) -> bool:
        return self.end is None or self.end >= now


@dataclass(frozen=True)
class Judgement:
    published: tuple[Transition, ...]  # publish now, in order
    held: tuple[Transition, ...]  # not yet: recomputed by the next run
    judged_through: date  # the next run computes transitions after this day
    reason: str = ""  # why the first held transition is held


def hold_reason(transition: Transition, outages: Iterable[Outage], pending_made: Iterable[date], now: date) -> str:
    """Why ``transition`` cannot be published on ``now``, or "" when it can."""
    if transition.new not in GUARDED:
        return ""
    for o in outages:
        if o.ongoing(now) and o.start <= transition.on:
            return f"{o.feed} feed down since {o.start}"
    for made in pending_made:
        if made <= transition.on:
            return f"a payment made on {made} is not credited yet"
    return ""


def judge(found: Iterable[Transition], outages: Iterable[Outage], pending_made: Iterable[date],
          now: date) -> Judgement:
    """Split transitions (in date order, all on or before ``now``) into published and held."""
    outages, pending_made = tuple(outages), tuple(pending_made)
    found = tuple(found)
    for i, t in enumerate(found):
        why = hold_reason(t, outages, pending_made, now)
        if why:
            return Judgement(found[:i], found[i:], t.on - ONE_DAY, why)
    return Judgement(found, (), now)


def publishable(history: MemberHistory, plans: Plans, outages: Iterable[Outage], since: date,
                now: date) -> Judgement:
    """The member's transitions after ``since`` up to ``now``, judged against our feeds' health."""
    pending = [p.made for p in history.payments if p.pending]
    return judge(transitions(history, plans, since, now), outages, pending, now)
