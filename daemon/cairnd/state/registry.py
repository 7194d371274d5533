"""The registry: sessions and fork lineage in SQLite (`<state>/cairnd.db`).

A session row is written *before* anything else of the session exists, in state
`creating`, and flipped to `ready` as the last step of creation. That row is the
journal that makes creation atomic: whatever a crash or a failure leaves behind
for a `creating` row (worktree, log, refs) is removed and the row with it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'deleted')),
    title         TEXT NOT NULL,
    repo          TEXT NOT NULL,
    worktree      TEXT NOT NULL,
    in_place      INTEGER NOT NULL DEFAULT 0,
    agent         TEXT NOT NULL,
    parent_id     TEXT,
    root_id       TEXT NOT NULL,
    turns         INTEGER NOT NULL DEFAULT 0,
    request_id    TEXT,
    result        BLOB,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    deleted_at    REAL,
    git_dir       TEXT,
    common_dir    TEXT
);
CREATE INDEX IF NOT EXISTS sessions_request ON sessions(request_id);
CREATE TABLE IF NOT EXISTS forks (
    id                 TEXT PRIMARY KEY,
    parent_id          TEXT NOT NULL,
    parent_title       TEXT NOT NULL,
    root_id            TEXT NOT NULL,
    user_message_index INTEGER NOT NULL,
    head_sha           TEXT NOT NULL,
    worktree_sha       TEXT,
    created_at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS forks_root ON forks(root_id);
CREATE TABLE IF NOT EXISTS rewinds (
    abandoned_id  TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    request_id    TEXT,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    plan          BLOB NOT NULL,
    result        BLOB,
    created_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rewinds_request ON rewinds(request_id);
"""


@dataclass(frozen=True)
class SessionRow:
    id: str
    state: str
    title: str
    repo: Path
    worktree: Path
    in_place: bool
    agent: str
    parent_id: str | None
    root_id: str
    turns: int
    request_id: str | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float
    deleted_at: float | None
    git_dir: Path | None = None  # the session's own git directory (HEAD, index), as cairnd made it
    common_dir: Path | None = None  # its repository's common one (objects, refs)


@dataclass(frozen=True)
class ForkRow:
    id: str
    parent_id: str
    parent_title: str
    root_id: str
    user_message_index: int
    head_sha: str
    worktree_sha: str | None
    created_at: float


@dataclass(frozen=True)
class RewindRow:
    """A rewind's journal: its plan (what the session becomes), written with the abandoned
    session's commit point, and its result once finished."""

    abandoned_id: str
    session_id: str
    request_id: str | None
    plan: dict[str, Any]
    state: str = "pending"
    result: dict[str, Any] | None = None


def _rewind(row: sqlite3.Row) -> RewindRow:
    return RewindRow(abandoned_id=row["abandoned_id"], session_id=row["session_id"], request_id=row["request_id"],
                     plan=orjson.loads(row["plan"]), state=row["state"],
                     result=orjson.loads(row["result"]) if row["result"] else None)


def _session(row: sqlite3.Row) -> SessionRow:
    return SessionRow(
        id=row["id"], state=row["state"], title=row["title"], repo=Path(row["repo"]),
        worktree=Path(row["worktree"]), in_place=bool(row["in_place"]), agent=row["agent"],
        parent_id=row["parent_id"], root_id=row["root_id"], turns=row["turns"],
        request_id=row["request_id"], result=orjson.loads(row["result"]) if row["result"] else None,
        created_at=row["created_at"], updated_at=row["updated_at"], deleted_at=row["deleted_at"],
        git_dir=Path(row["git_dir"]) if row["git_dir"] else None,
        common_dir=Path(row["common_dir"]) if row["common_dir"] else None,
    )


def _commit(db: sqlite3.Connection, id: str, result: dict[str, Any], fork: ForkRow | None) -> None:
    db.execute(
        "UPDATE sessions SET state = 'ready', result = ?, updated_at = ? WHERE id = ? AND state = 'creating'",
        (orjson.dumps(result), time.time(), id),
    )
    if fork is not None:
        db.execute(
            "INSERT INTO forks (id, parent_id, parent_title, root_id, user_message_index,"
            " head_sha, worktree_sha, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (fork.id, fork.parent_id, fork.parent_title, fork.root_id,
             fork.user_message_index, fork.head_sha, fork.worktree_sha, fork.created_at),
        )


