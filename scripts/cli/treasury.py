"""`dctrl treasury show|export`: the multisig treasury (issue 13).

``show`` reads PayoutMgr's tables (actors/payout_mgr/queries.py) without the bus: balances,
UTXOs, the next receive addresses and each branch's gap. ``export`` needs only the config: the
descriptor with its checksum, or a wallet file (Caravan JSON, Coldcard multisig setup) a
co-signer imports to set up the identical wallet.
"""

from __future__ import annotations

import json

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home
from scripts.cli.common import home as _home

FORMATS = ("descriptor", "caravan", "coldcard")


def _treasury(home):
    """The configured Treasury, or a clear error."""
    from actors.payout_mgr.treasury import Treasury

    cfg = home.config.get("treasury") or {}
    spec = (cfg.get("descriptor") or "").strip()
    if not spec:
        raise DctrlError(f"no treasury configured: set [treasury] descriptor in {home.root / 'config.toml'} "
                         "(a k-of-n wsh(sortedmulti(...)) descriptor of the co-signers' xpubs)")
    network = (home.config.get("chain") or {}).get("network", "regtest")
    return Treasury(spec, network, (cfg.get("change_descriptor") or "").strip() or None), cfg


def cmd_treasury(args):
    return {"show": _show, "export": _export}[args.treasury_cmd](args)


def _show(args):
    from actors.db import connect
    from actors.payout_mgr import queries
    from keys.home import DEFAULTS

    home = _home(args)
    treasury, cfg = _treasury(home)
    gap_limit = int(cfg.get("gap_limit", DEFAULTS["treasury"]["gap_limit"]))
    database = connect(home.database_url)
    try:
        if not queries.has_tables(database):
            raise DctrlError("no treasury records yet: payout_mgr has not run on this database; start it with "
                             "`dctrl up` or `dctrl run payout_mgr`")
        state = queries.treasury(database, gap_limit, next_count=args.next)
    finally:
        database.close()
    out = {"quorum": treasury.quorum, "threshold": treasury.threshold,
           "cosigners": [{"fingerprint": c.fingerprint, "path": c.path, "xpub": c.xpub} for c in treasury.cosigners],
           "network": treasury.network_name, **state}
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    b, price = state["balance"], state["price"]
    at = "" if price is None else f" (CAD at {price['cad_per_btc']}{', stale' if price['stale'] else ''})"
    print(f"treasury {treasury.quorum}, co-signers {', '.join(c.fingerprint for c in treasury.cosigners)}")
    for kind in ("confirmed", "unconfirmed"):
        cad = f"  {b[kind + '_cad']} CAD" if price is not None else ""
        print(f"  {kind:<11} {b[kind + '_sats']:>14,} sats{cad}")
    if at:
        print(f"  {at.strip()}")
    if state["utxos"]:
        print(f"{'outpoint':<70} {'sats':>12}  {'state':<9} {'conf':>4}  address")
        for u in state["utxos"]:
            where = f"/{0 if u['branch'] == 'receive' else 1}/{u['index']}"
            print(f"{u['txid'] + ':' + str(u['vout']):<70} {u['sats']:>12,}  {u['state']:<9} {u['confirmations']:>4}  "
                  f"{where} {u['address']}{'' if u['raw_tx'] else ' (raw tx not fetched yet)'}")
    else:
        print("no unspent outputs")
    if state["next_addresses"]:
        print("next receive addresses:")
        for a in state["next_addresses"]:
            print(f"  /0/{a['index']} {a['address']}")
    for branch, g in state["gap"].items():
        used = "none used" if g["last_used"] is None else f"last used {g['last_used']}"
        print(f"{branch}: {used}, watching {g['watched']} ({g['acked']} acknowledged) up to "
              f"{'-' if g['watched_to'] is None else g['watched_to']}, {g['unused_beyond']} unused beyond "
              f"(gap limit {g['gap_limit']})")
    return 0


def _export(args):
    from keys.files import atomic_write

    home = _home(args)
    treasury, cfg = _treasury(home)
    name = cfg.get("name") or "dctrl treasury"
    if args.format == "descriptor":
        d = treasury.descriptors()
        text = (f"{d['receive']}\n{d['change']}\n" if args.branches else f"{d['multipath']}\n")
    elif args.format == "caravan":
        text = treasury.caravan(name)
    else:
        text = treasury.coldcard(name)
    if args.out:
        atomic_write(args.out, text.encode(), mode=0o600)
        print(f"wrote {args.out} ({args.format}, {treasury.quorum})")
    else:
        print(text, end="")
    return 0


def register(sub):
    sp = command(sub, "treasury", cmd_treasury, "the multisig treasury: balance, UTXOs, wallet exports for co-signers")
    ts = sp.add_subparsers(dest="treasury_cmd", required=True, metavar="ACTION")
    show = ts.add_parser("show", help="quorum, co-signers, balance, UTXOs, next receive addresses, gap "
                                      "(from payout_mgr's tables)")
    show.add_argument("--json", action="store_true", help=JSON_HELP)
    show.add_argument("--next", type=int, default=5, help="receive addresses to list (default 5)")
    export = ts.add_parser("export", help="the descriptor or a wallet file co-signers import (from the config)")
    export.add_argument("--format", choices=FORMATS, default="descriptor",
                        help="descriptor (with checksum, /<0;1>/*), caravan (JSON; Sparrow imports it too) "
                             "or coldcard (multisig setup file; Sparrow too); default descriptor")
    export.add_argument("--branches", action="store_true",
                        help="descriptor: the receive (/0/*) and change (/1/*) ones, for wallets without <0;1>")
    export.add_argument("--out", help="write to FILE instead of standard output")
    hide_home(show, export)
