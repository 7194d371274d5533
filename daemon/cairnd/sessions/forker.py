"""The fork pipeline (SPEC section 5), atomic as a whole.

    source log --find_cut--> cut + checkpoint (state_at_cut, kept_turns, fork_title)
               --git--> new worktree with the files and index of that checkpoint
               --copy--> new log: kept bytes, fork_session_meta, baseline checkpoint
               --registry--> lineage row; the session turns `ready`: the commit point

The steps after the cut run inside `creation.creating`: any failure, and on restart any
crash, rolls every step back, so a fork is either whole or leaves nothing behind.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairnd.git import run as git
from cairnd.git import inner
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import worktree as gitworktree
from cairnd.git import places
from cairnd.checkpoints.checkpoint import checkpoint_params, pin_checkpoint, take_checkpoint
from cairnd.sessions.results import ForkResult
from cairnd.sessions.creation import creating, write_initial_log
from cairnd.sessionlog.cutindex import find_cut
from cairnd.state.layout import StateLayout
from cairnd.sessionlog.forkpoint import ForkPoint
from cairnd.ids import new_session_id
from cairnd.sessionlog.entries import checkpoint_entry, fork_meta_entry
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import ForkRow, Registry, SessionRow
from cairnd.sessionlog.transcript import session_state

_FORK_SUFFIX = re.compile(r"\s*\(fork (\d+)\)\s*$")


def fork_title(parent_title: str, titles_in_root: Iterable[str]) -> str:
    """`<base> (fork N)`, where the base is the parent's title without its own
    `(fork N)` suffix and N is one more than the highest `(fork N)` among the titles
    of the same root that share that base (docker-agent's `NextForkTitle`): forks of
    forks read `Plan (fork 3)`, not `Plan (fork 1) (fork 1)`, and an unrelated title
    such as `Other (fork 7)` or `Plan (fork 2) notes` does not bump the count."""
    base = _FORK_SUFFIX.sub("", parent_title)
    sibling = re.compile(re.escape(base) + r"[ \t]*\(fork (\d+)\)\s*$")
    highest = 0
    for title in titles_in_root:
        match = sibling.fullmatch(title)
        if match:
            highest = max(highest, int(match.group(1)))
    return f"{base} (fork {highest + 1})"


@dataclass(frozen=True)
class ForkState:
    """The git state a fork starts from."""

    head_sha: str
    worktree_sha: str | None
    index_tree: str | None
    state: str  # "checkpoint" or "current_head"


def state_at_cut(point: ForkPoint, repo: Path, source_worktree: Path) -> ForkState:
    checkpoint = point.checkpoint or {}
    head = checkpoint.get("headSha")
    if isinstance(head, str) and head:
        worktree_sha = checkpoint.get("worktreeSha")
        index_tree = checkpoint.get("indexTree")
        tree = checkpoint.get("worktreeTree")
        if not isinstance(worktree_sha, str) and isinstance(tree, str):
            # PostHog Code's git_checkpoint records the working tree as a tree only.
            worktree_sha = gitworktree.commit_of_tree(repo, tree, head)
        # Whether these objects still exist is checked by gitworktree.add_worktree, in
        # one git call before it creates anything (commit_missing): not twice.
        return ForkState(
            head_sha=head,
            worktree_sha=worktree_sha if isinstance(worktree_sha, str) else None,
            index_tree=index_tree if isinstance(index_tree, str) else None,
            state="checkpoint",
        )
    # A log from an older tool: nothing recorded the files, so the best we have is
    # the source's HEAD now, and the result says so.
    head, _branch = git.head_state(source_worktree if source_worktree.exists() else repo)
    return ForkState(head_sha=head, worktree_sha=None, index_tree=None, state="current_head")


def baseline_at_cut(point: ForkPoint, start: ForkState, fork_id: str, turns: int) -> dict[str, Any] | None:
    """The fork's baseline checkpoint without looking at its new worktree: the worktree
    was made exactly the cut's checkpoint (files, index, HEAD detached), so that
    checkpoint, renamed for the fork, is its state. None where the fork must be
    snapshotted: the cut has no full cairnd checkpoint, or one that left files out
    (the fork does not have them, so whether it is dirty is not the parent's answer)."""
    checkpoint = point.checkpoint or {}
    if (start.state != "checkpoint" or start.worktree_sha is None or start.index_tree is None
            or checkpoint.get("worktreeSha") != start.worktree_sha or checkpoint.get("skipped") != []
            or not isinstance(checkpoint.get("dirty"), bool)):
        return None
    snap = gitsnapshot.Snapshot(head_sha=start.head_sha, branch=None, index_tree=start.index_tree,
                        worktree_sha=start.worktree_sha, dirty=checkpoint["dirty"], skipped=())
    params = checkpoint_params(fork_id, turns, snap)
    for key in ("submodules", "nested"):  # restored exactly too (`gitworktree.make_inner`)
        if checkpoint.get(key):
            params[key] = checkpoint[key]
    return params


def kept_turns(point: ForkPoint, log_path: Path) -> int:
    turns = (point.checkpoint or {}).get("turns")
    if isinstance(turns, int) and not isinstance(turns, bool):
        return turns
    # No cairnd checkpoint to read it from: count the kept turn_complete entries.
    kept = itertools.takewhile(lambda line: line[0] < point.offset, iter_lines(log_path))
    return session_state(kept, agent_text=False).turns


@dataclass(frozen=True)
class Cut:
    """What every fork of one session at one message shares, found once (attempts make
    several from it: SPEC 19): the cut, the state there, its trees (checked to exist)."""

    parent: SessionRow
    k: int
    log: Path
    point: ForkPoint
    start: ForkState
    turns: int
    trees: gitworktree.Trees
    history: str | None  # how the forks' agents will get the kept conversation (SPEC 12)


def find_fork_cut(layout: StateLayout, parent: SessionRow, k: int,
                  history: Callable[[Path, int], str] | None = None, tip: bool = False) -> Cut:
    """The cut of `parent` at user message k and the state there; fork_out_of_range,
    fork_in_sub_session or commit_missing before anything is made. `tip`: k may be the
    number of user messages, a cut after the whole log (cutindex.find_cut)."""
    places.use_state(layout.root)  # its vaults: where checkpoints are
    parent_log = layout.log_path(parent.id)
    point = find_cut(parent_log, k, parent.id, tip)  # from the offsets index beside the log
    start = state_at_cut(point, parent.repo, parent.worktree)
    turns = kept_turns(point, parent_log)
    # commit_missing before anything is made; and a read, so not part of `building`.
    trees = gitworktree.trees_of(parent.repo, start.head_sha, start.worktree_sha or start.head_sha,
                                 start.index_tree)
    return Cut(parent, k, parent_log, point, start, turns, trees,
               history(parent_log, point.offset) if history is not None else None)


def build_fork(layout: StateLayout, cut: Cut, row: SessionRow, *, max_file_bytes: int,
               building: AbstractContextManager[Any] = nullcontext()) -> tuple[ForkResult, ForkRow]:
    """Make the fork `row` (its `creating` row begun) at `cut`: its worktree, its baseline
    and its log. Returns its result and lineage row, for the caller to commit."""
    parent, start = cut.parent, cut.start
    with building:  # the part that makes files (max_parallel_forks at once)
        gitworktree.add_worktree(parent.repo, row.worktree, start.head_sha, start.worktree_sha, start.index_tree,
                                 trees=cut.trees, inner_map=layout.inner_map(row.id),
                                 checkpoint=cut.point.checkpoint if start.state == "checkpoint" else None,
                                 views=places.root_of(layout.root))
        baseline = baseline_at_cut(cut.point, start, row.id, cut.turns)
        if baseline is None:
            baseline = take_checkpoint(row.id, row.worktree, cut.turns, max_file_bytes,
                                       inner_map=layout.inner_map(row.id))
        else:
            pin_checkpoint(parent.repo, baseline, (cut.trees.worktree, cut.trees.head))
            if baseline.get("submodules") or baseline.get("nested"):
                inner.pin_checkpoints(inner.stores(layout.inner_map(row.id), git.common_dir(parent.repo)),
                                      row.id, [baseline])
    log_path = write_initial_log(layout, row.id, cut.log, cut.point.offset, [
        fork_meta_entry(row.id, parent.id, cut.k, start.head_sha, start.worktree_sha),
        checkpoint_entry(baseline),
    ])
    result = ForkResult(session=row.id, parent=parent.id, user_message_index=cut.k, title=row.title,
                        worktree=str(row.worktree), headSha=start.head_sha, worktreeSha=start.worktree_sha,
                        state=start.state, prefill=cut.point.prefill, log=str(log_path))
    if cut.history is not None:
        result["history"] = cut.history
    return result, ForkRow(
        id=row.id, parent_id=parent.id, parent_title=parent.title, root_id=parent.root_id,
        user_message_index=cut.k, head_sha=start.head_sha, worktree_sha=start.worktree_sha,
        created_at=time.time(),
    )


def fork_session(layout: StateLayout, registry: Registry, parent: SessionRow, k: int, *,
                 title: str | None, request_id: str | None, max_file_bytes: int,
                 history: Callable[[Path, int], str] | None = None,
                 building: AbstractContextManager[Any] = nullcontext(), tip: bool = False) -> ForkResult:
    """Fork `parent` at user message k. Synchronous: run it in a worker thread.

    `building`: held while the fork's worktree is made (its files written), the part
    whose cost is the machine's; the caller bounds how many forks do that at once
    (`max_parallel_forks`), while the rest (the cut, the log, the registry: waits on
    the disk more than work) overlaps with other forks' building."""
    cut = find_fork_cut(layout, parent, k, history, tip)
    fork_id = new_session_id()
    named = title or fork_title(parent.title, registry.titles_in_root(parent.root_id))
    worktree = layout.worktree_parent(fork_id) / parent.repo.name
    with creating(layout, registry, id=fork_id, title=named, repo=parent.repo, worktree=worktree, in_place=False,
                  agent=parent.agent, parent_id=parent.id, root_id=parent.root_id, turns=cut.turns,
                  request_id=request_id) as made:
        result, lineage = build_fork(layout, cut, made.row, max_file_bytes=max_file_bytes, building=building)
        made.commit(result, lineage)
    return result
