"""SPEC 13 diff: the files between two checkpoints, as `git diff` shows them, read from the
checkpoints' trees only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairnd import git as cgit
from cairnd.diffs import compare, compare_text, parse_name
from cairnd.errors import CairnError
from gitrepos import commit_all, git, index_fingerprint, make_repo, symlink, write
from test_forker import CAP, Parent


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, str, str]:
    """Two commits apart by a rename, a mode change, a symlink retarget, a binary change,
    an edit, a deletion, an addition and a file that became a symlink."""
    repo = make_repo(tmp_path / "r", {"a.txt": "one\ntwo\n", "old.txt": "".join(f"line {i}\n" for i in range(20)),
                                      "tool.sh": "#!/bin/sh\n", "bin.dat": b"\0\1\2", "gone.txt": "x\n",
                                      "plain": "p\n"})
    symlink(repo, "link", "a.txt")
    old = commit_all(repo, "links")
    os.rename(repo / "old.txt", repo / "new.txt")
    write(repo, "tool.sh", "#!/bin/sh\n", executable=True)
    write(repo, "bin.dat", b"\0\1\2\3\xff")
    symlink(repo, "link", "new.txt")
    write(repo, "a.txt", "one\n2\nthree\n")
    os.remove(repo / "gone.txt")
    write(repo, "added.txt", "new\n")
    os.remove(repo / "plain")
    symlink(repo, "plain", "a.txt")
    return repo, old, commit_all(repo, "changes")


def test_structured_list_reads_as_git_diff_does(pair):
    repo, old, new = pair
    files = {c.path: c for c in cgit.diff_files(repo, old, new)}
    assert files["new.txt"].status == "R" and files["new.txt"].old_path == "old.txt"
    assert (files["new.txt"].added, files["new.txt"].removed) == (0, 0)
    assert files["tool.sh"].status == "M" and (files["tool.sh"].old_mode, files["tool.sh"].new_mode) == ("100644",
                                                                                                         "100755")
    assert files["bin.dat"].binary and files["bin.dat"].added is None
    assert files["link"].new_mode == "120000" and (files["link"].added, files["link"].removed) == (1, 1)
    assert (files["a.txt"].added, files["a.txt"].removed) == (2, 1)
    assert files["gone.txt"].status == "D" and files["gone.txt"].new_mode is None
    assert files["added.txt"].status == "A" and files["added.txt"].old_mode is None
    assert files["plain"].status == "T"
    numstat = git(repo, "diff", "--numstat", "-M", old, new).decode().splitlines()
    assert len(numstat) == len(files)


def test_unified_diff_and_stat_are_gits_own(pair):
    repo, old, new = pair
    assert cgit.diff_text(repo, old, new) == git(repo, "diff", "--no-color", "-M", "--full-index", old, new)
    stat = cgit.diff_text(repo, old, new, stat=True).decode()
    assert "old.txt => new.txt" in stat and "Bin 3 -> 5 bytes" in stat and "mode change 100644 => 100755" in stat
    assert cgit.diff_text(repo, old, old) == b""


@pytest.mark.parametrize("text, expected", [("s1", ("s1", None)), ("s1@0", ("s1", 0)), ("s1@12", ("s1", 12))])
def test_names(text, expected):
    assert parse_name(text) == expected


@pytest.mark.parametrize("text", ["", "s1@", "s1@-1", "s1@x", "@2"])
def test_bad_names(text):
    with pytest.raises(CairnError) as info:
        parse_name(text)
    assert info.value.code == "bad_request"


def test_sessions_of_one_repository_fork_against_parent_and_alone(tmp_path: Path):
    p = Parent(tmp_path)
    p.turn("edit a", lambda: write(p.repo, "a.txt", "a1\n"))
    p.turn("add b", lambda: write(p.repo, "b.txt", "b\n"))
    fork = p.fork(1)
    worktree = Path(fork["worktree"])
    write(worktree, "c.txt", "c\n")
    fork_row = p.registry.get(fork["session"])
    from cairnd.checkpoint import take_checkpoint
    from cairnd.entries import checkpoint_entry, envelope_line
    with open(p.layout.log_path(fork_row.id), "ab") as f:
        f.write(envelope_line(checkpoint_entry(take_checkpoint(fork_row.id, worktree, 2, CAP))))
    before = index_fingerprint(p.repo), index_fingerprint(worktree)

    alone = compare(p.layout, fork_row.id)  # with the parent at the cut
    assert [f["path"] for f in alone["files"]] == ["c.txt"]
    assert alone["from"]["session"] == p.id
    against = compare(p.layout, p.id, fork_row.id)
    assert {f["path"]: f["status"] for f in against["files"]} == {"b.txt": "D", "c.txt": "A"}
    assert compare(p.layout, f"{p.id}@0", f"{p.id}@2")["files"] == [
        {"path": "a.txt", "status": "M", "added": 1, "removed": 1, "binary": False, "old_path": None,
         "old_mode": "100644", "new_mode": "100644"},
        {"path": "b.txt", "status": "A", "added": 1, "removed": 0, "binary": False, "old_path": None,
         "old_mode": None, "new_mode": "100644"}]
    _old, _new, text = compare_text(p.layout, f"{p.id}@1", fork_row.id)
    assert b"+c\n" in text
    assert (index_fingerprint(p.repo), index_fingerprint(worktree)) == before
    with pytest.raises(CairnError) as info:
        compare(p.layout, f"{p.id}@7")
    assert info.value.code == "bad_request" and "@0, @1, @2" in info.value.message
    with pytest.raises(CairnError) as info:
        compare(p.layout, "nosuchsession")
    assert info.value.code == "unknown_session"


def test_sessions_of_different_repositories_cannot_be_compared(tmp_path: Path):
    p = Parent(tmp_path)
    other_repo = make_repo(tmp_path / "other")
    p.registry.begin_session(id="other1", title="Other", repo=other_repo, worktree=other_repo, in_place=True,
                             agent="reference", parent_id=None, root_id="other1", turns=0, request_id=None)
    p.registry.commit_session("other1", {"session": "other1"})
    from cairnd.checkpoint import take_checkpoint
    from cairnd.entries import checkpoint_entry, envelope_line
    log = p.layout.log_path("other1")
    log.parent.mkdir(parents=True)
    log.write_bytes(envelope_line(checkpoint_entry(take_checkpoint("other1", other_repo, 0, CAP))))
    with pytest.raises(CairnError) as info:
        compare(p.layout, p.id, "other1")
    assert info.value.code == "bad_request" and "different repositories" in info.value.message
