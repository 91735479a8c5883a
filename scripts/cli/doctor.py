"""`dctrl doctor`: checks a home and its running network, one line per check, with the fix.

Each check is ``ok``, ``warn`` (works, but look at it) or ``FAIL`` (something is broken or about
to break); every line that is not ok says how to fix it. The exit code is 1 if a check FAILed.

- **file modes**: the home is 0700, every secret file (keys, the Vault's files, config.toml,
  which may hold the database's password, the SQLite database) 0600, all of it owned by the
  user running dctrl (the key loader refuses a key file others can read); in ``log/``, root's
  files too (a system supervisord opens its programs' logs as root).
- **clock**: synchronised by NTP (``timedatectl``, else the kernel's adjtimex(2), else
  systemd-timesyncd's flag file); unknown is a warning.
- **disk**: free space on the home's filesystem (warn under 1 GiB or 10 %, FAIL under 100 MiB).
- **database**: every table of every actor's models exists with all its columns.
- **simulators**: simulated sources configured (a FAIL on ``[chain] network = "mainnet"``).
- **broker**: a CURVE handshake, as ``admin``, with both bus endpoints within a deadline.
- **keys**: keys in their grace period after a rotation, and who still runs one.
- **tokens**: every process's Vault token, from its heartbeat (renewed at half-life).
- **api tokens**: the report server's API tokens (`dctrl server token list`): one that ends
  within 7 days is a warning naming it.

The last two listen to the bus for the heartbeats (``[runtime] heartbeat_interval`` + 1.5 s);
``--offline`` skips the bus. Heavy imports are inside the functions.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import asdict, dataclass, field

from scripts.cli.common import JSON_HELP, command, printable

OK, WARN, FAIL = "ok", "warn", "FAIL"
GIB, MIB = 1 << 30, 1 << 20
SHOWN = 4  # files named on a line; the rest counted (all of them in --json)


@dataclass
class Check:
    name: str
    status: str
    summary: str
    fix: str | None = None
    details: list = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<12} {printable(self.summary)}"
        return text + (f"; fix: {printable(self.fix)}" if self.fix and self.status != OK else "")


def _named(paths, shown=SHOWN) -> str:
    names = [str(p) for p in paths]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# -- file modes ---------------------------------------------------------------------

def secret_files(home) -> list:
    """The files of ``home`` that must be 0600: anyone reading one can act as an identity, read
    the Vault's secrets, the database's password or the members' personal data."""
    root = home.root
    found = [*root.glob("keys/*.key"), *root.glob("vault/*"), *root.glob("demo/*.key"),
             *root.glob("agents/*/*.key"), root / "config.toml",
             *root.glob("dctrl.sqlite3*")]
    passphrase = home.config["vault"].get("passphrase_file")
    if passphrase:
        found.append(root / passphrase)  # (an absolute path stays itself)
    return sorted({p for p in found if p.is_file() and not p.is_symlink()})


def check_files(home) -> Check:
    import pwd

    uid = os.geteuid()
    root = home.root
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    bad_root = stat.S_IMODE(os.stat(root).st_mode) & 0o077
    secrets = secret_files(home)
    loose = [p for p in secrets if stat.S_IMODE(os.stat(p).st_mode) & 0o077]
    foreign, wide = [], []  # owned by someone else; other files group/other may read
    logs = str(home.log_dir)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # (a file an actor just replaced)
            if st.st_uid != uid and not (st.st_uid == 0 and (top == logs or top.startswith(logs + os.sep))):
                foreign.append(path)  # (a system supervisord, root, writes the programs' logs)
            elif not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                wide.append(path)
    loose_names = {str(p) for p in loose}
    wide = [p for p in wide if p not in loose_names]
    details = [{"path": str(root), "mode": f"{stat.S_IMODE(os.stat(root).st_mode):04o}", "want": "0700"}] if bad_root else []
    details += [{"path": str(p), "mode": f"{stat.S_IMODE(os.stat(p).st_mode):04o}", "want": "0600"} for p in loose]
    details += [{"path": p, "owner": os.lstat(p).st_uid, "want": uid} for p in foreign]
    problems, fixes = [], []
    if bad_root:
        problems.append(f"{root} is {stat.S_IMODE(os.stat(root).st_mode):04o} (must be 0700)")
        fixes.append(f"chmod 700 {root}")
    if loose:
        problems.append(f"{_named(loose)} {'is' if len(loose) == 1 else 'are'} readable by others (must be 0600)")
        fixes.append("chmod 600 " + " ".join(str(p) for p in loose))
    if foreign:
        problems.append(f"{_named(foreign)} not owned by {user}")
        fixes.append(f"chown -R {user} {root} (as root)")
    if problems:
        return Check("file modes", FAIL, "; ".join(problems), " && ".join(fixes), details)
    if wide:
        details = [{"path": p, "mode": f"{stat.S_IMODE(os.lstat(p).st_mode):04o}"} for p in wide]
        return Check("file modes", WARN, f"{_named(wide)}: group or others have access (the 0700 home "
                     f"keeps them out, but dctrl makes everything private)", f"chmod -R go-rwx {root}", details)
    return Check("file modes", OK, f"{root} 0700, {len(secrets)} secret files 0600, all owned by {user}")


