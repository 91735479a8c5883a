"""`dctrl serve`: the read-only report server; `dctrl server token add|list|revoke`: its API tokens.

The server (actors/server/) answers GET and HEAD only, opens the database read-only and reads the
event log from its files: it needs no bus identity and no running actor. `dctrl up` runs it under
supervisord with the rest, on ``[server] listen`` (default 127.0.0.1:8080).
"""

from __future__ import annotations

import datetime
import json

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home
from scripts.cli.common import home as _home

SCOPE_HELP = ("public: the SpaceAPI and aggregates (counts, totals); members: personal data; finance: "
              "invoices, payouts, income; events: the event log and health. Repeat or comma-separate; "
              "every token has public")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = (text or "").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise DctrlError(f"[server] listen {text!r}: HOST:PORT, like 127.0.0.1:8080 or 0.0.0.0:8080")
    return host.strip("[]"), int(port)


def cmd_serve(args):
    import logging

    from proto.errors import ConfigError
    from scripts.cli.supervise import EX_CONFIG, hold_run_lock

    try:  # a config error or the server already running for the home: one line, EX_CONFIG
        home = _home(args)
        host, port = parse_listen(args.listen or home.config["server"]["listen"])
        hold_run_lock(home, "server")
        from actors.server.app import make_app

        app = make_app(home)
    except ConfigError as exc:
        print(f"dctrl serve: {exc}")
        return EX_CONFIG
    import waitress

    logging.getLogger().setLevel(logging.INFO)
    threads = int(home.config["server"]["threads"])
    logging.getLogger("dctrl.server").info("report server on http://%s:%d/ (%d threads, database read-only)",
                                           host, port, threads)
    waitress.serve(app, host=host, port=port, threads=threads, ident="dctrl", clear_untrusted_proxy_headers=True,
                   _quiet=True)
    return 0


def _when(ts) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cmd_token(args):
    from actors.server.tokens import TokenStore, parse_ttl

    store = TokenStore(_home(args).server_tokens_path)
    if args.token_cmd == "add":
        scopes = [s.strip() for given in args.scope for s in given.split(",") if s.strip()]
        token, record = store.add(args.name, scopes, parse_ttl(args.ttl))
        if args.json:
            print(json.dumps({**record.public(), "token": token}, sort_keys=True))
        else:
            print(f"token {record.name} (id {record.id}), scopes {', '.join(record.scopes)}, "
                  f"expires {_when(record.expires)}")
            print(token)
            print("shown once: keep it now (it is stored hashed). Send it as `Authorization: Bearer TOKEN`, "
                  "or paste it on the server's /login page.")
        return 0
    if args.token_cmd == "revoke":
        for r in store.revoke(args.name):
            print(f"revoked token {r.name} (id {r.id})")
        return 0
    import time

    now = time.time()
    records = store.list()
    if args.json:
        print(json.dumps([{**r.public(), "state": r.state(now)} for r in records], sort_keys=True))
        return 0
    print(f"{'NAME':<20} {'ID':<8} {'STATE':<8} {'SCOPES':<28} {'EXPIRES'}")
    for r in records:
        print(f"{r.name:<20} {r.id:<8} {r.state(now):<8} {','.join(r.scopes):<28} {_when(r.expires)}")
    return 0


def register(sub):
    sp = command(sub, "serve", cmd_serve, "run the read-only report server (REST, HTML, SpaceAPI) in the foreground")
    sp.add_argument("--listen", help="HOST:PORT (default [server] listen of config.toml, 127.0.0.1:8080)")

    sp = command(sub, "server", cmd_token, "the report server's API tokens: add, list, revoke")
    ts = sp.add_subparsers(dest="server_cmd", required=True, metavar="WHAT")
    tok = ts.add_parser("token", help="API tokens (stored hashed in HOME/server_tokens.json)")
    tk = tok.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    add = tk.add_parser("add", help="issue a token (printed once)")
    add.add_argument("name", help="who or what holds it (e.g. treasurer, grafana)")
    add.add_argument("--scope", action="append", required=True, help=SCOPE_HELP)
    add.add_argument("--ttl", default="30d", help="lifetime: 30d, 12h, 2w... (default 30d, at most 3 years)")
    add.add_argument("--json", action="store_true", help=JSON_HELP)
    ls = tk.add_parser("list", help="every token: name, id, state, scopes, expiry (never the token)")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    rv = tk.add_parser("revoke", help="revoke every valid token of a name, or one by id (effective at once)")
    rv.add_argument("name", help="a token's name or id")
    hide_home(tok, add, ls, rv)
