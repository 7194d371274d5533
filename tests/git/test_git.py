"""cairnd.git.run: every git operation cairnd needs, against real repositories.

Each CairnError code it can raise has a test that provokes it; the snapshot and
restore round trip itself is tested at length in test_checkpoint.py.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cairnd.git import run as git
from cairnd.git import refs as gitrefs
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import worktree as gitworktree
from cairnd.errors import CairnError
from cairnd.sessions.land import checked_out_branches
from gitrepos import (
    commit_exists,
    list_worktrees,
    commit_all,
    git as run_git,
    git_text,
    head,
    head_and_branch,
    index_fingerprint,
    index_state,
    make_bare_repo,
    make_repo,
    status,
    tree_of,
    tree_state,
    write,
)

NO_CAP = 1 << 40


pytestmark = pytest.mark.repo(files={"README.md": "hello\n", "src/app.py": "print('hi')\n"}, gitignore="*.log\n")


def raises(code: str) -> pytest.RaisesContext[CairnError]:
    return pytest.raises(CairnError, match=f"^{code}: ")


# --------------------------------------------------------------------------- resolve_repo


def test_resolve_repo_gives_the_top_level_from_anywhere_inside(repo: Path) -> None:
    assert git.resolve_repo(str(repo)) == repo
    assert git.resolve_repo(str(repo / "src")) == repo


def test_resolve_repo_of_a_bare_repository_is_its_git_dir(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "project.git")
    assert git.resolve_repo(str(bare)) == bare


def test_resolve_repo_of_a_linked_worktree_is_that_worktree(repo: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    gitworktree.add_worktree(repo, linked, head(repo))
    assert git.resolve_repo(str(linked)) == linked


def test_resolve_repo_wants_an_absolute_path(repo: Path) -> None:
    with raises("bad_request"):
        git.resolve_repo("repo")
    with raises("bad_request"):
        git.resolve_repo("")


def test_resolve_repo_missing_path_is_repo_not_found(tmp_path: Path) -> None:
    with raises("repo_not_found"):
        git.resolve_repo(str(tmp_path / "nowhere"))


def test_resolve_repo_of_a_plain_directory_or_file_is_not_a_git_repo(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with raises("not_a_git_repo"):
        git.resolve_repo(str(plain))
    (plain / "file").write_text("x")
    with raises("not_a_git_repo"):
        git.resolve_repo(str(plain / "file"))


def test_resolve_repo_inside_the_git_directory_is_not_a_git_repo(repo: Path) -> None:
    with raises("not_a_git_repo"):
        git.resolve_repo(str(repo / ".git"))


# --------------------------------------------------------------------------- commits and HEAD


def test_resolve_commit_peels_refs_to_commits(repo: Path) -> None:
    first = head(repo)
    run_git(repo, "tag", "-a", "-m", "annotated", "v1")
    second = commit_all(repo, "second")
    assert git.resolve_commit(repo, "HEAD") == second
    assert git.resolve_commit(repo, "main") == second
    assert git.resolve_commit(repo, "v1") == first
    assert git.resolve_commit(repo, "HEAD~1") == first
    assert git.resolve_commit(repo, first[:10]) == first


@pytest.mark.parametrize("ref", ["nope", "HEAD~9", "-h", "--all", "", "main\nHEAD", "HEAD^{tree}"])
def test_resolve_commit_refuses_what_is_not_a_commit(repo: Path, ref: str) -> None:
    with raises("bad_ref"):
        git.resolve_commit(repo, ref)


def test_resolve_commit_of_a_tree_id_is_bad_ref(repo: Path) -> None:
    with raises("bad_ref"):
        git.resolve_commit(repo, tree_of(repo, "HEAD"))


def test_resolve_commit_outside_a_repository(tmp_path: Path) -> None:
    with raises("not_a_git_repo"):
        git.resolve_commit(tmp_path, "HEAD")
    with raises("repo_not_found"):
        git.resolve_commit(tmp_path / "gone", "HEAD")


def test_head_state_on_a_branch_and_detached(repo: Path) -> None:
    assert git.head_state(repo) == (head(repo), "main")
    run_git(repo, "checkout", "-q", "-b", "feature/x")
    assert git.head_state(repo) == (head(repo), "feature/x")
    run_git(repo, "checkout", "-q", "--detach")
    assert git.head_state(repo) == (head(repo), None)


def test_head_state_is_not_confused_by_a_file_named_head(repo: Path) -> None:
    write(repo, "HEAD", "a file\n")
    assert git.head_state(repo) == (head(repo), "main")


def test_head_state_of_an_unborn_branch_is_bad_ref(tmp_path: Path) -> None:
    run_git(tmp_path, "init", "-q", "fresh")
    with raises("bad_ref"):
        git.head_state(tmp_path / "fresh")


# --------------------------------------------------------------------------- snapshot


def test_snapshot_errors(tmp_path: Path) -> None:
    with raises("repo_not_found"):
        gitsnapshot.snapshot(tmp_path / "gone", NO_CAP)
    with raises("not_a_git_repo"):
        gitsnapshot.snapshot(tmp_path, NO_CAP)


def test_snapshot_leaves_no_trace_in_the_session(repo: Path) -> None:
    write(repo, "README.md", "changed\n")
    write(repo, "new.txt", "new\n")
    before = (index_fingerprint(repo), status(repo), tree_state(repo))
    refs_before = run_git(repo, "for-each-ref")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    assert (index_fingerprint(repo), status(repo), tree_state(repo)) == before
    assert run_git(repo, "for-each-ref") == refs_before  # snapshot alone pins nothing
    assert commit_exists(repo, snap.worktree_sha)


def test_snapshot_ignores_a_git_environment_it_inherits(repo: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_repo(tmp_path / "other")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "stray-index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    assert snap.head_sha == head(repo)
    assert not (tmp_path / "stray-index").exists()


def test_commits_use_cairnds_identity_not_the_users(repo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # No user identity anywhere, and a config that would sign every commit.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    run_git(repo, "config", "commit.gpgsign", "true")
    run_git(repo, "config", "gpg.program", "false")
    write(repo, "x.txt", "x\n")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    assert git_text(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", snap.worktree_sha) == (
        "cairnd <cairnd@localhost>|cairnd <cairnd@localhost>")


def test_snapshot_skips_untracked_nested_repositories(repo: Path) -> None:
    nested = make_repo(repo / "vendor" / "lib")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    assert snap.skipped == ("vendor/lib",)
    assert snap.dirty
    assert tree_of(repo, snap.worktree_sha) == tree_of(repo, "HEAD")
    assert nested.exists()


def test_snapshot_of_a_file_replaced_by_a_directory(repo: Path, tmp_path: Path) -> None:
    (repo / "README.md").unlink()
    write(repo, "README.md/inside.txt", "now a directory\n")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    assert git_text(repo, "show", f"{snap.worktree_sha}:README.md/inside.txt") == "now a directory"


# --------------------------------------------------------------------------- parse_status


def test_parse_status_reads_every_record_kind() -> None:
    oid = "1" * 40
    raw = b"\0".join([
        f"# branch.oid {oid}".encode(), b"# branch.head topic", b"# branch.upstream origin/topic",
        b"1 M. N... 100644 100644 100644 aa bb staged only",
        b"1 .M N... 100644 100644 100644 aa bb worktree\nchange",
        b"1 .D N... 100644 100644 000000 aa bb gone",
        b"2 R. N... 100644 100644 100644 aa bb R100 new name", b"old name",
        b"2 RM N... 100644 100644 100644 aa bb R100 moved+edited", b"was",
        b"u UU N... 100644 100644 100644 100644 aa bb cc both changed",
        b"? untracked file", b"? nested/repo/", b"! ignored.log", b"",
    ])
    scan = gitsnapshot.parse_status(raw)
    assert (scan.head_sha, scan.branch, scan.changed) == (oid, "topic", True)
    assert scan.worktree_paths == (b"worktree\nchange", b"gone", b"moved+edited", b"both changed",
                                   b"untracked file")
    assert scan.nested_repos == (b"nested/repo",)


def test_parse_status_clean_detached_and_unborn() -> None:
    clean = gitsnapshot.parse_status(b"# branch.oid " + b"2" * 40 + b"\0# branch.head (detached)\0")
    assert (clean.head_sha, clean.branch, clean.changed, clean.worktree_paths) == ("2" * 40, None, False, ())
    unborn = gitsnapshot.parse_status(b"# branch.oid (initial)\0# branch.head main\0")
    assert (unborn.head_sha, unborn.branch) == (None, "main")


# --------------------------------------------------------------------------- refs


def test_pin_list_and_delete_refs(repo: Path) -> None:
    sha = head(repo)
    gitrefs.pin(repo, "refs/cairnd/s1/0", sha)
    gitrefs.pin(repo, "refs/cairnd/s1/1", sha)
    gitrefs.pin(repo, "refs/cairnd/s10/0", sha)
    assert gitrefs.list_refs(repo, "refs/cairnd/s1/") == {"refs/cairnd/s1/0": sha, "refs/cairnd/s1/1": sha}
    assert gitrefs.delete_refs(repo, "refs/cairnd/s1/") == ["refs/cairnd/s1/0", "refs/cairnd/s1/1"]
    assert gitrefs.list_refs(repo, "refs/cairnd/") == {"refs/cairnd/s10/0": sha}
    assert gitrefs.delete_refs(repo, "refs/cairnd/s1/") == []


def test_pin_moves_an_existing_ref(repo: Path) -> None:
    first = head(repo)
    second = commit_all(repo, "second")
    gitrefs.pin(repo, "refs/cairnd/s1/0", first)
    gitrefs.pin(repo, "refs/cairnd/s1/0", second)
    assert gitrefs.list_refs(repo, "refs/cairnd/s1") == {"refs/cairnd/s1/0": second}


def test_refs_outside_cairnds_namespace_are_refused(repo: Path) -> None:
    with raises("bad_ref"):
        gitrefs.pin(repo, "refs/heads/main", head(repo))
    with raises("bad_ref"):
        gitrefs.delete_refs(repo, "refs/heads/")
    with raises("bad_ref"):
        gitrefs.list_refs(repo, "refs/")
    assert head_and_branch(repo)[1] == "main"


def test_pin_of_a_missing_object_is_commit_missing(repo: Path) -> None:
    with raises("commit_missing"):
        gitrefs.pin(repo, "refs/cairnd/s1/0", "0" * 40)
    with raises("commit_missing"):
        gitrefs.pin(repo, "refs/cairnd/s1/0", "HEAD")


def test_bad_ref_name_is_git_failed(repo: Path) -> None:
    with raises("git_failed") as caught:
        gitrefs.pin(repo, "refs/cairnd/s1/bad name", head(repo))
    assert "update-ref" in str(caught.value)


# --------------------------------------------------------------------------- worktrees


def test_add_worktree_checks_out_a_detached_commit(repo: Path, tmp_path: Path) -> None:
    first = head(repo)
    write(repo, "later.txt", "later\n")
    commit_all(repo, "later")
    session = tmp_path / "state" / "worktrees" / "s1" / "repo"
    gitworktree.add_worktree(repo, session, first)
    assert head_and_branch(session) == (first, None)
    assert not (session / "later.txt").exists()
    assert (session / "src" / "app.py").read_text() == "print('hi')\n"
    assert status(session) == b""


def test_worktree_records_cairnd_writes_are_ones_git_knows(repo: Path, tmp_path: Path) -> None:
    sessions = [tmp_path / "state" / "worktrees" / f"s{i}" / "repo" for i in range(12)]
    with ThreadPoolExecutor(4) as pool:  # no lock: each record appears whole, under a name of its own
        list(pool.map(lambda path: gitworktree.add_worktree(repo, path, head(repo)), sessions))
    assert sorted(list_worktrees(repo)) == sorted([repo, *sessions])
    records = sorted((repo / ".git" / "worktrees").iterdir())
    assert len(records) == 12 and all(r.name.startswith("cairnd-") for r in records)
    assert not any((r / "locked").exists() for r in records)
    assert not list((repo / ".git").glob("cairnd-worktree-*"))  # nothing left aside
    run_git(repo, "worktree", "prune")
    run_git(repo, "gc", "-q", "--prune=now")  # reads every worktree's HEAD and index
    assert sorted(list_worktrees(repo)) == sorted([repo, *sessions])
    assert head_and_branch(sessions[3]) == (head(repo), None) and status(sessions[3]) == b""
    gitworktree.remove_worktree(repo, sessions[3])
    assert not sessions[3].exists() and sessions[3] not in list_worktrees(repo)


def test_add_worktree_a_bare_repository(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source")
    bare = tmp_path / "bare.git"
    run_git(tmp_path, "clone", "-q", "--bare", str(source), str(bare))
    session = tmp_path / "session"
    gitworktree.add_worktree(bare, session, head(source))
    assert (session / "README").read_text() == "hello\n"
    assert list_worktrees(bare) == [session]


def test_hooks_never_run(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    gitworktree.add_worktree(repo, tmp_path / "a", head(repo))
    write(repo, "x.txt", "x\n")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    gitworktree.add_worktree(repo, tmp_path / "b", snap.head_sha, snap.worktree_sha, snap.index_tree)
    assert not marker.exists()


def test_add_worktree_where_something_is_in_the_way_is_git_failed(repo: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    write(target, "keep.txt", "mine\n")
    with raises("git_failed") as caught:
        gitworktree.add_worktree(repo, target, head(repo))
    assert "already exists" in str(caught.value)
    assert (target / "keep.txt").read_text() == "mine\n"
    assert list_worktrees(repo) == [repo]


def test_add_worktree_restores_files_index_and_head(repo: Path, tmp_path: Path) -> None:
    write(repo, "README.md", "staged\n")
    run_git(repo, "add", "README.md")
    write(repo, "README.md", "staged then edited\n")
    write(repo, "tool.sh", "#!/bin/sh\n", executable=True)
    os.symlink("README.md", repo / "link")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    fork = tmp_path / "fork"
    gitworktree.add_worktree(repo, fork, snap.head_sha, snap.worktree_sha, snap.index_tree)
    assert tree_state(fork) == tree_state(repo)
    assert index_state(fork) == index_state(repo)
    assert head_and_branch(fork) == (snap.head_sha, None)
    assert status(fork) == status(repo)


def test_add_worktree_from_head_only(repo: Path, tmp_path: Path) -> None:
    write(repo, "README.md", "uncommitted\n")
    fork = tmp_path / "fork"
    gitworktree.add_worktree(repo, fork, head(repo))
    assert (fork / "README.md").read_text() == "hello\n"
    assert status(fork) == b""


def test_restore_with_no_index_tree_gives_heads_index(repo: Path, tmp_path: Path) -> None:
    write(repo, "README.md", "edited\n")
    run_git(repo, "add", "README.md")
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    fork = tmp_path / "fork"
    gitworktree.add_worktree(repo, fork, snap.head_sha, snap.worktree_sha, None)
    assert (fork / "README.md").read_text() == "edited\n"
    assert git_text(fork, "write-tree") == tree_of(repo, "HEAD")
    assert status(fork) == b" M README.md\0"


def test_add_worktree_with_missing_objects_is_commit_missing(repo: Path, tmp_path: Path) -> None:
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    fork = tmp_path / "fork"
    missing = "0" * 40
    for args in [(missing, snap.worktree_sha, snap.index_tree), (snap.head_sha, missing, snap.index_tree),
                 (snap.head_sha, snap.worktree_sha, missing), (snap.head_sha, snap.index_tree, None),
                 ("not-an-id", None, None), (snap.head_sha, "HEAD", None)]:
        with raises("commit_missing"):
            gitworktree.add_worktree(repo, fork, *args)
        assert not fork.exists()
    assert list_worktrees(repo) == [repo]


def test_add_worktree_of_objects_from_another_repository(repo: Path, tmp_path: Path) -> None:
    other = make_repo(tmp_path / "other", {"other.txt": "elsewhere\n"})
    with raises("commit_missing") as caught:
        gitworktree.add_worktree(repo, tmp_path / "fork", head(other))
    assert head(other) in str(caught.value)


def test_remove_worktree_with_changes_twice_and_after_it_vanished(repo: Path, tmp_path: Path) -> None:
    session = tmp_path / "s1"
    gitworktree.add_worktree(repo, session, head(repo))
    write(session, "README.md", "changed\n")
    write(session, "untracked.txt", "u\n")
    write(session, "debug.log", "ignored\n")
    run_git(repo, "worktree", "lock", str(session))
    gitworktree.remove_worktree(repo, session)
    assert not session.exists()
    assert list_worktrees(repo) == [repo]
    gitworktree.remove_worktree(repo, session)

    gone = tmp_path / "s2"
    gitworktree.add_worktree(repo, gone, head(repo))
    shutil.rmtree(gone)
    assert gone in list_worktrees(repo)
    gitworktree.remove_worktree(repo, gone)
    assert list_worktrees(repo) == [repo]


def test_remove_worktree_of_a_repository_that_is_gone(tmp_path: Path) -> None:
    with raises("repo_not_found"):
        gitworktree.remove_worktree(tmp_path / "gone", tmp_path / "gone-session")


def test_snapshot_from_a_subdirectory_covers_the_whole_tree(repo: Path) -> None:
    write(repo, "top.txt", "at the top\n")
    write(repo, "src/inner.txt", "inside\n")
    snap = gitsnapshot.snapshot(repo / "src", NO_CAP)
    assert git_text(repo, "show", f"{snap.worktree_sha}:top.txt") == "at the top"
    assert git_text(repo, "show", f"{snap.worktree_sha}:src/inner.txt") == "inside"


def test_snapshot_of_a_bare_repository_is_not_a_git_repo(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "bare.git")
    with raises("not_a_git_repo"):
        gitsnapshot.snapshot(bare, NO_CAP)


def test_worktrees_snapshots_and_refs_in_parallel_threads(repo: Path, tmp_path: Path) -> None:
    # The daemon runs these in worker threads, several at once on one repository.
    write(repo, "shared.txt", "base\n")
    snap = gitsnapshot.snapshot(repo, NO_CAP)

    def one_session(n: int) -> tuple[int, str]:
        session = tmp_path / "worktrees" / f"s{n}" / "repo"
        gitworktree.add_worktree(repo, session, snap.head_sha, snap.worktree_sha, snap.index_tree)
        write(session, "mine.txt", f"session {n}\n")
        mine = gitsnapshot.snapshot(session, NO_CAP)
        gitrefs.pin(session, f"refs/cairnd/s{n}/0", mine.worktree_sha)
        return n, mine.worktree_sha

    with ThreadPoolExecutor(max_workers=4) as pool:
        made = dict(pool.map(one_session, range(6)))
    for n, sha in made.items():
        assert git_text(repo, "show", f"{sha}:mine.txt") == f"session {n}"
        assert gitrefs.list_refs(repo, f"refs/cairnd/s{n}/") == {f"refs/cairnd/s{n}/0": sha}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: gitworktree.remove_worktree(repo, tmp_path / "worktrees" / f"s{n}" / "repo"), range(6)))
        list(pool.map(lambda n: gitrefs.delete_refs(repo, f"refs/cairnd/s{n}/"), range(6)))
    assert list_worktrees(repo) == [repo]
    assert gitrefs.list_refs(repo, "refs/cairnd/") == {}


def test_every_reader_and_writer_of_worktree_records_takes_the_repositorys_one_lock(repo: Path, tmp_path: Path) -> None:
    """git commands that read every worktree's record die on one `worktree add` is
    half-way through writing. The lock is the repository's whichever of its worktrees
    names it, and `worktree list` (checked_out_branches) and repack wait for it as
    worktree add and remove do."""
    snap = gitsnapshot.snapshot(repo, NO_CAP)
    linked = tmp_path / "linked" / "repo"
    gitworktree.add_worktree(repo, linked, snap.head_sha)
    assert git.records_lock(linked) is git.records_lock(repo) is git.records_lock(repo.parent / "." / repo.name)
    for reader in (lambda: checked_out_branches(linked), lambda: gitrefs.repack_incremental(linked),
                   lambda: gitworktree.remove_worktree(repo, linked)):
        with ThreadPoolExecutor(max_workers=1) as pool:
            with git.worktree_records_lock(repo):
                running = pool.submit(reader)
                with pytest.raises(TimeoutError):
                    running.result(timeout=0.5)  # still waiting for the lock
            running.result()
    assert list_worktrees(repo) == [repo]


def test_index_copies_left_by_a_killed_process_are_swept(tmp_path: Path) -> None:
    stale = tmp_path / f"{git.INDEX_COPY_PREFIX}old"
    stale.write_bytes(b"DIRC")
    fresh = tmp_path / f"{git.INDEX_COPY_PREFIX}in-use"
    fresh.write_bytes(b"DIRC")
    os.utime(fresh, (0, 0))  # a copy keeps its index's (old) mtime; its ctime is what counts
    other = tmp_path / "unrelated"
    other.write_bytes(b"")
    assert git.sweep_index_copies(tmp_path, older_than=3600) == 0
    assert git.sweep_index_copies(tmp_path, older_than=-1) == 2
    assert not stale.exists() and not fresh.exists() and other.exists()
