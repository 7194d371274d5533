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
from cairnd.git import inner
from cairnd.git import places
from cairnd.git import snapshot as gitsnapshot
from cairnd.checkpoints import innercheckpoint
from cairnd.state.layout import StateLayout


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


def checkpoint_params(session_id: str, turns: int, snap: gitsnapshot.Snapshot,
                      inner_state: innercheckpoint.InnerState | None = None) -> dict[str, Any]:
    """The params of an agent_checkpoint entry, in the order SPEC section 3 lists them
    (`submodules` and `nested` only where the worktree has repositories inside it)."""
    params = {
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
    if inner_state is not None:
        params["dirty"] = snap.dirty or inner_state.dirty
        params["skipped"] = inner_state.skipped
        if inner_state.submodules:
            params["submodules"] = inner_state.submodules
        if inner_state.nested:
            params["nested"] = inner_state.nested
    return params


# (worktree, max_file_bytes, commit message, gitlinks) -> the snapshot: gitsnapshot.snapshot
# scans the whole tree; cairnd.checkpointer's looks at the paths that changed.
Snapshotter = Callable[..., gitsnapshot.Snapshot]


def checkpoint_message(session_id: str, turns: int) -> str:
    """A checkpoint commit's message: turn N is the one `SESSION@N` names (SPEC 13)."""
    return f"cairnd checkpoint {session_id} " + (f"after turn {turns}" if turns else "at the start")


def capture(session_id: str, worktree: Path, turns: int, max_file_bytes: int,
            snapshot: Snapshotter | None = None, *, inner_map: Path | None = None,
            changed: set[bytes] | None = None, inner_cache: innercheckpoint.InnerCache | None = None,
            repos: list[inner.InnerRepo] | None = None
            ) -> tuple[gitsnapshot.Snapshot, innercheckpoint.InnerState | None]:
    """The first half of a checkpoint: snapshot `worktree` and the repositories inside it
    (the submodules `inner_map` lists, the nested repositories found), with `snapshot`
    for the worktree itself (gitsnapshot.snapshot's full scan when None). `changed`/
    `inner_cache`: what the watch saw change since the last checkpoint, and what that one
    saw of the inner repositories (None: look at them all); `repos`: the submodules when
    known already (an in-place session's: `in_place_repos`). Returns the snapshot, and the
    inner repositories' state (None when there are none). Synchronous."""
    if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
        raise ValueError(f"turns must be a non-negative integer, not {turns!r}")
    message = checkpoint_message(session_id, turns)
    place = places.lookup(Path(worktree))
    if place is not None:  # the agent's new commits and staged files into the vault first
        places.sync(place)
    take = snapshot or gitsnapshot.snapshot
    repos = inner.read_map(inner_map) if repos is None else repos

    def common_dir() -> Path:
        return git.common_dir(Path(worktree))  # from cairnd's records (places), else asked of git

    snap, state = innercheckpoint.take_inner(
        Path(worktree), repos, session_id, turns, max_file_bytes, message, changed, inner_cache,
        lambda gitlinks: (take(worktree, max_file_bytes, message) if gitlinks is None
                          else take(worktree, max_file_bytes, message, gitlinks=gitlinks)), common_dir)
    if inner_cache is not None:
        inner_cache.nested = tuple(n["path"] for n in state.nested)
    return snap, (state if (repos or snap.nested or state.pins) else None)


def record(session_id: str, worktree: Path, turns: int, snap: gitsnapshot.Snapshot,
           inner_state: innercheckpoint.InnerState | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The second half: pin what `capture` took at refs/cairnd/<session>/<turns> (and its
    index tree beside it when needed; each inner one in its store). Returns the
    agent_checkpoint params and the worktree repository's refs written. Synchronous."""
    params = checkpoint_params(session_id, turns, snap, inner_state)
    if inner_state is not None:
        innercheckpoint.pin_all(inner_state.pins)
    pins = checkpoint_pins(params, snap)
    _pin(worktree, pins)
    return params, pins


def in_place_repos(worktree: Path) -> list[inner.InnerRepo]:
    """The submodules of an in-place session's checkout (the user's own), from its
    directories as cairnd's records (places) or git give them."""
    if not (Path(worktree) / ".gitmodules").is_file():
        return []  # the common case costs one stat, no git
    return inner.in_place(Path(worktree), places.discover(Path(worktree)))


def take_checkpoint(session_id: str, worktree: Path, turns: int, max_file_bytes: int, *,
                    inner_map: Path | None = None, changed: set[bytes] | None = None,
                    inner_cache: innercheckpoint.InnerCache | None = None, in_place: bool = False) -> dict[str, Any]:
    """A checkpoint by a full scan of the worktree: `capture`, then `record`; the
    agent_checkpoint params. (The daemon's Checkpointer.take does the same with a
    snapshot of what its watch saw change.) `in_place`: the worktree is the user's own
    checkout (no map: its submodules are found). Synchronous: run it in a worker thread."""
    snap, inner_state = capture(session_id, worktree, turns, max_file_bytes, inner_map=inner_map,
                                changed=changed, inner_cache=inner_cache,
                                repos=in_place_repos(worktree) if in_place else None)
    return record(session_id, worktree, turns, snap, inner_state)[0]


def taker_for(layout: StateLayout) -> Callable[[str, Path, int, int], dict[str, Any]]:
    """`take_checkpoint` for the sessions of a state directory: a worktree cairnd made
    gets its submodules from the map beside it (`StateLayout.inner_map`)."""
    def take(session_id: str, worktree: Path, turns: int, max_file_bytes: int) -> dict[str, Any]:
        made = Path(worktree).parent == layout.worktree_parent(session_id)
        return take_checkpoint(session_id, worktree, turns, max_file_bytes,
                               inner_map=layout.inner_map(session_id) if made else None, in_place=not made)
    return take

