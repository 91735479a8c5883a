"""Small, careful file helpers shared by keys, the vault and the runtime."""

from __future__ import annotations

import json
import os
import stat
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


def atomic_write(path, data: bytes, mode=0o600) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir).

    The file gets ``mode`` less the process's umask, as a new file does: `dctrl` and
    `dctrl-agent` run with umask 077, so whatever they write in a home stays private
    whatever mode a caller asks for."""
    path = Path(path)
    mode &= ~current_umask() & 0o7777
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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
