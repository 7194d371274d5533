"""Crash recovery (recovery.py), one test per step on a state directory made by hand as
a kill -9 leaves it, then the whole `recover` in its fixed order. Real git, real
SQLite, real files; the daemon-level kill -9 torture is test_crash."""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
import pytest

from cairnd.git import files as gitfiles
from cairnd.git import worktree as gitworktree
from cairnd.checkpoints.checkpoint import take_checkpoint
from cairnd.sessions.creation import write_initial_log
from cairnd.sessionlog.entries import checkpoint_entry, envelope_line
from cairnd.state.layout import StateLayout
from cairnd.sessionlog.file import iter_lines
from cairnd.serve.recovery import (
    Recovered,
    close_turns,
    finish_creations,
    recover,
    remove_stale_ref_locks,
    remove_temporaries,
    requests_in_progress,
)
from cairnd.state.registry import Registry
from cairnd.spool.protocol import Spool
from cairnd.sessionlog.transcript import session_state
from gitrepos import head, list_worktrees, make_repo
from logsamples import prompt_request, prompt_response, turn_complete

CAP = 1 << 20


class State:
    """A state directory, a registry and a repository, made by hand."""

    def __init__(self, tmp_path: Path) -> None:
        self.layout = StateLayout(tmp_path / "state")
        self.layout.create()
        self.registry = Registry(self.layout.db)
        self.spool = Spool(self.layout.spool)
        self.repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})

    def session(self, session_id: str, *, turns_logged: int, turns_in_registry: int,
                open_turn: bool = False) -> Path:
        """A ready session whose log holds `turns_logged` ended turns (and a prompt with no
        end when `open_turn`), while the registry says `turns_in_registry`."""
        worktree = self.layout.worktree_parent(session_id) / "repo"
        gitworktree.add_worktree(self.repo, worktree, head(self.repo))
        self.registry.begin_session(id=session_id, title=session_id, repo=self.repo, worktree=worktree,
                                    in_place=False, agent="reference", parent_id=None, root_id=session_id,
                                    turns=turns_in_registry, request_id=None)
        self.registry.commit_session(session_id, {"session": session_id})
        log = write_initial_log(self.layout, session_id, None, 0,
                                [checkpoint_entry(take_checkpoint(session_id, worktree, 0, CAP))])
        with open(log, "ab") as f:
            for n in range(turns_logged):
                f.write(prompt_request(n + 1, f"turn {n}") + prompt_response(n + 1) + turn_complete(session=session_id)
                        + envelope_line(checkpoint_entry(take_checkpoint(session_id, worktree, n + 1, CAP))))
            if open_turn:
                f.write(prompt_request(99, "cut by kill -9"))
        return log


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(tmp_path)


def log_turns(log: Path) -> int:
    return session_state(iter_lines(log), agent_text=False).turns


# -- step 1 ------------------------------------------------------------------------------------


def test_step_1_removes_temporary_files_and_nothing_else(state: State) -> None:
    litter = [state.layout.spool / "done" / ".r1.json.4242.0.tmp", state.layout.status.with_name(".status.json.1.2.tmp"),
              state.layout.log_tmp_path("s9")]
    state.layout.session_dir("s9").mkdir(parents=True)
    kept = [state.layout.spool / "done" / "r3.json", state.layout.spool / "failed" / ".notes"]
    for path in litter + kept:
        path.write_bytes(b"{")
    done = Recovered()
    remove_temporaries(state.layout, done)
    assert sorted(done.temporaries) == sorted(litter)
    assert not any(p.exists() for p in litter) and all(p.exists() for p in kept)


# -- step 2 ------------------------------------------------------------------------------------


def test_step_2_rolls_half_made_sessions_back(state: State) -> None:
    worktree = state.layout.worktree_parent("half") / "repo"
    state.registry.begin_session(id="half", title="half", repo=state.repo, worktree=worktree, in_place=False,
                                 agent="reference", parent_id=None, root_id="half", turns=0, request_id="r1")
    gitworktree.add_worktree(state.repo, worktree, head(state.repo))  # the crash came after the worktree
    done = Recovered()
    finish_creations(state.layout, state.registry, done, CAP)
    assert done.rolled_back == ["half"]
    assert state.registry.get("half") is None and state.registry.by_request("r1") is None
    assert list_worktrees(state.repo) == [state.repo] and not worktree.exists()


def test_step_2_removes_a_worktree_record_a_stop_left_half_built(state: State) -> None:
    # kill -9 inside gitfiles.write_worktree_record: the record built aside, its .git
    # written, the rename into .git/worktrees/ never done.
    worktree = state.layout.worktree_parent("half") / "repo"
    state.registry.begin_session(id="half", title="half", repo=state.repo, worktree=worktree, in_place=False,
                                 agent="reference", parent_id=None, root_id="half", turns=0, request_id=None)
    worktree.mkdir(parents=True)
    aside = state.repo / ".git" / f"{gitfiles.WORKTREE_RECORD_TMP}{gitfiles.record_name(worktree)}"
    aside.mkdir()
    for name, text in (("gitdir", f"{worktree}/.git\n"), ("commondir", "../..\n"), ("HEAD", head(state.repo))):
        (aside / name).write_text(text)
    (worktree / ".git").write_text(f"gitdir: {state.repo / '.git' / 'worktrees' / aside.name}\n")
    other = state.repo / ".git" / f"{gitfiles.WORKTREE_RECORD_TMP}cairnd-0123456789abcdef"
    other.mkdir()  # another worktree's, being built right now: not ours to touch
    done = Recovered()
    finish_creations(state.layout, state.registry, done, CAP)
    assert done.rolled_back == ["half"]
    assert not aside.exists() and not worktree.exists() and other.is_dir()
    assert list_worktrees(state.repo) == [state.repo]


