"""What /proc says about other processes: who listens on a port, a process's command line
and parent. Pure stdlib, no dctrl imports above ``proto``: the broker names a port's holder
with it, and ``dctrl up`` / ``dctrl run`` (scripts/cli/supervise.py) their conflicts."""

from __future__ import annotations

import os


def parent_of(pid) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def describe_command(args: list[str]) -> str:
    """``python -m scripts.cli run broker --home X`` -> ``dctrl run broker --home X`` (for messages)."""
    for i, a in enumerate(args):
        if a == "scripts.cli" and i and args[i - 1] == "-m":
            return " ".join(["dctrl", *args[i + 1:]])
        if a in ("scripts.cli.supervise", "scripts.supervise") and "--" in args:  # (the second: configs written before the scripts/ split)
            return describe_command(args[args.index("--") + 1:])
    return " ".join(os.path.basename(a) if n == 0 else a for n, a in enumerate(args))[:200]


def listener_of(port: int) -> int | None:
    """The pid of a process of ours listening on TCP ``port`` (any address), from /proc; else None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


def port_holder(port: int) -> str:
    """Who listens on ``port``, for an error message: ``pid 42: dctrl run broker --home /srv/a``."""
    pid = listener_of(port)
    if pid is None:
        return "another process (not ours to see)"
    return f"pid {pid}: {describe_command(cmdline(pid))}"
