"""One daemon per state directory, and how anyone else can tell which one.

The daemon holds an exclusive flock on `<state>/cairnd.lock` for its whole life and
writes its pid into it: two daemons would each claim requests and break exactly-once,
and a lock dies with its process, so `kill -9` never leaves it stale. Small and free of
the daemon's imports (only the layout's), so `cairnd ls` can ask without loading the
ACP SDK.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cairnd.state.layout import StateLayout



class AlreadyRunning(Exception):
    pass


def acquire(state_dir: Path) -> int:
    """Take the lock (the fd to keep open), or AlreadyRunning."""
    fd = os.open(StateLayout(state_dir).lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another cairnd is already serving {state_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon serving state_dir (-1 when running but unknown), or None."""
    try:
        fd = os.open(StateLayout(state_dir).lock, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
