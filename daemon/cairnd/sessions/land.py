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

import os
from pathlib import Path
from typing import Any

from cairnd.git import places
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
    places.use_state(layout.root)  # its vaults: where checkpoints are
    repo = row.repo
    ref = check_branch_name(repo, branch)
    found = read_checkpoints(layout, row)
    checkpoint = pick_checkpoint(found, row.id, turn)
    head = checkpoint.get("headSha")
    state = state_commit(checkpoint)
    if not git.is_object_id(head) or state is None:
        raise CairnError("commit_missing", f"session {row.id}: its checkpoint has no headSha to land")
    # Checked out anywhere: moving it would change that worktree's state under its feet.
    holder = checked_out_branches(repo).get(ref)
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
    if again != "earlier" and git.tree_of(repo, state) == git.tree_of(repo, head):
        commit = head
    else:
        if message is None:
            conversation = session_state(iter_lines(layout.log_path(row.id)), agent_text=False).conversation
            kept = checkpoint.get("turns") if isinstance(checkpoint.get("turns"), int) else len(conversation)
            message = default_message(row.title, [t.user_text for t in conversation[:kept]])
        if again == "earlier":
            # On top of the tip, like new commits pushed to a pull request: a fast-forward.
            assert previous is not None
            contained = head == previous or is_ancestor(repo, head, previous)
            commit = commit_tree_of(repo, state, previous, message, second_parent=None if contained else head)
        else:
            commit = commit_tree_of(repo, state, head, message)
    how = decide(previous, commit, previous is not None and is_ancestor(repo, previous, commit), force, branch)
    if how != "same":  # what the branch will name must be in the user's repository, not only in the vault
        gitobjects.bring_in(repo, [commit])
    if how != "same" and not set_ref(repo, ref, commit, previous, f"cairnd land {row.id}"):
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
    how = landed_from(git.tree_of(repo, tip), trees, at)
    if how == "earlier":
        tip_tree = git.tree_of(repo, tip)
        heads = {c.get("headSha") for c, tree in zip(checkpoints[:at], trees) if tree == tip_tree}
        if not any(git.is_object_id(h) and (h == tip or is_ancestor(repo, h, tip)) for h in heads):
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
        moved = publish_commit(store, ref, entry["headSha"])
        done.append({"path": entry["path"], "commit": entry["headSha"], "moved": moved})
    return done


# -- git, as only land uses it ------------------------------------------------------------


def check_branch_name(repo: Path, name: str) -> str:
    """`refs/heads/<name>`, or bad_ref for a name git refuses as a branch."""
    if (not isinstance(name, str) or not name or name.startswith("-") or name == "HEAD"
            or any(ord(ch) < 32 for ch in name)):
        raise CairnError("bad_ref", f"branch {name!r} is not a valid branch name")
    ref = f"refs/heads/{name}"
    if git.run(repo, ["check-ref-format", ref]).returncode != 0:
        raise CairnError("bad_ref", f"branch {name!r} is not a valid branch name (git check-ref-format refuses it)")
    return ref


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    proc = git.run(repo, ["merge-base", "--is-ancestor", ancestor, descendant])
    if proc.returncode not in (0, 1):
        raise git.failure(repo, ["merge-base"], proc)
    return proc.returncode == 0


def checked_out_branches(repo: Path) -> dict[str, Path]:
    """refs/heads/... -> the worktree that has it checked out, for every worktree."""
    with git.worktree_records_lock(repo):
        out = git.output(repo, "worktree", "list", "--porcelain", "-z")
    found: dict[str, Path] = {}
    for block in out.split(b"\0\0"):
        fields = [f for f in block.split(b"\0") if f]
        where = next((f[len(b"worktree "):] for f in fields if f.startswith(b"worktree ")), None)
        for f in fields:
            if f.startswith(b"branch ") and where is not None:
                found[os.fsdecode(f[len(b"branch "):])] = Path(os.fsdecode(where))
    return found


def _user_identity(repo: Path) -> dict[str, str]:
    """The repository's configured user.name/user.email for a commit meant for people
    (land), else cairnd's fixed identity (git_env's)."""
    # The user's global files as git would read them (the XDG one, then ~/.gitconfig),
    # then the repository's: each read as settings by `git config`, which runs nothing.
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "git" / "config"
    values: dict[str, str] = {}
    for source in (["--file", str(xdg)], ["--file", str(Path.home() / ".gitconfig")], []):
        if source and not Path(source[1]).is_file():
            continue
        proc = git.run(repo, ["config", *source, "--get-regexp", r"^user\.(name|email)$"])
        if proc.returncode == 0:
            values.update(line.split(" ", 1) for line in git.first_line(proc.stdout).splitlines() if " " in line)
    if not values.get("user.name") or not values.get("user.email"):
        return {}
    name, email = values["user.name"], values["user.email"]
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def commit_tree_of(repo: Path, source: str, parent: str, message: str, *, second_parent: str | None = None) -> str:
    """A commit with the tree of commit `source`, parent `parent` (and `second_parent`)
    and `message`, dated as `source` is: the same checkpoint and message give the same
    commit, so landing twice (a retry after a crash) is a no-op rather than a diverging
    branch."""
    date = git.first_line(git.output(repo, "show", "-s", "--format=%ct", source))
    env = {**_user_identity(repo), "GIT_AUTHOR_DATE": f"@{date} +0000", "GIT_COMMITTER_DATE": f"@{date} +0000"}
    parents = ["-p", parent] + (["-p", second_parent] if second_parent else [])
    return git.first_line(git.output(repo, "commit-tree", "--no-gpg-sign", f"{source}^{{tree}}", *parents, "-F", "-",
                                     env=env, input=message.encode("utf-8")))


def set_ref(repo: Path, ref: str, new: str, old: str | None, reason: str) -> bool:
    """Move `ref` to `new` only if it still points at `old` (None: only if it does not
    exist); False when someone moved it in between."""
    proc = git.run(repo, ["update-ref", "-m", reason, ref, new, old or "0" * len(new)])
    if proc.returncode != 0:
        if b"but expected" in proc.stderr or b"already exists" in proc.stderr or b"unable to resolve" in proc.stderr:
            return False
        raise git.failure(repo, ["update-ref"], proc)
    return True


def publish_commit(store: Path, branch_ref: str, commit: str) -> str:
    """Make a commit that exists only in cairnd's pins reachable from a branch of the
    user's own submodule repository (land): `refs/heads/<branch>` there is created, or
    moved as a fast-forward. Returns what happened: "reachable" (a branch or remote-
    tracking ref already holds it), "created", "fast-forward", "same", or "left" (the
    branch is elsewhere and does not lead to it: not moved)."""
    proc = git.run(store, ["--git-dir", str(store), "for-each-ref", "--count=1", "--contains", commit,
                           "--format=%(refname)", "refs/heads", "refs/remotes", "refs/tags"])
    if proc.returncode == 0 and proc.stdout.strip():
        return "reachable"
    proc = git.run(store, ["--git-dir", str(store), "rev-parse", "--verify", "--quiet", f"{branch_ref}^{{commit}}"])
    previous = proc.stdout.decode().strip() if proc.returncode == 0 else None
    if previous == commit:
        return "same"
    if previous is not None and git.run(store, ["--git-dir", str(store), "merge-base", "--is-ancestor",
                                                previous, commit]).returncode != 0:
        return "left"
    git.output(store, "--git-dir", str(store), "update-ref", "-m", "cairnd land", branch_ref, commit,
               previous or "0" * len(commit))
    return "fast-forward" if previous else "created"
