"""Rewind (SPEC section 13): a session goes back to before its user message k, in place.

Two phases around one commit point, so a crash anywhere leaves the session as it was
or the rewind whole:

1. **abandon** (undone on failure, and by recovery's `undo_move` then
   `creation.roll_back` of the `creating` row after a crash): everything the session is
   now becomes a new session, `abandoned`. Its worktree is the session's own, moved
   (directory and record renamed: no file is copied; a marker beside the abandoned
   session's log says where it came from until the commit point); an in-place session,
   whose worktree is the repository's own, is copied instead. Its whole log then a
   `fork_session_meta` and a baseline, its checkpoints pinned under
   `refs/cairnd/<abandoned>/`, a lineage row under the session. The commit point is
   one registry transaction: the abandoned session turns `ready` and the rewind's plan
   is journalled `pending`.
2. **finish** (idempotent; rolled forward by recovery): the abandoned worktree's HEAD
   detached (the branch stays with the session); the session's worktree made anew at
   the checkpoint as a fork's is (or, in place, reset to it), HEAD on its branch when
   the branch is where the checkpoint was, else detached at `headSha` (branches never
   move); the log replaced by rename (the kept bytes, copied from the abandoned log,
   then `_cairnd/rewind`, then a baseline), the session's later refs gone, and the
   journal `done` with the result.

The session's agent must be stopped before (it is restarted by the next turn, with
the kept history: `history` in the result says how).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from cairnd.errors import CairnError
from cairnd.git import objects as gitobjects
from cairnd.git import files as gitfiles
from cairnd.git import run as git
from cairnd.git import inner
from cairnd.git import refs as gitrefs
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import worktree as gitworktree
from cairnd.git import places
from cairnd.checkpoints.checkpoint import (checkpoint_params, checkpoint_ref, pin_checkpoint, session_ref_prefix,
                                          take_checkpoint)
from cairnd.state.sessionlock import held_elsewhere
from cairnd.state.layout import StateLayout
from cairnd.sessions.diffs import checkpoints_in
from cairnd.sessionlog.entries import (
    CHECKPOINT_MARK,
    CHECKPOINT_METHOD,
    TURN_START_MARK,
    TURN_START_METHOD,
    checkpoint_entry,
    fork_meta_entry,
    method_of,
    parse_message,
    rewind_entry,
)
from cairnd.sessions.creation import record_git_dirs, roll_back, write_initial_log
from cairnd.sessionlog.cutindex import find_cut
from cairnd.sessions.forker import baseline_at_cut, kept_turns, state_at_cut
from cairnd.sessionlog.forkpoint import count_user_messages
from cairnd.ids import new_session_id
from cairnd.state.durable import write_atomic

from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import ForkRow, Registry, RewindRow, SessionRow
from cairnd.sessionlog.transcript import session_state

_REWIND_SUFFIX = re.compile(r"\s*\(before rewind (\d+)\)\s*$")

# The points between steps, in order: fault-injection tests stop a rewind at each.
STEPS = ("planned", "moving", "abandoned_worktree", "abandoned_refs", "abandoned_log", "committed",
         "head", "files", "log", "refs", "finished")


def _reached(step: str) -> None:
    """Called as each step completes. A seam for the fault-injection tests (they replace
    it to kill the process there); does nothing otherwise."""


def current_index_path(layout: StateLayout, session_id: str) -> Path:
    """Where a rewind keeps the private index of the session's state before it."""
    return layout.session_dir(session_id) / ".rewind.index"


def abandoned_title(title: str, titles_in_root: Iterable[str]) -> str:
    """`<title> (before rewind N)`: N one more than the highest used for the same title."""
    base = _REWIND_SUFFIX.sub("", title)
    highest = 0
    for other in titles_in_root:
        match = _REWIND_SUFFIX.search(other)
        if match and _REWIND_SUFFIX.sub("", other) == base:
            highest = max(highest, int(match.group(1)))
    return f"{base} (before rewind {highest + 1})"


