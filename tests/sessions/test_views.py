"""What ls/show/tree/status read: lineage trees (a deleted parent stays visible), files
changed between snapshots, and the daemon's lock read the way the daemon writes it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gitrepos import commit_all, make_repo, write

from cairnd.state.registry import ForkRow, SessionRow
from cairnd.state.statelock import daemon_pid
from cairnd.sessions.views import changed_paths, find_root, lineage_forest


def sha(ch: str) -> str:
    return ch * 40


# --------------------------------------------------------------------------- lineage_forest


def row(id: str, state: str = "ready", parent: str | None = None, created: float = 0.0,
        title: str | None = None) -> SessionRow:
    return SessionRow(id=id, state=state, title=title or id, repo=Path("/r"), worktree=Path("/w") / id,
                      in_place=False, agent="reference", parent_id=parent, root_id="a", turns=1,
                      request_id=None, result=None, created_at=created, updated_at=created, deleted_at=None)


def fork(id: str, parent: str, k: int, created: float, parent_title: str | None = None) -> ForkRow:
    return ForkRow(id=id, parent_id=parent, parent_title=parent_title or parent, root_id="a",
                   user_message_index=k, head_sha=sha("a"), worktree_sha=sha("b"), created_at=created)


def shape(nodes) -> list:
    return [(n.id, n.state, n.user_message_index, n.parent_exists, shape(n.children)) for n in nodes]


def test_lineage_forest_nests_forks_under_parents_oldest_first():
    sessions = [row("a", created=1), row("b", parent="a", created=2), row("c", parent="a", created=3),
                row("d", parent="b", created=4), row("z", created=5), row("x", state="creating", created=6)]
    forks = [fork("b", "a", 2, 2), fork("c", "a", 0, 3), fork("d", "b", 1, 4)]
    assert shape(lineage_forest(sessions, forks)) == [
        ("a", "ready", None, None, [
            ("b", "ready", 2, True, [("d", "ready", 1, True, [])]),
            ("c", "ready", 0, True, []),
        ]),
        ("z", "ready", None, None, []),
    ]


def test_lineage_forest_keeps_a_deleted_parent_and_one_known_only_by_its_lineage_row():
    sessions = [row("a", state="deleted", created=1), row("b", parent="a", created=2),
                row("d", parent="gone", created=4)]
    forks = [fork("b", "a", 1, 2), fork("d", "gone", 3, 4, parent_title="old plan")]
    forest = lineage_forest(sessions, forks)
    assert shape(forest) == [
        ("a", "deleted", None, None, [("b", "ready", 1, False, [])]),
        ("gone", "gone", None, None, [("d", "ready", 3, False, [])]),
    ]
    assert forest[1].title == "old plan"
    assert all(root.alive() for root in forest)
    assert find_root(forest, "d") is forest[1] and find_root(forest, "nope") is None
    assert not lineage_forest([row("a", state="deleted")], [])[0].alive()


# --------------------------------------------------------------------------- I/O


def test_changed_files_between_snapshot_commits(tmp_path: Path):
    repo = make_repo(tmp_path / "r", {"keep": "1\n", "edit": "1\n", "drop": "1\n"})
    before = commit_all(repo, "same")
    write(repo, "edit", "2\n")
    write(repo, "new file", "x\n")
    (repo / "drop").unlink()
    after = commit_all(repo, "changed")
    os.rename(repo / "keep", repo / "kept")
    moved = commit_all(repo, "moved")
    assert changed_paths(repo, [(before, after), (after, after), (sha("e"), after), ("HEAD", after), (after, moved),
                                (None, after)]) == [
        [("D", "drop"), ("M", "edit"), ("A", "new file")],
        [],
        None,  # an object gone from the repository
        None,  # only full ids are taken
        [("R", "kept")],  # as `cairnd diff` and the web page read it
        None,
    ]
    assert changed_paths(tmp_path / "gone", [(before, after)]) == [None]


def test_daemon_pid_reads_the_lock_as_the_daemon_holds_it(tmp_path: Path):
    assert daemon_pid(tmp_path) is None
    lock = tmp_path / "cairnd.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        assert daemon_pid(tmp_path) is None  # a lock file nobody holds: a stopped daemon
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        # flock locks belong to the open file description: a separate open sees it held.
        assert daemon_pid(tmp_path) == 4242
    finally:
        os.close(fd)
    assert daemon_pid(tmp_path) is None
