"""One agent process per active session, with cairnd as its ACP client (SPEC 3, 5, 9, 10).

    AgentRunner.prompt(text)
        -> agent process (spawned on demand, cwd = the worktree, env = ours + the profile's)
        -> initialize, session/new | session/load, session/prompt   (the SDK's client side)
        -> every frame both ways appended to the session log as the raw bytes that crossed
        -> turn_complete, agent_checkpoint, fsync -> the turn's result

The tap: the SDK never touches the agent's pipes. A pump reads the agent's stdout, logs
each line verbatim, then feeds it to the StreamReader the SDK reads; the SDK writes into
a transport that logs each line, then writes it to the agent's stdin. So the log holds
what crossed the wire, in order, including frames the SDK's schema rejects: session
updates are not handed to the SDK at all (the log is all cairnd does with them), and
the prompt's stop reason is read from the raw response, not from the SDK's model of
it, so no frame an agent sends can break a turn.

History: when an agent session is opened for a log that already holds conversation,
the agent gets it natively through `session/load` (if it advertised `loadSession` and
the log names an agent session of the same profile), else as a replay: one embedded
`resource` block ahead of the first prompt's text, holding `transcript.render_replay`
of the kept turns, uri `cairnd://replay/<session>`, and `_meta.cairnd.userMessages` = the
number of top-level user messages it holds (see `replay_prompt_block`).

Log entries of cairnd's own, per turn: `_cairnd/turn_start {sessionId, turn, requestId}`
just before the prompt (so recovery can tell whether a request's turn began), then
after the answer `_posthog/turn_complete` (stopReason as the agent said it, or
`agent_exited`, `interrupted`, or `error` when it answered the prompt with a JSON-RPC
error) and `_posthog/agent_checkpoint`, fsynced before the result is returned.

Cancel: a turn that ends `cancelled` retires its agent process (stdin closed, SIGTERM
after RETIRE_GRACE_SECONDS) and the next prompt starts a fresh one, which gets the
history like any restart: `session/load` or replay. A cancel may leave an agent's state
out of step with its answers (claude-agent-acp 0.23.1 answers the prompt after a cancel
at once and stays one turn behind from then on, so a checkpoint would miss that turn's
changes); a fresh process is the cure that works for every agent, for about a second.

Lifetime: a runner's background tasks (one host task per agent process: pumps,
reaping; the idle timer) live in a task group, the caller's (`task_group=`) or its own
(`async with`). Agents idle for `idle_seconds` are stopped and restarted on the next
prompt; `close()` stops the agent, always reaping it (stdin closed, then SIGTERM, then
SIGKILL to its process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import acp
import anyio
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    EmbeddedResourceContentBlock,
    FileSystemCapabilities,
    Implementation,
    PermissionOption,
    ReadTextFileResponse,
    RequestPermissionResponse,
    WriteTextFileResponse,
)
from pydantic import ValidationError

from cairnd import __version__
from cairnd.checkpoint import take_checkpoint
from cairnd.config import AgentProfile
from cairnd.confinement import Confinement
from cairnd.errors import CairnError
from cairnd.entries import (
    ID_MARK,
    PROMPT_MARK,
    PROMPT_METHOD,
    UPDATE_MARK,
    UPDATE_METHOD,
    checkpoint_entry,
    json_object,
    sdk_session_entry,
    turn_complete_entry,
    turn_start_entry,
)
from cairnd.log import SessionLog, iter_lines
from cairnd.history import HistoryFacts, open_history
from cairnd.history import scan as history_scan
from cairnd.privacy import child_umask, write_user_file
from cairnd.transcript import SessionState, replay_prompt_block, session_state

STDERR_FILE = "agent.stderr"  # beside the log: everything the agent wrote to stderr
STDERR_TAIL_LINES = 20  # how many of its last stderr lines explain a failure
STDOUT_GRACE_SECONDS = 1.0  # after the agent exits, how long its stdout may still drain
TERMINATE_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL
# An agent retired between turns (after a cancel) owes no work: after its stdin closes it
# gets this long to exit before SIGTERM, not stop_timeout (claude-agent-acp never exits
# on EOF, and the next prompt waits for it).
RETIRE_GRACE_SECONDS = 0.5
READ_CHUNK = 1 << 16
SDK_READER_LIMIT = 50 * 1024 * 1024  # frames up to this size reach the SDK in one piece

# Permission policies (config `permission`) -> the option kinds to pick, best first.
# A reject policy never escalates to an allow option: with none to reject, it cancels.
PERMISSION_PREFERENCES: dict[str, tuple[str, ...]] = {
    "allow_once": ("allow_once", "allow_always", "reject_once", "reject_always"),
    "reject_once": ("reject_once", "reject_always"),
}


# -- the functional core --------------------------------------------------------------


def choose_permission_option(options: Sequence[tuple[str, str]], policy: str) -> str | None:
    """`(option_id, kind)` pairs offered by the agent -> the option id the policy picks,
    or None to answer `cancelled` (nothing offered, or nothing the policy may pick)."""
    for kind in PERMISSION_PREFERENCES[policy]:
        for option_id, option_kind in options:
            if option_kind == kind:
                return option_id
    return None


class PathRefused(Exception):
    """A path an agent named lies outside the session worktree."""


def confine(worktree: Path, path: str) -> Path:
    """The real location `path` names, if it lies inside `worktree` (strictly: not the
    worktree itself); relative paths are taken from the worktree. Symlinks and `..` are
    resolved before judging, so neither can lead out. Raises PathRefused."""
    root = Path(os.path.realpath(worktree))
    try:
        real = Path(os.path.realpath(root / path))  # an absolute `path` replaces `root`
    except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
        raise PathRefused(f"{path!r} is not a usable path: {exc}") from None
    if root not in real.parents:
        raise PathRefused(f"{path!r} is outside the session worktree {str(root)!r}")
    return real


def select_lines(text: str, line: int | None, limit: int | None) -> str:
    """ACP's `fs/read_text_file` window: from 1-based `line`, at most `limit` lines."""
    if line is None and limit is None:
        return text
    start = max((line or 1) - 1, 0)
    lines = text.splitlines(keepends=True)
    return "".join(lines[start:None if limit is None else start + limit])


