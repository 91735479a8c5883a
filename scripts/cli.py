"""`dctrl`: the operator's command line. `dctrl --help` and `dctrl CMD --help` explain each command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from proto.errors import DctrlError
from scripts.business_cli import printable  # every free-text column of a table goes through it

log = logging.getLogger("dctrl")

ACTORS = {
    # name -> "module:Class"; the broker is not an Actor but runs the same way.
    "vault": "actors.vault:Vault",
    "event_logger": "actors.event_logger:EventLogger",
    "chain_notifier": "actors.chain_notifier:ChainNotifier",
    "price_notifier": "actors.price_notifier:PriceNotifier",
    "business_data": "actors.business_data:BusinessData",
    "business_mgr": "actors.business_mgr:BusinessMgr",
}


def _home(args):
    from keys.home import Home

    return Home(args.home)


def _load(spec):
    import importlib

    mod, cls = spec.split(":")
    return getattr(importlib.import_module(mod), cls)


# -- init, run, up, status ---------------------------------------------------

def cmd_init(args):
    import embit  # noqa: F401  (the demo's receive account; without the server install, say so before writing)

    from keys.home import Home

    home = Home.init(args.home or os.environ.get("DCTRL_HOME") or "var",
                     publish_endpoint=args.publish_endpoint, subscribe_endpoint=args.subscribe_endpoint,
                     database_url=args.database_url)
    from keys.registry import Registry

    names = Registry.load(home.registry_path).names()
    print(f"initialised {home.root}: identities {', '.join(names)}")
    print(f"start everything with: dctrl up --home {home.root}")


def cmd_run(args):
    from proto.errors import ConfigError
    from scripts.supervise import EX_CONFIG, hold_run_lock

    try:  # a config error, or this actor already running for the home, or its port taken: one
        home = _home(args)  # line and EX_CONFIG, which supervisord does not restart forever
        if args.name != "broker" and args.name not in ACTORS:
            raise DctrlError(f"unknown actor {args.name!r}; known: broker, {', '.join(sorted(ACTORS))}")
        hold_run_lock(home, args.name)
        if args.name == "broker":
            from broker.broker import Broker

            Broker(home).run()
            return
        from actors.runtime import Runtime

        actor = _load(ACTORS[args.name])(home)
        options = actor.runtime_options() if args.name == "vault" else {}  # its own token source
        Runtime(actor, home.bus_settings(args.name), **options).run(handle_signals=True)
    except ConfigError as exc:
        print(f"dctrl: {exc}", file=sys.stderr)
        return EX_CONFIG


def cmd_agent_config(args):
    from machine_agent.config import render, write_folder

    home = _home(args)
    server = args.server
    if server is None and all("127.0.0.1" in home.config["bus"][k] or "localhost" in home.config["bus"][k]
                              for k in ("publish_endpoint", "subscribe_endpoint")):
        print("warning: the bus endpoints are on loopback, which a vending machine cannot reach: give "
              "--server ADDRESS (the server's LAN address) and set [bus] listen = \"0.0.0.0\" in config.toml "
              "so the broker listens there", file=sys.stderr)
    slots = _machine_slots(home, args.name)
    if not args.out:
        print(render(home, args.name, server=server, slots=slots), end="")
        return
    config = write_folder(home, args.name, args.out, server=server, slots=slots, force=args.force)
    print(f"wrote {config} and {config.parent / (args.name + '.key')} (0600); copy the folder to the machine "
          f"and run `dctrl-agent --config agent.toml` there")
    if any(not s.get("relay") for s in slots):
        print(f"fill in the relay of each slot marked FILL-IN in {config} first (and the [buttons])")
    elif not slots:
        print(f"BusinessData knows no slots of {args.name} (dctrl slots set {args.name} ...): "
              f"add [slots.N] sections to {config} by hand, or set the slots and run this again with --force")


def _machine_slots(home, name) -> list:
    """BusinessData's slots of machine ``name`` ([] where there is no database to read)."""
    try:
        from actors.business_data import slots
        from actors.db import connect
    except ImportError:  # an agent-only install
        return []
    try:
        database = connect(home.database_url)
    except DctrlError:
        return []
    try:
        return slots(database, name) if database.table_exists("business_slot") else []
    finally:
        database.close()


