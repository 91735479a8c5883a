"""BusinessData's tables and the values they hold: CAD amounts and the policies.

Light on purpose: peewee only (no zmq, no runtime), for every reader of the data.
"""

from __future__ import annotations

import re
from decimal import Decimal

import peewee

from proto.errors import DctrlError

db = peewee.DatabaseProxy()

MAX_CENTS = 10**14  # a trillion CAD: far beyond any price, well inside 64 bits
CAD_RE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,2}))?")
INT_RE = re.compile(r"[0-9]{1,9}")


class MoneyError(DctrlError, ValueError):
    """A CAD amount that is not one (a user's input: shown as the reason)."""

    code = "bad_amount"


def parse_cad(value) -> int:
    """CAD as a decimal string ("3.50", "3.5", "3") -> integer cents. Refuses floats, negatives,
    more than 2 decimals, exponents and anything that is not a plain decimal string."""
    if not isinstance(value, str):
        raise MoneyError(f"a CAD amount must be a decimal string like \"3.50\", not {type(value).__name__}")
    if not CAD_RE.fullmatch(value):
        if value.strip().startswith("-"):
            raise MoneyError(f"{value[:40]!r}: a CAD amount cannot be negative")
        if re.fullmatch(r"[0-9]+\.[0-9]{3,}", value):
            raise MoneyError(f"{value[:40]!r}: a CAD amount has at most 2 decimals")
        raise MoneyError(f"{value[:40]!r} is not a CAD amount like \"3.50\"")
    cents = Decimal(value) * 100
    assert cents == cents.to_integral_value()  # guaranteed by the pattern
    return int(cents)


def format_cad(cents: int) -> str:
    """Integer cents -> "3.50"."""
    if type(cents) is not int or cents < 0:
        raise MoneyError(f"cents must be a non-negative int, not {cents!r}")
    return f"{cents // 100}.{cents % 100:02d}"


def _cad_policy(value) -> str:
    return format_cad(parse_cad(value))


def _positive_cad_policy(value) -> str:
    cents = parse_cad(value)
    if cents == 0:
        raise ValueError("must be above 0.00 (a limit of 0 would refuse every price)")
    return format_cad(cents)


def _int_policy(lo, hi):
    def check(value) -> str:
        if not isinstance(value, str) or not INT_RE.fullmatch(value):
            raise ValueError(f"{str(value)[:40]!r} is not a whole number")
        n = int(value)
        if not lo <= n <= hi:
            raise ValueError(f"{n} is not in {lo}..{hi}")
        return str(n)
    return check


# key -> (default as stored, validator returning the normalised string, type of the current value)
POLICIES = {
    "zero_conf_limit_cad": ("20.00", _cad_policy, Decimal),
    "invoice_lifetime_s": ("900", _int_policy(1, 7 * 86400), int),
    "underpayment_tolerance_cad": ("0.05", _cad_policy, Decimal),
    "confirmations_required": ("1", _int_policy(1, 100), int),
    # The highest price a slot may have: `slots set` refuses more, BusinessMgr opens no invoice above it.
    "max_price_cad": ("1000.00", _positive_cad_policy, Decimal),
}


def validate_policy(key: str, value) -> str:
    """The normalised string to store for ``key``; raises ValueError with the reason."""
    if key not in POLICIES:
        raise ValueError(f"unknown policy {key[:64]!r}; known: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[key][1](value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


# -- models -------------------------------------------------------------------

class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class BusinessMachine(Base):
    name = peewee.CharField(unique=True, max_length=32)
    location = peewee.CharField(null=True, max_length=128)
    created = peewee.BigIntegerField()


class BusinessSlot(Base):
    machine = peewee.ForeignKeyField(BusinessMachine, backref="slots", on_delete="CASCADE")
    number = peewee.SmallIntegerField()  # 0..255
    product = peewee.CharField(max_length=64)
    price_cents = peewee.BigIntegerField()
    relay = peewee.CharField(null=True, max_length=32)  # "gpio:17" | "i2c:0x20:3"; None: not wired yet
    stock = peewee.IntegerField(null=True)  # None: not counted
    updated = peewee.BigIntegerField()
    sticker_address = peewee.CharField(null=True, max_length=100, unique=True)  # legacy fixed address
    stock_set = peewee.BigIntegerField(null=True)  # unix s the stock was last set: vends before are not counted

    class Meta:
        indexes = ((("machine", "number"), True),)


class BusinessPolicyVersion(Base):
    version = peewee.AutoField()  # grows across all keys; the latest row of a key is its value
    key = peewee.CharField(max_length=64, index=True)
    value = peewee.CharField(max_length=64)
    created = peewee.BigIntegerField()


class BusinessCommand(Base):
    id = peewee.CharField(primary_key=True, max_length=32)  # command ids applied or refused (dedup)
    topic = peewee.CharField(max_length=64)
    result = peewee.TextField()  # the ack fields, as JSON
    created = peewee.BigIntegerField()


class BusinessStockMove(Base):
    vend = peewee.CharField(primary_key=True, max_length=32)  # BusinessMgr's vend id (hex): counted once
    machine = peewee.CharField(max_length=32)
    slot = peewee.SmallIntegerField()
    before = peewee.IntegerField()
    after = peewee.IntegerField()
    created = peewee.BigIntegerField()


# Short names for readers.
Machine, Slot, PolicyVersion = BusinessMachine, BusinessSlot, BusinessPolicyVersion
TABLES = [BusinessMachine, BusinessSlot, BusinessPolicyVersion, BusinessCommand, BusinessStockMove]
NOT_CLOSED = ("open", "seen", "paid", "vending")  # business_mgr's WAITING + SELLING: a removal waits for these
