"""Land (SPEC section 13): a session's state as a commit on a branch of its repository.

The commit's tree is the checkpoint's `worktreeSha` tree and its parent the checkpoint's
`headSha` (when the two trees are equal, the branch is set to `headSha` itself). A new
branch is created; an existing one moves only as a fast-forward (`branch_exists`
otherwise, unless `force`); a branch some worktree has checked out is refused
(`branch_checked_out`). Only objects and the one branch ref are written: no worktree,
index or HEAD of anyone is touched, and the ref moves only from the value it was seen
at (a branch moved by someone else meanwhile is not overwritten).

Land again (SPEC 13): when the branch's tip holds the state of an earlier checkpoint of
the session's present log (its tree, with that checkpoint's `headSha` in its history:
what an earlier land of it made), a later checkpoint is committed on top of the tip, a
fast-forward; the tip already holding this checkpoint's state is `unchanged`; the tip
holding a later checkpoint's is going back (`branch_exists` unless `force`).
"""

from __future__ import annotations

from typing import Any

from cairnd.git import run as git
from cairnd.git import diff as gitdiff
from cairnd.git import objects as gitobjects
from cairnd.git import inner
from cairnd.state.layout import StateLayout
from cairnd.sessions.diffs import pick_checkpoint, read_checkpoints, state_commit
from cairnd.errors import CairnError
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import SessionRow
from cairnd.sessionlog.transcript import session_state

MAX_SUBJECT_CHARS = 72


def default_message(title: str, user_messages: list[str]) -> str:
    """The session title, then one line per user message (its first line, shortened)."""
    lines = []
    for text in user_messages:
        first = text.strip().splitlines()[0] if text.strip() else "(empty message)"
        lines.append(first if len(first) <= MAX_SUBJECT_CHARS else first[: MAX_SUBJECT_CHARS - 3] + "...")
    body = "\n".join(f"- {line}" for line in lines)
    return f"{title}\n\n{body}\n" if body else f"{title}\n"


def decide(previous: str | None, commit: str, fast_forward: bool, force: bool, branch: str) -> str:
    """Pure: how the branch moves. 'create', 'same', 'fast-forward' or 'force'; or branch_exists."""
    if previous is None:
        return "create"
    if previous == commit:
        return "same"
    if fast_forward:
        return "fast-forward"
    if force:
        return "force"
    raise CairnError("branch_exists", f"branch {branch!r} is at {previous[:12]}, which {commit[:12]} does not "
                                      "descend from: landing would not be a fast-forward (use force to move it "
                                      "anyway, or land onto a new branch)")


def landed_from(tip_tree: str, trees: list[str | None], at: int) -> str:
    """Pure: what the branch's tip is to the checkpoint at index `at` of the session's
    checkpoints (`trees`: each one's tree), by the tree it holds: 'same' (this state),
    'earlier' (an earlier checkpoint's: land again on top), 'later' (going back) or
    'other'. The nearest match wins (a state the session came back to is both)."""
    if trees[at] == tip_tree:
        return "same"
    for i in range(at - 1, -1, -1):
        if trees[i] == tip_tree:
            return "earlier"
    if tip_tree in trees[at + 1:]:
        return "later"
    return "other"


def _trees(repo: Any, checkpoints: list[dict[str, Any]]) -> list[str | None]:
    answers = gitobjects.object_types(repo, [f"{state_commit(c)}^{{tree}}" for c in checkpoints])
    return [answer[0] if answer is not None else None for answer in answers]