def cmd_db(args):
    from actors.db import connect, describe

    db = connect(_home(args).database_url)
    print(describe(db))
    db.close()


def cmd_supervisor_config(args):
    from scripts.supervise import supervisor_config

    print(supervisor_config(_home(args)), end="")


def cmd_up(args):
    from scripts.supervise import run_supervisord

    run_supervisord(_home(args))


def cmd_status(args):
    from actors.runtime import Runtime
    from keys.home import SUPERVISED_ACTORS
    from keys.registry import Registry
    from scripts.tools import StatusCollector

    home = _home(args)
    wait = args.wait or home.config["runtime"]["heartbeat_interval"] + 1.5
    registry = Registry.load(home.registry_path)
    names = registry.names()
    revoked = {n for n in names if registry.revoked_up_to(n) >= registry.current(n).version}
    machines = {n for n in names if registry.role(n) == "machine"}
    # Every server actor and every registered machine must be ok, revoked ones aside.
    expected = set(args.expect.split(",")) if args.expect else set(SUPERVISED_ACTORS) | (machines - revoked)
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


# -- keys --------------------------------------------------------------------

def cmd_keys(args):
    from keys.identity import IdentityKeys
    from keys.registry import Registry

    home = _home(args)
    registry = Registry.load(home.registry_path)
    if args.keys_cmd == "add":
        keys = IdentityKeys.generate(args.name)
        if home.key_file(args.name).exists():
            raise DctrlError(f"{home.key_file(args.name)} exists; use `dctrl keys rotate {args.name}`")
        registry.add(keys, args.role)
        keys.save(home.key_file(args.name))
        registry.save()
        print(f"added {args.name} ({args.role}), key v1, curve public {keys.curve_public.decode()}")
        print(f"secret key file: {home.key_file(args.name)} (0600)")
    elif args.keys_cmd == "list":
        now = time.time()
        rows = []
        for name in registry.names():
            for k in sorted(registry.keys_of(name), key=lambda k: -k.version):
                if k.version <= registry.revoked_up_to(name):
                    state = "revoked"
                elif k.not_after is None:
                    state = "current"
                elif k.not_after > now:
                    state = "grace"
                else:
                    state = "expired"
                rows.append({"name": name, "role": k.role, "version": k.version, "state": state,
                             "not_after": k.not_after, "created": k.created, "curve_public": k.curve.decode(),
                             "sign_public": k.sign.hex()})
        if args.json:
            print(json.dumps(rows, sort_keys=True))
            return
        print(f"{'NAME':<14} {'ROLE':<8} {'VERSION':>7} {'STATE':<22} CURVE PUBLIC KEY")
        for r in rows:
            state = f"grace, {int(r['not_after'] - now)} s left" if r["state"] == "grace" else r["state"]
            print(f"{printable(r['name']):<14} {printable(r['role']):<8} {r['version']:>7} {state:<22} "
                  f"{r['curve_public']}")
    elif args.keys_cmd == "rotate":
        grace = args.grace if args.grace is not None else home.config["vault"]["key_grace"]
        if args.name == "broker" and not args.offline:
            raise DctrlError(BROKER_ROTATION.format(home=home.root))
        new = registry.rotate(args.name, 0 if args.name == "broker" else grace)
        new.save(home.key_file(args.name))
        registry.save()
        if args.name == "broker":  # every client pins the broker's Curve key: the machines' configs too
            pinned = _repin_broker(home, new.curve_public.decode())
            print(f"rotated broker to key v{new.version}; its old key ended now")
            for path in pinned:
                print(f"  updated broker_public_key in {path}")
            print("copy each machine's agent.toml (or just its new broker_public_key) to the machine, "
                  "then start the network and the agents again")
            return
        print(f"rotated {args.name} to key v{new.version}; older keys stay valid for {grace} s")
        if registry.role(args.name) == "machine":
            _rotated_machine_key(home, args.name)
    elif args.keys_cmd == "revoke":
        upto = registry.revoke(args.name)
        registry.save()
        print(f"revoked {args.name} (key versions up to {upto}); the broker cuts it off within seconds")
        print(f"to re-admit it later: dctrl keys rotate {args.name}")


