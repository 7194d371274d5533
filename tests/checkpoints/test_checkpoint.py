"""SPEC section 3, `_posthog/agent_checkpoint`: a checkpoint records the whole git state of a
session worktree without touching it, and restoring it into a new worktree gives back
exactly the files and index of that moment (SPEC section 5).

The fidelity test drives random sequences of working-tree changes and checks every step.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairnd.git import run as git
from cairnd.git import refs as gitrefs
from cairnd.git import worktree as gitworktree
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.errors import CairnError
from cairnd.checkpoints.watch import IN_Q_OVERFLOW, WatchSet
from cairnd.checkpoints.checkpoint import (
    checkpoint_ref,
    session_ref_prefix,
    take_checkpoint,
)
from gitrepos import (
    commit_exists,
    all_files,
    commit_all,
    detached_head,
    git as run_git,
    git_text,
    head,
    head_and_branch,
    index_fingerprint,
    index_state,
    make_repo,
    stage,
    symlink,
    tree_of,
    tree_state,
    write,
)

NO_CAP = 1 << 40
GITIGNORE = "*.log\nbuild/\n"
PARAM_KEYS = ["sessionId", "turns", "headSha", "branch", "indexTree", "worktreeSha", "ref", "dirty", "skipped"]


def untouched_state(worktree: Path) -> tuple[object, ...]:
    """Everything a checkpoint must leave alone: every file under the worktree, ignored or
    not (bytes, mode, mtime, inode), the index file, HEAD and the branch."""
    files = {}
    for path in all_files(worktree):
        full = os.path.join(os.fsencode(worktree), path)
        st_ = os.lstat(full)
        content = os.readlink(full) if os.path.islink(full) else Path(os.fsdecode(full)).read_bytes()
        files[path] = (content, st_.st_mode, st_.st_mtime_ns, st_.st_ino)
    return files, index_fingerprint(worktree), head_and_branch(worktree)


def restore_into(repo: Path, target: Path, params: dict[str, object]) -> Path:
    gitworktree.add_worktree(repo, target, params["headSha"], params["worktreeSha"],  # type: ignore[arg-type]
                             params["indexTree"])  # type: ignore[arg-type]
    return target


pytestmark = pytest.mark.repo(files={"README.md": "hello\n", "src/app.py": "print('hi')\n"}, gitignore=GITIGNORE)


# --------------------------------------------------------------------------- the params


def test_params_are_exactly_the_spec_fields(repo: Path) -> None:
    params = take_checkpoint("s1", repo, 0, NO_CAP)
    assert list(params) == PARAM_KEYS
    assert params["sessionId"] == "s1"
    assert params["turns"] == 0
    assert params["headSha"] == head(repo)
    assert params["branch"] == "main"
    assert params["ref"] == "refs/cairnd/s1/0"
    assert params["skipped"] == []
    assert git.is_object_id(params["worktreeSha"]) and git.is_object_id(params["indexTree"])


def test_clean_tree_is_not_dirty_and_its_snapshot_is_heads_tree(repo: Path) -> None:
    params = take_checkpoint("s1", repo, 0, NO_CAP)
    assert params["dirty"] is False
    assert tree_of(repo, params["worktreeSha"]) == tree_of(repo, "HEAD")
    assert params["indexTree"] == tree_of(repo, "HEAD")
    assert git_text(repo, "rev-parse", f"{params['worktreeSha']}^") == head(repo)


def test_the_ref_pins_the_snapshot_against_gc(repo: Path) -> None:
    write(repo, "scratch.txt", "only in the working tree\n")
    params = take_checkpoint("s1", repo, 3, NO_CAP)
    assert git_text(repo, "rev-parse", "refs/cairnd/s1/3") == params["worktreeSha"]
    run_git(repo, "gc", "-q", "--prune=now")
    assert commit_exists(repo, params["worktreeSha"])
    assert gitrefs.list_refs(repo, session_ref_prefix("s1")) == {checkpoint_ref("s1", 3): params["worktreeSha"]}


def _staged(repo: Path) -> None:
    write(repo, "README.md", "staged\n")
    stage(repo, "README.md")


@pytest.mark.parametrize("change, index_ref", [
    (lambda repo: None, False),  # the index is HEAD's tree
    (lambda repo: write(repo, "notes.txt", "untracked\n"), False),  # ... still HEAD's
    (_staged, False),  # the index is the snapshot's tree
    (lambda repo: (_staged(repo), write(repo, "README.md", "unstaged\n")), True),
    (lambda repo: (_staged(repo), write(repo, "notes.txt", "untracked\n")), True),
])
def test_an_index_tree_nothing_else_reaches_gets_its_own_ref(repo: Path, change, index_ref: bool) -> None:
    """The index tree is kept alive by the snapshot commit (its tree) or its parent
    (HEAD's tree); only when it is neither does it get `<turns>-index`, and that ref
    outlives `git gc --prune=now` with the staged blob."""
    change(repo)
    params = take_checkpoint("s1", repo, 2, NO_CAP)
    expected = {checkpoint_ref("s1", 2): params["worktreeSha"]}
    if index_ref:
        expected[checkpoint_ref("s1", 2) + "-index"] = params["indexTree"]
    assert gitrefs.list_refs(repo, session_ref_prefix("s1")) == expected
    write(repo, "README.md", "moved on\n")
    stage(repo, "README.md")  # the live index no longer holds the staged blob
    run_git(repo, "gc", "-q", "--prune=now")
    assert git_text(repo, "ls-tree", "-r", params["indexTree"])


def test_untracked_file_makes_it_dirty_and_is_in_the_snapshot(repo: Path) -> None:
    write(repo, "notes.txt", "new\n")
    params = take_checkpoint("s1", repo, 1, NO_CAP)
    assert params["dirty"] is True
    assert git_text(repo, "show", f"{params['worktreeSha']}:notes.txt") == "new"
    assert params["indexTree"] == tree_of(repo, "HEAD")  # nothing staged


def test_staged_change_alone_makes_it_dirty(repo: Path) -> None:
    write(repo, "README.md", "staged\n")
    stage(repo, "README.md")
    write(repo, "README.md", "hello\n")  # working tree back to HEAD's content
    params = take_checkpoint("s1", repo, 1, NO_CAP)
    assert params["dirty"] is True
    assert tree_of(repo, params["worktreeSha"]) == tree_of(repo, "HEAD")
    assert params["indexTree"] != tree_of(repo, "HEAD")


def test_ignored_files_are_not_part_of_the_state(repo: Path, tmp_path: Path) -> None:
    write(repo, "debug.log", "noise\n")
    write(repo, "build/out.o", b"\0\1")
    params = take_checkpoint("s1", repo, 1, NO_CAP)
    assert params["dirty"] is False
    assert tree_of(repo, params["worktreeSha"]) == tree_of(repo, "HEAD")
    fork = restore_into(repo, tmp_path / "fork", params)
    assert not (fork / "debug.log").exists() and not (fork / "build").exists()


def test_big_files_are_skipped_and_tracked_ones_keep_their_indexed_version(repo: Path, tmp_path: Path) -> None:
    write(repo, "data/huge.bin", b"x" * 5000)
    write(repo, "README.md", "y" * 5000)
    write(repo, "small.txt", "fits\n")
    params = take_checkpoint("s1", repo, 1, 4096)
    assert params["skipped"] == ["README.md", "data/huge.bin"]
    assert params["dirty"] is True
    fork = restore_into(repo, tmp_path / "fork", params)
    assert (fork / "README.md").read_text() == "hello\n"
    assert not (fork / "data").exists()
    assert (fork / "small.txt").read_text() == "fits\n"
    # A big file already staged is in the index, so its content is kept, not skipped.
    stage(repo, "README.md")
    params = take_checkpoint("s1", repo, 2, 4096)
    assert params["skipped"] == ["data/huge.bin"]
    assert git_text(repo, "show", f"{params['worktreeSha']}:README.md") == "y" * 5000


def test_file_names_come_back_as_text_in_skipped(repo: Path) -> None:
    write(repo, "dír with space/big\nname.bin", b"z" * 100)
    params = take_checkpoint("s1", repo, 1, 10)
    assert params["skipped"] == ["dír with space/big\nname.bin"]


def test_commits_between_checkpoints(repo: Path, tmp_path: Path) -> None:
    first = take_checkpoint("s1", repo, 0, NO_CAP)
    write(repo, "feature.py", "x = 1\n")
    committed = commit_all(repo, "feature")
    write(repo, "feature.py", "x = 2\n")
    second = take_checkpoint("s1", repo, 1, NO_CAP)
    assert first["headSha"] != second["headSha"] == committed
    assert git_text(repo, "rev-parse", f"{second['worktreeSha']}^") == committed
    fork = restore_into(repo, tmp_path / "fork0", first)
    assert not (fork / "feature.py").exists()
    fork = restore_into(repo, tmp_path / "fork1", second)
    assert (fork / "feature.py").read_text() == "x = 2\n"
    assert head(fork) == committed
    assert gitrefs.list_refs(repo, session_ref_prefix("s1")) == {
        "refs/cairnd/s1/0": first["worktreeSha"], "refs/cairnd/s1/1": second["worktreeSha"]}


def test_detached_head_has_no_branch(repo: Path) -> None:
    run_git(repo, "checkout", "-q", "--detach")
    params = take_checkpoint("s1", repo, 0, NO_CAP)
    assert params["branch"] is None
    assert params["headSha"] == head(repo)


def test_checkpoint_of_a_linked_worktree_pins_in_the_shared_repository(repo: Path, tmp_path: Path) -> None:
    session = tmp_path / "state" / "worktrees" / "s2" / "repo"
    gitworktree.add_worktree(repo, session, head(repo))
    write(session, "wip.txt", "work\n")
    params = take_checkpoint("s2", session, 0, NO_CAP)
    assert params["branch"] is None
    assert gitrefs.list_refs(repo, "refs/cairnd/s2/") == {"refs/cairnd/s2/0": params["worktreeSha"]}
    assert not (repo / "wip.txt").exists()


def test_conflicted_index_is_recorded_with_working_tree_content(repo: Path, tmp_path: Path) -> None:
    run_git(repo, "checkout", "-q", "-b", "other")
    write(repo, "README.md", "theirs\n")
    commit_all(repo, "theirs")
    run_git(repo, "checkout", "-q", "main")
    write(repo, "README.md", "ours\n")
    commit_all(repo, "ours")
    proc_failed = False
    try:
        run_git(repo, "merge", "-q", "other")
    except AssertionError:
        proc_failed = True
    assert proc_failed, "the merge should conflict"
    before = untouched_state(repo)
    params = take_checkpoint("s1", repo, 1, NO_CAP)
    assert untouched_state(repo) == before
    conflicted = (repo / "README.md").read_bytes()
    fork = restore_into(repo, tmp_path / "fork", params)
    assert (fork / "README.md").read_bytes() == conflicted
    assert run_git(fork, "show", f"{params['indexTree']}:README.md") == conflicted


def test_unborn_head_is_bad_ref(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    run_git(empty, "init", "-q")
    write(empty, "a.txt", "a\n")
    with pytest.raises(CairnError) as caught:
        take_checkpoint("s1", empty, 0, NO_CAP)
    assert caught.value.code == "bad_ref"
    assert "no commit" in caught.value.message



def test_turns_must_be_a_count(repo: Path) -> None:
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError):
            take_checkpoint("s1", repo, bad, NO_CAP)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fidelity

# Names that stress quoting and encoding; "x.log" and "build/..." are ignored.
NAMES = [
    "a.txt", "b", "src/app.py", "src/new.py", "dir/sub/deep/file.md", "with space.txt",
    "dir with space/inner file", "ünïcødé.txt", "日本/語.txt", "new\nline", "-starts-with-dash",
    ".hidden", "tab\tname", "x.log", "build/out.o", "z/y/x/w/v.txt", "src", "a.txt.d/nested",
]
SYMLINK_TARGETS = ["a.txt", "../a.txt", "src", "nowhere/at/all", "日本"]
CONTENTS = st.one_of(
    st.text(max_size=40).map(str.encode),
    st.binary(max_size=64),
    st.just(b""),
    st.just(b"\0\1\2binary\xff\xfe"),
)
OPS = ["create", "create", "create", "modify", "modify", "delete", "delete", "rename", "rename", "chmod",
       "symlink", "stage", "stage", "stage_all", "modify_staged", "modify_staged", "commit", "detach", "branch", "track_ignored"]


def existing(worktree: Path) -> list[str]:
    return sorted(os.fsdecode(p) for p in tree_state(worktree))


def blocked(worktree: Path, rel: str) -> bool:
    """Whether writing `rel` would need a directory where a file is, or the reverse."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        ancestor = worktree.joinpath(*parts[:i])
        if ancestor.is_symlink() or (ancestor.exists() and not ancestor.is_dir()):
            return True
    target = worktree / rel
    return target.is_dir() and not target.is_symlink()


def apply_op(data: st.DataObject, worktree: Path, step: int) -> str:
    op = data.draw(st.sampled_from(OPS), label="op")
    files = existing(worktree)
    if op in ("modify", "delete", "rename", "chmod", "stage", "modify_staged") and not files:
        op = "create"
    if op == "create":
        rel = data.draw(st.sampled_from(NAMES), label="path")
        if blocked(worktree, rel):
            return f"create {rel!r} blocked"
        write(worktree, rel, data.draw(CONTENTS, label="content"), executable=data.draw(st.booleans()))
    elif op == "modify":
        rel = data.draw(st.sampled_from(files), label="path")
        if (worktree / rel).is_symlink():
            (worktree / rel).unlink()
        write(worktree, rel, data.draw(CONTENTS, label="content"),
              executable=os.access(worktree / rel, os.X_OK) if (worktree / rel).exists() else False)
    elif op == "delete":
        os.unlink(worktree / data.draw(st.sampled_from(files), label="path"))
    elif op == "rename":
        old = data.draw(st.sampled_from(files), label="path")
        new = data.draw(st.sampled_from(NAMES), label="to")
        if blocked(worktree, new) or new == old or (worktree / new).exists() or old.startswith(new + "/"):
            return f"rename {old!r} blocked"
        (worktree / new).parent.mkdir(parents=True, exist_ok=True)
        os.rename(worktree / old, worktree / new)
    elif op == "chmod":
        rel = data.draw(st.sampled_from(files), label="path")
        if not (worktree / rel).is_symlink():
            mode = os.stat(worktree / rel).st_mode
            os.chmod(worktree / rel, mode ^ 0o111)
    elif op == "symlink":
        rel = data.draw(st.sampled_from(NAMES), label="path")
        if blocked(worktree, rel):
            return f"symlink {rel!r} blocked"
        symlink(worktree, rel, data.draw(st.sampled_from(SYMLINK_TARGETS), label="target"))
    elif op == "stage":
        stage(worktree, data.draw(st.sampled_from(files), label="path"))
    elif op == "stage_all":
        run_git(worktree, "add", "-A")
    elif op == "modify_staged":
        rel = data.draw(st.sampled_from(files), label="path")
        if (worktree / rel).is_symlink():
            return f"modify_staged {rel!r} is a symlink"
        write(worktree, rel, data.draw(CONTENTS, label="staged"))
        stage(worktree, rel)
        write(worktree, rel, data.draw(CONTENTS, label="then"))
    elif op == "track_ignored":
        rel = data.draw(st.sampled_from(["x.log", "build/out.o"]), label="path")
        if blocked(worktree, rel):
            return f"track_ignored {rel!r} blocked"
        write(worktree, rel, data.draw(CONTENTS, label="content"))
        run_git(worktree, "add", "-f", "--", rel)  # tracked now, though its name is ignored
    elif op == "commit":
        run_git(worktree, "commit", "-q", "--allow-empty", "-m", f"step {step}")
    elif op == "detach":
        run_git(worktree, "checkout", "-q", "--detach")
    elif op == "branch":
        run_git(worktree, "checkout", "-q", "-B", f"b{step}")
    return op


# Changes the watch of a live session cannot have seen: made while cairnd was down (a
# restart: a new checkpointer and watch), or lost when the kernel's event queue
# overflowed (an overflow event, as the kernel queues it). Each forces the full scan.
UNSEEN = ["restart", "overflow", "none", "none", "none"]


def lose_events(data: st.DataObject, checkpoints: Checkpointer, root: Path) -> tuple[Checkpointer, str]:
    how = data.draw(st.sampled_from(UNSEEN), label="unseen")
    if how == "restart":
        checkpoints.close()
        return Checkpointer(WatchSet(), root / "indexes"), how
    if how == "overflow":
        assert checkpoints.watches is not None
        checkpoints.watches._dispatch(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
    return checkpoints, how


STEPS_SEEN: list[int] = []


@settings(max_examples=18, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def check_every_step_restores_exactly(data: st.DataObject) -> None:
    """Every step goes through the daemon's checkpointer (watching the worktree), so the
    snapshots built from the changed paths alone are checked as hard as full scans."""
    with tempfile.TemporaryDirectory(prefix="cairnd-fidelity-") as tmp:
        root = Path(tmp)
        repo = make_repo(root / "repo", {"a.txt": "a\n", "src/app.py": "print(1)\n"}, gitignore=GITIGNORE)
        checkpoints = Checkpointer(WatchSet(), root / "indexes")
        checkpoints.take("fid", repo, 0, NO_CAP)
        steps = data.draw(st.integers(min_value=10, max_value=13), label="steps")
        try:
            for step in range(steps):
                what = apply_op(data, repo, step)
                checkpoints, unseen = lose_events(data, checkpoints, root)
                what = f"{what} ({unseen})"
                before = untouched_state(repo)
                expected_files, expected_index = tree_state(repo), index_state(repo)
                params = checkpoints.take("fid", repo, step + 1, NO_CAP)
                assert untouched_state(repo) == before, f"checkpoint changed the source after {what}"
                assert (params["headSha"], params["branch"]) == before[2]
                assert params["skipped"] == []
                fork = restore_into(repo, root / "forks" / str(step) / "repo", params)
                assert tree_state(fork) == expected_files, f"files differ after {what}"
                assert index_state(fork) == expected_index, f"index differs after {what}"
                assert detached_head(fork) == params["headSha"]
                STEPS_SEEN.append(step)
                KINDS_SEEN.update(k for k, n in checkpoints.counts.items() if n)
        finally:
            checkpoints.close()


KINDS_SEEN: set[str] = set()


@pytest.mark.slow
def test_fidelity_every_step_restores_exactly() -> None:
    STEPS_SEEN.clear()
    KINDS_SEEN.clear()
    check_every_step_restores_exactly()
    assert len(STEPS_SEEN) >= 200
    assert {"full", "paths", "reused"} <= KINDS_SEEN, "every kind of snapshot was exercised"
