"""PostgreSQL for the tests: the machine's server, or a throwaway one.

The PostgreSQL tests use ``DCTRL_TEST_PG_URL``, by default the machine's server
on 127.0.0.1:5432 (trust auth, database ``test``). When that does not answer
(refused, or it refuses us), :func:`ensure` starts a throwaway server from the
system's PostgreSQL binaries (``/usr/lib/postgresql/*/bin``, ``initdb`` on the
PATH, or the directory in ``DCTRL_TEST_PG_BINDIR``) in a temporary directory,
on a free loopback port, and points ``DCTRL_TEST_PG_URL`` at it.
tests/conftest.py calls it once per pytest run (in the xdist controller, whose
environment the workers inherit) and stops the server at the end.

As root the server runs as the ``postgres`` user (or ``nobody``): PostgreSQL
refuses to run as root. It dies with the pytest process that started it (a
parent-death signal), so a killed run leaves no server behind; a later run
removes the directories such runs left.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ENV = "DCTRL_TEST_PG_URL"
BINDIR_ENV = "DCTRL_TEST_PG_BINDIR"  # where initdb and postgres are, if not in the usual places
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DIR_PREFIX = "dctrl-test-pg-"
START_TIMEOUT = 60.0
PR_SET_PDEATHSIG = 1


class Unavailable(Exception):
    """No PostgreSQL for the tests: neither the configured server nor a throwaway one."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def configured_url() -> str:
    return os.environ.get(ENV) or DEFAULT_URL


def problem(url: str, timeout: int = 3) -> str | None:
    """Why ``url`` cannot be used (refused, authentication, no such database), or None."""
    try:
        import psycopg2
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[dev]')"
    try:
        conn = psycopg2.connect(url, connect_timeout=timeout)
    except Exception as exc:  # psycopg2.OperationalError, or a malformed URL
        return " ".join(str(exc).split()) or type(exc).__name__
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()
    return None


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (with initdb and postgres)."""
    if os.environ.get(BINDIR_ENV):
        given = Path(os.environ[BINDIR_ENV])
        return given if (given / "initdb").exists() and (given / "postgres").exists() else None

    def version(path):
        return [int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name)] or [0]
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        if Path(initdb).with_name("postgres").exists():
            return Path(initdb).parent
    initdb = shutil.which("initdb")
    if initdb and Path(initdb).with_name("postgres").exists():
        return Path(initdb).parent
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: this user, or (as root) postgres or nobody. None: this user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Unavailable("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Remove the directories of throwaway servers whose pytest process is gone (killed)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), DIR_PREFIX + "*")):
        try:
            owner = int(Path(path, "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            shutil.rmtree(path, ignore_errors=True)


class Throwaway:
    """A PostgreSQL server in a temporary directory, on a free loopback port, for one test run."""

    def __init__(self):
        self.bin = bindir()
        if self.bin is None:
            where = os.environ.get(BINDIR_ENV) or "/usr/lib/postgresql/*/bin or on the PATH"
            raise Unavailable(f"no PostgreSQL server binaries (initdb, postgres) in {where}: "
                              "install them (Debian/Ubuntu: apt install postgresql)")
        self.user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)

    def _as_user(self):
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _become_user_and_die_with_parent(self):  # in the child, before exec
        if self.user is not None:
            os.setgroups([])
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)
        # After the change of user, which would clear it: if pytest dies, so does the server
        # (SIGQUIT: the postmaster's immediate shutdown, which ends its backends too).
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGQUIT), 0, 0, 0)

    def start(self) -> "Throwaway":
        try:
            import psycopg2  # noqa: F401 (to see it answer, and to create the database)
        except ImportError:
            self.stop()
            raise Unavailable("psycopg2 is not installed (pip install -e '.[dev]')") from None
        try:
            self._initdb()
            for _ in range(3):  # the free port may be taken before the server binds it
                port = _free_port()
                if self._run(port):
                    break
            else:
                raise Unavailable(f"the throwaway PostgreSQL would not start; its log:\n{self._log_tail()}")
            self._create_database(port)
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql://postgres@127.0.0.1:{port}/test"
        return self

    def _initdb(self):
        cmd = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
               "-E", "UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, timeout=120, **self._as_user())
        if done.returncode != 0:
            raise Unavailable(f"initdb failed ({' '.join(cmd)}):\n{done.stdout}{done.stderr}".rstrip())

    def _run(self, port: int) -> bool:
        """Start the server on ``port``; True once it accepts connections, False if it exited."""
        cmd = [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(port),
               "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
               "-c", "full_page_writes=off", "-c", "max_connections=200"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True,  # a Ctrl-C is for pytest, which then stops it
                                         preexec_fn=self._become_user_and_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if problem(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=2) is None:
                return True
            time.sleep(0.1)
        raise Unavailable(f"the throwaway PostgreSQL did not answer within {START_TIMEOUT:.0f} s; "
                          f"its log:\n{self._log_tail()}")

    def _create_database(self, port: int):
        import psycopg2

        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE test")
        finally:
            conn.close()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown, then harder) and remove its directory. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.dir, ignore_errors=True)


def ensure() -> tuple[str, Throwaway | None, str]:
    """The URL the PostgreSQL tests use, the throwaway server started for them (or None) and a
    line saying which. Sets ``DCTRL_TEST_PG_URL`` to the throwaway's URL. Raises
    :class:`Unavailable` with the reasons when there is neither."""
    url = configured_url()
    why = problem(url)
    if why is None:
        return url, None, f"PostgreSQL: {url}"
    remove_leftovers()
    try:
        server = Throwaway().start()
    except Unavailable as exc:
        raise Unavailable(f"PostgreSQL: none answers at {url} ({why}), and no throwaway server could be "
                          f"started: {exc}. Set {ENV} to a server's URL, or install PostgreSQL.") from None
    os.environ[ENV] = server.url
    return server.url, server, (f"PostgreSQL: throwaway server {server.url} (data in {server.dir}), "
                                f"because {url} did not answer: {why}")
