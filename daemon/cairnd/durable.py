"""Durable file hand-offs: write to a temporary name, fsync, rename, fsync the directory.

Whatever a reader may see half-done (result files, the first copy of a fork's log)
goes through here, so a crash leaves either the old state or the whole new file.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

_sequence = itertools.count()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def temp_name(path: Path) -> Path:
    # A dot name in the same directory: same file system (rename is atomic), and
    # ignored by anything scanning the directory for real entries.
    # Unique per call: two threads may write the same file at once. The name is cut
    # so the temporary one fits where the final one does (NAME_MAX, 255 bytes).
    stem = os.fsdecode(os.fsencode(path.name)[:200])
    return path.with_name(f".{stem}.{os.getpid()}.{next(_sequence)}.tmp")


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
