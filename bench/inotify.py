"""A minimal inotify (Linux) through ctypes, so a benchmark's client learns the instant
a result file lands instead of polling (polling would add its own period to every
latency it measures), and so the pickup benchmark's peer floor is the plainest
possible watcher."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    """One inotify instance: `watch` directories, then `names` of files that arrived."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self._dirs: dict[int, Path] = {}

    def watch(self, directory: Path, mask: int = IN_MOVED_TO) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self._dirs[wd] = directory

    def names(self, timeout: float | None) -> list[tuple[Path, str]]:
        """(directory, name) of every event waiting, after waiting up to `timeout` for one."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        found = []
        at = 0
        while at < len(data):
            wd, _mask, _cookie, length = _EVENT.unpack_from(data, at)
            name = data[at + _EVENT.size: at + _EVENT.size + length].rstrip(b"\0")
            found.append((self._dirs.get(wd, Path("?")), os.fsdecode(name)))
            at += _EVENT.size + length
        return found

    def close(self) -> None:
        os.close(self.fd)
