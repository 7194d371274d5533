"""Sessions as the daemon uses them: new, prompt, fork, rewind, land, cancel, delete.
Validated requests and their `Origin` in, result dicts (SPEC 7) or CairnError out.
(Recovery after a crash is recovery.py's.)

Blocking work (git, SQLite, log scans) runs in worker threads; agent processes are
owned by one AgentRunner per active session.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from cairnd.sessionlog import cutindex
from cairnd.git import run as git
from cairnd.git import objects as gitobjects
from cairnd.git import refs as gitrefs
from cairnd.git import worktree as gitworktree
from cairnd.git import inner
from cairnd.git import places
from cairnd.checkpoints import storage
from cairnd.checkpoints.checkpoint import session_ref_prefix
from cairnd.checkpoints.checkpointer import checkpointer_for
from cairnd.sessionlog.cutindex import find_cut
from cairnd.config.settings import AgentProfile, Config
from cairnd.agent.home import private_home
from cairnd.agent.confinement import Confinement, detect
from cairnd.errors import CairnError
from cairnd.sessions.creation import creating, write_initial_log
from cairnd.sessions.forker import fork_session
from cairnd.agent.history import predict as predict_history
from cairnd.ids import new_session_id
from cairnd.journal import event
from cairnd.sessionlog.entries import checkpoint_entry
from cairnd.sessionlog.file import iter_lines, log_mark
from cairnd.state.registry import Registry, RewindRow, SessionRow
from cairnd.state.sessionlock import SessionLocks
from cairnd.sessions import rewind as rewinding
from cairnd.sessions.land import land
from cairnd.sessions import attempts
from cairnd.spool.requests import (
    CancelRequest,
    CheckRequest,
    DeleteRequest,
    ForkRequest,
    LandRequest,
    NewRequest,
    Origin,
    PromptRequest,
    RewindRequest,
    is_git_url,
)
from cairnd.agent.runner import AgentRunner, Front
from cairnd.sessions.results import CancelResult, CreatedResult, DeleteResult, shown_turn
from cairnd.sessionlog.transcript import turn_of_request


class Sessions:
    """Use as `async with Sessions(config) as sessions:`: its task group hosts the agent
    processes, and leaving it stops every agent (always reaped)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.layout = config.layout
        self.registry = Registry(self.layout.db)
        places.attach(self.registry)  # cairnd's git finds sessions' git state from here (SPEC 16)
        self.runners: dict[str, AgentRunner] = {}
        # Sessions an editor fronts (cairnd acp, SPEC 18): their agents talk to it.
        self.fronts: dict[str, Front] = {}
        # One writer per session (state/sessionlock): a daemon holds a session's lock for
        # each request that writes it; `cairnd acp` (hold_locks) for as long as it serves it.
        self.locks = SessionLocks(self.layout)
        self.hold_locks = False
        self._log_marks: dict[str, tuple[int, int]] = {}  # each log as this process last left it
        self.turn_limiter = anyio.CapacityLimiter(config.max_parallel_turns)
        # Forks (and rewinds) build their worktrees max_parallel_forks at once; the rest
        # of making one (its log, its registry rows: fsyncs, waits more than work)
        # overlaps with the next ones', so twice as many are under way.
        self.fork_builders = threading.BoundedSemaphore(config.max_parallel_forks)
        self.fork_limiter = anyio.CapacityLimiter(2 * config.max_parallel_forks)
        # git and SQLite calls are short; more threads than cores only adds contention.
        self.io_limiter = anyio.CapacityLimiter(8)
        self.turns_in_flight = 0
        # Called when a turn starts, so `cairnd status` sees it while it runs (the daemon
        # sets it to rewrite status.json); the end of a request rewrites it anyway.
        self.on_turn_start: Callable[[], None] = lambda: None
        self.sandbox = detect()  # once: what the kernel offers agents (SPEC 16)
        # With [fleet]: (url, ref) -> (this host's clone, commit); see cairnd.fleet.
        self.url_repos: Callable[[str, str], tuple[Path, str]] | None = None
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None
        self.checkpoints = checkpointer_for(self.layout.root)
        self._background: set[anyio.CancelScope] = set()  # storage upkeep: cancelled when sessions close
        self._maintaining = False

    async def __aenter__(self) -> Sessions:
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(self.checkpoints.close)
        if self.checkpoints.watches is not None:
            self._tg.start_soon(self.checkpoints.read_events)
        self._stack.callback(lambda: [scope.cancel() for scope in self._background])
        self._tg.start_soon(self._daily_gc)
        return self

    # -- storage (SPEC 15) ------------------------------------------------------------------

    def _upkeep_scope(self) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        self._background.add(scope)
        return scope

    async def _daily_gc(self) -> None:
        with self._upkeep_scope():
            while True:
                try:
                    removed = await self.in_thread(self.collect, dry_run=False)
                except Exception as exc:  # noqa: BLE001  storage upkeep never stops the daemon
                    event(logging.WARNING, f"gc of deleted sessions failed: {exc!r}")
                else:
                    for item in removed:
                        event(logging.INFO, f"gc: removed the log of a session deleted "
                                            f"{self.config.keep_deleted_days:g}+ days ago", session=item.session)
                await anyio.sleep(storage.DAY)

    def collect(self, dry_run: bool) -> list[storage.Collected]:
        rows = self.registry.sessions(("deleted",))
        return storage.collect(rows, self.layout.session_dir, self.config.keep_deleted_days, dry_run=dry_run)

    def _maintain_soon(self) -> None:
        """Pack refs and objects of repositories that need it, in the background, one
        repository at a time: never on the turn path."""
        if self._maintaining or self._tg is None or not self.checkpoints.refs.due():
            return
        self._maintaining = True
        self._tg.start_soon(self._maintain)

    async def _maintain(self) -> None:
        scope = self._upkeep_scope()
        try:
            with scope:
                for common in self.checkpoints.refs.due():
                    try:
                        await self.in_thread(self.checkpoints.refs.maintain, common)
                    except CairnError as exc:
                        event(logging.WARNING, f"packing checkpoints in {common} failed: {exc.message}")
        finally:
            self._background.discard(scope)
            self._maintaining = False

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.close()
        finally:
            await self._stack.__aexit__(exc_type, exc, tb)

    @property
    def active_agents(self) -> int:
        return sum(1 for runner in self.runners.values() if runner.running)

    def reload_agents(self, agents: dict[str, AgentProfile], default_agent: str) -> None:
        # Running agents keep the profile they started with; the next start uses the new one.
        self.config = dataclasses.replace(self.config, agents=dict(agents), default_agent=default_agent)

    def profile(self, name: str | None) -> AgentProfile:
        return self.config.agent(name)

    async def in_thread(self, fn, *args, **kwargs):
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self.io_limiter)

    # -- lookups ----------------------------------------------------------------------

    async def live(self, session_id: str) -> SessionRow:
        return await self.in_thread(self._live_row, session_id)

    def _live_row(self, session_id: str) -> SessionRow:
        row = self.registry.get(session_id)
        if row is None or row.state == "creating":
            longer = self.registry.ids_starting(session_id)
            hint = (f"; it begins {', '.join(longer)}: requests take whole session ids, prefixes are the "
                    "command line's" if longer else "")
            raise CairnError("unknown_session", f"session {session_id!r} does not exist{hint}")
        if row.state == "deleted":
            raise CairnError("session_deleted", f"session {session_id!r} was deleted")
        return row

    def runner(self, row: SessionRow) -> AgentRunner:
        runner = self.runners.get(row.id)
        if runner is None:
            profile = self.profile(row.agent)
            runner = AgentRunner(
                row.id, row.worktree, self.layout.log_path(row.id), profile,
                max_file_bytes=self.config.snapshot_max_file_bytes,
                idle_seconds=self.config.idle_agent_seconds, limiter=self.io_limiter,
                task_group=self._tg, stop_timeout=min(10.0, self.config.stop_timeout_seconds),
                checkpoint=self.checkpoints.take,
                confinement=self.confinement(row, profile), front=self.fronts.get(row.id),
                home=private_home(self.layout.home(row.id), profile.env, profile.home_seed,
                                  self.layout.home(row.parent_id) if row.parent_id else None),
            )
            self.runners[row.id] = runner
        return runner

    def confinement(self, row: SessionRow, profile: AgentProfile) -> Confinement | None:
        """How the session's agent is confined; None runs it unconfined (`sandbox = "off"`,
        or a kernel without Landlock, which the daemon reported at start)."""
        if profile.sandbox == "off" or not self.sandbox.available:
            return None
        return Confinement(worktree=row.worktree, source=row.repo, state_dir=self.layout.root,
                           tmpdir=self.layout.agent_tmp(row.id), git_dir=row.git_dir, common_dir=row.common_dir)

    @asynccontextmanager
    async def writing(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's lock while writing it (CairnError session_busy when another
        process does). A runner kept from before is dropped if another writer changed
        the log since this process last left it: its agent and its count of turns are
        out of date."""
        fresh = not self.locks.holds(session_id)
        self.locks.claim(session_id)
        try:
            mark = self._log_marks.get(session_id) if fresh else None  # a holder's log is its own
            if mark is not None and mark != log_mark(self.layout.log_path(session_id)) and session_id in self.runners:
                await self.runners.pop(session_id).close()
            yield
        finally:
            self._log_marks[session_id] = log_mark(self.layout.log_path(session_id))
            if not self.hold_locks:
                self.locks.release(session_id)

    # -- requests -----------------------------------------------------------------------

    async def new(self, request: NewRequest, origin: Origin) -> dict[str, Any]:
        if origin.request_id and (done := await self.in_thread(self.registry.by_request, origin.request_id)):
            # Created before a crash stopped us publishing: answer, don't create twice.
            return await self._with_turn(done, request.prompt, origin)
        profile = self.profile(request.agent)
        if is_git_url(request.repo):
            # SPEC 17: a fleet host clones a git URL under its state directory.
            if self.url_repos is None:
                raise CairnError("bad_request", f"repo {request.repo!r} is a git URL: only a fleet host "
                                                "([fleet] in the configuration) clones one; give a path")
            repo, commit = await self.in_thread(self.url_repos, request.repo, request.ref)
        else:
            repo = await self.in_thread(git.resolve_repo, request.repo)
            commit = await self.in_thread(git.resolve_commit, repo, request.ref)
        session_id = new_session_id()
        worktree = repo if request.in_place else self.layout.worktree_parent(session_id) / repo.name
        # One worker thread for the whole transaction: a cancelled caller does not stop
        # it half-way, and its rollback runs there too.
        await self.in_thread(lambda: self._create(
            commit, id=session_id, title=request.title or repo.name, repo=repo, worktree=worktree,
            in_place=request.in_place, agent=profile.name, parent_id=None, root_id=session_id, turns=0,
            request_id=origin.request_id))
        row = await self.in_thread(self.registry.get, session_id)
        return await self._with_turn(row, request.prompt, origin)

    def _create(self, commit: str, **fields: Any) -> None:
        with creating(self.layout, self.registry, **fields) as made:
            row = made.row
            if not row.in_place:
                gitworktree.add_worktree(row.repo, row.worktree, commit, inner_map=self.layout.inner_map(row.id),
                                         views=places.root_of(self.layout.root))
            else:  # the user's own checkout: its directories are the user's, found once, now
                dirs = places.discover(row.repo)
                places.register(row.worktree, dirs.git_dir, dirs.common_dir, places.root_of(self.layout.root))
            # Through the checkpointer: its full scan begins the watch, so turn 1 costs what it changes.
            baseline = self.checkpoints.take(row.id, row.worktree, 0, self.config.snapshot_max_file_bytes)
            log_path = write_initial_log(self.layout, row.id, None, 0, [checkpoint_entry(baseline)])
            made.commit(CreatedResult(session=row.id, title=row.title, worktree=str(row.worktree),
                                      headSha=baseline["headSha"], log=str(log_path)))

    async def fork(self, request: ForkRequest, origin: Origin, tip: bool = False) -> dict[str, Any]:
        """`tip`: the index may also be the number of user messages (an editor's fork of
        the whole session, SPEC 18)."""
        if request.tries is not None:  # attempts: many forks at one cut (SPEC 19)
            result = await attempts.fork_tries(self, request, origin)
            self._maintain_soon()
            return result
        done, parent = await self.in_thread(self._fork_lookup, request.session, origin.request_id)
        if done is None:
            # The limit covers making the fork, not its first turn (that is a turn like any).
            async with self.fork_limiter:
                done = await anyio.to_thread.run_sync(self._make_fork, parent, request, origin, tip)
            self._maintain_soon()
        result = await self._with_turn(done, request.prompt, origin)
        if request.check is not None:
            result["check"] = await attempts.check_session(self, done, request.check, None)
        return result

    async def check(self, request: CheckRequest, origin: Origin) -> dict[str, Any]:
        """SPEC 19: a command in the session's worktree after its running turn."""
        return await attempts.check(self, request, origin)

    def _fork_lookup(self, session_id: str, request_id: str | None) -> tuple[SessionRow | None, SessionRow]:
        """(the fork this request already made, or None; the parent, live)."""
        done = self.registry.by_request(request_id) if request_id else None
        return done, (self._live_row(session_id) if done is None else done)

    def _make_fork(self, parent: SessionRow, request: ForkRequest, origin: Origin, tip: bool = False) -> SessionRow:
        """The fork made, and the bookkeeping after it, in one worker thread: every
        hand-over to a thread costs the event loop, and a burst of forks pays it each time."""
        result = fork_session(
            self.layout, self.registry, parent, request.user_message_index,
            title=request.title, request_id=origin.request_id,
            max_file_bytes=self.config.snapshot_max_file_bytes,
            history=lambda log, end: self.predicted_history(parent, log, end),
            building=self.fork_builders, tip=tip,
        )
        # The fork's baseline ref is one more loose ref to pack (at once past the hard limit).
        self.checkpoints.refs.wrote(parent.repo)
        row = self.registry.get(result["session"])
        assert row is not None  # just committed; nobody else knows its id yet
        return row

    async def rewind(self, request: RewindRequest, origin: Origin) -> dict[str, Any]:
        """SPEC 13. Runs in the session's queue, so no turn of it is in flight."""
        async with self.writing(request.session):
            result = await self._rewind(request, origin)
        row = await self.in_thread(self.registry.get, result["session"])
        return await self._with_turn(row, request.prompt, origin, base=result)

    async def _rewind(self, request: RewindRequest, origin: Origin) -> dict[str, Any]:
        record = None
        if origin.request_id:
            record = await self.in_thread(self.registry.rewind_by_request, origin.request_id)
        if record is None:
            row = await self.live(request.session)
            await self._finish_rewinds(row)
            # Out of range or in a sub-session: said before the agent is stopped for nothing.
            await self.in_thread(find_cut, self.layout.log_path(row.id), request.user_message_index, row.id)
            # Its agent knows the conversation past the cut, and writes to the old log.
            runner = self.runners.pop(row.id, None)
            if runner is not None:
                await runner.close()
            async with self.fork_limiter:
                record = await anyio.to_thread.run_sync(lambda: self._abandon(row, request, origin))
        if record.state == "done" and record.result is not None:
            result = record.result
        else:
            row = await self.in_thread(self.registry.get, record.session_id)
            assert row is not None
            try:
                with anyio.CancelScope(shield=True):  # past the commit point: finish it
                    result = await self.in_thread(rewinding.finish, self.layout, self.registry, row, record,
                                                max_file_bytes=self.config.snapshot_max_file_bytes)
            except CairnError as exc:
                raise CairnError(exc.code, f"{exc.message} (the rewind is recorded, and session "
                                           f"{record.abandoned_id} holds what it left: it is finished before "
                                           f"the session's next request)") from None
            finally:
                # What the checkpointer last saw of the session is no longer so.
                self.checkpoints.forget(row.id)
        return result

    def _abandon(self, row: SessionRow, request: RewindRequest, origin: Origin) -> RewindRow:
        with self.fork_builders:  # a rewind builds a worktree as a fork does
            return rewinding.abandon(self.layout, self.registry, row, request.user_message_index,
                                     request_id=origin.request_id, max_file_bytes=self.config.snapshot_max_file_bytes,
                                     history=lambda log, end: self.predicted_history(row, log, end),
                                     snapshot=lambda tree, cap, message: self.checkpoints.snapshot(
                                         row.id, tree, cap, message))

    def predicted_history(self, row: SessionRow, log: Path, end: int) -> str:
        """How the agent of a fork or rewind of `row` that keeps the bytes of `log` before
        `end` will get that history when it starts (SPEC 12; cairnd.history)."""
        try:
            profile = self.config.agent(row.agent)
        except CairnError:
            return "replay"  # its profile is gone from the configuration: it will fail to start anyway
        return predict_history(iter_lines(log), end, profile.history, profile.name)

    async def land(self, request: LandRequest, origin: Origin) -> dict[str, Any]:
        row = await self.live(request.session)
        return await self.in_thread(land, self.layout, row, request.branch, turn=request.turn,
                                  message=request.message, force=request.force)

    async def _with_turn(self, row: SessionRow, prompt: str | None, origin: Origin,
                         base: dict[str, Any] | None = None) -> dict[str, Any]:
        result = dict(row.result or {}) if base is None else dict(base)
        if prompt is None:
            return result
        if row.state != "ready":
            raise CairnError("session_deleted", f"session {row.id!r} was deleted before its first turn")
        try:
            result.update(await self.run_turn(row, prompt, origin))
        except CairnError as exc:
            # The session exists (or was rewound): say so, or the writer cannot find what it made.
            done = (f"the rewind is done; session {base['abandoned']} holds what it left"
                    if base is not None and "abandoned" in base else f"session {row.id} was created")
            raise CairnError(exc.code, f"{exc.message} ({done})") from None
        return result

    async def prompt(self, request: PromptRequest, origin: Origin, content: list[Any] | None = None
                     ) -> dict[str, Any]:
        """`content`: the prompt's ACP content blocks as an editor sent them (SPEC 18), in
        place of `request.text` alone."""
        row = await self.live(request.session)
        await self._finish_rewinds(row)
        return await self.run_turn(row, request.text, origin, content)

    async def turn_of(self, row: SessionRow, text: str, content: list[Any] | None = None) -> dict[str, Any]:
        """A turn of a session this process already holds (cairnd acp, SPEC 18): no
        lookup of its row nor of unfinished rewinds (it holds the session's lock, so no
        other process rewound or deleted it since it looked)."""
        return await self.run_turn(row, text, Origin(None), content)

    async def _finish_rewinds(self, row: SessionRow) -> None:
        """A rewind whose finish failed after its commit point (git or the disk refused) is
        finished before the session runs anything else."""
        for record in await self.in_thread(self.registry.rewinds_of, row.id):
            if record.state == "pending":
                with anyio.CancelScope(shield=True):
                    await self.in_thread(rewinding.finish, self.layout, self.registry, row, record,
                                       max_file_bytes=self.config.snapshot_max_file_bytes)
                self.checkpoints.forget(row.id)

    async def run_turn(self, row: SessionRow, text: str, origin: Origin, content: list[Any] | None = None
                    ) -> dict[str, Any]:
        if origin.recovered and origin.request_id:
            # Did this request's turn start before the crash? Then it is not run again.
            record = await self.in_thread(self._turn_record, row.id, origin.request_id)
            if record is not None:
                if record.get("stopReason") == "interrupted" or record.get("open"):
                    raise CairnError("turn_interrupted",
                                     f"turn {shown_turn(record.get('turn'))} of session {row.id} was cut by a stop of cairnd")
                return record["result"]
        async with self.turn_limiter, self.writing(row.id):
            self.turns_in_flight += 1
            self.on_turn_start()
            runner = self.runner(row)
            try:
                result = await runner.prompt(text, request_id=origin.request_id, content=content)
            finally:
                self.turns_in_flight -= 1
                # A turn that failed (agent_failed, turn_interrupted) is in the log too:
                # the registry's count follows the log whatever the outcome.
                if runner.turns is not None:
                    with anyio.CancelScope(shield=True):
                        await self.in_thread(self.registry.set_turns, row.id, runner.turns)
        self._maintain_soon()
        if self._tg is not None:  # the offsets index beside the log follows it, off the turn path
            self._tg.start_soon(self.in_thread, cutindex.current, self.layout.log_path(row.id))
        return result

    def _turn_record(self, session_id: str, request_id: str) -> dict[str, Any] | None:
        return turn_of_request(iter_lines(self.layout.log_path(session_id)), request_id)

    async def cancel(self, request: CancelRequest, origin: Origin) -> CancelResult:
        row = await self.live(request.session)
        runner = self.runners.get(row.id)
        cancelled = await runner.cancel() if runner is not None else False
        return CancelResult(session=row.id, cancelled=cancelled)

    async def delete(self, request: DeleteRequest, origin: Origin) -> DeleteResult:
        row = await self.live(request.session)
        async with self.writing(row.id):
            runner = self.runners.pop(row.id, None)
            if runner is not None:
                await runner.close()
            await self.in_thread(self._delete, row, request.keep_worktree)
        return DeleteResult(session=row.id, worktree_kept=request.keep_worktree or row.in_place)

    def _delete(self, row: SessionRow, keep_worktree: bool) -> None:
        # The log stays in sessions/<id>/: nothing is ever lost, and lineage keeps the title.
        inner.forget_session(self.layout.inner_map(row.id) if not row.in_place else None, row.repo, row.id)
        if not keep_worktree and not row.in_place:
            gitworktree.remove_worktree(row.repo, row.worktree)
            shutil.rmtree(self.layout.worktree_parent(row.id), ignore_errors=True)
        self.checkpoints.forget(row.id)
        gitrefs.delete_refs(row.repo, session_ref_prefix(row.id))
        shutil.rmtree(self.layout.agent_tmp(row.id), ignore_errors=True)
        shutil.rmtree(self.layout.home(row.id), ignore_errors=True)  # its copies of the profile's credentials
        self.registry.mark_deleted(row.id)

    # -- life cycle ------------------------------------------------------------------------

    async def close(self) -> None:
        runners, self.runners = list(self.runners.values()), {}
        async with anyio.create_task_group() as tg:
            for runner in runners:
                tg.start_soon(runner.close)
        await anyio.to_thread.run_sync(gitobjects.close_all)  # the kept `git cat-file` processes
        self.locks.release_all()
