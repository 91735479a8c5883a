"""Groups, explicit and by rule (issue 12), as pure functions of the facts and a day.

- Explicit: a member is in a group from a :class:`~actors.reporter.dues.GroupChange`
  that adds them until one that removes them (facts in date order; of two on
  the same day, the later listed wins). Leaving the space does not remove
  anyone from a group: rules decide what leaving means.
- By rule: a :class:`GroupRule` names the statuses that count and, optionally,
  an explicit group the member must also be in. "Keyholders: members of group
  keys in good standing" is ``GroupRule("keyholders", KEYHOLDER_STATUSES, "keys")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterable

from .dues import MemberBook, MemberHistory, Plans, Status

# Good standing for a key: paid up, or inside the payment term (not yet overdue).
KEYHOLDER_STATUSES = frozenset({Status.PREPAID, Status.CURRENT, Status.DUE})


@dataclass(frozen=True)
class GroupRule:
    name: str
    statuses: frozenset[Status]
    group: str | None = None  # also required: membership of this explicit group


def groups_on(history: MemberHistory, day: date) -> frozenset[str]:
    """The explicit groups the member is in on ``day``."""
    member_of: dict[str, bool] = {}
    for change in sorted(history.groups, key=lambda c: c.on):
        if change.on > day:
            break
        member_of[change.group] = change.member
    return frozenset(g for g, yes in member_of.items() if yes)


def members_of(rule: GroupRule, histories: Iterable[MemberHistory | MemberBook], plans: Plans,
               day: date) -> list[str]:
    """The handles the rule selects on ``day``, sorted."""
    out = []
    for h in histories:
        book = h if isinstance(h, MemberBook) else MemberBook(h, plans)
        if rule.group is not None and rule.group not in groups_on(book.history, day):
            continue
        if book.status(day) in rule.statuses:
            out.append(book.history.handle)
    return sorted(out)
