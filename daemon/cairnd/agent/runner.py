"""The turns of one session on its agent (SPEC 3, 5, 9, 10): the turn loop alone.

    AgentRunner.prompt(text)
        -> agent process (agentproc: spawned on demand in the worktree, stopped by the ladder)
        -> initialize, the agent session with its history (history: fork, resume, load or replay),
           through the SDK's client side; session/prompt, cairnd's own frame (_request_prompt)
        -> every frame both ways into the session log (tap)
        -> turn_complete, agent_checkpoint, fsync -> the turn's result

Log entries of cairnd's own, per turn: `_cairnd/turn_start {sessionId, turn, requestId}`
just before the prompt (so recovery can tell whether a request's turn began), then
after the answer `_posthog/turn_complete` (stopReason as the agent said it, or
`agent_exited`, `interrupted`, or `error` when it answered the prompt with a JSON-RPC
error: see `turn_outcome`) and `_posthog/agent_checkpoint`, in one write, fsynced before
the result is returned (`sessionlog.turns.end_turn`).

Cancel: a turn that ends `cancelled` retires its agent process (stdin closed, SIGTERM
once its processes have finished what they were doing: see agentproc) and the next
prompt starts a fresh one, which gets the history
like any restart. A cancel may leave an agent's state out of step with its answers
(claude-agent-acp 0.23.1 answers the prompt after a cancel at once and stays one turn
behind from then on, so a checkpoint would miss that turn's changes); a fresh process is
the cure that works for every agent, for about a second.

Lifetime: a runner's background tasks (one host task per agent process; the idle timer)
live in the task group it is given, which must outlive its `close()`. Agents idle for
`idle_seconds` are stopped and restarted on the next prompt; `close()` stops the agent,
always reaping it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import acp
import anyio
from acp.schema import ClientCapabilities, EmbeddedResourceContentBlock, FileSystemCapabilities, Implementation
from pydantic import ValidationError

from cairnd import __version__
from cairnd.agent.home import PrivateHome
from cairnd.agent.acpclient import WorktreeClient
from cairnd.agent.process import AgentProcess, Launch, host_agent
from cairnd.checkpoints.checkpoint import take_checkpoint
from cairnd.config.settings import AgentProfile
from cairnd.agent.confinement import Confinement
from cairnd.sessionlog.entries import sdk_session_entry, turn_start_entry
from cairnd.errors import CairnError
from cairnd.agent.history import HistoryFacts, marked_lines, open_history
from cairnd.agent.history import scan as history_scan
from cairnd.state.layout import STDERR_NAME
from cairnd.sessionlog.file import SessionLog, iter_lines
from cairnd.agent.tap import Tap, wire_block
from cairnd.sessionlog.transcript import SessionState, replay_prompt_block
from cairnd.sessionlog.turns import TakeCheckpoint, close_open_turn, end_turn, read_session_state


@dataclass(frozen=True)
class Front:
    """An editor in front of the session (`cairnd acp`, SPEC 18): the agent's requests to
    its client go to `client` (an `acp.Client`), the agent is offered the editor's
    `capabilities`, and `observe` sees every frame the agent sends, once it is logged (its
    bytes, and their parse or None: `Tap.incoming`)."""

    client: Any
    capabilities: ClientCapabilities
    observe: Callable[[bytes, dict[str, Any] | None], None]
    mcp_servers: list[Any] = field(default_factory=list)  # the editor's, for the agent's sessions


# -- the functional core --------------------------------------------------------------


def turn_outcome(response: dict[str, Any] | None, stop_requested: bool, agent_name: str,
                 exit_description: str) -> tuple[str, str | None]:
    """How a turn ended, from the raw response to its prompt: `(stop_reason, failure)`,
    where `failure` (None for a turn that ended normally) explains an `agent_failed`.

    No response: the agent went away (`agent_exited`, explained by `exit_description`)
    or cairnd stopped it (`interrupted`). An error response: `error`. Otherwise the
    agent's own stop reason, `unknown` when it gave none that is a string."""
    if response is None:
        return ("interrupted" if stop_requested else "agent_exited"), exit_description
    if "error" in response:
        error = response["error"] if isinstance(response["error"], dict) else {}
        return "error", (f"agent {agent_name!r} answered session/prompt with error "
                         f"{error.get('code')}: {error.get('message')} {error.get('data') or ''}").rstrip()
    result = response.get("result")
    stop = result.get("stopReason") if isinstance(result, dict) else None
    return (stop if isinstance(stop, str) else "unknown"), None


