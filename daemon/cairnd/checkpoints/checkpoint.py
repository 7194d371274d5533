"""The `_posthog/agent_checkpoint` entry (SPEC section 3): the git state at a turn boundary.

A checkpoint is a snapshot of the session worktree (see `cairnd.gitsnapshot.snapshot`)
plus a ref, `refs/cairnd/<session>/<turns>`, that keeps its commit alive against
`git gc`. Its index tree is reachable from that commit when it is the commit's tree
or its parent's (HEAD's); otherwise (something staged, and the working tree differs
from the index) it gets a ref of its own, `<turns>-index`, in the same ref
transaction. Refs are shared by all worktrees of a repository, so the ref lands in
the repository the session worktree belongs to, whichever worktree it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cairnd.git import run as git
from cairnd.git import refs as gitrefs
from cairnd.git import snapshot as gitsnapshot


def session_ref_prefix(session_id: str) -> str:
    """Where a session's checkpoint refs live: delete them all with `gitrefs.delete_refs`."""
    return f"{git.REF_NAMESPACE}{session_id}/"


def checkpoint_ref(session_id: str, turns: int) -> str:
    return f"{session_ref_prefix(session_id)}{turns}"


def index_ref(ref: str) -> str:
    """The ref that keeps a checkpoint's index tree, when nothing else does."""
    return f"{ref}-index"


def checkpoint_pins(params: dict[str, Any], snap: gitsnapshot.Snapshot) -> dict[str, str]:
    """The refs that keep a checkpoint alive: its commit, and its index tree when that is
    neither the commit's tree nor HEAD's (`snap.staged` says whether it is HEAD's)."""
    pins = {params["ref"]: params["worktreeSha"]}
    if snap.staged and snap.index_tree != snap.worktree_tree:
        pins[index_ref(params["ref"])] = snap.index_tree
    return pins


def pin_checkpoint(repo: Path, params: dict[str, Any], trees: tuple[str, str] | None = None) -> dict[str, str]:
    """Pin a checkpoint known by its params only (a fork's baseline, taken from its
    parent's checkpoint): as `checkpoint_pins`, with the commit's and HEAD's trees
    (`trees`, in that order) looked up when not given. Returns what was pinned."""
    pins = {params["ref"]: params["worktreeSha"]}
    index_tree = params.get("indexTree")
    if trees is None and git.is_object_id(index_tree):
        trees = git.tree_of(repo, params["worktreeSha"]), git.tree_of(repo, params["headSha"])
    if git.is_object_id(index_tree) and trees is not None and index_tree not in trees:
        pins[index_ref(params["ref"])] = index_tree
    _pin(repo, pins)
    return pins


def _pin(repo: Path, pins: dict[str, str]) -> None:
    if len(pins) == 1:
        [(ref, sha)] = pins.items()
        gitrefs.pin(repo, ref, sha, written=True)  # the caller has just written it: no git process
    else:
        gitrefs.pin_together(repo, pins)


def checkpoint_params(session_id: str, turns: int, snap: gitsnapshot.Snapshot) -> dict[str, Any]:
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


# (worktree, max_file_bytes, commit message) -> the snapshot: gitsnapshot.snapshot scans the
# whole tree; cairnd.checkpointer's looks at the paths that changed.
Snapshotter = Callable[[Path, int, str], gitsnapshot.Snapshot]


def take_checkpoint(session_id: str, worktree: Path, turns: int, max_file_bytes: int,
                    snapshot: Snapshotter | None = None) -> dict[str, Any]:
    """Snapshot `worktree`, pin the snapshot at refs/cairnd/<session>/<turns> (and its index
    tree beside it when needed), and return the agent_checkpoint params. Synchronous: run it in a worker thread."""
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
        raise ValueError(f"turns must be a non-negative integer, not {turns!r}")
    snap = (snapshot or gitsnapshot.snapshot)(worktree, max_file_bytes, f"cairnd checkpoint {session_id} turn {turns}")
    params = checkpoint_params(session_id, turns, snap)
    _pin(worktree, checkpoint_pins(params, snap))
    return params


def checkpoint_is_full(params: dict[str, Any]) -> bool:
    """Whether a checkpoint records the whole state (cairnd's) or only HEAD (PostHog Code's,
    which has headSha alone: restoring it gives HEAD's files and index)."""
    return git.is_object_id(params.get("worktreeSha")) and git.is_object_id(params.get("indexTree"))
