"""The web view's checkpoint diffs (cairnd.web.treediff): read through one persistent
`git cat-file` per repository, and equal to what git itself says of the same two
commits (cairnd.git.diff_files, the `cairnd diff` reader, and `git diff`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairnd.errors import CairnError
from cairnd.git import diff_files
from cairnd.web.treediff import TreeDiffs
from gitrepos import commit_all, git, git_text, make_repo, write


@pytest.fixture
def two_commits(tmp_path: Path) -> tuple[Path, str, str]:
    repo = make_repo(tmp_path / "repo", {"keep.txt": "same\n", "edit.txt": "one\ntwo\nthree\n",
                                         "gone.txt": "bye\n", "dir/deep/a.txt": "a\n", "bin.dat": b"\0\1\2",
                                         "link-or-file": "plain\n"})
    old = git_text(repo, "rev-parse", "HEAD")
    write(repo, "edit.txt", "one\n2\nthree\nfour\n")
    os.unlink(repo / "gone.txt")
    write(repo, "dir/deep/a.txt", "a\nb\n")
    write(repo, "dir/new/b.txt", "new\n")
    write(repo, "bin.dat", b"\0\3")
    os.unlink(repo / "link-or-file")
    os.symlink("keep.txt", repo / "link-or-file")
    commit_all(repo, "change")
    return repo, old, git_text(repo, "rev-parse", "HEAD")


def test_the_files_two_commits_differ_in_agree_with_git(two_commits: tuple[Path, str, str]) -> None:
    repo, old, new = two_commits
    diffs = TreeDiffs()
    try:
        mine = [change.as_json() for change in diffs.diff(repo, old, new)]
    finally:
        diffs.close()
    gits = [{key: change.as_dict()[key] for key in ("path", "status", "added", "removed", "binary")}
            for change in diff_files(repo, old, new)]
    assert mine == sorted(gits, key=lambda change: change["path"])
    assert {change["path"]: change["status"] for change in mine} == {
        "bin.dat": "M", "dir/deep/a.txt": "M", "dir/new/b.txt": "A", "edit.txt": "M", "gone.txt": "D",
        "link-or-file": "T"}


def test_the_unified_text_is_gits(two_commits: tuple[Path, str, str]) -> None:
    repo, old, new = two_commits
    diffs = TreeDiffs()
    try:
        by_path = {change.path: change for change in diffs.diff(repo, old, new)}
    finally:
        diffs.close()
    hunks = git(repo, "diff", "--no-color", "-U3", old, new, "--", "edit.txt").decode()
    assert by_path["edit.txt"].text.split("@@", 1)[1] == hunks.split("@@", 1)[1]
    assert by_path["bin.dat"].binary and by_path["bin.dat"].text is None
    assert by_path["dir/new/b.txt"].text == "--- /dev/null\n+++ b/dir/new/b.txt\n@@ -0,0 +1 @@\n+new\n"


def test_one_reader_process_serves_many_diffs(two_commits: tuple[Path, str, str]) -> None:
    repo, old, new = two_commits
    diffs = TreeDiffs()
    try:
        diffs.diff(repo, old, new)
        children = _git_children()
        for _ in range(20):
            diffs.diff(repo, old, new)
            diffs.diff(repo, None, new)
        assert _git_children() == children  # no process per object, nor per diff
    finally:
        diffs.close()


def _git_children() -> set[int]:
    found = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        found.update(int(pid) for pid in children)
    return found


def test_bad_or_missing_commits_are_named(two_commits: tuple[Path, str, str]) -> None:
    repo, old, _new = two_commits
    diffs = TreeDiffs()
    try:
        with pytest.raises(CairnError) as bad:
            diffs.diff(repo, "HEAD", old)
        assert bad.value.code == "bad_request" and "'HEAD'" in bad.value.message
        with pytest.raises(CairnError) as missing:
            diffs.diff(repo, old, "f" * 40)
        assert missing.value.code == "commit_missing"
        diffs.diff(repo, old, old)  # the reader is still in step after a failure
        with pytest.raises(CairnError) as not_repo:
            diffs.diff(repo.parent, old, old)
        assert not_repo.value.code == "not_a_git_repo"
    finally:
        diffs.close()
