"""Comparing trees: the files two commits or trees differ in (`diff-tree --raw
--numstat`, many pairs in one git process), the patch text, and the patch split per
file. Git runs through `cairnd.git`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cairnd.git import run as git
from cairnd.git import objects as gitobjects
from cairnd.errors import CairnError


@dataclass(frozen=True)
class FileChange:
    """One path between two trees, as `git diff --raw --numstat -M` tells it."""

    path: str
    status: str  # git's letter: A added, D deleted, M modified, R renamed, T type changed
    old_path: str | None  # where a rename came from
    old_mode: str | None  # None when added
    new_mode: str | None  # None when deleted
    added: int | None  # lines; None for a binary file
    removed: int | None
    binary: bool

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "status": self.status, "added": self.added or 0,
                "removed": self.removed or 0, "binary": self.binary, "old_path": self.old_path,
                "old_mode": self.old_mode, "new_mode": self.new_mode}


# Plumbing on purpose: diff-tree ignores the user's diff.* and color configuration, so
# its output is git's own and stable; -M finds renames as `git diff` does by default.
_DIFF_ARGS = ("diff-tree", "-r", "-M", "--no-color", "--no-ext-diff", "--no-textconv")


def _trees_of(repo: Path, pairs: Sequence[tuple[str | None, str]]) -> list[tuple[str, str] | CairnError]:
    """Each pair's (old tree, new tree), or the error naming what is wrong with it: one
    cat-file for all of them. An old side of None is the empty tree (nothing)."""
    wanted: list[str] = []
    for old, new in pairs:
        wanted.extend(f"{sha}^{{tree}}" for sha in (old, new) if git.is_object_id(sha))
    found = dict(zip(wanted, gitobjects.object_types(repo, wanted))) if wanted else {}
    empty: str | None = None
    trees: list[tuple[str, str] | CairnError] = []
    for old, new in pairs:
        bad = [f"{label} {value!r}" for label, value in (("from", old), ("to", new))
               if not (value is None and label == "from") and not git.is_object_id(value)]
        if bad:
            trees.append(CairnError("bad_request", f"{' and '.join(bad)}: not a git object id"))
            continue
        missing = [sha for sha in dict.fromkeys((old, new)) if sha is not None and found[f"{sha}^{{tree}}"] is None]
        if missing:
            trees.append(CairnError("commit_missing", f"not in {repo}: {', '.join(missing)} "
                                                      "(its checkpoint refs were deleted and git collected it?)"))
            continue
        if old is None and empty is None:
            empty = git.first_line(git.output(repo, "hash-object", "-t", "tree", "--stdin", input=b""))
        old_tree = empty if old is None else found[f"{old}^{{tree}}"][0]  # type: ignore[index]
        trees.append((old_tree, found[f"{new}^{{tree}}"][0]))  # type: ignore[arg-type,index]
    return trees


def _tree_pair(repo: Path, old: str | None, new: str) -> tuple[str, str]:
    found = _trees_of(repo, [(old, new)])[0]
    if isinstance(found, CairnError):
        raise found
    return found


def parse_raw_numstat(raw: bytes, numstat: bytes) -> list[FileChange]:
    """Pure: `diff-tree -z --raw` and `diff-tree -z --numstat` of the same pair, joined."""
    counts: list[tuple[int | None, int | None]] = []
    fields = iter(numstat.split(b"\0"))
    for head in fields:
        if not head:
            continue
        added, removed, path = head.split(b"\t", 2)
        if not path:  # a rename: old and new path follow as fields of their own
            next(fields, None)
            next(fields, None)
        counts.append((None, None) if added == b"-" else (int(added), int(removed)))
    changes: list[FileChange] = []
    records = iter(raw.split(b"\0"))
    for record in records:
        if not record.startswith(b":"):
            continue
        old_mode, new_mode, _old_sha, _new_sha, status = record[1:].decode().split(" ")
        letter = status[:1]
        first = next(records)
        old_path, path = (first, next(records)) if letter in ("R", "C") else (None, first)
        added, removed = counts[len(changes)] if len(changes) < len(counts) else (0, 0)
        changes.append(FileChange(
            path=git.display_path(path), status=letter, old_path=None if old_path is None else git.display_path(old_path),
            old_mode=None if letter == "A" else old_mode, new_mode=None if letter == "D" else new_mode,
            added=added, removed=removed, binary=added is None,
        ))
    return changes


def split_raw_numstat(both: bytes) -> tuple[bytes, bytes]:
    """Pure: `diff-tree -z --raw --numstat` output cut into its raw records and its
    numstat records (raw ones come first, each `:` record followed by one path, or two
    for a rename or copy)."""
    position = 0
    while both.startswith(b":", position):
        record_end = both.index(b"\0", position)
        status = both[position:record_end].rsplit(b" ", 1)[-1][:1]
        paths = 2 if status in (b"R", b"C") else 1
        position = record_end + 1
        for _ in range(paths):
            position = both.index(b"\0", position) + 1
    return both[:position], both[position:]


def diff_files_many(repo: Path, pairs: Sequence[tuple[str | None, str]]) -> list[list[FileChange] | CairnError]:
    """`diff_files` of each (old, new) pair, with two git processes in all however many
    pairs there are (a cat-file to check them, one `diff-tree --stdin`): what a page
    listing every turn's changed files asks for. A pair with a bad or missing side gets
    its CairnError in its place; the others are still answered."""
    trees = _trees_of(repo, pairs)
    asked = list(dict.fromkeys(pair for pair in trees if isinstance(pair, tuple) and pair[0] != pair[1]))
    answers: dict[tuple[str, str], list[FileChange]] = {}
    if asked:
        out = git.output(repo, *_DIFF_ARGS, "--stdin", "--always", "-z", "--raw", "--numstat",
                   input="".join(f"{old} {new}\n" for old, new in asked).encode())
        # diff-tree echoes each input line ("OLD NEW\n") before that pair's records.
        heads = [f"{old} {new}\n".encode() for old, new in asked]
        start = 0
        for index, pair in enumerate(asked):
            if not out.startswith(heads[index], start):
                raise CairnError("git_failed", f"git diff-tree --stdin in {repo}: output out of step at pair {index}")
            begin = start + len(heads[index])
            end = out.find(heads[index + 1], begin) if index + 1 < len(heads) else len(out)
            if end < 0:
                raise CairnError("git_failed", f"git diff-tree --stdin in {repo}: output out of step at pair {index + 1}")
            answers[pair] = parse_raw_numstat(*split_raw_numstat(out[begin:end]))
            start = end
    return [found if isinstance(found, CairnError) else answers.get(found, []) for found in trees]


def diff_files(repo: Path, old: str | None, new: str) -> list[FileChange]:
    """Every path that differs between the trees of commits (or trees) `old` (None: the
    empty tree) and `new`."""
    found = diff_files_many(repo, [(old, new)])[0]
    if isinstance(found, CairnError):
        raise found
    return found


def diff_text(repo: Path, old: str | None, new: str, *, stat: bool = False, stat_width: int = 80,
              prefix: str = "") -> bytes:
    """The unified diff (or `--stat`) between the trees of `old` and `new`, as git prints it:
    renames, mode changes, symlinks and `Binary files ... differ` included. `prefix`: a
    directory the paths are shown under (an inner repository's path)."""
    old_tree, new_tree = _tree_pair(repo, old, new)
    if old_tree == new_tree:
        return b""
    form = (f"--stat={stat_width}", "--summary") if stat else ("-p", "--full-index")
    where = (f"--src-prefix=a/{prefix}", f"--dst-prefix=b/{prefix}") if prefix and not stat else ()
    return git.output(repo, *_DIFF_ARGS, *form, *where, old_tree, new_tree)


def split_patch(files: Sequence[FileChange], patch: bytes) -> list[bytes]:
    """Pure: git's unified diff of `files`' two trees cut into each file's own part, in
    `files`' order (git prints them in that order; a type change, a file that became a
    symlink, is printed as a deletion then a creation: two parts, both its own)."""
    parts = patch.split(b"\ndiff --git ") if patch else []
    # the split took each part's last newline but the last one's
    sections = [(part if index == 0 else b"diff --git " + part) + (b"\n" if index < len(parts) - 1 else b"")
                for index, part in enumerate(parts)]
    wanted = sum(2 if change.status == "T" else 1 for change in files)
    if len(sections) != wanted:
        raise CairnError("git_failed", f"git printed {len(sections)} file diffs for {len(files)} changed files")
    own: list[bytes] = []
    for change in files:
        taken = 2 if change.status == "T" else 1
        own.append(b"".join(sections[:taken]))
        sections = sections[taken:]
    return own


def diff_patches(repo: Path, old: str | None, new: str) -> list[tuple[FileChange, bytes]]:
    """Each changed file with its own part of git's unified diff (a diff page): two git
    processes, one `diff_files`, one `diff_text`."""
    files = diff_files(repo, old, new)
    return list(zip(files, split_patch(files, diff_text(repo, old, new)))) if files else []
