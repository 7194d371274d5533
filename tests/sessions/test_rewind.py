"""SPEC 13 rewind: the session goes back in place, equal to a fork at the same message
(the fork is the oracle), and what it was lives on whole in the abandoned session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cairnd.git import run as cgit
from cairnd.git import refs as gitrefs
from cairnd.sessions import rewind as rewinding
from cairnd.agent.history import predict
from cairnd.errors import CairnError
from cairnd.sessions.forker import fork_session
from cairnd.sessionlog.entries import method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import Registry
from cairnd.sessionlog.transcript import session_state
from gitrepos import commit_all, git, git_text, index_state, symlink, tree_state, vault_of, write
from test_forker import CAP, Parent

STEPS = 4  # user messages in the history below


def history(p: Parent) -> Parent:
    """Committed, staged, modified, untracked, deleted, binary, symlink and mode changes."""
    p.turn("edit a", lambda: write(p.repo, "a.txt", "a1\n"))
    p.turn("commit and add untracked", lambda: (commit_all(p.repo, "c1"), write(p.repo, "new dir/ü.bin", b"\0\1\2"),
                                                write(p.repo, "debug.log", "ignored\n")))
    p.turn("stage and delete", lambda: (write(p.repo, "a.txt", "a2\n"), git(p.repo, "add", "a.txt"),
                                        write(p.repo, "a.txt", "a3\n"), os.remove(p.repo / "keep.txt"),
                                        symlink(p.repo, "link", "a.txt")))
    p.turn("commit again, binary and mode", lambda: (commit_all(p.repo, "c2"),
                                                     write(p.repo, "tool.sh", "#!/bin/sh\n", executable=True),
                                                     write(p.repo, "new dir/ü.bin", b"\0\xff\2\3")))
    return p


@pytest.fixture
def parent(tmp_path: Path) -> Parent:
    return history(Parent(tmp_path))


@pytest.fixture(params=["in_place", "linked"])
def any_parent(request, tmp_path: Path) -> Parent:
    """The session in the repository's own working tree (its present is copied), or in a
    linked worktree (its present is moved: SPEC 13, a rewind at the cost of one fork)."""
    return history(Parent(tmp_path, linked=request.param == "linked"))


def visible(state: dict) -> dict:
    return {path: value for path, value in state.items() if not path.endswith(b".log")}


def rewind(p: Parent, k: int, **kwargs) -> dict:
    journal = rewinding.abandon(p.layout, p.registry, p.row, k, request_id=kwargs.get("request_id"),
                                max_file_bytes=CAP, history=lambda log, end: predict(iter_lines(log), end, "auto", "reference"))
    return rewinding.finish(p.layout, p.registry, p.row, journal, max_file_bytes=CAP)


def state_of(worktree: Path) -> tuple[dict, list, str]:
    return visible(tree_state(worktree)), index_state(worktree), git_text(worktree, "rev-parse", "HEAD")


def methods(log: Path) -> list[str | None]:
    return [method_of(parse_message(line)) for _, line in iter_lines(log)]


@pytest.mark.parametrize("k", range(STEPS))
def test_rewind_at_k_equals_a_fork_at_k_and_the_abandoned_session_equals_before(any_parent: Parent, k: int):
    parent = any_parent
    oracle = parent.fork(k)
    forks_before = [parent.fork(j) for j in range(STEPS)]
    before = state_of(parent.repo)
    before_log = parent.log.read_bytes()
    branch_before = git_text(parent.repo, "rev-parse", "refs/heads/main")

    result = rewind(parent, k)

    assert state_of(parent.repo) == state_of(Path(oracle["worktree"]))
    assert result["session"] == parent.id and result["user_message_index"] == k
    assert result["prefill"] == oracle["prefill"]
    assert result["headSha"] == oracle["headSha"] and result["worktreeSha"] == oracle["worktreeSha"]
    assert git_text(parent.repo, "rev-parse", "refs/heads/main") == branch_before  # branches never move
    # The abandoned session: the whole old log, the files, index and HEAD of before.
    abandoned = parent.registry.get(result["abandoned"])
    assert abandoned.state == "ready" and abandoned.parent_id == parent.id
    assert abandoned.title == "Plan (before rewind 1)"
    assert state_of(abandoned.worktree) == before
    assert parent.layout.log_path(abandoned.id).read_bytes()[:len(before_log)] == before_log
    assert parent.registry.fork_of(abandoned.id).parent_id == parent.id
    # ... and it forks at every k as the session did before.
    for j, earlier in enumerate(forks_before):
        again = fork_session(parent.layout, parent.registry, abandoned, j, title=None, request_id=None,
                             max_file_bytes=CAP)
        assert state_of(Path(again["worktree"])) == state_of(Path(earlier["worktree"]))
    # The session's log: the kept bytes, the rewind entry, a baseline; the turns kept.
    cut = [offset for offset, line in iter_lines(parent.log) if b"session/prompt" in line]
    log = parent.log.read_bytes()
    kept = Path(oracle["log"]).read_bytes()
    meta_at = kept.rindex(b"_posthog/fork_session_meta")
    kept = kept[:kept.rindex(b"\n", 0, meta_at) + 1]
    assert log.startswith(kept) and len(cut) == k
    assert methods(parent.log)[-2:] == ["_cairnd/rewind", "_posthog/agent_checkpoint"]
    state = session_state(iter_lines(parent.log))
    assert len(state.conversation) == k and state.sdk_session_id is None and not state.open_turn
    assert parent.row.turns == state.turns == k


def test_checkpoints_of_the_abandoned_session_survive_gc(parent: Parent):
    shas = [parse_message(line)["params"]["worktreeSha"] for _, line in iter_lines(parent.log)
            if b"agent_checkpoint" in line]
    result = rewind(parent, 1)
    # The session goes on and reuses its turn numbers; its old refs are gone.
    parent.turns = 1
    parent.turn("another way", lambda: write(parent.repo, "b.txt", "b\n"))
    git(parent.repo, "reflog", "expire", "--expire=now", "--all")
    git(parent.repo, "gc", "-q", "--prune=now")
    pinned = gitrefs.list_refs(parent.repo, f"refs/cairnd/{result['abandoned']}/")
    assert set(shas) <= set(pinned.values())
    abandoned_log = parent.layout.log_path(result["abandoned"])
    baseline = [parse_message(line)["params"] for _, line in iter_lines(abandoned_log)
                if b"agent_checkpoint" in line][-1]
    assert {baseline["worktreeSha"], baseline["indexTree"]} <= set(pinned.values())
    vault = vault_of(parent.layout.root, parent.repo)  # where they are: no agent writes there
    git(vault, "gc", "-q", "--prune=now")
    for sha in shas:
        git(vault, "cat-file", "-e", f"{sha}^{{tree}}")
    abandoned = parent.registry.get(result["abandoned"])
    for j in range(STEPS):
        fork_session(parent.layout, parent.registry, abandoned, j, title=None, request_id=None, max_file_bytes=CAP)


def test_in_place_branch_moved_on_is_left_alone_and_head_detached(parent: Parent):
    tip = git_text(parent.repo, "rev-parse", "refs/heads/main")
    result = rewind(parent, 1)  # before "commit and add untracked": main has moved past it since
    assert result["detached"] is True
    assert git_text(parent.repo, "rev-parse", "refs/heads/main") == tip
    assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=parent.repo).returncode == 1
    assert git_text(parent.repo, "rev-parse", "HEAD") == result["headSha"]


def test_head_stays_on_its_branch_when_the_branch_is_still_there(tmp_path: Path):
    p = Parent(tmp_path)
    p.turn("edit", lambda: write(p.repo, "a.txt", "x\n"))
    p.turn("edit more", lambda: write(p.repo, "a.txt", "y\n"))
    result = rewind(p, 1)
    assert result["detached"] is False
    assert git_text(p.repo, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert (p.repo / "a.txt").read_text() == "x\n"


def test_rewind_of_a_fork_and_fork_of_a_rewound_session(parent: Parent):
    fork = parent.fork(3)
    row = parent.registry.get(fork["session"])
    oracle = fork_session(parent.layout, parent.registry, row, 2, title=None, request_id=None, max_file_bytes=CAP)
    journal = rewinding.abandon(parent.layout, parent.registry, row, 2, request_id=None, max_file_bytes=CAP,
                                history=lambda log, end: "replay")
    result = rewinding.finish(parent.layout, parent.registry, row, journal, max_file_bytes=CAP)
    assert result["detached"] is False  # a fork's HEAD is detached already
    assert state_of(row.worktree) == state_of(Path(oracle["worktree"]))
    refork = fork_session(parent.layout, parent.registry, parent.registry.get(row.id), 1, title=None,
                          request_id=None, max_file_bytes=CAP)
    first = parent.fork(1)
    assert state_of(Path(refork["worktree"])) == state_of(Path(first["worktree"]))


def test_titles_count_rewinds(parent: Parent):
    first = rewind(parent, 3)
    second = rewind(parent, 1)
    titles = [parent.registry.get(r["abandoned"]).title for r in (first, second)]
    assert titles == ["Plan (before rewind 1)", "Plan (before rewind 2)"]
    assert rewinding.abandoned_title("Plan (before rewind 2)", titles) == "Plan (before rewind 3)"


@pytest.mark.parametrize("k, code", [(STEPS, "fork_out_of_range"), (-1, "fork_out_of_range")])
def test_out_of_range_changes_nothing(parent: Parent, k: int, code: str):
    before = state_of(parent.repo), parent.log.read_bytes()
    with pytest.raises(CairnError) as info:
        rewind(parent, k)
    assert info.value.code == code
    assert (state_of(parent.repo), parent.log.read_bytes()) == before
    assert [r.id for r in parent.registry.sessions(("ready", "creating"))] == [parent.id]


# --------------------------------------------------------------------------- crashes at every step

CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from cairnd.sessions import rewind as rewinding
    from cairnd.state.layout import StateLayout
    from cairnd.state.registry import Registry
    state, session, k, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    def crash(step):
        if step == stop:
            os._exit(9)
    rewinding._reached = crash
    layout = StateLayout(Path(state))
    registry = Registry(layout.db)
    row = registry.get(session)
    journal = rewinding.abandon(layout, registry, row, k, request_id="r1", max_file_bytes=1 << 20,
                                history=lambda log, end: "replay")
    rewinding.finish(layout, registry, row, journal, max_file_bytes=1 << 20)
""")


