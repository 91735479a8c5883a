"""The database: peewee on SQLite (embedded default, one file in WAL mode) or PostgreSQL.

``connect(url)`` takes a peewee database URL: ``sqlite:////abs/path/dctrl.sqlite3``
or ``postgresql://user@host:5432/dbname``. Each table is written by exactly one
actor (see DESIGN.md); others read through its query functions. Only server
actors import this module (machine agents have no database).
"""

from __future__ import annotations

import logging

from playhouse.db_url import connect as _connect

from proto.errors import ConfigError

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",       # readers never block the writer
    "synchronous": "normal",     # durable at each WAL checkpoint; safe with WAL
    "foreign_keys": 1,
    "busy_timeout": 5000,        # ms to wait for another process's write lock
}


def connect(url: str):
    """Open the database at ``url``; raises ConfigError with the reason if it cannot."""
    if url.startswith("sqlite"):
        db = _connect(url, pragmas=SQLITE_PRAGMAS)
    elif url.startswith(("postgres://", "postgresql://")):
        db = _connect(url)
    else:
        raise ConfigError(f"database url {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    try:
        db.connect(reuse_if_open=True)
    except Exception as exc:  # peewee wraps driver errors in several types
        raise ConfigError(f"cannot open database {redact(url)}: {exc}".strip()) from None
    return db


def write_transaction(db):
    """A transaction that reads then writes: on SQLite it takes the write lock at BEGIN
    (IMMEDIATE), so concurrent writers wait their turn instead of failing with
    "database is locked" when they upgrade a read snapshot."""
    import peewee

    if isinstance(db, peewee.SqliteDatabase):
        return db.atomic(lock_type="IMMEDIATE")
    return db.atomic()


def add_missing_columns(database, model, names) -> list[str]:
    """Add ``model``'s fields ``names`` to its existing table if they are missing (a column
    added after the table was first made; create_tables leaves existing tables alone).
    Call it before create_tables, which then makes their indexes: on SQLite an index on a
    missing column is no error, its quoted name silently becomes a string constant.
    Columns are added nullable, without constraints. Returns the names added."""
    import copy

    from playhouse.migrate import SchemaMigrator, migrate

    table = model._meta.table_name
    if not database.table_exists(table):
        return []
    have = {c.name for c in database.get_columns(table)}
    added = []
    migrator = SchemaMigrator.from_database(database)
    for name in names:
        if name in have:
            continue
        field = copy.copy(model._meta.fields[name])
        field.null, field.unique, field.index, field.default = True, False, False, None
        migrate(migrator.add_column(table, field.column_name, field))
        added.append(name)
        log.info("added column %s.%s", table, name)
    return added


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
