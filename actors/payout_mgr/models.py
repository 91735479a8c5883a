"""PayoutMgr's tables (issue 13): the treasury's addresses, their watches and its outputs.

Light on purpose: peewee only (no zmq, no runtime, no embit), for every reader of the data
(``dctrl treasury show``, reports). PayoutMgr is the single writer of these tables.

- ``payout_address``: the treasury's addresses PayoutMgr watches, book ``treasury`` (the receive
  branch, /0/i) and ``treasury_change`` (/1/i): the columns of actors/chain/addresses.py
  ``AddressBook.model``, which PayoutMgr's two AddressBooks write. ``label`` says why an index
  is there: ``watched`` (within the gap) or ``used on the chain`` (the chain notifier's discovery
  found history there).
- ``payout_watch``: one row per address in ``payout_address``: its ``cmd.chain.watch``, re-sent
  until acked and again at every start.
- ``payout_utxo``: one row per output paying a treasury address (``txid``, ``vout``), its branch
  and index, amount, where the chain has it (``state``: ``seen`` in the mempool, ``confirmed``,
  ``spent`` by a confirmed transaction (``spent_by``, ``spent_height``, ``spent_block``: which one, where),
  ``removed``: replaced or reorged out and not back) and
  the raw transaction that made it (the PSBT's non-witness UTXO; NULL until fetched).
- ``payout_price``: the last ``price.btc_cad`` heard (one row), for the CAD shown beside sats.
"""

from __future__ import annotations

import peewee

db = peewee.DatabaseProxy()

RECEIVE_BOOK, CHANGE_BOOK = "treasury", "treasury_change"
BOOKS = {RECEIVE_BOOK: "receive", CHANGE_BOOK: "change"}  # book -> branch name
USED_ON_CHAIN = "used on the chain"  # the label of an index the chain notifier found history at
WATCHED = "watched"
UTXO_STATES = ("seen", "confirmed", "spent", "removed")
LIVE = ("seen", "confirmed")  # the treasury's money: unconfirmed and confirmed


class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class PayoutAddress(Base):
    """The treasury's watched addresses (the columns of ``AddressBook.model``)."""
    book = peewee.CharField(max_length=32)  # treasury (receive, /0/i) or treasury_change (/1/i)
    position = peewee.IntegerField()  # the index on its branch
    address = peewee.CharField(max_length=100, unique=True)
    script = peewee.CharField(max_length=200)
    label = peewee.CharField(null=True, max_length=64)
    issued_at = peewee.BigIntegerField()  # unix s first watched: the watch's ``since``

    class Meta:
        indexes = ((("book", "position"), True),)


class PayoutWatch(Base):
    """One row per treasury address: watched for good (re-watched at every start)."""
    address = peewee.CharField(primary_key=True, max_length=100)
    book = peewee.CharField(max_length=32)
    position = peewee.IntegerField()
    since = peewee.BigIntegerField()  # unix s (cmd.chain.watch ``since``)
    command = peewee.CharField(max_length=32)  # the current cmd.chain.watch id (hex)
    expires = peewee.BigIntegerField()
    acked = peewee.BooleanField(default=False)
    refused = peewee.TextField(null=True)


class PayoutUtxo(Base):
    """One output paying a treasury address, and where the chain has it."""
    txid = peewee.CharField(max_length=64)
    vout = peewee.IntegerField()
    sats = peewee.BigIntegerField()
    branch = peewee.CharField(max_length=8)  # receive or change
    position = peewee.IntegerField()  # the address's index on its branch
    address = peewee.CharField(max_length=100, index=True)
    state = peewee.CharField(max_length=10)  # seen, confirmed, spent, removed (UTXO_STATES)
    confirmations = peewee.IntegerField(default=0)  # as the notifier last said (capped at confirm_depth)
    height = peewee.IntegerField(null=True)  # the block that confirmed it: its height
    block = peewee.CharField(null=True, max_length=64)  # and its hash, when known (chain.tx.confirmed)
    first_seen = peewee.BigIntegerField()  # unix s
    updated = peewee.BigIntegerField()  # unix s of the last change of state
    spent_at = peewee.BigIntegerField(null=True)  # unix s it was found spent
    # the confirmed transaction spending it, found in the blocks (no -txindex needed): its txid,
    # and its block's height and hash (a reorg that takes that block away is noticed); NULL while
    # unspent, or spent by a transaction not found (yet) within [chain] rescan_limit blocks
    spent_by = peewee.CharField(null=True, max_length=64)
    spent_height = peewee.IntegerField(null=True)
    spent_block = peewee.CharField(null=True, max_length=64)
    raw_tx = peewee.BlobField(null=True)  # the transaction that made it (NULL until fetched)

    class Meta:
        indexes = ((("txid", "vout"), True),)

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


class PayoutPrice(Base):
    """The last price.btc_cad PayoutMgr heard (one row, id 1)."""
    id = peewee.IntegerField(primary_key=True)
    cad_per_btc = peewee.CharField(max_length=32)
    as_of = peewee.BigIntegerField()  # the price's as_of, unix ms
    received = peewee.BigIntegerField()  # unix s
    stale = peewee.TextField(null=True)  # a price.stale since: why


TABLES = [PayoutAddress, PayoutWatch, PayoutUtxo, PayoutPrice]
ADDED_COLUMNS = {PayoutUtxo: ["spent_by", "spent_height", "spent_block"]}  # for ensure_tables: later columns
