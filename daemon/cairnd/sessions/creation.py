"""The creating -> ready transaction every session is made by (a new session, a fork, the
session a rewind leaves behind), so a session is either whole or leaves nothing behind.

    with creating(layout, registry, id=..., title=..., ...) as made:   # the `creating` row
        gitworktree.add_worktree(...)                                          # its worktree
        log = write_initial_log(layout, id, source, keep_bytes, entries)   # its first log
        made.commit(result, fork_row)                                  # `ready`: the commit point

Until `commit`, any exception (and, on restart, any crash: recovery finds the `creating`
row) runs `roll_back`, which removes whatever part of the session was made. Synchronous
throughout: run it in a worker thread.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.git import refs as gitrefs
from cairnd.git import worktree as gitworktree
from cairnd.git import inner
from cairnd.checkpoints.checkpoint import session_ref_prefix
from cairnd.state.durable import fsync_dir, write_all
from cairnd.sessionlog.entries import envelope_line
from cairnd.state.layout import StateLayout
from cairnd.sessionlog.file import copy_prefix
from cairnd.state.registry import ForkRow, Registry, SessionRow


class Creation:
    """A session being made: its `creating` row, until `commit`."""

    def __init__(self, registry: Registry, row: SessionRow) -> None:
        self.registry = registry
        self.row = row
        self.committed = False

    def commit(self, result: Mapping[str, Any], fork: ForkRow | None = None, **extra: Any) -> None:
        """The session turns `ready` with `result` (what its request answers), and its
        lineage row when it is a fork, in one registry transaction. Where its git state
        is was recorded as its worktree was made (`places`): the registry keeps it."""
        record_git_dirs(self.registry, self.row)
        self.registry.commit_session(self.row.id, result, fork, **extra)
        self.committed = True


@contextmanager
def creating(layout: StateLayout, registry: Registry, **row: Any) -> Iterator[Creation]:
    """Begin a session (`registry.begin_session(**row)`: its `creating` row) and hand it
    over; roll every step back unless the body commits it."""
    registry.begin_session(**row)
    made = registry.get(row["id"])
    assert made is not None
    creation = Creation(registry, made)
    try:
        yield creation
    except BaseException:
        roll_back(layout, registry, made)
        raise
    if not creation.committed:
        roll_back(layout, registry, made)


def roll_back(layout: StateLayout, registry: Registry, row: SessionRow) -> None:
    """Remove everything a session in `creating` may have made, then its row. Safe to
    run on any prefix of creation, and again after a crash part-way through itself."""
    if not row.in_place:
        inner.forget_session(layout.inner_map(row.id), row.repo, row.id)
        gitworktree.remove_worktree(row.repo, row.worktree)
        dirs = places.dirs_or_none(row.repo)
        if dirs is not None:  # a worktree record a stop left half-built
            gitfiles.remove_record_aside(dirs, row.worktree)
        shutil.rmtree(layout.worktree_parent(row.id), ignore_errors=True)
    gitrefs.delete_refs(row.repo, session_ref_prefix(row.id))
    shutil.rmtree(layout.session_dir(row.id), ignore_errors=True)
    registry.forget_creating(row.id)


def record_git_dirs(registry: Registry, row: SessionRow) -> None:
    """Keep in the registry the git directories cairnd recorded for `row`'s worktree when
    it made it (`places.register`)."""
    place = places.lookup(row.worktree)
    if place is not None:
        registry.set_git_dirs(row.id, place.git_dir, place.common_dir)


def write_initial_log(layout: StateLayout, session_id: str, source: Path | None, keep_bytes: int,
                      entries: list[dict[str, Any]]) -> Path:
    """A session's first log (or a rewound session's new one): the first `keep_bytes` of
    `source` exactly as they are, then `entries`; written under a temporary name,
    fsynced and renamed into place, so the log is there whole or not at all."""
    directory = layout.session_dir(session_id)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = layout.log_tmp_path(session_id)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if source is not None and keep_bytes:
            copy_prefix(source, fd, keep_bytes)
        write_all(fd, b"".join(envelope_line(entry) for entry in entries))
        os.fsync(fd)
    finally:
        os.close(fd)
    final = layout.log_path(session_id)
    os.rename(tmp, final)
    fsync_dir(directory)
    return final
