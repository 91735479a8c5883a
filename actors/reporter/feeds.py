"""No member goes overdue or lapses because our own feed broke (issue 12).

The rule, as a pure function of facts the Reporter already has:

- An :class:`Outage` is a run of days on which one of our feeds was unhealthy:
  ChainNotifier behind the tip or disconnected (``chain``), or the price stale
  (``price``). ``end`` is its last unhealthy day, None while it lasts.
  Outages with no whole healthy day between them count as one (:func:`merged`):
  a feed that was never healthy for a day may not have caught up.
- Transitions are computed by :func:`actors.reporter.dues.transitions`, where a
  payment counts from the day it was *made* (for bitcoin the earliest of first
  seen and its block's time), not the day we credited it. So a payment that
  ChainNotifier only saw when it caught up after an outage, but that was made
  before the deadline, counts as on time: recomputed after the outage, the
  overdue transition simply is not there, or comes on its right date.
- What cannot be known yet is held back. A transition on day d is held when
    (1) an outage is still going on ``now`` (its end is None or >= now) and
        began on or before d: a payment made by d may be unseen; or
    (2) a payment made on or before d is seen but not yet credited (pending:
        not confirmed, or no price to value it while the price is stale): it
        may still count.
  An outage that is over no longer holds anything: ChainNotifier has caught up
  (catching up is part of being healthy), so every payment made before d is
  known, credited or pending, and the transition is judged as of d.
- Every transition is held under those conditions, not only those to
  ``overdue`` and ``lapsed``: a payment seen late can also undo a ``due`` (a
  member who paid on the period's first day during the outage) or turn a
  ``current`` into ``prepaid``, and a published transition is never taken
  back. What is held is only late, never lost.
- Transitions are published in order: the first held one and every one after
  it wait. ``judged_through`` is the last day whose transitions are final:
  the day before the first held transition, before an ongoing outage's start
  and before a pending payment was made, else ``now`` (a late payment can add
  a transition where there was none). The next run computes transitions from
  that day, so each is published exactly
  once, late if need be but dated the day it happened. A test simulates a
  Reporter judging every day while feeds fail and payments are seen late, and
  checks that what it published, put together, is exactly the transitions
  computed afterwards from everything.
- A payment stuck unconfirmed holds its member's transitions until it
  confirms or MemberData records it gone (replaced, evicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterable

from .dues import ONE_DAY, DuesError, MemberHistory, Plans, Transition, check_day, transitions

FEEDS = ("chain", "price")


@dataclass(frozen=True)
class Outage:
    """``feed`` was unhealthy from ``start`` to ``end`` inclusive (None: still is)."""

    feed: str
    start: date
    end: date | None = None

    def __post_init__(self):
        if not all(f in FEEDS for f in self.feed.split("+")):  # "chain+price": merged outages
            raise DuesError(f"feed must be one of {FEEDS}, not {self.feed!r}")
        check_day(self.start, "outage start")
        if self.end is not None and check_day(self.end, "outage end") < self.start:
            raise DuesError(f"outage ends {self.end} before it starts {self.start}")

    def ongoing(self, now: date) -> bool:
        return self.end is None or self.end >= now


@dataclass(frozen=True)
class Judgement:
    published: tuple[Transition, ...]  # publish now, in order
    held: tuple[Transition, ...]  # not yet: recomputed by the next run
    judged_through: date  # the next run computes transitions after this day
    reason: str = ""  # why the first held transition is held


def merged(outages: Iterable[Outage]) -> list[Outage]:
    """Outages that overlap or follow each other without one healthy day between them, as one:
    a feed must be healthy for a day to have caught up (a day-granular bound)."""
    out: list[Outage] = []
    for o in sorted(outages, key=lambda o: o.start):
        if out and (out[-1].end is None or o.start <= out[-1].end + ONE_DAY):
            last = out[-1]
            end = None if last.end is None or o.end is None else max(last.end, o.end)
            feed = last.feed if last.feed == o.feed else "+".join(sorted({*last.feed.split("+"), o.feed}))
            out[-1] = Outage(feed, last.start, end)
        else:
            out.append(o)
    return out


def hold_reason(transition: Transition, outages: Iterable[Outage], pending_made: Iterable[date], now: date) -> str:
    """Why ``transition`` cannot be published on ``now``, or "" when it can."""
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
    outages, pending_made = merged(outages), tuple(pending_made)
    found = tuple(found)
    # Days on or after these may still change, with or without a transition on them today.
    unsure = [o.start for o in outages if o.ongoing(now)] + list(pending_made)
    through = min([now, *(d - ONE_DAY for d in unsure)])
    for i, t in enumerate(found):
        why = hold_reason(t, outages, pending_made, now)
        if why:
            return Judgement(found[:i], found[i:], min(through, t.on - ONE_DAY), why)
    return Judgement(found, (), through)


def publishable(history: MemberHistory, plans: Plans, outages: Iterable[Outage], since: date,
                now: date) -> Judgement:
    """The member's transitions after ``since`` up to ``now``, judged against our feeds' health."""
    pending = [p.made for p in history.payments if p.pending]
    j = judge(transitions(history, plans, since, now), outages, pending, now)
    # Never behind the day this run started from: what was published up to it stays (a payment
    # made before it and only known now would have been under an outage or pending, see above).
    return j if j.judged_through >= since else Judgement(j.published, j.held, since, j.reason)
