"""Land (SPEC section 13): a session's state as a commit on a branch of its repository.

The commit's tree is the checkpoint's `worktreeSha` tree and its parent the checkpoint's
`headSha` (when the two trees are equal, the branch is set to `headSha` itself). A new
branch is created; an existing one moves only as a fast-forward (`branch_exists`
otherwise, unless `force`); a branch some worktree has checked out is refused
(`branch_checked_out`). Only objects and the one branch ref are written: no worktree,
index or HEAD of anyone is touched, and the ref moves only from the value it was seen
at (a branch moved by someone else meanwhile is not overwritten).
"""

from __future__ import annotations

from typing import Any

from cairnd.git import run as git
from cairnd.git import diff as gitdiff
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


def land(layout: StateLayout, row: SessionRow, branch: str, *, turn: int | None = None,
         message: str | None = None, force: bool = False) -> dict[str, Any]:
    """Land session `row`'s checkpoint (latest, or the one after `turn` turns) on `branch`.
    Synchronous: run it in a worker thread."""
    repo = row.repo
    ref = git.check_branch_name(repo, branch)
    checkpoint = pick_checkpoint(read_checkpoints(layout, row), row.id, turn)
    head = checkpoint.get("headSha")
    state = state_commit(checkpoint)
    if not git.is_object_id(head) or state is None:
        raise CairnError("commit_missing", f"session {row.id}: its checkpoint has no headSha to land")
    # Checked out anywhere: moving it would change that worktree's state under its feet.
    holder = git.checked_out_branches(repo).get(ref)
    if holder is not None:
        raise CairnError("branch_checked_out", f"branch {branch!r} is checked out in {holder}: land onto "
                                               "another branch, or switch that worktree to a different one")
    if git.tree_id(repo, state) == git.tree_id(repo, head):
        commit = head
    else:
        if message is None:
            conversation = session_state(iter_lines(layout.log_path(row.id)), agent_text=False).conversation
            kept = checkpoint.get("turns") if isinstance(checkpoint.get("turns"), int) else len(conversation)
            message = default_message(row.title, [t.user_text for t in conversation[:kept]])
        commit = git.commit_tree_of(repo, state, head, message)
    previous = git.ref_commit(repo, ref)
    how = decide(previous, commit, previous is not None and git.is_ancestor(repo, previous, commit), force, branch)
    if how != "same" and not git.set_ref(repo, ref, commit, previous, f"cairnd land {row.id}"):
        raise CairnError("branch_exists", f"branch {branch!r} moved while landing onto it: try again")
    files = gitdiff.diff_files(repo, previous or head, commit)
    return {
        "session": row.id,
        "branch": branch,
        "commit": commit,
        "parent": head,
        "previous": previous,
        "turn": checkpoint.get("turns"),
        "moved": how,
        "files": [change.path for change in files],
    }