def exit_story(name: str, returncode: int | None, stderr_tail: str) -> str:
    """How an agent process ended, in words, with the last lines it wrote to stderr."""
    if returncode is None:
        how = f"agent {name!r} stopped answering"
    elif returncode < 0:
        how = f"agent {name!r} was killed by signal {-returncode}"
    else:
        how = f"agent {name!r} exited with status {returncode}"
    lines = stderr_tail.splitlines()[-STDERR_TAIL_LINES:]
    return how + ("; its last stderr lines:\n" + "\n".join(lines) if lines else " (no stderr output)")


# -- the ACP client: fs in the worktree, permissions per profile ---------------------


class WorktreeClient:
    """What cairnd answers an agent: `fs/*` confined to the worktree, permission
    requests per the profile's policy, no terminals. Session updates never reach it:
    the tap logs them and keeps them from the SDK (see Tap.incoming)."""

    def __init__(self, worktree: Path, permission: str, limiter: anyio.CapacityLimiter | None) -> None:
        self.worktree = worktree
        self.permission = permission
        self.limiter = limiter

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        return None

    async def request_permission(self, session_id: str, tool_call: Any, options: list[PermissionOption],
                                 **kwargs: Any) -> RequestPermissionResponse:
        chosen = choose_permission_option([(o.option_id, o.kind) for o in options], self.permission)
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=chosen))

    async def read_text_file(self, session_id: str, path: str, line: int | None = None, limit: int | None = None,
                             **kwargs: Any) -> ReadTextFileResponse:
        real = self._confine(path)
        try:
            text = await anyio.to_thread.run_sync(_read_text, real, limiter=self.limiter)
        except FileNotFoundError:
            raise acp.RequestError.resource_not_found(path) from None
        except OSError as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": exc.strerror or str(exc)}) from None
        return ReadTextFileResponse(content=select_lines(text, line, limit))

    async def write_text_file(self, session_id: str, path: str, content: str,
                              **kwargs: Any) -> WriteTextFileResponse:
        real = self._confine(path)
        try:
            await anyio.to_thread.run_sync(_write_text, real, content, limiter=self.limiter)
        except OSError as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": exc.strerror or str(exc)}) from None
        return WriteTextFileResponse()

    def _confine(self, path: str) -> Path:
        try:
            return confine(self.worktree, path)
        except PathRefused as exc:
            raise acp.RequestError.invalid_params({"path": path, "reason": str(exc)}) from None

    # Terminals are not offered (SPEC 9); without these the SDK would answer `null`.
    async def create_terminal(self, session_id: str, command: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/create")

    async def terminal_output(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/output")

    async def release_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/release")

    async def wait_for_terminal_exit(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/wait_for_exit")

    async def kill_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/kill")


def _read_text(real: Path) -> str:
    with open(real, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def _write_text(real: Path, content: str) -> None:
    write_user_file(real, content.encode("utf-8"))  # with the user's modes, not the state dir's


# -- the tap ----------------------------------------------------------------------------


class Tap:
    """Logs every frame as it crosses, and keeps the raw response to the prompt in
    flight (its stop reason is taken from there, whatever the SDK makes of it)."""

    def __init__(self, log: SessionLog) -> None:
        self.log = log
        self.prompt_id: Any = None
        self.prompt_response: dict[str, Any] | None = None
        self.prompt_sent = anyio.Event()

    def expect_prompt(self) -> None:
        self.prompt_id = None
        self.prompt_response = None
        self.prompt_sent = anyio.Event()

    def outgoing(self, frame: bytes) -> None:
        if not frame.strip():
            return
        self.log.append_raw(frame)
        if PROMPT_MARK in frame:
            message = json_object(frame)
            if message and message.get("method") == PROMPT_METHOD and "id" in message:
                self.prompt_id = message["id"]
                self.prompt_sent.set()

    def incoming(self, frame: bytes) -> bool:
        """Log a frame from the agent; whether the SDK needs to see it. Session updates
        it does not: the log is all cairnd does with them, and the SDK's model of each
        streaming chunk would only cost time and log noise for every chunk that does not
        validate (claude-agent-acp's `usage_update` with `used: null`)."""
        if not frame.strip():
            return False
        self.log.append_raw(frame)
        if UPDATE_MARK in frame:
            message = json_object(frame)
            if message and message.get("method") == UPDATE_METHOD and "id" not in message:
                return False
        if self.prompt_id is not None and self.prompt_response is None and ID_MARK in frame:
            message = json_object(frame)
            if message and "method" not in message and message.get("id") == self.prompt_id:
                self.prompt_response = message
        return True


class _TapTransport(asyncio.WriteTransport):
    """What the SDK writes to: each line is logged, then written to the agent's stdin."""

    def __init__(self, stdin: asyncio.StreamWriter, tap: Tap) -> None:
        super().__init__()
        self._stdin = stdin
        self._tap = tap
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end + 1])
            del self._pending[:end + 1]
            self._tap.outgoing(line)
            self._stdin.write(line)

    def is_closing(self) -> bool:
        return self._stdin.is_closing()

    def close(self) -> None:
        self._stdin.close()

    def abort(self) -> None:
        self._stdin.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._stdin.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._stdin.transport.get_write_buffer_size()


class _TapProtocol(asyncio.BaseProtocol):
    """Gives the SDK's `drain()` the agent's real stdin backpressure."""

    def __init__(self, stdin: asyncio.StreamWriter) -> None:
        self._stdin = stdin

    async def _drain_helper(self) -> None:  # the hook asyncio.StreamWriter.drain awaits
        await self._stdin.drain()


# -- one agent process ------------------------------------------------------------------


@dataclass
class AgentProcess:
    """One running agent and its ACP connection, owned by its host task."""

    process: asyncio.subprocess.Process
    conn: Any  # acp ClientSideConnection
    sdk_session_id: str = ""
    replay: dict[str, Any] | None = None  # block to send ahead of the next prompt
    history: str | None = None  # how it got the conversation (cairnd.history), until a turn reports it
    stderr_tail: bytes = b""
    stop_requested: bool = False
    owes_nothing: bool = False  # stopped between turns: SIGTERM follows EOF quickly
    wake: anyio.Event = field(default_factory=anyio.Event)  # stop asked, stdout closed, or exited
    stdout_closed: anyio.Event = field(default_factory=anyio.Event)
    exited: anyio.Event = field(default_factory=anyio.Event)  # reaped; all it said is logged

    def stop(self, owes_nothing: bool = False) -> None:
        self.owes_nothing = self.owes_nothing or owes_nothing
        self.stop_requested = True
        self.wake.set()

    def story(self, name: str) -> str:
        return exit_story(name, self.process.returncode, self.stderr_tail.decode("utf-8", "replace"))


class AgentRunner:
    """Runs the turns of one session on its agent (see the module docstring).

    Its background tasks (one host per agent process, the idle timer) live in a task
    group: pass `task_group` (one that outlives the runner's `close()`), or use the
    runner as `async with AgentRunner(...) as runner:`, which makes its own. `prompt`,
    `cancel`, `interrupt` and `close` may be called from any task; prompts run one at
    a time, and `cancel` acts on the turn in flight.
    """

    def __init__(self, session_id: str, worktree: Path, log_path: Path, profile: AgentProfile, *,
                 max_file_bytes: int, idle_seconds: float | None = None,
                 limiter: anyio.CapacityLimiter | None = None, task_group: anyio.abc.TaskGroup | None = None,
                 stop_timeout: float = 10.0, start_timeout: float = 60.0,
                 checkpoint: Callable[[str, Path, int, int], dict[str, Any]] | None = None,
                 confinement: Confinement | None = None) -> None:
        self.session_id = session_id
        self.confinement = confinement  # None: the agent runs unconfined
        # (session, worktree, turns, max_file_bytes) -> the checkpoint params; the daemon
        # gives its Checkpointer's, whose cost follows what the turn changed.
        self._take_checkpoint = checkpoint or take_checkpoint
        self.worktree = Path(worktree)
        self.log_path = Path(log_path)
        self.profile = profile
        self.max_file_bytes = max_file_bytes
        self.idle_seconds = idle_seconds
        self.limiter = limiter
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.client = WorktreeClient(self.worktree, profile.permission, limiter)
        self._stack = AsyncExitStack()
        self._tg = task_group
        self._log: SessionLog | None = None
        self._tap: Tap | None = None
        self._turns: int | None = None  # turns completed, once read from the log
        self._agent: AgentProcess | None = None
        self._retiring: list[AgentProcess] = []
        self._turn_lock = anyio.Lock()
        self._turn_agent: AgentProcess | None = None  # the agent of the turn in flight
        self._cancel_requested = False
        self._idle_scope: anyio.CancelScope | None = None
        self._closed = False

    async def __aenter__(self) -> AgentRunner:
        if self._tg is None:
            self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.close()
        finally:
            await self._stack.__aexit__(exc_type, exc, tb)

    @property
    def busy(self) -> bool:
        """Whether a turn is in flight."""
        return self._turn_lock.locked()

    @property
    def running(self) -> bool:
        """Whether an agent process is up for this session."""
        return self._agent is not None and not self._agent.wake.is_set()

    # -- turns ----------------------------------------------------------------------

    async def prompt(self, text: str, request_id: str | None = None) -> dict[str, Any]:
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
        if self._tg is None or self._closed:
            raise CairnError("internal", f"session {self.session_id}: its agent runner is not open "
                                         "(use it as `async with`, or give it a task group)")
        async with self._turn_lock:
            if self._closed:
                raise CairnError("turn_interrupted", f"session {self.session_id}: cairnd stopped the session's "
                                                     "agent before this turn began")
            self._cancel_requested = False
            self._disarm_idle_timer()
            try:
                return await self._turn(text, request_id)
            finally:
                self._turn_agent = None
                if self._agent is not None and not self._closed:
                    self._arm_idle_timer(self._agent)

    async def cancel(self) -> bool:
        """Send `session/cancel` for the turn in flight; whether one was running. A
        cancel that comes while the agent is still starting is sent right after the
        prompt."""
        if not self.busy:
            return False
        self._cancel_requested = True
        agent, tap = self._turn_agent, self._tap
        if agent is not None and tap is not None and tap.prompt_sent.is_set():
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

    async def _turn(self, text: str, request_id: str | None) -> dict[str, Any]:
        log = self._open_log()
        turn = await self._completed_turns()
        agent = await self._ensure_agent()
        self._turn_agent = agent
        opened_as, agent.history = agent.history, None  # reported by the turn that opened it
        blocks: list[Any] = []
        if agent.replay is not None:
            blocks.append(EmbeddedResourceContentBlock.model_validate(agent.replay))
            agent.replay = None  # sent once per agent session, even if this turn fails
        blocks.append(acp.text_block(text))
        log.append(turn_start_entry(self.session_id, turn, request_id))
        tap = self._require_tap()
        try:
            response = await self._request_prompt(agent, blocks)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if tap.prompt_sent.is_set():  # the turn began: it must end in the log
                    agent.stop()
                    await self._await_exit(agent)
                    await self._end_turn(turn, "interrupted")
            raise

        failure: str | None = None
        if response is None:
            # No answer: the agent went away, or we stopped it. Wait until everything it
            # said before going is in the log and it is reaped.
            await self._await_exit(agent)
            stop_reason = "interrupted" if agent.stop_requested else "agent_exited"
            failure = agent.story(self.profile.name)
        elif "error" in response:
            stop_reason = "error"
            error = response["error"] if isinstance(response["error"], dict) else {}
            failure = (f"agent {self.profile.name!r} answered session/prompt with error "
                       f"{error.get('code')}: {error.get('message')} {error.get('data') or ''}").rstrip()
        else:
            result = response.get("result")
            stop = result.get("stopReason") if isinstance(result, dict) else None
            stop_reason = stop if isinstance(stop, str) else "unknown"

        with anyio.CancelScope(shield=True):
            checkpoint = await self._end_turn(turn, stop_reason)
        if stop_reason == "cancelled" and self._agent is agent:
            self._retire(agent, owes_nothing=True)  # see "Cancel" in the module docstring
        if stop_reason == "interrupted":
            raise CairnError("turn_interrupted", f"session {self.session_id}: turn {turn} was cut short: "
                                                 "cairnd stopped its agent")
        if failure is not None:
            raise CairnError("agent_failed", f"session {self.session_id}, turn {turn}: {failure}")
        result = {"session": self.session_id, "turn": turn, "stopReason": stop_reason, "checkpoint": checkpoint}
        if opened_as is not None:
            result["history"] = opened_as
        return result

    async def _end_turn(self, turn: int, stop_reason: str) -> dict[str, Any]:
        """turn_complete, then the checkpoint of what the turn left, in one write, then
        fsync: a crash leaves both or neither, so an ended turn always has its state."""
        log = self._open_log()
        checkpoint = await self._checkpoint(turn + 1)
        log.append_entries([
            turn_complete_entry(self.session_id, stop_reason),
            checkpoint_entry(checkpoint),
        ])
        self._turns = turn + 1
        # fsync can take seconds on a loaded disk: never on the event loop, which
        # every other session's frames and the spool depend on.
        await anyio.to_thread.run_sync(log.sync, limiter=self.limiter)
        return checkpoint

    async def _await_exit(self, agent: AgentProcess) -> None:
        await agent.exited.wait()
        if self._agent is agent:
            self._agent = None

    async def _request_prompt(self, agent: AgentProcess, blocks: list[Any]) -> dict[str, Any] | None:
        """Send session/prompt and wait for the answer; the raw response as it crossed,
        or None when the agent went away without one."""
        tap = self._require_tap()
        tap.expect_prompt()
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(self._cancel_once_sent, agent, tap)
            try:
                await agent.conn.prompt(session_id=agent.sdk_session_id, prompt=blocks)
            except ValidationError:
                pass  # the SDK could not model the response; the tap holds it as it came
            except acp.RequestError:
                pass  # an error response: the tap holds it
            except (ConnectionError, OSError):
                pass  # the agent went away; the tap may still hold its last answer
            helpers.cancel_scope.cancel()
        return tap.prompt_response

    async def _cancel_once_sent(self, agent: AgentProcess, tap: Tap) -> None:
        await tap.prompt_sent.wait()
        if self._cancel_requested:
            await self._send_cancel(agent)

    async def _send_cancel(self, agent: AgentProcess) -> None:
        try:
            await agent.conn.cancel(session_id=agent.sdk_session_id)
        except (ConnectionError, OSError):
            pass  # it is gone already: the turn ends as agent_exited

    async def _checkpoint(self, turns: int) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(
            functools.partial(self._take_checkpoint, self.session_id, self.worktree, turns, self.max_file_bytes),
            limiter=self.limiter)

    async def _completed_turns(self) -> int:
        """Turns completed so far, from the log the first time (closing a turn that a
        crash of cairnd left open), then counted here: the runner is the log's writer."""
        if self._turns is None:
            state = await self._read_state(agent_text=False)
            self._turns = state.turns
            if state.open_turn:
                with anyio.CancelScope(shield=True):
                    await self._end_turn(state.turns, "interrupted")
        return self._turns

    async def _read_state(self, agent_text: bool = True) -> SessionState:
        return await anyio.to_thread.run_sync(_read_session_state, self.log_path, agent_text,
                                              limiter=self.limiter)

    # -- the agent process ------------------------------------------------------------

    async def _ensure_agent(self) -> AgentProcess:
        if self._agent is not None and not self._agent.wake.is_set():
            return self._agent
        if self._agent is not None:  # it exited while idle
            self._retire(self._agent)
        await self._await_retired()
        state = await self._read_state()
        assert self._tg is not None
        agent: AgentProcess = await self._tg.start(self._host)
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
                                             f"start ({reason}); {agent.story(self.profile.name)}") from None
        if self._closed:  # close() came while it was starting: it never saw this agent
            agent.stop()
            await agent.exited.wait()
            raise CairnError("turn_interrupted", f"session {self.session_id}: cairnd stopped the agent "
                                                 "before the turn began")
        self._agent = agent
        return agent

    async def _open_session(self, agent: AgentProcess, state: SessionState) -> None:
        init = await agent.conn.initialize(
            protocol_version=acp.PROTOCOL_VERSION,
            client_capabilities=ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=self.profile.fs, write_text_file=self.profile.fs),
                terminal=False),
            client_info=Implementation(name="cairnd", version=__version__),
        )
        live = init.agent_capabilities.model_dump(by_alias=True, exclude_none=True) if init.agent_capabilities else {}
        facts = await anyio.to_thread.run_sync(_history_facts, self.log_path, limiter=self.limiter)
        opened = await open_history(agent.conn, facts, mode=self.profile.history, profile=self.profile.name,
                                    cwd=str(self.worktree), live=live, session_id=self.session_id)
        agent.sdk_session_id = opened.sdk_session_id
        agent.history = opened.history
        if opened.replay and state.conversation:
            agent.replay = replay_prompt_block(self.session_id, state.conversation)
        log = self._open_log()
        log.append(sdk_session_entry(self.session_id, agent.sdk_session_id, self.profile.name, opened.history))
        await anyio.to_thread.run_sync(log.sync, limiter=self.limiter)

    async def _host(self, *, task_status: anyio.abc.TaskStatus[AgentProcess] = anyio.TASK_STATUS_IGNORED) -> None:
        """Owns one agent process: spawns it, pumps its output, reaps it when it is told
        to stop, exits, or closes its stdout."""
        process = await self._spawn()
        tap = self._require_tap()
        loop = asyncio.get_running_loop()
        assert process.stdin is not None
        reader = asyncio.StreamReader(limit=SDK_READER_LIMIT)
        writer = asyncio.StreamWriter(_TapTransport(process.stdin, tap), _TapProtocol(process.stdin), None, loop)
        agent = AgentProcess(process, acp.connect_to_agent(self.client, writer, reader))
        try:
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump_stdout, agent, reader, tap)
                pumps.start_soon(self._pump_stderr, agent)
                pumps.start_soon(self._watch_exit, agent)
                task_status.started(agent)
                await agent.wake.wait()
                with anyio.CancelScope(shield=True):
                    await self._stop_process(agent)
                    with anyio.move_on_after(STDOUT_GRACE_SECONDS):
                        await agent.stdout_closed.wait()
                    pumps.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ConnectionError, OSError):
                    await agent.conn.close()
                if process.returncode is None:  # we were cancelled mid-way: do not leave it behind
                    _signal_group(process, signal.SIGKILL)
                    await _exited(process)
                with anyio.move_on_after(STDOUT_GRACE_SECONDS):
                    await process.wait()  # lets asyncio close its pipes (see _exited)
                agent.exited.set()

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = list(self.profile.command)
        stderr_path = self.log_path.parent / STDERR_FILE
        try:
            stderr_path.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr_path, "ab") as f:
                f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {shlex.join(command)}\n".encode())
            argv, env = command, {**os.environ, **self.profile.env}
            if self.confinement is not None:  # through the Landlock launcher (SPEC 16)
                argv, env = await anyio.to_thread.run_sync(self.confinement.wrap, command, env,
                                                           limiter=self.limiter)
            return await asyncio.create_subprocess_exec(
                *argv, cwd=self.worktree, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                # Its own process group: a ^C meant for cairnd is not the agent's to act on;
                # cairnd stops it in order.
                start_new_session=True,
                umask=child_umask())  # its files in the worktree get the user's modes, not the state dir's
        except OSError as exc:
            raise CairnError("agent_failed", f"session {self.session_id}: cannot start agent "
                                             f"{self.profile.name!r} ({shlex.join(command)}): "
                                             f"{exc.strerror or exc}") from None

    async def _pump_stdout(self, agent: AgentProcess, reader: asyncio.StreamReader, tap: Tap) -> None:
        stdout = agent.process.stdout
        assert stdout is not None
        pending = bytearray()
        try:
            while chunk := await stdout.read(READ_CHUNK):
                scan_from = len(pending)
                pending += chunk
                while (end := pending.find(b"\n", scan_from)) >= 0:
                    line = bytes(pending[:end + 1])
                    del pending[:end + 1]
                    scan_from = 0
                    if tap.incoming(line):
                        reader.feed_data(line)
            if pending and tap.incoming(bytes(pending)):  # a last frame without its newline
                reader.feed_data(bytes(pending) + b"\n")
        except OSError:
            pass  # the log could not be written: treat it as the end of the agent
        finally:
            reader.feed_eof()
            agent.stdout_closed.set()
            agent.wake.set()

    async def _pump_stderr(self, agent: AgentProcess) -> None:
        stderr = agent.process.stderr
        assert stderr is not None
        try:
            sink = open(self.log_path.parent / STDERR_FILE, "ab", buffering=0)
        except OSError:
            sink = None  # the tail in memory still explains a failure
        try:
            while chunk := await stderr.read(READ_CHUNK):
                agent.stderr_tail = (agent.stderr_tail + chunk)[-8192:]
                if sink is not None:
                    try:
                        sink.write(chunk)
                    except OSError:
                        sink.close()
                        sink = None
        finally:
            if sink is not None:
                sink.close()

    async def _watch_exit(self, agent: AgentProcess) -> None:
        await _exited(agent.process, poll_cap=0.5)
        agent.wake.set()

    async def _stop_process(self, agent: AgentProcess) -> None:
        """Close its stdin and wait; then SIGTERM; then SIGKILL. Always reaps it."""
        process = agent.process
        if agent.stop_requested:
            # Nothing more goes out, and a prompt in flight is answered "connection
            # closed". Bounded: a sender blocked on a stdin nobody reads must not hang us.
            with anyio.move_on_after(self.stop_timeout), contextlib.suppress(ConnectionError, OSError):
                # The SDK's sender re-raises the pipe error of an agent already gone.
                await agent.conn.close()
        if process.stdin is not None and not process.stdin.is_closing():
            try:
                process.stdin.write_eof()
            except (OSError, RuntimeError):
                process.stdin.close()
        eof_grace = min(RETIRE_GRACE_SECONDS, self.stop_timeout) if agent.owes_nothing else self.stop_timeout
        for sig, grace in ((None, eof_grace), (signal.SIGTERM, TERMINATE_GRACE_SECONDS),
                           (signal.SIGKILL, None)):
            if sig is not None:
                _signal_group(process, sig)
            with anyio.move_on_after(grace if grace is not None else math.inf):
                await _exited(process)
                break
        # Whatever it started and left in its process group goes with it.
        _signal_group(process, signal.SIGTERM)

    def _retire(self, agent: AgentProcess, owes_nothing: bool = False) -> None:
        agent.stop(owes_nothing)
        if self._agent is agent:
            self._agent = None
        self._retiring.append(agent)

    # -- idle stop ----------------------------------------------------------------------

    def _arm_idle_timer(self, agent: AgentProcess) -> None:
        if self.idle_seconds is None or self._tg is None:
            return
        scope = anyio.CancelScope()
        self._idle_scope = scope
        self._tg.start_soon(self._stop_when_idle, agent, scope)

    def _disarm_idle_timer(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.cancel()
            self._idle_scope = None

    async def _stop_when_idle(self, agent: AgentProcess, scope: anyio.CancelScope) -> None:
        with scope:
            assert self.idle_seconds is not None
            await anyio.sleep(self.idle_seconds)
            if self._agent is agent and not self.busy:
                self._retire(agent)

    # -- the log and shutdown ---------------------------------------------------------

    def _open_log(self) -> SessionLog:
        if self._log is None:
            self._log = SessionLog(self.log_path)
            self._tap = Tap(self._log)
        return self._log

    def _require_tap(self) -> Tap:
        self._open_log()
        assert self._tap is not None
        return self._tap

    async def _await_retired(self) -> None:
        while self._retiring:
            await self._retiring[0].exited.wait()
            self._retiring.pop(0)

    async def close(self) -> None:
        """Stop the agent and wait for it (a turn in flight ends `interrupted`), end the
        runner's background tasks, close the log. Idempotent; the runner is then done."""
        self._closed = True
        self._disarm_idle_timer()
        await self.interrupt()
        async with self._turn_lock:  # a turn cut short records itself before the log closes
            if self._log is not None:
                self._log.close()
                self._log = None


def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal the agent and whatever it started: it leads its own process group."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # the group is gone: nothing left to stop
    except PermissionError:
        if process.returncode is None:  # its children moved away; the agent itself is ours
            process.send_signal(sig)


async def _exited(process: asyncio.subprocess.Process, poll_cap: float = 0.1) -> None:
    """Wait until the process has been reaped. Not `Process.wait()`: on Python 3.11 it
    also waits for the pipes to close, which a grandchild holding them may never do;
    `returncode` is set as soon as the child watcher reaps it."""
    delay = 0.005
    while process.returncode is None:
        await anyio.sleep(delay)
        delay = min(delay * 2, poll_cap)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, acp.RequestError):
        return f"error {exc.code}: {exc}" + (f" {exc.data}" if exc.data else "")
    return str(exc) or type(exc).__name__