BROKER_ROTATION = """refusing to rotate the broker's key while the network may run.
Every client pins the broker's public key (the machines in their agent.toml), and the
broker loads its key only at start: a rotation under a running network cuts every new
connection. The procedure:
  1. stop the network (Ctrl-C `dctrl up`, or `supervisorctl stop all`) and every agent
  2. dctrl keys rotate broker --offline --home {home}
     (rotates, ends the old key now, and rewrites broker_public_key in every agent.toml
     under {home}/agents)
  3. give each machine its new broker_public_key (copy its agent.toml, or
     `dctrl agent-config NAME --out DIR` and copy it), then start the network and the agents"""


def _rotated_machine_key(home, name):
    """Say where a machine's new key goes; a machine whose folder is in the home (the demo's
    simulated vm1 in agents/vm1/) gets it there at once (its agent reloads it)."""
    import shutil

    local = home.root / "agents" / name / f"{name}.key"
    if local.exists():
        tmp = local.with_name(f".{local.name}.tmp")
        shutil.copyfile(home.key_file(name), tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, local)
        print(f"copied the new key to {local}: the agent there reloads it")
    else:
        print(f"copy {home.key_file(name)} to the machine as {name}.key, beside its agent.toml "
              f"(key_file); its agent reloads it")


def _repin_broker(home, curve_public: str) -> list:
    """Rewrite ``broker_public_key`` in the agent configs kept in the home (the demo's)."""
    import re

    from keys.files import atomic_write

    changed = []
    for path in sorted((home.root / "agents").glob("*/agent.toml")):
        text = path.read_text()
        new = re.sub(r'(?m)^broker_public_key\s*=\s*"[^"]*"', f'broker_public_key = "{curve_public}"', text)
        if new != text:
            atomic_write(path, new.encode(), mode=path.stat().st_mode & 0o777)
            changed.append(path)
    return changed


# -- pub / sub ---------------------------------------------------------------

