"""Attempts (SPEC 19): many tries from one moment, a check in each, and compare them.

    fork {count | prompts | agents, check?}
        --find_fork_cut (once)--> the cut, its state and trees, shared by every try
        --begin N rows--> build N forks (max_parallel_forks at once) --one transaction--> all ready
        --> every try's first turn at once, then its check --> `sessions`, in order
    check {session, command, timeout?}
        after the session's running turn: the command in its worktree, confined as its
        agent --> `_cairnd/check` in its log
    compare S1 S2 ... | --siblings S   (read-only)
        per session: title, agent, turns, state, files since the cut, last check

The tries are made all or none: their rows are begun `creating` and committed in one
registry transaction; a failure rolls every one back, and after a crash recovery does
(it rolls back every `creating` row).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from cairnd.agent.check import run_check
from cairnd.agent.confinement import Confinement
from cairnd.agent.runner import AgentRunner
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.config.settings import AgentProfile, Config
from cairnd.errors import CairnError
from cairnd.git import places
from cairnd.git import diff as gitdiff
from cairnd.ids import new_session_id
from cairnd.sessionlog.entries import CHECK_METHOD, check_entry, method_of, parse_message
from cairnd.sessionlog.file import iter_lines
from cairnd.sessions import diffs
from cairnd.sessions.creation import roll_back
from cairnd.sessions.forker import build_fork, find_fork_cut
from cairnd.spool.requests import DEFAULT_CHECK_SECONDS, CheckRequest, ForkRequest, Origin
from cairnd.state.layout import StateLayout
from cairnd.state.registry import Registry, SessionRow


class TryHost(Protocol):
    """What attempts needs of the daemon's sessions (handlers.Sessions is one): a port,
    so this module does not import the handlers that call it."""

    registry: Registry
    layout: StateLayout
    config: Config
    fork_limiter: anyio.CapacityLimiter
    fork_builders: threading.BoundedSemaphore
    checkpoints: Checkpointer

    def profile(self, name: str | None) -> AgentProfile: ...
    async def live(self, session_id: str) -> SessionRow: ...
    async def in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    async def run_turn(self, row: SessionRow, text: str, origin: Origin,
                       content: list[Any] | None = None) -> dict[str, Any]: ...
    def predicted_history(self, row: SessionRow, log: Path, end: int) -> str: ...
    def runner(self, row: SessionRow) -> AgentRunner: ...
    def confinement(self, row: SessionRow, profile: AgentProfile) -> Confinement | None: ...


_TRY_SUFFIX = re.compile(r"\s*\(try (\d+)\)\s*$")
_CHECK_MARK = CHECK_METHOD.encode()

# The points between the steps of making tries: the crash tests stop there.
STEPS = ("begun", "built")


def _reached(step: str) -> None:
    """Called as each step completes; a seam for the crash tests, nothing otherwise."""


# -- the plan (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Try:
    """One try of an attempts fork: its first prompt (None: no turn) and agent profile
    (None: the parent's)."""

    prompt: str | None
    agent: str | None


def tries_of(request: ForkRequest) -> list[Try]:
    """The tries a validated fork request asks for, in order (SPEC 19)."""
    if request.count is not None:
        return [Try(request.prompt, None) for _ in range(request.count)]
    if request.prompts is not None and request.agents is not None:
        return [Try(prompt, agent) for prompt, agent in zip(request.prompts, request.agents)]
    if request.prompts is not None:
        return [Try(prompt, None) for prompt in request.prompts]
    return [Try(request.prompt, agent) for agent in request.agents or ()]


def try_titles(parent_title: str, sibling_titles: Iterable[str], n: int) -> list[str]:
    """`<parent title> (try N)` for n tries, N going on from the highest `(try N)` among
    the titles of the forks already made at the same cut."""
    base = parent_title
    highest = 0
    for title in sibling_titles:
        match = _TRY_SUFFIX.search(title)
        if match and _TRY_SUFFIX.sub("", title) == base:
            highest = max(highest, int(match.group(1)))
    return [f"{base} (try {highest + i})" for i in range(1, n + 1)]


def last_check(lines: Iterable[tuple[int, bytes]]) -> dict[str, Any] | None:
    """The last `_cairnd/check` entry's params in a log, or None."""
    found = None
    for _offset, line in lines:
        if _CHECK_MARK not in line:
            continue
        message = parse_message(line)
        if message is not None and method_of(message) == CHECK_METHOD and isinstance(message.get("params"), dict):
            found = message["params"]
    return found


# -- making the tries (synchronous: a worker thread) ---------------------------------------


def make_tries(layout: StateLayout, registry: Registry, parent: SessionRow, k: int, tries: list[Try], *,
               request_id: str | None, max_file_bytes: int, history: Callable[[Path, int], str] | None = None,
               building: AbstractContextManager[Any] = nullcontext()) -> list[SessionRow]:
    """Fork `parent` at message k once per try, all or none. The cut is found once; the
    worktrees are built side by side (`building` bounds how many write files at once)."""
    places.use_state(layout.root)  # its vaults: where checkpoints are
    cut = find_fork_cut(layout, parent, k, history)
    siblings = [row.title for fork in registry.forks_at(parent.id, k) if (row := registry.get(fork.id))]
    titles = try_titles(parent.title, siblings, len(tries))
    rows: list[SessionRow] = []
    try:
        for attempt, title in zip(tries, titles):
            session_id = new_session_id()
            registry.begin_session(
                id=session_id, title=title, repo=parent.repo,
                worktree=layout.worktree_parent(session_id) / parent.repo.name, in_place=False,
                agent=attempt.agent or parent.agent, parent_id=parent.id, root_id=parent.root_id,
                turns=cut.turns, request_id=request_id)
            made = registry.get(session_id)
            assert made is not None
            rows.append(made)
        _reached("begun")
        with ThreadPoolExecutor(max_workers=len(rows), thread_name_prefix="cairnd-try") as pool:
            built = list(pool.map(lambda row: build_fork(layout, cut, row, max_file_bytes=max_file_bytes,
                                                         building=building), rows))
        _reached("built")
        registry.commit_sessions([(row.id, result, lineage) for row, (result, lineage) in zip(rows, built)])
    except BaseException:
        for row in rows:
            roll_back(layout, registry, row)
        raise
    ready = [registry.get(row.id) for row in rows]
    return [row for row in ready if row is not None]


# -- the requests (async, on the daemon's Sessions) -------------------------------------------


async def fork_tries(sessions: TryHost, request: ForkRequest, origin: Origin) -> dict[str, Any]:
    """An attempts fork: the tries made all or none, then every try's first turn and
    check at once. A try whose turn or check failed says so in its entry (`error`);
    the request itself succeeds once the tries exist."""
    tries = tries_of(request)
    for attempt in tries:  # agent_unknown before anything is made
        if attempt.agent is not None:
            sessions.profile(attempt.agent)
    rows = []
    if origin.request_id:  # made before a crash stopped us publishing: not made twice
        rows = await sessions.in_thread(sessions.registry.all_by_request, origin.request_id)
    if rows:
        parent_id = rows[0].parent_id
    else:
        parent = await sessions.live(request.session)
        parent_id = parent.id
        async with sessions.fork_limiter:
            rows = await anyio.to_thread.run_sync(lambda: make_tries(
                sessions.layout, sessions.registry, parent, request.user_message_index, tries,
                request_id=origin.request_id, max_file_bytes=sessions.config.snapshot_max_file_bytes,
                history=lambda log, end: sessions.predicted_history(parent, log, end),
                building=sessions.fork_builders))
        sessions.checkpoints.refs.wrote(parent.repo, len(rows))
    entries: list[dict[str, Any]] = [{} for _ in rows]

    async def run_try(i: int, row: SessionRow, attempt: Try) -> None:
        entry = dict(row.result or {})
        try:
            if attempt.prompt is not None:
                entry.update(await sessions.run_turn(row, attempt.prompt, origin))
            if request.check is not None:
                entry["check"] = await check_session(sessions, row, request.check, None)
        except CairnError as exc:
            entry["error"] = {"code": exc.code, "message": exc.message}
        entries[i] = entry

    # Turns are not bounded by max_parallel_forks (only making the forks is): all at once.
    async with anyio.create_task_group() as tg:
        for i, (row, attempt) in enumerate(zip(rows, tries)):
            tg.start_soon(run_try, i, row, attempt)
    return {"parent": parent_id, "user_message_index": request.user_message_index, "sessions": entries}


async def check(sessions: TryHost, request: CheckRequest, origin: Origin) -> dict[str, Any]:
    row = await sessions.live(request.session)
    return await check_session(sessions, row, request.command, request.timeout)


async def check_session(sessions: TryHost, row: SessionRow, command: tuple[str, ...],
                        timeout: float | None) -> dict[str, Any]:
    """Run `command` in the session's worktree after its running turn, confined as its
    agent, and record it in its log. The result is ok whatever the command's exit."""
    profile = sessions.profile(row.agent)
    runner = sessions.runner(row)
    async with runner.between_turns() as log:
        latest = await sessions.in_thread(_latest_checkpoint, log.path)
        outcome = await run_check(command, row.worktree, dict(profile.env),
                                  confinement=sessions.confinement(row, profile),
                                  timeout=timeout or DEFAULT_CHECK_SECONDS)
        turns, worktree_sha = latest.get("turns"), latest.get("worktreeSha")
        await sessions.in_thread(_record, log, check_entry(row.id, list(command), outcome.exit, outcome.output,
                                                         turns, worktree_sha, outcome.timed_out))
    return {"session": row.id, "command": list(command), "exit": outcome.exit, "timed_out": outcome.timed_out,
            "output": outcome.output, "turns": turns, "worktreeSha": worktree_sha}


def _latest_checkpoint(log: Path) -> dict[str, Any]:
    found = diffs.checkpoints_in(iter_lines(log)).checkpoints
    return found[-1] if found else {}


def _record(log: Any, entry: dict[str, Any]) -> None:
    log.append(entry)
    log.sync()


# -- compare (read-only) -------------------------------------------------------------------


def siblings_of(registry: Registry, session_id: str) -> tuple[str, int, list[str]]:
    """(parent, cut, the live forks of the parent at the cut, in the order made) for a fork."""
    fork = registry.fork_of(session_id)
    if fork is None:
        raise CairnError("bad_request", f"session {session_id} is not a fork: it has no siblings to compare")
    rows = [registry.get(sibling.id) for sibling in registry.forks_at(fork.parent_id, fork.user_message_index)]
    # What a rewind left behind is its session's child, not a try at a cut.
    abandoned = {journal.abandoned_id for journal in registry.rewinds(("pending", "done"))}
    live = [row for row in rows if row is not None and row.state == "ready" and row.id not in abandoned]
    # In the order made (the tries of one request are begun in order, built side by side).
    ids = [row.id for row in sorted(live, key=lambda row: (row.created_at, row.title))]
    return fork.parent_id, fork.user_message_index, ids


def compare(layout: StateLayout, registry: Registry, session_ids: list[str], *, commits: bool = False) -> dict[str, Any]:
    """SPEC 19's comparison of sessions: per session its title, agent, turns, state, the
    files changed since the cut (lines added and removed) and its last check. `commits`:
    also `from` and `to` (the states compared), for the web view's diff links."""
    if not session_ids:
        raise CairnError("bad_request", "compare needs at least one session")
    rows = [diffs.session_row(registry, layout, text) for text in dict.fromkeys(session_ids)]
    starts, latest = [], []
    for row in rows:
        found = diffs.read_checkpoints(layout, row)
        latest.append(diffs.state_commit(diffs.pick_checkpoint(found, row.id, None)) or "")
        starts.append(diffs.start_of(found, row.id).commit)
    where = diffs.git_dir_of(rows[0])
    changes = gitdiff.diff_files_many(where, list(zip(starts, latest)))
    forks = [registry.fork_of(row.id) for row in rows]
    cuts = {(fork.parent_id, fork.user_message_index) if fork else None for fork in forks}
    parent, index = next(iter(cuts)) if len(cuts) == 1 and None not in cuts else (None, None)
    out = []
    for row, changed in zip(rows, changes):
        check_params = last_check(iter_lines(layout.log_path(row.id)))
        out.append({
            **({"from": starts[len(out)], "to": latest[len(out)]} if commits else {}),
            "session": row.id, "title": row.title, "agent": row.agent, "turns": row.turns, "state": row.state,
            "files": [] if isinstance(changed, CairnError) else [
                {"path": c.path, "status": c.status, "added": c.added, "removed": c.removed} for c in changed],
            "check": None if check_params is None else {
                "command": check_params.get("command"), "exit": check_params.get("exit"),
                "turns": check_params.get("turns")},
        })
    return {"parent": parent, "user_message_index": index, "sessions": out}


def compare_siblings(layout: StateLayout, registry: Registry, session_id: str, *, commits: bool = False) -> dict[str, Any]:
    """compare of S and every fork of S's parent at S's cut."""
    diffs.session_row(registry, layout, session_id)
    _parent, _k, ids = siblings_of(registry, session_id)
    return compare(layout, registry, ids if session_id in ids else [session_id, *ids], commits=commits)