# -- steps 3 and 4 -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_step_3_closes_a_turn_a_stop_cut_with_a_checkpoint(state: State) -> None:
    log = state.session("s1", turns_logged=1, turns_in_registry=1, open_turn=True)
    done = Recovered()
    await close_turns(state.layout, state.registry, done, max_file_bytes=CAP)
    assert done.turns_closed == ["s1"] and log_turns(log) == 2
    assert session_state(iter_lines(log)).conversation[-1].stop_reason == "interrupted"
    assert state.registry.get("s1").turns == 2


@pytest.mark.anyio
async def test_step_4_sets_the_registrys_turn_count_from_the_log(state: State) -> None:
    """kill -9 between a turn's fsynced turn_complete and the registry's update: the
    registry said one turn fewer until the session's next turn (a bug the review found)."""
    state.session("behind", turns_logged=2, turns_in_registry=1)
    state.session("right", turns_logged=1, turns_in_registry=1)
    done = Recovered()
    await close_turns(state.layout, state.registry, done, max_file_bytes=CAP)
    assert done.turns_reconciled == ["behind"] and done.turns_closed == []
    assert state.registry.get("behind").turns == 2 and state.registry.get("right").turns == 1


# -- step 5 ------------------------------------------------------------------------------------


def test_step_5_hands_back_requests_left_in_cur_and_lets_go_of_answered_ones(state: State) -> None:
    spool = state.spool
    (spool.cur / "run-again.json").write_bytes(b'{"kind":"cancel","session":"s1"}')
    (spool.cur / "answered.json").write_bytes(b'{"kind":"cancel","session":"s1"}')
    (spool.done / "answered.json").write_bytes(orjson.dumps({"id": "answered", "status": "ok"}))
    done = Recovered()
    requests_in_progress(spool, done)
    assert done.answered == ["answered.json"] and not (spool.cur / "answered.json").exists()
    [claimed] = done.requests
    assert claimed.request_id == "run-again" and claimed.recovered and claimed.data.startswith(b'{"kind"')
    assert (spool.cur / "run-again.json").exists()  # still ours until its result is published


# -- all of it, in order -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_recover_runs_every_step_in_order(state: State) -> None:
    log = state.session("s1", turns_logged=1, turns_in_registry=0, open_turn=True)
    state.registry.begin_session(id="half", title="half", repo=state.repo,
                                 worktree=state.layout.worktree_parent("half") / "repo", in_place=False,
                                 agent="reference", parent_id=None, root_id="half", turns=0, request_id=None)
    (state.layout.spool / "failed" / ".r2.json.1.1.tmp").write_bytes(b"")
    (state.spool.cur / "r3.json").write_bytes(b'{"kind":"prompt","session":"s1","text":"again"}')
    done = await recover(state.layout, state.registry, state.spool, max_file_bytes=CAP,
                         limiter=anyio.CapacityLimiter(2))
    assert [p.name for p in done.temporaries] == [".r2.json.1.1.tmp"]
    assert done.rolled_back == ["half"] and done.turns_closed == ["s1"] and done.turns_reconciled == ["s1"]
    assert state.registry.get("s1").turns == log_turns(log) == 2
    assert [c.name for c in done.requests] == ["r3.json"]
    # A second run finds nothing left to do.
    again = await recover(state.layout, state.registry, state.spool, max_file_bytes=CAP)
    assert (again.temporaries, again.rolled_back, again.turns_closed, again.turns_reconciled) == ([], [], [], [])


def test_step_1_removes_the_lock_a_stop_left_on_a_sessions_checkpoint_ref(state: State):
    """kill -9 between taking a checkpoint ref's lock and renaming it left `<ref>.lock`;
    git then refused every later write of that ref, and the restart's own checkpoint
    (closing the cut turn) stopped the daemon. Only our sessions' locks go."""
    state.session("s1", turns_logged=1, turns_in_registry=1, open_turn=True)
    refs = state.repo / ".git" / "refs" / "cairnd"
    stale = refs / "s1" / "2.lock"
    stale.write_text(head(state.repo) + "\n")
    other = refs / "someone-else" / "1.lock"
    other.parent.mkdir(parents=True)
    other.write_text(head(state.repo) + "\n")
    done = Recovered()
    remove_stale_ref_locks(state.registry, done)
    assert done.ref_locks == [stale] and not stale.exists() and other.exists()


def test_recovery_closes_a_cut_turn_whose_checkpoint_ref_was_left_locked(state: State):
    log = state.session("s1", turns_logged=1, turns_in_registry=1, open_turn=True)
    (state.repo / ".git" / "refs" / "cairnd" / "s1" / "2.lock").write_text(head(state.repo) + "\n")
    done = anyio.run(lambda: recover(state.layout, state.registry, state.spool, max_file_bytes=CAP))
    assert done.turns_closed == ["s1"] and log_turns(log) == 2
