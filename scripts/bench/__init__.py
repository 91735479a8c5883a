"""The benchmarks behind `dctrl bench`: ``bus`` (the broker against zmq.proxy), ``chain``
(payment detection and catch-up), ``vend`` (payment to relay pin end to end), ``faults``
(purchases under kill -9 and SIGSTOP), ``members``, ``mail``, ``payouts`` and ``server`` (the report
server under 20 concurrent clients). Each module's
``main(args)`` prints one JSON object."""

import contextlib


@contextlib.contextmanager
def pg_schema_url(url: str, prefix: str = "bench"):
    """A throwaway schema of the PostgreSQL at ``url`` (DCTRL_BENCH_PG_URL; the tests' too): yields
    a URL whose connections use it (for processes), dropped at the end."""
    import uuid

    from actors.db import connect

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = connect(url)
    admin.execute_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        admin.execute_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


@contextlib.contextmanager
def pg_schema_database(url: str):
    """A database on a throwaway schema of the PostgreSQL at ``url`` (:func:`pg_schema_url`)."""
    from actors.db import connect

    with pg_schema_url(url) as schema_url:
        database = connect(schema_url)
        try:
            yield database
        finally:
            database.close()
