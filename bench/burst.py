"""Burst: 1000 fork requests dropped at once on one session (--quick: 100), on a
repository of 100 files. All must succeed. The floor, timed in the same run: the same
number of `git worktree add --detach` run by a shell loop (xargs) with the daemon's
parallelism (max_parallel_forks), on a clone of their own. Three rounds of both
(--quick: one), alternating which goes first; the ratio is of the total times.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from cairnd.checkpoints.storage import count_loose_refs
from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, ratio, target_text
from synth import git, git_env, repo

_FILES = 100
_PARALLEL = 2  # cairnd's default max_parallel_forks, used on both sides
_ROUNDS = 3  # of each side, alternating (--quick: one)


def _settle() -> None:
    """Let the file system settle before a timed side: write out what is dirty and wait
    out ext4's window for recently deleted inodes. Without a journal, ext4 skips inodes
    deleted within the last 5 s (300 s while their table block is still dirty) when it
    allocates one, and that search made every file created after a mass deletion (an
    earlier benchmark's, a test run's) cost several times more: one side of a run could
    pay for the deletions that came before it, the other not. The 300 s outlast any
    wait a benchmark can afford, so the speed still drifts within a run: hence the
    alternating rounds of `run`."""
    os.sync()
    time.sleep(6)


def _shell_floor(source: Path, scratch: Path, count: int) -> tuple[float, int]:
    """Seconds for `count` worktree adds, `_PARALLEL` at a time, and how many had to be
    retried: git itself races when two `worktree add` run at once in one repository
    (one reads the other's half-made .git/worktrees entry and dies, leaving its own
    half-made entry, which fails every later add and which prune leaves alone), so a
    failed add's own half-made record is removed and it is retried under a new name,
    up to ten times, each after a longer pause (0.1 s, 0.2 s, ...): on a loaded machine
    another add's half-made record can stay half-made for longer than ten quick tries."""
    # A failed add leaves its own record half-made and marked "initializing", which
    # `worktree prune` never removes and every later add then trips over: the retry
    # removes exactly that record (and the attempt's directory) before trying again.
    add = ('n=0; until git -C "$1" worktree add -q --detach "$2/wt$3-$n" HEAD 2>>"$2/errors.txt"; '
           'do rm -rf "$1/.git/worktrees/wt$3-$n" "$2/wt$3-$n"; git -C "$1" worktree prune 2>>"$2/errors.txt"; '
           'n=$((n+1)); [ $n -ge 10 ] && exit 1; sleep "0.$n"; done; exit 0')  # until's own status is its body's last
    script = f'seq {count} | xargs -P {_PARALLEL} -I{{}} sh -c \'{add}\' sh "$1" "$2" {{}}'
    started = time.perf_counter()
    proc = subprocess.run(["sh", "-c", script, "sh", str(source), str(scratch)], env=git_env())
    took = time.perf_counter() - started
    errors = scratch / "errors.txt"
    if proc.returncode != 0:
        raise RuntimeError(f"the shell loop failed ({proc.returncode}): "
                           f"{errors.read_text()[-1500:] if errors.exists() else 'no stderr'}")
    retries = sum(1 for line in errors.read_text().splitlines() if line.startswith("fatal")) if errors.exists() else 0
    return took, retries


def _cairnd_side(root: Path, count: int) -> tuple[float, list[dict], int]:
    """Seconds from dropping `count` fork requests at once to the last result, the
    results that were not ok, and the loose refs left under refs/cairnd."""
    repo_dir = root / "daemon-repo"
    with running_daemon(root / "state", max_parallel_forks=_PARALLEL) as daemon:
        client = SpoolClient(daemon.spool)
        session = client.ok({"kind": "new", "repo": str(repo_dir), "title": "burst"})["session"]
        client.ok({"kind": "prompt", "session": session, "text": "the message every fork cuts at"})
        fork = {"kind": "fork", "session": session, "user_message_index": 0}
        ids = [client.prepare(fork) for _ in range(count)]
        _settle()
        started = time.perf_counter()
        for request_id in ids:
            client.release(request_id)
        arrived = client.wait(ids, timeout=3600)
        took = max(arrived.values()) - started
        failed = [r for r in (client.result(i) for i in ids) if r.get("status") != "ok"]
        loose = count_loose_refs(repo_dir / ".git")
        client.close()
    return took, failed, loose


def _shell_side(root: Path, count: int) -> tuple[float, int]:
    (root / "shell").mkdir()
    _settle()
    return _shell_floor(root / "shell-repo", root / "shell", count)


def run(quick: bool) -> list[Row]:
    """`rounds` rounds, each timing both sides on repositories of their own, the side
    that goes first alternating: on a file system whose speed drifts within a run (see
    `_settle`), neither side always gets the better half. Nothing is deleted until the
    end, so no round pays for an earlier one's deletions. The ratio is of the totals."""
    count, rounds = (100, 1) if quick else (1000, _ROUNDS)
    command = command_of(__file__, quick)
    cairnd: list[float] = []
    shell: list[float] = []
    failed: list[dict] = []
    retries = loose = 0
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-burst-") as tmp:
        for number in range(rounds):
            root = Path(tmp) / f"round{number}"
            for name in ("daemon-repo", "shell-repo"):
                git(Path(tmp), "clone", "-q", "--shared", repo(_FILES), root / name)
            for side in (("shell", "cairnd") if number % 2 == 0 else ("cairnd", "shell")):
                if side == "shell":
                    took, retried = _shell_side(root, count)
                    shell.append(took)
                    retries += retried
                else:
                    took, not_ok, loose = _cairnd_side(root, count)
                    cairnd.append(took)
                    failed += not_ok
    total = count * rounds
    outcome = f"all {total} ok" if not failed else (
        f"{len(failed)} of {total} FAILED, e.g. {str(failed[0].get('error'))[:160]}")
    each = ", ".join(f"{c:.1f} s against {f:.1f} s" for c, f in zip(cairnd, shell))
    took, floor = sum(cairnd), sum(shell)
    return [
        Row(f"burst: {count} forks dropped at once, one session",
            f"{took / rounds:.1f} s a burst, {total / took:.1f} forks/s, {outcome} "
            f"({count} git worktree add, {_PARALLEL} at a time: {floor / rounds:.1f} s, {retries} retried; "
            f"{rounds} round{'s' if rounds > 1 else ''}, cairnd against the shell loop: {each}); "
            f"{loose} loose refs under refs/cairnd after the last",
            ratio(took, floor, "the shell loop"),
            target_text("<= 1.0x, all ok", took <= 1.0 * floor and not failed), command),
    ]


if __name__ == "__main__":
    main(__file__, run)
