"""The creating -> ready transaction (creation.py): a session is committed whole, or every
part of it (worktree, refs, log, row) is gone; the first log is the source's kept bytes,
byte for byte, then the new entries. Real git, real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairnd.git import worktree as gitworktree
from cairnd.checkpoints.checkpoint import take_checkpoint
from cairnd.sessions.creation import creating, roll_back, write_initial_log
from cairnd.sessionlog.entries import checkpoint_entry, envelope_line
from cairnd.state.layout import StateLayout
from cairnd.state.registry import Registry
from gitrepos import git_text, head, list_worktrees

CAP = 1 << 20


@pytest.fixture
def layout(tmp_path: Path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.create()
    return layout


pytestmark = pytest.mark.repo(files={"a.txt": "a\n"})


def fields(layout: StateLayout, repo: Path, session_id: str = "s1") -> dict:
    return dict(id=session_id, title="t", repo=repo, worktree=layout.worktree_parent(session_id) / "repo",
                in_place=False, agent="reference", parent_id=None, root_id=session_id, turns=0, request_id="r1")


def make_everything(layout: StateLayout, made) -> None:
    row = made.row
    gitworktree.add_worktree(row.repo, row.worktree, head(row.repo))
    baseline = take_checkpoint(row.id, row.worktree, 0, CAP)
    write_initial_log(layout, row.id, None, 0, [checkpoint_entry(baseline)])


def assert_no_trace(layout: StateLayout, registry: Registry, repo: Path) -> None:
    assert registry.sessions(("creating", "ready", "deleted")) == []
    assert list(layout.worktrees.iterdir()) == [] and list(layout.sessions.iterdir()) == []
    assert list_worktrees(repo) == [repo]
    assert git_text(repo, "for-each-ref", "refs/cairnd/") == ""


def test_a_committed_session_is_ready_with_its_result(layout: StateLayout, repo: Path) -> None:
    registry = Registry(layout.db)
    with creating(layout, registry, **fields(layout, repo)) as made:
        assert registry.get("s1").state == "creating"
        make_everything(layout, made)
        made.commit({"session": "s1"})
    row = registry.get("s1")
    assert row.state == "ready" and row.result == {"session": "s1"} and registry.by_request("r1").id == "s1"
    assert (row.worktree / "a.txt").read_text() == "a\n" and layout.log_path("s1").exists()


def test_a_failure_before_the_commit_leaves_no_trace(layout: StateLayout, repo: Path) -> None:
    registry = Registry(layout.db)
    with pytest.raises(OSError, match="injected"):
        with creating(layout, registry, **fields(layout, repo)) as made:
            make_everything(layout, made)
            raise OSError("injected")
    assert_no_trace(layout, registry, repo)


def test_a_body_that_never_commits_is_rolled_back(layout: StateLayout, repo: Path) -> None:
    registry = Registry(layout.db)
    with creating(layout, registry, **fields(layout, repo)) as made:
        make_everything(layout, made)
    assert_no_trace(layout, registry, repo)


def test_roll_back_is_safe_on_any_prefix_and_twice(layout: StateLayout, repo: Path) -> None:
    registry = Registry(layout.db)
    registry.begin_session(**fields(layout, repo))
    row = registry.get("s1")
    gitworktree.add_worktree(repo, row.worktree, head(repo))  # a crash came after the worktree only
    roll_back(layout, registry, row)
    roll_back(layout, registry, row)
    assert_no_trace(layout, registry, repo)


def test_the_first_log_is_the_kept_bytes_then_the_entries(layout: StateLayout, tmp_path: Path) -> None:
    source = tmp_path / "parent.ndjson"
    kept = b'{"type":"notification","timestamp":"x","notification":{"id":1,  "result":{}}}\n'
    source.write_bytes(kept + b"not kept\n")
    entry = checkpoint_entry({"turns": 1})
    log = write_initial_log(layout, "s2", source, len(kept), [entry])
    assert log == layout.log_path("s2")
    data = log.read_bytes()
    assert data.startswith(kept) and data[len(kept):].endswith(envelope_line(entry)[-60:])
    assert not layout.log_tmp_path("s2").exists()
