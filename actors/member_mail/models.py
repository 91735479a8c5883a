"""MemberMail's outbox table (``mail_outbox``), its states and its settings.

Light on purpose: peewee only (no zmq, no runtime, no smtplib), for every reader of the data.

A row is one mail to one member, keyed by (kind, handle, period): ``welcome`` once per
member (period ``""``), ``receipt`` once per payment (period ``txid:vout``), ``reminder``
and ``statement`` once per dues period or month, and so on. The key is UNIQUE, so the same
mail is never queued twice, whoever asks and however often.

States::

    queued --(MAIL, RCPT accepted)--> sending --(250 after DATA)--> sent
       |  ^                              |
       |  +--- 4xx to DATA: later -------+   (from queued too: connection refused or lost,
       |                                 |    a 4xx, MAIL FROM refused)
       +--(5xx to RCPT)--> failed <------+ (5xx to DATA)   reason kept, WARNING
       +--(member opted out of this kind)--> skipped
    sending found at start-up, or the connection lost during DATA: the server may or may
    not have the mail (``interrupted`` in DEFAULTS; docs/architecture.md, "Member mail")
       -> queued with possible_duplicate set (resent with the same Message-ID), or -> held
    held, failed --(an operator: Dispatcher.release)--> queued
"""

from __future__ import annotations

import re

import peewee

from proto.errors import ConfigError

db = peewee.DatabaseProxy()

KINDS = ("welcome", "receipt", "reminder", "overdue", "lapsed", "reinstated", "statement", "payout", "test")
# Mails that go to the row's own recipient, not to a member's address read at send time:
# ``test`` (`dctrl mail send-test ADDRESS`; handle "", period "test:<command id>").
DIRECT_KINDS = frozenset({"test"})
# A member may opt out of these; never of receipts, nor of the mails about their status, nor of
# ``payout`` (a co-signer's duty: a payout waits for their signature).
OPT_OUT_KINDS = frozenset({"reminder", "statement"})
STATES = ("queued", "sending", "sent", "failed", "held", "skipped")
FINAL = ("sent", "failed", "skipped")

DEFAULTS = {
    "smtp_host": "127.0.0.1",
    "smtp_port": 25,
    "smtp_security": "plain",       # plain | starttls | tls (implicit TLS, usually port 465)
    "smtp_user": "",                # AUTH when set; the password comes from the Vault (smtp_password)
    "smtp_timeout": 30.0,           # seconds for each SMTP exchange
    "from": "DCTRL <members@dctrl.invalid>",
    "space_name": "DCTRL",
    "msgid_domain": "",             # right side of Message-IDs; "" takes the From address's domain
    "staging_to": "",               # when set, every mail goes here (the member's address in a header)
    "rate_per_second": 20,          # messages sent at most per second (0: no limit) ...
    "rate_per_minute": 600,         # ... and per minute (makeradmin: 4 per 1 s wake-up)
    "batch": 200,                   # rows looked at per drain
    "retry_base_s": 60,             # first retry after a 4xx or connection error; doubles each time
    "retry_max_s": 3600,            # ... up to this
    "give_up_after_s": 3 * 86400,   # a mail still not accepted this long after it was queued fails
    "interrupted": "resend",        # a mail maybe sent before a crash: resend (same Message-ID) | hold
    "templates_dir": "",            # "" : the package's templates/
    "reminder_days": 7,             # the reminder goes this many days (or fewer) before a period starts
    "status_max_age_days": 3,       # a member.status transition dated longer ago than this is not mailed
    "cosigners": [],                # member handles mailed when a payout awaits signatures (payout.awaiting_signatures)
}

