"""A check: a command run in a session's worktree, confined as its agent is (SPEC 19).

The command is an argv (no shell), started in its own process group with the agent
profile's environment, through the Landlock launcher when the agent would be
(`Confinement.wrap`): it may write where the agent may, and nowhere else, since what
it runs (a test suite, a build) is the agent's work and as hostile as the agent. Its
stdout and stderr go to one pipe, of which the last `OUTPUT_KEEP_BYTES` are kept. Past
`timeout` seconds its whole group is killed and the check has no exit.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from cairnd.agent.confinement import Confinement
from cairnd.state.privacy import child_umask
from cairnd.errors import CairnError

OUTPUT_KEEP_BYTES = 64 * 1024


@dataclass(frozen=True)
class CheckOutcome:
    """How a check ended: `exit` (None when it ran out of time; negative: killed by that
    signal), the last 64 KiB of what it wrote, and whether `timeout` passed first."""

    exit: int | None
    output: str
    timed_out: bool


def keep_tail(kept: bytearray, chunk: bytes, limit: int = OUTPUT_KEEP_BYTES) -> None:
    """Append `chunk` to `kept`, keeping only its last `limit` bytes."""
    kept += chunk
    if len(kept) > limit:
        del kept[: len(kept) - limit]


def decode_tail(data: bytes) -> str:
    """The kept bytes as text: a UTF-8 character the cut split at the start is dropped,
    anything else not UTF-8 replaced."""
    start = 0
    while start < min(3, len(data)) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:].decode("utf-8", errors="replace")


async def run_check(command: Sequence[str], cwd: Path, env: Mapping[str, str], *,
                    confinement: Confinement | None, timeout: float) -> CheckOutcome:
    """Run `command` in `cwd` and wait for it (at most `timeout` seconds). Raises
    CairnError `bad_request` when the program cannot be started (not found, not
    executable), naming it."""
    argv, full_env = list(command), {**os.environ, **env}
    try:
        if confinement is not None:
            argv, full_env = await anyio.to_thread.run_sync(confinement.wrap, argv, full_env)
        process = await anyio.open_process(argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           start_new_session=True, umask=child_umask())
    except OSError as exc:
        raise CairnError("bad_request", f"check command {shlex.join(command)} cannot start in {cwd}: "
                                        f"{exc.strerror or exc}") from None
    kept = bytearray()
    timed_out = False

    async def read() -> None:
        assert process.stdout is not None
        async for chunk in process.stdout:
            keep_tail(kept, chunk)

    try:
        # Until the command has exited and its output is read whole (a child it left
        # holding the pipe counts as the command still running).
        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await process.wait()
        timed_out = scope.cancelled_caught
    finally:
        # Timed out, or the daemon is stopping: nothing of the check outlives it.
        _kill_group(process.pid)
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
    returncode = process.returncode
    return CheckOutcome(exit=None if timed_out else returncode, output=decode_tail(bytes(kept)), timed_out=timed_out)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