@pytest.mark.parametrize("step", rewinding.STEPS)
def test_a_crash_at_any_step_leaves_the_session_as_it_was_or_the_rewind_whole(any_parent: Parent, step: str):
    from cairnd.sessions.creation import roll_back
    parent = any_parent
    if step == "moving" and parent.row.in_place:
        pytest.skip("an in-place session's present is copied, not moved")
    oracle = parent.fork(2)
    before = state_of(parent.repo), parent.log.read_bytes()
    refs_before = gitrefs.list_refs(parent.repo, "refs/cairnd/")
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(parent.layout.root), parent.id, "2", step],
                          capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    # What a start of cairnd does: creations cut short go, committed rewinds are finished.
    registry = Registry(parent.layout.db)
    for row in registry.sessions(("creating",)):
        rewinding.undo_move(parent.layout, row.id)
        roll_back(parent.layout, registry, row)
    rewinding.recover(parent.layout, registry, max_file_bytes=CAP)
    ready = registry.sessions(("ready",))
    if rewinding.STEPS.index(step) < rewinding.STEPS.index("committed"):
        assert (state_of(parent.repo), parent.log.read_bytes()) == before
        assert [r.id for r in ready if r.id != oracle["session"]] == [parent.id]
        assert gitrefs.list_refs(parent.repo, "refs/cairnd/") == refs_before
        assert not (parent.layout.root / "worktrees").exists() or all(
            (parent.layout.root / "worktrees" / r.id).exists() for r in ready if not r.in_place)
    else:
        assert state_of(parent.repo) == state_of(Path(oracle["worktree"]))
        (journal,) = registry.rewinds(("done",))
        abandoned = registry.get(journal.abandoned_id)
        assert state_of(abandoned.worktree) == before[0]
        assert parent.layout.log_path(abandoned.id).read_bytes().startswith(before[1])
        assert methods(parent.log)[-2:] == ["_cairnd/rewind", "_posthog/agent_checkpoint"]
        assert registry.get(parent.id).turns == 2
    assert not registry.rewinds(("pending",))


