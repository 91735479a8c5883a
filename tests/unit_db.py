"""Databases for the handler tests on the fake runtime: one home per module and database kind,
emptied before each test (creating the tables again for every test costs a PostgreSQL test
most of its time: DDL is slow; an empty table is as fresh as a new one)."""

from __future__ import annotations

import contextlib

import peewee

from actors.db import connect
from tests.harness import new_home, pg_schema


def empty(url_or_database) -> None:
    """Delete every row of every table of the database at ``url_or_database`` (a URL, or an
    open peewee database, left open) (the tables stay)."""
    opened = isinstance(url_or_database, str)
    database = connect(url_or_database) if opened else url_or_database
    try:
        tables = database.get_tables()
        if not tables:
            return
        with database.atomic():  # (DELETE, not TRUNCATE: on tables this small it is the faster)
            if isinstance(database, peewee.PostgresqlDatabase):
                database.execute_sql("SET CONSTRAINTS ALL DEFERRED")
            for t in tables:
                database.execute_sql(f'DELETE FROM "{t}"')
    finally:
        if opened:
            database.close()


@contextlib.contextmanager
def unit_home(database: str, path, prefix: str):
    """A home on ``database`` ("sqlite" or "postgresql") for the fake-runtime tests. On PostgreSQL
    a schema of its own (harness.pg_schema) whose connections do not wait for the WAL's fsync
    at commit (``synchronous_commit = off``: a crash of the server could lose the last commits,
    which no handler test is about; on a loaded machine the wait is most of a test's time)."""
    if database == "sqlite":
        yield new_home(path)
        return
    with pg_schema(prefix) as url:
        yield new_home(path, database_url=url.replace("options=", "options=-csynchronous_commit%3Doff%20", 1))


def add_admins(home, names=("alice", "bob", "carol")) -> None:
    """Identities of role admin besides `admin` (approvers and co-signers of payouts), with keys."""
    from keys.identity import IdentityKeys
    from keys.registry import Registry

    registry = Registry.load(home.registry_path)
    for name in names:
        keys = IdentityKeys.generate(name)
        registry.add(keys, "admin")
        keys.save(home.key_file(name))
    registry.save()
