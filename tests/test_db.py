"""The database layer on both backends: SQLite (WAL file) and PostgreSQL.

PostgreSQL is the machine's server on 127.0.0.1:5432 (database ``test``);
set DCTRL_TEST_PG_URL to use another. In CI it must be there: no skipping.
"""

import os
import uuid

import peewee
import pytest

from actors.db import connect, describe, redact
from proto.errors import ConfigError
from tests.harness import dctrl

PG_URL = os.environ.get("DCTRL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}" if request.param == "sqlite" else PG_URL
    database = connect(url)
    yield database
    database.close()


def test_models_round_trip_on_both_backends(db):
    class Thing(peewee.Model):
        key = peewee.CharField(unique=True)
        sats = peewee.BigIntegerField()

        class Meta:
            database = db
            table_name = f"t_{uuid.uuid4().hex[:12]}"

    db.create_tables([Thing])
    try:
        with db.atomic():
            Thing.create(key="a", sats=2_100_000_000_000_000)  # all bitcoin, in satoshis: needs 64 bits
        assert Thing.get(Thing.key == "a").sats == 2_100_000_000_000_000
        with pytest.raises(peewee.IntegrityError):
            with db.atomic():
                Thing.create(key="a", sats=1)
    finally:
        db.drop_tables([Thing])


def test_sqlite_is_in_wal_mode(tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert "journal wal" in describe(db)
    db.close()


def test_bad_urls_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="use sqlite"):
        connect("mysql://x")
    with pytest.raises(ConfigError, match=r"cannot open database postgresql://u:\*\*\*@127.0.0.1:1/x"):
        connect("postgresql://u:secret@127.0.0.1:1/x")
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_init_creates_the_embedded_database(home):
    assert (home.root / "dctrl.sqlite3").exists()
    assert "journal wal" in dctrl(home, "db").stdout


def test_add_missing_columns_upgrades_an_older_table(db):
    """A column added to a model after its table was made is added in place, on both backends."""
    import uuid

    from actors.db import add_missing_columns

    table = f"upgrade_{uuid.uuid4().hex[:10]}"  # parallel runs share the PostgreSQL database

    class Old(peewee.Model):
        name = peewee.CharField()

        class Meta:
            database = db
            table_name = table

    class New(peewee.Model):
        name = peewee.CharField()
        seen_at = peewee.BigIntegerField(null=True)
        label = peewee.CharField(null=True, unique=True)

        class Meta:
            database = db
            table_name = table

    db.drop_tables([Old])
    db.create_tables([Old])
    Old.create(name="before")
    assert add_missing_columns(db, New, ["seen_at", "label"]) == ["seen_at", "label"]
    assert add_missing_columns(db, New, ["seen_at", "label"]) == []  # idempotent
    db.create_tables([New], safe=True)  # then the unique index, on the real column
    New.create(name="after", seen_at=5, label="x")
    assert [(r.name, r.seen_at, r.label) for r in New.select().order_by(New.id)] == [("before", None, None),
                                                                                  ("after", 5, "x")]
    with pytest.raises(peewee.IntegrityError):
        with db.atomic():
            New.create(name="dup", label="x")
    db.drop_tables([New])


def test_statements_read_and_write_what_peewee_does(db):
    """The fixed statements of hot paths (actors.db.Statements) give and take the same rows as
    peewee's query builder, on both backends: defaults, booleans, foreign keys, NULLs, blobs."""
    from actors.db import Statements

    suffix = uuid.uuid4().hex[:10]

    class Parent(peewee.Model):
        name = peewee.CharField()
        open = peewee.BooleanField(default=True)
        sats = peewee.BigIntegerField(default=0)
        note = peewee.TextField(null=True)

        class Meta:
            database = db
            table_name = f"parent_{suffix}"

    class Child(peewee.Model):
        key = peewee.CharField(primary_key=True, max_length=32)
        parent = peewee.ForeignKeyField(Parent, on_delete="CASCADE")
        body = peewee.BlobField()

        class Meta:
            database = db
            table_name = f"child_{suffix}"

    db.create_tables([Parent, Child])
    sql = Statements(db)
    try:
        with db.atomic():
            p = sql.create(Parent, name="a", sats=2_100_000_000_000_000)
            assert p.id is not None and p.open is True and p.note is None and not p.is_dirty()
            c = sql.create(Child, key="k1", parent=p, body=b"\x00\xff")
        got = Parent.get_by_id(p.id)  # what peewee reads back
        assert (got.name, got.open, got.sats, got.note) == ("a", True, 2_100_000_000_000_000, None)
        assert bytes(Child.get_by_id("k1").body) == b"\x00\xff" and c.parent_id == p.id

        (again,) = sql.select(Parent, f'"{Parent._meta.table_name}"."id" = ?', p.id)
        assert again.__data__ == got.__data__ and not again.is_dirty()
        assert sql.first(Parent, '"name" = ?', "nobody") is None
        (child,) = sql.select(Child, '"parent_id" = ?', p.id)
        assert child.parent_id == p.id and bytes(child.body) == b"\x00\xff"

        again.open, again.note = False, "closed"
        sql.save(again)  # only what changed is written
        assert not again.is_dirty()
        got = Parent.get_by_id(p.id)
        assert (got.name, got.open, got.note) == ("a", False, "closed")
        Parent.update(name="renamed").where(Parent.id == p.id).execute()
        again.sats = 5
        sql.save(again)
        assert (Parent.get_by_id(p.id).name, Parent.get_by_id(p.id).sats) == ("renamed", 5)  # name untouched

        assert sql.update(Parent, '"id" = ?', (p.id,), sats=7) == 1
        assert sql.update(Parent, '"id" = ?', (p.id + 1000,), sats=7) == 0
        assert sql.rows(f'SELECT "sats" FROM "{Parent._meta.table_name}" WHERE "open" = ?', False) == [(7,)]
        with pytest.raises(peewee.IntegrityError):
            with db.atomic():
                sql.create(Child, key="k1", parent=p, body=b"")
    finally:
        db.drop_tables([Child, Parent])
