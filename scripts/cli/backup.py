"""`dctrl backup` and `dctrl restore`: a home in one archive, and back into a new home.

The archive is a tar.gz (written to a temporary file beside ``--out``, renamed into place, 0600):

    manifest.json             format, dctrl version, created time, database kind, every file's sha256
    home/config.toml, home/policy.toml, home/server_tokens.json, home/keys/registry.json, home/keys/NAME.key,
    home/vault/..., home/agents/NAME/* (a machine folder, its state/ left out), home/demo/*,
    home/events/... (only with --events)
    database/dctrl.sqlite3    SQLite, copied with sqlite3's online backup API (consistent while
                              actors write), or
    database/dctrl.pgdump     PostgreSQL, `pg_dump --format=custom` of the configured URL

Left out: run/ (pid files, locks, boot counters, replay journals), log/, sim/ (the demo's
simulators), temporary and lock files. A restore goes into an empty or new home only: it reads
the whole archive and checks every file against the manifest before it writes anything, builds
the home in a private directory beside the target, loads a PostgreSQL dump into an empty
database in one transaction, and only then renames the directory into place.

Nothing here prints a secret: database URLs are shown without their password, which goes to
pg_dump and pg_restore in their environment (PGPASSWORD), not on their command line.
"""

from __future__ import annotations

import os
import sys

from proto.errors import DctrlError
from scripts.cli.common import command

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/dctrl.sqlite3"
PG_MEMBER = "database/dctrl.pgdump"
CHUNK = 1 << 20


# -- what goes in ------------------------------------------------------------------------------------

def _skipped(name: str) -> bool:
    """Temporary, lock and pid files (atomic_write's ``.NAME.xxx.tmp`` among them)."""
    return name.startswith(".") or name.endswith((".tmp", ".lock", ".pid", "-journal", "-wal", "-shm"))


def _tree(root, sub, *, skip_dirs=()):
    """Regular files under ``root/sub`` (relative paths, sorted), skipping ``skip_dirs`` by name."""
    base = root / sub
    out = []
    if not base.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not _skipped(name) and os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, root))
    return out


def home_files(home, *, events: bool) -> list[str]:
    """The home's files a backup holds, relative to the home."""
    root = home.root
    # server_tokens.json: the report server's API tokens, hashed (actors/server/tokens.py)
    files = [f for f in ("config.toml", "policy.toml", "server_tokens.json") if (root / f).is_file()]
    files += _tree(root, "keys")  # registry.json and every identity's NAME.key
    files += _tree(root, "vault")
    files += _tree(root, "agents", skip_dirs=("state",))  # a machine's agent.toml and key copy
    files += _tree(root, "demo")  # the demo treasury's co-signer mnemonics
    if events:
        files += _tree(root, "events")
    return files


# -- tools ---------------------------------------------------------------------------------------

def pg_tool(name: str) -> str:
    """pg_dump or pg_restore: on the PATH, else the newest /usr/lib/postgresql/*/bin."""
    import glob
    import re
    import shutil

    found = shutil.which(name)
    if found:
        return found

    def version(path):
        return [int(n) for n in re.findall(r"\d+", path.split("/")[-3])] or [0]
    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True):
        if os.access(path, os.X_OK):
            return path
    raise DctrlError(f"{name} not found (on the PATH or in /usr/lib/postgresql/*/bin): it is needed for a "
                     f"PostgreSQL database; install the PostgreSQL client (Debian/Ubuntu: apt install "
                     f"postgresql-client)")


