"""Small, careful file helpers shared by keys, the vault and the runtime."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path

from proto.errors import InsecureKeyFile


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore (never wider than private meanwhile)
    os.umask(mask)
    return mask


def write_all(fd: int, data) -> None:
    """Write all of ``data`` to ``fd``: ``os.write`` may write less than it is given."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path) -> None:
    """fsync the directory ``path`` (a rename or a new file in it is durable only then)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data: bytes, mode=0o600, *, exclusive: bool = False, tmp=None, durable: bool = True,
                 crash_at=None) -> None:
    """Write ``data`` to ``path`` atomically and durably: a temporary file in the same directory
    (written in full, fsynced), renamed over ``path``, then the directory fsynced. A failure
    anywhere before the rename removes the temporary file and leaves ``path`` as it was.
    The one atomic write of the code base: keys, the registry, the policy, the Vault's store,
    the replay journal, boot counters and the agent's command journal all go through it.

    The file gets ``mode`` less the process's umask, as a new file does: `dctrl` and
    `dctrl-agent` run with umask 077, so whatever they write in a home stays private
    whatever mode a caller asks for. The temporary file is private (0600) until then.

    ``exclusive``: never replace an existing ``path`` (:class:`FileExistsError`, even when
    another process creates it meanwhile): the temporary file is hard-linked into place, or
    where links are not supported created with ``O_EXCL`` (exclusive, not crash-atomic).
    ``tmp``: a fixed temporary path (a reader cleans up what a crash left there); by default a
    fresh unique name, so two writers of one file (threads, processes) never share one.
    ``durable=False``: no fsyncs (still atomic: a reader sees the old file or the new one), for
    scratch files whose loss in a power cut costs nothing and that are written on a hot path
    (the chain simulator's state, saved after every payment it is sent).
    ``crash_at``: a test hook called with ``"written"`` (temporary file complete and fsynced)
    and ``"replaced"`` (renamed, directory not yet fsynced)."""
    path = Path(path)
    mode &= ~current_umask() & 0o7777
    if tmp is None:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
    else:
        tmp = Path(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if crash_at is not None:
            crash_at("written")
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "refusing to overwrite existing file", str(path)) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                _write_exclusive_fallback(path, data, mode)
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if crash_at is not None:
        crash_at("replaced")
    if durable:
        fsync_dir(path.parent)


def _write_exclusive_fallback(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite existing file", str(path)) from None
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, obj, mode=0o644) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_secret_file(path) -> bytes:
    """Read a secret file, refusing one that group or others can read or write."""
    path = Path(path)
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise InsecureKeyFile(
            f"{path} is mode {stat.S_IMODE(st.st_mode):04o}; secret files must be private: chmod 600 {path}"
        )
    return path.read_bytes()


def file_stamp(path):
    """(mtime_ns, size, inode) or None: cheap change detection for hot reload."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
