"""`dctrl`: the operator's command line. `dctrl --help` and `dctrl CMD --help` explain each command.

One module per command group (``GROUPS``), each with ``register(sub)`` adding its commands to
the top-level sub-parsers through :func:`scripts.cli.common.command`. A new group: a module
here with ``register`` and its ``cmd_*`` functions, and its name in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from proto.errors import DctrlError
from scripts.cli.common import HOME_HELP

log = logging.getLogger("dctrl")

# In the order `dctrl --help` lists them.
GROUPS = ("run", "backup", "doctor", "agent", "keys", "bus", "chain", "business", "members", "mail", "report",
          "invoices", "treasury", "payouts", "events", "serve", "vault", "sim", "price", "bench")


def build_parser():
    p = argparse.ArgumentParser(prog="dctrl", description=(
        "dctrl: DCTRL's services network. Every command takes --home, before or after the command "
        "(default $DCTRL_HOME, else ./var); every listing takes --json."))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--home", default=None, help=HOME_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"scripts.cli.{name}").register(sub)
    _describe(p)
    return p


def _describe(parser):
    """Each command's --help starts with the line it has in its parent's list."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {a.dest: a.help for a in action._choices_actions}
            for name, sp in action.choices.items():
                if not sp.description:
                    sp.description = lines.get(name)
                _describe(sp)


def main(argv=None):
    # The home is private to its user: everything dctrl creates in it (the database, logs, event
    # log, keys, config), and what the processes `dctrl up` starts create, inherit this.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    # Long-running processes log what they do; one-shot tools only warnings, unless -v.
    quiet = args.cmd not in ("run", "broker", "up", "serve") and not (
        args.cmd == "sim" and args.sim_cmd in ("chain", "exchanges", "smtp"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # (a closed pipe shows here, not at exit where it cannot be caught)
    except DctrlError as exc:
        print(f"dctrl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`dctrl events query | head -1`): no traceback, and nothing more to
        # write. What is still buffered goes to /dev/null so the exit flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a tool killed by SIGPIPE (128 + 13) exits in a shell
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise  # one of ours: a bug, with its traceback
        print(f"dctrl {_command(args)}: needs the {extra} install (no module {exc.name!r}): "
              f"pip install 'dctrl[{extra}]'", file=sys.stderr)
        return 2
    return rc or 0


# Top-level modules of the optional installs (setup.cfg extras_require) -> the extra to install.
# `dctrl --help` and the commands that need none of them work on every install.
EXTRAS = {**dict.fromkeys(("embit", "peewee", "psycopg2", "bottle", "bitcoinrpc", "supervisor", "waitress", "pygal"), "server"),
          **dict.fromkeys(("gpiozero", "smbus2"), "agent")}


def _command(args) -> str:
    """``invoices list`` from the parsed arguments, for messages."""
    action = getattr(args, f"{args.cmd}_cmd", None)
    return f"{args.cmd} {action}" if action else args.cmd

