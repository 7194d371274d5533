"""Rewind vs fork: what going back in place costs next to forking at the same message,
through the daemon (request to result), on synthetic repositories of 1k and 10k files
(--quick: 1k) whose working tree is dirty (about 1% of the files changed, some added
and deleted), interleaved in the same run.

A rewind costs about one fork (SPEC 13): the present moves to the abandoned session
(its worktree directory and record renamed, the whole log copied, the checkpoints
pinned under its own refs), then the session's worktree is made anew at the
checkpoint, as a fork's is, and its log replaced. So the peer is the fork, and the
figure is the ratio; the row also shows, for scale, what the rewind did before it
moved the present: its two worktree writes by git's own commands (`worktree add
--no-checkout` + parallel `read-tree --reset -u` of the current state, then
`read-tree --reset -u` of the checkpoint in place), with the same files. (The agent
is stopped by the rewind here; bench/attempts.py measures it retired.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cairnd.git.run import CHECKOUT
from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, git_text, repo, vault_env


def _by_hand(source: Path, worktree: Path, target: Path, now_sha: str, checkpoint_sha: str,
             objects: dict[str, str]) -> float:
    """A rewind's two worktree writes with git's own commands, timed: the current state
    into a new worktree, then the checkpoint's files into the session's own (through a
    scratch index that knows every current file, so files the checkpoint lacks go).
    Then, untimed, the session's files are put back and the worktree removed."""
    scratch = {"GIT_INDEX_FILE": str(target.parent / "scratch.index"), **objects}
    started = time.perf_counter()
    git(source, "worktree", "add", "-q", "--no-checkout", "--detach", target, "HEAD")
    git(target, *CHECKOUT, "read-tree", "--reset", "-u", now_sha, env=objects)
    git(worktree, "read-tree", now_sha, env=scratch)
    git(worktree, *CHECKOUT, "read-tree", "--reset", "-u", checkpoint_sha,
        env=scratch)
    took = time.perf_counter() - started
    git(worktree, *CHECKOUT, "read-tree", "--reset", "-u", now_sha, env=scratch)
    (target.parent / "scratch.index").unlink()
    git(source, "worktree", "remove", "--force", "--force", target)
    return took


def _one_size(files: int, repeat: int, root: Path, command: str) -> list[Row]:
    source = root / f"repo-{files}"
    git(root, "clone", "-q", "--shared", repo(files), source)
    forks: list[float] = []
    rewinds: list[float] = []
    hand: list[float] = []
    with running_daemon(root / f"state-{files}") as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": f"rewind bench {files}"}, timeout=600)
        session, worktree = made["session"], Path(made["worktree"])
        dirty(worktree, files)
        first = client.ok({"kind": "prompt", "session": session, "text": "first turn, on a dirty tree"},
                          timeout=600)
        checkpoint_sha = first["checkpoint"]["worktreeSha"]
        for attempt in range(repeat + 1):  # the first round warms caches and is not counted
            dirty(worktree, files, seed=attempt + 2)
            second = client.ok({"kind": "prompt", "session": session, "text": f"second turn {attempt}"},
                               timeout=600)
            now_sha = second["checkpoint"]["worktreeSha"]

            took_hand = _by_hand(source, worktree, root / "by-hand" / "wt", now_sha, checkpoint_sha,
                                 vault_env(root / f"state-{files}"))  # git reads checkpoints where cairnd keeps them

            fork, took_fork = client.request({"kind": "fork", "session": session, "user_message_index": 1},
                                             timeout=600)
            if fork.get("status") != "ok":
                raise RuntimeError(f"fork failed: {fork.get('error')}")
            rewind, took_rewind = client.request({"kind": "rewind", "session": session, "user_message_index": 1},
                                                 timeout=600)
            if rewind.get("status") != "ok":
                raise RuntimeError(f"rewind failed: {rewind.get('error')}")
            assert git_text(worktree, "rev-parse", "HEAD") == rewind["result"]["headSha"]
            for other in (fork["result"]["session"], rewind["result"]["abandoned"]):
                client.ok({"kind": "delete", "session": other}, timeout=600)
            if attempt:
                forks.append(took_fork)
                rewinds.append(took_rewind)
                hand.append(took_hand)
        client.close()
    fork_time, rewind_time, hand_time = median(forks), median(rewinds), median(hand)
    return [Row(f"rewind, {files} files, dirty: through the daemon (request to result)",
                f"{ms(rewind_time)} (a fork at the same message: {ms(fork_time)}; the copy-and-reset rewind's two "
                f"worktree writes by hand with git: {ms(hand_time)}, {rewind_time / hand_time:.2f}x)",
                ratio(rewind_time, fork_time, "a fork"),
                target_text("about one fork (SPEC 13)", None), command)]


def run(quick: bool) -> list[Row]:
    sizes = [(1_000, 2)] if quick else [(1_000, 5), (10_000, 3)]
    command = command_of(__file__, quick)
    rows: list[Row] = []
    for files, repeat in sizes:
        with tempfile.TemporaryDirectory(prefix=f"cairnd-bench-rewind-{files}-") as tmp:
            (Path(tmp) / "by-hand").mkdir()
            rows += _one_size(files, repeat, Path(tmp), command)
    return rows


if __name__ == "__main__":
    main(__file__, run)
