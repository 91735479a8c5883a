"""`dctrl backup` and `dctrl restore` (issue 14): the archive's contents and modes, the refusals
(a damaged or altered archive, a home or database not empty, an existing --out), --events, and
end to end on SQLite and PostgreSQL: a backup taken while the network runs, restored into a new
home whose network starts and lists the same members and invoices."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import tarfile
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness import Network, dctrl, new_home

SEALED = ("name", "email")


# -- putting data in cheaply -----------------------------------------------------------------------

def add_invoices(home, n=3):
    """Invoices as BusinessMgr records them, with its own models (it does not run in these tests)."""
    from actors.business_mgr.models import TABLES, SalesInvoice
    from actors.db import connect

    database = connect(home.database_url)
    try:
        with database.bind_ctx(TABLES):
            database.create_tables(TABLES, safe=True)
            for i in range(1, n + 1):
                SalesInvoice.create(mode="invoice", machine="vm1", slot=i, product=f"Club-Mate {i}", price_cents=350,
                                    due_sats=2726 * i, address=f"bcrt1qaddress{i:04d}", state="vended",
                                    created=1_800_000_000 + i, expires=1_800_000_900 + i, received_sats=2726 * i,
                                    late_sats=0, credit_sats=0, vended=1)
    finally:
        database.close()


def add_members_offline(home):
    """A plan and two members written by MemberData itself, with no bus."""
    from actors.member_data.actor import MemberData
    from actors.member_data.models import seal_personal
    from keys.registry import Registry

    public = Registry.load(home.registry_path).current("member_data").curve
    actor = MemberData(home)
    try:
        for topic, body in [
                ("cmd.members.plan_set", {"name": "regular", "cad": "40.00", "period": "month", "grace_days": 30,
                                          "confirmations": 1}),
                ("cmd.members.add", {"handle": "ada", "plan": "regular", "joined": "2026-01-31",
                                     "personal": seal_personal(public, name="Ada Lovelace", email="ada@example.org")}),
                ("cmd.members.add", {"handle": "bob", "plan": "regular", "joined": "2026-02-01",
                                     "personal": seal_personal(public, name="Bob", email="bob@example.org")})]:
            ack, _ = actor.execute(topic, {**body, "id": os.urandom(16), "expires": 2**40})
            assert ack["status"] == "done", ack
    finally:
        actor.teardown()


def listings(home) -> dict:
    """What the operator sees: members, one member's sealed details, invoices."""
    return {"members": json.loads(dctrl(home, "members", "list", "--json").stdout),
            "ada": {k: v for k, v in json.loads(dctrl(home, "members", "show", "ada", "--json").stdout).items()
                    if k not in ("status", "as_of")},
            "invoices": json.loads(dctrl(home, "invoices", "list", "--json").stdout)}


def restore_into(target, archive, *args, **kw):
    """`dctrl restore ARCHIVE --home TARGET` (the harness's dctrl() gives --home last)."""
    from types import SimpleNamespace

    return dctrl(SimpleNamespace(root=Path(target)), "restore", str(archive), *args, **kw)


