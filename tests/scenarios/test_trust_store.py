"""The trust boundary, the checkpoints' side (SPEC 16, attack 4): agents that destroy
every ref and object they can reach, through the reference agent's `run:` line,
against the real daemon, real git and real Landlock.

A session's agent commits, stages, branches and leaves files dirty over three turns;
then a sibling agent in the same repository, and finally the session's own agent,
delete every ref they can reach, prune and repack, remove every object file they can
reach and point every `alternates` file they can write at nothing. Forks at every
user message must still hold exactly the files, index and HEAD of their moment, and
the user's branches must be whole and where they were.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from daemonproc import Daemon
from gitrepos import git, git_text, index_state, make_repo, tree_state, vault_of

REFERENCE = [sys.executable, "-m", "cairnd.agents.reference"]


def destroy_everything(state: Path, repo: Path) -> list[str]:
    """`run:` commands that try every way an agent has to lose a checkpoint (each
    ends in `true`: what the sandbox refuses must not end the turn)."""
    s, r = shlex.quote(str(state)), shlex.quote(str(repo))
    gits = f"{s}/git/vaults/*/ {s}/git/vaults/*/stores/*/ {r}/.git/"
    return [
        # every ref, packed or loose, in every git directory it can name
        f"for d in {gits}; do rm -rf \"$d/refs/cairnd\" \"$d/refs/heads\" \"$d/refs/tags\" \"$d/packed-refs\"; done 2>/dev/null; true",
        # the user's branch moved, through its own repository and through the session's
        f"git -C {r} update-ref refs/heads/main HEAD 2>/dev/null; git update-ref refs/heads/main HEAD 2>/dev/null; true",
        # pruned and repacked, everywhere git will do it
        f"git reflog expire --expire=now --all 2>/dev/null; git gc -q --prune=now 2>/dev/null; "
        f"git repack -a -d -q 2>/dev/null; git -C {r} gc -q --prune=now 2>/dev/null; true",
        # every object file it can reach removed, every alternates file pointed at nothing
        f"find {s} {r}/.git -path '*objects*' -type f -exec rm -f {{}} + 2>/dev/null; true",
        f"for d in {s}/git/vaults/*/objects {s}/git/vaults/*/stores/*/objects {r}/.git/objects; do "
        f"echo /nowhere > \"$d/info/alternates\"; done 2>/dev/null; true",
    ]


def prompt(daemon: Daemon, session: str, *commands: str) -> dict[str, Any]:
    return daemon.ok({"kind": "prompt", "session": session, "text": "\n".join(f"run: {c}" for c in commands)},
                     timeout=120)


def moment(worktree: Path) -> tuple[Any, ...]:
    """What a fork at this moment must hold: files, index, HEAD."""
    return tree_state(worktree), index_state(worktree), git_text(worktree, "rev-parse", "HEAD")


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path / "state", {"agents": {"reference": {"command": REFERENCE}}}).start()
    yield d
    if d.proc and d.proc.poll() is None:
        assert d.stop() == 0


@pytest.mark.slow
def test_no_agent_can_lose_a_checkpoint_or_move_a_users_branch(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "hello\n", "src/app.py": "print('hi')\n"})
    git(repo, "branch", "release")
    git(repo, "tag", "v1")
    branches = git_text(repo, "for-each-ref", "--format=%(objectname) %(refname)")

    made = daemon.ok({"kind": "new", "repo": str(repo)})
    session, worktree = made["session"], Path(made["worktree"])
    moments = [moment(worktree)]
    for commands in (
        ["echo one > a.txt && git add a.txt && git commit -qm one"],  # an agent's commit
        ["echo two > b.txt && mkdir -p d && echo three > d/c.txt && git add b.txt"],  # staged, dirty
        ["echo four >> a.txt && git commit -qam two && git checkout -qb feature && echo five > e.txt"],
    ):
        prompt(daemon, session, *commands)
        moments.append(moment(worktree))

    sibling = daemon.ok({"kind": "new", "repo": str(repo)})["session"]
    prompt(daemon, sibling, "echo mine > mine.txt && git add mine.txt && git commit -qm mine")
    prompt(daemon, sibling, *destroy_everything(daemon.state, repo))
    prompt(daemon, session, *destroy_everything(daemon.state, repo))  # its own agent, last

    # The attacks did what the sandbox let them: the agents' own stores are wrecked.
    vault = vault_of(daemon.state, repo)
    stores = sorted((vault / "stores").iterdir())
    assert len(stores) == 2
    for store in stores:
        assert [p.name for p in (store / "objects").rglob("*") if p.is_file()] == ["alternates"]
        assert (store / "objects" / "info" / "alternates").read_text().strip() == "/nowhere"

    # The user's repository: every branch and tag where it was, every object there.
    assert git_text(repo, "for-each-ref", "--format=%(objectname) %(refname)") == branches
    git(repo, "fsck", "--connectivity-only", "--no-dangling")
    assert not git_text(repo, "for-each-ref", "refs/cairnd")  # cairnd wrote nothing there

    # Forks at every user message: exactly their moment.
    for k, expected in enumerate(moments):
        fork = daemon.ok({"kind": "fork", "session": session, "user_message_index": k}, timeout=120)
        assert moment(Path(fork["worktree"])) == expected, k