# --------------------------------------------------------------------------- through the daemon


@pytest.fixture(scope="module")
def daemon(shared_daemon):
    """The tests below share one daemon: each makes a repository and sessions of its own."""
    return shared_daemon


@pytest.mark.slow
def test_rewind_with_prompt_queued_behind_a_turn_restarts_the_agent_with_the_kept_history(daemon, tmp_path: Path):
    from gitrepos import make_repo
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    session = daemon.ok({"kind": "new", "repo": str(repo), "title": "work", "prompt": "write a.txt: 1"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "write a.txt: 2\ncommit: two"})
    slow = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 1\nwrite a.txt: 3"})
    rewound = daemon.drop({"kind": "rewind", "session": session, "user_message_index": 1,
                           "prompt": "append a.txt: again"})
    assert daemon.wait(slow)["status"] == "ok"  # the rewind waited for the turn in flight
    result = daemon.wait(rewound)
    assert result["status"] == "ok", result
    r = result["result"]
    assert r["session"] == session and r["user_message_index"] == 1 and r["prefill"].startswith("write a.txt: 2")
    assert r["history"] == "native" and r["detached"] is False and r["turn"] == 1  # session/fork at the cut
    log = Path(r["log"]).read_text()
    assert "history=1" in log.rsplit("_cairnd/rewind", 1)[1]  # the new agent knows one earlier message
    worktree = daemon.state / "worktrees" / session / "project"
    assert (worktree / "a.txt").read_text() == "1\nagain\n"
    abandoned = r["abandoned"]
    shown = daemon.ok({"kind": "prompt", "session": abandoned, "text": "append a.txt: on the old road"})
    assert shown["turn"] == 3
    old = daemon.state / "worktrees" / abandoned / "project"
    assert (old / "a.txt").read_text() == "3\non the old road\n"
    assert (worktree / "a.txt").read_text() == "1\nagain\n"