SECURITY = ("plain", "starttls", "tls")
INTERRUPTED = ("resend", "hold")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class MailOutbox(Base):
    id = peewee.AutoField()
    kind = peewee.CharField(max_length=16)                  # one of KINDS
    handle = peewee.CharField(max_length=64)                # the member (events carry handles only)
    period = peewee.CharField(max_length=100, default="")   # what makes it one mail: "2026-12", "txid:vout"
    recipient = peewee.CharField(max_length=320)            # resolved at enqueue; updated to the address used
    subject = peewee.TextField()
    text = peewee.TextField()
    html = peewee.TextField()
    qr = peewee.TextField(null=True)                        # text of an inline QR image (a bitcoin: URI)
    message_id = peewee.CharField(max_length=255, unique=True)  # made at enqueue; a resend reuses it
    state = peewee.CharField(max_length=10, default="queued", index=True)
    attempts = peewee.IntegerField(default=0)               # SMTP transactions begun for it
    possible_duplicate = peewee.BooleanField(default=False)  # was (maybe) delivered before a crash
    next_attempt = peewee.DoubleField(index=True)            # unix time; queued rows go when it passes
    last_error = peewee.TextField(null=True)
    created = peewee.DoubleField()
    updated = peewee.DoubleField()
    sent_at = peewee.DoubleField(null=True)
    released = peewee.DoubleField(null=True)                 # an operator put it back (held or failed)

    class Meta:
        table_name = "mail_outbox"
        indexes = ((("kind", "handle", "period"), True),)  # every mail at most once


class MailCursor(Base):
    """How far MemberMail has looked at MemberData's rows (``member_fact``, ``member_payment``)
    and the Reporter's (``report_transition``): the highest id it has queued mail for, or
    decided none is due. Made at the first start at the highest ids there are, so history is
    never mailed."""
    name = peewee.CharField(max_length=32, primary_key=True)
    last_id = peewee.BigIntegerField()

    class Meta:
        table_name = "mail_cursor"


TABLES = [MailOutbox, MailCursor]

HANDLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # MemberData's (actors/member_data/models.py HANDLE_RE)


def cosigner_handles(values: list[str]) -> list[str]:
    """``[member_mail] cosigners``: member handles, in order, without repeats. Handles only: an
    address would put personal data in config.toml, outside MemberData (where a member's address
    is changed or forgotten), so one with ``@`` is refused with the reason."""
    out: list[str] = []
    for value in values:
        handle = value.strip()
        if "@" in handle:
            raise ConfigError(f"[member_mail] cosigners: {value!r} is a mail address; name the co-signer's member "
                              "handle (their address comes from MemberData: `dctrl members add HANDLE --email ...`)")
        if not HANDLE_RE.fullmatch(handle):
            raise ConfigError(f"[member_mail] cosigners: {value!r} is not a member handle")
        if handle not in out:
            out.append(handle)
    return out


def settings(config: dict | None = None) -> dict:
    """``config`` (a ``[member_mail]`` table) over :data:`DEFAULTS`, checked; raises ConfigError
    naming the key. (The home's config schema takes these DEFAULTS when the actor is wired in.)"""
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"[member_mail]: unknown setting(s) {', '.join(unknown)}")
    out = {**DEFAULTS, **config}
    for key, default in DEFAULTS.items():
        value = out[key]
        if isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, type(default))
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and value >= 0
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConfigError(f"[member_mail] {key} = {value!r}: expected {type(default).__name__} "
                              f"{'>= 0 ' if isinstance(default, (int, float)) else ''}like {default!r}")
    if out["smtp_security"] not in SECURITY:
        raise ConfigError(f"[member_mail] smtp_security = {out['smtp_security']!r}: one of {', '.join(SECURITY)}")
    if out["interrupted"] not in INTERRUPTED:
        raise ConfigError(f"[member_mail] interrupted = {out['interrupted']!r}: one of {', '.join(INTERRUPTED)}")
    if out["smtp_user"] and out["smtp_security"] == "plain" and out["smtp_host"] not in LOOPBACK:
        raise ConfigError(f"[member_mail] smtp_user is set: the password would cross the network in clear to "
                          f"{out['smtp_host']}; set smtp_security to starttls or tls")
    out["cosigners"] = cosigner_handles(out["cosigners"])
    if "@" not in out["from"] or (out["staging_to"] and "@" not in out["staging_to"]):
        raise ConfigError("[member_mail] from and staging_to must be mail addresses")
    return out
