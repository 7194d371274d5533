"""Every path of the state directory (SPEC 2), and the one function that makes its
folders. Nothing else in cairnd spells a name under the state directory.

    <state>/cairnd.lock              one daemon per state directory (statelock)
    <state>/status.json              what the running daemon is doing (`cairnd status`)
    <state>/cairnd.db                the registry (SQLite)
    <state>/web.token                the web view's token when [web] token is unset (cairnd.web.token)
    <state>/spool/{tmp,new,cur,done,failed}/   the request spool (SPEC 6)
    <state>/sessions/<id>/log.ndjson           a session's log
    <state>/sessions/<id>/agent.stderr         the latest of what its agent wrote to stderr
    <state>/worktrees/<id>/<repo name>/        a session's worktree
    <state>/worktrees/<id>/inner.json          the submodules cairnd made in it (git.inner)
    <state>/agents/<profile>/        an agent profile's own files (confined agents may write)
    <state>/tmp/<id>/                a confined agent's TMPDIR
    <state>/fleet/                   the fleet's local copies (cairnd.fleet)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPOOL_DIRS = ("tmp", "new", "cur", "done", "failed")
LOCK_NAME = "cairnd.lock"
STATUS_NAME = "status.json"
LOG_NAME = "log.ndjson"
STDERR_NAME = "agent.stderr"


def create_spool(spool: Path) -> None:
    """Make the spool's folders (a writer may queue a request before any daemon ran)."""
    for sub in SPOOL_DIRS:
        (spool / sub).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class StateLayout:
    """Where everything lives under the state directory `root`."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def status(self) -> Path:
        return self.root / STATUS_NAME

    @property
    def web_token(self) -> Path:
        return self.root / "web.token"

    @property
    def db(self) -> Path:
        return self.root / "cairnd.db"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def worktrees(self) -> Path:
        return self.root / "worktrees"

    @property
    def fleet(self) -> Path:
        return self.root / "fleet"

    def session_dir(self, session_id: str) -> Path:
        return self.sessions / session_id

    def log_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / LOG_NAME

    def log_tmp_path(self, session_id: str) -> Path:
        """Where a session's first log is written before it is renamed into place."""
        return self.session_dir(session_id) / f".{LOG_NAME}.tmp"

    def stderr_path(self, session_id: str) -> Path:
        return self.session_dir(session_id) / STDERR_NAME

    def worktree_parent(self, session_id: str) -> Path:
        return self.worktrees / session_id

    def inner_map(self, session_id: str) -> Path:
        """What cairnd made of the repositories inside a session's worktree (its
        submodules' git directories and stores: `cairnd.git.inner`), beside the worktree
        where its agent cannot write."""
        return self.worktree_parent(session_id) / "inner.json"

    def agent_dir(self, profile: str) -> Path:
        """An agent profile's own place in the state directory (the reference agent's
        transcripts); writable by its agents when confined."""
        return self.root / "agents" / profile

    def home(self, session_id: str) -> Path:
        """A session's agent's private HOME (SPEC 16): seeded from its profile, or copied
        from its parent's; writable by its own agent alone; removed with the session."""
        return self.root / "homes" / session_id

    def agent_tmp(self, session_id: str) -> Path:
        """The TMPDIR of a session's confined agent: made at its start, removed with it."""
        return self.root / "tmp" / session_id

    def create(self) -> None:
        """Make the folders a daemon needs (the spool's among them)."""
        create_spool(self.spool)
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.worktrees.mkdir(parents=True, exist_ok=True)
