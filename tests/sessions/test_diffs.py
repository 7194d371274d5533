"""SPEC 13 diff: the files between two checkpoints, as `git diff` shows them, read from the
checkpoints' trees only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairnd.git import run as cgit
from cairnd.git import diff as gitdiff
from cairnd.sessions.diffs import compare, compare_text, parse_name
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
    files = {c.path: c for c in gitdiff.diff_files(repo, old, new)}
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
    assert gitdiff.diff_text(repo, old, new) == git(repo, "diff", "--no-color", "-M", "--full-index", old, new)
    stat = gitdiff.diff_text(repo, old, new, stat=True).decode()
    assert "old.txt => new.txt" in stat and "Bin 3 -> 5 bytes" in stat and "mode change 100644 => 100755" in stat
    assert gitdiff.diff_text(repo, old, old) == b""


def _gits_own_list(repo: Path, old: str, new: str) -> list[tuple[str, str | None, str, int | None, int | None]]:
    """The oracle: (status, old path, path, added, removed) per file, from `git diff -M`."""
    names = git(repo, "diff", "--no-color", "-M", "-z", "--name-status", old, new).split(b"\0")
    listed = []
    fields = iter(names)
    for status in fields:
        if not status:
            continue
        first = next(fields).decode()
        listed.append((status[:1].decode(), first, next(fields).decode()) if status[:1] in b"RC"
                      else (status[:1].decode(), None, first))
    counts = [line.split("\t")[:2] for line in git(repo, "diff", "-M", "--numstat", old, new).decode().splitlines()]
    return [(s, o, p, None if a == "-" else int(a), None if r == "-" else int(r))
            for (s, o, p), (a, r) in zip(listed, counts)]


def _as_tuples(files: list[gitdiff.FileChange]) -> list[tuple[str, str | None, str, int | None, int | None]]:
    return [(c.status, c.old_path, c.path, c.added, c.removed) for c in files]


def test_many_pairs_are_read_by_one_git_process_each_as_git_diff_lists_it(pair, monkeypatch):
    """The web page's per-turn lists: every pair answered as `git diff -M` answers it,
    a bad or missing pair named in its place, two git processes for the whole page."""
    repo, old, new = pair
    third = commit_all(repo, "nothing changed")  # a commit with the same tree as `new`
    write(repo, "a.txt", "again\n")
    fourth = commit_all(repo, "again")
    spawned = []
    real_run = cgit.subprocess.run

    def counting_run(args, *rest, **kwargs):  # the real git runs; only its starts are counted
        spawned.append(args[1])
        return real_run(args, *rest, **kwargs)

    monkeypatch.setattr(cgit.subprocess, "run", counting_run)
    pairs = [(old, new), (new, old), (new, third), (third, fourth), (old, fourth), ("HEAD", new),
             (old, "f" * 40)] * 8
    found = gitdiff.diff_files_many(repo, pairs)
    assert spawned == ["cat-file", "diff-tree"]
    monkeypatch.setattr(cgit.subprocess, "run", real_run)
    for (a, b), answer in zip(pairs, found):
        if a == "HEAD":
            assert isinstance(answer, CairnError) and answer.code == "bad_request" and "'HEAD'" in answer.message
        elif b == "f" * 40:
            assert isinstance(answer, CairnError) and answer.code == "commit_missing" and b in answer.message
        else:
            assert _as_tuples(answer) == _gits_own_list(repo, a, b)
    assert found[2] == [] and {c.status for c in found[0]} == {"R", "M", "D", "A", "T"}
    assert found[1][[c.path for c in found[1]].index("old.txt")].old_path == "new.txt"  # the way back
    empty = git(repo, "hash-object", "-t", "tree", "--stdin", input=b"").decode().strip()
    assert _as_tuples(gitdiff.diff_files(repo, None, new)) == _gits_own_list(repo, empty, new)


def test_errors_name_the_side_and_the_repository(pair, tmp_path):
    repo, old, new = pair
    with pytest.raises(CairnError) as bad:
        gitdiff.diff_files(repo, "HEAD", old)
    assert bad.value.code == "bad_request" and "from 'HEAD'" in bad.value.message
    with pytest.raises(CairnError) as missing:
        gitdiff.diff_files(repo, old, "f" * 40)
    assert missing.value.code == "commit_missing" and "f" * 40 in missing.value.message
    (tmp_path / "plain").mkdir()
    with pytest.raises(CairnError) as not_repo:
        gitdiff.diff_files(tmp_path / "plain", old, new)
    assert not_repo.value.code == "not_a_git_repo"
    with pytest.raises(CairnError) as gone:
        gitdiff.diff_files_many(tmp_path / "gone", [(old, new)])
    assert gone.value.code == "repo_not_found"


def test_each_files_part_of_the_diff_is_gits_own(pair):
    """The diff page's text: each file's part is what `git diff` prints for it, the parts
    in order make git's whole diff (a file that became a symlink: its deletion and
    creation both)."""
    repo, old, new = pair
    parts = gitdiff.diff_patches(repo, old, new)
    whole = git(repo, "diff", "--no-color", "-M", "--full-index", old, new)
    assert b"".join(patch for _change, patch in parts) == whole
    for change, patch in parts:
        if change.status != "R":  # a pathspec would hide the rename's other side
            assert patch == git(repo, "diff", "--no-color", "-M", "--full-index", old, new, "--", change.path)
    by_path = {change.path: patch for change, patch in parts}
    assert by_path["new.txt"].startswith(b"diff --git a/old.txt b/new.txt\nsimilarity index 100%\n")
    assert b"Binary files a/bin.dat and b/bin.dat differ" in by_path["bin.dat"]
    assert b"old mode 100644\nnew mode 100755" in by_path["tool.sh"]
    assert by_path["plain"].count(b"diff --git") == 2 and b"new file mode 120000" in by_path["plain"]
    assert gitdiff.diff_patches(repo, old, old) == []


def test_a_diff_of_one_file_is_one_part():
    one = b"diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+diff --git b\n"
    change = gitdiff.FileChange("x", "M", None, "100644", "100644", 1, 1, False)
    assert gitdiff.split_patch([change], one) == [one]
    with pytest.raises(CairnError):
        gitdiff.split_patch([change, change], one)


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
    from cairnd.checkpoints.checkpoint import take_checkpoint
    from cairnd.sessionlog.entries import checkpoint_entry, envelope_line
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
    from cairnd.checkpoints.checkpoint import take_checkpoint
    from cairnd.sessionlog.entries import checkpoint_entry, envelope_line
    log = p.layout.log_path("other1")
    log.parent.mkdir(parents=True)
    log.write_bytes(envelope_line(checkpoint_entry(take_checkpoint("other1", other_repo, 0, CAP))))
    with pytest.raises(CairnError) as info:
        compare(p.layout, p.id, "other1")
    assert info.value.code == "bad_request" and "different repositories" in info.value.message
