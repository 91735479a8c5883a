"""`dctrl payouts list|show|request|approve|reject|cancel|export|import|sign|bump`: multisig payouts
from the treasury (issue 13).

Reads (``list``, ``show``, ``export``) go to PayoutMgr's tables (actors/payout_mgr/ledger.py,
bound to the home's database; no bus, nothing written). Changes are ``cmd.payouts.*`` commands
over the bus to PayoutMgr, the one writer of the payout tables, sent as the ``--as`` identity
(default admin) until answered on ``payouts.ack``; a refusal's reason is printed and the exit
status is not 0.

Signing: a co-signer exports the payout's PSBT (``export``), signs it in their own wallet
(Sparrow, Electrum, a hardware wallet) and brings it back (``import``): only its signatures
travel (``service.signatures_only``) and PayoutMgr checks each against its own record. ``sign``
is the software signer for a key held in a file (the demo's HOME/demo/cosignerN.key): the key is
read here, signs here (``psbt.sign``), and only the signatures leave the process.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import stat
import sys

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home, printable
from scripts.cli.common import home as _home

STATES = ("requested", "awaiting_signatures", "signed", "broadcast", "confirmed", "cancelled", "expired",
          "invalidated")
KINDS = ("manual", "share", "sweep")
CAD_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,2})?")
ACK = "payouts.ack"


# -- the bus: one command, waited for ------------------------------------------------------------

def add_command_options(p):
    """``--as`` and ``--timeout`` of a command sent to PayoutMgr."""
    p.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="seconds to wait for payout_mgr's answer (default 15)")


def send(args, verb: str, body: dict) -> dict:
    """``cmd.payouts.VERB`` as ``args.as_name`` until answered; the ack, or DctrlError with the
    reason when refused or unanswered."""
    from scripts.cli.tools import send_command

    ack = send_command(_home(args), args.as_name, f"cmd.payouts.{verb}", body, ACK, timeout=args.timeout,
                       who="payout_mgr")
    if ack["status"] != "done":
        what = f"payout {ack['payout']}: " if ack.get("payout") else ""
        raise DctrlError(f"refused: {what}{ack['reason']}")
    return ack


def _said(ack: dict, what: str) -> int:
    print(f"payout {ack['payout']}: {ack['state']} ({what})")
    return 0


# -- the database -------------------------------------------------------------------------------

class _Books:
    """The ledger's models bound to the home's database for the ``with`` block."""

    def __init__(self, args):
        self.args = args

    def __enter__(self):
        from actors.db import connect
        from actors.payout_mgr import ledger

        self.database = connect(_home(self.args).database_url)
        if not all(self.database.table_exists(m._meta.table_name) for m in ledger.MODELS):
            self.database.close()
            raise DctrlError("no payouts yet: payout_mgr has not run on this database; start it with "
                             "`dctrl up` or `dctrl run payout_mgr`")
        self.bound = self.database.bind_ctx(ledger.MODELS)
        self.bound.__enter__()
        return self.database

    def __exit__(self, *exc):
        self.bound.__exit__(*exc)
        self.database.close()


def _payout(payout_id: int):
    from actors.payout_mgr.ledger import Payout

    p = Payout.get_or_none(Payout.id == payout_id)
    if p is None:
        raise DctrlError(f"no payout {payout_id}")
    return p


def _treasury(args):
    from scripts.cli.treasury import _treasury as configured

    return configured(_home(args))[0]


def _cad(sats, rate) -> str | None:
    from actors.payout_mgr.queries import cad

    return None if sats is None or not rate else cad(sats, rate)


def _when(t) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _view(treasury, p) -> dict:
    """service.summary with the CAD beside every amount (at the request's price), the state's
    reason, the inputs and the history."""
    from actors.payout_mgr import ledger, service

    out = service.summary(treasury, p)
    rate = p.rate
    out.update(state_reason=p.state_reason, invoice=p.invoice, requested_at=p.requested_at,
               expires_at=p.expires_at, inputs=p.outpoints, change_sats=p.change_sats,
               cad=None if p.cad_cents is None else f"{p.cad_cents / 100:.2f}", fee_cad=_cad(p.fee, rate),
               signed=sum(1 for s in out["signers"] if s["signed"]),
               history=[{"state": h.state, "at": h.at, "by": h.by, "reason": h.reason} for h in
                        ledger.PayoutHistory.select().where(ledger.PayoutHistory.payout == p.id)
                        .order_by(ledger.PayoutHistory.id)])
    for o in out["outputs"]:
        o["cad"] = _cad(o["sats"], rate)
    return out


def _print_view(v: dict) -> None:
    cad = f" ({v['cad']} CAD at {v['rate']} CAD/BTC)" if v["cad"] else ""
    print(f"payout {v['id']} ({v['kind']}): {v['state']}" + (f" - {printable(v['state_reason'])}"
                                                             if v["state_reason"] else ""))
    print(f"  pay {v['sats']:,} sats{cad} to {printable(v['destination'])}")
    print(f"  reason: {printable(v['reason'])}" + (f" (invoice {v['invoice']})" if v["invoice"] else ""))
    print(f"  requested by {printable(v['requested_by'])} at {_when(v['requested_at'])} UTC, "
          f"expires {_when(v['expires_at'])} UTC if not signed")
    if v["txid"]:
        print(f"  transaction {v['txid']}: {len(v['inputs'])} input(s), fee {v['fee']:,} sats"
              + (f" ({v['fee_cad']} CAD)" if v["fee_cad"] else "") + f", {v['feerate']} sat/vB, {v['vsize']} vB")
        for o in v["outputs"]:
            what = "change, verified as the treasury's own" if o["change"] else "to"
            print(f"    {o['sats']:>14,} sats" + (f" {o['cad']:>10} CAD" if o["cad"] else "")
                  + f"  {what} {o['address']}")
        print(f"  signatures: {v['signed']} of the {v['needed']} needed")
        for s in v["signers"]:
            mark = f"signed (brought by {printable(s['brought_by'])})" if s["signed"] else "not signed"
            print(f"    co-signer {s['fingerprint']}: {mark}")
        if v["signed"] < v["needed"] and v["state"] == "awaiting_signatures":
            print(f"  still needed: {v['needed'] - v['signed']} more co-signer(s)")
    else:
        print("  no transaction yet (built once approved and the treasury has the money)")
    print("  history:")
    for h in v["history"]:
        print(f"    {_when(h['at'])} {h['state']:<19} by {printable(h['by'])}"
              + (f": {printable(h['reason'])}" if h["reason"] else ""))


# -- the commands -------------------------------------------------------------------------------

def cmd_payouts(args):
    return {"list": _list, "show": _show, "request": _request, "approve": _approve, "reject": _reject,
            "cancel": _cancel, "export": _export, "import": _import, "sign": _sign,
            "bump": _bump}[args.payouts_cmd](args)


def _list(args):
    from actors.payout_mgr.ledger import Payout

    with _Books(args):
        q = Payout.select().order_by(Payout.id)
        if args.state:
            q = q.where(Payout.state == args.state)
        rows = [{"id": p.id, "kind": p.kind, "state": p.state, "sats": p.sats,
                 "cad": None if p.cad_cents is None else f"{p.cad_cents / 100:.2f}", "destination": p.destination,
                 "reason": p.reason, "state_reason": p.state_reason, "requested_by": p.requested_by,
                 "requested_at": p.requested_at, "txid": p.txid, "fee": p.fee} for p in q]
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no payouts" + (f" in state {args.state}" if args.state else ""))
        return 0
    print(f"{'ID':>5} {'KIND':<7} {'STATE':<19} {'SATS':>12} {'CAD':>9} {'BY':<10} {'REQUESTED (UTC)':<19} "
          "DESTINATION / REASON")
    for r in rows:
        print(f"{r['id']:>5} {r['kind']:<7} {r['state']:<19} {r['sats']:>12,} {r['cad'] or '-':>9} "
              f"{printable(r['requested_by'])[:10]:<10} {_when(r['requested_at']):<19} "
              f"{printable(r['destination'])}  {printable(r['reason'])[:60]}")
    return 0


def _show(args):
    treasury = _treasury(args)
    with _Books(args):
        v = _view(treasury, _payout(args.id))
    if args.json:
        print(json.dumps(v, sort_keys=True))
    else:
        _print_view(v)
    return 0


def _request(args):
    if args.cad is not None and not CAD_RE.fullmatch(args.cad):
        raise DctrlError(f"--cad {args.cad!r}: an amount in CAD such as 12.50 (at most 2 decimals)")
    ack = send(args, "request", {"to": args.to, "sats": args.sats, "cad": args.cad, "kind": args.kind,
                                 "reason": args.reason})
    return _said(ack, "requested: it needs the [payouts] approvals of other admins, then the co-signers")


def _approve(args):
    ack = send(args, "approve", {"payout": args.id, "reason": None})
    return _said(ack, f"approved by {args.as_name}; with the approvals it needs its transaction is built "
                      f"(`dctrl payouts show {args.id}` says when, or why it waits)")


def _reject(args):
    ack = send(args, "reject", {"payout": args.id, "reason": args.reason})
    return _said(ack, f"rejected by {args.as_name}")


def _cancel(args):
    ack = send(args, "cancel", {"payout": args.id, "reason": args.reason})
    return _said(ack, f"cancelled by {args.as_name}")


def _bump(args):
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", args.feerate):
        raise DctrlError(f"--feerate {args.feerate!r}: sat/vB such as 12 or 12.5 (at most 3 decimals)")
    ack = send(args, "bump", {"payout": args.id, "feerate": args.feerate})
    return _said(ack, f"payout {args.id} is to be replaced at {args.feerate} sat/vB by payout {ack['payout']}: "
                      f"the co-signers sign that one (`dctrl payouts show {ack['payout']}`); whichever of the two "
                      "confirms is the payment")


def _stored_psbt(args, payout_id):
    """The payout's PSBT as PayoutMgr keeps it (base64, with the signatures so far)."""
    with _Books(args):
        p = _payout(payout_id)
        if not p.psbt:
            raise DctrlError(f"payout {p.id} has no PSBT yet ({p.state}"
                             + (f": {p.state_reason}" if p.state_reason else "") + ")")
        return p


def _export(args):
    from keys.files import atomic_write

    p = _stored_psbt(args, args.id)
    if p.state != "awaiting_signatures":
        print(f"note: payout {p.id} is {p.state}; it takes no more signatures", file=sys.stderr)
    data = base64.b64decode(p.psbt) if args.binary else (p.psbt + "\n").encode()
    if args.out:
        atomic_write(args.out, data, mode=0o600)
        print(f"wrote {args.out}: payout {p.id}'s PSBT ({'BIP 174 binary' if args.binary else 'base64'}), "
              f"transaction {p.txid}")
    elif args.binary:
        if sys.stdout.isatty():
            raise DctrlError("the binary PSBT is not for a terminal: give --out FILE (or leave out --binary)")
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(data.decode())
    return 0


def _signatures(data: bytes | str) -> str:
    """A PSBT file (base64 or binary) cut to the unsigned transaction and its signatures."""
    from actors.payout_mgr import psbt as tx
    from actors.payout_mgr import service

    return service.signatures_only(tx.decode(data).to_base64())


def _import(args):
    try:
        with open(args.file, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DctrlError(f"cannot read {args.file}: {exc.strerror}") from None
    ack = send(args, "import", {"payout": args.id, "psbt": _signatures(data)})
    return _said(ack, "signatures taken" + ("; final, to be broadcast" if ack["state"] == "signed" else ""))


def _read_key(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            secret = f.read()
    except OSError as exc:
        raise DctrlError(f"cannot read the key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DctrlError(f"{path}: not a text file holding a mnemonic or an xprv") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        print(f"warning: {path} can be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
              f"`chmod 600 {path}`", file=sys.stderr)
    return secret


def _sign(args):
    from actors.payout_mgr import psbt as tx

    treasury = _treasury(args)
    secret = _read_key(args.key)
    with _Books(args):
        p = _payout(args.id)
        if p.state != "awaiting_signatures" or not p.psbt:
            raise DctrlError(f"payout {p.id} is {p.state}: it takes no signatures"
                             + (f" ({p.state_reason})" if p.state_reason else ""))
        view = _view(treasury, p)
    print("You are signing:")
    _print_view(view)
    psbt = tx.decode(p.psbt)
    before = set(tx.signers(treasury, psbt))
    try:
        added = tx.sign(treasury, psbt, secret)
    finally:
        del secret
    if not added:
        raise DctrlError(f"this key added no signature to payout {p.id} (it has signed already)")
    who = ", ".join(fp for fp in tx.signers(treasury, psbt) if fp not in before) or "?"
    print(f"signed {added} input(s) here as co-signer {who}; sending the signatures to payout_mgr")
    ack = send(args, "import", {"payout": p.id, "psbt": _signatures(psbt.to_base64())})
    return _said(ack, "signatures taken" + ("; final, to be broadcast" if ack["state"] == "signed" else ""))


def register(sub):
    sp = command(sub, "payouts", cmd_payouts,
                 "multisig payouts from the treasury: request, approve, co-sign (PSBT), follow to confirmed")
    ps = sp.add_subparsers(dest="payouts_cmd", required=True, metavar="ACTION")
    lst = ps.add_parser("list", help="every payout, oldest first: kind, state, amount in sats and CAD, who asked, "
                                     "where to and why (from payout_mgr's tables)")
    lst.add_argument("--state", choices=STATES, help="only the payouts in this state")
    lst.add_argument("--json", action="store_true", help=JSON_HELP)
    show = ps.add_parser("show", help="one payout as a co-signer checks it: destination and amounts (sats, CAD), "
                                      "fee and fee rate, the change verified as the treasury's own, who has "
                                      "signed and who still must, state, reason and history")
    show.add_argument("id", type=int, help="the payout's number (dctrl payouts list)")
    show.add_argument("--json", action="store_true", help="one JSON document instead of the text")

    req = ps.add_parser("request", help="ask for a payout from the treasury to ADDRESS; other admins approve it "
                                        "([payouts] approvals), then it is built and co-signed")
    req.add_argument("--to", required=True, metavar="ADDRESS", help="where the money goes (an address of the "
                                                                    "treasury's network)")
    amount = req.add_mutually_exclusive_group(required=True)
    amount.add_argument("--sats", type=int, help="the amount in sats")
    amount.add_argument("--cad", help="the amount in CAD (e.g. 25.00), turned into sats at the price now")
    req.add_argument("--reason", required=True, help="why: kept with the payout and shown to every co-signer")
    req.add_argument("--kind", choices=KINDS, default="manual", help="manual (default), share or sweep")
    appr = ps.add_parser("approve", help="approve another admin's payout request (the requester cannot approve "
                                         "their own); with enough approvals its transaction is built")
    appr.add_argument("id", type=int, help="the payout's number")
    rej = ps.add_parser("reject", help="reject a payout request: it is cancelled")
    rej.add_argument("id", type=int, help="the payout's number")
    rej.add_argument("--reason", help="why (kept in its history)")
    can = ps.add_parser("cancel", help="cancel a payout not yet signed (requested or awaiting signatures); "
                                       "its coins are free again")
    can.add_argument("id", type=int, help="the payout's number")
    can.add_argument("--reason", required=True, help="why (kept in its history)")

    exp = ps.add_parser("export", help="write the payout's PSBT for a co-signer's wallet (Sparrow, Electrum, a "
                                       "hardware wallet): base64 text, or BIP 174 binary with --binary")
    exp.add_argument("id", type=int, help="the payout's number")
    exp.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    exp.add_argument("--binary", action="store_true", help="the binary PSBT (a .psbt file) instead of base64")
    imp = ps.add_parser("import", help="bring back a PSBT a co-signer signed in their wallet (base64 or binary): "
                                       "only its signatures are sent, and payout_mgr checks each one")
    imp.add_argument("id", type=int, help="the payout's number")
    imp.add_argument("file", help="the signed PSBT file")
    sign = ps.add_parser("sign", help="sign with a co-signer's key held in a file (a BIP 39 mnemonic or an xprv): "
                                      "shows what is signed, signs here, sends only the signatures; the key never "
                                      "leaves this process")
    sign.add_argument("id", type=int, help="the payout's number")
    sign.add_argument("--key", required=True, metavar="FILE",
                      help="the co-signer's BIP 39 mnemonic or extended private key (keep it mode 0600)")
    bump = ps.add_parser("bump", help="a payout stuck unconfirmed, or signed but refused by the node for its fee: "
                                      "make a replacement (RBF) paying a "
                                      "higher fee from its change, for the co-signers to sign")
    bump.add_argument("id", type=int, help="the payout's number (in state broadcast or signed)")
    bump.add_argument("--feerate", required=True, metavar="R", help="the new fee rate in sat/vB (above the old one)")
    for p in (req, appr, rej, can, imp, sign, bump):
        add_command_options(p)
    hide_home(lst, show, req, appr, rej, can, exp, imp, sign, bump)
