"""The database: peewee on SQLite (embedded default, one file in WAL mode) or PostgreSQL.

``connect(url)`` takes a peewee database URL: ``sqlite:////abs/path/dctrl.sqlite3``
or ``postgresql://user@host:5432/dbname``. Each table is written by exactly one
actor (see DESIGN.md); others read through its query functions. Only server
actors import this module (machine agents have no database).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.parse

import peewee
from playhouse.db_url import connect as _connect

from proto.errors import ConfigError

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",       # readers never block the writer
    "synchronous": "normal",     # durable at each WAL checkpoint; safe with WAL
    "foreign_keys": 1,
    "busy_timeout": 5000,        # ms to wait for another process's write lock
}


# A reader that must never write (the report server): SQLite's query_only beside mode=ro.
READ_ONLY_PRAGMAS = {"query_only": 1, "busy_timeout": SQLITE_PRAGMAS["busy_timeout"], "foreign_keys": 1}


def connect(url: str, *, read_only: bool = False):
    """Open the database at ``url``; raises ConfigError with the reason if it cannot.

    ``read_only``: no statement can write, even by mistake: SQLite is opened as
    ``file:PATH?mode=ro`` with ``query_only``; PostgreSQL sessions start with
    ``default_transaction_read_only`` on, beside the URL's own options (a search_path, say)."""
    if url.startswith("sqlite:///") and read_only:
        uri = f"file:{urllib.parse.quote(url[len('sqlite:///'):])}?mode=ro"
        db = peewee.SqliteDatabase(uri, uri=True, pragmas=READ_ONLY_PRAGMAS)
    elif url.startswith("sqlite"):
        db = _connect(url, pragmas=SQLITE_PRAGMAS)
    elif url.startswith(("postgres://", "postgresql://")) and read_only:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        db = _connect(url, options=" ".join([*query.get("options", []), "-c default_transaction_read_only=on"]))
    elif url.startswith(("postgres://", "postgresql://")):
        db = _connect(url)
    else:
        raise ConfigError(f"database url {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    try:
        db.connect(reuse_if_open=True)
    except Exception as exc:  # peewee wraps driver errors in several types
        how = " read-only" if read_only else ""
        raise ConfigError(f"cannot open database {redact(url)}{how}: {exc}".strip()) from None
    return db


def write_transaction(db):
    """A transaction that reads then writes: on SQLite it takes the write lock at BEGIN
    (IMMEDIATE), so concurrent writers wait their turn instead of failing with
    "database is locked" when they upgrade a read snapshot.

    SQLite's own busy handler waits in steps of 1, 2, 5, 10 ms and more: a writer
    that finds the lock taken for 50 µs would sleep a whole millisecond, on the
    path a vend waits for. So the lock is asked for here every 100 µs instead, up
    to the same ``busy_timeout``. A DatabaseProxy is looked through (given the proxy, the check
    below would miss SQLite and open a deferred transaction: "database is locked" under a race)."""
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
    if isinstance(db, peewee.SqliteDatabase):
        return _sqlite_write(db)
    return db.atomic()


@contextlib.contextmanager
def _sqlite_write(db):
    if db.in_transaction():  # nested: a savepoint in the caller's transaction, which holds the lock
        with db.atomic():
            yield
        return
    deadline = time.monotonic() + SQLITE_PRAGMAS["busy_timeout"] / 1000
    db.execute_sql("PRAGMA busy_timeout = 0")
    try:
        while True:
            txn = db.atomic(lock_type="IMMEDIATE")
            try:
                txn.__enter__()
                break
            except peewee.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.0001)
    finally:
        db.execute_sql(f"PRAGMA busy_timeout = {SQLITE_PRAGMAS['busy_timeout']}")
    with contextlib.ExitStack() as stack:
        stack.push(txn)  # commits on success, rolls back on an exception
        yield


def checkpoint_in_background(db, interval: float = 1.0) -> "Checkpointer":
    """On SQLite, copy the WAL into the database file from a thread every ``interval`` s
    instead of at commit time; ``.stop()`` the result at shutdown (a no-op elsewhere).

    By default a commit that takes the WAL past 1000 pages does the copy, with its
    fsyncs, before returning: a stall of several milliseconds landing on whichever
    commit crossed the line, often one a vend waits for. This process's connections
    stop doing that (``wal_autocheckpoint = 0``); the thread's PASSIVE checkpoints
    never wait for a lock and run while other connections read and write. Other
    processes keep SQLite's default, so the WAL stays bounded even if this one stops."""
    return Checkpointer(db, interval)


