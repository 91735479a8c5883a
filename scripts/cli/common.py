"""What every command module of the CLI shares: one way to register a command, the home,
and safe printing.

Every module of ``scripts/cli/`` named in ``scripts.cli.GROUPS`` has ``register(sub)``,
``sub`` being the top-level sub-parsers of ``dctrl``: it adds each command with
:func:`command` (which gives it ``--home`` and its ``fn``), then the command's actions on that
parser. Each module imports only the standard library and ``proto`` at the top (and
scripts/cli/sim.py the simulators' light client modules): anything heavier (the runtime, the
database, embit) is imported inside the ``cmd_*`` functions, so ``dctrl --help`` works on every
install and stays fast.
"""

from __future__ import annotations

import argparse

HOME_HELP = "dctrl home (default $DCTRL_HOME, else ./var); before or after the command"
JSON_HELP = "one JSON document instead of the table"


def command(sub, name, fn, help):
    """A top-level ``dctrl NAME`` command running ``fn(args)``; it takes ``--home`` too."""
    sp = sub.add_parser(name, help=help, description=help)
    # SUPPRESS: absent here, the value given before the command (or its default) stands.
    sp.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
    sp.set_defaults(fn=fn)
    return sp


def hide_home(*parsers):
    """An action takes ``--home`` after it too (shown once, on the command)."""
    for p in parsers:
        p.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def home(args):
    from keys.home import Home

    return Home(args.home)


def printable(text) -> str:
    """``text`` for a terminal table: control and format characters and line or paragraph
    separators (Unicode Cc, Cf, Zl, Zp: a newline, an ANSI escape, U+202E) shown as \\uXXXX, so
    a name cannot forge a row or rewrite the screen (one stored before business_data refused
    them, or read from an older database). Every free-text column goes through it."""
    from proto.text import is_unprintable

    text = "" if text is None else str(text)
    if text.isprintable() and text.isascii():
        return text
    return "".join((f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
                   if is_unprintable(c) else c for c in text)


def with_deadline(rt, seconds):
    """Stop the runtime ``rt`` after ``seconds``."""
    import threading

    t = threading.Timer(seconds, rt.stop)
    t.daemon = True
    t.start()