def land(layout: StateLayout, row: SessionRow, branch: str, *, turn: int | None = None,
         message: str | None = None, force: bool = False) -> dict[str, Any]:
    """Land session `row`'s checkpoint (latest, or the one after `turn` turns) on `branch`.
    Synchronous: run it in a worker thread."""
    repo = row.repo
    ref = git.check_branch_name(repo, branch)
    found = read_checkpoints(layout, row)
    checkpoint = pick_checkpoint(found, row.id, turn)
    head = checkpoint.get("headSha")
    state = state_commit(checkpoint)
    if not git.is_object_id(head) or state is None:
        raise CairnError("commit_missing", f"session {row.id}: its checkpoint has no headSha to land")
    # Checked out anywhere: moving it would change that worktree's state under its feet.
    holder = git.checked_out_branches(repo).get(ref)
    if holder is not None:
        raise CairnError("branch_checked_out", f"branch {branch!r} is checked out in {holder}: land onto "
                                               "another branch, or switch that worktree to a different one")
    previous = git.ref_commit(repo, ref)
    again = previous is not None and _lands_again(repo, found.checkpoints, checkpoint, previous)
    if again == "same":
        return _result(row, branch, previous, head, previous, checkpoint, "same", [], unchanged=True)
    if again == "later" and not force:
        raise CairnError("branch_exists", f"branch {branch!r} holds a later checkpoint of session {row.id} than "
                                          f"turn {checkpoint.get('turns')}: landing it would go back (use force "
                                          "to move the branch back anyway)")
    if again != "earlier" and git.tree_id(repo, state) == git.tree_id(repo, head):
        commit = head
    else:
        if message is None:
            conversation = session_state(iter_lines(layout.log_path(row.id)), agent_text=False).conversation
            kept = checkpoint.get("turns") if isinstance(checkpoint.get("turns"), int) else len(conversation)
            message = default_message(row.title, [t.user_text for t in conversation[:kept]])
        if again == "earlier":
            # On top of the tip, like new commits pushed to a pull request: a fast-forward.
            assert previous is not None
            contained = head == previous or git.is_ancestor(repo, head, previous)
            commit = git.commit_tree_of(repo, state, previous, message, second_parent=None if contained else head)
        else:
            commit = git.commit_tree_of(repo, state, head, message)
    how = decide(previous, commit, previous is not None and git.is_ancestor(repo, previous, commit), force, branch)
    if how != "same" and not git.set_ref(repo, ref, commit, previous, f"cairnd land {row.id}"):
        raise CairnError("branch_exists", f"branch {branch!r} moved while landing onto it: try again")
    files = gitdiff.diff_files(repo, previous or head, commit)
    result = _result(row, branch, commit, head, previous, checkpoint, how, [change.path for change in files],
                     unchanged=how == "same")
    submodules = _publish_submodules(layout, row, checkpoint, ref)
    return {**result, "submodules": submodules} if submodules else result


def _lands_again(repo: Any, checkpoints: list[dict[str, Any]], checkpoint: dict[str, Any], tip: str) -> str:
    """What the branch's tip is to `checkpoint` (see `landed_from`), counting only a tip
    whose history holds the matching checkpoint's headSha (one a land of it made)."""
    at = max(i for i, c in enumerate(checkpoints) if c is checkpoint)
    trees = _trees(repo, checkpoints)
    how = landed_from(git.tree_id(repo, tip), trees, at)
    if how == "earlier":
        tip_tree = git.tree_id(repo, tip)
        heads = {c.get("headSha") for c, tree in zip(checkpoints[:at], trees) if tree == tip_tree}
        if not any(git.is_object_id(h) and (h == tip or git.is_ancestor(repo, h, tip)) for h in heads):
            return "other"
    return how


def _result(row: SessionRow, branch: str, commit: str, head: str, previous: str | None,
            checkpoint: dict[str, Any], how: str, files: list[str], *, unchanged: bool) -> dict[str, Any]:
    return {
        "session": row.id,
        "branch": branch,
        "commit": commit,
        "parent": head,
        "previous": previous,
        "turn": checkpoint.get("turns"),
        "moved": how,
        "unchanged": unchanged,
        "files": files,
    }


def _publish_submodules(layout: StateLayout, row: SessionRow, checkpoint: dict[str, Any], ref: str) -> list[dict[str, Any]]:
    """Each submodule commit the landed checkpoint records that only the session has,
    made reachable from the same branch name in the user's submodule repository (docs/
    submodules.md: how to push it)."""
    entries = [e for e in checkpoint.get("submodules") or () if isinstance(e, dict) and git.is_object_id(e.get("headSha"))]
    if not entries:
        return []
    stores = inner.stores(layout.inner_map(row.id), git.common_dir(row.repo))
    done = []
    for entry in entries:
        store = stores.get(entry.get("path", ""))
        if store is None or not entry.get("path"):
            continue
        moved = inner.publish_commit(store, ref, entry["headSha"])
        done.append({"path": entry["path"], "commit": entry["headSha"], "moved": moved})
    return done
