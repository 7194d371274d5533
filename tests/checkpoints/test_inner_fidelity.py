"""The fidelity property (random operations, every step checkpointed by the daemon's
checkpointer and restored into a fork) with repositories inside the worktree: the
operations land in the superproject, in its submodule, or in a nested repository the
"agent" made, and each fork must hold every file, each index and each HEAD exactly."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.checkpoints.watch import WatchSet
from cairnd.git import worktree as gitworktree
from cairnd.state.layout import StateLayout
from gitrepos import commit_all, git, git_text, index_state, make_repo, write
import pytest

import test_checkpoint
from test_checkpoint import GITIGNORE, NO_CAP, OPS, apply_op

# Where each random operation happens. `stage_all` in the superproject is left out once a
# nested repository exists: it would record the nested repository as a gitlink with no
# .gitmodules entry, which is neither a submodule nor a nested repository (docs/submodules.md).
PLACES = ["super", "lib", "lib", "nested"]


def files_everywhere(root: Path) -> dict[bytes, tuple[str, bytes]]:
    """Every non-ignored file under `root`, inner repositories included, outside every `.git`."""
    found: dict[bytes, tuple[str, bytes]] = {}
    ignored_by_super = set(git(root, "ls-files", "-z", "-o", "-i", "--exclude-standard").split(b"\0"))
    for inner in ("lib", "vendor/x"):  # and those its own repository ignores
        if (root / inner / ".git").exists():
            ignored_by_super |= {inner.encode() + b"/" + p for p in
                                 git(root / inner, "ls-files", "-z", "-o", "-i", "--exclude-standard").split(b"\0") if p}
    base = os.fsencode(root)
    for directory, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if d != b".git"]
        for name in names:
            if name == b".git":
                continue
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, base)
            if rel in ignored_by_super:
                continue
            st_ = os.lstat(full)
            if stat.S_ISLNK(st_.st_mode):
                found[rel] = ("120000", os.readlink(full))
            else:
                found[rel] = ("100755" if st_.st_mode & stat.S_IXUSR else "100644", open(full, "rb").read())
    return found


def repo_state(worktree: Path) -> tuple[str, list]:
    return git_text(worktree, "rev-parse", "HEAD"), index_state(worktree)


def existing_in_own_repo(worktree: Path) -> list[str]:
    """The files of one repository (not of those inside it): what `apply_op` picks from."""
    out = git(worktree, "ls-files", "-z", "-c", "-o", "--exclude-standard")
    names = dict.fromkeys(os.fsdecode(p) for p in out.split(b"\0") if p)
    return sorted(n for n in names if (worktree / n).is_symlink() or (worktree / n).is_file())


STEPS: list[int] = []


@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def check_inner_repositories_restore_exactly(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="cairnd-inner-fidelity-") as tmp:
        root = Path(tmp)
        lib = make_repo(root / "lib", {"l.txt": "lib\n", "src/x.py": "x\n"}, gitignore=GITIGNORE)
        source = make_repo(root / "super", {"a.txt": "a\n"}, gitignore=GITIGNORE)
        git(source, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
        commit_all(source, "lib")
        layout = StateLayout(root / "state")
        layout.create()
        worktree = layout.worktree_parent("fid") / "super"
        gitworktree.add_worktree(source, worktree, git_text(source, "rev-parse", "HEAD"),
                                 inner_map=layout.inner_map("fid"))
        checkpoints = Checkpointer(WatchSet(), root / "state" / "checkpoint-index", layout)
        nested = worktree / "vendor" / "x"
        try:
            checkpoints.take("fid", worktree, 0, NO_CAP)
            for step in range(data.draw(st.integers(min_value=6, max_value=8), label="steps")):
                place = data.draw(st.sampled_from(PLACES), label="where")
                if place == "nested" and not nested.exists():
                    nested.mkdir(parents=True)
                    git(nested, "init", "-q", "-b", "trunk")
                    write(nested, "n.txt", "n\n")
                    commit_all(nested, "n")
                    what = "nested repository made"
                else:
                    where = {"super": worktree, "lib": worktree / "lib", "nested": nested}[place]
                    ops = [op for op in OPS if not (place == "super" and op == "stage_all" and nested.exists())]
                    test_checkpoint.OPS = ops  # apply_op draws from it
                    try:
                        what = apply_op(data, where, step)
                    except AssertionError as refused:  # git add of a tracked file in an ignored directory
                        if "ignored by one of your .gitignore" not in str(refused):
                            raise
                        what = "refused"
                inner = [p for p in ("lib", "vendor/x") if (worktree / p / ".git").exists()]
                expected = (files_everywhere(worktree), repo_state(worktree),
                            [repo_state(worktree / p) for p in inner])
                params = checkpoints.take("fid", worktree, step + 1, NO_CAP)
                assert params["skipped"] == [], f"{params['skipped']} after {place} {what}"
                fork = layout.worktree_parent(f"fork{step}") / "super"
                gitworktree.add_worktree(source, fork, params["headSha"], params["worktreeSha"], params["indexTree"],
                                         inner_map=layout.inner_map(f"fork{step}"), checkpoint=params)
                got = (files_everywhere(fork), repo_state(fork), [repo_state(fork / p) for p in inner])
                assert got[0] == expected[0], f"files differ after {place} {what}"
                assert got[1:] == expected[1:], f"index or HEAD differ after {place} {what}"
                STEPS.append(step)
        finally:
            checkpoints.close()


@pytest.mark.slow
def test_inner_repositories_restore_exactly_after_random_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    STEPS.clear()
    monkeypatch.setattr(test_checkpoint, "existing", existing_in_own_repo)
    monkeypatch.setattr(test_checkpoint, "OPS", OPS)
    check_inner_repositories_restore_exactly()
    assert len(STEPS) >= 25
