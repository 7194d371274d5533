"""A checkpoint's tree written by cairnd itself: the last snapshot's tree with the paths
that changed since then read from the disk, hashed, and written as loose objects.

Git would do the same with three processes (a status limited to the paths, an
update-index, a write-tree), and each reads the session's whole private index, which
the middle one also rewrites: at 200k files that index is tens of megabytes, three
times a turn. Here the work is what changed: each changed file is read and hashed
once, and only the trees along the changed paths are written. Trees of the last
snapshot come from memory, or else from one `git cat-file --batch`; paths new since
the last snapshot go to one `git check-ignore`. A turn that changed tracked files
runs no git process at all.

`edit_tree` answers None, and the caller asks git instead, wherever git would store
something other than the bytes on disk, or the change is not the plain kind: content
filters or line-ending conversion (any attributes file or conversion setting), modes
or symlinks not trusted (`core.fileMode`, `core.symlinks`), a submodule or a nested
repository among the changed paths, special files, names git cannot be asked about
line by line, more than `MAX_FILES` files, or a repository of another format.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import places

Entry = tuple[bytes, bytes]  # (mode as git writes it in a tree, binary object id)
Tree = dict[bytes, Entry]  # name -> entry
TREE, GITLINK = b"40000", b"160000"
MAX_FILES = 20_000  # past this many files to read, git's full scan is as cheap
WHOLE_TREE_FILES = 5_000  # a tree this small is read whole into memory on first need
PACK_AT = 16  # new objects of one checkpoint written as one pack from this many
PACK_BYTES = 64 << 20  # bodies held for one pack at most
_CACHE_ENTRIES = 100_000  # tree entries kept in memory, all sessions together (about 15 MB)
# Settings under which git stores something other than the bytes on disk, trusts the
# index's mode over the disk's, or writes objects another way (spaces removed, lower case).
_CONVERTING = (b"autocrlf", b"eol=", b"filter", b"attributesfile", b"filemode=false", b"symlinks=false",
               b"sparsecheckout", b"ignorecase=true", b"precomposeunicode", b"[include", b"worktreeconfig",
               b"sharedrepository")


class Unsupported(Exception):
    """The change is not one this module writes: the caller asks git."""


def plain_content(dirs: gitfiles.GitDirs, index_files: Iterable[Path]) -> bool:
    """Whether git stores every file of this tree as its bytes on disk, with the disk's
    mode: no attributes file anywhere (in the index files given, which list the tree),
    no conversion setting, and the plain repository format `gitfiles` writes."""
    if not gitfiles.plain_repository(dirs):
        return False
    home = Path.home()
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    if any(p.exists() for p in (dirs.common_dir / "info" / "attributes", xdg / "git" / "attributes")):
        return False
    for config in (dirs.common_dir / "config", dirs.git_dir / "config.worktree", home / ".gitconfig",
                   xdg / "git" / "config", Path("/etc/gitconfig")):
        try:
            text = config.read_bytes().lower().replace(b" ", b"").replace(b"\t", b"")
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if any(word in text for word in _CONVERTING):
            return False
    for index in index_files:
        try:
            data = index.read_bytes()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        # Index entries end their path with NUL; version 4 compresses a path's prefix
        # against the entry before, so the name's tail is what is looked for.
        if b"attributes\0" in data:
            return False
    return True


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


class _GitJob:
    """A git process begun early; leaving the `with` block kills it if not finished."""

    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            git.reap(self.proc)


class Loading(_GitJob):
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
                    entry = (self.found.get(_parent(directory)) or {}).get(directory.rpartition(b"/")[2])
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


def _file_entry(path: bytes, st: os.stat_result) -> tuple[bytes, bytes]:
    """(mode, content) of a regular file or symlink as git stores it."""
    if stat.S_ISLNK(st.st_mode):
        return b"120000", os.readlink(path)
    with open(path, "rb") as f:
        data = f.read()
    return (b"100755" if st.st_mode & stat.S_IXUSR else b"100644"), data


def _walk_new_directory(root: bytes, directory: bytes, files: dict[bytes, os.stat_result]) -> None:
    """Every file under `directory` (relative), into `files`; a nested repository or a
    special file raises Unsupported."""
    stack = [directory]
    while stack:
        current = stack.pop()
        with os.scandir(os.path.join(root, current)) as listing:
            for item in listing:
                path = current + b"/" + os.fsencode(item.name)
                st = item.stat(follow_symlinks=False)
                if item.name == b".git":
                    raise Unsupported(f"nested repository {current!r}")
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    files[path] = st
                else:
                    raise Unsupported(f"special file {path!r}")
                if len(files) > MAX_FILES:
                    raise Unsupported("too many files")


def under(path: bytes, directories: set[bytes]) -> bool:
    """Whether `path` lies below one of `directories` (not: is one of them)."""
    parts = path.split(b"/")
    return any(b"/".join(parts[:i]) in directories for i in range(1, len(parts)))


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class IgnoreCheck(_GitJob):
    """Which of `paths` (none of them in the last snapshot) git's ignore rules leave
    out: one `git check-ignore`, begun at once, answered by `finish`."""

    def __init__(self, worktree: Path, paths: list[bytes]) -> None:
        self.worktree, self.paths = worktree, paths
        self.proc = git.spawn(worktree, ["check-ignore", "-z", "--stdin", "--no-index"],
                              takes_input=True) if paths else None

    def finish(self) -> set[bytes]:
        if self.proc is None:
            return set()
        proc = git.reap(self.proc, b"".join(p + b"\0" for p in self.paths))
        if proc.returncode not in (0, 1):  # 1: none is ignored
            raise git.failure(self.worktree, ["check-ignore"], proc)
        return {p for p in proc.stdout.split(b"\0") if p}


def edit_tree(worktree: Path, reader: TreeReader, last_tree: str, index_tree: str, changed: Iterable[bytes],
              max_file_bytes: int, skipped: Iterable[bytes] = (), files: int | None = None
              ) -> tuple[str | None, list[bytes]]:
    """The tree of the working tree `worktree` given that only the paths `changed`
    (files, or directories new as a whole) may differ from tree `last_tree`, written
    into the repository; None when it is `last_tree` again. Also which of the paths are
    over `max_file_bytes`: their entry stays as it was (none for a new file), as with
    `gitsnapshot.snapshot_paths`. `index_tree` is the session's index: a new path that
    is ignored but tracked there is kept, as git keeps it. `skipped`: what the last
    snapshot left out (nested repositories among them). `files`: about how many files
    the tree holds, when known: a small tree is read whole, once. Raises Unsupported."""
    dirs = places.dirs_or_none(Path(worktree))
    if dirs is None:
        raise Unsupported("not a plain worktree")
    root = os.fsencode(worktree)
    left_out = set(skipped)
    disk: dict[bytes, os.stat_result | None] = {}  # path -> its state now, None: gone
    walked: dict[bytes, os.stat_result | None] = {}  # files of new directories
    every = set(changed)
    for path in sorted(p for p in every if not under(p, every)):
        if under(path, left_out):
            raise Unsupported(f"{path!r} is inside a nested repository")
        try:
            st = os.lstat(os.path.join(root, path))
        except (FileNotFoundError, NotADirectoryError):
            disk[path] = None
            continue
        if stat.S_ISDIR(st.st_mode):  # read whole: what was below it before is replaced
            disk[path] = None
            _walk_new_directory(root, path, walked)
            disk.update(walked)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            disk[path] = st
        else:
            raise Unsupported(f"special file {path!r}")
        if len(disk) > MAX_FILES:
            raise Unsupported("too many files")

    # The trees along the way, and the ignore rules for what is new, are asked of git
    # at the same time where both are needed: what is surely new is known before the
    # trees are read (files of a new directory, names absent from a tree in memory).
    if any(p.startswith(b":") for p in disk):  # pathspec magic, which check-ignore cannot turn off
        raise Unsupported("a name beginning with a colon")
    whole = files is not None and files <= WHOLE_TREE_FILES
    with reader.start(worktree, bytes.fromhex(last_tree), {b"", *(_parent(p) for p in disk)}, whole) as loading:
        surely_new = [p for p, st in disk.items() if st is not None and (
            p in walked or _parent(p) in loading.found and _entry(loading.found, p) is None)]
        with IgnoreCheck(worktree, surely_new) as ignoring:
            old = loading.finish()
            ignored = ignoring.finish()
    new = [p for p, st in disk.items() if st is not None and _entry(old, p) is None]
    asked = set(surely_new)
    with IgnoreCheck(worktree, [p for p in new if p not in asked]) as late:
        dropped = (ignored | late.finish()) & set(new)
    if dropped:  # ignored, unless the session's index tracks it
        in_index = reader.load(worktree, bytes.fromhex(index_tree), {_parent(p) for p in dropped})
        dropped = {p for p in dropped if _entry(in_index, p) is None}

    changes: dict[bytes, dict[bytes, Entry | None]] = {}  # directory -> name -> entry, None: removed
    big: list[bytes] = []
    objects = ObjectWriter(dirs)
    for path, st in disk.items():
        if path in dropped:
            continue
        entry: Entry | None = None
        if st is not None:
            if stat.S_ISREG(st.st_mode) and st.st_size > max_file_bytes:
                big.append(path)
                continue
            mode, data = _file_entry(os.path.join(root, path), st)
            entry = (mode, objects.add(b"blob", data))
        changes.setdefault(_parent(path), {})[path.rpartition(b"/")[2]] = entry
    below: dict[bytes, set[bytes]] = {}  # directory -> names of its directories with changes below
    for directory in changes:
        while directory:
            parent, _, name = directory.rpartition(b"/")
            below.setdefault(parent, set()).add(name)
            directory = parent

    def rebuild(directory: bytes, before: Tree | None) -> tuple[Tree, bool]:
        """The new tree at `directory`, and whether its dict is still in git's order
        (no name added, none turned from a file into a directory or back)."""
        tree = dict(before or {})
        ordered = before is not None

        def put(name: bytes, entry: Entry) -> None:
            nonlocal ordered
            was = tree.get(name)
            ordered = ordered and was is not None and (was[0] == TREE) == (entry[0] == TREE)
            tree[name] = entry

        for name, entry in changes.get(directory, {}).items():
            if entry is None:
                tree.pop(name, None)
            else:
                put(name, entry)
        for name in below.get(directory, ()):
            path = directory + b"/" + name if directory else name
            current = tree.get(name)
            sub, sub_ordered = rebuild(path, old.get(path) if current is not None and current[0] == TREE else None)
            if sub:
                put(name, (TREE, _write_tree(objects, reader, sub, sub_ordered)))
            elif current is not None and current[0] == TREE:
                tree.pop(name)  # git keeps no empty directory
        return tree, ordered

    top = _write_tree(objects, reader, *rebuild(b"", old[b""])).hex()
    objects.finish()  # before the caller's commit names the tree
    return (None if top == last_tree else top), big


def _entry(trees: dict[bytes, Tree | None], path: bytes) -> Entry | None:
    """The entry at `path` among loaded `trees` (its directory must be among them)."""
    tree = trees[_parent(path)]
    entry = tree.get(path.rpartition(b"/")[2]) if tree is not None else None
    if entry is not None and entry[0] == GITLINK:
        raise Unsupported(f"submodule {path!r}")
    return entry


def _write_tree(objects: ObjectWriter, reader: TreeReader, tree: Tree, ordered: bool) -> bytes:
    """Name (and write) a tree; it is kept in memory in git's order, as read ones are."""
    if not ordered:
        tree = {n: tree[n] for n in sorted(tree, key=lambda n: n + b"/" if tree[n][0] == TREE else n)}
    sha = objects.add(b"tree", tree_body(tree, ordered=True))
    reader.put(sha, tree)
    return sha


class ObjectWriter:
    """The new objects of one checkpoint: written loose while they are few, as one pack
    when there are many (`PACK_AT`): a file for each of 500 objects costs more than
    the objects. `finish` writes them; until then they are only named."""

    def __init__(self, dirs: gitfiles.GitDirs) -> None:
        self.dirs = dirs
        self.objects: dict[bytes, tuple[bytes, bytes]] = {}  # id -> (kind, body)
        self.held = 0  # bytes of bodies held

    def add(self, kind: bytes, body: bytes) -> bytes:
        sha = hashlib.sha1(b"%s %d\0" % (kind, len(body)) + body).digest()
        if sha not in self.objects:
            self.objects[sha] = (kind, body)
            self.held += len(body)
            if self.held > PACK_BYTES:  # keep memory bounded: what is held goes out now
                self.finish()
        return sha

    def finish(self) -> None:
        objects = [(sha, kind, body) for sha, (kind, body) in self.objects.items()]
        self.objects, self.held = {}, 0
        if len(objects) >= PACK_AT and gitfiles.write_pack(self.dirs, objects):
            return
        for _sha, kind, body in objects:
            if gitfiles.write_object(self.dirs, kind, body) is None:
                raise Unsupported(f"cannot write a {kind.decode()} object")
