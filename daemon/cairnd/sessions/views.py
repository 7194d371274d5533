"""What `cairnd ls`, `show`, `tree` and `status` show, read straight from the state
directory (SQLite, session logs, the spool), with no daemon involved.

Pure functions shape plain data (`lineage_forest`; a session's turns are
`transcript.session_state`'s); the functions around them do the reading. Nothing here writes to the state directory.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import orjson

from cairnd.git import places
from cairnd.config.settings import Config
from cairnd.state.layout import StateLayout
from cairnd.agent.confinement import detect as detect_sandbox
from cairnd.errors import CairnError
from cairnd.sessionlog.entries import iso_timestamp, REWIND_MARK, REWIND_METHOD, method_of, params_of, parse_message
from cairnd.git.run import is_object_id
from cairnd.git.diff import diff_files_many
from cairnd.sessionlog.file import iter_lines
from cairnd.spool.protocol import count_entries
from cairnd.state.registry import ForkRow, Registry, RewindRow, SessionRow
from cairnd.state.statelock import daemon_pid
from cairnd.sessionlog.transcript import session_state


# --------------------------------------------------------------------------- what is shown


class SessionSummary(TypedDict):
    """A session as `ls --json` and the web list it (SPEC 15)."""

    id: str
    title: str
    turns: int
    state: str
    parent: str | None
    agent: str
    repo: str
    worktree: str
    in_place: bool
    created_at: str
    deleted_at: str | None


class ListedSession(SessionSummary):
    running: bool  # a request about it waits in the spool or is being worked on


class ForkOf(TypedDict):
    parent: str
    parent_title: str
    parent_exists: bool
    user_message_index: int
    headSha: str
    worktreeSha: str | None


class RewindShown(TypedDict):
    abandoned: str  # the session that keeps what the rewind left
    user_message_index: Any
    headSha: Any
    detached: Any
    finished: bool
    in_log: bool  # its _cairnd/rewind line is still in the log
    prefill: Any


class ShownSummary(SessionSummary):
    worktree_exists: bool
    log: str
    fork_of: ForkOf | None
    rewinds: list[RewindShown]


class ChangeShown(TypedDict):
    status: str  # git's status letter
    path: str


class TurnShown(TypedDict):
    turn: int  # counted from 1: turn N is the one @N and `land --turn N` name (SPEC 13)
    prompt: str
    stopReason: str | None
    headSha: str | None
    worktreeSha: str | None
    dirty: bool | None
    inherited: bool
    changes: list[ChangeShown] | None  # None where git cannot tell


class ShownSession(TypedDict):
    """`cairnd show --json` and /api/sessions/<id>."""

    session: ShownSummary
    turns: list[TurnShown]


# --------------------------------------------------------------------------- the daemon


def daemon_status(config: Config) -> dict[str, Any]:
    from cairnd.checkpoints.storage import log_size, repository_figures

    layout = config.layout
    pid = daemon_pid(layout.root)
    status: dict[str, Any] = {
        "running": pid is not None,
        "pid": pid if pid and pid > 0 else None,
        "state_dir": str(layout.root),
        "config": str(config.source.absolute()) if config.source else None,
        "spool": count_entries(layout.spool, ("new", "cur", "done", "failed")),
        "started_at": None,
        "updated_at": None,
        "in_flight": 0,
        "turns_in_flight": 0,
        "active_agents": 0,
        "stopping": False,
        # What the kernel offers agents; the running daemon's own view replaces it.
        "sandbox": detect_sandbox().describe(),
    }
    if pid is not None:
        try:
            written = orjson.loads(layout.status.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            written = None
        # A kill -9 leaves the file behind: trust it only when it is the live daemon's.
        if isinstance(written, dict) and written.get("pid") == pid:
            for key in ("started_at", "updated_at", "in_flight", "turns_in_flight", "active_agents", "stopping",
                        "sandbox"):
                if key in written:
                    status[key] = written[key]
    rows = session_rows(layout, all_states=True)
    status["sessions"] = {
        "ready": sum(1 for row in rows if row.state == "ready"),
        "deleted": sum(1 for row in rows if row.state == "deleted"),
    }
    # SPEC 15: per repository, its checkpoint refs, objects' size on disk and logs' size.
    status["storage"] = repository_figures(rows, lambda session_id: log_size(layout.log_path(session_id)))
    return status


# --------------------------------------------------------------------------- sessions


def open_registry(layout: StateLayout) -> Registry | None:
    """The registry, or None when no daemon has made one yet (reading must not create it)."""
    if not layout.db.exists():
        return None
    registry = Registry(layout.db)
    places.attach(registry)
    return registry


def session_rows(layout: StateLayout, all_states: bool = False) -> list[SessionRow]:
    registry = open_registry(layout)
    if registry is None:
        return []
    return registry.sessions(("ready", "deleted") if all_states else ("ready",))


def resolve_session(layout: StateLayout, text: str) -> str:
    """A session id from what a user typed: the id itself, or a prefix of exactly one
    session's id. Unknown text is returned as it is, for the daemon to judge."""
    try:
        rows = session_rows(layout, all_states=True)
    except sqlite3.Error:
        return text  # a registry we may not read: the daemon will judge the id
    ids = [row.id for row in rows]
    if text in ids or not text:
        return text
    matches = [i for i in ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise CairnError("bad_request", f"session {text!r} is ambiguous: it begins {len(matches)} ids ({shown})")
    return text


def busy_sessions(spool: Path) -> set[str]:
    """Sessions with a request in the works (in `cur/`): a turn, a rewind, a fork of it.
    What `ls` and the web view call running."""
    busy: set[str] = set()
    try:
        entries = list(os.scandir(spool / "cur"))
    except FileNotFoundError:
        return busy
    for entry in entries:
        try:
            request = orjson.loads(Path(entry.path).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(request, dict) and isinstance(request.get("session"), str):
            busy.add(request["session"])
    return busy


def session_summary(row: SessionRow) -> SessionSummary:
    return {
        "id": row.id,
        "title": row.title,
        "turns": row.turns,
        "state": row.state,
        "parent": row.parent_id,
        "agent": row.agent,
        "repo": str(row.repo),
        "worktree": str(row.worktree),
        "in_place": row.in_place,
        "created_at": iso_timestamp(row.created_at),
        "deleted_at": None if row.deleted_at is None else iso_timestamp(row.deleted_at),
    }


def session_listing(layout: StateLayout, rows: list[SessionRow]) -> list[ListedSession]:
    """`ls --json` and `/api/sessions`: each session's summary, and whether it is running."""
    busy = busy_sessions(layout.spool)
    return [{**session_summary(row), "running": row.id in busy} for row in rows]


def changed_paths(cwd: Path, pairs: list[tuple[Any, Any]]) -> list[list[tuple[str, str]] | None]:
    """(git's status letter, path) of each file each (old, new) pair of snapshot commits
    differs in, read as `cairnd diff` reads them (renames found), all pairs by one git
    process; None where git cannot tell (an id missing or gone, the repository removed).
    For display (`cairnd show`): never raises."""
    wanted = [(old, new) for old, new in pairs if is_object_id(old) and is_object_id(new)]
    try:
        found = dict(zip(wanted, diff_files_many(cwd, wanted))) if wanted and cwd.is_dir() else {}
    except CairnError:
        found = {}
    answers: list[list[tuple[str, str]] | None] = []
    for pair in pairs:
        changes = found.get(pair)
        answers.append(None if changes is None or isinstance(changes, CairnError)
                       else [(change.status, change.path) for change in changes])
    return answers


def agent_answer(layout: StateLayout, session_id: str, turn: int) -> str | None:
    """The agent's text in turn `turn` of a session (its last turn when there is no such
    turn), read from its log; None without a log or a turn."""
    path = layout.log_path(session_id)
    if not path.exists():
        return None
    conversation = session_state(iter_lines(path)).conversation
    if not conversation:
        return None
    chosen = conversation[turn] if 0 <= turn < len(conversation) else conversation[-1]
    return chosen.agent_text


def show_session(layout: StateLayout, session_id: str) -> ShownSession:
    """A session and its turns with their checkpoints and the files each turn changed."""
    registry = open_registry(layout)
    row = registry.get(session_id) if registry else None
    if row is None or row.state == "creating":
        raise CairnError("unknown_session", f"session {session_id!r} does not exist in {layout.root}")
    log = layout.log_path(row.id)
    turns = session_state(iter_lines(log), agent_text=False).conversation if log.exists() else []
    fork = registry.fork_of(row.id) if registry else None
    cwd = row.worktree if row.worktree.is_dir() else row.repo
    shown: list[TurnShown] = []
    sides = [((turn.previous_checkpoint or {}).get("worktreeSha"), (turn.checkpoint or {}).get("worktreeSha"))
             for turn in turns]
    for index, (turn, changes) in enumerate(zip(turns, changed_paths(cwd, sides))):
        after = sides[index][1]
        shown.append({
            "turn": index + 1,  # turn N is the one @N and `land --turn N` name (SPEC 13)
            "prompt": turn.user_text,
            "stopReason": turn.stop_reason,
            "headSha": (turn.checkpoint or {}).get("headSha"),
            "worktreeSha": after,
            "dirty": (turn.checkpoint or {}).get("dirty"),
            "inherited": turn.inherited,
            "changes": None if changes is None else [{"status": s, "path": p} for s, p in changes],
        })
    fork_of: ForkOf | None = None if fork is None else {
        "parent": fork.parent_id,
        "parent_title": fork.parent_title,
        "parent_exists": _exists(registry, fork.parent_id),
        "user_message_index": fork.user_message_index,
        "headSha": fork.head_sha,
        "worktreeSha": fork.worktree_sha,
    }
    summary: ShownSummary = {**session_summary(row), "worktree_exists": row.worktree.is_dir(), "log": str(log),
                             "fork_of": fork_of, "rewinds": rewinds_shown(registry, row.id, log)}
    return {"session": summary, "turns": shown}


def left_behind_by(registry: Registry | None, session_id: str) -> RewindRow | None:
    """The rewind that left this session behind (it holds what its session was), if any."""
    if registry is None:
        return None
    return next((record for record in registry.rewinds(("pending", "done")) if record.abandoned_id == session_id), None)


def rewinds_shown(registry: Registry | None, session_id: str, log: Path) -> list[RewindShown]:
    """The session's rewinds, oldest first: where each went back to, the session that keeps
    what it left, and whether its `_cairnd/rewind` line is still in the log (a later
    rewind to an earlier message cuts it away)."""
    in_log = set()
    if log.exists():
        for _offset, line in iter_lines(log):
            if REWIND_MARK in line and (message := parse_message(line)) and method_of(message) == REWIND_METHOD:
                in_log.add(params_of(message).get("abandoned"))
    shown: list[RewindShown] = []
    for record in registry.rewinds_of(session_id) if registry else []:
        result = record.result or {}
        shown.append({"abandoned": record.abandoned_id, "user_message_index": record.plan.get("k"),
                      "headSha": record.plan.get("headSha"), "detached": record.plan.get("detached"),
                      "finished": record.state == "done", "in_log": record.abandoned_id in in_log,
                      "prefill": result.get("prefill")})
    return shown


def _exists(registry: Registry | None, session_id: str) -> bool:
    row = registry.get(session_id) if registry else None
    return row is not None and row.state == "ready"


# --------------------------------------------------------------------------- lineage


@dataclass
class LineageNode:
    id: str
    title: str
    state: str  # ready, deleted, or gone (only its lineage row remembers it)
    turns: int | None
    user_message_index: int | None  # where it was cut from its parent; None for a root
    parent: str | None
    parent_exists: bool | None  # None for a root
    created_at: float
    children: list[LineageNode] = field(default_factory=list)
    rewound_at: int | None = None  # for what a rewind left behind: the message its parent went back to

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "state": self.state, "turns": self.turns,
            "user_message_index": self.user_message_index, "parent": self.parent,
            "parent_exists": self.parent_exists, "rewound_at": self.rewound_at,
            "children": [child.as_dict() for child in self.children],
        }

    def alive(self) -> bool:
        return self.state == "ready" or any(child.alive() for child in self.children)


def lineage_forest(sessions: Iterable[SessionRow], forks: Iterable[ForkRow]) -> list[LineageNode]:
    """Fork lineage as trees, roots and children oldest first. A parent known only from
    a lineage row (its session row gone) appears under the title the row kept."""
    nodes: dict[str, LineageNode] = {}
    for row in sessions:
        if row.state == "creating":
            continue
        nodes[row.id] = LineageNode(row.id, row.title, row.state, row.turns, None, row.parent_id, None,
                                    row.created_at)
    fork_rows = list(forks)
    for fork in fork_rows:
        if fork.parent_id not in nodes:
            nodes[fork.parent_id] = LineageNode(fork.parent_id, fork.parent_title, "gone", None, None, None,
                                                None, fork.created_at)
    for fork in fork_rows:
        node = nodes.get(fork.id)
        if node is None:
            continue
        node.parent = fork.parent_id
        node.user_message_index = fork.user_message_index
    roots = []
    for node in sorted(nodes.values(), key=lambda n: (n.created_at, n.id)):
        parent = nodes.get(node.parent) if node.parent else None
        if parent is None:
            node.parent_exists = None if node.parent is None else False
            roots.append(node)
        else:
            node.parent_exists = parent.state == "ready"
            parent.children.append(node)
    return roots


def find_root(forest: list[LineageNode], session_id: str) -> LineageNode | None:
    """The tree of the forest that holds session_id."""
    def holds(node: LineageNode) -> bool:
        return node.id == session_id or any(holds(child) for child in node.children)
    return next((root for root in forest if holds(root)), None)


def read_forest(layout: StateLayout) -> list[LineageNode]:
    registry = open_registry(layout)
    if registry is None:
        return []
    forest = lineage_forest(registry.sessions(("ready", "deleted")), registry.forks())
    rewound = {record.abandoned_id: record.plan.get("k") for record in registry.rewinds(("pending", "done"))}

    def mark(node: LineageNode) -> None:
        node.rewound_at = rewound.get(node.id)
        for child in node.children:
            mark(child)
    for root in forest:
        mark(root)
    return forest