def test_rewind_requests_are_strictly_validated(daemon, tmp_path: Path):
    from gitrepos import make_repo
    repo = make_repo(tmp_path / "project")
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: 1"})["session"]
    for request, code in [
        ({"kind": "rewind", "session": session, "user_message_index": -1}, "fork_out_of_range"),
        ({"kind": "rewind", "session": session, "user_message_index": 1}, "fork_out_of_range"),
        ({"kind": "rewind", "session": session, "user_message_index": True}, "bad_request"),
        ({"kind": "rewind", "session": session, "user_message_index": 0, "title": "x"}, "bad_request"),
        ({"kind": "rewind", "session": session, "user_message_index": 0, "prompt": 3}, "bad_request"),
        ({"kind": "rewind", "session": "nope", "user_message_index": 0}, "unknown_session"),
        ({"kind": "rewind", "session": "../x", "user_message_index": 0}, "bad_request"),
        ({"kind": "rewind", "session": session}, "bad_request"),
    ]:
        answer = daemon.request(request)
        assert answer["status"] == "error" and answer["error"]["code"] == code, (request, answer)
    assert daemon.ok({"kind": "prompt", "session": session, "text": "still fine"})["turn"] == 1


def test_the_kept_lines_end_before_the_turn_start_of_the_cut_turn():
    from cairnd.sessionlog.entries import checkpoint_entry, envelope_line, turn_start_entry
    from logsamples import prompt_request
    lines = [envelope_line(checkpoint_entry({"sessionId": "s", "turns": 0})),
             envelope_line(turn_start_entry("s", 0, "r0")), prompt_request(1, "first")]
    offsets = [sum(len(line) for line in lines[:i]) for i in range(len(lines))]
    numbered = list(zip(offsets, lines))
    assert rewinding.kept_length(numbered, offsets[2]) == offsets[1]
    assert rewinding.kept_length(numbered[:1] + numbered[2:], offsets[2]) == offsets[2]  # no turn_start: the cut


