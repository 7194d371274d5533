"""One agent process: started (the one place cairnd starts an agent), hosted (its stdout
through the tap, its stderr into a bounded file, its exit watched), and stopped by the
ladder stdin EOF -> SIGTERM -> SIGKILL to its process group, always reaped.

    agent = await task_group.start(host_agent, launch, client, tap)
    ... agent.conn (the SDK's connection) ...
    agent.stop(); await agent.exited.wait()

The agent leads its own process group, so a ^C meant for cairnd is not the agent's to
act on, and whatever it started goes with it when it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import acp
import anyio

from cairnd.agent.home import PrivateHome
from cairnd.agent.confinement import Confinement
from cairnd.errors import CairnError
from cairnd.state.privacy import child_umask
from cairnd.agent.tap import READ_CHUNK, Tap

STDERR_TAIL_LINES = 20  # how many of its last stderr lines explain a failure
STDERR_MEMORY_BYTES = 8192  # the tail kept in memory for that
# The stderr file keeps at least this much of the latest output, and at most twice it.
STDERR_KEEP_BYTES = 1 << 20
STDOUT_GRACE_SECONDS = 1.0  # after the agent exits, how long its stdout and stderr may still drain
TERMINATE_GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL
# An agent stopped between turns (after a cancel, or idle) owes no answer, but may still
# be writing its own record of the turn (Claude Code can write "[Request interrupted
# by user]" to its transcript after claude-agent-acp has answered the cancel). After its
# stdin closes it gets until its processes have used no CPU for RETIRE_QUIET_SECONDS, at
# most RETIRE_SETTLE_SECONDS, not stop_timeout (claude-agent-acp never exits on EOF,
# and the next prompt waits for it). Where /proc cannot tell: RETIRE_GRACE_SECONDS.
RETIRE_QUIET_SECONDS = 0.3
RETIRE_SETTLE_SECONDS = 5.0
RETIRE_GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class Launch:
    """What to start for a session, and how to stop it."""

    session_id: str
    name: str  # the agent profile's
    command: tuple[str, ...]
    cwd: Path  # the session worktree
    env: Mapping[str, str]  # on top of cairnd's own environment
    stderr_path: Path
    stop_timeout: float  # how long a stopped agent may take to exit on its own
    confinement: Confinement | None = None  # None: the agent runs unconfined
    home: PrivateHome | None = None  # the session's own HOME (None: the profile's or cairnd's)


def describe_exit(name: str, returncode: int | None, stderr_tail: str) -> str:
    """How an agent process ended, in words, with the last lines it wrote to stderr."""
    if returncode is None:
        how = f"agent {name!r} stopped answering"
    elif returncode < 0:
        how = f"agent {name!r} was killed by signal {-returncode}"
    else:
        how = f"agent {name!r} exited with status {returncode}"
    lines = stderr_tail.splitlines()[-STDERR_TAIL_LINES:]
    return how + ("; its last stderr lines:\n" + "\n".join(lines) if lines else " (no stderr output)")


async def spawn_agent(launch: Launch) -> asyncio.subprocess.Process:
    """Start the agent: the only place cairnd starts one (through the Landlock launcher
    when the launch is confined, SPEC 16). Raises CairnError agent_failed."""
    command = list(launch.command)
    try:
        await anyio.to_thread.run_sync(_note_start, launch.stderr_path, command)
        argv, env = command, {**os.environ, **launch.env}
        if launch.home is not None:
            await anyio.to_thread.run_sync(launch.home.prepare)
            env = {**os.environ, **launch.home.env(launch.env)}
        if launch.confinement is not None:
            argv, env = await anyio.to_thread.run_sync(launch.confinement.wrap, command, env)
        return await asyncio.create_subprocess_exec(
            *argv, cwd=launch.cwd, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # Its own process group: a ^C meant for cairnd is not the agent's to act on;
            # cairnd stops it in order.
            start_new_session=True,
            umask=child_umask())  # its files in the worktree get the user's modes, not the state dir's
    except OSError as exc:
        raise CairnError("agent_failed", f"session {launch.session_id}: cannot start agent "
                                         f"{launch.name!r} ({shlex.join(command)}): "
                                         f"{exc.strerror or exc}") from None


def _note_start(stderr_path: Path, command: list[str]) -> None:
    stderr_path.parent.mkdir(parents=True, exist_ok=True)
    with open(stderr_path, "ab") as f:
        f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {shlex.join(command)}\n".encode())


class StderrFile:
    """The agent's stderr, appended to a file that keeps the latest output only: past
    twice `keep` bytes it is cut to its last `keep` (from a line start), so a chatty
    agent cannot fill the disk. Blocking: call it from a worker thread."""

    def __init__(self, path: Path, keep: int = STDERR_KEEP_BYTES) -> None:
        self.path = path
        self.keep = keep
        self._file: Any = None
        self._size = 0

    def write(self, chunk: bytes) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)
                self._size = os.fstat(self._file.fileno()).st_size
            self._file.write(chunk)
            self._size += len(chunk)
            if self._size > 2 * self.keep:
                self._cut()
        except OSError:
            self.close()  # the tail in memory still explains a failure

    def _cut(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(max(0, self._size - self.keep))
            tail = f.read()
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1:]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(tail)
        os.replace(tmp, self.path)
        self.close()
        self._file = open(self.path, "ab", buffering=0)
        self._size = len(tail)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()


class AgentProcess:
    """One running agent and its ACP connection, owned by its host task (`host_agent`).

    `stop()` asks the host to stop it; `exited` is set once it is reaped and everything
    it said is in the log. `sdk_session_id` and `replay` are the runner's notes on the
    agent session opened on it."""

    def __init__(self, launch: Launch, process: asyncio.subprocess.Process, conn: Any) -> None:
        self.launch = launch
        self.process = process
        self.conn = conn  # acp ClientSideConnection
        self.sdk_session_id = ""
        self.replay: dict[str, Any] | None = None  # block to send ahead of the next prompt
        self.history: str | None = None  # how it got the conversation (cairnd.history), until a turn reports it
        self.stderr_tail = b""
        self.stop_requested = False
        self.between_turns = False  # stopped owing no work: SIGTERM follows EOF quickly
        self.wake = anyio.Event()  # for the host: stop asked, stdout closed, exited, a frame unloggable
        self.stdout_closed = anyio.Event()
        self.stderr_closed = anyio.Event()
        self.exited = anyio.Event()  # reaped; all it said is logged

    @property
    def running(self) -> bool:
        # returncode: reaped, though its exit watch has not said so yet (it polls)
        return not self.wake.is_set() and self.process.returncode is None

    def stop(self, between_turns: bool = False) -> None:
        self.between_turns = self.between_turns or between_turns
        self.stop_requested = True
        self.wake.set()

    def describe_exit(self) -> str:
        return describe_exit(self.launch.name, self.process.returncode,
                             self.stderr_tail.decode("utf-8", "replace"))

    async def pump_stdout(self, tap: Tap, reader: asyncio.StreamReader) -> None:
        assert self.process.stdout is not None
        try:
            await tap.pump(self.process.stdout, reader)
        finally:
            self.stdout_closed.set()
            self.wake.set()

    async def pump_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        sink = StderrFile(self.launch.stderr_path)
        try:
            while chunk := await stderr.read(READ_CHUNK):
                self.stderr_tail = (self.stderr_tail + chunk)[-STDERR_MEMORY_BYTES:]
                await anyio.to_thread.run_sync(sink.write, chunk)
        finally:
            sink.close()
            self.stderr_closed.set()

    async def watch_exit(self) -> None:
        await _exited(self.process, poll_cap=0.5)
        self.wake.set()

    async def stop_ladder(self) -> None:
        """Close its stdin and wait; then SIGTERM; then SIGKILL. Always reaps it."""
        process = self.process
        stop_timeout = self.launch.stop_timeout
        if self.stop_requested:
            # Nothing more goes out, and a prompt in flight is answered "connection
            # closed". Bounded: a sender blocked on a stdin nobody reads must not hang us.
            with anyio.move_on_after(stop_timeout), contextlib.suppress(ConnectionError, OSError):
                # The SDK's sender re-raises the pipe error of an agent already gone.
                await self.conn.close()
        if process.stdin is not None and not process.stdin.is_closing():
            try:
                process.stdin.write_eof()
            except (OSError, RuntimeError):
                process.stdin.close()
        eof_grace = stop_timeout
        if self.between_turns:
            eof_grace = 0.0
            with anyio.move_on_after(min(RETIRE_SETTLE_SECONDS, stop_timeout)):
                if not await _until_quiet(process):
                    await anyio.sleep(min(RETIRE_GRACE_SECONDS, stop_timeout))
        for sig, grace in ((None, eof_grace), (signal.SIGTERM, TERMINATE_GRACE_SECONDS),
                           (signal.SIGKILL, None)):
            if sig is not None:
                _signal_group(process, sig)
            with anyio.move_on_after(grace if grace is not None else math.inf):
                await _exited(process)
                break
        # Whatever it started and left in its process group goes with it.
        _signal_group(process, signal.SIGTERM)


async def host_agent(launch: Launch, client: Any, tap: Tap, *,
                     task_status: anyio.abc.TaskStatus[AgentProcess] = anyio.TASK_STATUS_IGNORED) -> None:
    """Owns one agent process: spawns it, pumps its output, and reaps it when it is told
    to stop, exits, closes its stdout, or the log refuses a frame to or from it. Run it
    with `task_group.start`, which returns the AgentProcess once it is up."""
    process = await spawn_agent(launch)
    assert process.stdin is not None
    reader = tap.reader()
    agent = AgentProcess(launch, process, None)
    agent.conn = acp.connect_to_agent(client, tap.writer(process.stdin, agent.wake.set), reader)
    try:
        async with anyio.create_task_group() as pumps:
            pumps.start_soon(agent.pump_stdout, tap, reader)
            pumps.start_soon(agent.pump_stderr)
            pumps.start_soon(agent.watch_exit)
            task_status.started(agent)
            await agent.wake.wait()
            with anyio.CancelScope(shield=True):
                await agent.stop_ladder()
                with anyio.move_on_after(STDOUT_GRACE_SECONDS):  # what it said before going
                    await agent.stdout_closed.wait()
                    await agent.stderr_closed.wait()
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


async def _until_quiet(process: asyncio.subprocess.Process) -> bool:
    """Wait until the agent has exited, or its process group has used no CPU for
    RETIRE_QUIET_SECONDS: whatever it was still doing, it is done. False at once where
    /proc cannot tell."""
    still_since, last = time.monotonic(), None
    while process.returncode is None:
        used = await anyio.to_thread.run_sync(_group_cpu_ticks, process.pid)
        if used is None:
            return False
        now = time.monotonic()
        if used != last:
            still_since, last = now, used
        elif now - still_since >= RETIRE_QUIET_SECONDS:
            break
        await anyio.sleep(0.05)
    return True


def _group_cpu_ticks(group: int) -> int | None:
    """CPU time (clock ticks, user and system) used so far by the live processes of
    process group `group`; None without a /proc to read it from."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state, ppid, pgrp, ..., utime (the 12th), stime (13th).
        if len(fields) > 12 and int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total


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
