"""The files two checkpoints differ in, read from git's object store through one
long-lived `git cat-file --batch` per repository (GitPython's persistent reader), not
a process per object or per diff.

`TreeDiffs.diff(repo, a, b)` compares the trees of two commits (a checkpoint's
`worktreeSha` holds the whole working tree) and returns one `FileDiff` per changed
path, with its unified diff text; `as_json` gives the `cairnd diff --json` shape
(`{path, status, added, removed, binary}`).
"""

from __future__ import annotations

import difflib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git as gitpython
from git.objects.fun import tree_entries_from_data

from cairnd.errors import CairnError

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
MAX_DIFF_BYTES = 1 << 20  # a file bigger than this on either side is listed, not diffed
_TREE_MODE = 0o040000
_LINK_MODE = 0o120000
_GITLINK_MODE = 0o160000


@dataclass(frozen=True)
class FileDiff:
    path: str
    status: str  # A added, D deleted, M modified, T type changed
    added: int
    removed: int
    binary: bool
    text: str | None  # the unified diff; None for binary, submodule or oversized files

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "added": self.added,
                "removed": self.removed, "binary": self.binary}


def is_object_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_SHA.match(value))


class TreeDiffs:
    """Diffs between commits of several repositories, one object reader each."""

    def __init__(self) -> None:
        self._repos: dict[Path, tuple[gitpython.Repo, threading.Lock]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            repos, self._repos = self._repos, {}
        for repo, _lock in repos.values():
            repo.close()  # ends its cat-file processes

    def _repo(self, path: Path) -> tuple[gitpython.Repo, threading.Lock]:
        with self._lock:
            found = self._repos.get(path)
            if found is None:
                try:
                    repo = gitpython.Repo(path, odbt=gitpython.GitCmdObjectDB)
                except (gitpython.NoSuchPathError, gitpython.InvalidGitRepositoryError):
                    raise CairnError("not_a_git_repo", f"{path} is not a git repository") from None
                found = self._repos[path] = (repo, threading.Lock())
            return found

    def diff(self, repo_path: Path, old: str | None, new: str) -> list[FileDiff]:
        """Every path whose content differs between commit `old` (None: nothing) and
        commit `new`, sorted by path. Blocking: run it in a thread."""
        for sha in (old, new):
            if sha is not None and not is_object_id(sha):
                raise CairnError("bad_request", f"{sha!r} is not a git object id")
        repo, lock = self._repo(repo_path)
        with lock:
            try:
                reader = _Objects(repo)
                old_tree = reader.commit_tree(old) if old else None
                new_tree = reader.commit_tree(new)
                changes: list[FileDiff] = []
                reader.compare(old_tree, new_tree, "", changes)
            except ValueError as exc:
                raise CairnError("commit_missing", f"a checkpoint's objects are gone from {repo_path}: {exc}") from None
        return sorted(changes, key=lambda change: change.path)


class _Objects:
    """Object reads through the repository's persistent cat-file process."""

    def __init__(self, repo: gitpython.Repo) -> None:
        self.odb = repo.odb

    def read(self, sha: bytes) -> tuple[str, bytes]:
        stream = self.odb.stream(sha)
        kind = stream.type.decode() if isinstance(stream.type, bytes) else stream.type
        return kind, stream.read()

    def commit_tree(self, hexsha: str) -> bytes:
        kind, data = self.read(bytes.fromhex(hexsha))
        if kind != "commit":
            raise ValueError(f"{hexsha} is a {kind}, not a commit")
        first = data.split(b"\n", 1)[0]
        if not first.startswith(b"tree "):
            raise ValueError(f"commit {hexsha} has no tree")
        return bytes.fromhex(first[5:].decode())

    def entries(self, tree: bytes | None) -> dict[str, tuple[bytes, int]]:
        if tree is None:
            return {}
        kind, data = self.read(tree)
        if kind != "tree":
            raise ValueError(f"{tree.hex()} is a {kind}, not a tree")
        return {name: (sha, mode) for sha, mode, name in tree_entries_from_data(data)}

    def compare(self, old: bytes | None, new: bytes | None, prefix: str, out: list[FileDiff]) -> None:
        if old == new:
            return  # same tree id: nothing below differs, nothing below is read
        before, after = self.entries(old), self.entries(new)
        for name in sorted(set(before) | set(after)):
            path = prefix + name
            a, b = before.get(name), after.get(name)
            if a == b:
                continue
            a_tree = a is not None and a[1] == _TREE_MODE
            b_tree = b is not None and b[1] == _TREE_MODE
            if a_tree or b_tree:
                self.compare(a[0] if a_tree else None, b[0] if b_tree else None, path + "/", out)
                if a is not None and not a_tree:
                    out.append(self.file(path, a, None))
                if b is not None and not b_tree:
                    out.append(self.file(path, None, b))
                continue
            out.append(self.file(path, a, b))

    def blob(self, entry: tuple[bytes, int] | None) -> bytes | None:
        if entry is None:
            return b""
        if entry[1] == _GITLINK_MODE:
            return None  # a submodule's commit: not in this repository
        if self.odb.info(entry[0]).size > MAX_DIFF_BYTES:
            return None
        return self.read(entry[0])[1]

    def file(self, path: str, a: tuple[bytes, int] | None, b: tuple[bytes, int] | None) -> FileDiff:
        status = "A" if a is None else "D" if b is None else "M"
        if a is not None and b is not None and (a[1] == _LINK_MODE) != (b[1] == _LINK_MODE):
            status = "T"
        old, new = self.blob(a), self.blob(b)
        if old is None or new is None:
            return FileDiff(path, status, 0, 0, False, None)
        if b"\0" in old[:8000] or b"\0" in new[:8000]:
            return FileDiff(path, status, 0, 0, True, None)
        old_lines = old.decode("utf-8", errors="replace").splitlines(keepends=True)
        new_lines = new.decode("utf-8", errors="replace").splitlines(keepends=True)
        lines = list(difflib.unified_diff(old_lines, new_lines,
                                          "/dev/null" if a is None else f"a/{path}",
                                          "/dev/null" if b is None else f"b/{path}", n=3))
        added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
        text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        return FileDiff(path, status, added, removed, False, text)
