"""Checkpoints whose cost follows the change (cairnd.checkpointer, cairnd.worktreewatch):
a snapshot built from the paths inotify saw change is the snapshot a full scan
makes, and wherever the watch cannot be sure, the full scan is what runs.

The oracle in every test is `gitsnapshot.snapshot` (the full scan) of the same tree.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairnd.git import snapshot as gitsnapshot
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.checkpoints.watch import WatchSet
from gitrepos import commit_all, git as run_git, make_repo, stage, write
from test_checkpoint import GITIGNORE, NO_CAP, apply_op


def same_as_full_scan(checkpoints: Checkpointer, repo: Path, session: str = "s") -> gitsnapshot.Snapshot:
    ours = checkpoints.snapshot(session, repo, NO_CAP, "m")
    full = gitsnapshot.snapshot(repo, NO_CAP, "m")
    assert (ours.head_sha, ours.branch, ours.index_tree, ours.worktree_tree, ours.dirty, ours.skipped) == \
        (full.head_sha, full.branch, full.index_tree, full.worktree_tree, full.dirty, full.skipped)
    return ours


pytestmark = pytest.mark.repo(files={"a.txt": "a\n", "src/app.py": "print(1)\n"}, gitignore=GITIGNORE)


@pytest.fixture
def checkpoints(tmp_path: Path):
    made = Checkpointer(WatchSet(), tmp_path / "indexes")
    yield made
    made.close()


def test_first_snapshot_scans_then_nothing_changed_reuses_it(repo: Path, checkpoints: Checkpointer) -> None:
    first = same_as_full_scan(checkpoints, repo)
    second = same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts == {"full": 1, "paths": 0, "paths_git": 0, "reused": 1}
    assert second.worktree_sha == first.worktree_sha


def test_changed_paths_alone_are_looked_at(repo: Path, checkpoints: Checkpointer) -> None:
    same_as_full_scan(checkpoints, repo)
    write(repo, "a.txt", "changed\n")
    write(repo, "deep/er/new.txt", "new\n")
    os.unlink(repo / "src" / "app.py")
    write(repo, "debug.log", "ignored\n")
    write(repo, "build/out.o", b"\0")
    snap = same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["paths"] == 1 and snap.dirty
    # Only ignored files changed: the last snapshot is the answer.
    write(repo, "debug.log", "more noise\n")
    assert same_as_full_scan(checkpoints, repo).worktree_sha == snap.worktree_sha
    assert checkpoints.counts["full"] == 1


def test_a_directory_made_whole_before_its_watch_is_seen(repo: Path, checkpoints: Checkpointer) -> None:
    same_as_full_scan(checkpoints, repo)
    # Made in one go by another process: files land before any watch on the new directories.
    subprocess.run(["sh", "-c", "mkdir -p n/a/b/c && for i in 1 2 3; do echo $i > n/a/b/c/f$i; done; "
                    "echo x > n/top"], cwd=repo, check=True)
    same_as_full_scan(checkpoints, repo)
    # Later writes deep inside are seen through the watches the walk added.
    write(repo, "n/a/b/c/f2", "changed later\n")
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 1


def test_directory_moves_and_replacements(repo: Path, checkpoints: Checkpointer) -> None:
    write(repo, "d/x/one.txt", "1\n")
    same_as_full_scan(checkpoints, repo)
    os.rename(repo / "d", repo / "moved")
    same_as_full_scan(checkpoints, repo)
    write(repo, "moved/x/two.txt", "2\n")  # inside the moved directory: its watch moved along
    same_as_full_scan(checkpoints, repo)
    os.unlink(repo / "moved" / "x" / "one.txt")
    os.unlink(repo / "moved" / "x" / "two.txt")
    os.rmdir(repo / "moved" / "x")
    write(repo, "moved/x", "now a file\n")
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 1


def test_what_redefines_the_tree_makes_it_scan_whole(repo: Path, checkpoints: Checkpointer) -> None:
    write(repo, "notes.tmp", "kept\n")
    same_as_full_scan(checkpoints, repo)
    write(repo, ".gitignore", GITIGNORE + "*.tmp\n")  # ignores a file no event names
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 2
    (repo / "nested").mkdir()
    write(repo, "nested/f", "in a repository of its own\n")
    same_as_full_scan(checkpoints, repo)
    run_git(repo / "nested", "init", "-q")  # now a nested repository: left out whole
    assert same_as_full_scan(checkpoints, repo).skipped == ("nested",)
    assert checkpoints.counts["full"] == 3


def test_index_and_head_changes_make_it_scan_whole(repo: Path, checkpoints: Checkpointer) -> None:
    same_as_full_scan(checkpoints, repo)
    write(repo, "a.txt", "staged\n")
    stage(repo, "a.txt")
    same_as_full_scan(checkpoints, repo)
    commit_all(repo, "commit")
    same_as_full_scan(checkpoints, repo)
    run_git(repo, "update-ref", "refs/heads/main", "HEAD~1")  # the branch moved from elsewhere
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 4


def test_an_index_rewritten_with_the_same_entries_keeps_it_incremental(repo: Path, checkpoints: Checkpointer) -> None:
    write(repo, "a.txt", "changed\n")
    same_as_full_scan(checkpoints, repo)
    os.utime(repo / "src" / "app.py")  # stat data git will refresh
    run_git(repo, "status", "--porcelain")  # rewrites .git/index: same entries, fresh stat data
    write(repo, "new.txt", "new\n")
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 1 and checkpoints.counts["paths"] == 1
    run_git(repo, "add", "-N", "new.txt")  # an intent-to-add entry: same tree, one entry more
    write(repo, "new.txt", "newer\n")
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 2


def test_changed_tracked_files_are_written_without_git(repo: Path, checkpoints: Checkpointer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    same_as_full_scan(checkpoints, repo)
    write(repo, "a.txt", "changed\n")
    write(repo, "src/app.py", "print(1.5)\n")
    same_as_full_scan(checkpoints, repo)  # reads the trees along the way: one git cat-file
    write(repo, "a.txt", "changed again\n")
    write(repo, "src/app.py", "print(2)\n", executable=True)
    calls: list[object] = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: calls.append(a) or pytest.fail("git started"))
    ours = checkpoints.snapshot("s", repo, NO_CAP, "m")
    monkeypatch.undo()
    assert calls == []  # not one process: the blobs, the trees and the commit are written by cairnd
    full = gitsnapshot.snapshot(repo, NO_CAP, "m")
    assert (ours.worktree_tree, ours.dirty) == (full.worktree_tree, full.dirty)
    assert checkpoints.counts == {"full": 1, "paths": 2, "paths_git": 0, "reused": 0}


def test_an_ignored_name_tracked_by_the_index_is_kept_when_it_comes_back(repo: Path,
                                                                        checkpoints: Checkpointer) -> None:
    write(repo, "x.log", "tracked though ignored\n")
    run_git(repo, "add", "-f", "x.log")
    same_as_full_scan(checkpoints, repo)
    os.unlink(repo / "x.log")
    same_as_full_scan(checkpoints, repo)
    write(repo, "x.log", "back\n")  # new to the last snapshot, ignored by name, tracked by the index
    write(repo, "y.log", "ignored and untracked\n")
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 1 and checkpoints.counts["paths_git"] == 0


def test_what_cairnd_cannot_write_goes_to_git_which_catches_up(repo: Path, checkpoints: Checkpointer) -> None:
    same_as_full_scan(checkpoints, repo)
    write(repo, "a.txt", "by cairnd\n")  # the private index falls behind here
    same_as_full_scan(checkpoints, repo)
    write(repo, ":colon.txt", "a name git's pathspecs read as magic\n")  # so git's way
    same_as_full_scan(checkpoints, repo)
    write(repo, "a.txt", "a\n")  # back to what the private index still held
    same_as_full_scan(checkpoints, repo)
    os.mkfifo(repo / "fifo")  # a special file: git's way again
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts == {"full": 1, "paths": 4, "paths_git": 2, "reused": 0}


def test_a_tree_with_attributes_goes_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", ".gitattributes": "*.txt text eol=crlf\n"})
    checkpoints = Checkpointer(WatchSet(), tmp_path / "indexes")
    try:
        same_as_full_scan(checkpoints, repo)
        write(repo, "a.txt", "converted by git\n")
        same_as_full_scan(checkpoints, repo)
        assert checkpoints.counts == {"full": 1, "paths": 1, "paths_git": 1, "reused": 0}
    finally:
        checkpoints.close()


@pytest.mark.slow
def test_a_real_queue_overflow_falls_back_to_the_full_scan(repo: Path, checkpoints: Checkpointer) -> None:
    same_as_full_scan(checkpoints, repo)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    flood = repo / "flood"
    flood.mkdir()
    checkpoints.watches.drain()  # the directory is watched now: its files each queue events
    for i in range(limit + 10):
        (flood / f"f{i}").write_bytes(b"")
    write(repo, "a.txt", "lost in the flood\n")
    snap = same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 2
    assert snap.dirty
    write(repo, "a.txt", "seen again\n")  # and watching is exact again afterwards
    same_as_full_scan(checkpoints, repo)
    assert checkpoints.counts["full"] == 2


def test_too_many_directories_to_watch_scans_every_time(repo: Path, tmp_path: Path) -> None:
    for i in range(5):
        write(repo, f"d{i}/f", "x\n")
    checkpoints = Checkpointer(WatchSet(max_dirs=3), tmp_path / "indexes")
    try:
        same_as_full_scan(checkpoints, repo)
        write(repo, "d1/f", "changed\n")
        same_as_full_scan(checkpoints, repo)
        assert checkpoints.counts == {"full": 2, "paths": 0, "paths_git": 0, "reused": 0}
    finally:
        checkpoints.close()


def test_forget_stops_watching_and_removes_the_private_index(repo: Path, checkpoints: Checkpointer,
                                                             tmp_path: Path) -> None:
    same_as_full_scan(checkpoints, repo)
    assert (tmp_path / "indexes" / "s.index").exists() and checkpoints.watches.watched() > 0
    checkpoints.forget("s")
    assert not (tmp_path / "indexes" / "s.index").exists() and checkpoints.watches.watched() == 0


@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def check_random_changes_give_the_full_scans_snapshot(data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cairnd-checkpointer-") as tmp:
        root = Path(tmp)
        repo = make_repo(root / "repo", {"a.txt": "a\n", "src/app.py": "print(1)\n"}, gitignore=GITIGNORE)
        checkpoints = Checkpointer(WatchSet(), root / "indexes")
        try:
            same_as_full_scan(checkpoints, repo)
            for step in range(data.draw(st.integers(min_value=8, max_value=12), label="steps")):
                if data.draw(st.integers(0, 4), label="git's way") == 0:  # a name cairnd leaves to git
                    write(repo, f":step{step}.txt", "x\n")
                for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="ops")):
                    try:
                        apply_op(data, repo, step)
                    except AssertionError as refused:  # git add of a tracked file in an ignored directory
                        if "ignored by one of your .gitignore" not in str(refused):
                            raise
                same_as_full_scan(checkpoints, repo)
            RANDOM_COUNTS.append(dict(checkpoints.counts))
        finally:
            checkpoints.close()


RANDOM_COUNTS: list[dict[str, int]] = []


@pytest.mark.slow
def test_random_changes_give_the_full_scans_snapshot() -> None:
    RANDOM_COUNTS.clear()
    check_random_changes_give_the_full_scans_snapshot()
    assert sum(counts["paths"] for counts in RANDOM_COUNTS) >= 20
    assert sum(counts["paths_git"] for counts in RANDOM_COUNTS) >= 5  # after cairnd's own, git's way too
    assert sum(counts["paths"] - counts["paths_git"] for counts in RANDOM_COUNTS) >= 10
