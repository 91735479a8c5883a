"""MemberData's tables and the values they hold: members, plans, and the facts about members.

Light on purpose: peewee only (no zmq, no runtime), for every reader of the data (the CLI,
the coming Reporter). The validators here are the ones MemberData applies to every command;
the CLI's import uses the same ones to judge a file before it sends anything.

What is stored where, and what may change:

- ``member_member``: one row per handle, ever (a handle is never given to someone else). Its
  ``name`` and ``email`` are the only personal data, and with ``mail_opt_out`` the only columns
  that change: an admin's correction (``cmd.members.set``), or erased for good by ``forget``
  (after leaving). ``mail_opt_out``: the kinds of mail the member opted out of.
- ``member_plan_version``: plans are versioned like BusinessData's policies: a change is a new
  row, a plan's terms are its latest version.
- ``member_fact``: what happened to a member, append-only: joined, plan changes with the date
  they take effect, left, rejoined, group joins and leaves, details changed (which fields,
  never their values), forgotten.
- ``member_payment`` and ``member_adjustment``: money, integer CAD cents, append-only. A wrong
  payment is never edited or deleted: an adjustment of the opposite amount reverses it (its
  ``reverses`` names the payment, which can be reversed once). A bitcoin payment carries its
  ``txid:vout``, unique, so one output is counted once.

Dates are ISO calendar dates (``YYYY-MM-DD``) stored as such (strings sort as dates); times of
recording are unix seconds.
"""

from __future__ import annotations

import datetime
import re
from decimal import Decimal

import msgpack
import peewee

from proto.errors import DctrlError, SecretError
from proto.sealed import open_sealed, seal_for
from proto.text import unprintable_reason

db = peewee.DatabaseProxy()

HANDLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # as proto.topics NAME: a handle is safe in a topic or a path
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# An address as mail systems accept it in practice: one @, a dot in the domain, no spaces.
# (The full RFC 5322 grammar admits quoted spaces and comments that no member types.)
EMAIL_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
CAD_RE = re.compile(r"-?[0-9]{1,9}(?:\.[0-9]+)?")
TXID_VOUT_RE = re.compile(r"[0-9a-f]{64}:[0-9]{1,6}")
MAX_CENTS = 10**11  # a billion CAD: far beyond any dues, well inside 64 bits
PERIODS = ("month", "quarter", "year")
DEFAULT_TERM_DAYS = 7  # a period's dues are due for this many days from its start (the Reporter's core)
MAX_TERM_DAYS = 90  # the bound of cmd.members.plan_set's term_days
SHORTEST_PERIOD_DAYS = {"month": 28, "quarter": 89, "year": 365}  # February; February to April
METHODS = ("bitcoin", "cash", "etransfer")
MANUAL_METHODS = ("cash", "etransfer")  # what an admin records by hand (bitcoin: the chain's, with txid:vout)
# The mail a member may opt out of (MemberMail's OPT_OUT_KINDS): never receipts, nor the mails
# about their status (overdue, lapsed, reinstated).
MAIL_OPT_OUT_KINDS = ("reminder", "statement")


class MemberInputError(DctrlError, ValueError):
    """A value from outside that is not one (shown to the admin as the reason)."""

    code = "bad_input"


# -- validators (each returns the normalised value or raises MemberInputError naming the field) --

def check_text(field: str, value, *, max_len: int, required: bool = True) -> str:
    if not isinstance(value, str):
        raise MemberInputError(f"{field}: expected text, not {type(value).__name__}")
    reason = unprintable_reason(field, value)  # (proto/text.py: what BusinessData refuses too)
    if reason:
        raise MemberInputError(reason)
    value = value.strip()
    if required and not value:
        raise MemberInputError(f"{field}: required")
    if len(value) > max_len:
        raise MemberInputError(f"{field}: longer than {max_len} characters")
    return value


def check_handle(value, field: str = "handle") -> str:
    if not isinstance(value, str) or not HANDLE_RE.fullmatch(value):
        raise MemberInputError(f"{field} {str(value)[:40]!r}: 1 to 32 of a-z 0-9 _ -, starting with a letter")
    return value


def check_name(value) -> str:
    return check_text("name", value, max_len=128)


def check_email(value) -> str:
    value = check_text("email", value, max_len=254)
    if not EMAIL_RE.fullmatch(value):
        raise MemberInputError(f"email {value[:60]!r} is not an address like name@example.org")
    return value


