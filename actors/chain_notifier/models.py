"""ChainNotifier's tables (``chain_*``): what it watches, how far it got, the outputs it found.

Light on purpose: peewee only (no zmq, no runtime, no embit), for every reader of the data.
"""

from __future__ import annotations

import peewee

db = peewee.DatabaseProxy()


class Base(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class ChainWatched(Base):
    script = peewee.CharField(primary_key=True, max_length=200)
    address = peewee.CharField(max_length=100)
    label = peewee.CharField(null=True, max_length=64)
    created = peewee.BigIntegerField()
    # the earliest ``since`` a rescan for this script completed back to (NULL: none yet): the
    # blocks processed before ``created`` were looked at down to it, those after were scanned
    # live, so a watch again with a ``since`` not earlier needs no rescan
    rescanned_since = peewee.BigIntegerField(null=True)


class ChainCursor(Base):
    id = peewee.IntegerField(primary_key=True)
    height = peewee.IntegerField()
    hash = peewee.CharField(max_length=64)


class ChainBlock(Base):
    height = peewee.IntegerField(primary_key=True)
    hash = peewee.CharField(max_length=64)
    processed_at = peewee.BigIntegerField(null=True)  # unix s when this notifier processed it (NULL: older versions)


class ChainOutput(Base):
    txid = peewee.CharField(max_length=64)
    vout = peewee.IntegerField()
    script = peewee.CharField(max_length=200, index=True)
    address = peewee.CharField(max_length=100)
    sats = peewee.BigIntegerField()
    label = peewee.CharField(null=True, max_length=64)
    state = peewee.CharField(max_length=12, index=True)  # mempool | confirmed | replaced | removed
    height = peewee.IntegerField(null=True, index=True)
    block = peewee.CharField(null=True, max_length=64)
    confirmations = peewee.IntegerField(default=0)  # the highest count published
    generation = peewee.IntegerField(default=0)  # bumped when a reorg unconfirms it
    rbf = peewee.BooleanField(default=False)
    inputs = peewee.TextField(default="[]")  # the tx's spent outpoints, to find replacements
    seen_at = peewee.BigIntegerField(null=True)  # unix s when this notifier first saw it (mempool or block)
    replaced_by = peewee.CharField(null=True, max_length=64)  # the conflicting txid, once replaced

    class Meta:
        indexes = ((("txid", "vout"), True),)


class ChainOutbox(Base):
    id = peewee.AutoField()
    event_id = peewee.CharField(max_length=64, unique=True)
    topic = peewee.CharField(max_length=64)
    body = peewee.BlobField()
    sent = peewee.BooleanField(default=False, index=True)


class ChainCommand(Base):
    id = peewee.CharField(primary_key=True, max_length=32)  # command ids seen (dedup)
    result = peewee.TextField()


TABLES = [ChainWatched, ChainCursor, ChainBlock, ChainOutput, ChainOutbox, ChainCommand]
