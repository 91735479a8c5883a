"""The report server's database handle is read-only on SQLite and PostgreSQL, and keeps the
URL's own options (a PostgreSQL search_path) beside its read-only one."""

from __future__ import annotations

import peewee
import pytest

from actors.db import connect
from actors.server.database import open_read_only
from tests.harness import pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dctrl.sqlite3'}"
    else:
        with pg_schema("ro") as pg_url:  # its search_path is in the URL's options
            yield pg_url


def test_reads_what_the_writers_wrote_and_refuses_every_write(url):
    writer = connect(url)
    writer.execute_sql("CREATE TABLE report_probe (a INTEGER)")
    writer.execute_sql("INSERT INTO report_probe VALUES (1)")
    reader = open_read_only(url)
    try:
        assert reader.execute_sql("SELECT a FROM report_probe").fetchall() == [(1,)]
        for sql in ("INSERT INTO report_probe VALUES (2)", "UPDATE report_probe SET a = 3",
                    "DELETE FROM report_probe", "CREATE TABLE report_other (b INTEGER)", "DROP TABLE report_probe"):
            with pytest.raises(peewee.DatabaseError, match="read-?only"):
                with reader.atomic():
                    reader.execute_sql(sql)
        assert writer.execute_sql("SELECT a FROM report_probe").fetchall() == [(1,)]
    finally:
        reader.close()
        writer.execute_sql("DROP TABLE report_probe")
        writer.close()


def test_a_database_that_cannot_be_opened_says_so(tmp_path):
    from proto.errors import ConfigError

    with pytest.raises(ConfigError, match="read-only"):
        open_read_only(f"sqlite:///{tmp_path / 'absent.sqlite3'}")
    with pytest.raises(ConfigError, match="use sqlite"):
        open_read_only("mysql://x@y/z")