def check_note(value, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    return check_text("note", value, max_len=256, required=required) or None


def check_opt_out(value, field: str = "opt_out") -> tuple[str, ...]:
    """Kinds of mail to opt out of or back in to, as a list or a comma-separated text
    ("reminder,statement"): sorted, without repeats; each one of MAIL_OPT_OUT_KINDS."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise MemberInputError(f"{field}: a list of {', '.join(MAIL_OPT_OUT_KINDS)}")
    kinds = {v.strip() for v in items if v.strip()}
    bad = sorted(kinds - set(MAIL_OPT_OUT_KINDS))
    if bad or not kinds:
        raise MemberInputError(f"{field}: {', '.join(bad) or 'nothing'}: a member may opt out of "
                               f"{' and '.join(MAIL_OPT_OUT_KINDS)} mail only (never receipts or status mail)")
    return tuple(sorted(kinds))


def opt_out_kinds(column: str | None) -> tuple[str, ...]:
    """The kinds held in ``member_member.mail_opt_out`` ("reminder,statement"; None or "": none)."""
    return tuple(k for k in (column or "").split(",") if k)


def check_date(value, field: str = "date") -> str:
    """An ISO calendar date ``YYYY-MM-DD`` (a real one: no 2025-02-30) between 1900 and 2999."""
    if not isinstance(value, str) or not DATE_RE.fullmatch(value):
        raise MemberInputError(f"{field} {str(value)[:40]!r} is not a date like 2025-01-31")
    try:
        day = datetime.date.fromisoformat(value)
    except ValueError:
        raise MemberInputError(f"{field} {value!r} is not a date of the calendar") from None
    if not 1900 <= day.year <= 2999:
        raise MemberInputError(f"{field} {value!r} is out of range")
    return value


def check_term_days(value, period: str) -> int:
    """A plan's term: whole days from a period's start during which its dues are ``due`` (not
    yet ``overdue``), 0 to 90 and not more than the shortest period of the plan's kind (28 days
    for a month, 89 for a quarter), so a period's dues fall due before the next period starts."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MemberInputError(f"term_days {str(value)[:20]!r} is not a whole number of days")
    longest = min(MAX_TERM_DAYS, SHORTEST_PERIOD_DAYS[period])
    if not 0 <= value <= longest:
        raise MemberInputError(f"term_days {value} is out of range: 0 to {longest} for a {period} plan")
    return value


def parse_cents(value, *, signed: bool = False, field: str = "amount") -> int:
    """CAD as a decimal string ("40.00", "40", "-10.5" if ``signed``) -> integer cents, through
    :class:`~decimal.Decimal`. Refuses floats and ints (the caller must say what it means),
    more than 2 decimals, exponents, NaN, and a sign unless ``signed``."""
    if not isinstance(value, str):
        raise MemberInputError(f"{field}: a CAD amount is a decimal string like \"40.00\", "
                               f"not {type(value).__name__}")
    if not CAD_RE.fullmatch(value):
        raise MemberInputError(f"{field}: {value[:40]!r} is not a CAD amount like \"40.00\"")
    if value.startswith("-") and not signed:
        raise MemberInputError(f"{field}: {value[:40]!r}: cannot be negative")
    if "." in value and len(value.split(".", 1)[1]) > 2:
        raise MemberInputError(f"{field}: {value[:40]!r} has more than 2 decimals")
    cents = Decimal(value) * 100  # exact: at most 2 decimals, at most 9 digits before them
    assert cents == cents.to_integral_value()
    cents = int(cents)
    if abs(cents) > MAX_CENTS:
        raise MemberInputError(f"{field}: {value[:40]!r} is too large")
    return cents


def format_cents(cents: int) -> str:
    """Integer cents -> "40.00" (or "-10.00")."""
    if type(cents) is not int:
        raise MemberInputError(f"cents must be an int, not {type(cents).__name__}")
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


# -- personal data on the bus -----------------------------------------------------------
# A command that gives a name or an email (cmd.members.add, cmd.members.set) carries them sealed
# to member_data's CurveZMQ public key (a SealedBox, as the Vault's secrets): the event log records
# every message on the bus for months, and `members forget` could never erase a name from it.
# Only member_data's secret key opens them; nothing else on the bus ever holds them.

PERSONAL_KEYS = ("name", "email")


def seal_personal(curve_public_z85: bytes, *, name: str | None, email: str | None) -> bytes:
    """``{"name", "email"}`` (either may be None: unchanged) sealed to member_data's Curve key."""
    return seal_for(curve_public_z85, msgpack.packb({"name": name, "email": email}, use_bin_type=True))