def pg_connection(url: str) -> tuple[str, dict]:
    """The URL without its password, and the environment that gives libpq the password."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    env = {}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}@{host}" if user else host)
    return urlunsplit(parts), env


def pg_schema_of(url: str) -> str | None:
    """The one schema a URL pins with ``options=-csearch_path=S`` (tests/harness.py's), or None."""
    import re
    from urllib.parse import parse_qs, urlsplit

    for opt in parse_qs(urlsplit(url).query).get("options", []):
        m = re.search(r"-c\s*search_path\s*=\s*([A-Za-z_][A-Za-z0-9_]*)\s*$", opt)
        if m:
            return m.group(1)
    return None


def _run_pg(tool: str, args: list, url: str, what: str):
    import subprocess

    from actors.db import redact

    bare, env = pg_connection(url)
    done = subprocess.run([pg_tool(tool), *args, "--dbname", bare], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=3600)
    if done.returncode != 0:
        detail = "\n".join(redact(line) for line in done.stderr.strip().splitlines()[-5:])
        raise DctrlError(f"{what} {redact(url)} failed ({tool} exited {done.returncode}):\n{detail}")


def sqlite_path(url: str):
    """The file of a ``sqlite:///PATH`` URL, as peewee reads it (``sqlite:////abs/path``)."""
    from pathlib import Path
    from urllib.parse import urlsplit

    return Path(urlsplit(url).path[1:]).absolute()


class _Hashing:
    """A file object read through a sha256, for tarfile.addfile."""

    def __init__(self, f):
        import hashlib

        self.f, self.sha = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.sha.update(data)
        return data


# -- backup --------------------------------------------------------------------------------------

def backup(home, out, *, events=False, force=False) -> dict:
    """Write the archive of ``home`` to ``out``; returns the manifest."""
    import datetime
    import io
    import json
    import sqlite3
    import tarfile
    import tempfile
    import time
    from pathlib import Path

    from keys.files import fsync_dir
    from proto.version import VERSION

    out = Path(out).absolute()
    if out.exists() and not force:
        raise DctrlError(f"{out} exists: give another --out, or --force to replace it")
    if not out.parent.is_dir():
        raise DctrlError(f"{out.parent} is not a directory")
    url = home.database_url
    kind = "sqlite" if url.startswith("sqlite") else "postgresql"
    if kind == "sqlite" and not sqlite_path(url).is_file():
        raise DctrlError(f"the database {sqlite_path(url)} does not exist")
    entries = []

    def add(tar, arcname, path):
        st = os.stat(path)
        info = tarfile.TarInfo(arcname)
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), st.st_mode & 0o777
        with open(path, "rb") as f:
            reader = _Hashing(f)
            try:
                tar.addfile(info, reader)
            except OSError as exc:  # shrank under us (tarfile: "unexpected end of data")
                raise DctrlError(f"{path} changed while it was copied ({exc}): run the backup again") from None
        entries.append({"path": arcname, "size": st.st_size, "mode": f"{info.mode:04o}",
                        "sha256": reader.sha.hexdigest()})

    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise DctrlError(f"cannot write in {out.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)
        with tempfile.TemporaryDirectory(prefix="dctrl-backup-") as scratch, \
                os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            os.chmod(scratch, 0o700)
            if kind == "sqlite":  # the online backup API: a consistent copy while actors write
                copy = Path(scratch) / "dctrl.sqlite3"
                src = sqlite3.connect(sqlite_path(url), timeout=30)
                dst = sqlite3.connect(copy)
                try:
                    src.backup(dst)
                except sqlite3.Error as exc:
                    raise DctrlError(f"cannot copy the database {sqlite_path(url)}: {exc}") from None
                finally:
                    dst.close()
                    src.close()
                add(tar, SQLITE_MEMBER, copy)
            else:  # pg_dump reads in one snapshot
                dump = Path(scratch) / "dctrl.pgdump"
                schema = pg_schema_of(url)
                _run_pg("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", "--file", str(dump),
                                    *(["--schema", schema] if schema else [])], url, "pg_dump of")
                add(tar, PG_MEMBER, dump)
            for rel in home_files(home, events=events):
                add(tar, f"home/{rel}", home.root / rel)
            manifest = {"format": FORMAT, "dctrl_version": VERSION,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "created_at": time.time(), "home": str(home.root), "database": kind,
                        "pg_schema": pg_schema_of(url) if kind == "postgresql" else None,
                        "events": bool(events), "files": entries}
            data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise DctrlError(f"{out} exists: give another --out, or --force to replace it") from None
            tmp.unlink()
        fsync_dir(out.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def cmd_backup(args):
    from actors.db import redact
    from scripts.cli.common import home as _home

    home = _home(args)
    manifest = backup(home, args.out, events=args.events, force=args.force)
    files = manifest["files"]
    size = os.path.getsize(args.out)
    db = next(f for f in files if f["path"].startswith("database/"))
    where = "SQLite" if manifest["database"] == "sqlite" else f"PostgreSQL {redact(home.database_url)}"
    print(f"wrote {os.path.abspath(args.out)} (0600, {size} bytes): database ({where}, {db['size']} bytes), "
          f"{sum(f['path'].startswith('home/keys/') and f['path'].endswith('.key') for f in files)} key files, "
          f"registry, vault ({sum(f['path'].startswith('home/vault/') for f in files)} files), policy, config"
          + (f", event log ({sum(f['path'].startswith('home/events/') for f in files)} files)" if args.events
             else "; not the event log (--events)"))
    if home.config["vault"].get("passphrase_file"):
        print("the Vault's passphrase ([vault] passphrase_file) is not in the backup: keep it with the archive")
    print(f"restore with: dctrl restore {args.out} --home NEWHOME")


# -- restore -------------------------------------------------------------------------------------

def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return (not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "\\" not in rel
            and (rel.startswith("home/") and len(parts) >= 2 or rel in (SQLITE_MEMBER, PG_MEMBER)))


def read_manifest(path) -> dict:
    """The archive's manifest, after checking every file of the archive against it (sizes and
    sha256, nothing more and nothing less). Writes nothing."""
    import hashlib
    import json
    import tarfile

    try:
        tar = tarfile.open(path, "r:gz")
    except FileNotFoundError:
        raise DctrlError(f"{path}: no such file") from None
    except (tarfile.TarError, OSError) as exc:
        raise DctrlError(f"{path} is not a dctrl backup (not a tar.gz archive: {exc})") from None
    seen, manifest = {}, None
    try:
        with tar:
            for member in tar:
                if not member.isfile():
                    raise DctrlError(f"{path}: {member.name!r} is not a regular file: refusing the archive")
                if member.name in seen:
                    raise DctrlError(f"{path}: {member.name!r} appears twice: refusing the archive")
                f = tar.extractfile(member)
                if member.name == MANIFEST:
                    if member.size > 64 << 20:
                        raise DctrlError(f"{path}: the manifest is too large")
                    raw = f.read()
                    try:
                        manifest = json.loads(raw)
                    except ValueError:
                        raise DctrlError(f"{path}: manifest.json is not JSON") from None
                    seen[member.name] = None
                    continue
                sha = hashlib.sha256()
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    sha.update(chunk)
                seen[member.name] = (member.size, sha.hexdigest())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DctrlError(f"{path} is damaged (cannot read it to the end: {exc})") from None
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise DctrlError(f"{path} is not a dctrl backup (no manifest.json)")
    if manifest.get("format") != FORMAT:
        raise DctrlError(f"{path}: backup format {manifest.get('format')!r}; this dctrl reads format {FORMAT}")
    if manifest.get("database") not in ("sqlite", "postgresql"):
        raise DctrlError(f"{path}: unknown database kind {manifest.get('database')!r}")
    listed = {}
    for entry in manifest["files"]:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or not _safe(rel) or rel in listed:
            raise DctrlError(f"{path}: the manifest names {rel!r}, which no backup holds: refusing the archive")
        listed[rel] = (entry.get("size"), entry.get("sha256"))
    db_member = SQLITE_MEMBER if manifest["database"] == "sqlite" else PG_MEMBER
    problems = []
    for rel in sorted(set(listed) | set(seen) - {MANIFEST}):
        if rel not in seen:
            problems.append(f"{rel} is missing")
        elif rel not in listed:
            problems.append(f"{rel} is not in the manifest")
        elif seen[rel] != listed[rel]:
            problems.append(f"{rel} does not match its checksum")
    if db_member not in listed:
        problems.append(f"{db_member} (the {manifest['database']} database) is missing")
    if "home/config.toml" not in listed:
        problems.append("home/config.toml is missing")
    if problems:
        raise DctrlError(f"{path} fails its manifest, nothing restored: " + "; ".join(problems[:5])
                         + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return manifest


def set_database_url(text: str, url: str) -> str:
    """config.toml's text with ``[database] url`` set to ``url`` (comments and the rest kept)."""
    import json
    import re
    import tomllib

    lines = text.splitlines(keepends=True)
    table, header, done = None, None, False
    for i, line in enumerate(lines):
        s = line.strip()
        m = re.match(r"\[([^\[\]]+)\]\s*(#.*)?$", s)
        if m:
            table = m.group(1).strip()
            if table == "database":
                header = i
            continue
        if table == "database" and re.match(r"url\s*=", s):
            lines[i] = f"url = {json.dumps(url)}\n"
            done = True
    if not done:
        if header is not None:
            lines.insert(header + 1, f"url = {json.dumps(url)}\n")
        else:
            lines.append(f"\n[database]\nurl = {json.dumps(url)}\n")
    out = "".join(lines)
    if tomllib.loads(out).get("database", {}).get("url") != url:
        raise DctrlError("could not set [database] url in the restored config.toml: edit it by hand")
    return out


def _refuse_nonempty(root):
    if not root.exists():
        return
    if not root.is_dir():
        raise DctrlError(f"{root} exists and is not a directory")
    if (root / "config.toml").exists() or (root / "dctrl.sqlite3").exists():
        raise DctrlError(f"{root} is a dctrl home (it has a config.toml or a database): restore only into "
                         f"a new or empty directory (--home NEWHOME)")
    left = sorted(os.listdir(root))
    if left:
        raise DctrlError(f"{root} is not empty ({', '.join(left[:5])}{', ...' if len(left) > 5 else ''}): "
                         f"restore only into a new or empty directory (--home NEWHOME)")


def pg_tables(url: str) -> int:
    """Tables in the schemas the URL's connections see."""
    from actors.db import connect

    database = connect(url)
    try:
        return database.execute_sql("SELECT count(*) FROM information_schema.tables "
                                    "WHERE table_schema = ANY (current_schemas(false))").fetchone()[0]
    finally:
        database.close()


def check_pg_schema(url: str, schema: str | None):
    """A dump of one schema (a URL with ``options=-csearch_path=S``) loads only where the URL
    pins the same schema and the database does not have it yet (pg_restore creates it)."""
    from actors.db import connect, redact

    if schema is None:
        return
    if pg_schema_of(url) != schema:
        raise DctrlError(f"the backup holds the PostgreSQL schema {schema} (its URL set search_path={schema}); "
                         f"give --database-url with ?options=-csearch_path%3D{schema} (now {redact(url)})")
    database = connect(url)
    try:
        exists = database.execute_sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    finally:
        database.close()
    if exists:
        raise DctrlError(f"the database {redact(url)} already has the schema {schema}, which the restore creates: "
                         f"drop it (if it is empty) or restore into another database")


def restore(archive, root, *, database_url=None) -> dict:
    """Restore ``archive`` into the new or empty directory ``root``; returns a summary."""
    import hashlib
    import shutil
    import tarfile
    import tempfile
    import tomllib
    from pathlib import Path

    from actors.db import redact
    from keys.files import atomic_write, fsync_dir

    root = Path(root).absolute()
    _refuse_nonempty(root)
    manifest = read_manifest(archive)
    kind = manifest["database"]
    sizes = {e["path"]: (e["size"], e["sha256"]) for e in manifest["files"]}

    # config.toml first: where the database goes
    with tarfile.open(archive, "r:gz") as tar:
        config_text = tar.extractfile("home/config.toml").read()
    if hashlib.sha256(config_text).hexdigest() != sizes["home/config.toml"][1]:
        raise DctrlError(f"{archive} changed while it was read: nothing restored")
    config_text = config_text.decode()
    try:
        url = tomllib.loads(config_text).get("database", {}).get("url", "")
    except tomllib.TOMLDecodeError as exc:
        raise DctrlError(f"{archive}: its config.toml does not parse ({exc})") from None
    if kind == "sqlite":
        if database_url:
            raise DctrlError("--database-url is for a PostgreSQL backup; this one holds a SQLite database, "
                             "restored as a file in the home")
        if url:  # an absolute path (dctrl init writes the home's own): the file in the new home now
            config_text = set_database_url(config_text, f"sqlite:///{root / 'dctrl.sqlite3'}")
    else:
        if database_url:
            config_text = set_database_url(config_text, database_url)
            url = database_url
        if not url.startswith(("postgres://", "postgresql://")):
            raise DctrlError(f"the backup's config.toml has [database] url {redact(url)!r}, not a PostgreSQL "
                             f"URL: give the database to restore into with --database-url postgresql://...")
        pg_tool("pg_restore")
        check_pg_schema(url, manifest.get("pg_schema"))
        n = pg_tables(url)
        if n:
            raise DctrlError(f"the database {redact(url)} is not empty ({n} tables): restore only into an empty "
                             f"database (create one, or give another with --database-url)")

    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}.restore-", dir=parent))
    try:
        os.chmod(stage, 0o700)
        for sub in ("keys", "vault", "events", "run", "log", "agents"):
            (stage / sub).mkdir(mode=0o700, exist_ok=True)
        dump = None
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name == MANIFEST:
                    continue
                if member.name == "home/config.toml":
                    atomic_write(stage / "config.toml", config_text.encode(), mode=0o600)
                    continue
                target = stage / ("dctrl.sqlite3" if member.name == SQLITE_MEMBER else
                                  "dctrl.pgdump" if member.name == PG_MEMBER else member.name[len("home/"):])
                for d in reversed(target.relative_to(stage).parents[:-1]):
                    (stage / d).mkdir(mode=0o700, exist_ok=True)
                sha = hashlib.sha256()
                src = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    for chunk in iter(lambda: src.read(CHUNK), b""):
                        sha.update(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                if (member.size, sha.hexdigest()) != sizes.get(member.name):
                    raise DctrlError(f"{archive} changed while it was read ({member.name}): nothing restored")
                if member.name == PG_MEMBER:
                    dump = target
        if kind == "postgresql":  # one transaction: all of it or nothing
            _run_pg("pg_restore", ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                                   str(dump)], url, "loading the dump into")
            dump.unlink()
        for dirpath, _dirs, _files in os.walk(stage):
            fsync_dir(dirpath)
        if root.exists():
            root.rmdir()  # empty (checked above); the staged home takes its place
        os.rename(stage, root)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    files = manifest["files"]
    return {"root": root, "manifest": manifest, "database": kind,
            "url": url if kind == "postgresql" else f"sqlite:///{root / 'dctrl.sqlite3'}",
            "keys": sum(f["path"].startswith("home/keys/") and f["path"].endswith(".key") for f in files),
            "vault": sum(f["path"].startswith("home/vault/") for f in files),
            "events": sum(f["path"].startswith("home/events/") for f in files)}


def cmd_restore(args):
    from actors.db import redact

    root = args.home or os.environ.get("DCTRL_HOME") or "var"
    done = restore(args.file, root, database_url=args.database_url)
    m = done["manifest"]
    where = (f"SQLite {done['root'] / 'dctrl.sqlite3'}" if done["database"] == "sqlite"
             else f"PostgreSQL {redact(done['url'])}")
    print(f"restored {args.file} (made {m.get('created')} by dctrl {m.get('dctrl_version')} from {m.get('home')}) "
          f"into {done['root']}:")
    print(f"  database: {where}")
    print(f"  {done['keys']} key files, keys/registry.json, policy.toml, config.toml, vault ({done['vault']} files)")
    print(f"  event log: {done['events']} files" if m.get("events") else "  event log: not in the backup (empty)")
    print("the restored config.toml keeps the bus endpoints and ports: stop the old home's network first if it "
          "runs on this machine", file=sys.stderr)
    print(f"next: dctrl up --home {done['root']}")


def register(sub):
    sp = command(sub, "backup", cmd_backup,
                 "write the home to one archive (tar.gz, 0600): database, keys, registry, vault, policy, config")
    sp.epilog = ("The database is copied consistently while the network runs (SQLite: its online backup API; "
                 "PostgreSQL: pg_dump, from the PATH or /usr/lib/postgresql/*/bin). Left out: run/ and log/ "
                 "state, the simulators' files, and the event log unless --events. Keep the archive as safe as "
                 "the home: it holds every secret key.")
    sp.add_argument("--out", required=True, metavar="FILE", help="the archive to write (refused if it exists)")
    sp.add_argument("--events", action="store_true", help="include the event log (events/)")
    sp.add_argument("--force", action="store_true", help="replace FILE if it exists")

    sp = command(sub, "restore", cmd_restore,
                 "restore a `dctrl backup` archive into a new or empty home (--home NEWHOME)")
    sp.epilog = ("Every file is checked against the archive's manifest before anything is written; a home with a "
                 "config.toml or a database, or any non-empty directory, is refused. SQLite: the database file goes "
                 "into the new home (config.toml's url follows). PostgreSQL: the database in the restored config's "
                 "[database] url, or --database-url, must have no tables; the dump is loaded with pg_restore in one "
                 "transaction. Then start it: dctrl up --home NEWHOME.")
    sp.add_argument("file", metavar="FILE", help="an archive written by `dctrl backup`")
    sp.add_argument("--database-url", metavar="URL",
                    help="PostgreSQL: load into this (empty) database instead of the backup's [database] url, "
                         "and write it into the restored config.toml")