class Checkpointer:
    def __init__(self, db, interval: float):
        self.rounds = 0  # checkpoints done (tests wait on it)
        self._stop = threading.Event()
        self._thread = None
        if isinstance(db, peewee.SqliteDatabase):
            db.pragma("wal_autocheckpoint", 0, permanent=True)  # this connection and every later one
            self._thread = threading.Thread(target=self._run, args=(db, interval), name="wal-checkpoint",
                                            daemon=True)
            self._thread.start()

    def _run(self, db, interval):
        while not self._stop.wait(interval):
            try:
                db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # (all: no statement left open)
                self.rounds += 1
            except peewee.DatabaseError as exc:  # busy or gone: the next round tries again
                log.warning("WAL checkpoint failed: %s", exc)
        db.close()  # this thread's connection

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def ensure_tables(database, models, add_columns=None) -> list[tuple]:
    """Make what is missing of ``models``' tables and indexes; on a table that exists, first
    add the columns ``add_columns[model]`` (field names) that a later version introduced.
    Returns the (model, field name) pairs added.

    Actors start often (a supervisord restart, each handler test), and peewee's
    ``create_tables(safe=True)`` sends a statement per table and per index, each built
    anew (PostgreSQL also takes a lock for each). Here two catalogue reads answer what
    exists, and only what is missing is made.

    Added columns are nullable, without constraints. They are added before the table's
    indexes are made: on SQLite an index on a missing column is no error, its quoted name
    silently becomes a string constant.

    Index names are the schema's (the database's, on SQLite), not the table's: two tables
    made from one model factory (an outbox, an address book) must name their indexes after
    the table (``legacy_table_names = False``), or the second silently gets none. Older
    versions had that fault; a unique index added to a table that holds duplicates keeps the
    first of each (lowest key) if the model says so (``KEEP_FIRST_ON_UPGRADE``), and is
    otherwise refused with the table and index named."""
    import copy

    from playhouse.migrate import SchemaMigrator, migrate

    tables = set(database.get_tables())
    if isinstance(database, peewee.PostgresqlDatabase):
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    indexes = {r[0] for r in database.execute_sql(sql).fetchall()}
    added = []
    for model in peewee.sort_models(models):
        table = model._meta.table_name
        if table not in tables:
            model.create_table(safe=True)  # with its indexes
            continue
        wanted = (add_columns or {}).get(model, ())
        if wanted:
            cursor = database.execute_sql(f'SELECT * FROM "{table}" LIMIT 0')  # the columns, cheaply
            have = {d[0] for d in cursor.description}
            for name in wanted:
                field = copy.copy(model._meta.fields[name])
                if field.column_name in have:
                    continue
                field.null, field.unique, field.index, field.default = True, False, False, None
                migrate(SchemaMigrator.from_database(database).add_column(table, field.column_name, field))
                added.append((model, name))
                log.info("added column %s.%s", table, field.column_name)
        for index in model._meta.fields_to_index():
            if index._name in indexes:
                continue
            if index._unique and getattr(model, "KEEP_FIRST_ON_UPGRADE", False):
                _keep_first(database, model, index)
            try:
                with database.atomic():
                    database.execute(model._schema._create_index(index, safe=True))
            except peewee.IntegrityError as exc:
                raise ConfigError(f"table {table}: cannot make the unique index {index._name}: rows repeat "
                                  f"its columns ({str(exc).strip()}); remove the duplicates by hand") from None
            log.info("made index %s on %s", index._name, table)
    return added


def _keep_first(database, model, index) -> None:
    """Delete the rows of ``model``'s table that repeat ``index``'s columns, keeping the first."""
    table, pk = model._meta.table_name, model._meta.primary_key.column_name
    cols = ", ".join(f'"{f.column_name}"' for f in index._expressions)
    cursor = database.execute_sql(f'DELETE FROM "{table}" WHERE "{pk}" NOT IN '
                                  f'(SELECT MIN("{pk}") FROM "{table}" GROUP BY {cols})')
    if cursor.rowcount:
        log.warning("table %s: removed %d rows that repeated (%s) of an earlier row, before making its "
                    "unique index %s", table, cursor.rowcount, cols, index._name)


