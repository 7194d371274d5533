"""Checkpoints whose cost follows the change, not the tree.

For each live session the daemon keeps what its last checkpoint saw: the snapshot,
the private index that holds its whole working tree (`gitsnapshot.snapshot(keep_index=)`),
and the stamp of HEAD, the session's index file and the ignore and attribute
settings (`gitfiles.TreeStamp`). With the paths that inotify saw change since then
(`worktreewatch`), the next snapshot is:

- nothing changed, same stamp: the last snapshot again (no git process at all);
- some paths changed, same stamp: the last snapshot's tree with those paths read from
  the disk, written by cairnd itself (`treeedit`: no git process for changed tracked
  files, one `git check-ignore` for new ones); where git would store something other
  than the bytes on disk (attributes, conversion settings) or the change is not the
  plain kind, `gitsnapshot.snapshot_paths` on those paths alone (a status limited to
  them, then update-index and write-tree where they differ). The commit is written by
  hand either way;
- anything it cannot be sure of (no watch yet: a new session or a restart; a lost
  event; a new ignore file; a moved HEAD or a rewritten index; more paths than a
  command line holds): the full scan of `gitsnapshot.snapshot`, as without a watch.

Either way the snapshot is the same: the fidelity tests compare the two paths.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import inner
from cairnd.git import places
from cairnd.git import snapshot as gitsnapshot
from cairnd.state import privacy
from cairnd.git import treeedit
from cairnd.checkpoints.checkpoint import capture, in_place_repos, record
from cairnd.checkpoints import innercheckpoint
from cairnd.state.layout import StateLayout
from cairnd.errors import CairnError
from cairnd.journal import event
from cairnd.checkpoints.storage import RefKeeper
from cairnd.checkpoints.watch import WatchSet

INDEX_DIR = "checkpoint-index"  # under the state directory: one private index per live session


def checkpointer_for(state_dir: Path) -> Checkpointer:
    """The daemon's checkpointer: watching where inotify is, else always scanning."""
    try:
        watches: WatchSet | None = WatchSet()
    except OSError as exc:
        event(logging.WARNING, f"checkpoints scan whole worktrees: no inotify ({exc})")
        watches = None
    index_dir = Path(state_dir) / INDEX_DIR
    # What a previous run kept is of no use (its first checkpoints scan whole trees),
    # and a kill may have left index copies half-made there.
    shutil.rmtree(index_dir, ignore_errors=True)
    return Checkpointer(watches, index_dir, StateLayout(Path(state_dir)))


@dataclass(frozen=True)
class _Seen:
    """What the last checkpoint of a session saw."""

    snapshot: gitsnapshot.Snapshot
    stamp: gitfiles.TreeStamp
    head_tree: str | None  # tree of the snapshot's HEAD, once known
    entries: int | None = None  # entries of the session's index, once known
    plain: bool | None = None  # treeedit.plain_content of the tree, once known
    # Paths whose entries in the private index are behind the snapshot (written by
    # treeedit, which leaves that index alone): git's way must look at them too.
    unsynced: frozenset[bytes] = frozenset()
    gitlinks: tuple[tuple[bytes, str], ...] = ()  # the submodule commits its tree records


def _covered(path: bytes, changed: set[bytes]) -> bool:
    """Whether `path` is one of `changed` or lies under one of them (a directory)."""
    return path in changed or treeedit.under(path, changed)


