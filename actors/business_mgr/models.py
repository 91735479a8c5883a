"""BusinessMgr's tables (``sales_*``), their states, its settings and satoshi amounts.

Light on purpose: peewee only (no zmq, no runtime, no embit), for every reader of the data.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import peewee

db = peewee.DatabaseProxy()

SATS_PER_BTC = 100_000_000
STATES = ("open", "seen", "paid", "vending", "vended", "expired", "underpaid", "overpaid", "failed")
WAITING = ("open", "seen")                        # not paid yet: may still be paid or expire
SELLING = ("paid", "vending")                     # paid, items still to dispense
CLOSED = ("vended", "expired", "underpaid", "overpaid", "failed")
LIVE = ("mempool", "confirmed")                   # payment states that still hold money

DEFAULTS = {
    "receive": "",            # account xpub/tpub/zpub or a wpkh(...) descriptor: invoice addresses
    "price_max_age": 60,      # seconds a price.btc_cad stays good for a sale
    "watch_retry": 2.0,       # seconds between cmd.chain.watch retries
    "vend_retry": 2.0,        # seconds between re-sends of an unacknowledged vend
    "vend_command_ttl": 30,   # seconds a vend command is valid (never past the item's deadline)
    "vend_deadline": 300,     # seconds after payment that an item may still be dispensed
    "late_window": 86400,     # seconds after closing that an invoice is still watched at start
    "reannounce_min_s": 60,   # a press on a slot with an open invoice shows it again if it has this long left
    "max_invoices_per_minute": 6,  # per machine: a stuck button must not burn the wallet's address gap
    "reconcile_interval": 60,  # seconds between asking the chain again about an expired invoice still waiting
    "gap_limit": 20,          # unused addresses in a row a restoring wallet looks through (Electrum, Sparrow)
    "reuse_after_s": 3600,    # an address whose invoices closed unpaid this long ago may be handed out again
}


def quote_sats(cents: int, cad_per_btc: Decimal) -> int:
    """CAD cents at ``cad_per_btc`` in satoshis, rounded up: never sell below the price."""
    return int((Decimal(cents) * SATS_PER_BTC / (cad_per_btc * 100)).to_integral_value(rounding=ROUND_CEILING))


def tolerance_sats(cad: Decimal, cad_per_btc: Decimal) -> int:
    """A CAD tolerance in satoshis, rounded down: never forgive more than the policy says."""
    return int((cad * SATS_PER_BTC / cad_per_btc).to_integral_value(rounding=ROUND_FLOOR))


def btc(sats: int) -> str:
    return f"{sats // SATS_PER_BTC}.{sats % SATS_PER_BTC:08d}"


# -- models -------------------------------------------------------------------

class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class SalesInvoice(Base):
    id = peewee.AutoField()
    mode = peewee.CharField(max_length=8)                  # invoice | sticker
    machine = peewee.CharField(max_length=32)
    slot = peewee.SmallIntegerField()
    product = peewee.CharField(max_length=64)
    price_cents = peewee.BigIntegerField()                 # per item
    items = peewee.IntegerField(default=1)                 # sticker: set when priced
    cad_per_btc = peewee.CharField(null=True, max_length=40)  # the quote's price (Decimal as text)
    due_sats = peewee.BigIntegerField(null=True)           # for all items; sticker: None until priced
    tolerance_sats = peewee.BigIntegerField(default=0)
    zero_conf = peewee.BooleanField(default=False)         # amount below the zero-conf limit at opening
    confirmations = peewee.IntegerField(default=1)         # required when zero_conf is False
    address = peewee.CharField(max_length=100, index=True)
    state = peewee.CharField(max_length=10, index=True)
    version = peewee.IntegerField(default=0)               # bumped on every published change
    reason = peewee.TextField(null=True)
    created = peewee.BigIntegerField()
    expires = peewee.BigIntegerField(index=True)
    paid_at = peewee.BigIntegerField(null=True)
    closed_at = peewee.BigIntegerField(null=True)
    received_sats = peewee.BigIntegerField(default=0)      # on time and still live
    late_sats = peewee.BigIntegerField(default=0)          # first seen after expiry or closing
    credit_sats = peewee.BigIntegerField(default=0)        # received beyond the amount due
    lost_sats = peewee.BigIntegerField(default=0)          # counted for the sale, then replaced or removed
    vended = peewee.IntegerField(default=0)                # items dispensed


class SalesPayment(Base):
    txid = peewee.CharField(max_length=64)
    vout = peewee.IntegerField()
    invoice = peewee.ForeignKeyField(SalesInvoice, backref="payments", on_delete="CASCADE")
    sats = peewee.BigIntegerField()
    state = peewee.CharField(max_length=10)                # mempool | confirmed | replaced | removed
    confirmations = peewee.IntegerField(default=0)
    rbf = peewee.BooleanField(default=False)
    late = peewee.BooleanField(default=False)
    counted = peewee.BooleanField(default=False)           # part of what paid the invoice
    first_seen = peewee.BigIntegerField()                  # unix s (the chain notifier's, when it says)
    replaced_by = peewee.CharField(null=True, max_length=64, index=True)  # its replacement (a fee bump) takes its place

    class Meta:
        indexes = ((("txid", "vout"), True),)


class SalesVend(Base):
    id = peewee.CharField(primary_key=True, max_length=32)  # the command id (hex)
    invoice = peewee.ForeignKeyField(SalesInvoice, backref="vends", on_delete="CASCADE")
    item = peewee.IntegerField()
    machine = peewee.CharField(max_length=32)
    slot = peewee.SmallIntegerField()
    state = peewee.CharField(max_length=10, index=True)    # sent | vended | refused | failed | unanswered
    created = peewee.BigIntegerField()
    expires = peewee.BigIntegerField()
    deadline = peewee.BigIntegerField()
    attempts = peewee.IntegerField(default=0)
    acked_at = peewee.BigIntegerField(null=True)
    reason = peewee.TextField(null=True)
    pulsed_ms = peewee.IntegerField(null=True)


class SalesWatch(Base):
    address = peewee.CharField(primary_key=True, max_length=100)
    label = peewee.CharField(null=True, max_length=64)
    command = peewee.CharField(max_length=32)              # the current cmd.chain.watch id (hex)
    expires = peewee.BigIntegerField()
    acked = peewee.BooleanField(default=False)
    reconcile = peewee.BooleanField(default=False)         # apply the ack's outputs; hold expiry until then
    refused = peewee.TextField(null=True)
    created = peewee.BigIntegerField(default=0)            # when first asked (sticker: older payments are not sales)


class SalesPrice(Base):
    """The last price event this actor accepted (one row, id 1): a restart sells at once."""
    id = peewee.IntegerField(primary_key=True)
    cad_per_btc = peewee.CharField(null=True, max_length=40)  # None: the last event said no price
    as_of = peewee.BigIntegerField(null=True)              # ms: the notifier's, its oldest quote used
    received = peewee.BigIntegerField()                    # unix s (this actor's clock) it arrived
    stale = peewee.TextField(null=True)                    # why there was no price (price.stale, ...)


TABLES = [SalesInvoice, SalesPayment, SalesVend, SalesWatch, SalesPrice]
