"""SPEC 3: a log written by PostHog Code carries `_posthog/git_checkpoint` entries
(`head`, `branch`, `indexTree`, `worktreeTree`, ...) where cairnd writes
`agent_checkpoint`; a fork reads either, whichever comes last before the cut, so a
PostHog Code session forks with its uncommitted files.

The checkpoints here are captured as PostHog Code's CaptureCheckpointSaga
(packages/git/src/sagas/checkpoint.ts) captures them, with the same git plumbing: the
index's tree, the working tree's tree from a temporary index (HEAD's tree plus
`add -A`), a meta tree holding both, a commit of it on HEAD, and a ref
`refs/posthog-code-checkpoint/<id>`; the entry's params are its GitHandoffCheckpoint
plus `device`, in PostHog Code's envelope."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from cairnd.sessionlog.entries import cairnd_entry, envelope_line
from cairnd.errors import CairnError
from cairnd.sessionlog.forkpoint import find_fork_point, from_git_checkpoint
from cairnd.sessionlog.file import iter_lines
from gitrepos import commit_all, git_text, index_state, tree_state, write
from logsamples import agent_chunk, prompt_request, prompt_response, user_chunk
from test_forker import Parent, visible


def git(repo: Path, *args: str, env: dict | None = None, stdin: bytes | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, input=stdin,
                          env={**os.environ, **(env or {})}).stdout.decode().strip()


def posthog_checkpoint(repo: Path, tmp: Path) -> dict:
    """What PostHog Code's capture writes into its log for `repo` as it is now."""
    head = git(repo, "rev-parse", "HEAD")
    branch = git(repo, "symbolic-ref", "--short", "-q", "HEAD") or None
    index_tree = git(repo, "write-tree")
    temp_index = {"GIT_INDEX_FILE": str(tmp / f"checkpoint-worktree-{uuid.uuid4().hex}")}
    git(repo, "read-tree", head, env=temp_index)
    git(repo, "add", "-A", "--", ".", env=temp_index)
    worktree_tree = git(repo, "write-tree", env=temp_index)
    meta_index = {"GIT_INDEX_FILE": str(tmp / f"checkpoint-meta-{uuid.uuid4().hex}")}
    git(repo, "read-tree", "--empty", env=meta_index)
    git(repo, "update-index", "--add", "--cacheinfo", "040000", index_tree, "index", env=meta_index)
    git(repo, "update-index", "--add", "--cacheinfo", "040000", worktree_tree, "worktree", env=meta_index)
    meta_tree = git(repo, "write-tree", env=meta_index)
    timestamp = "2026-11-22T10:00:00.000Z"
    message = (f"POSTHOG-CODE-CHECKPOINT v1\nhead={head}\nbranch={branch}\nindex={index_tree}\n"
               f"worktree={worktree_tree}\ntimestamp={timestamp}")
    identity = {"GIT_AUTHOR_NAME": "PostHog Code", "GIT_AUTHOR_EMAIL": "posthog-code@local",
                "GIT_COMMITTER_NAME": "PostHog Code", "GIT_COMMITTER_EMAIL": "posthog-code@local"}
    commit = git(repo, "commit-tree", meta_tree, "-p", head, "-m", message, env=identity)
    checkpoint_id = str(uuid.uuid4())
    ref = f"refs/posthog-code-checkpoint/{checkpoint_id}"
    git(repo, "update-ref", ref, commit)
    return {
        "checkpointId": checkpoint_id, "commit": commit, "checkpointRef": ref, "head": head, "branch": branch,
        "indexTree": index_tree, "worktreeTree": worktree_tree, "timestamp": timestamp,
        "upstreamRemote": None, "upstreamMergeRef": None, "remoteUrl": None,
        "device": {"type": "local", "name": "laptop"},
    }


def git_checkpoint_entry(params: dict, quirk: bool = False) -> bytes:
    return envelope_line(cairnd_entry(("__posthog/" if quirk else "_posthog/") + "git_checkpoint", params))