@pytest.mark.slow
def test_a_rewind_whose_finish_fails_is_finished_before_the_next_turn(daemon, tmp_path: Path):
    """Past its commit point a rewind is never undone: when git refuses its finish (here a
    stale HEAD.lock in the session's worktree record, which moves with the present to the
    abandoned session, whose HEAD must let go of the branch), the request fails, and the
    next request for the session finishes the rewind first."""
    from gitrepos import git_dir, make_repo
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: 1"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "write a.txt: 2"})
    worktree = daemon.state / "worktrees" / session / "project"
    (git_dir(worktree) / "HEAD.lock").write_bytes(b"")
    failed = daemon.request({"kind": "rewind", "session": session, "user_message_index": 1})
    assert failed["status"] == "error" and "the rewind is recorded" in failed["error"]["message"], failed
    (lock,) = (daemon.state / "git" / "vaults").glob("*/stores/*/worktrees/*/HEAD.lock")  # moved with the record
    lock.unlink()
    after = daemon.ok({"kind": "prompt", "session": session, "text": "append a.txt: 3"})
    assert after["turn"] == 1
    assert (worktree / "a.txt").read_text() == "1\n3\n"


def test_forks_and_lands_that_arrive_after_a_rewind_see_the_rewound_session(daemon, tmp_path: Path):
    from gitrepos import make_repo
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n"})
    session = daemon.ok({"kind": "new", "repo": str(repo), "prompt": "write a.txt: 1"})["session"]
    daemon.ok({"kind": "prompt", "session": session, "text": "write a.txt: 2"})
    early = daemon.drop({"kind": "fork", "session": session, "user_message_index": 1})  # beside the turns
    slow = daemon.drop({"kind": "prompt", "session": session, "text": "sleep: 0.5\nwrite a.txt: 3"})
    rewound = daemon.drop({"kind": "rewind", "session": session, "user_message_index": 1})
    late = daemon.drop({"kind": "fork", "session": session, "user_message_index": 2})
    landed = daemon.drop({"kind": "land", "session": session, "branch": "after-rewind"})
    assert daemon.wait(early)["status"] == "ok"
    assert daemon.wait(slow)["status"] == "ok" and daemon.wait(rewound)["status"] == "ok"
    refused = daemon.wait(late)
    assert refused["status"] == "error" and refused["error"]["code"] == "fork_out_of_range", refused
    assert daemon.wait(landed)["result"]["files"] == ["a.txt"]
    assert git(repo, "show", "after-rewind:a.txt") == b"1\n"


class Refused(Exception):
    pass


@pytest.mark.parametrize("step", rewinding.STEPS[:rewinding.STEPS.index("committed")])
def test_a_failure_before_the_commit_point_leaves_nothing_behind(any_parent: Parent, step: str, monkeypatch):
    parent = any_parent
    if step == "moving" and parent.row.in_place:
        pytest.skip("an in-place session's present is copied, not moved")
    before = state_of(parent.repo), parent.log.read_bytes(), gitrefs.list_refs(parent.repo, "refs/cairnd/")

    def refuse(reached: str) -> None:
        if reached == step:
            raise Refused(step)
    monkeypatch.setattr(rewinding, "_reached", refuse)
    with pytest.raises(Refused):
        rewind(parent, 2)
    assert (state_of(parent.repo), parent.log.read_bytes(), gitrefs.list_refs(parent.repo, "refs/cairnd/")) == before
    assert [r.id for r in parent.registry.sessions(("ready", "creating"))] == [parent.id]
    assert not parent.registry.rewinds(("pending", "done"))
    assert sorted(os.listdir(parent.layout.root / "sessions")) == [parent.id]
    worktrees = parent.layout.root / "worktrees"
    assert not worktrees.exists() or sorted(os.listdir(worktrees)) == ([] if parent.row.in_place else [parent.id])