# -- clock ----------------------------------------------------------------------------

TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


def clock_synchronised() -> tuple[bool | None, str]:
    """(synchronised, how it was told): None when nothing could say."""
    import shutil
    import subprocess

    exe = shutil.which("timedatectl")
    if exe:
        try:
            out = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                 text=True, timeout=5)
            answer = out.stdout.strip()
            if out.returncode == 0 and answer in ("yes", "no"):
                return answer == "yes", "timedatectl NTPSynchronized"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        from machine_agent.clock import TIME_ERROR, is_synchronised, read_timex

        state, _ = read_timex()
        if is_synchronised(state) or state == TIME_ERROR:
            return is_synchronised(state), "the kernel (adjtimex)"
    except OSError:
        pass
    if os.path.exists(TIMESYNC_FLAG):
        return True, TIMESYNC_FLAG
    return None, "neither timedatectl, adjtimex nor systemd-timesyncd answered"


def check_clock() -> Check:
    synced, how = clock_synchronised()
    fix = ("run an NTP client: `timedatectl set-ntp true` (systemd-timesyncd) or install chrony; "
           "`timedatectl timesync-status` says whom it asks")
    if synced:
        return Check("clock", OK, f"synchronised ({how})")
    if synced is None:
        return Check("clock", WARN, f"unknown: {how}", fix)
    return Check("clock", FAIL, f"not synchronised ({how}): token and invoice expiries are judged by this clock",
                 fix)


# -- disk -----------------------------------------------------------------------------

def check_disk(home) -> Check:
    import shutil

    usage = shutil.disk_usage(home.root)
    free, pct = usage.free, 100 * usage.free / usage.total if usage.total else 0.0
    summary = f"{free / GIB:.1f} GiB free ({pct:.0f} %) on the filesystem of {home.root}"
    details = [{"free": free, "total": usage.total}]
    fix = (f"free space there, or lower [event_logger] max_mb / retention_days and `dctrl events prune` "
           f"(the event log keeps up to {home.config['event_logger']['max_mb']} MB)")
    if free < 100 * MIB:
        return Check("disk", FAIL, summary, fix, details)
    if free < GIB or pct < 10:
        return Check("disk", WARN, summary + " (under 1 GiB or 10 %)", fix, details)
    return Check("disk", OK, summary, details=details)


# -- database -------------------------------------------------------------------------

