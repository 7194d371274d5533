"""SPEC 13 land: a checkpoint becomes a commit on a branch (new, or fast-forwarded), and no
worktree, index or HEAD of the repository changes by a single byte."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cairnd.errors import CairnError
from cairnd.sessions.land import decide, default_message, land
from gitrepos import commit_all, git, git_dir, git_text, tree_of, vault_of, write
from test_forker import Parent


@pytest.fixture
def parent(tmp_path: Path) -> Parent:
    p = Parent(tmp_path)
    p.turn("edit a", lambda: write(p.repo, "a.txt", "a1\n"))
    p.turn("commit it", lambda: commit_all(p.repo, "c1"))
    p.turn("more\nsecond line", lambda: write(p.repo, "b.txt", "b\n"))
    p.fork(1)  # a linked worktree of the same repository, detached
    git(p.repo, "worktree", "add", "-q", "-b", "elsewhere", str(p.repo.parent / "other"))
    return p


def every_worktree(repo: Path) -> dict[str, tuple[bytes, bytes]]:
    out = git(repo, "worktree", "list", "--porcelain").decode()
    trees = [line[len("worktree "):] for line in out.splitlines() if line.startswith("worktree ")]
    return {tree: ((git_dir(Path(tree)) / "index").read_bytes(), (git_dir(Path(tree)) / "HEAD").read_bytes())
            for tree in trees}


def checkpoint(p: Parent, turns: int) -> dict:
    from cairnd.sessions.diffs import pick_checkpoint, read_checkpoints
    return pick_checkpoint(read_checkpoints(p.layout, p.row), p.id, turns)


def test_new_branch_then_fast_forward_then_refusal_then_force(parent: Parent):
    before = every_worktree(parent.repo)
    main = git_text(parent.repo, "rev-parse", "main")

    first = land(parent.layout, parent.row, "try/one", turn=1)
    cp = checkpoint(parent, 1)
    assert first["previous"] is None and first["parent"] == cp["headSha"]
    assert tree_of(parent.repo, first["commit"]) == tree_of(vault_of(parent.layout.root, parent.repo), cp["worktreeSha"])  # a checkpoint: in the vault
    assert git_text(parent.repo, "rev-parse", f"{first['commit']}^") == cp["headSha"]
    assert first["files"] == ["a.txt"]
    assert git_text(parent.repo, "log", "-1", "--format=%B", first["commit"]) == "Plan\n\n- edit a"

    clean = land(parent.layout, parent.row, "try/two", turn=2)  # a clean checkpoint: its HEAD itself
    assert clean["commit"] == checkpoint(parent, 2)["headSha"] and clean["files"] == []
    latest = land(parent.layout, parent.row, "try/two")  # descends from it: a fast-forward
    assert latest["previous"] == clean["commit"] and latest["moved"] == "fast-forward"
    assert latest["files"] == ["b.txt"]
    assert git_text(parent.repo, "log", "-1", "--format=%B", latest["commit"]) == \
        "Plan\n\n- edit a\n- commit it\n- more"

    again = land(parent.layout, parent.row, "try/two")  # the same checkpoint lands as the same commit
    assert again["commit"] == latest["commit"] and again["moved"] == "same" and again["unchanged"] is True

    empty = subprocess.run(["git", "mktree"], cwd=parent.repo, input=b"", capture_output=True, check=True).stdout.decode().strip()
    other = git_text(parent.repo, "commit-tree", "-m", "someone else's", "-p", first["commit"], empty)
    git(parent.repo, "branch", "theirs", other)
    with pytest.raises(CairnError) as info:
        land(parent.layout, parent.row, "theirs")  # a tip no land of this session made
    assert info.value.code == "branch_exists"
    with pytest.raises(CairnError) as info:
        land(parent.layout, parent.row, "try/two", turn=1)  # an earlier checkpoint over a later one: going back
    assert info.value.code == "branch_exists" and "go back" in info.value.message
    assert git_text(parent.repo, "rev-parse", "try/two") == latest["commit"]
    forced = land(parent.layout, parent.row, "try/two", turn=1, force=True, message="mine")
    assert forced["previous"] == latest["commit"] and forced["moved"] == "force"
    assert git_text(parent.repo, "log", "-1", "--format=%B", forced["commit"]) == "mine"

    assert every_worktree(parent.repo) == before
    assert git_text(parent.repo, "rev-parse", "main") == main


def test_land_again_is_a_fast_forward_on_top_of_the_earlier_land(parent: Parent):
    """SPEC 13: land, keep working, land again: the new commit goes on the tip (parents:
    the tip, and the checkpoint's headSha when the tip does not hold it)."""
    first = land(parent.layout, parent.row, "pr", turn=1)
    second = land(parent.layout, parent.row, "pr")  # turn 3: after a commit of the session's own
    assert second["previous"] == first["commit"] and second["moved"] == "fast-forward"
    assert second["unchanged"] is False and first["unchanged"] is False
    assert git_text(parent.repo, "rev-parse", f"{second['commit']}^1") == first["commit"]
    cp = checkpoint(parent, 3)
    assert git_text(parent.repo, "rev-parse", f"{second['commit']}^2") == cp["headSha"]  # not held by the tip
    assert tree_of(parent.repo, second["commit"]) == tree_of(vault_of(parent.layout.root, parent.repo), cp["worktreeSha"])  # a checkpoint: in the vault
    assert second["files"] == ["b.txt"]  # what changed since the last land
    third = land(parent.layout, parent.row, "pr")
    assert third["unchanged"] is True and third["commit"] == second["commit"]
    assert git_text(parent.repo, "rev-parse", "pr") == second["commit"]


@pytest.mark.parametrize("branch", ["main", "elsewhere"])
def test_a_branch_some_worktree_has_checked_out_is_refused(parent: Parent, branch: str):
    before = every_worktree(parent.repo)
    tip = git_text(parent.repo, "rev-parse", branch)
    for force in (False, True):
        with pytest.raises(CairnError) as info:
            land(parent.layout, parent.row, branch, force=force)
        assert info.value.code == "branch_checked_out"
    assert git_text(parent.repo, "rev-parse", branch) == tip
    assert every_worktree(parent.repo) == before


@pytest.mark.parametrize("branch", ["a..b", "-x", "HEAD", "x.lock", "a b", "x/", "/x", "a~1", "a:b", "a\\b", "a@{1}"])
def test_names_git_refuses_are_bad_ref(parent: Parent, branch: str):
    with pytest.raises(CairnError) as info:
        land(parent.layout, parent.row, branch)
    assert info.value.code == "bad_ref"


def test_a_turn_without_a_checkpoint_is_a_bad_request(parent: Parent):
    with pytest.raises(CairnError) as info:
        land(parent.layout, parent.row, "x", turn=9)
    assert info.value.code == "bad_request" and "@0, @1, @2, @3" in info.value.message


def test_decide_and_message_rules():
    assert decide(None, "c", False, False, "b") == "create"
    assert decide("c", "c", True, False, "b") == "same"
    assert decide("p", "c", True, False, "b") == "fast-forward"
    assert decide("p", "c", False, True, "b") == "force"
    with pytest.raises(CairnError):
        decide("p", "c", False, False, "b")
    assert default_message("T", []) == "T\n"
    assert default_message("T", ["  ", "x" * 100]).splitlines()[2:] == ["- (empty message)", "- " + "x" * 69 + "..."]


@pytest.mark.slow
def test_land_through_the_daemon(tmp_path: Path):
    from daemonproc import Daemon
    from gitrepos import make_repo
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    d = Daemon(tmp_path / "state").start()
    try:
        session = d.ok({"kind": "new", "repo": str(repo), "title": "feature", "prompt": "write a.txt: 1"})["session"]
        landed = d.ok({"kind": "land", "session": session, "branch": "feature"})
        assert landed["files"] == ["a.txt"] and landed["previous"] is None
        assert git(repo, "show", "feature:a.txt") == b"1\n"
        for request, code in [
            ({"kind": "land", "session": session, "branch": "main"}, "branch_checked_out"),
            ({"kind": "land", "session": session, "branch": "-x"}, "bad_ref"),
            ({"kind": "land", "session": session, "branch": "a..b"}, "bad_ref"),
            ({"kind": "land", "session": session, "branch": ""}, "bad_request"),
            ({"kind": "land", "session": session, "branch": 3}, "bad_request"),
            ({"kind": "land", "session": session, "branch": "x", "turn": -1}, "bad_request"),
            ({"kind": "land", "session": session, "branch": "x", "turn": 1.0}, "bad_request"),
            ({"kind": "land", "session": session, "branch": "x", "force": 1}, "bad_request"),
            ({"kind": "land", "session": session, "branch": "x", "message": ""}, "bad_request"),
            ({"kind": "land", "session": session, "branch": "x", "onto": "y"}, "bad_request"),
            ({"kind": "land", "session": "nosuch", "branch": "x"}, "unknown_session"),
        ]:
            answer = d.request(request)
            assert answer["status"] == "error" and answer["error"]["code"] == code, (request, answer)
    finally:
        assert d.stop() == 0
