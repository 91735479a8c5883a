"""`dctrl sim smtp`: the demo's mail server: an SMTP sink on loopback that keeps every message.

aiosmtpd's Mailbox handler delivers each message into a Maildir (the standard library's
``mailbox.Maildir``; default ``HOME/sim/mail``): read the mails there with any mail reader
(``mutt -f HOME/sim/mail``), or plainly with ``ls HOME/sim/mail/new``.
It accepts any sender and recipient and relays nothing: a demo and test tool, never a server
for the internet (it listens on loopback only unless told otherwise).
"""

from __future__ import annotations

import mailbox
import signal
import threading
from pathlib import Path


def maildir_path(home_root) -> Path:
    return Path(home_root) / "sim" / "mail"


def serve(port: int, maildir, *, host: str = "127.0.0.1", ready=None) -> None:
    """Run until SIGTERM or SIGINT."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox

    Path(maildir).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mailbox.Maildir(str(maildir), create=True)  # (new/, cur/, tmp/)
    controller = Controller(Mailbox(str(maildir)), hostname=host, port=port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller.start()
    try:
        if ready:
            ready(controller)
        stop.wait()
    finally:
        controller.stop()


def messages(maildir) -> list:
    """The messages in the Maildir, oldest first (by delivery time)."""
    box = mailbox.Maildir(str(maildir), create=False)
    return [m for _, m in sorted(box.items(), key=lambda kv: kv[1].get_date())]