def members(archive) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def rewrite(archive, change):
    """The archive rewritten with ``change(files)`` applied to its {name: bytes}."""
    files = members(archive)
    change(files)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root``: (mode, content of a file)."""
    out = {}
    for p in sorted(root.rglob("*")):
        mode = stat.S_IMODE(p.lstat().st_mode)
        out[str(p.relative_to(root))] = (mode, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture
def filled(tmp_path):
    """A SQLite home with members, invoices, a Vault secret, and run/log state that a backup leaves out."""
    home = new_home(tmp_path / "src")
    add_members_offline(home)
    add_invoices(home)
    dctrl(home, "vault", "set-secret", "smtp_password", input="hunter2hunter2")
    dctrl(home, "server", "token", "add", "treasurer", "--scope", "finance")  # the report server's, hashed
    (home.run_dir / "broker.pid").write_text("123\n")
    (home.run_dir / "admin.boot").write_text("7\n")
    (home.log_dir / "broker.log").write_text("a log line\n")
    (home.keys_dir / ".admin.key.x.tmp").write_text("leftover")
    return home


# -- the archive, and a restore ------------------------------------------------------------------

def test_backup_then_restore_gives_the_same_files_private_and_the_same_data(filled, tmp_path):
    out = tmp_path / "b.tar.gz"
    printed = dctrl(filled, "backup", "--out", str(out)).stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "hunter2" not in printed and "database (SQLite" in printed and "13 key files" in printed, printed
    files = members(out)
    manifest = json.loads(files["manifest.json"])
    assert (manifest["format"], manifest["database"], manifest["events"]) == (1, "sqlite", False)
    assert manifest["dctrl_version"] and manifest["created"]
    names = {f["path"] for f in manifest["files"]}
    assert names == set(files) - {"manifest.json"}
    assert {"home/config.toml", "home/policy.toml", "home/keys/registry.json", "home/keys/admin.key",
            "home/keys/member_data.key", "home/vault/secrets.json", "home/vault/secrets.key",
            "home/vault/token.key", "database/dctrl.sqlite3", "home/agents/vm1/agent.toml",
            "home/server_tokens.json"} <= names
    identities = {r["name"] for r in json.loads(dctrl(filled, "keys", "list", "--json").stdout)}
    assert len(identities) == 13 and {f"home/keys/{n}.key" for n in identities} <= names
    assert not [n for n in names if n.startswith(("home/run/", "home/log/", "home/events/")) or "/." in n]
    assert {f["path"]: f["mode"] for f in manifest["files"]}["home/keys/admin.key"] == "0600"
    before = listings(filled)

    restored_root = tmp_path / "dst"
    printed = restore_into(str(restored_root), str(out)).stdout
    assert f"next: dctrl up --home {restored_root}" in printed and "hunter2" not in printed, printed
    from keys.home import Home

    restored = Home(restored_root)
    assert restored.database_url == f"sqlite:///{restored_root / 'dctrl.sqlite3'}"
    old, new = tree(filled.root), tree(restored_root)
    for rel, (_mode, data) in old.items():
        if rel.startswith(("run/", "log/", "sim/")) or rel in ("run", "log") or "/." in rel or rel.startswith(
                "dctrl.sqlite3") or rel == "config.toml":
            continue
        assert rel in new, f"{rel} not restored"
        assert new[rel][1] == data, f"{rel} differs"
    assert [r for r in new if r.startswith(("run/", "log/"))] == []
    assert {rel: mode for rel, (mode, data) in new.items() if mode != (0o600 if data is not None else 0o700)} == {}
    assert stat.S_IMODE(restored_root.stat().st_mode) == 0o700
    config_old = (filled.root / "config.toml").read_text().replace(filled.root.as_posix(), "HOME")
    config_new = (restored_root / "config.toml").read_text().replace(restored_root.as_posix(), "HOME")
    assert config_new == config_old  # only the database's path follows the home
    assert listings(restored) == before
    assert before["members"] and len(before["invoices"]) == 3 and before["ada"]["name"] == "Ada Lovelace"
    assert json.loads(dctrl(restored, "vault", "list", "--json").stdout) == ["smtp_password"]


def test_a_damaged_or_altered_archive_is_refused_and_nothing_is_written(filled, tmp_path):
    good = tmp_path / "good.tar.gz"
    dctrl(filled, "backup", "--out", str(good))
    target = tmp_path / "dst"
    cases = {
        "a file changed": lambda f: f.__setitem__("home/policy.toml", f["home/policy.toml"] + b"\n# edited\n"),
        "a key swapped": lambda f: f.__setitem__("home/keys/admin.key", f["home/keys/vm1.key"]),
        "a file added": lambda f: f.__setitem__("home/keys/evil.key", b"x"),
        "a file removed": lambda f: f.pop("home/vault/token.key"),
        "the manifest edited": lambda f: f.__setitem__("manifest.json", f["manifest.json"].replace(
            json.loads(f["manifest.json"])["files"][0]["sha256"].encode(), b"0" * 64)),
        "a path out of the home": lambda f: (f.__setitem__("home/../../evil", b"x"), f.__setitem__(
            "manifest.json", json.dumps({**json.loads(f["manifest.json"]), "files": json.loads(
                f["manifest.json"])["files"] + [{"path": "home/../../evil", "size": 1, "sha256": "x"}]}).encode())),
        "no manifest": lambda f: f.pop("manifest.json"),
    }
    why = {"a file changed": "home/policy.toml does not match its checksum",
           "a key swapped": "home/keys/admin.key does not match its checksum",
           "a file added": "home/keys/evil.key is not in the manifest",
           "a file removed": "home/vault/token.key is missing",
           "the manifest edited": "does not match its checksum",
           "a path out of the home": "the manifest names 'home/../../evil'",
           "no manifest": "not a dctrl backup (no manifest.json)"}
    for case, change in cases.items():
        bad = tmp_path / f"{case.replace(' ', '_')}.tar.gz"
        bad.write_bytes(good.read_bytes())
        rewrite(bad, change)
        done = restore_into(str(target), str(bad), check=False)
        assert done.returncode == 2 and why[case] in done.stderr, (case, done.stderr)
        assert not target.exists(), case
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst.restore-")], case
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:-200])
    done = restore_into(str(target), str(truncated), check=False)
    assert done.returncode == 2 and "damaged" in done.stderr and not target.exists(), done.stderr
    # and the good one restores (so the refusals above were the changes')
    restore_into(str(target), str(good))
    assert (target / "keys" / "admin.key").read_bytes() == (filled.root / "keys" / "admin.key").read_bytes()


def test_restore_goes_into_a_new_or_empty_directory_only(filled, tmp_path):
    out = tmp_path / "b.tar.gz"
    dctrl(filled, "backup", "--out", str(out))
    done = restore_into(str(filled.root), str(out), check=False)
    assert done.returncode == 2 and "is a dctrl home (it has a config.toml or a database)" in done.stderr
    only_db = tmp_path / "only_db"
    only_db.mkdir()
    (only_db / "dctrl.sqlite3").write_bytes(b"")
    done = restore_into(str(only_db), str(out), check=False)
    assert done.returncode == 2 and "is a dctrl home" in done.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    done = restore_into(str(stray), str(out), check=False)
    assert done.returncode == 2 and "is not empty (notes.txt)" in done.stderr
    assert sorted(os.listdir(stray)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    restore_into(str(empty), str(out))
    assert (empty / "config.toml").exists() and stat.S_IMODE(empty.stat().st_mode) == 0o700
    done = restore_into(str(tmp_path / "x"), str(out), "--database-url",
                 "postgresql://nobody@127.0.0.1/x", check=False)
    assert done.returncode == 2 and "--database-url is for a PostgreSQL backup" in done.stderr


def test_backup_never_replaces_a_file_without_force(filled, tmp_path):
    out = tmp_path / "b.tar.gz"
    out.write_bytes(b"precious")
    done = dctrl(filled, "backup", "--out", str(out), check=False)
    assert done.returncode == 2 and "exists" in done.stderr and "--force" in done.stderr
    assert out.read_bytes() == b"precious"
    dctrl(filled, "backup", "--out", str(out), "--force")
    assert "manifest.json" in members(out) and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.tar.gz")] == []  # no temporary left


def test_the_event_log_only_with_events(filled, tmp_path):
    from actors.eventlog import EventLog

    log = EventLog(filled.events_dir)
    for i in range(5):
        log.append(f"record {i}".encode())
    log.close()
    segments = sorted(p.name for p in filled.events_dir.iterdir() if p.name.endswith(".seg"))
    assert segments
    without, with_ = tmp_path / "without.tar.gz", tmp_path / "with.tar.gz"
    dctrl(filled, "backup", "--out", str(without))
    dctrl(filled, "backup", "--out", str(with_), "--events")
    assert not [n for n in members(without) if n.startswith("home/events/")]
    assert sorted(n for n in members(with_) if n.startswith("home/events/")) == [f"home/events/{s}" for s in segments]
    assert json.loads(members(with_)["manifest.json"])["events"] is True
    restore_into(str(tmp_path / "dst"), str(with_))
    for s in segments:
        assert (tmp_path / "dst" / "events" / s).read_bytes() == (filled.events_dir / s).read_bytes()
    restore_into(str(tmp_path / "dst2"), str(without))
    assert list((tmp_path / "dst2" / "events").iterdir()) == []


def test_a_sqlite_backup_is_consistent_while_another_process_writes(tmp_path):
    """The online backup API: a copy taken under a steady stream of commits is a whole database,
    holding a prefix of the rows."""
    import sqlite3

    from scripts.cli.backup import backup

    home = new_home(tmp_path / "src")
    path = home.root / "dctrl.sqlite3"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, pad TEXT)")
    setup.commit()
    setup.close()
    stop = threading.Event()
    written = []

    def writer():
        db = sqlite3.connect(path, timeout=10)
        n = 0
        while not stop.is_set():
            n += 1
            db.execute("INSERT INTO t VALUES (?, ?)", (n, "x" * 500))
            db.commit()
            written.append(n)
        db.close()
    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(written) < 200:
            stop.wait(0.01)
        backup(home, tmp_path / "b.tar.gz")
    finally:
        stop.set()
        t.join(10)
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(members(tmp_path / "b.tar.gz")["database/dctrl.sqlite3"])
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = [r[0] for r in db.execute("SELECT n FROM t ORDER BY n")]
    assert rows == list(range(1, len(rows) + 1)) and len(rows) >= 200


# -- end to end: the network runs on the restored home ----------------------------------------------

@contextlib.contextmanager
def pg_database(prefix="bk"):
    """A fresh, uniquely named PostgreSQL database; yields its URL. Dropped at the end."""
    import psycopg2

    from tests.test_db import PG_URL

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    server = urlsplit(PG_URL)._replace(path="/postgres", query="").geturl()
    conn = psycopg2.connect(server)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        try:
            yield urlsplit(PG_URL)._replace(path=f"/{name}", query="").geturl()
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        conn.close()


def test_a_postgresql_home_on_its_own_schema_restores_into_that_schema_only(tmp_path):
    """A home whose URL pins a schema (options=-csearch_path=S, as the test harness's): the dump
    holds that schema alone, and loads where the URL pins the same schema in a database without it."""
    from tests.harness import home_on

    with home_on("postgresql", tmp_path / "src", "bk") as home, pg_database() as fresh:
        add_members_offline(home)
        add_invoices(home)
        before = listings(home)
        out = tmp_path / "b.tar.gz"
        dctrl(home, "backup", "--out", str(out))
        schema = json.loads(members(out)["manifest.json"])["pg_schema"]
        assert schema and schema.startswith("bk_") and f"options=-csearch_path%3D{schema}" in home.database_url
        done = restore_into(tmp_path / "a", out, "--database-url", fresh, check=False)
        assert done.returncode == 2 and f"holds the PostgreSQL schema {schema}" in done.stderr, done.stderr
        done = restore_into(tmp_path / "b", out, check=False)  # the source: it has the schema
        assert done.returncode == 2 and f"already has the schema {schema}" in done.stderr, done.stderr
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
        url = f"{fresh}?options=-csearch_path%3D{schema}"
        restore_into(tmp_path / "c", out, "--database-url", url)
        from keys.home import Home

        restored = Home(tmp_path / "c")
        assert restored.database_url == url and listings(restored) == before


NETWORK = ("broker", "vault", "event_logger", "member_data")


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_backup_then_restore_into_a_new_home_then_the_network_starts_and_lists_the_same(database, tmp_path):
    """The issue's test: `dctrl backup` (taken while the network runs), `dctrl restore` into a new
    home, the network starts there, and `dctrl invoices list` and `dctrl members list` show the same."""
    with contextlib.ExitStack() as stack:
        source_url = stack.enter_context(pg_database()) if database == "postgresql" else None
        source = new_home(tmp_path / "src", database_url=source_url)
        net = Network(source)
        stack.callback(net.close)
        net.start_healthy(*NETWORK, timeout=30)
        dctrl(source, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
        for handle, name in (("ada", "Ada Lovelace"), ("bob", "Bob Smith")):
            dctrl(source, "members", "add", handle, "--name", name, "--email", f"{handle}@example.org",
                  "--plan", "regular", "--joined", "2026-01-31")
        dctrl(source, "members", "pay", "ada", "--cad", "40.00", "--method", "cash", "--note", "at the door")
        add_invoices(source)
        before = listings(source)
        assert [m["handle"] for m in before["members"]] == ["ada", "bob"] and len(before["invoices"]) == 3
        assert before["ada"]["name"] == "Ada Lovelace" and before["ada"]["payments"]

        archive = tmp_path / "backup.tar.gz"
        printed = dctrl(source, "backup", "--out", str(archive)).stdout  # while the network runs
        assert ("PostgreSQL" if database == "postgresql" else "SQLite") in printed
        assert json.loads(members(archive)["manifest.json"])["database"] == database
        net.close()

        target = tmp_path / "dst"
        restore = []
        if database == "postgresql":
            # the backup's own database is not empty: refused, nothing written
            done = restore_into(target, archive, *restore, check=False)
            assert done.returncode == 2 and "is not empty" in done.stderr and not target.exists(), done.stderr
            target_url = stack.enter_context(pg_database())
            restore += ["--database-url", target_url]
        printed = restore_into(target, archive, *restore).stdout
        assert f"next: dctrl up --home {target}" in printed

        from keys.home import Home

        restored = Home(target)
        if database == "postgresql":
            assert restored.database_url == target_url
        else:
            assert restored.database_url == f"sqlite:///{target / 'dctrl.sqlite3'}"
        assert listings(restored) == before
        again = restore_into(target, archive, *restore, check=False)  # a second restore over it is refused
        assert again.returncode == 2 and "is a dctrl home" in again.stderr

        net2 = Network(restored)
        stack.callback(net2.close)
        net2.start_healthy(*NETWORK, timeout=30)
        assert listings(restored) == before
        # the restored keys, registry and Vault work: a change over the bus is accepted
        dctrl(restored, "members", "add", "cyd", "--name", "Cyd", "--email", "cyd@example.org", "--plan", "regular")
        after = json.loads(dctrl(restored, "members", "list", "--json").stdout)
        assert [m["handle"] for m in after] == ["ada", "bob", "cyd"]
        if database == "postgresql":  # the source database is untouched by the new home
            assert [m["handle"] for m in json.loads(dctrl(source, "members", "list", "--json").stdout)] == ["ada", "bob"]