def complete_length(path: Path) -> int:
    """Bytes of a log up to its last whole line (a torn last line is not written)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end = size
        while end > 0:
            begin = max(0, end - (1 << 20))
            f.seek(begin)
            block = f.read(end - begin)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return begin + newline + 1
            end = begin
    return 0


def kept_length(lines: Iterable[tuple[int, bytes]], cut: int) -> int:
    """Bytes a rewind keeps of a log cut at byte `cut` (a prompt line): the fork's rule,
    less the `_cairnd/turn_start` that opened the cut turn (it lies after the last
    checkpoint), so the kept lines hold no turn that never ends. Only cairnd's own
    entries count (an agent's frame that names them is its own words: SPEC 3)."""
    keep = cut
    for offset, line in lines:
        if offset >= cut:
            break
        if CHECKPOINT_MARK not in line and TURN_START_MARK not in line:
            continue
        message = parse_message(line)
        method = method_of(message) if message is not None else None
        if method == CHECKPOINT_METHOD:
            keep = cut
        elif method == TURN_START_METHOD and keep == cut:
            keep = offset
    return keep


def pin_abandoned(repo: Path, abandoned_id: str, lines: Iterable[tuple[int, bytes]],
                  baseline: dict[str, Any] | None = None) -> dict[str, str]:
    """Pin every checkpoint of the old log under refs/cairnd/<abandoned>/<turns> (a second
    checkpoint of one turn count, as a rewind or a fork leaves, gets `<turns>-<i>`; its
    index tree `<turns>-index`), so they outlive the session's own refs being reused;
    the index tree of the abandoned session's own `baseline` too. Returns name -> sha."""
    taken = gitrefs.list_refs(repo, session_ref_prefix(abandoned_id))
    pinned = set(taken.values())
    wanted: dict[str, str] = {}
    for params in [*([baseline] if baseline else []), *checkpoints_in(lines).checkpoints]:
        turns = params.get("turns")
        if not isinstance(turns, int):
            continue
        # The index tree is not reachable from worktreeSha: it gets a ref of its own.
        for sha, suffix in ((params.get("worktreeSha") or params.get("headSha"), ""),
                            (params.get("indexTree"), "-index")):
            if not git.is_object_id(sha) or sha in pinned:
                continue
            name, i = f"{checkpoint_ref(abandoned_id, turns)}{suffix}", 0
            while name in taken or name in wanted:
                i += 1
                name = f"{checkpoint_ref(abandoned_id, turns)}-{i}{suffix}"
            wanted[name] = sha
            pinned.add(sha)
    # One ref transaction; objects collected long ago (a deleted parent's) are left out.
    taken.update(gitrefs.pin_many(repo, wanted))
    return taken


def move_marker(layout: StateLayout, abandoned_id: str) -> Path:
    """Where an abandon that moves the session's worktree says what it moves, until its
    commit point: recovery reads it to move everything back."""
    return layout.session_dir(abandoned_id) / ".rewind-move.json"


def _move(layout: StateLayout, abandoned_id: str, *, back: bool) -> None:
    marker = move_marker(layout, abandoned_id)
    try:
        move = orjson.loads(marker.read_bytes())
    except FileNotFoundError:
        return
    paths = [Path(move[key]) for key in ("from", "to", "fromRecord", "toRecord")]
    if back:
        paths = [paths[1], paths[0], paths[3], paths[2]]
    gitworktree.move_worktree(*paths)
    if "fromMap" in move:  # the submodules' .git files and core.worktree follow the move
        if back:
            inner.relocate(Path(move["fromMap"]), Path(move["fromMap"]), paths[1], paths[3], paths[3])
        else:
            inner.relocate(Path(move["fromMap"]), Path(move["toMap"]), paths[1], paths[2], paths[3])


def undo_move(layout: StateLayout, abandoned_id: str) -> None:
    """Put back a session's worktree that an abandon cut before its commit point had
    moved (or begun to): run before that abandoned session is rolled back, which would
    otherwise remove the session's present with it."""
    _move(layout, abandoned_id, back=True)
    move_marker(layout, abandoned_id).unlink(missing_ok=True)


def abandon(layout: StateLayout, registry: Registry, row: SessionRow, k: int, *, request_id: str | None,
            max_file_bytes: int, history: Callable[[Path, int], str],
            snapshot: Callable[[Path, int, str], gitsnapshot.Snapshot] | None = None) -> RewindRow:
    """Phase 1: the abandoned session, and the plan, committed together. Synchronous.
    `snapshot`: how the present is seen (the checkpointer's, which knows what changed
    since the last checkpoint); default a full scan."""
    places.use_state(layout.root)  # its vaults: where checkpoints are
    log_path = layout.log_path(row.id)
    point = find_cut(log_path, k, row.id)  # from the offsets index beside the log
    start = state_at_cut(point, row.repo, row.worktree)
    turns = kept_turns(point, log_path)
    message = f"cairnd rewind {row.id}: the state before"
    moving = not row.in_place
    if moving:
        now = (snapshot or gitsnapshot.snapshot)(row.worktree, max_file_bytes, message)
    else:
        # Its private index (stat data of every file now) lets finish write only what differs.
        now = gitsnapshot.snapshot(row.worktree, max_file_bytes, message, keep_index=current_index_path(layout, row.id))
    old_length = complete_length(log_path)
    old_state = session_state(iter_lines(log_path), agent_text=False)
    old_messages = len(count_user_messages(iter_lines(log_path)))

    # HEAD: kept on its branch when the branch is where the checkpoint was, else
    # detached there; `detached` says the branch had moved on.
    branch_at = git.ref_commit(row.worktree, f"refs/heads/{now.branch}") if now.branch else None
    keep_branch = now.branch is not None and branch_at == start.head_sha
    plan = {
        "session": row.id, "k": k, "keep_bytes": kept_length(iter_lines(log_path), point.offset), "turns": turns,
        "headSha": start.head_sha, "worktreeSha": start.worktree_sha, "indexTree": start.index_tree,
        "state": start.state, "moveHead": not keep_branch, "detached": now.branch is not None and not keep_branch,
        "prefill": point.prefill, "history": history(log_path, point.offset), "now": now.worktree_sha,
        "nowHead": now.head_sha, "branch": now.branch if keep_branch else None, "moved": moving,
        "inner": {key: (point.checkpoint or {}).get(key) for key in ("submodules", "nested")
                  if (point.checkpoint or {}).get(key)},
    }
    # A worktree made anew at the cut is exactly its checkpoint: the baseline needs no scan.
    cut_baseline = baseline_at_cut(point, start, row.id, turns) if moving else None
    # (repositories inside it: the baseline is taken, which pins them for the session)
    plan["cutDirty"] = cut_baseline["dirty"] if cut_baseline is not None and not plan["inner"] else None
    abandoned_id = new_session_id()
    plan["abandoned"] = abandoned_id
    title = abandoned_title(row.title, registry.titles_in_root(row.root_id))
    worktree = layout.worktree_parent(abandoned_id) / row.repo.name
    registry.begin_session(
        id=abandoned_id, title=title, repo=row.repo, worktree=worktree, in_place=False, agent=row.agent,
        parent_id=row.id, root_id=row.root_id, turns=old_state.turns, request_id=request_id,
    )
    creating = registry.get(abandoned_id)
    assert creating is not None
    try:
        _reached("planned")
        if moving:
            record = row.git_dir if row.git_dir is not None else gitworktree.record_of(row.repo, row.worktree)
            if record is None:
                raise CairnError("git_failed", f"the worktree {row.worktree} of session {row.id} has no record "
                                               f"in {row.repo}: `git worktree list` there says what git knows")
            plan["abandonedWorktree"] = str(worktree)
            layout.session_dir(abandoned_id).mkdir(parents=True, exist_ok=True)
            write_atomic(move_marker(layout, abandoned_id), orjson.dumps({
                "from": str(row.worktree), "to": str(worktree), "fromRecord": str(record),
                "toRecord": str(record.parent / gitfiles.record_name(worktree)),
                "fromMap": str(layout.inner_map(row.id)), "toMap": str(layout.inner_map(abandoned_id))}))
            _reached("moving")
            _move(layout, abandoned_id, back=False)
            # Where the moved git state now is, as cairnd moved it (its records, not the .git file).
            common = row.common_dir if row.common_dir is not None else git.common_dir(row.repo)
            places.register(worktree, record.parent / gitfiles.record_name(worktree), common,
                            places.root_of(layout.root))
        else:
            gitworktree.add_worktree(row.repo, worktree, now.head_sha, now.worktree_sha, now.index_tree,
                                     views=places.root_of(layout.root))
        record_git_dirs(registry, creating)
        _reached("abandoned_worktree")
        # Its worktree was made from `now`'s objects: that snapshot is its baseline (HEAD
        # detached), under its own ref, with no second scan.
        if moving and (now.nested or inner.read_map(layout.inner_map(abandoned_id))):
            # Repositories inside it: their states are taken (and pinned) where they now are.
            baseline = take_checkpoint(abandoned_id, worktree, old_state.turns, max_file_bytes,
                                       inner_map=layout.inner_map(abandoned_id))
            now = dataclasses.replace(now, worktree_sha=baseline["worktreeSha"], index_tree=baseline["indexTree"])
        else:
            baseline = checkpoint_params(abandoned_id, old_state.turns, dataclasses.replace(now, branch=None))
            gitrefs.pin(row.repo, baseline["ref"], now.worktree_sha)
        pin_abandoned(row.repo, abandoned_id, iter_lines(log_path), baseline)
        inner.pin_checkpoints(inner.stores(layout.inner_map(abandoned_id), git.common_dir(row.repo)),
                              abandoned_id, checkpoints_in(iter_lines(log_path)).checkpoints)
        _reached("abandoned_refs")
        log = write_initial_log(layout, abandoned_id, log_path, old_length, [
            fork_meta_entry(abandoned_id, row.id, old_messages, now.head_sha, now.worktree_sha),
            checkpoint_entry(baseline)])
        _reached("abandoned_log")
        result = {"session": abandoned_id, "parent": row.id, "user_message_index": old_messages, "title": title,
                  "worktree": str(worktree), "headSha": now.head_sha, "worktreeSha": now.worktree_sha,
                  "state": "checkpoint", "prefill": None, "log": str(log), "abandoned_by_rewind": row.id}
        journal = RewindRow(abandoned_id=abandoned_id, session_id=row.id, request_id=request_id, plan=plan)
        registry.commit_session(abandoned_id, result, ForkRow(
            id=abandoned_id, parent_id=row.id, parent_title=row.title, root_id=row.root_id,
            user_message_index=old_messages, head_sha=now.head_sha, worktree_sha=now.worktree_sha,
            created_at=time.time()), rewind=journal)
    except BaseException:
        undo_move(layout, abandoned_id)
        roll_back(layout, registry, creating)
        current_index_path(layout, row.id).unlink(missing_ok=True)
        raise
    move_marker(layout, abandoned_id).unlink(missing_ok=True)  # past the commit point: nothing to undo
    _reached("committed")
    return journal


def finish(layout: StateLayout, registry: Registry, row: SessionRow, journal: RewindRow, *,
           max_file_bytes: int) -> dict[str, Any]:
    """Phase 2: the session becomes the checkpoint's. Idempotent: recovery runs it again
    after a crash at any point of it. Synchronous."""
    places.use_state(layout.root)  # its vaults: where checkpoints are
    plan = journal.plan
    head, target = plan["headSha"], plan["worktreeSha"] or plan["headSha"]
    baseline = None
    if plan.get("moved"):
        trees = _remake(layout, registry, row, journal)
        if isinstance(plan.get("cutDirty"), bool):
            baseline = checkpoint_params(row.id, plan["turns"], gitsnapshot.Snapshot(
                head_sha=head, branch=plan.get("branch"), index_tree=plan["indexTree"], worktree_sha=target,
                dirty=plan["cutDirty"], skipped=()))
            pin_checkpoint(row.repo, baseline, (trees.worktree, trees.head))
    else:
        # The user's own checkout: what its HEAD, index and files will name must be in the
        # user's repository, not only in cairnd's vault.
        gitobjects.bring_in(row.repo, [head, target, plan["indexTree"]])
        if plan["moveHead"]:
            gitworktree.detach_head(row.worktree, head)
        _reached("head")
        gitworktree.reset_worktree(row.worktree, plan["now"], target, plan["indexTree"],
                           current_index=current_index_path(layout, row.id))
        current_index_path(layout, row.id).unlink(missing_ok=True)
    _reached("files")
    if baseline is None:
        baseline = take_checkpoint(row.id, row.worktree, plan["turns"], max_file_bytes,
                                   inner_map=layout.inner_map(row.id) if plan.get("moved") else None)
    # The kept bytes come from the abandoned log, which holds the old log whole: the
    # session's own may already be the new one when this runs again after a crash.
    write_initial_log(layout, row.id, layout.log_path(journal.abandoned_id), plan["keep_bytes"], [
        rewind_entry(row.id, plan["k"], journal.abandoned_id, head, plan["worktreeSha"]),
        checkpoint_entry(baseline)])
    _reached("log")
    later = [name for name in gitrefs.list_refs(row.repo, session_ref_prefix(row.id))
             if not _turns_at_most(name, plan["turns"])]
    gitrefs.delete_ref_names(row.repo, later)
    _reached("refs")
    result = {
        "session": row.id, "user_message_index": plan["k"], "headSha": head,
        "worktreeSha": plan["worktreeSha"], "state": plan["state"], "prefill": plan["prefill"],
        "history": plan["history"], "abandoned": journal.abandoned_id, "detached": plan["detached"],
        "turns": plan["turns"], "log": str(layout.log_path(row.id)),
    }
    registry.finish_rewind(journal.abandoned_id, row.id, plan["turns"], result)
    _reached("finished")
    return result


def _remake(layout: StateLayout, registry: Registry, row: SessionRow, journal: RewindRow) -> gitworktree.Trees:
    """The session's worktree made anew at the checkpoint, its present having moved to the
    abandoned session's. Idempotent: a worktree a stop left part-made there is removed
    and made again (only the moved one holds anything of value, and it is elsewhere)."""
    plan = journal.plan
    move_marker(layout, journal.abandoned_id).unlink(missing_ok=True)
    abandoned = Path(plan["abandonedWorktree"])
    if abandoned.is_dir():  # the branch stays with the session: the abandoned HEAD lets go of it
        gitworktree.detach_head(abandoned, plan["nowHead"])
    _reached("head")
    if row.worktree.exists() or os.path.lexists(row.worktree):
        gitworktree.remove_worktree(row.repo, row.worktree)
        shutil.rmtree(row.worktree, ignore_errors=True)
    dirs = places.dirs_or_none(row.repo)
    if dirs is not None:
        gitfiles.remove_record_aside(dirs, row.worktree)
    trees = gitworktree.add_worktree(row.repo, row.worktree, plan["headSha"],
                                     plan["worktreeSha"] or plan["headSha"], plan["indexTree"],
                                     inner_map=layout.inner_map(row.id), checkpoint=plan.get("inner") or {},
                                     views=places.root_of(layout.root))
    record_git_dirs(registry, row)
    if plan.get("branch"):
        git.output(row.worktree, "symbolic-ref", "-m", "cairnd rewind", "HEAD", f"refs/heads/{plan['branch']}")
    return trees


def _turns_at_most(ref_name: str, turns: int) -> bool:
    last = ref_name.rsplit("/", 1)[-1].removesuffix("-index")  # a checkpoint's index tree goes with it
    return last.isdigit() and int(last) <= turns


def recover(layout: StateLayout, registry: Registry, *, max_file_bytes: int) -> list[str]:
    """Finish every rewind a stop cut after its commit point; the sessions finished."""
    places.use_state(layout.root)  # its vaults: where checkpoints are
    finished = []
    for journal in registry.rewinds(("pending",)):
        row = registry.get(journal.session_id)
        if row is None or row.state != "ready" or held_elsewhere(layout, row.id):
            continue  # (held: its writer, an editor's cairnd acp, is alive and finishes it)
        finish(layout, registry, row, journal, max_file_bytes=max_file_bytes)
        finished.append(row.id)
    return finished