def cmd_pub(args):
    from actors.runtime import Runtime
    from scripts.tools import PublishOnce

    try:
        body = json.loads(args.body)
    except json.JSONDecodeError as exc:
        raise DctrlError(f"JSON_BODY is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DctrlError("JSON_BODY must be a JSON object")
    from proto.topics import REGISTRY

    schema = REGISTRY.schema_for(args.topic)
    if schema is None:
        raise DctrlError(f"no topic family for {args.topic!r}; see docs/protocol.md")
    body = bytes_from_hex(schema, body)
    schema.check(body)
    home = _home(args)
    actor = PublishOnce(args.topic, body)
    rt = Runtime(actor, home.bus_settings(args.as_name))
    _with_deadline(rt, args.timeout)
    rt.run(handle_signals=True)
    if not actor.sent:
        raise DctrlError(f"not published within {args.timeout} s: no token from the Vault (is the bus up?)")
    print(f"published {args.topic} as {args.as_name}")


HEX_PREFIX = "hex:"


def bytes_from_hex(node, value, path="body"):
    """JSON has no bytes: where the topic's schema has a bytes field (a command's ``id``, a
    token), a string there is hex (``"00ff..."`` or ``"hex:00ff..."``); in a free-form part
    (``debug.*`` bodies) a string is bytes only with the ``hex:`` prefix. Everything else is
    left as it is, for the schema to judge."""
    from proto.schema import Any, Bytes, List, Map, Opt

    if isinstance(node, Opt):
        node = node.node
    if isinstance(node, Bytes) and isinstance(value, str):
        return _hex(value, path)
    if isinstance(node, Map) and isinstance(value, dict):
        return {k: bytes_from_hex(node.fields.get(k, node.extra), v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(node, List) and isinstance(value, list):
        return [bytes_from_hex(node.item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(node, Any):
        if isinstance(value, str) and value.startswith(HEX_PREFIX):
            return _hex(value, path)
        if isinstance(value, dict):
            return {k: bytes_from_hex(node, v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [bytes_from_hex(node, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _hex(text, path) -> bytes:
    digits = text[len(HEX_PREFIX):] if text.startswith(HEX_PREFIX) else text
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise DctrlError(f"{path}: bytes are given as hex (\"00ff...\" or \"hex:00ff...\"), not {text[:40]!r}") \
            from None


def cmd_sub(args):
    from actors.runtime import Runtime
    from scripts.tools import Subscriber

    home = _home(args)
    reader_gone = []

    def sink(line):
        if reader_gone:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:  # `dctrl sub ... | head -1`: the reader has had enough
            reader_gone.append(True)
            rt.stop()

    actor = Subscriber(args.prefix, count=args.count, timeout=args.timeout, sink=sink, json_lines=args.json)
    rt = Runtime(actor, home.bus_settings(args.as_name))
    rt.add_handler(args.prefix, actor.deliver, raw=True)
    rt.run(handle_signals=True)
    if reader_gone:
        raise BrokenPipeError  # (main ends quietly)
    return 0 if (not args.count or actor.seen >= args.count) else 1


def _with_deadline(rt, seconds):
    import threading

    t = threading.Timer(seconds, rt.stop)
    t.daemon = True
    t.start()


# -- chain -------------------------------------------------------------------

def cmd_chain(args):
    from actors.runtime import Runtime
    from scripts.tools import CommandOnce, StatusCollector

    home = _home(args)
    if args.chain_cmd == "watch":
        actor = CommandOnce("cmd.chain.watch", {"address": args.address, "label": args.label},
                            "chain.watch.ack", timeout=args.timeout)
        Runtime(actor, home.bus_settings(args.as_name)).run(handle_signals=True)
        if actor.ack is None:
            raise DctrlError(f"no answer from chain_notifier within {args.timeout} s (is it running?)")
        if actor.ack["status"] != "watching":
            raise DctrlError(f"refused: {actor.ack['reason']}")
        print(f"watching {args.address}" + (f" ({args.label})" if args.label else ""))
        return
    collector = StatusCollector(args.wait or home.config["runtime"]["heartbeat_interval"] + 1.5)
    Runtime(collector, home.bus_settings(args.as_name)).run(handle_signals=True)
    beat = collector.latest.get("chain_notifier")
    if beat is None:
        raise DctrlError("no heartbeat from chain_notifier (is it running?)")
    gap = _address_gap(home)
    if args.json:
        print(json.dumps({**beat, "invoice_addresses": gap}, sort_keys=True, default=str))
    else:
        print(f"chain_notifier {beat['status']}: {beat['detail']}")
        if gap is not None:
            used = "none used yet" if gap["last_used"] is None else f"last used /0/{gap['last_used']}"
            print(f"invoice addresses: {gap['issued']} issued, next /0/{gap['next']}, {used}, "
                  f"{gap['gap']} unused in a row (a restoring wallet scans {gap['gap_limit']})")
            if gap["gap"] > gap["gap_limit"]:
                print(f"  restore with a gap limit of at least {gap['gap']} to find every payment")
    return 0 if beat["status"] == "ok" else 1


def _address_gap(home) -> dict | None:
    """The invoice address book's gap (issue 9.3), or None where there is no database to read."""
    from actors.business_mgr import DEFAULTS, address_gap
    from actors.db import connect

    try:
        database = connect(home.database_url)
    except DctrlError:
        return None
    try:
        gap_limit = int(home.config.get("business", {}).get("gap_limit", DEFAULTS["gap_limit"]))
        return address_gap(database, "invoices", gap_limit)
    finally:
        database.close()


# -- events ------------------------------------------------------------------

def cmd_events(args):
    from actors.event_logger import query, tail

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


# -- vault secrets -----------------------------------------------------------

def cmd_vault(args):
    from actors.vault import open_store, rekey

    home = _home(args)
    if args.vault_cmd == "rekey":
        if args.to == "passphrase":
            phrase = _read_value("new passphrase").decode()
            if len(phrase) < 12:
                raise DctrlError("passphrase refused: use at least 12 characters")
        store = rekey(home, passphrase=phrase if args.to == "passphrase" else None)
        print(f"re-encrypted {len(store.names())} secrets under a new "
              f"{'passphrase (Argon2id)' if args.to == 'passphrase' else 'key file'}; restart the vault"
              + (" with $DCTRL_VAULT_PASSPHRASE or [vault] passphrase_file set" if args.to == "passphrase" else ""))
        return
    store = open_store(home)
    if args.vault_cmd == "set-secret":
        value = _read_value(f"value of {args.name}")
        if not value:
            raise DctrlError("empty secret refused")
        store.set(args.name, value)
        print(f"stored secret {args.name} ({len(value)} bytes); readers come from [secrets] in policy.toml")
    elif args.vault_cmd == "list":
        names = sorted(store.names())
        if args.json:
            print(json.dumps(names))
            return
        for name in names:
            print(name)


def _read_value(prompt) -> bytes:
    """A secret from stdin (piped) or a no-echo prompt; never from the command line."""
    if not sys.stdin.isatty():
        return sys.stdin.buffer.read().rstrip(b"\n")
    import getpass

    return getpass.getpass(f"{prompt}: ").encode()


def cmd_bench(args):
    if args.suite == "chain":
        from scripts.bench_chain import main as chain_main

        return chain_main(args)
    if args.suite == "vend":
        from scripts.bench_vend import main as vend_main

        return vend_main(args)
    if args.suite == "faults":
        from scripts.bench_faults import main as faults_main

        return faults_main(args)
    from scripts.bench import main as bench_main

    return bench_main(args)


# -- parser ------------------------------------------------------------------

def _grace_seconds(value):
    """--grace: 0 or more seconds (a negative grace would cut the running process off at once)."""
    if int(value) < 0:
        raise argparse.ArgumentTypeError(f"the grace must be 0 or more seconds, not {value}")
    return int(value)


def build_parser():
    p = argparse.ArgumentParser(prog="dctrl", description=(
        "dctrl: DCTRL's services network. Every command takes --home, before or after the command "
        "(default $DCTRL_HOME, else ./var); every listing takes --json."))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--home", default=None, help=HOME_HELP)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name, fn, help):
        sp = sub.add_parser(name, help=help, description=help)
        # SUPPRESS: absent here, the value given before the command (or its default) stands.
        sp.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
        sp.set_defaults(fn=fn)
        return sp

    sp = cmd("init", cmd_init, "create a home: config, policy, keys for every server actor, admin and machine vm1")
    sp.add_argument("--publish-endpoint", help="broker XSUB endpoint (default tcp://127.0.0.1:7401)")
    sp.add_argument("--subscribe-endpoint", help="broker XPUB endpoint (default tcp://127.0.0.1:7402)")
    sp.add_argument("--database-url", help="peewee database URL (default: SQLite file in the home)")

    sp = cmd("run", cmd_run, "run one server process in the foreground (broker, vault, event_logger, chain_notifier, price_notifier, business_data)")
    sp.add_argument("name", help=f"broker, {', '.join(sorted(ACTORS))}")
    cmd("broker", lambda a: cmd_run(argparse.Namespace(home=a.home, name="broker")),
        "run the broker (SubscriptionMgr) in the foreground")
    cmd("up", cmd_up, "run every server actor under supervisord in the foreground")
    cmd("supervisor-config", cmd_supervisor_config, "print the supervisord config (for /etc/supervisor/conf.d)")

    cmd("db", cmd_db, "open the configured database and say what it is")

    sp = cmd("agent-config", cmd_agent_config, "config (and key file) for a vending machine's dctrl-agent")
    sp.add_argument("name", help="a machine identity (dctrl keys add NAME --role machine)")
    sp.add_argument("--out", help="write DIR/agent.toml and DIR/NAME.key instead of printing the config")
    sp.add_argument("--server", help="the address the machine reaches the broker at (the server's LAN address; "
                    "the endpoints' ports are kept)")
    sp.add_argument("--force", action="store_true", help="replace an existing DIR/agent.toml")

    sp = cmd("status", cmd_status, "a table of every actor and machine from its heartbeats; exit 1 if an "
             "expected one is not ok")
    sp.add_argument("--as", dest="as_name", default="admin", help="identity to listen as (default admin)")
    sp.add_argument("--wait", type=float, help="seconds to listen (default heartbeat interval + 1.5)")
    sp.add_argument("--until", type=float, help="keep trying up to this many seconds until all are ok")
    sp.add_argument("--expect", help="comma-separated names that must be ok (default: every actor `dctrl up` "
                    "runs and every registered machine not revoked)")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)

    sp = cmd("keys", cmd_keys, "manage identities and their keys")
    ks = sp.add_subparsers(dest="keys_cmd", required=True, metavar="ACTION")
    k = ks.add_parser("add", help="new identity with Curve and Ed25519 keys")
    k.add_argument("name", help="the identity (letters, digits, _ and -)")
    k.add_argument("--role", required=True, choices=("actor", "machine", "admin"),
                   help="its grants in policy.toml: [role.ROLE]")
    k = ks.add_parser("list", help="identities, key versions and their state")
    k.add_argument("--json", action="store_true", help=JSON_HELP)
    k = ks.add_parser("rotate", help="new keys valid at once; old keys accepted for a grace period")
    k.add_argument("name", help="the identity")
    k.add_argument("--grace", type=_grace_seconds, help="seconds the old keys stay valid (default [vault] key_grace)")
    k.add_argument("--offline", action="store_true",
                   help="the broker only, with the network stopped: rotate and re-pin the home's agents")
    k = ks.add_parser("revoke", help="refuse every key of NAME; connected peers are cut off")
    k.add_argument("name", help="the identity")
    for k in ks.choices.values():
        k.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sp = cmd("pub", cmd_pub, "publish one signed message as an identity (debugging a policy, or a command "
                             "by hand)")
    sp.description += (
        ". The body is checked against the topic's schema (docs/protocol.md). JSON has no bytes: give a bytes "
        'field as hex, "00ff..." or "hex:00ff..." (a command\'s 16-byte id: 32 hex digits); in free-form '
        'bodies (debug.*) only "hex:..." strings become bytes. Example: dctrl pub cmd.chain.watch '
        '\'{"id": "hex:000102030405060708090a0b0c0d0e0f", "expires": 1900000000, "address": "bcrt1q...", '
        '"label": null}\' --as admin')
    sp.add_argument("topic", help="the topic, e.g. debug.hello or cmd.chain.watch")
    sp.add_argument("body", metavar="JSON_BODY", help='a JSON object; bytes fields as hex ("hex:00ff...")')
    sp.add_argument("--as", dest="as_name", required=True, help="identity to publish as")
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a token (default 10)")

    sp = cmd("sub", cmd_sub, "print every message under PREFIX that reaches an identity, with its verdict")
    sp.add_argument("prefix", help="topic prefix, whole segments (\"\" for everything the identity may see)")
    sp.add_argument("--as", dest="as_name", required=True, help="identity to subscribe as")
    sp.add_argument("--count", type=int, help="stop after N messages (exit 1 if fewer arrived)")
    sp.add_argument("--timeout", type=float, help="stop after S seconds")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")

    sp = cmd("chain", cmd_chain, "the ChainNotifier: watch addresses, see backend, tip and lag")
    cs = sp.add_subparsers(dest="chain_cmd", required=True, metavar="ACTION")
    c = cs.add_parser("watch", help="watch an address for payments (a command acknowledged by chain_notifier)")
    c.add_argument("address", help="a bitcoin address of the configured network")
    c.add_argument("--label", help="a note carried in every event for this address")
    c.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the ack (default 15)")
    c = cs.add_parser("status", help="backend, tip, lag behind the node, watched addresses")
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--wait", type=float, help="seconds to listen for its heartbeat")
    for c in cs.choices.values():
        c.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        c.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")

    from scripts.business_cli import add_commands as add_business_commands

    add_business_commands(cmd)  # machines add|list, slots set|list, policy show|set
    from scripts.invoices_cli import add_commands as add_invoice_commands

    add_invoice_commands(cmd)  # invoices list|show

    sp = cmd("events", cmd_events, "query, follow or prune the event log")
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

    sp = cmd("vault", cmd_vault, "the Vault's encrypted secrets")
    vs = sp.add_subparsers(dest="vault_cmd", required=True, metavar="ACTION")
    v = vs.add_parser("set-secret", help="store a secret (value from stdin or a prompt)")
    v.add_argument("name", help="the secret's name, as policy.toml's [secrets] names it")
    v = vs.add_parser("list", help="secret names")
    v.add_argument("--json", action="store_true", help=JSON_HELP)
    v = vs.add_parser("rekey", help="re-encrypt the secrets under an Argon2id passphrase or a new key file")
    v.add_argument("--to", choices=("passphrase", "key-file"), required=True,
                   help="passphrase: read from stdin or a prompt; the vault then needs $DCTRL_VAULT_PASSPHRASE "
                        "or [vault] passphrase_file")
    for v in vs.choices.values():
        v.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    from scripts.price_cli import add_commands as add_price_commands

    sp = cmd("sim", None, "simulators for the demo and the tests (a bitcoind chain, exchange price APIs)")
    sim_sub = sp.add_subparsers(dest="sim_cmd", required=True, metavar="SIM")
    add_price_commands(cmd, sim_sub)
    from scripts.chainsim.cli import add_chain_commands  # (not scripts.sim_chain: it imports embit)

    add_chain_commands(sim_sub)  # sim chain|address|pay|mine|replace|reorg|drop-zmq|stop-rpc
    __import__("scripts.sim_machine").sim_machine.add_machine_commands(sim_sub)  # sim press|coin|door|drop|jam|pins

    sp = cmd("bench", cmd_bench, "benchmarks; prints one JSON object")
    sp.add_argument("suite", nargs="?", default="bus", choices=("bus", "chain", "vend", "faults"),
                    help="bus: the broker against zmq.proxy; chain: payment detection and catch-up; "
                         "vend: payment to relay pin end to end, and the agent's memory and start-up; "
                         "faults: purchases under random kill -9 and SIGSTOP, counting double, lost and "
                         "unpaid vends, unrecorded payments and processes that did not come back")
    sp.add_argument("--seeds", default="3", metavar="N",
                    help="faults: seeds 0..N-1 (or A-B, or A,B,...), one scenario each (default 3)")
    sp.add_argument("--json", action="store_true", help="(always JSON; accepted for clarity)")
    sp.add_argument("--quick", action="store_true", help="finish in under 30 s (faults: about 25 s a seed)")
    _describe(p)
    return p


HOME_HELP = "dctrl home (default $DCTRL_HOME, else ./var); before or after the command"
JSON_HELP = "one JSON document instead of the table"


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
    quiet = args.cmd not in ("run", "broker", "up") and not (
        args.cmd == "sim" and args.sim_cmd in ("chain", "exchanges"))
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
EXTRAS = {**dict.fromkeys(("embit", "peewee", "psycopg2", "bottle", "bitcoinrpc", "supervisor"), "server"),
          **dict.fromkeys(("gpiozero", "smbus2"), "agent")}


def _command(args) -> str:
    """``invoices list`` from the parsed arguments, for messages."""
    action = getattr(args, f"{args.cmd}_cmd", None)
    return f"{args.cmd} {action}" if action else args.cmd


if __name__ == "__main__":
    sys.exit(main())
