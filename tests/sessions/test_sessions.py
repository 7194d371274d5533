"""Sessions in-process (no daemon, no spool): new, prompt, fork, cancel, delete as the
daemon calls them, with what only Sessions decides: a request id already done is
answered, not done twice; a recovered prompt whose turn began is answered from the log;
a failed first turn still names the session it made; the registry's turn count follows
the log whatever a turn's outcome. Real git, real SQLite, the real reference agent."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from cairnd.sessions import forker
from cairnd.config.settings import parse_config
from cairnd.errors import CairnError
from cairnd.sessionlog.file import iter_lines
from cairnd.spool.requests import CancelRequest, DeleteRequest, ForkRequest, NewRequest, Origin, PromptRequest
from cairnd.sessions.handlers import Sessions
from cairnd.sessionlog.transcript import session_state, turn_of_request
from gitrepos import list_worktrees

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    config = parse_config({"idle_agent_seconds": 60}, None, {"CAIRND_STATE_DIR": str(tmp_path / "state")})
    config.layout.create()
    async with Sessions(config) as made:
        yield made


def new(repo: Path, prompt: str | None = None) -> NewRequest:
    return NewRequest(repo=str(repo), prompt=prompt)


def log_turns(sessions: Sessions, session: str) -> int:
    return session_state(iter_lines(sessions.layout.log_path(session)), agent_text=False).turns


async def test_new_prompt_fork_and_delete(sessions: Sessions, repo: Path) -> None:
    made = await sessions.new(new(repo, "write a.txt: one"), Origin("r1"))
    sid = made["session"]
    assert made["turn"] == 0 and made["stopReason"] == "end_turn" and made["title"] == repo.name
    second = await sessions.prompt(PromptRequest(session=sid, text="write b.txt: two"), Origin("r2"))
    assert second["turn"] == 1
    assert sessions.registry.get(sid).turns == 2 == log_turns(sessions, sid)

    fork = await sessions.fork(ForkRequest(session=sid, user_message_index=1, title=None, prompt=None),
                               Origin("r3"))
    worktree = Path(fork["worktree"])
    assert fork["parent"] == sid and fork["title"] == f"{repo.name} (fork 1)" and fork["prefill"] == "write b.txt: two"
    assert (worktree / "a.txt").exists() and not (worktree / "b.txt").exists()
    assert sessions.registry.get(fork["session"]).turns == 1 == log_turns(sessions, fork["session"])

    gone = await sessions.delete(DeleteRequest(session=fork["session"], keep_worktree=False), Origin("r4"))
    assert gone == {"session": fork["session"], "worktree_kept": False}
    assert not worktree.exists() and worktree not in list_worktrees(repo)
    assert sessions.layout.log_path(fork["session"]).exists()  # the log is never lost
    with pytest.raises(CairnError) as deleted:
        await sessions.prompt(PromptRequest(session=fork["session"], text="hello"), Origin("r5"))
    assert deleted.value.code == "session_deleted"
    with pytest.raises(CairnError) as unknown:
        await sessions.prompt(PromptRequest(session="0" * 26, text="hello"), Origin("r6"))
    assert unknown.value.code == "unknown_session"


async def test_a_request_id_already_done_is_answered_not_done_again(sessions: Sessions, repo: Path) -> None:
    """A crash after creating but before publishing: the request runs again on restart."""
    first = await sessions.new(new(repo), Origin("again"))
    second = await sessions.new(new(repo), Origin("again", recovered=True))
    assert second == first
    assert [row.id for row in sessions.registry.sessions(("ready",))] == [first["session"]]


async def test_a_recovered_prompt_whose_turn_ran_is_answered_from_the_log(sessions: Sessions, repo: Path) -> None:
    sid = (await sessions.new(new(repo), Origin("r1")))["session"]
    ran = await sessions.prompt(PromptRequest(session=sid, text="write a.txt: once"), Origin("p1"))
    again = await sessions.prompt(PromptRequest(session=sid, text="write a.txt: once"), Origin("p1", recovered=True))
    core = ("session", "turn", "stopReason", "checkpoint")  # the turn that opened the agent also names how
    assert {k: again[k] for k in core} == {k: ran[k] for k in core}
    starts = turn_of_request(iter_lines(sessions.layout.log_path(sid)), "p1")
    assert starts is not None and log_turns(sessions, sid) == 1  # one turn, not two
    # Not recovered: the same id is a new request of the writer's, and runs.
    assert (await sessions.prompt(PromptRequest(session=sid, text="hello"), Origin("p2")))["turn"] == 1


async def test_a_failed_first_turn_names_the_session_it_made_and_is_counted(sessions: Sessions,
                                                                           repo: Path) -> None:
    with pytest.raises(CairnError) as failed:
        await sessions.new(new(repo, "write a.txt: x\ncrash"), Origin("r1"))
    assert failed.value.code == "agent_failed" and "was created)" in failed.value.message
    [row] = sessions.registry.sessions(("ready",))
    assert failed.value.message.endswith(f"(session {row.id} was created)")
    assert row.turns == 1 == log_turns(sessions, row.id)  # the failed turn is in the log and the count


async def test_cancel_acts_on_the_turn_in_flight(sessions: Sessions, repo: Path) -> None:
    sid = (await sessions.new(new(repo), Origin("r1")))["session"]
    assert await sessions.cancel(CancelRequest(session=sid), Origin("c0")) == {"session": sid, "cancelled": False}
    outcome: dict[str, Any] = {}

    async def turn() -> None:
        outcome.update(await sessions.prompt(PromptRequest(session=sid, text="sleep: 30"), Origin("p1")))

    with anyio.fail_after(60):  # a bound against a hang, not a timing claim
        async with anyio.create_task_group() as tg:
            tg.start_soon(turn)
            while not sessions.runners.get(sid) or not sessions.runners[sid].busy:
                await anyio.sleep(0.02)
            assert (await sessions.cancel(CancelRequest(session=sid), Origin("c1")))["cancelled"] is True
    assert outcome["stopReason"] == "cancelled"


async def test_forks_build_their_worktrees_max_parallel_forks_at_once(sessions: Sessions, repo: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """max_parallel_forks (2 here) bounds the forks making their worktrees at once; the
    rest of making one (cut, log, registry) overlaps with others', so more are under way."""
    building = threading.Lock()
    now = {"building": 0, "most": 0}
    real = forker.gitworktree.add_worktree

    def counted(*args: Any, **kwargs: Any) -> Any:
        with building:
            now["building"] += 1
            now["most"] = max(now["most"], now["building"])
        try:
            time.sleep(0.05)  # long enough for the others to be let in, if they were
            return real(*args, **kwargs)
        finally:
            with building:
                now["building"] -= 1

    monkeypatch.setattr(forker.gitworktree, "add_worktree", counted)
    sid = (await sessions.new(new(repo, "write a.txt: one"), Origin("r1")))["session"]
    assert sessions.config.max_parallel_forks == 2
    made: list[dict[str, Any]] = []

    async def fork(n: int) -> None:
        made.append(await sessions.fork(ForkRequest(session=sid, user_message_index=0, title=None, prompt=None),
                                        Origin(f"f{n}")))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(fork, n)
    assert len(made) == 8 and all((Path(m["worktree"]) / "README.md").exists() for m in made)
    assert now["most"] == 2, now  # never more; and two did build at once