def _history_facts(log_path: Path) -> HistoryFacts:
    return history_scan(iter_lines(log_path))


def _read_session_state(log_path: Path, agent_text: bool = True) -> SessionState:
    if not log_path.exists():
        return session_state([])
    return session_state(iter_lines(log_path), agent_text)


# -- outside a runner ---------------------------------------------------------------------


async def write_baseline(session_id: str, worktree: Path, log_path: Path, *, max_file_bytes: int,
                         turns: int | None = None, limiter: anyio.CapacityLimiter | None = None) -> dict[str, Any]:
    """Append the session's baseline `agent_checkpoint` (SPEC 3) and fsync: `turns` 0
    for a new session, else the turns its log already holds (a fork's kept turns) when
    not given. Returns the checkpoint params."""
    if turns is None:
        turns = (await anyio.to_thread.run_sync(_read_session_state, Path(log_path), False, limiter=limiter)).turns
    params = await anyio.to_thread.run_sync(
        functools.partial(take_checkpoint, session_id, Path(worktree), turns, max_file_bytes), limiter=limiter)
    with SessionLog(log_path) as log:
        log.append(checkpoint_entry(params))
        log.sync()
    return params


async def close_interrupted_turn(session_id: str, worktree: Path, log_path: Path, *, max_file_bytes: int,
                                 limiter: anyio.CapacityLimiter | None = None) -> dict[str, Any] | None:
    """After a crash of cairnd: if the log ends inside a turn, record it as ended
    (`turn_complete` with stopReason `interrupted`) with a checkpoint of the state it
    left, and return that checkpoint; None when no turn was open."""
    state = await anyio.to_thread.run_sync(_read_session_state, Path(log_path), False, limiter=limiter)
    if not state.open_turn:
        return None
    params = await anyio.to_thread.run_sync(
        functools.partial(take_checkpoint, session_id, Path(worktree), state.turns + 1, max_file_bytes),
        limiter=limiter)
    with SessionLog(log_path) as log:
        log.append_entries([
            turn_complete_entry(session_id, "interrupted"),
            checkpoint_entry(params),
        ])
        log.sync()
    return params
