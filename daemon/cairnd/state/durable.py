"""Durable file hand-offs: write to a temporary name, fsync, rename, fsync the directory.

Whatever a reader may see half-done (result files, the first copy of a fork's log)
goes through here, so a crash leaves either the old state or the whole new file.
"""

from __future__ import annotations

import itertools
import os
import re
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


_TEMP_NAME = re.compile(r"^\..+\.[0-9]+\.[0-9]+\.tmp$")


def remove_stale_temps(directory: Path) -> list[str]:
    """Remove the temporary files `write_atomic` left in `directory` when a process died
    between writing and renaming (`kill -9`, power loss); their names. Only for a
    directory no other process is writing to (the daemon at start, holding the lock)."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return removed
