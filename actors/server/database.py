"""The report server's database connection: read-only, whatever the database
(:func:`actors.db.connect` with ``read_only``: SQLite ``mode=ro`` with ``query_only``, PostgreSQL
sessions with ``default_transaction_read_only``). peewee keeps one connection per thread
(waitress's workers each get theirs).
"""

from __future__ import annotations

from actors.db import connect


def open_read_only(url: str):
    """The database at ``url`` (as ``[database] url``), opened for reading only, its reports'
    answers kept: many clients ask the same reports, and the readers keep their answers while
    what they depend on is unchanged (checked in each request's snapshot; the answers are the
    same as without)."""
    from actors.reporter.reports import keep_answers

    db = connect(url, read_only=True)
    keep_answers(db)
    return db
