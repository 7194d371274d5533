"""Git's tree objects, read: parsed tree bodies by id, from memory or from one
interactive `git cat-file --batch` a level of directories at a time (`TreeReader`), and
a tree's body written back in git's order (`tree_body`). Trees are named by their
content, so one cache serves every repository; `treeedit` builds on it.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from cairnd.git import run as git

Entry = tuple[bytes, bytes]  # (mode as git writes it in a tree, binary object id)
Tree = dict[bytes, Entry]  # name -> entry
TREE, GITLINK = b"40000", b"160000"
_CACHE_ENTRIES = 100_000  # tree entries kept in memory, all sessions together (about 15 MB)


class Unsupported(Exception):
    """The change is not one this module writes: the caller asks git."""


def parent_dir(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class TreeReader:
    """Tree objects by id, parsed, from memory or one `git cat-file --batch` per call.
    Trees are named by their content, so one cache serves every repository. Thread-safe."""

    def __init__(self, max_entries: int = _CACHE_ENTRIES) -> None:
        self._trees: OrderedDict[bytes, Tree] = OrderedDict()
        self._entries = 0
        self._max = max_entries
        self._lock = threading.Lock()

    def get(self, sha: bytes) -> Tree | None:
        with self._lock:
            tree = self._trees.get(sha)
            if tree is not None:
                self._trees.move_to_end(sha)
            return tree

    def put(self, sha: bytes, tree: Tree) -> None:
        with self._lock:
            if sha not in self._trees:
                self._entries += len(tree)
            self._trees[sha] = tree
            while self._entries > self._max and len(self._trees) > 1:
                _, dropped = self._trees.popitem(last=False)
                self._entries -= len(dropped)

    def load(self, worktree: Path, root: bytes, dirs: Iterable[bytes]) -> dict[bytes, Tree | None]:
        """The trees at directories `dirs` (b"" is the top) of tree `root`: None where
        there is no directory. A submodule on the way raises Unsupported."""
        return self.start(worktree, root, dirs).finish()

    def start(self, worktree: Path, root: bytes, dirs: Iterable[bytes], whole: bool = False) -> Loading:
        """`load`, begun: what memory holds is there at once, the rest is on its way."""
        return Loading(self, worktree, root, dirs, whole)

    def resolve(self, root: bytes, directory: bytes, found: dict[bytes, Tree | None]) -> bool:
        """Resolve `directory` from memory into `found`, going down from `root`; False
        when a tree on the way is not in memory."""
        if directory in found:
            return True
        if not directory:
            tree = self.get(root)
            if tree is None:
                return False
            found[directory] = tree
            return True
        parent, _, name = directory.rpartition(b"/")
        if not self.resolve(root, parent, found):
            return False
        above = found[parent]
        entry = above.get(name) if above is not None else None
        if entry is not None and entry[0] == GITLINK:
            raise Unsupported(f"submodule {directory!r}")
        if entry is None or entry[0] != TREE:
            found[directory] = None
            return True
        tree = self.get(entry[1])
        if tree is None:
            return False
        found[directory] = tree
        return True


class GitJob:
    """A git process begun early; leaving the `with` block kills it if not finished."""

    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            git.reap(self.proc)


class Loading(GitJob):
    """Trees being read (`TreeReader.start`): `found` holds what memory had; `finish`
    reads the rest from one `git cat-file --batch`, a level of directories at a time,
    each tree by its id (by path, git would walk down from the top for every one), or
    with `whole`, from one `git ls-tree -r` of every tree of `root` (for a small tree,
    whose later checkpoints then find all they need in memory)."""

    ASK_AT_ONCE = 500  # ids written before their answers are read: well inside a pipe's buffer

    def __init__(self, reader: TreeReader, worktree: Path, root: bytes, dirs: Iterable[bytes],
                 whole: bool = False) -> None:
        self.reader, self.worktree, self.root = reader, worktree, root
        self.found: dict[bytes, Tree | None] = {}
        every = {b""}
        for directory in dirs:
            parts = directory.split(b"/")
            every.update(b"/".join(parts[:i]) for i in range(1, len(parts) + 1))
        wanted = sorted(every, key=lambda d: (d.count(b"/"), d))  # parents first
        self.missing = [d for d in wanted if not reader.resolve(root, d, self.found)]
        self.whole = whole and bool(self.missing)
        if self.whole:
            self.proc = git.spawn(worktree, ["ls-tree", "-r", "-t", "-z", "--full-tree", root.hex()])
        elif self.missing:
            self.proc = git.spawn(worktree, ["cat-file", "--batch"], takes_input=True)

    def finish(self) -> dict[bytes, Tree | None]:
        if self.proc is None:
            return self.found
        if self.whole:
            proc = git.reap(self.proc)
            if proc.returncode != 0:
                raise git.failure(self.worktree, ["ls-tree"], proc)
            self._parse_listing(proc.stdout)
        else:
            self._ask_by_level()
            proc = git.reap(self.proc)
            if proc.returncode != 0:
                raise git.failure(self.worktree, ["cat-file"], proc)
        for d in self.missing:
            if not self.reader.resolve(self.root, d, self.found):
                raise Unsupported(f"tree of {d!r} not read")
        return self.found

    def _ask_by_level(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        pending = self.missing
        while pending:
            ids: set[bytes] = set()
            for directory in pending:
                if directory == b"":
                    ids.add(self.root)
                else:  # once its parent is read, the parent's entry names its id
                    entry = (self.found.get(parent_dir(directory)) or {}).get(directory.rpartition(b"/")[2])
                    if entry is not None:
                        ids.add(entry[1])
            if not ids:
                raise Unsupported("trees not found")
            asked = sorted(ids)
            for at in range(0, len(asked), self.ASK_AT_ONCE):
                chunk = asked[at:at + self.ASK_AT_ONCE]
                self.proc.stdin.write(b"".join(sha.hex().encode() + b"\n" for sha in chunk))
                self.proc.stdin.flush()
                for _ in chunk:
                    header = self.proc.stdout.readline().rstrip(b"\n").split(b" ")
                    if len(header) != 3:
                        raise Unsupported(f"cat-file answered {b' '.join(header)!r}")
                    body = self.proc.stdout.read(int(header[2]) + 1)[:-1]
                    if header[1] == b"tree":
                        self.reader.put(bytes.fromhex(header[0].decode()), parse_tree(body))
            pending = [d for d in pending if not self.reader.resolve(self.root, d, self.found)]

    def _parse_listing(self, out: bytes) -> None:
        """`git ls-tree -r -t -z` of the whole tree: every tree of it, into memory."""
        trees: dict[bytes, Tree] = {b"": {}}
        ids = {b"": self.root}
        for record in out.split(b"\0"):
            if not record:
                continue
            info, _, path = record.partition(b"\t")
            mode, kind, sha = info.split(b" ")
            if kind == b"tree":
                mode = TREE  # ls-tree pads it to 040000; a tree object says 40000
            parent, _, name = path.rpartition(b"/")
            trees.setdefault(parent, {})[name] = (mode, bytes.fromhex(sha.decode()))
            if kind == b"tree":
                ids[path] = bytes.fromhex(sha.decode())
                trees.setdefault(path, {})
        for directory, tree in trees.items():
            self.reader.put(ids[directory], tree)


_TREE_ENTRY = re.compile(rb"(\d+) ([^\0]*)\0(.{20})", re.S)  # mode, name, binary id


def parse_tree(body: bytes) -> Tree:
    """A tree object's body as name -> entry, in the body's (git's) order."""
    return {name: (mode, sha) for mode, name, sha in _TREE_ENTRY.findall(body)}


def tree_body(tree: Tree, ordered: bool = False) -> bytes:
    """A tree object's body: entries in git's order (a tree's name sorts as if it ended
    in /). `ordered`: the dict is in that order already (read from git, names since
    replaced or removed but none added)."""
    names = tree if ordered else sorted(tree, key=lambda n: n + b"/" if tree[n][0] == TREE else n)
    return b"".join(tree[n][0] + b" " + n + b"\0" + tree[n][1] for n in names)