class PostHogSession(Parent):
    """A PostHog Code session: prompts, echoed chunks, answers, and git_checkpoint
    entries after each turn (no agent_checkpoint, no turn_complete)."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.log.write_bytes(b"")  # PostHog Code's log starts with its own entries
        self.tmp = tmp_path
        self.states = []
        self.rid = 0

    def posthog_turn(self, text: str, change, quirk: bool = False) -> None:
        self.rid += 1
        self.append(prompt_request(self.rid, text), user_chunk(text))
        change()
        self.append(agent_chunk(f"did {text}"), prompt_response(self.rid))
        self.append(git_checkpoint_entry(posthog_checkpoint(self.repo, self.tmp), quirk))
        self.states.append((tree_state(self.repo), index_state(self.repo)))


@pytest.fixture
def session(tmp_path: Path) -> PostHogSession:
    s = PostHogSession(tmp_path)
    s.posthog_turn("edit and add a file", lambda: (write(s.repo, "a.txt", "a1\n"), write(s.repo, "new.txt", "n\n")))
    s.posthog_turn("commit, then change more", lambda: (commit_all(s.repo, "c1"), write(s.repo, "a.txt", "a2\n"),
                                                      git(s.repo, "add", "a.txt"), write(s.repo, "a.txt", "a3\n"),
                                                      os.remove(s.repo / "keep.txt")), quirk=True)
    s.posthog_turn("last", lambda: write(s.repo, "late.txt", "late\n"))
    return s


@pytest.mark.parametrize("k", [1, 2])
def test_a_fork_restores_the_uncommitted_files_and_index_of_posthog_codes_checkpoint(session, k):
    result = session.fork(k)
    worktree = Path(result["worktree"])
    files, index = session.states[k - 1]
    assert visible(tree_state(worktree)) == visible(files)
    assert index_state(worktree) == index
    assert result["state"] == "checkpoint"
    assert git_text(worktree, "rev-parse", "HEAD") == result["headSha"]
    # worktreeSha is a commit on headSha whose tree is PostHog Code's worktreeTree
    assert git_text(worktree, "rev-parse", result["worktreeSha"] + "^") == result["headSha"]
    assert not (worktree / "late.txt").exists()


def test_the_later_of_agent_checkpoint_and_git_checkpoint_wins(session):
    # cairnd's own checkpoint written after PostHog Code's second one, before message 2:
    # the fork at 2 starts from it, not from the git_checkpoint before it.
    write(session.repo, "cairnd.txt", "taken by cairnd\n")
    session.turns = 2
    lines = session.log.read_bytes().splitlines(keepends=True)
    cut = next(i for i, l in enumerate(lines) if b'"id":3' in l and b"session/prompt" in l)
    agent_cp = envelope_line(cairnd_entry("_posthog/agent_checkpoint", session.checkpoint()))
    session.log.write_bytes(b"".join(lines[:cut]) + agent_cp + b"".join(lines[cut:]))
    result = session.fork(2)
    assert (Path(result["worktree"]) / "cairnd.txt").read_text() == "taken by cairnd\n"
    point = find_fork_point(iter_lines(session.log), 2, session.id)
    assert "worktreeSha" in point.checkpoint and "worktreeTree" not in point.checkpoint


def test_conversion_needs_a_head_and_a_worktree_tree():
    full = {"head": "a" * 40, "branch": "main", "indexTree": "b" * 40, "worktreeTree": "c" * 40}
    assert from_git_checkpoint(full) == {"headSha": "a" * 40, "branch": "main", "indexTree": "b" * 40,
                                         "worktreeTree": "c" * 40}
    assert from_git_checkpoint({**full, "head": None}) is None  # an unborn branch: nothing to start at
    assert from_git_checkpoint({**full, "worktreeTree": ""}) is None


def test_a_checkpoint_whose_objects_are_gone_is_commit_missing(session):
    lines = session.log.read_bytes()
    params = posthog_checkpoint(session.repo, session.tmp)
    params["worktreeTree"] = "0" * 40
    session.log.write_bytes(lines + git_checkpoint_entry(params) + prompt_request(99, "more"))
    with pytest.raises(CairnError) as failure:
        session.fork(3)
    assert failure.value.code == "commit_missing" and "worktreeTree" in str(failure.value)