def _fork(row: sqlite3.Row) -> ForkRow:
    return ForkRow(**{key: row[key] for key in row.keys()})


class Registry:
    """One SQLite connection per thread, opened on first use and kept: safe from any
    thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(sessions)")}
            for column in ("git_dir", "common_dir"):  # a registry from before cairnd recorded them
                if column not in columns:
                    db.execute(f"ALTER TABLE sessions ADD COLUMN {column} TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread, kept open: opening one (and its WAL set-up) costs
        # more than most of the statements it runs, and a burst of forks runs thousands.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            # Held by the thread alone: when a worker thread ends, its connection is
            # collected and closed with it.
            self._local.db = db
        yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- sessions ---------------------------------------------------------------

    def begin_session(self, *, id: str, title: str, repo: Path, worktree: Path, in_place: bool,
                      agent: str, parent_id: str | None, root_id: str, turns: int,
                      request_id: str | None) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, state, title, repo, worktree, in_place, agent, parent_id,"
                " root_id, turns, request_id, created_at, updated_at)"
                " VALUES (?, 'creating', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id, title, str(repo), str(worktree), int(in_place), agent, parent_id, root_id,
                 turns, request_id, now, now),
            )

    def commit_session(self, id: str, result: Mapping[str, Any], fork: ForkRow | None = None,
                       rewind: RewindRow | None = None) -> None:
        """The commit point of creation: the row turns `ready` (and the lineage row
        appears) in one transaction. For the abandoned session of a rewind, the rewind's
        plan is recorded `pending` in the same transaction: from here on the rewind is
        finished, by recovery if need be, never undone."""
        with self._transaction() as db:
            if rewind is not None:
                db.execute(
                    "INSERT INTO rewinds (abandoned_id, session_id, request_id, state, plan, created_at)"
                    " VALUES (?, ?, ?, 'pending', ?, ?)",
                    (rewind.abandoned_id, rewind.session_id, rewind.request_id, orjson.dumps(rewind.plan),
                     time.time()),
                )
            _commit(db, id, result, fork)

    def commit_sessions(self, made: list[tuple[str, dict[str, Any], ForkRow]]) -> None:
        """The commit point of several forks made by one request (attempts, SPEC 19):
        all turn `ready` with their lineage rows in one transaction, or none does."""
        with self._transaction() as db:
            for id, result, fork in made:
                _commit(db, id, result, fork)

    def adopt_session(self, *, id: str, title: str, repo: Path, worktree: Path, agent: str,
                      parent_id: str | None, root_id: str, turns: int, result: dict[str, Any]) -> None:
        """A session made on another host of the fleet, materialised here (SPEC 17):
        its row appears `ready` at once, or the stale row a former owner kept is
        brought up to date."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, state, title, repo, worktree, in_place, agent, parent_id, root_id,"
                " turns, request_id, result, created_at, updated_at) VALUES (?, 'ready', ?, ?, ?, 0, ?, ?, ?, ?,"
                " NULL, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state = 'ready', repo = excluded.repo,"
                " worktree = excluded.worktree, in_place = 0, turns = excluded.turns, updated_at = excluded.updated_at",
                (id, title, str(repo), str(worktree), agent, parent_id, root_id, turns, orjson.dumps(result), now, now),
            )

    def set_git_dirs(self, id: str, git_dir: Path, common_dir: Path) -> None:
        """Record where a session's git state is (SPEC 16: cairnd's git and the sandbox's
        grants take it from here, never from the worktree's `.git`)."""
        with self._transaction() as db:
            db.execute("UPDATE sessions SET git_dir = ?, common_dir = ? WHERE id = ?",
                       (str(git_dir), str(common_dir), id))

    def git_place(self, worktree: Path) -> tuple[Path, Path, Path] | None:
        """(worktree, git dir, common dir) of the live session whose worktree is `worktree`."""
        with self._connect() as db:
            row = db.execute(
                "SELECT worktree, git_dir, common_dir FROM sessions WHERE worktree = ? AND git_dir IS NOT NULL"
                " AND state IN ('creating', 'ready') ORDER BY created_at DESC LIMIT 1", (str(worktree),)).fetchone()
        return (Path(row["worktree"]), Path(row["git_dir"]), Path(row["common_dir"])) if row else None

    def forget_creating(self, id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE id = ? AND state = 'creating'", (id,))

    def get(self, id: str) -> SessionRow | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM sessions WHERE id = ?", (id,)).fetchone()
        return _session(row) if row else None

    def ids_starting(self, prefix: str, limit: int = 3) -> list[str]:
        """Up to `limit` session ids that begin with `prefix` (for an error's hint)."""
        if not prefix:
            return []
        with self._connect() as db:
            rows = db.execute("SELECT id FROM sessions WHERE substr(id, 1, ?) = ? AND state != 'creating' "
                              "ORDER BY id LIMIT ?", (len(prefix), prefix, limit)).fetchall()
        return [row[0] for row in rows]

    def by_request(self, request_id: str) -> SessionRow | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM sessions WHERE request_id = ? AND state != 'creating' ORDER BY created_at LIMIT 1",
                (request_id,),
            ).fetchone()
        return _session(row) if row else None

    def all_by_request(self, request_id: str) -> list[SessionRow]:
        """Every session a request made (the tries of an attempts fork), in the order made."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM sessions WHERE request_id = ? AND state != 'creating'"
                              " ORDER BY created_at, rowid", (request_id,)).fetchall()
        return [_session(row) for row in rows]

    def sessions(self, states: tuple[str, ...] = ("ready",)) -> list[SessionRow]:
        marks = ",".join("?" * len(states))
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM sessions WHERE state IN ({marks}) ORDER BY id", states).fetchall()
        return [_session(r) for r in rows]

    def set_turns(self, id: str, turns: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET turns = ?, updated_at = ? WHERE id = ?", (turns, time.time(), id))

    def mark_deleted(self, id: str) -> None:
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET state = 'deleted', deleted_at = ?, updated_at = ? WHERE id = ?",
                (now, now, id),
            )

    # -- rewinds ------------------------------------------------------------------

    def finish_rewind(self, abandoned_id: str, session_id: str, turns: int, result: dict[str, Any]) -> None:
        """The last step of a rewind: the session's turn count and the result, at once."""
        with self._transaction() as db:
            db.execute("UPDATE sessions SET turns = ?, updated_at = ? WHERE id = ?", (turns, time.time(), session_id))
            db.execute("UPDATE rewinds SET state = 'done', result = ? WHERE abandoned_id = ?",
                       (orjson.dumps(result), abandoned_id))

    def rewinds(self, states: tuple[str, ...] = ("pending",)) -> list[RewindRow]:
        marks = ",".join("?" * len(states))
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM rewinds WHERE state IN ({marks}) ORDER BY created_at",
                              states).fetchall()
        return [_rewind(r) for r in rows]

    def rewind_by_request(self, request_id: str) -> RewindRow | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM rewinds WHERE request_id = ? ORDER BY created_at LIMIT 1",
                             (request_id,)).fetchone()
        return _rewind(row) if row else None

    def rewinds_of(self, session_id: str) -> list[RewindRow]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM rewinds WHERE session_id = ? ORDER BY created_at",
                              (session_id,)).fetchall()
        return [_rewind(r) for r in rows]

    # -- lineage -----------------------------------------------------------------

    def fork_of(self, id: str) -> ForkRow | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM forks WHERE id = ?", (id,)).fetchone()
        return _fork(row) if row else None

    def forks(self) -> list[ForkRow]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM forks ORDER BY created_at, id").fetchall()
        return [_fork(r) for r in rows]

    def forks_at(self, parent_id: str, user_message_index: int) -> list[ForkRow]:
        """The forks of a session at one cut (siblings: the tries of attempts, SPEC 19)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM forks WHERE parent_id = ? AND user_message_index = ?"
                              " ORDER BY created_at, id", (parent_id, user_message_index)).fetchall()
        return [_fork(r) for r in rows]

    def titles_in_root(self, root_id: str) -> list[str]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT title FROM sessions WHERE root_id = ? AND state != 'creating'", (root_id,)
            ).fetchall()
        return [r["title"] for r in rows]
