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
import stat
from collections.abc import Iterable
from pathlib import Path

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.git.trees import (  # noqa: F401 (TreeReader, parse_tree: this module's surface too)
    GITLINK, TREE, Entry, GitJob, Tree, TreeReader, Unsupported, parent_dir, parse_tree, tree_body,
)

MAX_FILES = 20_000  # past this many files to read, git's full scan is as cheap
WHOLE_TREE_FILES = 5_000  # a tree this small is read whole into memory on first need
PACK_AT = 16  # new objects of one checkpoint written as one pack from this many
PACK_BYTES = 64 << 20  # bodies held for one pack at most
# Settings under which git stores something other than the bytes on disk, trusts the
# index's mode over the disk's, or writes objects another way (spaces removed, lower case).
_CONVERTING = (b"autocrlf", b"eol=", b"filter", b"attributesfile", b"filemode=false", b"symlinks=false",
               b"sparsecheckout", b"ignorecase=true", b"precomposeunicode", b"[include", b"worktreeconfig",
               b"sharedrepository")


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


class IgnoreCheck(GitJob):
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
    dirs = places.objects_of(Path(worktree))  # new objects go to the session's vault
    if dirs is None:
        raise Unsupported("not a plain worktree")
    root = os.fsencode(worktree)
    disk, walked = _read_changed(root, changed, skipped)
    old, dropped = _trees_and_ignored(worktree, reader, last_tree, index_tree, disk, walked, files)
    objects = ObjectWriter(dirs)
    changes, big = _changes(root, objects, disk, dropped, max_file_bytes)
    below: dict[bytes, set[bytes]] = {}  # directory -> names of its directories with changes below
    for directory in changes:
        while directory:
            parent, _, name = directory.rpartition(b"/")
            below.setdefault(parent, set()).add(name)
            directory = parent
    top = _write_tree(objects, reader, *_rebuild(b"", old[b""], old, changes, below, objects, reader)).hex()
    objects.finish()  # before the caller's commit names the tree
    return (None if top == last_tree else top), big


Stats = dict[bytes, "os.stat_result | None"]  # path -> its state on disk now, None: gone


def _read_changed(root: bytes, changed: Iterable[bytes], skipped: Iterable[bytes]) -> tuple[Stats, Stats]:
    """The changed paths as they are on disk, and of them the files of new directories
    (read whole: what was below such a path before is replaced)."""
    left_out = set(skipped)
    disk: Stats = {}
    walked: Stats = {}
    every = set(changed)
    for path in sorted(p for p in every if not under(p, every)):
        if under(path, left_out):
            raise Unsupported(f"{path!r} is inside a nested repository")
        try:
            st = os.lstat(os.path.join(root, path))
        except (FileNotFoundError, NotADirectoryError):
            disk[path] = None
            continue
        if stat.S_ISDIR(st.st_mode):
            disk[path] = None
            _walk_new_directory(root, path, walked)
            disk.update(walked)
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            disk[path] = st
        else:
            raise Unsupported(f"special file {path!r}")
        if len(disk) > MAX_FILES:
            raise Unsupported("too many files")
    return disk, walked


def _trees_and_ignored(worktree: Path, reader: TreeReader, last_tree: str, index_tree: str, disk: Stats,
                       walked: Stats, files: int | None) -> tuple[dict[bytes, Tree | None], set[bytes]]:
    """The trees of `last_tree` along the changed paths, and the new paths git ignores
    (those the session's index tracks are kept, as git keeps them)."""
    # The trees along the way, and the ignore rules for what is new, are asked of git
    # at the same time where both are needed: what is surely new is known before the
    # trees are read (files of a new directory, names absent from a tree in memory).
    if any(p.startswith(b":") for p in disk):  # pathspec magic, which check-ignore cannot turn off
        raise Unsupported("a name beginning with a colon")
    whole = files is not None and files <= WHOLE_TREE_FILES
    with reader.start(worktree, bytes.fromhex(last_tree), {b"", *(parent_dir(p) for p in disk)}, whole) as loading:
        surely_new = [p for p, st in disk.items() if st is not None and (
            p in walked or parent_dir(p) in loading.found and _entry(loading.found, p) is None)]
        with IgnoreCheck(worktree, surely_new) as ignoring:
            old = loading.finish()
            ignored = ignoring.finish()
    new = [p for p, st in disk.items() if st is not None and _entry(old, p) is None]
    asked = set(surely_new)
    with IgnoreCheck(worktree, [p for p in new if p not in asked]) as late:
        dropped = (ignored | late.finish()) & set(new)
    if dropped:  # ignored, unless the session's index tracks it
        in_index = reader.load(worktree, bytes.fromhex(index_tree), {parent_dir(p) for p in dropped})
        dropped = {p for p in dropped if _entry(in_index, p) is None}
    return old, dropped


def _changes(root: bytes, objects: ObjectWriter, disk: Stats, dropped: set[bytes], max_file_bytes: int
             ) -> tuple[dict[bytes, dict[bytes, Entry | None]], list[bytes]]:
    """directory -> name -> its new entry (None: removed), the files' blobs written; and
    the files over `max_file_bytes`, whose entries stay as they were."""
    changes: dict[bytes, dict[bytes, Entry | None]] = {}
    big: list[bytes] = []
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
        changes.setdefault(parent_dir(path), {})[path.rpartition(b"/")[2]] = entry
    return changes, big


def _rebuild(directory: bytes, before: Tree | None, old: dict[bytes, Tree | None],
             changes: dict[bytes, dict[bytes, Entry | None]], below: dict[bytes, set[bytes]],
             objects: ObjectWriter, reader: TreeReader) -> tuple[Tree, bool]:
    """The new tree at `directory`, its subtrees written, and whether its dict is still
    in git's order (no name added, none turned from a file into a directory or back)."""
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
        sub, sub_ordered = _rebuild(path, old.get(path) if current is not None and current[0] == TREE else None,
                                    old, changes, below, objects, reader)
        if sub:
            put(name, (TREE, _write_tree(objects, reader, sub, sub_ordered)))
        elif current is not None and current[0] == TREE:
            tree.pop(name)  # git keeps no empty directory
    return tree, ordered


def _entry(trees: dict[bytes, Tree | None], path: bytes) -> Entry | None:
    """The entry at `path` among loaded `trees` (its directory must be among them)."""
    tree = trees[parent_dir(path)]
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