def expected_schema(database) -> list:
    """(actor, model, columns it adds at start) for every table an actor makes at start, as its
    setup does (each actor's ``ensure_tables`` call): its models' TABLES and the tables made
    from a model factory (outboxes, address books)."""
    from actors.business_data import models as business_data
    from actors.business_mgr import models as business_mgr
    from actors.chain.addresses import AddressBook
    from actors.chain_notifier import models as chain_notifier
    from actors.member_data import models as member_data
    from actors.member_mail import models as member_mail
    from actors.outbox import Outbox
    from actors.payout_mgr import ledger
    from actors.payout_mgr import models as payout_mgr
    from actors.reporter import models as reporter

    def outbox(name):
        return Outbox.model_for(database, name)

    actors = {
        "business_data": ([*business_data.TABLES, outbox("business_outbox")],
                          {business_data.BusinessSlot: ["sticker_address", "stock_set"]}),
        "business_mgr": ([*business_mgr.TABLES, outbox("sales_outbox"), AddressBook.model(database, "sales_address")],
                         {business_mgr.SalesPayment: ["replaced_by"], business_mgr.SalesWatch: ["created"]}),
        "chain_notifier": (chain_notifier.TABLES,
                           {chain_notifier.ChainOutput: ["seen_at", "replaced_by"],
                            chain_notifier.ChainBlock: ["processed_at"],
                            chain_notifier.ChainWatched: ["rescanned_since"]}),
        "member_data": ([*member_data.TABLES, outbox("member_outbox")],
                        {**member_data.ADD_COLUMNS, **member_data.MAIL_OPT_OUT_COLUMNS}),
        "member_mail": (member_mail.TABLES, {}),
        "reporter": ([*reporter.TABLES, outbox("report_outbox")], {}),
        "payout_mgr": ([*payout_mgr.TABLES, *ledger.MODELS, outbox("payout_outbox")],
                       {**payout_mgr.ADDED_COLUMNS, **ledger.ADDED_COLUMNS}),
    }
    return [(actor, model, [model._meta.fields[f].column_name for f in added.get(model, ())])
            for actor, (models, added) in actors.items() for model in models]


def schema_problems(database) -> tuple[list, int]:
    """([{table, actor, missing: None (the table) or [columns], added_at_start}], tables expected)."""
    tables = set(database.get_tables())
    expected = expected_schema(database)
    problems = []
    for actor, model, added in expected:
        table = model._meta.table_name
        if table not in tables:
            problems.append({"actor": actor, "table": table, "missing": None, "added_at_start": True})
            continue
        have = {c.name for c in database.get_columns(table)}
        missing = [f.column_name for f in model._meta.sorted_fields if f.column_name not in have]
        if missing:
            problems.append({"actor": actor, "table": table, "missing": missing,
                             "added_at_start": all(c in added for c in missing)})
    return problems, len(expected)


def check_database(home) -> Check:
    from actors.db import connect, describe, redact
    from proto.errors import ConfigError

    try:
        database = connect(home.database_url)
    except ConfigError as exc:
        return Check("database", FAIL, str(exc), f"check [database] url in {home.root / 'config.toml'} and that "
                     f"the server runs (`dctrl db` says what it opens)")
    try:
        what = describe(database)
        problems, n = schema_problems(database)
    finally:
        database.close()
    if not problems:
        return Check("database", OK, f"{what}: all {n} tables with their columns")
    if len(problems) == n:
        return Check("database", WARN, f"{what}: no tables yet ({redact(home.database_url)})",
                     "the actors make their tables at their first start: `dctrl up`", problems)
    words = [f"table {p['table']} missing" if p["missing"] is None
             else f"{p['table']} lacks column{'s' if len(p['missing']) > 1 else ''} {', '.join(p['missing'])}"
             for p in problems]
    restart = sorted({p["actor"] for p in problems if p["added_at_start"]})
    by_hand = sorted({p["table"] for p in problems if not p["added_at_start"]})
    fixes = []
    if restart:
        fixes.append(f"start {', '.join(restart)} (`supervisorctl restart NAME`, or `dctrl up`): each makes its "
                     f"missing tables and the columns newer versions added at start")
    if by_hand:
        fixes.append(f"{', '.join(by_hand)}: columns no version adds at start (a database of another dctrl "
                     f"version?): restore a backup of this version's database (`dctrl restore`) or add them by hand")
    return Check("database", FAIL, f"{what}: {'; '.join(words)}", "; ".join(fixes), problems)


# -- simulators -----------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def simulated_sources(home) -> list[str]:
    """What in config.toml points at a simulator (`dctrl sim chain|exchanges|smtp`)."""
    from urllib.parse import urlsplit

    cfg, demo = home.config, home.config["demo"]
    out = []
    if demo["simulators"]:
        out.append("[demo] simulators = true (`dctrl up` runs the chain, exchange and SMTP simulators)")

    def on_port(url, port):
        try:
            split = urlsplit(url)
            return split.hostname in LOOPBACK and split.port == port
        except ValueError:
            return False

    for key, table in sorted((cfg.get("chain") or {}).items()):
        if isinstance(table, dict) and key.startswith("bitcoind"):
            if on_port(table.get("rpc_url", ""), demo["chain_rpc_port"]) or \
                    str(table.get("cookie_file", "")).startswith("sim/"):
                out.append(f"[chain.{key}] is the chain simulator ({table.get('rpc_url')})")
    sources = ((cfg.get("price") or {}).get("sources") or {})
    sim = sorted(k for k, url in sources.items() if url and on_port(url, demo["exchanges_port"]))
    if sim:
        out.append(f"[price.sources] {', '.join(sim)} are the exchange simulator")
    mail = cfg.get("member_mail") or {}
    if mail.get("smtp_host") in LOOPBACK and mail.get("smtp_port") == demo["smtp_port"]:
        out.append(f"[member_mail] sends to the SMTP simulator (port {demo['smtp_port']})")
    return out


