"""Snapshots: the whole state of a working tree written as git objects, through a
private copy of its index, without touching the session's index, HEAD or files.

`snapshot` scans the whole tree (one `git status`); `snapshot_paths` goes on from a
kept private index given the paths that changed (`cairnd.checkpointer`). Git runs
through `cairnd.git`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cairnd.git import run as git
from cairnd.git import files as gitfiles
from cairnd.git import places
from cairnd.errors import CairnError


@dataclass(frozen=True)
class Snapshot:
    """The git state of a working tree, written as objects without touching it."""

    head_sha: str
    branch: str | None
    index_tree: str  # tree of the index (the staged state)
    worktree_sha: str  # commit, parent head_sha, whose tree is the whole working tree
    dirty: bool  # working tree or index differ from HEAD
    skipped: tuple[str, ...]  # paths left out of worktree_sha: over the size cap, or nested repositories
    worktree_tree: str = ""  # the tree of worktree_sha
    skipped_paths: tuple[bytes, ...] = ()  # `skipped` as the bytes git names them by
    staged: bool = True  # the index differs from HEAD's tree (True where not known)
    nested: tuple[bytes, ...] = ()  # of skipped_paths, the nested repositories (directories with a .git)


@dataclass(frozen=True)
class Place:
    """A repository inside a worktree, as cairnd's git sees it (`cairnd.git.inner`): the
    directory whose files are snapshotted, the index to start from, the environment
    that names a git directory cairnd made (never the `.git` the agent can write), and
    where new objects go."""

    work_tree: Path
    index_file: Path
    env: Mapping[str, str]
    objects: gitfiles.GitDirs


@dataclass(frozen=True)
class StatusScan:
    """What one `git status --porcelain=v2 -z --branch` says, reduced to what a snapshot needs."""

    head_sha: str | None  # None: unborn branch
    branch: str | None
    changed: bool  # anything differs from HEAD, in the index or the working tree
    worktree_paths: tuple[bytes, ...]  # paths whose working-tree state differs from the index
    nested_repos: tuple[bytes, ...]  # untracked directories git shows whole: other repositories
    staged: bool = False  # the index differs from HEAD (something staged, or conflicts)


def parse_status(raw: bytes) -> StatusScan:
    """Parse `git status --porcelain=v2 -z --branch --untracked-files=all`."""
    head: str | None = None
    branch: str | None = None
    changed = False
    staged = False
    paths: list[bytes] = []
    nested: list[bytes] = []
    records = iter(raw.split(b"\0"))
    for record in records:
        kind = record[:1]
        if not record or kind == b"!":  # ignored files are never asked for
            continue
        if kind == b"#":
            key, _, value = record[2:].decode("utf-8", "surrogateescape").partition(" ")
            if key == "branch.oid":
                head = None if value == "(initial)" else value
            elif key == "branch.head":
                branch = None if value == "(detached)" else value
            continue
        changed = True
        if kind == b"?":
            path = record[2:]
            if path.endswith(b"/"):
                nested.append(path[:-1])
            else:
                paths.append(path)
        elif kind == b"1":
            fields = record.split(b" ", 8)
            staged = staged or fields[1][:1] != b"."
            if fields[1][1:2] != b".":
                paths.append(fields[8])
        elif kind == b"2":
            fields = record.split(b" ", 9)
            next(records, None)  # the original path, in a record of its own
            staged = staged or fields[1][:1] != b"."
            if fields[1][1:2] != b".":
                paths.append(fields[9])
        elif kind == b"u":
            staged = True
            paths.append(record.split(b" ", 10)[10])
    return StatusScan(head, branch, changed, tuple(paths), tuple(nested), staged)


def oversized(worktree: Path, paths: Iterable[bytes], max_file_bytes: int) -> list[bytes]:
    """The paths that are regular files larger than the cap (gone or special files are not)."""
    big = []
    root = os.fsencode(worktree)
    for path in paths:
        try:
            st = os.lstat(os.path.join(root, path))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size > max_file_bytes:
            big.append(path)
    return big


def snapshot(worktree: Path, max_file_bytes: int, message: str = git.SNAPSHOT_MESSAGE,
             keep_index: Path | None = None, *, gitlinks: Mapping[bytes, str] | None = None,
             place: Place | None = None) -> Snapshot:
    """Write the whole state of the working tree `worktree` is in as git objects.

    The session's index, HEAD, branches and files are never touched: all work
    happens in a private copy of the index (new objects go into the repository). Files larger than
    `max_file_bytes` whose content is not already in the index (untracked, or
    modified since staged) keep their indexed version in the snapshot (none if
    untracked) and are listed in `skipped`, as are untracked nested repositories.
    A conflicted index is recorded with its conflicted paths resolved to their
    working-tree content. Raises bad_ref when HEAD has no commit yet.

    With `keep_index`, the private index, which then holds the whole working tree
    (the snapshot's tree), is kept there for `snapshot_paths` to go on from.

    With `gitlinks` (path -> commit: the HEAD cairnd read of each submodule, from the
    git directory it made), git does not look into submodules at all and their entries
    in the snapshot's tree are those commits. With `place`, the repository is an inner
    one (`cairnd.git.inner`) and git runs in the environment it names.
    """
    if not Path(worktree).is_dir():
        raise CairnError("repo_not_found", f"worktree {worktree} does not exist")
    if place is None:
        worktree, index_file = git.locate(Path(worktree))
        base_env: Mapping[str, str] = {}
    else:
        index_file, base_env = place.index_file, place.env
    with _index_copy(index_file, keep_index.parent if keep_index is not None else None) as index_copy:
        env = {**base_env, "GIT_INDEX_FILE": str(index_copy)}
        # write-tree and status run at once on the same copy: status only reads it,
        # and write-tree replaces it by rename (keeping every entry), so status sees
        # one whole index either way.
        staged_proc = git.spawn(worktree, ["write-tree"], env)
        try:
            # One status gives HEAD, the branch, whether anything differs from HEAD,
            # and the paths to add: no rev-parse, no diff-index on the hot path.
            scan = parse_status(git.output(
                worktree, "--no-optional-locks", "status", "--porcelain=v2", "-z", "--branch",
                "--untracked-files=all", "--no-renames",
                "--ignore-submodules=dirty" if gitlinks is None else "--ignore-submodules=all", env=env,
            ))
        finally:
            staged = git.reap(staged_proc)
        index_tree = _index_tree(worktree, staged, env)
        session_place = places.lookup(worktree) if place is None else None
        if session_place is not None:  # git ran in cairnd's view (HEAD detached): the branch is the session's
            head = places.head_of(session_place)
            scan = dataclasses.replace(scan, branch=head[1] if head is not None and head[0] == scan.head_sha else None)
        if scan.head_sha is None:
            raise CairnError("bad_ref", f"HEAD of {worktree} has no commit yet (unborn branch {scan.branch})")
        skipped = [*oversized(worktree, scan.worktree_paths, max_file_bytes), *scan.nested_repos]
        left_out = set(skipped)
        updates = [p for p in scan.worktree_paths if p not in left_out]
        if updates:
            _update_index(worktree, updates, env)
        if gitlinks:
            set_gitlinks(worktree, gitlinks, env)
        if updates or gitlinks:
            tree = git.first_line(git.output(worktree, "write-tree", env=env))
        else:
            tree = index_tree
        worktree_sha = commit_tree(worktree, tree, scan.head_sha, message,
                                   dirs=place.objects if place is not None else None)
        if keep_index is not None:
            os.replace(index_copy, keep_index)
    return Snapshot(
        head_sha=scan.head_sha,
        branch=scan.branch,
        index_tree=index_tree,
        worktree_sha=worktree_sha,
        dirty=scan.changed,
        skipped=tuple(sorted(git.display_path(p) for p in skipped)),
        worktree_tree=tree,
        skipped_paths=tuple(skipped),
        staged=scan.staged,
        nested=scan.nested_repos,
    )


def set_gitlinks(worktree: Path, gitlinks: Mapping[bytes, str], env: Mapping[str, str]) -> None:
    """Point each submodule entry of the index `env` names at its commit."""
    git.output(worktree, "update-index", "-z", "--index-info", env=env,
               input=b"".join(b"160000 %s\t%s\0" % (sha.encode(), path) for path, sha in sorted(gitlinks.items())))


def commit_tree(worktree: Path, tree: str, parent: str, message: str,
                dirs: gitfiles.GitDirs | None = None) -> str:
    """A commit of `tree` with the one parent `parent`, by cairnd's identity: written by
    hand where the repository is plain (no process), else by `git commit-tree`.
    `dirs`: where to write it (an inner repository's store), else `worktree`'s own."""
    store = dirs
    dirs = dirs or places.objects_of(worktree)
    if dirs is not None:
        sha = gitfiles.write_commit(dirs, tree, parent, message, git.IDENTITY_NAME, git.IDENTITY_EMAIL)
        if sha is not None:
            return sha
    if store is not None:
        return git.first_line(git.output(worktree, f"--git-dir={store.common_dir}", "commit-tree", "--no-gpg-sign",
                                         tree, "-p", parent, "-m", message))
    return git.first_line(git.output(worktree, "commit-tree", "--no-gpg-sign", tree, "-p", parent, "-m", message))


# Past this many changed paths the full scan is cheaper: git matches every index entry
# and every directory it walks against every pathspec (at 50k files, 600 pathspecs
# made a limited status cost four times a full one).
MAX_CHANGED_PATHS = 64


def snapshot_paths(worktree: Path, private_index: Path, paths: Iterable[bytes], max_file_bytes: int,
                   write_tree: bool = False) -> tuple[str | None, list[bytes], list[bytes]] | None:
    """The tree of the working tree given that only `paths` (files or whole directories,
    relative) may differ from `private_index` (kept by `snapshot` or by this), which is
    brought up to date. Returns (tree, paths over the size cap, nested repositories)
    among `paths`; the tree is None when nothing in it changed (with `write_tree`, the
    tree is written whatever changed). None when the paths are too many (scan the tree
    instead).

    Two git calls, each reading the private index and looking at `paths` only: a
    status limited to them (it applies .gitignore, finds nested repositories), then
    update-index of what differs, then write-tree (which rewrites only the trees along
    the changed paths: the others are cached in the index)."""
    paths = sorted(paths)
    if len(paths) > MAX_CHANGED_PATHS:
        return None
    env = {"GIT_INDEX_FILE": str(private_index), "GIT_LITERAL_PATHSPECS": "1"}
    scan = parse_status(git.output(worktree, "--no-optional-locks", "status", "--porcelain=v2", "-z",
                             "--untracked-files=all", "--no-renames", "--ignore-submodules=dirty",
                             "--", *paths, env=env)) if paths else StatusScan(None, None, False, (), ())
    big = oversized(worktree, scan.worktree_paths, max_file_bytes)
    left_out = set(big) | set(scan.nested_repos)
    updates = [p for p in scan.worktree_paths if p not in left_out]
    tree = None
    if updates:
        _update_index(worktree, updates, env)
    if updates or write_tree:
        tree = git.first_line(git.output(worktree, "write-tree", env=env))
    return tree, big, list(scan.nested_repos)


def index_tree_of(worktree: Path, index_file: Path) -> tuple[str, int] | None:
    """(tree, entry count) of an index file, from a private copy; None when it has
    conflicts (no tree) or cannot be read."""
    with _index_copy(index_file) as copy:
        try:
            with open(copy, "rb") as f:
                header = f.read(12)
        except OSError:
            return None
        if len(header) < 12 or header[:4] != b"DIRC":
            return None
        proc = git.run(worktree, ["write-tree"], env={"GIT_INDEX_FILE": str(copy)})
        if proc.returncode != 0:
            return None
        return git.first_line(proc.stdout), int.from_bytes(header[8:12], "big")


@contextmanager
def _index_copy(index_file: Path, directory: Path | None = None) -> Iterator[Path]:
    """A private copy of an index file (empty if there is none), removed afterwards.

    copy2 keeps the mtime, so git's racy-clean checks stay exactly as strict on
    the copy as on the real index."""
    fd, name = tempfile.mkstemp(prefix=git.INDEX_COPY_PREFIX, dir=directory)
    os.close(fd)
    copy = Path(name)
    try:
        if index_file.exists():
            shutil.copy2(index_file, copy)
        else:
            copy.unlink()  # git treats a missing index as empty, not a zero-byte file
        yield copy
    finally:
        copy.unlink(missing_ok=True)
        Path(f"{copy}.lock").unlink(missing_ok=True)


def _update_index(worktree: Path, paths: Sequence[bytes], env: Mapping[str, str]) -> None:
    # --add/--remove make each path match the working tree (new, changed, gone);
    # --replace lets a file become a directory or the reverse.
    git.output(worktree, "update-index", "--add", "--remove", "--replace", "-z", "--stdin",
         env=env, input=b"".join(p + b"\0" for p in paths))


def _index_tree(worktree: Path, proc: subprocess.CompletedProcess[bytes], env: Mapping[str, str]) -> str:
    """The tree of the index copy, from a finished `write-tree`; a conflicted index gets
    its conflicted paths resolved to their working-tree content first."""
    if proc.returncode == 0:
        return git.first_line(proc.stdout)
    if b"unmerged" not in proc.stderr:
        raise git.failure(worktree, ["write-tree"], proc)
    conflicted = {line.split(b"\t", 1)[1] for line in
                  git.output(worktree, "ls-files", "-u", "-z", env=env).split(b"\0") if line}
    _update_index(worktree, sorted(conflicted), env)
    return git.first_line(git.output(worktree, "write-tree", env=env))
