"""`dctrl events query|tail|prune`: the event log, read from its files (no bus)."""

from __future__ import annotations

import argparse
import json
import time

from proto.errors import DctrlError
from scripts.cli.common import command, printable
from scripts.cli.common import home as _home


def cmd_events(args):
    from actors.event_logger.queries import query, tail

    from proto.wire import prefix_frame

    home = _home(args)
    if args.events_cmd == "prune":
        return _events_prune(home, args)
    if any(not p.strip(" .") for p in args.exclude):
        raise DctrlError("--exclude needs a topic prefix (it would leave nothing)")
    excluded = tuple(prefix_frame(p) for p in args.exclude)

    def shown(rec):  # whole segments, as --topic: --exclude health leaves healthcheck.x
        return not ((rec["topic"] or "") + ".").encode().startswith(excluded) if excluded else True

    if args.events_cmd == "query":
        n = 0
        for rec in query(home.events_dir, topic=args.topic, since=args.since, sender=args.sender):
            if not shown(rec):
                continue
            n += 1
            print(json.dumps(rec, sort_keys=True) if args.json else _event_line(rec))
            if args.limit and n >= args.limit:
                break
    else:
        for rec in tail(home.events_dir, topic=args.topic):
            if shown(rec):
                print(json.dumps(rec, sort_keys=True) if args.json else _event_line(rec), flush=True)


def _event_line(rec):
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["logged"] / 1000))
    what = json.dumps(rec["body"]) if rec["body"] is not None else printable(rec["reason"])  # json: ASCII
    return (f"{when} #{rec['log_seq']} {printable(rec['verdict']):<8} {printable(rec['topic'])} "
            f"{printable(rec['sender'])}: {what}")


def _events_prune(home, args):
    """Delete whole segments older than --older-than or beyond --max-mb (never the last one)."""
    import re

    from actors.eventlog import prune

    if args.older_than is None and args.max_mb is None:
        raise DctrlError("events prune: give --older-than (e.g. 30d) and/or --max-mb")
    older = None
    if args.older_than is not None:
        m = re.fullmatch(r"(\d+)([smhd])", args.older_than.strip())
        if not m:
            raise DctrlError(f"--older-than {args.older_than!r}: give an age like 30d, 12h, 90m or 3600s")
        older = time.time() - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    if args.max_mb is not None and args.max_mb < 0:
        raise DctrlError("--max-mb must not be negative")
    removed = prune(home.events_dir, older_than=older,
                    max_bytes=int(args.max_mb * 2**20) if args.max_mb is not None else None)
    if args.json:
        print(json.dumps({"removed": [{"segment": name, "first_seq": first} for name, first in removed]}))
    else:
        print(f"removed {len(removed)} segment(s)" + (f": {removed[0][0]} to {removed[-1][0]}" if removed else ""))


def register(sub):
    sp = command(sub, "events", cmd_events, "query, follow or prune the event log")
    es = sp.add_subparsers(dest="events_cmd", required=True, metavar="ACTION")
    e = es.add_parser("prune", help="delete whole old segments of the log (the event logger also does, "
                                    "by [event_logger] retention_days and max_mb)")
    e.add_argument("--older-than", metavar="AGE", help="segments last written more than AGE ago (30d, 12h, 90m)")
    e.add_argument("--max-mb", type=float, metavar="N", help="oldest segments until the log is at most N MiB")
    e.add_argument("--json", action="store_true", help="one JSON object")
    e.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for name, help in (("query", "print logged events, oldest first"), ("tail", "follow new events")):
        e = es.add_parser(name, help=help)
        e.add_argument("--topic", default="", help="topic prefix (whole segments)")
        e.add_argument("--exclude", action="append", default=[], metavar="PREFIX",
                       help="leave out topics under PREFIX (whole segments; repeatable), e.g. --exclude health "
                            "(heartbeats are most of the log)")
        e.add_argument("--json", action="store_true", help="one JSON object per line")
        e.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "query":
            e.add_argument("--since", help="ISO time (2026-11-25T10:00) or seconds ago (300s)")
            e.add_argument("--sender", help="only events from this identity")
            e.add_argument("--limit", type=int, help="stop after N events (after --exclude)")
