"""The database layer on both backends: SQLite (WAL file) and PostgreSQL.

PostgreSQL is DCTRL_TEST_PG_URL, by default the machine's server on
127.0.0.1:5432 (database ``test``). When it does not answer, conftest.py starts
a throwaway server (tests/pg.py) for the run and points DCTRL_TEST_PG_URL at
it. In CI one of them must be there: no skipping.
"""

import os
import subprocess
import sys
import uuid

import peewee
import pytest

from actors.db import connect, describe, redact
from proto.errors import ConfigError
from tests import pg as test_pg
from tests.harness import ROOT, dctrl, free_port, wait_for

PG_URL = test_pg.configured_url()  # after conftest.py set it (to a throwaway server, if it started one)


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


def test_ensure_tables_upgrades_an_older_table_and_leaves_a_current_one_alone(db):
    """A column added to a model after its table was made is added in place, and an index
    added later is made, on both backends; a schema that is current costs no DDL at all."""
    import uuid

    from actors.db import ensure_tables

    # Parallel runs share the PostgreSQL database, where index names are the schema's: index
    # names come from the model's class name, so that is unique too.
    suffix = uuid.uuid4().hex[:10]
    table = f"upgrade_{suffix}"

    def model(cls, **fields):
        meta = type("Meta", (), {"database": db, "table_name": table})
        return type(f"{cls}{suffix}", (peewee.Model,), {"name": peewee.CharField(), **fields, "Meta": meta})

    Old = model("Old")
    New = model("New", seen_at=peewee.BigIntegerField(null=True), label=peewee.CharField(null=True, unique=True))
    Newer = model("New", name=peewee.CharField(index=True), seen_at=peewee.BigIntegerField(null=True),
                  label=peewee.CharField(null=True, unique=True))

    ensure_tables(db, [Old])
    try:
        _upgrade(db, Old, New, Newer, ensure_tables)
    finally:
        db.drop_tables([New])


def _index_names(db, table):
    if isinstance(db, peewee.PostgresqlDatabase):
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?"
    return {r[0] for r in db.execute_sql(sql, (table,)).fetchall()} - {f"{table}_pkey"}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_outboxes_of_an_older_version_get_their_own_indexes_and_keep_the_first_of_each_event(kind, tmp_path):
    """Index names are the schema's: before, business_outbox and sales_outbox (one model factory)
    both named theirs outboxrow_*, so the table made second had none: no unique event_id (an
    event recorded twice went out twice) and no index on sent (every flush a full scan)."""
    from actors.db import ensure_tables, write_transaction
    from actors.outbox import Outbox
    from tests.harness import home_on

    def legacy(database, table):  # Outbox.model_for as it was
        class OutboxRow(peewee.Model):
            id = peewee.AutoField()
            event_id = peewee.CharField(max_length=64, unique=True)
            topic = peewee.CharField(max_length=255)
            body = peewee.BlobField()
            sent = peewee.BooleanField(default=False, index=True)

        OutboxRow._meta.database = database
        OutboxRow._meta.table_name = table
        return OutboxRow

    with home_on(kind, tmp_path / "home", "upg") as home:
        db = connect(home.database_url)
        try:
            old = legacy(db, "sales_outbox")
            db.create_tables([legacy(db, "business_outbox")], safe=True)
            db.create_tables([old], safe=True)
            assert _index_names(db, "sales_outbox") == set()  # the fault, as it was
            for eid, body in (("a", b"1"), ("a", b"2"), ("b", b"3")):
                old.create(event_id=eid, topic="t", body=body)

            business, sales = Outbox.model_for(db, "business_outbox"), Outbox.model_for(db, "sales_outbox")
            ensure_tables(db, [business, sales])
            assert _index_names(db, "sales_outbox") == {"sales_outbox_event_id", "sales_outbox_sent"}
            assert _index_names(db, "business_outbox") >= {"business_outbox_event_id", "business_outbox_sent"}
            assert [(r.event_id, bytes(r.body)) for r in sales.select().order_by(sales.id)] == [("a", b"1"),
                                                                                              ("b", b"3")]
            box = Outbox(sales)
            with write_transaction(db):
                box.add("t", {}, "b")
                box.add("t", {}, "c")
            assert sorted(r.event_id for r in sales.select()) == ["a", "b", "c"]  # b recorded once

            # A unique index that may not drop rows is refused, named, when rows repeat.
            class Plain(peewee.Model):
                code = peewee.CharField(unique=True)

                class Meta:
                    database = db
                    table_name = "plain_upgrade"

            Plain._schema.create_table(safe=True)  # the table alone, as if its index had never been made
            Plain.insert_many([{"code": "x"}, {"code": "x"}]).execute()
            with pytest.raises(ConfigError, match="plain_upgrade: cannot make the unique index plain_code"):
                ensure_tables(db, [Plain])
            assert Plain.select().count() == 2
        finally:
            db.close()


