"""Which paths of a session's worktree changed since its last checkpoint, from inotify.

One inotify descriptor serves every watched worktree (`WatchSet`); each worktree
(`TreeWatch`) has a watch on each of its directories (never inside a `.git`). An
event on a name records that path, relative to the worktree, as changed; a new or
moved-in directory is recorded whole (git, given the directory as a pathspec, looks
at everything under it) and watched, itself and its subdirectories, before the
changes are next taken, so nothing written into it later goes unseen.

`take()` hands over the set recorded since the previous `take()`, or None where the
set cannot be trusted, and the caller must scan the whole tree:

- the kernel's event queue overflowed (events were dropped);
- the watch is new: whatever changed before it began (while cairnd was down, before
  a restart) was not seen;
- a directory could not be watched (the kernel's watch limit, or more than
  `max_dirs` directories in the tree);
- something changed that redefines what the tree holds rather than one path: a
  `.gitignore` or `.gitattributes`, or a `.git` appearing below the top (a nested
  repository, which a snapshot leaves out whole).

Events are read by `drain()`: from the event loop when the descriptor is readable,
and once more, synchronously, just before a checkpoint takes the set, so every
change completed before the checkpoint began is in it (inotify queues an event within
the system call that made the change). Not seen by inotify at all, and so not by
this: writes through a shared memory mapping after the file was closed, and changes
made through another path to the same inode (a hard link elsewhere, a bind mount).
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from pathlib import Path

from cairnd import inotify

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

TREE_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
             | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
# Names whose change redefines the tree rather than one path of it.
RESCAN_NAMES = frozenset({b".gitignore", b".gitattributes", b".git"})
MAX_DIRS = 65_536
_HEADER = struct.Struct("iIII")


class TreeWatch:
    """The changes of one worktree (see the module docstring). Use through `WatchSet`."""

    def __init__(self, root: Path, max_dirs: int) -> None:
        self.root = Path(root)
        self.root_bytes = os.fsencode(self.root)
        self.max_dirs = max_dirs
        self.dirs: dict[int, bytes] = {}  # watch descriptor -> directory relative to root (b"" = root)
        self.changed: set[bytes] = set()
        self.exact = False  # False until a take() after the watch began, and whenever unsure
        self.broken = False  # the tree cannot be watched whole: every take() is None

    def take(self) -> set[bytes] | None:
        changed, exact = self.changed, self.exact and not self.broken
        self.changed = set()
        self.exact = True
        return changed if exact else None

    def _path(self, wd: int, name: bytes) -> bytes | None:
        parent = self.dirs.get(wd)
        if parent is None:
            return None
        return name if not parent else (parent + b"/" + name if name else parent)


class WatchSet:
    """One inotify descriptor for many worktrees. Thread-safe: the event loop drains it,
    checkpoint threads drain and take."""

    def __init__(self, max_dirs: int = MAX_DIRS) -> None:
        if not inotify.available():
            raise OSError("inotify is not available on this system")
        libc = inotify._libc
        assert libc is not None
        self._libc = libc
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"inotify_init1: {os.strerror(errno)}")
        self.fd = fd
        self.max_dirs = max_dirs
        self._lock = threading.RLock()
        self._trees: dict[str, TreeWatch] = {}
        self._owner: dict[int, TreeWatch] = {}  # watch descriptor -> its tree

    # -- trees --------------------------------------------------------------------------

    def watch(self, key: str, root: Path) -> TreeWatch:
        """The watch of `root` under `key`, begun now if there is none (its first take()
        is then None: what changed before it began is unknown)."""
        with self._lock:
            tree = self._trees.get(key)
            if tree is not None and tree.root == Path(root):
                return tree
            if tree is not None:
                self._forget(key)
            tree = TreeWatch(Path(root), self.max_dirs)
            self._trees[key] = tree
            self._add_tree(tree, b"")
            return tree

    def take(self, key: str, root: Path) -> set[bytes] | None:
        """Drain pending events, then hand over what changed in `root` since the last
        take (None: scan it whole). A tree found unsure is watched afresh first, so the
        scan the caller does next is followed by exact changes again."""
        with self._lock:
            self.drain()
            known = self._trees.get(key)
            tree = self.watch(key, root)
            changed = tree.take()
            if changed is None and tree is known and not tree.broken:
                self._rewatch(tree)
            return changed

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._forget(key)

    def watched(self) -> int:
        """Directories watched, across all trees."""
        with self._lock:
            return len(self._owner)

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            self._trees.clear()
            self._owner.clear()

    def _forget(self, key: str) -> None:
        tree = self._trees.pop(key, None)
        if tree is None:
            return
        for wd in list(tree.dirs):
            self._owner.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)
        tree.dirs.clear()

    def _rewatch(self, tree: TreeWatch) -> None:
        # Directories moved or made while events were lost have stale or no watches.
        for wd in list(tree.dirs):
            self._owner.pop(wd, None)
            self._libc.inotify_rm_watch(self.fd, wd)
        tree.dirs.clear()
        self._add_tree(tree, b"")
        tree.changed.clear()

    def _add_tree(self, tree: TreeWatch, top: bytes) -> bool:
        """Watch directory `top` (relative) and every directory under it, each before
        listing it, so that an entry made meanwhile is either listed or reported.
        Returns whether a `.git` was met below the root (a nested repository)."""
        nested = False
        stack = [top]
        while stack:
            rel = stack.pop()
            if len(tree.dirs) >= tree.max_dirs:
                tree.broken = True
                return nested
            full = tree.root_bytes + (b"/" + rel if rel else b"")
            wd = self._libc.inotify_add_watch(self.fd, full, TREE_MASK)
            if wd < 0:
                errno = ctypes.get_errno()
                if errno in (2, 20):  # ENOENT, ENOTDIR: gone again, its parent's event says so
                    continue
                tree.broken = True  # ENOSPC (the kernel's limit) or worse: unsure for good
                return nested
            old = self._owner.get(wd)
            if old is not None and old is not tree:
                old.dirs.pop(wd, None)
            self._owner[wd] = tree
            tree.dirs[wd] = rel
            try:
                entries = os.scandir(full)
            except OSError:
                continue
            with entries:
                for entry in entries:
                    name = os.fsencode(entry.name)
                    if name == b".git":
                        nested = nested or bool(rel)
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(rel + b"/" + name if rel else name)
                    except OSError:
                        continue
        return nested

    # -- events -------------------------------------------------------------------------

    def drain(self) -> int:
        """Read every pending event and record it; returns how many were read."""
        with self._lock:
            count = 0
            while self.fd >= 0:
                try:
                    data = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    break
                if not data:
                    break
                count += self._dispatch(data)
            return count

    def _dispatch(self, data: bytes) -> int:
        pos = count = 0
        while pos + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
            name = data[pos + _HEADER.size: pos + _HEADER.size + length].rstrip(b"\0")
            pos += _HEADER.size + length
            count += 1
            if mask & IN_Q_OVERFLOW:
                for tree in self._trees.values():
                    tree.exact = False
                continue
            tree = self._owner.get(wd)
            if tree is None:
                continue
            if mask & IN_IGNORED:
                tree.dirs.pop(wd, None)
                self._owner.pop(wd, None)
                continue
            path = tree._path(wd, name)
            if path is None:
                continue
            if not name:
                continue  # the directory itself: its parent's event names it
            if name in RESCAN_NAMES and (name != b".git" or tree.dirs.get(wd)):
                tree.exact = False
            if name == b".git" and not tree.dirs.get(wd):
                continue  # the worktree's own .git: the index and HEAD are checked by stat
            tree.changed.add(path)
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                if self._add_tree(tree, path):
                    tree.exact = False
        return count
