"""`dctrl mail outbox|preview|retry|send-test`: MemberMail's outbox and its operator's actions.

Reads (``outbox``, ``preview``) go to the database (MemberMail's and MemberData's query
functions; nothing written, no bus). Changes are commands over the bus to MemberMail, the one
writer of ``mail_outbox``: ``retry`` (``cmd.mail.retry``) and ``send-test``
(``cmd.mail.send_test``), each sent until acknowledged on ``mail.ack``.
"""

from __future__ import annotations

import json
import sys
import time

from proto.errors import DctrlError
from scripts.cli.common import JSON_HELP, command, hide_home, printable
from scripts.cli.common import home as _home

STATES = ("queued", "sending", "sent", "failed", "held", "skipped")
PREVIEW_KINDS = ("welcome", "receipt", "reminder", "overdue", "lapsed", "reinstated", "statement")


def register(sub):
    sp = command(sub, "mail", cmd_mail, "member mail: the outbox, previews, retries and a test mail (MemberMail)")
    ms = sp.add_subparsers(dest="mail_cmd", required=True, metavar="ACTION")
    out = ms.add_parser("outbox", help="the outbox's mails, oldest first: kind, member, state, attempts, error")
    out.add_argument("--state", choices=STATES, help="only the mails in this state")
    out.add_argument("--handle", help="only the mails of this member")
    out.add_argument("--json", action="store_true", help=JSON_HELP)
    pre = ms.add_parser("preview", help="render a mail for a member as it would be sent (nothing is queued)")
    pre.add_argument("kind", choices=PREVIEW_KINDS, help="the kind of mail")
    pre.add_argument("handle", help="the member")
    pre.add_argument("--html", metavar="FILE", help="also write the HTML part to FILE")
    pre.add_argument("--json", action="store_true", help="subject, text and html as one JSON document")
    retry = ms.add_parser("retry", help="send a held or failed mail again (asks MemberMail over the bus)")
    retry.add_argument("row", type=int, metavar="ID", help="the mail's id (dctrl mail outbox)")
    test = ms.add_parser("send-test", help="send a test mail to ADDRESS through MemberMail and the SMTP server")
    test.add_argument("address", help="where to (your own address: it travels on the bus)")
    test.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server to accept it "
                                                                "(0: return once queued; default 30)")
    for p in (retry, test):
        p.add_argument("--as", dest="as_name", default="admin", help="identity to act as (default admin)")
        p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for MemberMail's answer")
    hide_home(out, pre, retry, test)


def cmd_mail(args):
    return {"outbox": _outbox, "preview": _preview, "retry": _retry, "send-test": _send_test}[args.mail_cmd](args)


def _database(args):
    from actors.db import connect
    from actors.member_mail.models import MailOutbox

    database = connect(_home(args).database_url)
    if not database.table_exists(MailOutbox._meta.table_name):
        database.close()
        raise DctrlError("no mail outbox yet: member_mail has not run on this database; start it with "
                         "`dctrl up` or `dctrl run member_mail`")
    return database


def _read(args, fn, *a, **kw):
    database = _database(args)
    try:
        return fn(database, *a, **kw)
    finally:
        database.close()


def _rows(args, **kw) -> list[dict]:
    from actors.member_mail import queries

    return _read(args, queries.outbox, **kw)


def _when(t) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _outbox(args):
    rows = _rows(args, state=args.state, handle=args.handle)
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no mail" + (f" in state {args.state}" if args.state else ""))
        return 0
    print(f"{'ID':>6} {'KIND':<10} {'MEMBER':<16} {'PERIOD':<20} {'STATE':<8} {'TRIES':>5} {'SENT (UTC)':<19} NOTE")
    for r in rows:
        note = ("possible duplicate; " if r["possible_duplicate"] else "") + (r["last_error"] or "")
        print(f"{r['id']:>6} {r['kind']:<10} {printable(r['handle']) or '-':<16} {printable(r['period'])[:20] or '-':<20} "
              f"{r['state']:<8} {r['attempts']:>5} {_when(r['sent_at']):<19} {printable(note)[:80]}")
    return 0


def _preview(args):
    from actors.db import connect
    from actors.member_data.queries import member
    from actors.member_mail import context
    from actors.member_mail.models import settings
    from actors.member_mail.templates import SAMPLES, check_templates

    home = _home(args)
    config = settings(home.config.get("member_mail", {}))
    templates = check_templates(config["templates_dir"] or None, config["space_name"])
    database = connect(home.database_url)
    try:
        builder = context.BUILDERS.get(args.kind)
        extra = (None, config["reminder_days"]) if args.kind == "reminder" else ()
        try:
            _, data = builder(database, args.handle, *extra)
            sample = False
        except context.NoMail as exc:
            # reminder, overdue, lapsed, reinstated, statement: the member is not in that case
            # today (the mail would not be queued); the template with sample data and their name
            m = member(database, args.handle)
            if args.kind in ("welcome", "receipt") or m is None or not m["name"]:
                raise DctrlError(str(exc)) from None
            print(f"({exc}: shown with sample data)", file=sys.stderr)
            data = {**SAMPLES[args.kind], "name": m["name"]}
            sample = True
    finally:
        database.close()
    rendered = templates.render(args.kind, {**data, "handle": args.handle})
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(rendered.html)
    if args.json:
        print(json.dumps({"kind": args.kind, "handle": args.handle, "subject": rendered.subject,
                          "text": rendered.text, "html": rendered.html, "sample_data": sample}, sort_keys=True))
        return 0
    print(f"Subject: {rendered.subject}\n")
    print(rendered.text)
    return 0


def _command(args, topic: str, body: dict) -> dict:
    from scripts.cli.tools import send_command

    ack = send_command(_home(args), args.as_name, topic, body, "mail.ack", timeout=args.timeout, who="member_mail")
    if ack["status"] != "done":
        raise DctrlError(f"refused: {ack['reason']}")
    return ack


def _retry(args):
    _command(args, "cmd.mail.retry", {"row": args.row})
    print(f"mail {args.row} queued again")
    return 0


def _send_test(args):
    ack = _command(args, "cmd.mail.send_test", {"to": args.address})
    row = ack["row"]
    if args.wait <= 0:
        print(f"test mail queued as mail {row}")
        return 0
    deadline = time.monotonic() + args.wait
    while True:  # the outbox says what became of it (MemberMail writes it; we only read)
        from actors.member_mail import queries

        r = _read(args, queries.one, row)
        if r is not None and r["state"] in ("sent", "failed", "held", "skipped"):
            break
        if time.monotonic() >= deadline:
            raise DctrlError(f"test mail {row} not sent within {args.wait:g} s: "
                             f"{(r or {}).get('last_error') or 'still queued'} (dctrl mail outbox)")
        time.sleep(0.2)
    if r["state"] != "sent":
        raise DctrlError(f"test mail {row} {r['state']}: {r['last_error']}")
    print(f"test mail {row} sent to {args.address} ({r['message_id']})")
    return 0
