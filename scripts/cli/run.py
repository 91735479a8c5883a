"""`dctrl init`, `run`, `broker`, `up`, `supervisor-config`, `status`, `db`: a home and its processes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, printable
from scripts.cli.common import home as _home


def actor_class(name):
    """The class `dctrl run NAME` runs, from the actor registry (imported only now); a name the
    registry does not know, or an agent part, is a DctrlError saying what to run instead."""
    import importlib

    from actors import registry

    entry = registry.entry(name)
    if entry is None:
        raise DctrlError(f"unknown actor {name!r}; known: {', '.join(e.name for e in registry.server_actors())}")
    if entry.part != "server":
        raise DctrlError(f"{name} is a part of a vending machine's agent, not a server process: run "
                         f"`dctrl-agent --config agent.toml` (the demo's: dctrl up runs agent_vm1)")
    module, cls = entry.cls.split(":")
    return entry, getattr(importlib.import_module(module), cls)


def cmd_init(args):
    import embit  # noqa: F401  (the demo's receive account; without the server install, say so before writing)

    from scripts.cli.provision import init_home

    home = init_home(args.home or os.environ.get("DCTRL_HOME") or "var",
                    publish_endpoint=args.publish_endpoint, subscribe_endpoint=args.subscribe_endpoint,
                    database_url=args.database_url)
    from keys.registry import Registry

    names = Registry.load(home.registry_path).names()
    print(f"initialised {home.root}: identities {', '.join(names)}")
    print(f"start everything with: dctrl up --home {home.root}")


def cmd_run(args):
    from proto.errors import ConfigError
    from scripts.cli.supervise import EX_CONFIG, hold_run_lock

    try:  # a config error, or this actor already running for the home, or its port taken: one
        home = _home(args)  # line and EX_CONFIG, which supervisord does not restart forever
        entry, cls = actor_class(args.name)
        hold_run_lock(home, args.name)
        if entry.own_loop:  # the broker: not an Actor, it runs its own loop
            cls(home).run()
            return
        from actors.runtime import Runtime

        actor = cls(home)
        # what an actor gives its Runtime beyond itself (the Vault: its own token source)
        options = actor.runtime_options() if hasattr(actor, "runtime_options") else {}
        Runtime(actor, home.bus_settings(args.name), **options).run(handle_signals=True)
    except ConfigError as exc:
        print(f"dctrl: {exc}", file=sys.stderr)
        return EX_CONFIG


def cmd_db(args):
    from actors.db import connect, describe

    db = connect(_home(args).database_url)
    print(describe(db))
    db.close()


def cmd_supervisor_config(args):
    from scripts.cli.supervise import supervisor_config

    print(supervisor_config(_home(args), programs_only=args.programs_only, user=args.user), end="")


def cmd_up(args):
    from scripts.cli.supervise import run_supervisord

    run_supervisord(_home(args))


def cmd_status(args):
    from actors.runtime import Runtime
    from actors.registry import supervised
    from keys.registry import Registry
    from scripts.cli.tools import StatusCollector

    home = _home(args)
    wait = args.wait or home.config["runtime"]["heartbeat_interval"] + 1.5
    registry = Registry.load(home.registry_path)
    names = registry.names()
    revoked = {n for n in names if registry.revoked_up_to(n) >= registry.current(n).version}
    machines = {n for n in names if registry.role(n) == "machine"}
    # Every server actor and every registered machine must be ok, revoked ones aside.
    expected = set(args.expect.split(",")) if args.expect else set(supervised()) | (machines - revoked)
    deadline = time.monotonic() + (args.until or 0)
    while True:
        collector = StatusCollector(wait)
        Runtime(collector, home.bus_settings(args.as_name)).run()
        rows = collector.latest
        missing = sorted(n for n in expected if rows.get(n, {}).get("status") != "ok")
        if not missing or time.monotonic() >= deadline:
            break
    now = time.time()
    shown = set(rows) | expected | machines | {n for n in names if registry.role(n) == "actor"}
    if args.json:
        print(json.dumps({"actors": rows, "missing": missing, "down": sorted(shown - set(rows) - revoked),
                          "revoked": sorted(revoked & shown)}, sort_keys=True, default=str))
    else:
        print(f"{'NAME':<14} {'ROLE':<8} {'STATUS':<9} {'LAST SEEN':>9} {'VERSION':<8} {'TOKEN EXPIRES':>13} "
              f"{'PID':>7} {'UPTIME':>7}  DETAIL")
        for name in sorted(shown):
            r = rows.get(name)
            if r is None:
                role = registry.role(name) if name in names else "?"
                print(f"{printable(name):<14} {printable(role):<8} {'revoked' if name in revoked else 'down':<9} "
                      f"{'-':>9}")
                continue
            exp = f"{int(r['token_exp'] - now)} s" if r.get("token_exp") else "-"
            ago = f"{now - r['seen']:.1f} s ago"
            print(f"{printable(name):<14} {printable(r['role']):<8} {printable(r['status']):<9} {ago:>9} "
                  f"{printable(r['version']):<8} {exp:>13} {r['pid']:>7} {r['uptime']:>6}s  "
                  f"{printable(r.get('detail') or '')}".rstrip())
    return 1 if missing else 0


def register(sub):
    sp = command(sub, "init", cmd_init, "create a home: config, policy, keys for every server actor, admin and machine vm1")
    sp.add_argument("--publish-endpoint", help="broker XSUB endpoint (default tcp://127.0.0.1:7401)")
    sp.add_argument("--subscribe-endpoint", help="broker XPUB endpoint (default tcp://127.0.0.1:7402)")
    sp.add_argument("--database-url", help="peewee database URL (default: SQLite file in the home)")

    from actors.registry import server_actors  # (a table of names: imports nothing)

    names = ", ".join(e.name for e in server_actors())
    sp = command(sub, "run", cmd_run, f"run one server process in the foreground ({names})")
    sp.add_argument("name", help=names)
    command(sub, "broker", lambda a: cmd_run(argparse.Namespace(home=a.home, name="broker")),
        "run the broker (SubscriptionMgr) in the foreground")
    command(sub, "up", cmd_up, "run every server actor under supervisord in the foreground")
    sp = command(sub, "supervisor-config", cmd_supervisor_config,
                 "print the supervisord config (with --programs-only, for /etc/supervisor/conf.d)")
    sp.add_argument("--programs-only", action="store_true",
                    help="only the [program:*] sections: a system supervisord keeps its own log, pid file and socket")
    sp.add_argument("--user", help="run each program as this user (user=; for a supervisord running as root)")

    command(sub, "db", cmd_db, "open the configured database and say what it is")

    sp = command(sub, "status", cmd_status, "a table of every actor and machine from its heartbeats; exit 1 if an "
             "expected one is not ok")
    sp.add_argument("--as", dest="as_name", default="admin", help="identity to listen as (default admin)")
    sp.add_argument("--wait", type=float, help="seconds to listen (default heartbeat interval + 1.5)")
    sp.add_argument("--until", type=float, help="keep trying up to this many seconds until all are ok")
    sp.add_argument("--expect", help="comma-separated names that must be ok (default: every actor `dctrl up` "
                    "runs and every registered machine not revoked)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
