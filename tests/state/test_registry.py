"""The registry: sessions and lineage in SQLite, creation journalled by state."""

from __future__ import annotations

import time
from pathlib import Path

from cairnd.ids import is_session_id, new_session_id
from cairnd.state.registry import ForkRow, Registry


def begin(registry: Registry, session_id: str, **kw) -> None:
    fields = dict(title="t", repo=Path("/r"), worktree=Path("/w"), in_place=False, agent="reference",
                  parent_id=None, root_id=session_id, turns=0, request_id=None)
    fields.update(kw)
    registry.begin_session(id=session_id, **fields)


def test_a_session_is_creating_until_committed(tmp_path: Path):
    registry = Registry(tmp_path / "cairnd.db")
    begin(registry, "s1", request_id="r1")
    assert registry.get("s1").state == "creating"
    assert registry.by_request("r1") is None
    assert registry.sessions() == []
    registry.commit_session("s1", {"session": "s1"})
    row = registry.get("s1")
    assert row.state == "ready" and row.result == {"session": "s1"}
    assert registry.by_request("r1").id == "s1"


def test_forget_creating_only_forgets_unfinished_sessions(tmp_path: Path):
    registry = Registry(tmp_path / "cairnd.db")
    begin(registry, "s1")
    begin(registry, "s2")
    registry.commit_session("s2", {})
    registry.forget_creating("s1")
    registry.forget_creating("s2")
    assert registry.get("s1") is None and registry.get("s2").state == "ready"


def test_lineage_survives_the_parent(tmp_path: Path):
    registry = Registry(tmp_path / "cairnd.db")
    begin(registry, "p", title="Parent")
    registry.commit_session("p", {})
    begin(registry, "f", title="Parent (fork 1)", parent_id="p", root_id="p")
    registry.commit_session("f", {}, ForkRow("f", "p", "Parent", "p", 2, "a" * 40, "b" * 40, time.time()))
    registry.mark_deleted("p")
    assert registry.get("p").state == "deleted" and registry.get("p").deleted_at
    fork = registry.fork_of("f")
    assert (fork.parent_title, fork.user_message_index) == ("Parent", 2)
    assert sorted(registry.titles_in_root("p")) == ["Parent", "Parent (fork 1)"]


def test_session_ids_are_valid_and_time_ordered():
    ids = [new_session_id(now_ns=n * 1_000_000_000) for n in range(1, 50)]
    assert all(is_session_id(i) and len(i) == 26 for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
