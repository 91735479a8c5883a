"""What a watcher of the chain notifier shares (BusinessMgr, MemberData): the discovery of
an address book's used addresses before any is handed out, and the rule for applying a
watch ack's snapshot of an output.

The discovery: ``cmd.chain.discover`` {id, expires, book, start, gap} is sent (and re-sent
every ``retry`` seconds, with a new id once the old one is about to expire) until a
``chain.discover.ack`` with that id answers; the book then skips past the highest index with
history (:meth:`AddressBook.skip_past`), so no address that was ever paid is handed out again,
whatever the database holds.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Discovery:
    """One discovery of ``book``'s used addresses, asked until answered (``done``)."""

    def __init__(self, book, *, retry: float, clock, used_label: str, section: str, gap: int | None = None):
        self.book, self.retry, self.clock = book, retry, clock
        self.gap = gap  # unused addresses in a row the scan stops after (None: the book's gap limit)
        self.used_label, self.section = used_label, section  # the label of skipped addresses; "[business] receive"
        self.id, self.expires, self.due = os.urandom(16), 0, 0.0
        self.done = False
        self.error: str | None = None  # the notifier's refusal (it keeps being asked)

    def request(self, now_mono: float) -> dict | None:
        """The cmd.chain.discover body to publish now, or None (answered, or not due)."""
        if self.done or self.due > now_mono:
            return None
        if self.expires <= self.clock() + 5:
            self.id, self.expires = os.urandom(16), int(self.clock()) + 60
        self.due = now_mono + self.retry
        return {"id": self.id, "expires": self.expires, "book": self.book.name, "start": self.book.next_index(),
                "gap": self.gap or self.book.gap_limit}

    def answer(self, b: dict) -> bool:
        """Apply a chain.discover.ack; True if it answered this discovery and it is now done."""
        if self.done or b["id"] != self.id:
            return False
        if b["status"] == "refused":  # say it, keep asking
            self.error = f"chain_notifier cannot check which addresses were used: {b['reason']}"
            log.error("%s", self.error)
            return False
        start = self.book.next_index()
        if b["highest"] is not None and self.book.skip_past(b["highest"], self.used_label):
            if start == 0:
                log.warning("the %s address book is empty, yet receive addresses up to /0/%d of %s have "
                            "history on the chain: a new or switched database? Continuing at /0/%d", self.book.name,
                            b["highest"], self.section, b["highest"] + 1)
            else:
                log.warning("receive addresses /0/%d to /0/%d of %s have history on the chain but not in this "
                            "database (another database or wallet uses the same xpub?): continuing at /0/%d",
                            start, b["highest"], self.section, b["highest"] + 1)
        log.info("%s addresses checked on the chain (%d looked at): the next one is /0/%d", self.book.name,
                 b["scanned"], self.book.next_index())
        self.error, self.done = None, True
        return True


def forward(pay, state: str, confirmations: int) -> bool:
    """Whether a snapshot's (state, confirmations) is news for ``pay`` (an object with the
    recorded ``state`` and ``confirmations``): a snapshot never moves a payment back."""
    if state == "confirmed":  # (also after replaced or removed: it was mined after all)
        return pay.state != "confirmed" or confirmations > pay.confirmations
    if pay.state in ("replaced", "removed"):
        return False
    return state in ("replaced", "removed")


def send_due_watches(publish, model, due: dict, now_mono: float, now: float, retry: float, describe) -> None:
    """(Re)send ``cmd.chain.watch`` for each address in ``due`` (address -> monotonic time to send)
    whose time has come, until its row in ``model`` (``address``, ``command``, ``expires``,
    ``acked``) says it was answered; a command about to expire gets a new id (watching is
    idempotent). ``describe(row)`` gives the watch's (label, since)."""
    for address, when in list(due.items()):
        if when > now_mono:
            continue
        row = model.get_or_none(model.address == address)
        if row is None or row.acked:
            due.pop(address, None)
            continue
        if row.expires <= now + 5:
            row.command, row.expires = os.urandom(16).hex(), int(now) + 60
            row.save()
        label, since = describe(row)
        publish("cmd.chain.watch", {"id": bytes.fromhex(row.command), "expires": row.expires, "address": address,
                                    "label": label, "since": since})
        due[address] = now_mono + retry
