"""Receive addresses from an account xpub or an output descriptor (BIP84, native segwit).

No private key ever reaches the server: a book holds only public derivation
material and refuses an xprv. Each request gets a fresh address at the next
index of the book's receive chain; the index is persisted (one row per issued
address) so a restart never hands out an address twice. ``rescan_addresses``
returns the issued addresses plus ``gap_limit`` more, for a rescan after a
restore (wallets stop looking after that many unused addresses in a row).

Accepted forms:

* an account extended public key: ``xpub``/``zpub`` (mainnet) or
  ``tpub``/``vpub`` (testnet, signet, regtest); addresses are ``/0/i``.
* a descriptor: ``wpkh([fingerprint/84h/1h/0h]tpub.../0/*)`` (checksum optional).
"""

from __future__ import annotations

import time

import peewee
from embit import bip32, script
from embit.descriptor import Descriptor
from embit.descriptor.checksum import add_checksum
from embit.networks import NETWORKS

from actors.db import write_transaction
from proto.errors import ConfigError

NETWORK_NAMES = {"main": "main", "mainnet": "main", "testnet": "test", "test": "test", "signet": "signet",
                 "regtest": "regtest"}


def network(name: str) -> dict:
    try:
        return NETWORKS[NETWORK_NAMES[name]]
    except KeyError:
        raise ConfigError(f"unknown network {name!r}: mainnet, testnet, signet or regtest") from None


def parse_descriptor(spec: str, what: str) -> Descriptor:
    """``spec`` as an embit Descriptor; its checksum, if given, verified (embit ignores it: a
    descriptor mistyped after its checksum was made would derive other addresses silently)."""
    spec = spec.strip()
    body, _, checksum = spec.partition("#")
    if checksum and add_checksum(body) != spec:
        raise ConfigError(f"{what}: the descriptor's checksum #{checksum} does not match it (mistyped?)")
    try:
        return Descriptor.from_string(body)
    except Exception as exc:  # embit raises several types
        raise ConfigError(f"{what}: not a descriptor embit understands: {exc}") from None


class Deriver:
    """Derives receive addresses ``/0/i`` from public material only."""

    def __init__(self, spec: str, network_name: str):
        self.net = network(network_name)
        self.spec = spec.strip()
        if "(" in self.spec:
            self.descriptor = parse_descriptor(self.spec, "receive")
            if not self.descriptor.is_wildcard:
                raise ConfigError("the descriptor must end in /* (a range of addresses)")
            if any(getattr(k, "is_private", False) for k in self.descriptor.keys):
                raise ConfigError("the descriptor holds a private key; give the xpub only")
            self.account = None
        else:
            try:
                self.account = bip32.HDKey.from_string(self.spec)
            except Exception as exc:
                raise ConfigError(f"not an extended public key: {exc}") from None
            if self.account.is_private:
                raise ConfigError("that is a private key (xprv); give the account xpub only")
            self.descriptor = None

    def address(self, index: int) -> tuple[str, str]:
        """(address, scriptPubKey hex) at receive index ``index``."""
        if not 0 <= index < 2**31:
            raise ValueError("index out of range")
        if self.descriptor is not None:
            spk = self.descriptor.derive(index).script_pubkey()
        else:
            spk = script.p2wpkh(self.account.derive([0, index]))
        return spk.address(self.net), spk.data.hex()


class AddressBook:
    """Issued addresses of one named book (e.g. ``invoices``), persisted in ``table``.

    The owning actor creates the table with :meth:`model` bound to its database.
    """

    def __init__(self, model, name: str, deriver: Deriver, *, gap_limit: int = 20, clock=time.time):
        self.model, self.name, self.deriver, self.gap_limit, self.clock = model, name, deriver, gap_limit, clock

    @staticmethod
    def model(database, table_name="chain_address") -> type[peewee.Model]:
        class IssuedAddress(peewee.Model):
            book = peewee.CharField(max_length=32)
            position = peewee.IntegerField()  # the receive index (/0/position)
            address = peewee.CharField(max_length=100, unique=True)
            script = peewee.CharField(max_length=200)
            label = peewee.CharField(null=True, max_length=64)
            issued_at = peewee.BigIntegerField()

            class Meta:
                indexes = ((("book", "position"), True),)
                legacy_table_names = False  # index names from the table's name, not the class's

        IssuedAddress._meta.database = database
        IssuedAddress._meta.table_name = table_name
        return IssuedAddress

    def next(self, label: str | None = None) -> tuple[int, str]:
        """A fresh address; never the same one twice, also across restarts and races."""
        M = self.model
        db = M._meta.database
        for _ in range(5):
            with write_transaction(db):
                if isinstance(db, peewee.PostgresqlDatabase):  # one allocator per book at a time
                    db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dctrl-address-{self.name}",))
                last = M.select(peewee.fn.MAX(M.position)).where(M.book == self.name).scalar()
                index = 0 if last is None else last + 1
                address, spk = self.deriver.address(index)
                other = M.get_or_none(M.address == address)
                if other is not None and other.book != self.name:
                    raise ConfigError(f"address book {self.name!r} derives {address}, already issued by book "
                                      f"{other.book!r}: give each book its own account xpub")
                try:
                    M.create(book=self.name, position=index, address=address, script=spk, label=label,
                             issued_at=int(self.clock()))
                except peewee.IntegrityError:
                    continue  # another process took this index first (PostgreSQL): take the next
                return index, address
        raise RuntimeError(f"could not allocate an address in book {self.name!r}")

    def next_index(self) -> int:
        """The receive index the next address will have."""
        M = self.model
        last = M.select(peewee.fn.MAX(M.position)).where(M.book == self.name).scalar()
        return 0 if last is None else last + 1

    def skip_past(self, index: int, label: str) -> bool:
        """Never hand out ``index`` or any below it (they have history on the chain): record
        it as issued. Returns False if the book was already past it."""
        M = self.model
        with write_transaction(M._meta.database):
            if self.next_index() > index:
                return False
            address, spk = self.deriver.address(index)
            M.create(book=self.name, position=index, address=address, script=spk, label=label[:64],
                     issued_at=int(self.clock()))
        return True

    def issued(self) -> list[tuple[int, str]]:
        M = self.model
        return [(r.position, r.address) for r in M.select().where(M.book == self.name).order_by(M.position)]

    def rescan_addresses(self) -> list[str]:
        """Every issued address and ``gap_limit`` beyond the last one."""
        M = self.model
        last = M.select(peewee.fn.MAX(M.position)).where(M.book == self.name).scalar()
        upto = (-1 if last is None else last) + self.gap_limit
        return [self.deriver.address(i)[0] for i in range(0, upto + 1)]
