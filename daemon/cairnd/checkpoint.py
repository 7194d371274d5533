"""The `_posthog/agent_checkpoint` entry (SPEC section 3): the git state at a turn boundary.

A checkpoint is a snapshot of the session worktree (see `cairnd.git.snapshot`)
plus a ref, `refs/cairnd/<session>/<turns>`, that keeps its commit alive against
`git gc`. Refs are shared by all worktrees of a repository, so the ref lands in
the repository the session worktree belongs to, whichever worktree it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairnd import git


def session_ref_prefix(session_id: str) -> str:
    """Where a session's checkpoint refs live: delete them all with `git.delete_refs`."""
    return f"{git.REF_NAMESPACE}{session_id}/"


def checkpoint_ref(session_id: str, turns: int) -> str:
    return f"{session_ref_prefix(session_id)}{turns}"


def checkpoint_params(session_id: str, turns: int, snap: git.Snapshot) -> dict[str, Any]:
    """The params of an agent_checkpoint entry, in the order SPEC section 3 lists them."""
    return {
        "sessionId": session_id,
        "turns": turns,
        "headSha": snap.head_sha,
        "branch": snap.branch,
        "indexTree": snap.index_tree,
        "worktreeSha": snap.worktree_sha,
        "ref": checkpoint_ref(session_id, turns),
        "dirty": snap.dirty,
        "skipped": list(snap.skipped),
    }


# (worktree, max_file_bytes, commit message) -> the snapshot: git.snapshot scans the
# whole tree; cairnd.checkpointer's looks at the paths that changed.
Snapshotter = Callable[[Path, int, str], git.Snapshot]


def take_checkpoint(session_id: str, worktree: Path, turns: int, max_file_bytes: int,
                    snapshot: Snapshotter | None = None) -> dict[str, Any]:
    """Snapshot `worktree`, pin the snapshot at refs/cairnd/<session>/<turns>, and return
    the agent_checkpoint params. Synchronous: run it in a worker thread."""
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
        raise ValueError(f"turns must be a non-negative integer, not {turns!r}")
    snap = (snapshot or git.snapshot)(worktree, max_file_bytes, f"cairnd checkpoint {session_id} turn {turns}")
    params = checkpoint_params(session_id, turns, snap)
    git.pin(worktree, params["ref"], snap.worktree_sha, written=True)
    return params


def checkpoint_is_full(params: dict[str, Any]) -> bool:
    """Whether a checkpoint records the whole state (cairnd's) or only HEAD (PostHog Code's,
    which has headSha alone: restoring it gives HEAD's files and index)."""
    return git.is_object_id(params.get("worktreeSha")) and git.is_object_id(params.get("indexTree"))
