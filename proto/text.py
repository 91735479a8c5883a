"""Text from outside that a terminal, a log line or a table must not be fooled by.

Refused at input (BusinessData's product names and locations, MemberData's names, notes and
groups) and escaped at output (the CLI's tables, for text stored before the check): control
characters (Cc: newline, escape and so ANSI sequences), formats (Cf: U+202E right-to-left
override, zero-width ones) and the line and paragraph separators (Zl, Zp). Ordinary spaces
(Zs) are fine."""

from __future__ import annotations

import unicodedata

UNPRINTABLE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


def is_unprintable(c: str) -> bool:
    return unicodedata.category(c) in UNPRINTABLE_CATEGORIES


def unprintable_reason(field: str, value: str) -> str | None:
    """Why ``value`` is refused (its first such character, named), or None."""
    for c in value:
        if is_unprintable(c):
            return f"{field} contains a control character U+{ord(c):04X}"
    return None