def _upgrade(db, Old, New, Newer, ensure_tables):
    Old.create(name="before")
    assert ensure_tables(db, [New], add_columns={New: ["seen_at", "label"]}) == [(New, "seen_at"), (New, "label")]
    New.create(name="after", seen_at=5, label="x")
    assert [(r.name, r.seen_at, r.label) for r in New.select().order_by(New.id)] == [("before", None, None),
                                                                                  ("after", 5, "x")]
    with pytest.raises(peewee.IntegrityError):  # the unique index, made on the real column
        with db.atomic():
            New.create(name="dup", label="x")

    statements = []
    execute_sql = db.execute_sql

    def recording(sql, params=None, *args, **kw):
        statements.append(sql)
        return execute_sql(sql, params, *args, **kw)

    db.execute_sql = recording
    try:
        assert ensure_tables(db, [New], add_columns={New: ["seen_at", "label"]}) == []  # idempotent
        assert statements and not [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER"))]
        statements.clear()
        ensure_tables(db, [Newer])  # a later version indexes name: that index alone is made
        made = [s for s in statements if s.lstrip().upper().startswith(("CREATE", "ALTER"))]
        assert len(made) == 1 and "INDEX" in made[0] and '"name"' in made[0], made
    finally:
        del db.execute_sql


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


def test_sqlite_writers_wait_their_turn_without_coarse_sleeps(tmp_path):
    """write_transaction on SQLite waits for another writer's lock (polling, not SQLite's
    millisecond steps), nests as a savepoint, rolls back on an error and leaves the
    connection's busy_timeout as it was."""
    import threading
    import time

    from actors.db import write_transaction

    url = f"sqlite:///{tmp_path / 'w.sqlite3'}"
    a, b = connect(url), connect(url)
    a.execute_sql("CREATE TABLE t (n INTEGER)")
    held, release = threading.Event(), threading.Event()

    def hold():
        with write_transaction(a):
            a.execute_sql("INSERT INTO t VALUES (1)")
            held.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    held.wait(10)
    threading.Timer(0.05, release.set).start()
    t0 = time.monotonic()
    with write_transaction(b):
        waited = time.monotonic() - t0
        assert b.execute_sql("SELECT count(*) FROM t").fetchone() == (1,)  # after the other commit
        b.execute_sql("INSERT INTO t VALUES (2)")
        with write_transaction(b):  # nested: a savepoint
            b.execute_sql("INSERT INTO t VALUES (3)")
    other.join(10)
    assert waited >= 0.04
    with pytest.raises(ZeroDivisionError):
        with write_transaction(b):
            b.execute_sql("INSERT INTO t VALUES (4)")
            1 / 0
    assert [n for (n,) in a.execute_sql("SELECT n FROM t ORDER BY n")] == [1, 2, 3]
    assert b.execute_sql("PRAGMA busy_timeout").fetchone() == (5000,)
    a.close(), b.close()


def test_background_checkpoints_keep_the_wal_small(tmp_path):
    """With checkpoint_in_background, commits never copy the WAL (wal_autocheckpoint 0 on
    every connection of that database, also new threads'); the thread does, so the WAL is
    reused from its start instead of growing. A no-op on PostgreSQL."""
    import threading

    from actors.db import checkpoint_in_background

    path = tmp_path / "c.sqlite3"
    db = connect(f"sqlite:///{path}")
    checkpoints = checkpoint_in_background(db, interval=0.05)
    try:
        db.execute_sql("CREATE TABLE t (b BLOB)")
        got = []
        t = threading.Thread(target=lambda: got.append(db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0]))
        t.start(), t.join()
        assert got == [0] and db.execute_sql("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        wal = path.with_name(path.name + "-wal")
        sizes = []
        for _ in range(4):  # each round writes ~2.5 MB to the WAL, then waits for the thread
            with db.atomic():
                for _ in range(600):
                    db.execute_sql("INSERT INTO t VALUES (randomblob(4000))")
            sizes.append(wal.stat().st_size)
            done = checkpoints.rounds
            wait_for(lambda: checkpoints.rounds >= done + 2, what="two more background checkpoints")
        assert db.execute_sql("SELECT count(*) FROM t").fetchone() == (2400,)
        assert max(sizes) < 5_000_000, f"the WAL grew to {sizes} bytes: it was not checkpointed between rounds"
    finally:
        checkpoints.stop()
        db.close()
    pg = checkpoint_in_background(connect(PG_URL))  # PostgreSQL: nothing to do
    assert pg._thread is None
    pg.stop()


# -- the tests' PostgreSQL (tests/test_pg.py, conftest.py) ------------------------------------------------

def test_a_throwaway_postgresql_is_started_when_none_answers(monkeypatch):
    if test_pg.bindir() is None:
        if test_pg.in_ci():
            pytest.fail("no PostgreSQL server binaries to start a throwaway server from (CI must have them)")
        pytest.skip("no PostgreSQL server binaries to start a throwaway server from")
    # A server that answers is used as it is.
    monkeypatch.setenv(test_pg.ENV, PG_URL)
    assert test_pg.ensure() == (PG_URL, None, f"PostgreSQL: {PG_URL}")
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    monkeypatch.setenv(test_pg.ENV, dead)
    url, server, note = test_pg.ensure()
    try:
        assert server is not None and url == server.url == os.environ[test_pg.ENV] != dead
        assert note.startswith(f"PostgreSQL: throwaway server {url}")
        assert f"because {dead} did not answer" in note
        db = connect(url)
        db.execute_sql("CREATE TABLE t (n BIGINT)")
        db.execute_sql("INSERT INTO t VALUES (2100000000000000)")
        assert db.execute_sql("SELECT n FROM t").fetchall() == [(2_100_000_000_000_000,)]
        db.close()
        proc, where = server.proc, server.dir
    finally:
        server.stop()
    assert proc.poll() is not None and not where.exists()
    assert test_pg.problem(url) is not None


def run_pytest(env_over, *args):
    env = {**os.environ, **env_over}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_without_any_postgresql_ci_fails_the_run_and_a_developer_is_warned(tmp_path):
    nothing = {test_pg.ENV: f"postgresql://postgres@127.0.0.1:{free_port()}/test",
               test_pg.BINDIR_ENV: str(tmp_path)}  # no server, no binaries
    only = "tests/test_db.py::test_sqlite_is_in_wal_mode"  # needs no PostgreSQL
    ci = run_pytest({**nothing, "CI": "true"}, only)
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert f"none answers at {nothing[test_pg.ENV]}" in ci.stderr
    assert f"no PostgreSQL server binaries (initdb, postgres) in {tmp_path}" in ci.stderr
    assert "In CI the PostgreSQL tests are never skipped." in ci.stderr
    dev = run_pytest({**nothing, "CI": ""}, only)
    assert dev.returncode == 0, dev.stdout + dev.stderr
    assert "WARNING: PostgreSQL: none answers at" in dev.stdout  # in the summary (and the header, without -q)
    assert "The PostgreSQL tests will fail." in dev.stdout and "1 passed" in dev.stdout
