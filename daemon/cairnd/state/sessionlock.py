"""One writer per session: a process that writes a session's log (runs its turns,
rewinds or deletes it) holds the session's lock, `<state>/sessions/<id>/writer.lock`.

A daemon and `cairnd acp` (SPEC 18) share a state directory. `cairnd acp` holds the lock
of each session an editor has open for as long as it serves it; a daemon takes it for
each request that writes the session and lets go after. Whoever finds it held answers
`session_busy`, naming the pid that holds it; forks, diffs and reads need no lock (they
read only complete lines). The lock is a flock: it dies with its process, so a killed
editor never leaves a session locked. Small and free of the daemon's imports.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cairnd.errors import CairnError
from cairnd.state.layout import StateLayout

LOCK_NAME = "writer.lock"


def lock_path(layout: StateLayout, session_id: str) -> Path:
    return layout.session_dir(session_id) / LOCK_NAME


def held_elsewhere(layout: StateLayout, session_id: str) -> bool:
    """Whether a writer holds the session's lock now (recovery, which runs before its
    daemon holds any, leaves such sessions alone: their writer is alive)."""
    try:
        fd = os.open(lock_path(layout, session_id), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class SessionLocks:
    """The session locks this process holds (fds kept open)."""

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self._held: dict[str, int] = {}

    def holds(self, session_id: str) -> bool:
        return session_id in self._held

    def claim(self, session_id: str) -> None:
        """Take the session's lock (a no-op when this process has it), or CairnError
        session_busy."""
        if session_id in self._held:
            return
        path = lock_path(self.layout, session_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            raise CairnError("unknown_session", f"session {session_id!r} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise CairnError("session_busy", f"session {session_id} is being written by another cairnd process "
                                             f"(pid {holder or 'unknown'}: a daemon's request, or an editor's "
                                             "`cairnd acp`); try again when it lets go") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            # A full disk: the pid only names the holder to whoever finds the lock held
            # ("pid unknown" without it). Raising here would leave the flock on an fd
            # nobody knows of, the session busy to this very process until it exits.
            pass
        self._held[session_id] = fd

    def release(self, session_id: str) -> None:
        fd = self._held.pop(session_id, None)
        if fd is not None:
            os.close(fd)  # closing the fd drops the flock

    def release_all(self) -> None:
        for session_id in list(self._held):
            self.release(session_id)
