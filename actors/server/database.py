"""The report server's database connection: read-only, whatever the database.

SQLite is opened as ``file:PATH?mode=ro`` with ``query_only`` set, so no statement of the server
can write, even by mistake; PostgreSQL sessions start with ``default_transaction_read_only`` on,
so every transaction is a read-only one. peewee keeps one connection per thread (waitress's
workers each get theirs).
"""

from __future__ import annotations

import urllib.parse

import peewee
from playhouse.db_url import connect as _connect

from actors.db import redact
from proto.errors import ConfigError

READ_ONLY_PRAGMAS = {"query_only": 1, "busy_timeout": 5000, "foreign_keys": 1}


def open_read_only(url: str):
    """The database at ``url`` (as ``[database] url``), opened for reading only."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        db = peewee.SqliteDatabase(uri, uri=True, pragmas=READ_ONLY_PRAGMAS)
    elif url.startswith(("postgres://", "postgresql://")):
        # beside the URL's own options (a search_path, say), never instead of them
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        options = " ".join([*query.get("options", []), "-c default_transaction_read_only=on"])
        db = _connect(url, options=options)
    else:
        raise ConfigError(f"database url {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
    try:
        db.connect(reuse_if_open=True)
    except Exception as exc:  # peewee wraps driver errors in several types
        raise ConfigError(f"cannot open database {redact(url)} read-only: {exc}".strip()) from None
    # Many clients ask the same reports: the readers keep their answers while what they depend
    # on is unchanged (checked in each request's snapshot; the answers are the same as without).
    from actors.reporter.reports import keep_answers

    keep_answers(db)
    return db
