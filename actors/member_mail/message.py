"""One outbox row as a MIME message: multipart/alternative (text, HTML), the welcome mail's QR
code inline in the HTML part (multipart/related, Content-ID ``qr``)."""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage

from .templates import QR_CID, qr_png

ORIGINAL_TO = "X-Dctrl-Original-To"          # staging: whom the mail was for
POSSIBLE_DUPLICATE = "X-Dctrl-Possible-Duplicate"  # resent after an interrupted delivery
MAIL_KEY = "X-Dctrl-Mail"                    # kind, member handle, period: the outbox key


def build(row, sender: str, to: str, *, staging_to: str = "") -> EmailMessage:
    """``row``: a MailOutbox row; ``to``: the member's current address. With ``staging_to`` the
    message is addressed there and names ``to`` in the X-Dctrl-Original-To header."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = row.subject
    msg["From"] = sender
    msg["To"] = staging_to or to
    if staging_to:
        msg[ORIGINAL_TO] = to
    msg["Date"] = email.utils.formatdate(row.created, usegmt=True)  # enqueue time: a resend is the same mail
    msg["Message-ID"] = row.message_id
    msg[MAIL_KEY] = f"{row.kind} {row.handle} {row.period}".rstrip()
    if row.possible_duplicate:
        msg[POSSIBLE_DUPLICATE] = "yes"  # an earlier delivery of this Message-ID may have arrived
    msg.set_content(row.text)
    msg.add_alternative(row.html, subtype="html")
    if row.qr:
        html_part = msg.get_payload()[1]
        html_part.add_related(qr_png(row.qr), "image", "png", cid=f"<{QR_CID}>", filename="dues-address.png")
    return msg


def envelope_address(sender: str) -> str:
    """The bare address of a From header (``DCTRL <members@x>`` -> ``members@x``)."""
    return email.utils.parseaddr(sender)[1] or sender
