"""Checkpoints by name, and the files between two of them (SPEC section 13, `cairnd diff`).

A checkpoint is named `SESSION` (its latest) or `SESSION@N` (the one taken after turn
N; `@0` the baseline). `diff A` alone compares A's latest with where A started: a
fork's parent at the cut, else A's baseline. Everything is read from the state
directory and the checkpoints' git objects: no worktree, index or HEAD is looked at,
and nothing is written.

`checkpoints_in` and `pick_checkpoint` are pure (log lines in, checkpoint params out);
`resolve` and `compare` do the reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairnd.git import places
from cairnd.git import run as git
from cairnd.git import diff as gitdiff
from cairnd.git import inner
from cairnd.state.layout import StateLayout
from cairnd.errors import CairnError
from cairnd.ids import is_session_id
from cairnd.sessionlog.entries import (
    CHECKPOINT_MARK,
    CHECKPOINT_METHOD,
    FORK_META_MARK,
    FORK_META_METHOD,
    REWIND_MARK,
    Lines,
    method_of,
    parse_message,
)
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import Registry, SessionRow

_MARKS = (CHECKPOINT_MARK, FORK_META_MARK, REWIND_MARK)
_SPEC = re.compile(r"^(?P<session>[^@]+)(?:@(?P<turn>\d+))?$")


@dataclass(frozen=True)
class LogCheckpoints:
    """What a log says about its states: every checkpoint in order, and the fork meta
    (the parent's state at the cut) when the log is a fork's."""

    checkpoints: list[dict[str, Any]]
    fork_meta: dict[str, Any] | None
    first_own: int  # index in `checkpoints` of the session's own first one (after the fork meta)


@dataclass(frozen=True)
class Named:
    """One side of a comparison."""

    label: str  # "S@3", "S (start: parent P at message 2)"
    session: str
    turns: int | None
    commit: str  # whose tree is the state: worktreeSha, or headSha for a checkpoint of HEAD alone
    inner: tuple[tuple[str, str, str], ...] = ()  # (kind, path, worktreeSha) of each repository inside it

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "session": self.session, "turns": self.turns, "commit": self.commit}


def parse_name(text: str) -> tuple[str, int | None]:
    """`SESSION` or `SESSION@N` -> (session text, N or None)."""
    match = _SPEC.match(text or "")
    if match is None:
        raise CairnError("bad_request", f"{text!r} is not SESSION or SESSION@N (N: a turn count, 0 the baseline)")
    turn = match.group("turn")
    return match.group("session"), None if turn is None else int(turn)


def checkpoints_in(lines: Lines) -> LogCheckpoints:
    checkpoints: list[dict[str, Any]] = []
    fork_meta: dict[str, Any] | None = None
    first_own = 0
    for _offset, line in lines:
        if not any(mark in line for mark in _MARKS):
            continue
        message = parse_message(line)
        if message is None:
            continue
        params = message.get("params")
        if not isinstance(params, dict):
            continue
        method = method_of(message)
        if method == CHECKPOINT_METHOD and state_commit(params):
            checkpoints.append(params)
        elif method == FORK_META_METHOD:
            fork_meta = params
            first_own = len(checkpoints)
    return LogCheckpoints(checkpoints, fork_meta, first_own)


def inner_of(params: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """(kind, path, worktreeSha) of each submodule and nested repository a checkpoint records."""
    return tuple((kind, e["path"], e["worktreeSha"]) for kind in ("submodules", "nested")
                 for e in params.get(kind) or () if isinstance(e, dict) and isinstance(e.get("path"), str)
                 and git.is_object_id(e.get("worktreeSha")))


def state_commit(params: dict[str, Any]) -> str | None:
    """The commit whose tree is a checkpoint's whole state."""
    for key in ("worktreeSha", "headSha"):
        if git.is_object_id(params.get(key)):
            return params[key]
    return None


def pick_checkpoint(found: LogCheckpoints, session_id: str, turns: int | None) -> dict[str, Any]:
    """The latest checkpoint, or the last one taken after `turns` turns."""
    if not found.checkpoints:
        raise CairnError("bad_request", f"session {session_id} has no checkpoint in its log")
    if turns is None:
        return found.checkpoints[-1]
    for params in reversed(found.checkpoints):
        if params.get("turns") == turns:
            return params
    have = sorted({p["turns"] for p in found.checkpoints if isinstance(p.get("turns"), int)})
    raise CairnError("bad_request", f"session {session_id} has no checkpoint after turn {turns} "
                                    f"(it has: {', '.join(f'@{n}' for n in have)})")


def start_of(found: LogCheckpoints, session_id: str) -> Named:
    """Where a session started: a fork's parent at the cut, else its first checkpoint."""
    meta = found.fork_meta
    if meta is not None:
        commit = meta.get("worktreeSha") or meta.get("headSha")
        if git.is_object_id(commit):
            own = found.checkpoints[found.first_own] if found.first_own < len(found.checkpoints) else {}
            return Named(f"{meta.get('parentSessionId')} at message {meta.get('userMessageIndex')}",
                         str(meta.get("parentSessionId")), None, commit, inner_of(own))
    pick_checkpoint(found, session_id, None)  # says so when there is none
    first = found.checkpoints[0]
    return Named(f"{session_id}@{first.get('turns')}", session_id, first.get("turns"), state_commit(first) or "",
                 inner_of(first))


def session_row(registry: Registry | None, layout: StateLayout, text: str) -> SessionRow:
    if not is_session_id(text):
        raise CairnError("bad_request", f"session {text!r} is not a session id")
    row = registry.get(text) if registry else None
    if row is None or row.state == "creating":
        raise CairnError("unknown_session", f"session {text!r} does not exist in {layout.root}")
    return row


def git_dir_of(row: SessionRow) -> Path:
    """Where to run git for a session: its repository, or its worktree if that is gone."""
    for place in (row.repo, row.worktree):
        if Path(place).is_dir():
            return Path(place)
    raise CairnError("repo_not_found", f"session {row.id}: neither its repository {row.repo} "
                                       f"nor its worktree {row.worktree} exists")


def read_checkpoints(layout: StateLayout, row: SessionRow) -> LogCheckpoints:
    log = layout.log_path(row.id)
    if not log.exists():
        raise CairnError("unknown_session", f"session {row.id} has no log at {log}")
    return checkpoints_in(iter_lines(log))


def resolve(layout: StateLayout, registry: Registry | None, text: str) -> tuple[SessionRow, Named]:
    session, turns = parse_name(text)
    row = session_row(registry, layout, session)
    params = pick_checkpoint(read_checkpoints(layout, row), row.id, turns)
    label = f"{row.id}@{params.get('turns')}"
    return row, Named(label, row.id, params.get("turns"), state_commit(params) or "", inner_of(params))


def _same_repository(a: SessionRow, b: SessionRow) -> bool:
    if a.repo == b.repo:
        return True
    try:
        return git.common_dir(git_dir_of(a)) == git.common_dir(git_dir_of(b))
    except CairnError:
        return False


def sides(layout: StateLayout, registry: Registry | None, a: str, b: str | None) -> tuple[Path, Named, Named]:
    """(where to run git, from, to) for `diff A` or `diff A B`."""
    row_a, named_a = resolve(layout, registry, a)
    if b is None:
        return git_dir_of(row_a), start_of(read_checkpoints(layout, row_a), row_a.id), named_a
    row_b, named_b = resolve(layout, registry, b)
    if not _same_repository(row_a, row_b):
        raise CairnError("bad_request", f"sessions {row_a.id} ({row_a.repo}) and {row_b.id} ({row_b.repo}) "
                                        "belong to different repositories: there is nothing to compare")
    return git_dir_of(row_a), named_a, named_b


def inner_pairs(layout: StateLayout, where: Path, old: Named, new: Named) -> list[tuple[Path, str, str | None, str]]:
    """(store, path, old commit or None, new commit) of each repository inside the newer
    state that changed: where its files are compared (`cairnd.git.inner` stores)."""
    if not new.inner:
        return []
    common = git.common_dir(where)
    stores: dict[str, Path] = {}
    for session in (new.session, old.session):
        for path, store in inner.stores(layout.inner_map(session), common).items():
            stores.setdefault(path, store)
    before = {(kind, path): sha for kind, path, sha in old.inner}
    pairs = []
    for kind, path, sha in new.inner:
        store = stores.get(path if kind == "submodules" else "")
        if store is None or before.get((kind, path)) == sha:
            continue
        pairs.append((store, path, before.get((kind, path)), sha))
    return pairs


def compare(layout: StateLayout, a: str, b: str | None = None) -> dict[str, Any]:
    """The structured comparison: `{from, to, files: [{path, status, added, removed, binary, ...}]}`."""
    registry = Registry(layout.db) if layout.db.exists() else None
    if registry is not None:
        places.attach(registry)
    where, old, new = sides(layout, registry, a, b)
    files = [change.as_dict() for change in gitdiff.diff_files(where, old.commit, new.commit)]
    for store, path, before, after in inner_pairs(layout, where, old, new):
        for change in gitdiff.diff_files(store, before, after):  # the files inside it, under its path
            entry = change.as_dict()
            entry["path"] = f"{path}/{entry['path']}"
            if entry.get("old_path"):
                entry["old_path"] = f"{path}/{entry['old_path']}"
            files.append(entry)
    return {"from": old.as_dict(), "to": new.as_dict(), "files": files}


def compare_text(layout: StateLayout, a: str, b: str | None = None, *, stat: bool = False,
                 width: int = 80) -> tuple[Named, Named, bytes]:
    """(from, to, git's unified diff or --stat of the two states)."""
    registry = Registry(layout.db) if layout.db.exists() else None
    if registry is not None:
        places.attach(registry)
    where, old, new = sides(layout, registry, a, b)
    text = gitdiff.diff_text(where, old.commit, new.commit, stat=stat, stat_width=width)
    if not stat:
        for store, path, before, after in inner_pairs(layout, where, old, new):
            text += gitdiff.diff_text(store, before, after, prefix=f"{path}/")
    return old, new, text