class Checkpointer:
    """Takes checkpoints of live sessions (see the module docstring). Thread-safe; one
    checkpoint of a session at a time."""

    def __init__(self, watches: WatchSet | None, index_dir: Path, layout: StateLayout | None = None) -> None:
        self.watches = watches
        self.index_dir = Path(index_dir)
        self.layout = layout
        self._inner: dict[str, innercheckpoint.InnerCache] = {}
        self._seen: dict[str, _Seen] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # How snapshots were made: a full scan, from the changed paths (written by cairnd
        # or, of those, by git: "paths_git"), or the last one again.
        self.counts = {"full": 0, "paths": 0, "paths_git": 0, "reused": 0}
        self.trees = treeedit.TreeReader()
        self.refs = RefKeeper()
        self._reading: Any = None  # the CancelScope of read_events, while it runs

    def take(self, session_id: str, worktree: Path, turns: int, max_file_bytes: int) -> dict[str, Any]:
        """A checkpoint whose cost follows the change: `checkpoint.capture` with this
        snapshot, then `checkpoint.record`; its refs are counted for packing."""
        inner_map, repos = None, None
        if self.layout is not None and Path(worktree).parent == self.layout.worktree_parent(session_id):
            inner_map = self.layout.inner_map(session_id)  # a worktree cairnd made: its submodules are listed
        elif self.layout is not None:
            repos = in_place_repos(worktree)  # the user's own checkout (in place): its submodules are found
        with self._lock(session_id):
            try:
                changed = self.watches.take(session_id, Path(worktree)) if self.watches is not None else None
            except OSError:
                changed = None
            cache = self._inner.setdefault(session_id, innercheckpoint.InnerCache())
            repos = inner.read_map(inner_map) if repos is None else repos
            own = innercheckpoint.outside(changed, [*(r.path for r in repos), *cache.nested])

            def snapshot(tree: Path, cap: int, message: str,
                         gitlinks: dict[bytes, str] | None = None) -> gitsnapshot.Snapshot:
                return self._snapshot(session_id, tree, cap, message, own, gitlinks)

            snap, inner_state = capture(session_id, worktree, turns, max_file_bytes, snapshot,
                                        changed=changed, inner_cache=cache, repos=repos)
        params, pins = record(session_id, worktree, turns, snap, inner_state)
        self.refs.wrote(Path(worktree), len(pins))
        return params

    async def read_events(self) -> None:
        """Read inotify events as they come, for as long as the daemon runs (in a
        worker thread: a new directory is walked to be watched)."""
        import anyio

        assert self.watches is not None
        self._reading = anyio.CancelScope()
        try:
            with self._reading:
                while self.watches.fd >= 0:
                    await anyio.wait_readable(self.watches.fd)
                    await anyio.to_thread.run_sync(self.watches.drain)
        finally:
            self.watches.close()

    def close(self) -> None:
        """Stop reading events (the reader closes the descriptor once it has stopped)."""
        if self._reading is not None:
            self._reading.cancel()
        elif self.watches is not None:
            self.watches.close()

    def forget(self, session_id: str) -> None:
        """Stop watching a session (deleted, or its worktree goes away)."""
        with self._lock(session_id):
            self._seen.pop(session_id, None)
            self._inner.pop(session_id, None)
            if self.watches is not None:
                self.watches.unwatch(session_id)
            self._index_path(session_id).unlink(missing_ok=True)

    def _lock(self, session_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(session_id, threading.Lock())

    def _index_path(self, session_id: str) -> Path:
        return self.index_dir / f"{session_id}.index"

    def snapshot(self, session_id: str, worktree: Path, max_file_bytes: int, message: str) -> gitsnapshot.Snapshot:
        with self._lock(session_id):
            try:
                changed = self.watches.take(session_id, Path(worktree)) if self.watches is not None else None
            except OSError:
                changed = None
            return self._snapshot(session_id, worktree, max_file_bytes, message, changed, None)

    def _snapshot(self, session_id: str, worktree: Path, max_file_bytes: int, message: str,
                  changed: set[bytes] | None, gitlinks: dict[bytes, str] | None) -> gitsnapshot.Snapshot:
        """The snapshot, the session's lock held and the watch's changes taken (changes
        first, then the stamp, then the scan: whatever happens after the changes are
        taken is recorded for the next checkpoint)."""
        dirs = places.dirs_or_none(Path(worktree)) if self.watches is not None else None
        if dirs is None or self.watches is None:
            self.counts["full"] += 1
            return gitsnapshot.snapshot(worktree, max_file_bytes, message, gitlinks=gitlinks)
        links = tuple(sorted((gitlinks or {}).items()))
        stamp = gitfiles.tree_stamp(dirs)
        seen = self._seen.pop(session_id, None)
        index = self._index_path(session_id)
        kept: _Seen | None = None
        if changed is not None and seen is not None and stamp is not None and stamp != seen.stamp:
            seen = self._restamped(worktree, dirs, seen, stamp)
        if changed is not None and seen is not None and stamp is not None and stamp == seen.stamp \
                and seen.gitlinks == links and index.exists():
            try:
                kept = self._from_paths(worktree, dirs, index, seen, changed, max_file_bytes, message)
            except CairnError:
                kept = None  # the full scan below says what is wrong, if anything still is
        if kept is not None:
            self._seen[session_id] = replace(kept, stamp=stamp)
            privacy.keep_private(index)
            return kept.snapshot
        self.counts["full"] += 1
        self.index_dir.mkdir(parents=True, exist_ok=True)
        index.unlink(missing_ok=True)
        entries = gitfiles.index_entries(dirs.index)
        snap = gitsnapshot.snapshot(worktree, max_file_bytes, message, keep_index=index, gitlinks=gitlinks)
        if stamp is not None:
            self._seen[session_id] = _Seen(snap, stamp, None if snap.dirty else snap.index_tree, entries,
                                           gitlinks=links)
        privacy.keep_private(index)  # git wrote it with the user's umask: it names every file
        return snap

    def _restamped(self, worktree: Path, dirs: gitfiles.GitDirs, seen: _Seen,
                   stamp: gitfiles.TreeStamp) -> _Seen | None:
        """`seen` under the new stamp when only the session's index file was rewritten
        with the same entries (a `git status` refreshing stat data does that): same
        tree, same number of entries, no conflicts. None when anything else changed."""
        if (stamp.head, stamp.settings) != (seen.stamp.head, seen.stamp.settings) or seen.entries is None:
            return None
        found = gitsnapshot.index_tree_of(worktree, dirs.index)
        if found is None or found != (seen.snapshot.index_tree, seen.entries):
            return None
        return replace(seen, stamp=stamp)

    def _from_paths(self, worktree: Path, dirs: gitfiles.GitDirs, index: Path, seen: _Seen, changed: set[bytes],
                    max_file_bytes: int, message: str) -> _Seen | None:
        """What the checkpoint sees, built from the last one and the paths that changed;
        None when only the full scan can tell."""
        last = seen.snapshot
        if not changed:
            self.counts["reused"] += 1
            return seen
        if seen.plain is None:
            seen = replace(seen, plain=treeedit.plain_content(dirs, (index, dirs.index)))
        found: tuple[str | None, list[bytes], list[bytes]] | None = None
        unsynced = seen.unsynced
        if seen.plain:
            try:
                tree, big = treeedit.edit_tree(worktree, self.trees, last.worktree_tree, last.index_tree, changed,
                                               max_file_bytes, last.skipped_paths, files=seen.entries)
                found, unsynced = (tree, big, []), unsynced | changed
            except (treeedit.Unsupported, OSError):  # OSError: a file went away while read, unreadable
                found = None
        if found is None:
            # The private index has not seen what cairnd wrote since it was last
            # brought up to date: those paths are looked at again, and its tree is
            # the snapshot's even where the status finds nothing to update.
            found = gitsnapshot.snapshot_paths(worktree, index, changed | unsynced, max_file_bytes,
                                               write_tree=bool(unsynced))
            if found is None:
                return None
            self.counts["paths_git"] += 1
            unsynced = frozenset()
        tree, big, nested = found
        skipped = {p for p in last.skipped_paths if not _covered(p, changed)} | set(big) | set(nested)
        if tree is None or tree == last.worktree_tree:
            tree, worktree_sha = last.worktree_tree, last.worktree_sha
        else:
            worktree_sha = gitsnapshot.commit_tree(worktree, tree, last.head_sha, message)
        head_tree = seen.head_tree or git.tree_of(worktree, last.head_sha)
        self.counts["paths"] += 1
        nested_now = tuple(sorted({p for p in last.nested if not _covered(p, changed)} | set(nested)))
        snap = replace(
            last, worktree_sha=worktree_sha, worktree_tree=tree, nested=nested_now,
            dirty=tree != head_tree or last.index_tree != head_tree or bool(skipped),
            skipped=tuple(sorted(git.display_path(p) for p in skipped)), skipped_paths=tuple(sorted(skipped)),
        )
        return replace(seen, snapshot=snap, head_tree=head_tree, unsynced=frozenset(unsynced))
