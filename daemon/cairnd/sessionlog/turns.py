"""A turn's record in the log: how a turn is ended (turn_complete, then the checkpoint
of what it left, in one write) and how a turn a crash left open is closed. The turn
loop (agent/runner), recovery (serve/recovery) and a fleet takeover (fleet/ownership)
all end turns this one way; the checkpoint is taken by whoever calls (`take`), so the
log does not reach up to the checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from cairnd.sessionlog.entries import checkpoint_entry, turn_complete_entry
from cairnd.sessionlog.file import SessionLog, iter_lines
from cairnd.sessionlog.transcript import SessionState, session_state

# (session, worktree, turns, max_file_bytes) -> the agent_checkpoint params
# (checkpoints.checkpoint.take_checkpoint, or the daemon's Checkpointer.take)
TakeCheckpoint = Callable[[str, Path, int, int], dict[str, Any]]


def read_session_state(log_path: Path, agent_text: bool = True) -> SessionState:
    """What the log says (an empty state when there is no log yet). Blocking."""
    if not log_path.exists():
        return session_state([])
    return session_state(iter_lines(log_path), agent_text)


async def end_turn(log: SessionLog, session_id: str, worktree: Path, turn: int, stop_reason: str, *,
                   max_file_bytes: int, limiter: anyio.CapacityLimiter | None,
                   take: TakeCheckpoint, failure: str | None = None) -> dict[str, Any]:
    """Record turn `turn` as ended (`failure`: why the agent failed it): turn_complete, then the checkpoint of what it left, in
    one write, then fsync, so a crash leaves both or neither and an ended turn always
    has its state. Returns the checkpoint params."""
    checkpoint = await anyio.to_thread.run_sync(take, session_id, worktree, turn + 1, max_file_bytes,
                                                limiter=limiter)
    log.append_entries([turn_complete_entry(session_id, stop_reason, failure), checkpoint_entry(checkpoint)])
    # fsync can take seconds on a loaded disk: never on the event loop, which every
    # other session's frames and the spool depend on.
    await anyio.to_thread.run_sync(log.sync, limiter=limiter)
    return checkpoint


async def close_open_turn(log: SessionLog, session_id: str, worktree: Path, *, max_file_bytes: int,
                          limiter: anyio.CapacityLimiter | None,
                          take: TakeCheckpoint) -> tuple[int, dict[str, Any] | None]:
    """If the log ends inside a turn (a crash of cairnd cut it), record that turn as
    `interrupted` with a checkpoint of the state it left. Returns the turns the log then
    holds, and the checkpoint written (None when no turn was open). The one way an open
    turn is closed: by recovery at start, by a fleet takeover, and by a runner opening a log."""
    state = await anyio.to_thread.run_sync(read_session_state, log.path, False, limiter=limiter)
    if not state.open_turn:
        return state.turns, None
    checkpoint = await end_turn(log, session_id, worktree, state.turns, "interrupted",
                                max_file_bytes=max_file_bytes, limiter=limiter, take=take)
    return state.turns + 1, checkpoint