def check_simulators(home) -> Check:
    network = (home.config.get("chain") or {}).get("network", "mainnet")
    found = simulated_sources(home)
    if not found:
        return Check("simulators", OK, f"none configured (chain network {network})")
    fix = (f"in {home.root / 'config.toml'}: [demo] simulators = false and real [chain], [price.sources] and "
           f"[member_mail] servers (see the comments there and docs/deployment.md)")
    if network == "mainnet":
        return Check("simulators", FAIL, f"on mainnet, simulated sources: {'; '.join(found)}", fix, found)
    return Check("simulators", WARN, f"simulated sources (a demo home, chain network {network}): "
                 f"{'; '.join(found)}", fix, found)


# -- the bus --------------------------------------------------------------------------

def handshake(home, as_name: str, timeout: float) -> dict:
    """A CURVE handshake as ``as_name`` with each of the broker's endpoints (a PUB socket to its
    XSUB, a SUB socket to its XPUB), as every process makes; ``{endpoint: (ok, what, seconds)}``.
    The broker's ZAP handler admits only registry keys, so a success means the broker runs,
    pins the key we pin and admits ``as_name``."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from keys.identity import IdentityKeys
    from keys.registry import Registry

    keys = IdentityKeys.load(home.key_file(as_name))
    broker = Registry.load(home.registry_path).current("broker").curve
    bus = home.config["bus"]
    events = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
              | zmq.EVENT_DISCONNECTED)
    ctx = zmq.Context()
    sockets, monitors, results, last = [], {}, {}, {}
    poller = zmq.Poller()
    start = time.monotonic()
    try:
        for n, (kind, key) in enumerate(((zmq.PUB, "publish_endpoint"), (zmq.SUB, "subscribe_endpoint"))):
            s = ctx.socket(kind)
            s.linger = 0
            s.curve_serverkey, s.curve_publickey, s.curve_secretkey = broker, keys.curve_public, keys.curve_secret
            mon = s.get_monitor_socket(events=events, addr=f"inproc://dctrl-doctor-{os.getpid()}-{n}")
            sockets.append(s)
            monitors[mon] = bus[key]
            poller.register(mon, zmq.POLLIN)
            s.connect(bus[key])
        deadline = start + timeout
        while len(results) < len(monitors):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for mon, _ in poller.poll(left * 1000):
                endpoint = monitors[mon]
                event = recv_monitor_message(mon)["event"]
                if endpoint in results:
                    continue
                took = time.monotonic() - start
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    results[endpoint] = (True, "handshake", took)
                elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    results[endpoint] = (False, f"the broker refused {as_name}'s key (revoked, or not in the "
                                         f"registry it loaded)", took)
                elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                    results[endpoint] = (False, "the handshake failed: the broker's key is not the one in "
                                         "keys/registry.json (rotated while it ran?)", took)
                else:
                    last[endpoint] = event
        for endpoint in monitors.values():
            if endpoint not in results:
                seen = last.get(endpoint)
                why = ("nothing listens there (connection refused)" if seen == zmq.EVENT_CONNECT_RETRIED
                       else "connected, but no handshake came back" if seen in (zmq.EVENT_CONNECTED,
                                                                               zmq.EVENT_DISCONNECTED)
                       else "no answer")
                results[endpoint] = (False, f"no handshake within {timeout:g} s: {why}", timeout)
    finally:
        for s in sockets:
            s.disable_monitor()  # before the monitors close (see actors/runtime.py _close_sockets)
        for mon in monitors:
            mon.close(linger=0)
        for s in sockets:
            s.close(linger=0)
        ctx.term()
    return results


def check_broker(home, as_name, timeout) -> Check:
    from proto.errors import DctrlError, InsecureKeyFile

    try:
        results = handshake(home, as_name, timeout)
    except InsecureKeyFile as exc:  # (refused before any connection: the file modes line has the fix)
        return Check("broker", FAIL, f"not checked: {exc}", "see the file modes line")
    except DctrlError as exc:
        return Check("broker", FAIL, f"not checked: {exc}", f"give --as an identity with a key in {home.keys_dir}")
    details = [{"endpoint": e, "ok": ok, "what": what, "seconds": round(t, 3)} for e, (ok, what, t) in results.items()]
    bad = [f"{e}: {what}" for e, (ok, what, _) in results.items() if not ok]
    if bad:
        return Check("broker", FAIL, "; ".join(bad), "start the network (`dctrl up`, or `supervisorctl start all` "
                     "under a system supervisord); check [bus] in config.toml and the broker's log "
                     f"({home.log_dir / 'broker.log'})", details)
    slowest = max(t for _, _, t in results.values())
    return Check("broker", OK, f"CURVE handshake as {as_name} with {' and '.join(results)} in {slowest * 1000:.0f} ms",
                 details=details)


def listen_heartbeats(home, as_name, wait) -> dict:
    """name -> {key_version, token_exp, token_life, status} of every heartbeat heard in ``wait`` s."""
    from actors.runtime import Runtime, on
    from proto import token as tokens
    from scripts.cli.tools import StatusCollector

    verify = home.vault_public
    heard: dict[str, dict] = {}

    class Heartbeats(StatusCollector):
        @on("health")
        def beat(self, msg):
            if msg.body.get("pid") == os.getpid() and msg.sender == self.name:
                return
            try:
                tok = tokens.parse(msg.token, verify)
            except Exception:  # (the runtime verified it already; a parse failure is only not shown)
                return
            heard[msg.sender] = {"key_version": tok.key_version, "token_exp": tok.expires_at,
                                 "token_life": tok.expires_at - tok.issued_at, "status": msg.body.get("status")}

    Runtime(Heartbeats(wait), home.bus_settings(as_name)).run()
    return heard


def check_keys(home, heard: dict | None) -> Check:
    """Keys in their grace period: the process (a machine above all) must run the new key before
    the old one ends, or the broker cuts it off."""
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    now = time.time()
    grace, details = [], []
    for name in registry.names():
        current = registry.current(name).version
        if registry.revoked_up_to(name) >= current:
            continue
        for k in registry.keys_of(name):
            if k.version != current and k.version > registry.revoked_up_to(name) and k.not_after \
                    and k.not_after > now:
                runs = (heard or {}).get(name, {}).get("key_version")
                details.append({"name": name, "version": k.version, "current": current, "ends": k.not_after,
                                "running": runs})
                if runs != current:
                    left = k.not_after - now
                    when = f"{left / 3600:.1f} h" if left >= 3600 else f"{left:.0f} s"
                    who = (f"runs v{runs}" if runs is not None else
                           "not heard on the bus" if heard is not None else "bus not checked")
                    grace.append((name, k.version, current, when, who))
    if not grace:
        note = f"; {len(details)} old key(s) in grace, their processes already on the new key" if details else ""
        return Check("keys", OK, f"{len(registry.names())} identities, no key about to end{note}", details=details)
    words = [f"{n} key v{v} ends in {w} ({who}; current v{c})" for n, v, c, w, who in grace]
    machines = [n for n, *_ in grace if registry.role(n) == "machine"]
    fix = "give each its new key before then"
    if machines:
        fix += (f": copy {home.keys_dir}/NAME.key to the machine beside its agent.toml (its agent reloads it) "
                f"for {', '.join(machines)}")
    return Check("keys", WARN, "; ".join(words), fix, details)


SERVER_TOKEN_WARN_S = 7 * 86400


def check_server_tokens(home, now=None) -> Check:
    from actors.server.tokens import TokenStore

    now = time.time() if now is None else now
    valid = [r for r in TokenStore(home.server_tokens_path).list() if r.state(now) == "valid"]
    if not valid:
        return Check("api tokens", OK, "none valid (the report server answers only /spaceapi.json and /login)")
    ending = sorted((r for r in valid if r.expires - now < SERVER_TOKEN_WARN_S), key=lambda r: r.expires)
    if ending:
        words = ", ".join(f"{printable(r.name)} in {max(0, int(r.expires - now)) // 3600} h" for r in ending[:SHOWN])
        return Check("api tokens", WARN, f"{len(ending)} of {len(valid)} end within 7 days: {words}",
                     "issue new ones: `dctrl server token add NAME --scope S --ttl 30d`, then revoke the old")
    return Check("api tokens", OK, f"{len(valid)} valid; the soonest ends in "
                                      f"{int(min(r.expires for r in valid) - now) // 86400} days")


def check_tokens(home, heard: dict | None, wait: float) -> Check:
    if heard is None:
        return Check("tokens", WARN, "not checked: no handshake with the broker", "see the broker line")
    if not heard:
        return Check("tokens", WARN, f"no heartbeat heard in {wait:g} s", "`dctrl status` says which process is down")
    now = time.time()
    late = {n: h for n, h in heard.items() if h["token_exp"] - now < h["token_life"] / 4}
    details = [{"name": n, "expires_in": int(h["token_exp"] - now), "lifetime": h["token_life"]}
               for n, h in sorted(heard.items())]
    soonest = min(heard, key=lambda n: heard[n]["token_exp"])
    if late:
        words = ", ".join(f"{printable(n)} ({int(h['token_exp'] - now)} s left)" for n, h in sorted(late.items()))
        return Check("tokens", WARN, f"not renewed at half-life: {words}",
                     "the Vault must answer their renewals: `dctrl status` (vault ok?), the vault's log", details)
    return Check("tokens", OK, f"{len(heard)} processes heard, each token renewed; the soonest ends in "
                 f"{int(heard[soonest]['token_exp'] - now)} s ({printable(soonest)})", details=details)


# -- the command ----------------------------------------------------------------------

def run_checks(home, *, as_name="admin", timeout=5.0, wait=None, offline=False) -> list[Check]:
    from proto.errors import DctrlError

    def guarded(name, fn, *args):
        try:
            return fn(*args)
        except (DctrlError, OSError) as exc:
            return Check(name, FAIL, f"could not check: {exc}", "see the message")

    checks = [guarded("file modes", check_files, home), guarded("clock", check_clock),
              guarded("disk", check_disk, home), guarded("database", check_database, home),
              guarded("simulators", check_simulators, home), guarded("api tokens", check_server_tokens, home)]
    heard = None
    if offline:
        broker = Check("broker", WARN, "not checked (--offline)")
    else:
        broker = guarded("broker", check_broker, home, as_name, timeout)
    checks.append(broker)
    wait = home.config["runtime"]["heartbeat_interval"] + 1.5 if wait is None else wait
    if broker.status == OK:
        try:
            heard = listen_heartbeats(home, as_name, wait)
        except DctrlError as exc:
            checks.append(Check("tokens", FAIL, f"could not listen as {as_name}: {exc}", "see the message"))
    checks.append(guarded("keys", check_keys, home, heard))
    if not offline and not any(c.name == "tokens" for c in checks):
        checks.append(check_tokens(home, heard, wait))
    return checks


def cmd_doctor(args):
    from keys.home import Home
    from proto.errors import ConfigError

    try:
        home = Home(args.home)
    except ConfigError as exc:
        checks = [Check("config", FAIL, str(exc), "a home is made by `dctrl init`; check --home / $DCTRL_HOME")]
    else:
        checks = run_checks(home, as_name=args.as_name, timeout=args.timeout, wait=args.wait, offline=args.offline)
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, sort_keys=True, default=str))
    else:
        for c in checks:
            print(c.line())
        sys.stdout.flush()
    return 1 if failed else 0


def register(sub):
    sp = command(sub, "doctor", cmd_doctor, "check the home and the running network, one line per check with "
                 "the fix: file modes, clock, disk, database schema, simulators, broker, keys, tokens (exit 1 "
                 "on a FAIL)")
    sp.add_argument("--as", dest="as_name", default="admin", help="identity to connect as (default admin)")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds for the broker's handshake (default 5)")
    sp.add_argument("--wait", type=float, help="seconds to listen for heartbeats (default heartbeat interval + 1.5)")
    sp.add_argument("--offline", action="store_true", help="the home only: no broker, keys in use or tokens")
    sp.add_argument("--json", action="store_true", help=JSON_HELP)