def open_personal(curve_secrets_z85, sealed: bytes) -> dict:
    """The ``{"name", "email"}`` that :func:`seal_personal` sealed, opened with the first of
    ``curve_secrets_z85`` that opens it; MemberInputError if none does or it is not that map."""
    for secret in curve_secrets_z85:
        try:
            raw = open_sealed(secret, sealed)
        except SecretError:
            continue
        try:
            value = msgpack.unpackb(raw, raw=False, max_str_len=1024, max_bin_len=0, max_array_len=0,
                                    max_map_len=2)
        except Exception:  # msgpack raises several types for bad input
            value = None
        if (not isinstance(value, dict) or set(value) != set(PERSONAL_KEYS)
                or not all(v is None or isinstance(v, str) for v in value.values())):
            raise MemberInputError("personal: not a sealed map of name and email")
        return value
    raise MemberInputError("personal: not sealed to member_data's key (sealed to another identity, a key "
                           "rotated away, or altered)")


# -- models -------------------------------------------------------------------

class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class MemberMember(Base):
    handle = peewee.CharField(unique=True, max_length=32)  # never reused, kept after forgetting
    name = peewee.CharField(null=True, max_length=128)  # None once forgotten
    email = peewee.CharField(null=True, max_length=254)  # None once forgotten
    joined = peewee.CharField(max_length=10)  # ISO date of the first joining
    created = peewee.BigIntegerField()  # unix s recorded
    forgotten = peewee.BigIntegerField(null=True)  # unix s name and email were erased
    # The mail the member does not want ("reminder,statement", sorted; None or "": all of it):
    # MemberMail skips those (cmd.members.set opt_out/opt_in). Added to an older table at start.
    mail_opt_out = peewee.CharField(null=True, max_length=64)


class MemberPlanVersion(Base):
    version = peewee.AutoField()  # grows across all plans; a plan's terms are its latest row
    name = peewee.CharField(max_length=32, index=True)
    cents = peewee.BigIntegerField()  # dues per period, CAD cents
    period = peewee.CharField(max_length=8)  # month | quarter | year
    grace_days = peewee.IntegerField()
    confirmations = peewee.IntegerField()  # for dues paid in bitcoin
    # days from a period's start its dues are due (then overdue); added by a later version: rows
    # made before it were given DEFAULT_TERM_DAYS when MemberData added the column (ADD_COLUMNS)
    term_days = peewee.IntegerField(default=DEFAULT_TERM_DAYS)
    created = peewee.BigIntegerField()


class MemberFact(Base):
    id = peewee.AutoField()  # order of recording
    handle = peewee.CharField(max_length=32, index=True)
    kind = peewee.CharField(max_length=16)  # FACT_KINDS
    on = peewee.CharField(max_length=10)  # ISO date it takes effect
    plan = peewee.CharField(null=True, max_length=32)  # kind plan: the plan from `on`
    group = peewee.CharField(null=True, max_length=32)  # kinds group_joined | group_left
    detail = peewee.CharField(null=True, max_length=64)  # kind details: the fields changed ("email,name")
    command = peewee.CharField(max_length=32)  # the command that recorded it
    created = peewee.BigIntegerField()


class MemberPayment(Base):
    id = peewee.AutoField()
    handle = peewee.CharField(max_length=32, index=True)
    on = peewee.CharField(max_length=10)  # ISO date paid
    method = peewee.CharField(max_length=16)  # METHODS
    cents = peewee.BigIntegerField()  # > 0, CAD cents
    note = peewee.CharField(null=True, max_length=256)
    txid_vout = peewee.CharField(null=True, unique=True, max_length=72)  # bitcoin: counted once
    command = peewee.CharField(max_length=32)
    created = peewee.BigIntegerField()


class MemberAdjustment(Base):
    id = peewee.AutoField()
    handle = peewee.CharField(max_length=32, index=True)
    on = peewee.CharField(max_length=10)
    cents = peewee.BigIntegerField()  # signed, never 0: + a credit to the member, - a charge or a reversal
    note = peewee.CharField(max_length=256)
    reverses = peewee.IntegerField(null=True, unique=True)  # the payment this reverses (once)
    command = peewee.CharField(max_length=32)
    created = peewee.BigIntegerField()


class MemberCommand(Base):
    id = peewee.CharField(primary_key=True, max_length=32)  # command ids applied or refused (dedup)
    topic = peewee.CharField(max_length=64)
    result = peewee.TextField()  # the ack fields, as JSON
    created = peewee.BigIntegerField()