# -- the runner -------------------------------------------------------------------------------


class AgentRunner:
    """Runs the turns of one session on its agent (see the module docstring).

    Its background tasks (one host per agent process, the idle timer) live in
    `task_group`, which must outlive the runner's `close()`. `prompt`, `cancel`,
    `interrupt` and `close` may be called from any task; prompts run one at a time, and
    `cancel` acts on the turn in flight.
    """

    def __init__(self, session_id: str, worktree: Path, log_path: Path, profile: AgentProfile, *,
                 task_group: anyio.abc.TaskGroup, max_file_bytes: int, idle_seconds: float | None = None,
                 limiter: anyio.CapacityLimiter | None = None, stop_timeout: float = 10.0,
                 start_timeout: float = 60.0, checkpoint: TakeCheckpoint | None = None,
                 confinement: Confinement | None = None, front: Front | None = None,
                 home: PrivateHome | None = None) -> None:
        self.session_id = session_id
        self.home = home  # the session's private HOME (SPEC 16)
        self.front = front  # None: cairnd answers the agent itself (WorktreeClient)
        self.confinement = confinement  # None: the agent runs unconfined
        # The daemon gives its Checkpointer's, whose cost follows what the turn changed.
        self._take_checkpoint = checkpoint or take_checkpoint
        self.worktree = Path(worktree)
        self.log_path = Path(log_path)
        self.profile = profile
        self.max_file_bytes = max_file_bytes
        self.idle_seconds = idle_seconds
        self.limiter = limiter
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.client = front.client if front is not None else WorktreeClient(self.worktree, profile.permission,
                                                                             limiter)
        self._tg = task_group
        self._log: SessionLog | None = None
        self._tap: Tap | None = None
        self._turns: int | None = None  # turns completed, once read from the log
        self._agent: AgentProcess | None = None
        self._retiring: list[AgentProcess] = []
        self._turn_lock = anyio.Lock(fast_acquire=True)  # no yield to the loop on a turn's path
        self._turn_agent: AgentProcess | None = None  # the agent of the turn in flight
        self._cancel_requested = False
        self._idle_scope: anyio.CancelScope | None = None  # the idle timer: a deadline, pushed back by turns
        self._idle_agent: AgentProcess | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether a turn is in flight."""
        return self._turn_lock.locked()

    @property
    def turns(self) -> int | None:
        """Turns the log holds (ended ones), once the runner has read it; it is the log's
        writer, so it counts them from there on. None again while a turn is open, and
        after one whose end could not be written."""
        return self._turns

    @property
    def running(self) -> bool:
        """Whether an agent process is up for this session."""
        return self._agent is not None and self._agent.running

    # -- turns ----------------------------------------------------------------------

    async def prompt(self, text: str, request_id: str | None = None, content: list[Any] | None = None
                     ) -> dict[str, Any]:
        """Run one turn; returns `{"session", "turn", "stopReason", "checkpoint"}` once
        turn_complete and the checkpoint are durable in the log.

        `request_id` (the spool request's) is written just before the prompt in a
        `_cairnd/turn_start` entry, so recovery can tell whether a request's turn began.
        Raises CairnError `agent_failed` (the agent could not start, exited mid-turn, or
        answered with an error; a turn that began is still recorded and checkpointed)
        or `turn_interrupted` (cairnd stopped the agent mid-turn: `interrupt`, `close`).
        If the calling task is cancelled mid-turn, the agent is stopped and the turn
        recorded as `interrupted` before the cancellation goes on.
        """
        async with self._turn_lock:
            if self._closed:
                raise CairnError("turn_interrupted", f"session {self.session_id}: cairnd stopped the session's "
                                                     "agent before this turn began")
            self._disarm_idle_timer()
            try:
                return await self._turn(text, request_id, content)
            finally:
                # Reset as the turn ends, not as it begins: taking the lock is a scheduling
                # point, and a cancel that came in it (the lock held, the turn not yet
                # begun) was reset and lost, the turn then running to its end.
                self._cancel_requested = False
                self._turn_agent = None
                if self._agent is not None and not self._closed:
                    self._arm_idle_timer(self._agent)

    @asynccontextmanager
    async def between_turns(self) -> AsyncIterator[SessionLog]:
        """Hold the session between two turns (after the one in flight, before the next)
        and hand over its log, of which the runner is the one writer: a check runs and
        records itself here (SPEC 19), on files no turn is changing."""
        async with self._turn_lock:
            if self._closed:
                raise CairnError("session_deleted", f"session {self.session_id} was closed")
            log, _tap = await self._open_log()
            yield log
    async def start(self) -> None:
        """Start the agent and open its session now, not at the first prompt (an editor
        wants its modes, and to hear at once that it cannot start). Raises as prompt()."""
        async with self._turn_lock:
            if self._closed:
                raise CairnError("turn_interrupted", f"session {self.session_id}: cairnd stopped the session's agent")
            self._disarm_idle_timer()
            await self._open_log()
            await self._completed_turns()
            agent = await self._ensure_agent()
            self._arm_idle_timer(agent)

    async def call_agent(self, call: Callable[[Any, str], Awaitable[Any]]) -> Any:
        """`call(conn, sdk_session_id)` on the running agent, started first if it is not
        (for what an editor passes through: modes, config options)."""
        if not self.running:
            await self.start()
        agent = self._agent
        if agent is None or agent.sdk_session_id is None:
            raise CairnError("agent_failed", f"session {self.session_id}: its agent is not running")
        return await call(agent.conn, agent.sdk_session_id)

    async def note(self, entry: dict[str, Any]) -> None:
        """Append one of cairnd's own entries between turns (a slash command's answer,
        SPEC 18), durably; the runner stays the log's one writer."""
        async with self.between_turns() as log:
            log.append(entry)
            await anyio.to_thread.run_sync(log.sync, limiter=self.limiter)

    async def cancel(self) -> bool:
        """Send `session/cancel` for the turn in flight; whether one was running. A
        cancel that comes while the agent is still starting is sent right after the
        prompt."""
        if not self.busy:
            return False
        self._cancel_requested = True
        agent, tap = self._turn_agent, self._tap
        if agent is not None and tap is not None and tap.prompt_sent:
            await self._send_cancel(agent)
        return True

    async def interrupt(self) -> None:
        """Stop the agent now (stdin closed, SIGTERM, SIGKILL) and wait for it; a turn in
        flight ends `interrupted` (its prompt() raises turn_interrupted). The next
        prompt starts a new agent process."""
        if self._turn_agent is not None:
            self._turn_agent.stop()
        if self._agent is not None:
            self._retire(self._agent)
        await self._await_retired()

    async def _turn(self, text: str, request_id: str | None, content: list[Any] | None = None) -> dict[str, Any]:
        log, tap = await self._open_log()
        tap.expect_prompt()
        turn = await self._completed_turns()
        agent = await self._ensure_agent()
        self._turn_agent = agent
        opened_as, agent.history = agent.history, None  # reported by the turn that opened it
        blocks: list[dict[str, Any]] = []
        if agent.replay is not None:
            blocks.append(wire_block(EmbeddedResourceContentBlock.model_validate(agent.replay)))
            agent.replay = None  # sent once per agent session, even if this turn fails
        # An editor's own blocks (files, images, resources) as it sent them; else the text.
        blocks.extend([wire_block(block) for block in content] if content is not None
                      else [{"text": text, "type": "text"}])
        log.append(turn_start_entry(self.session_id, turn, request_id))
        # The log holds an open turn from here: until its end is written (`_end_turn`)
        # the count is the log's again, so a turn that ends any other way (its end
        # refused by a full disk, a cancel before the prompt went out) is closed
        # `interrupted` by the next one, never started again under its number.
        self._turns = None
        try:
            response = await self._request_prompt(agent, tap, blocks)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if tap.prompt_sent:  # the turn began: it must end in the log
                    agent.stop()
                    await self._await_exit(agent)
                    await self._end_turn(turn, "interrupted")
            raise
        if response is None:
            # No answer: the agent went away, or we stopped it. Wait until everything it
            # said before going is in the log and it is reaped.
            await self._await_exit(agent)
        stop_reason, failure = turn_outcome(response, agent.stop_requested, self.profile.name,
                                            agent.describe_exit())
        with anyio.CancelScope(shield=True):
            checkpoint = await self._end_turn(turn, stop_reason, failure)
        if stop_reason == "cancelled" and self._agent is agent:
            self._retire(agent, between_turns=True)  # see "Cancel" in the module docstring
        if stop_reason == "interrupted":
            raise CairnError("turn_interrupted", f"session {self.session_id}: turn {turn + 1} was cut short: "
                                                 "cairnd stopped its agent")
        if failure is not None:
            raise CairnError("agent_failed", f"session {self.session_id}, turn {turn + 1}: {failure}")
        result = {"session": self.session_id, "turn": turn, "stopReason": stop_reason, "checkpoint": checkpoint}
        if opened_as is not None:  # this turn started the agent: how it got the history, and its session
            result["history"] = opened_as
            result["sdkSessionId"] = agent.sdk_session_id
        return result

    async def _end_turn(self, turn: int, stop_reason: str, failure: str | None = None) -> dict[str, Any]:
        log, _tap = await self._open_log()
        checkpoint = await end_turn(log, self.session_id, self.worktree, turn, stop_reason,
                                    max_file_bytes=self.max_file_bytes, limiter=self.limiter,
                                    take=self._take_checkpoint, failure=failure)
        self._turns = turn + 1
        return checkpoint

    async def _completed_turns(self) -> int:
        """Turns completed so far, from the log the first time (closing a turn that a
        crash of cairnd left open), then counted here: the runner is the log's writer."""
        if self._turns is None:
            log, _tap = await self._open_log()
            with anyio.CancelScope(shield=True):
                self._turns, _closed = await close_open_turn(
                    log, self.session_id, self.worktree, max_file_bytes=self.max_file_bytes, limiter=self.limiter,
                    take=self._take_checkpoint)
        return self._turns

    async def _await_exit(self, agent: AgentProcess) -> None:
        await agent.exited.wait()
        if self._agent is agent:
            self._agent = None

    async def _request_prompt(self, agent: AgentProcess, tap: Tap, blocks: list[dict[str, Any]]
                              ) -> dict[str, Any] | None:
        """Send session/prompt (cairnd's own frame, to the agent before this yields to the
        loop: the SDK's model, encoding and sender task would delay it) and wait for the
        answer; the raw response as it crossed, or None when the agent went away without one.
        A prompt the log refuses (OSError: a full disk) is not sent, the agent untouched;
        the turn is left for the next one to close, as one whose end the log refused."""
        assert agent.process.stdin is not None
        tap.send_prompt(agent.process.stdin, agent.sdk_session_id, blocks)
        if self._cancel_requested:  # it came while the agent was starting, before there was a prompt to cancel
            await self._send_cancel(agent)
        return await tap.answer(agent.stdout_closed)

    async def _send_cancel(self, agent: AgentProcess) -> None:
        try:
            await agent.conn.cancel(session_id=agent.sdk_session_id)
        except (ConnectionError, OSError):
            pass  # it is gone already: the turn ends as agent_exited

    # -- the agent process ------------------------------------------------------------

    async def _ensure_agent(self) -> AgentProcess:
        if self._agent is not None and self._agent.running:
            return self._agent
        if self._agent is not None:  # it exited while idle
            self._retire(self._agent)
        await self._await_retired()
        state = await anyio.to_thread.run_sync(read_session_state, self.log_path, True, limiter=self.limiter)
        _log, tap = await self._open_log()
        agent: AgentProcess = await self._tg.start(host_agent, self._launch(), self.client, tap)
        try:
            with anyio.fail_after(self.start_timeout):
                await self._open_session(agent, state)
        except CairnError:
            agent.stop()  # history = native and the agent refused: nothing to keep it for
            await agent.exited.wait()
            raise
        except (TimeoutError, ConnectionError, OSError, ValidationError, acp.RequestError) as exc:
            agent.stop()
            await agent.exited.wait()
            reason = "did not answer in time" if isinstance(exc, TimeoutError) else _describe(exc)
            raise CairnError("agent_failed", f"session {self.session_id}: agent {self.profile.name!r} failed to "
                                             f"start ({reason}); {agent.describe_exit()}") from None
        if self._closed:  # close() came while it was starting: it never saw this agent
            agent.stop()
            await agent.exited.wait()
            raise CairnError("turn_interrupted", f"session {self.session_id}: cairnd stopped the agent "
                                                 "before the turn began")
        self._agent = agent
        return agent

    def _launch(self) -> Launch:
        return Launch(session_id=self.session_id, name=self.profile.name, command=tuple(self.profile.command),
                      cwd=self.worktree, env=dict(self.profile.env), stderr_path=self.log_path.parent / STDERR_NAME,
                      stop_timeout=self.stop_timeout, confinement=self.confinement, home=self.home)

    async def _open_session(self, agent: AgentProcess, state: SessionState) -> None:
        """Initialize the agent and open the agent session this session's turns run in,
        giving it the conversation so far (see `cairnd.history`); logged as
        `_posthog/sdk_session`."""
        init = await agent.conn.initialize(
            protocol_version=acp.PROTOCOL_VERSION,
            client_capabilities=self.front.capabilities if self.front is not None else ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=self.profile.fs, write_text_file=self.profile.fs),
                terminal=False),
            client_info=Implementation(name="cairnd", version=__version__),
        )
        live = init.agent_capabilities.model_dump(by_alias=True, exclude_none=True) if init.agent_capabilities else {}
        facts = await anyio.to_thread.run_sync(_history_facts, self.log_path, limiter=self.limiter)
        opened = await open_history(agent.conn, facts, mode=self.profile.history, profile=self.profile.name,
                                    cwd=str(self.worktree), live=live, session_id=self.session_id,
                                    mcp_servers=self.front.mcp_servers if self.front is not None else None)
        agent.sdk_session_id = opened.sdk_session_id
        agent.history = opened.history
        if opened.replay and state.conversation:
            agent.replay = replay_prompt_block(self.session_id, state.conversation)
        log, _tap = await self._open_log()
        log.append(sdk_session_entry(self.session_id, agent.sdk_session_id, self.profile.name, opened.history))
        await anyio.to_thread.run_sync(log.sync, limiter=self.limiter)

    def _retire(self, agent: AgentProcess, between_turns: bool = False) -> None:
        agent.stop(between_turns)
        if self._agent is agent:
            self._agent = None
        self._retiring.append(agent)

    async def _await_retired(self) -> None:
        while self._retiring:
            await self._retiring[0].exited.wait()
            self._retiring.pop(0)

    # -- idle stop ----------------------------------------------------------------------

    def _arm_idle_timer(self, agent: AgentProcess) -> None:
        if self.idle_seconds is None:
            return
        deadline = anyio.current_time() + self.idle_seconds
        if self._idle_scope is not None and self._idle_agent is agent:
            self._idle_scope.deadline = deadline
            return
        self._cancel_idle_timer()
        self._idle_scope, self._idle_agent = anyio.CancelScope(deadline=deadline), agent
        self._tg.start_soon(self._stop_when_idle, agent, self._idle_scope)

    def _disarm_idle_timer(self) -> None:
        # Its deadline put off, not the timer cancelled: a cancelled timer's task would
        # wake and end on the turn's path, before the prompt reaches the agent.
        if self._idle_scope is not None:
            self._idle_scope.deadline = math.inf

    def _cancel_idle_timer(self) -> None:
        scope, self._idle_scope = self._idle_scope, None
        if scope is not None:
            scope.cancel()

    async def _stop_when_idle(self, agent: AgentProcess, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep_forever()
        if self._idle_scope is scope:  # its deadline passed: not cancelled, not replaced
            self._idle_scope = None
            if self._agent is agent and not self.busy:
                self._retire(agent)

    # -- the log and shutdown ---------------------------------------------------------

    async def _open_log(self) -> tuple[SessionLog, Tap]:
        """The session log, opened (in a worker thread: it may repair a torn tail and
        fsync) the first time, with the tap that writes the agent's frames into it."""
        if self._log is None or self._tap is None:
            log = await anyio.to_thread.run_sync(SessionLog, self.log_path, limiter=self.limiter)
            if self._log is not None:  # another task opened it meanwhile
                log.close()
            else:
                self._log, self._tap = log, Tap(log, self.front.observe if self.front is not None else None)
        assert self._log is not None and self._tap is not None
        return self._log, self._tap

    async def close(self) -> None:
        """Stop the agent and wait for it (a turn in flight ends `interrupted`), close the
        log. Idempotent; the runner is then done."""
        self._closed = True
        self._cancel_idle_timer()
        await self.interrupt()
        async with self._turn_lock:  # a turn cut short records itself before the log closes
            if self._log is not None:
                self._log.close()
                self._log = None


def _history_facts(log_path: Path) -> HistoryFacts:
    # only the lines that can matter reach Python (cairnd.log.LogLines.marked)
    return history_scan(marked_lines(iter_lines(log_path)))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, acp.RequestError):
        return f"error {exc.code}: {exc}" + (f" {exc.data}" if exc.data else "")
    return str(exc) or type(exc).__name__
