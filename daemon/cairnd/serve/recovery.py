"""Crash recovery, in one fixed order: what a daemon does at start before it serves.

cairnd keeps Postfix's rule: nothing is deleted until the next stage owns it, so a stop
at any instant (kill -9, power loss) leaves a state this module can finish. Each step
leaves what the next one reads consistent:

1. **Temporary files**: a result, `status.json` or log written under a temporary name
   that was never renamed into place, and git index copies a killed snapshot left in
   the temp folder. Removed: their final files were never there. So are the lock files
   of cairnd's own checkpoint refs (`refs/cairnd/<session>/...lock`, one per session of
   this state directory): cairnd writes those refs itself with git's lock protocol, a
   stop between taking the lock and renaming it leaves the lock behind, and git would
   then refuse every later write of that ref. Only this daemon writes its sessions'
   refs, and it holds the state lock, so no live writer owns them.
2. **Half-made sessions**: a `creating` row is a session whose creation transaction
   (creation.py) never reached its commit: every part of it is rolled back, a
   worktree record a stop left half-built beside the repository's records included. A rewind
   past its commit point is rolled forward instead (rewind.recover).
3. **Open turns**: a log whose last turn has no `turn_complete` (the prompt, or just
   cairnd's `turn_start`, went out and the daemon died) gets one, `interrupted`, with a
   checkpoint of the state the turn left (sessionlog/turns.close_open_turn, the one way a turn
   is closed after a crash).
4. **The registry's turn counts**: `sessions.turns` is a copy of the log's count of
   `turn_complete` entries, written after the log; a stop between the two leaves it
   behind. Set from the log, which is the truth.
5. **Requests left in `cur/`**: one whose result was published is let go (its result
   stands); any other is read again and handed back to be run (`Claimed.recovered`:
   a prompt whose turn had begun is answered from the log, not run twice).

Each step is a function of its own, so each can be tested on a state made by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from cairnd.git import run as git
from cairnd.git import places
from cairnd.git import refs as gitrefs
from cairnd.sessions import rewind as rewinding
from cairnd.sessions.creation import roll_back
from cairnd.state.durable import remove_stale_temps
from cairnd.journal import event
from cairnd.state.layout import StateLayout
from cairnd.sessionlog.file import SessionLog
from cairnd.state.registry import Registry
from cairnd.checkpoints.checkpoint import taker_for
from cairnd.sessionlog.turns import close_open_turn
from cairnd.state.sessionlock import held_elsewhere
from cairnd.spool.protocol import Claimed, Spool


@dataclass
class Recovered:
    """What recovery found and did, step by step."""

    temporaries: list[Path] = field(default_factory=list)
    ref_locks: list[Path] = field(default_factory=list)
    index_copies: int = 0
    rolled_back: list[str] = field(default_factory=list)
    rewinds_finished: list[str] = field(default_factory=list)
    turns_closed: list[str] = field(default_factory=list)
    turns_reconciled: list[str] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # cur/ entries whose result stood
    requests: list[Claimed] = field(default_factory=list)  # to be run again


async def recover(layout: StateLayout, registry: Registry, spool: Spool, *, max_file_bytes: int,
                  limiter: anyio.CapacityLimiter | None = None) -> Recovered:
    """Run the five steps in order (see the module docstring); the requests of step 5
    are returned for the caller to dispatch once it serves."""
    done = Recovered()
    places.attach(registry)
    await anyio.to_thread.run_sync(record_legacy_git_dirs, layout, registry, limiter=limiter)
    await anyio.to_thread.run_sync(remove_temporaries, layout, done, limiter=limiter)
    await anyio.to_thread.run_sync(remove_stale_ref_locks, registry, done, limiter=limiter)
    await anyio.to_thread.run_sync(finish_creations, layout, registry, done, max_file_bytes, limiter=limiter)
    await close_turns(layout, registry, done, max_file_bytes=max_file_bytes, limiter=limiter)
    await anyio.to_thread.run_sync(requests_in_progress, spool, done, limiter=limiter)
    return done


def record_legacy_git_dirs(layout: StateLayout, registry: Registry) -> None:
    """Once, for sessions made before cairnd recorded where their git state is: ask git
    (cairnd's own records start with the next session; SPEC 16)."""
    for row in registry.sessions(("ready",)):
        if row.git_dir is not None or not row.worktree.is_dir():
            continue
        dirs = places.dirs_or_none(row.worktree)
        if dirs is not None:
            registry.set_git_dirs(row.id, dirs.git_dir, dirs.common_dir)
            places.register(row.worktree, dirs.git_dir, dirs.common_dir, places.root_of(layout.root))
            event(logging.INFO, "recorded where a session's git state is", session=row.id)


def remove_temporaries(layout: StateLayout, done: Recovered) -> None:
    """Step 1."""
    for directory in (layout.root, layout.spool / "done", layout.spool / "failed"):
        for name in remove_stale_temps(directory):
            event(logging.INFO, f"removed {directory / name}, left half-written by a stop")
            done.temporaries.append(directory / name)
    for session_dir in layout.sessions.iterdir() if layout.sessions.is_dir() else ():
        tmp = layout.log_tmp_path(session_dir.name)
        if tmp.exists():  # a session's first log, never renamed: its creation is rolled back below
            tmp.unlink()
            done.temporaries.append(tmp)
    done.index_copies = git.sweep_index_copies()


def remove_stale_ref_locks(registry: Registry, done: Recovered) -> None:
    """Step 1, in the repositories: lock files a stop left under this state directory's
    sessions' own checkpoint refs."""
    for row in registry.sessions(("creating", "ready", "deleted")):
        if held_elsewhere(StateLayout(registry.path.parent), row.id):
            continue  # its writer (an editor's cairnd acp) is alive: the locks may be its own
        homes = {gitrefs.home_dir(path) for path in (row.repo, row.worktree) if path.exists()}
        for lock in (lock for home in homes if home is not None
                     for lock in (home / "refs" / "cairnd" / row.id).rglob("*.lock")):
            lock.unlink(missing_ok=True)
            event(logging.WARNING, f"removed {lock}, a checkpoint ref's lock a stop left", session=row.id)
            done.ref_locks.append(lock)


def finish_creations(layout: StateLayout, registry: Registry, done: Recovered, max_file_bytes: int) -> None:
    """Step 2: roll half-made sessions back, roll committed rewinds forward."""
    for row in registry.sessions(("creating",)):
        event(logging.WARNING, "removing a session whose creation a stop cut short", session=row.id)
        rewinding.undo_move(layout, row.id)  # a rewind's abandoned session may hold the present, moved
        roll_back(layout, registry, row)
        done.rolled_back.append(row.id)
    for session_id in rewinding.recover(layout, registry, max_file_bytes=max_file_bytes):
        event(logging.WARNING, "finished a rewind that a stop cut short", session=session_id)
        done.rewinds_finished.append(session_id)


async def close_turns(layout: StateLayout, registry: Registry, done: Recovered, *, max_file_bytes: int,
                      limiter: anyio.CapacityLimiter | None = None) -> None:
    """Steps 3 and 4, session by session: close the turn a stop cut, then set the
    registry's turn count from the log."""
    for row in await anyio.to_thread.run_sync(registry.sessions, ("ready",), limiter=limiter):
        log_path = layout.log_path(row.id)
        if not log_path.exists() or not row.worktree.exists():
            continue
        if held_elsewhere(layout, row.id):
            continue  # an editor's cairnd acp serves it: its open turn is running, not cut
        log = await anyio.to_thread.run_sync(SessionLog, log_path, limiter=limiter)
        try:
            turns, closed = await close_open_turn(log, row.id, row.worktree, max_file_bytes=max_file_bytes,
                                                  limiter=limiter, take=taker_for(layout))
        finally:
            log.close()
        if closed is not None:
            event(logging.WARNING, f"turn {turns - 1} was cut by a stop: recorded as interrupted", session=row.id)
            done.turns_closed.append(row.id)
        if turns != row.turns:
            if closed is None:
                event(logging.INFO, f"the registry counted {row.turns} turns, the log {turns}: set from the log",
                      session=row.id)
            await anyio.to_thread.run_sync(registry.set_turns, row.id, turns, limiter=limiter)
            done.turns_reconciled.append(row.id)


def requests_in_progress(spool: Spool, done: Recovered) -> None:
    """Step 5."""
    for name in spool.in_progress():
        if spool.has_result(name):
            spool.forget_answered(name)
            done.answered.append(name)
            continue
        claimed = spool.reclaim(name)
        event(logging.INFO, f"recovering {name} left in cur/ by a stop", request=claimed.request_id)
        done.requests.append(claimed)