DUES_BOOK = "dues"  # the address book of dues addresses ([members] receive)
USED_ON_CHAIN = "used on the chain (found at start)"  # the label of a dues index skipped: it has history


class MemberAddress(Base):
    """Dues addresses handed out (book ``dues``): the columns of actors/chain/addresses.py
    ``AddressBook.model``, which MemberData's AddressBook writes (this module imports no embit).
    ``label`` is the member's handle, or why an index was skipped (history found on the chain)."""
    book = peewee.CharField(max_length=32)
    position = peewee.IntegerField()  # the receive index (/0/position)
    address = peewee.CharField(max_length=100, unique=True)
    script = peewee.CharField(max_length=200)
    label = peewee.CharField(null=True, max_length=64)
    issued_at = peewee.BigIntegerField()  # unix s handed out: the watch's birth (the notifier rescans from it)

    class Meta:
        indexes = ((("book", "position"), True),)


class MemberWatch(Base):
    """One row per dues address handed out: watched for good (re-watched at every start)."""
    address = peewee.CharField(primary_key=True, max_length=100)
    handle = peewee.CharField(max_length=32, index=True)
    since = peewee.BigIntegerField()  # unix s handed out (cmd.chain.watch ``since``)
    command = peewee.CharField(max_length=32)  # the current cmd.chain.watch id (hex)
    expires = peewee.BigIntegerField()
    acked = peewee.BooleanField(default=False)
    refused = peewee.TextField(null=True)


class MemberChainPayment(Base):
    """What the chain says of one output paying a dues address, and what was made of it: its
    CAD value (fixed once, with the rate and its sources), the payment it counted as (once,
    at the plan's confirmations) and the adjustment that reversed it (once)."""
    txid_vout = peewee.CharField(primary_key=True, max_length=72)
    handle = peewee.CharField(max_length=32, index=True)
    address = peewee.CharField(max_length=100, index=True)
    sats = peewee.BigIntegerField()
    state = peewee.CharField(max_length=16)  # mempool | confirmed | replaced | removed
    confirmations = peewee.IntegerField(default=0)
    first_seen = peewee.BigIntegerField()  # unix s first seen (the notifier's, for a payment learnt late)
    cad_per_btc = peewee.CharField(null=True, max_length=32)  # the rate it is valued at (None: no fresh price yet)
    rate_as_of = peewee.BigIntegerField(null=True)  # the price's as_of, unix ms
    rate_sources = peewee.TextField(null=True)  # JSON list of the price sources used
    rate_late = peewee.BooleanField(default=False)  # valued at a price that came after it was first seen
    payment = peewee.IntegerField(null=True)  # member_payment id once counted
    reversal = peewee.IntegerField(null=True)  # member_adjustment id once reversed
    replaced_by = peewee.CharField(null=True, max_length=64)


class MemberPrice(Base):
    """The last price event MemberData accepted (one row, id 1), or why there is none: a restart
    values a payment at once at a price that arrived within ``price_max_age`` s (wall clock)."""
    id = peewee.IntegerField(primary_key=True)
    cad_per_btc = peewee.CharField(null=True, max_length=32)
    as_of = peewee.BigIntegerField(null=True)  # the price's as_of, unix ms
    sources = peewee.TextField(null=True)  # JSON list of the sources used
    received = peewee.BigIntegerField()  # unix s
    stale = peewee.TextField(null=True)  # why there is no price (price.stale), else None


MAIL_OPT_OUT_COLUMNS = {MemberMember: ["mail_opt_out"]}  # added to an older table at start (db.ensure_tables)
FACT_KINDS = ("joined", "plan", "left", "rejoined", "group_joined", "group_left", "details", "forgotten")
# Short names for readers.
Member, PlanVersion, Fact, Payment, Adjustment = (MemberMember, MemberPlanVersion, MemberFact, MemberPayment,
                                                  MemberAdjustment)
TABLES = [MemberMember, MemberPlanVersion, MemberFact, MemberPayment, MemberAdjustment, MemberCommand, MemberAddress,
          MemberWatch, MemberChainPayment, MemberPrice]
# Columns a later version added (actors/db.py ensure_tables adds them to an existing table, nullable).
ADD_COLUMNS = {MemberPlanVersion: ["term_days"]}


def fill_added_columns(database) -> int:
    """Give the rows made before a column was added its value: a plan version without a term gets
    DEFAULT_TERM_DAYS, the term every plan had before. Returns the rows changed."""
    return (MemberPlanVersion.update(term_days=DEFAULT_TERM_DAYS)
            .where(MemberPlanVersion.term_days.is_null()).bind(database).execute())