def redact(url: str) -> str:
    """The URL without a password, for logs and errors."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def describe(db) -> str:
    if db.__class__.__name__.startswith("Sqlite"):
        mode = db.execute_sql("PRAGMA journal_mode").fetchone()[0]
        return f"SQLite {db.database} (journal {mode})"
    version = db.execute_sql("SHOW server_version").fetchone()[0]
    return f"PostgreSQL {version} ({db.database})"


class Statements:
    """Fixed SQL for the paths a vend waits on, in place of peewee's query builder there.

    peewee builds a query's SQL text anew every time it runs: on this hardware
    about 0.5 ms for a select of a 28-column row, against some 20 µs for SQLite to
    run it. A sale's path runs a dozen queries across two actors, so on that path
    (and the timers beside it) actors use these instead: statements written with
    ``?`` placeholders, converted once to the driver's style and kept, and rows
    turned into the same peewee model instances the rest of the code uses.
    Peewee still makes the schema and serves every other query. Statements run in
    the caller's transaction like any query, on the calling thread's connection.
    """

    def __init__(self, database):
        self.database = database
        self._sql: dict = {}

    def _prepare(self, key, build) -> str:
        sql = self._sql.get(key)
        if sql is None:
            sql = build()
            if self.database.param != "?":
                sql = sql.replace("?", self.database.param)
            self._sql[key] = sql
        return sql

    def execute(self, sql: str, *params):
        """Run ``sql`` (``?`` placeholders); returns the cursor."""
        return self.database.execute_sql(self._prepare(sql, lambda: sql), params)

    def rows(self, sql: str, *params) -> list[tuple]:
        return self.execute(sql, *params).fetchall()

    def select(self, model, where: str, *params, tail: str = "") -> list:
        """``model`` instances for ``SELECT <all columns> FROM <table> WHERE <where> <tail>``."""
        fields = model._meta.sorted_fields
        sql = self._prepare((model, where, tail), lambda: "SELECT {} FROM {} WHERE {} {}".format(
            ", ".join(_quote(f.column_name) for f in fields), _quote(model._meta.table_name), where, tail))
        out = []
        for row in self.database.execute_sql(sql, params).fetchall():
            obj = model(__no_default__=1, **{f.name: f.python_value(v) for f, v in zip(fields, row)})
            obj._dirty.clear()
            out.append(obj)
        return out

    def first(self, model, where: str, *params, tail: str = ""):
        found = self.select(model, where, *params, tail=f"{tail} LIMIT 1")
        return found[0] if found else None

    def create(self, model, **values):
        """Insert a row (field defaults applied as peewee's ``create`` does); returns the instance."""
        meta = model._meta
        data = {**meta.get_default_dict(), **values}
        pk = meta.primary_key
        auto = isinstance(pk, peewee.AutoField) and pk.name not in data
        fields = [f for f in meta.sorted_fields if f.name in data]
        returning = f" RETURNING {_quote(pk.column_name)}" if auto else ""
        key = (model, "insert", tuple(f.name for f in fields))
        sql = self._prepare(key, lambda: "INSERT INTO {} ({}) VALUES ({}){}".format(
            _quote(meta.table_name), ", ".join(_quote(f.column_name) for f in fields), ", ".join("?" * len(fields)),
            returning))
        cursor = self.database.execute_sql(sql, [f.db_value(data[f.name]) for f in fields])
        if auto:  # (fetchall: the statement is finished, none is left open in the transaction)
            data[pk.name] = cursor.fetchall()[0][0]
        obj = model(__no_default__=1, **data)
        obj._dirty.clear()
        return obj

    def update(self, model, where: str, params: tuple, **values) -> int:
        """``UPDATE <table> SET <values> WHERE <where>``; returns the rows changed."""
        meta = model._meta
        fields = [meta.fields[name] for name in values]
        sql = self._prepare((model, "update", where, tuple(values)), lambda: "UPDATE {} SET {} WHERE {}".format(
            _quote(meta.table_name), ", ".join(f"{_quote(f.column_name)} = ?" for f in fields), where))
        return self.database.execute_sql(sql, [*(f.db_value(values[f.name]) for f in fields), *params]).rowcount

    def save(self, obj) -> None:
        """Write ``obj``'s changed fields (as peewee's ``save`` of an existing row)."""
        names = [f.name for f in obj.dirty_fields]
        if names:
            pk = obj._meta.primary_key
            self.update(type(obj), f"{_quote(pk.column_name)} = ?", (obj.__data__[pk.name],),
                        **{n: obj.__data__[n] for n in names})
            obj._dirty.clear()


def _quote(name: str) -> str:
    return f'"{name}"'
