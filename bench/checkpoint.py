"""Checkpoint cost as the daemon pays it: `Checkpointer.take` on a watched worktree
(the session's baseline taken first, as `new` does), for a clean tree, one file
changed, and 1% of files changed (modified, deleted, added), at 1k, 10k, 50k and 200k
files (--quick: 1k), in repositories shaped like real ones (bench/synth.shaped_repo:
deep directories, mixed sizes). The floor, timed in the same run and interleaved: the
user's own `git status --porcelain` of the same tree in the same state.

Targets (issue 13): at most 1.0x git status everywhere; at most 0.25x at 200k files
for the one-file change. The row also shows how each snapshot was made (full scan,
from the changed paths, or the last one reused).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.checkpoints.watch import WatchSet
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import git, shaped_paths, shaped_repo

_MAX_FILE = 64 << 20


def _rounds(repeat: int, change: Callable[[int], None], ours: Callable[[], None],
            floor: Callable[[], None]) -> tuple[list[float], list[float]]:
    ours_times: list[float] = []
    floor_times: list[float] = []
    for attempt in range(repeat + 1):  # the first round warms caches and is not counted
        change(attempt)
        started = time.perf_counter()
        floor()
        took_floor = time.perf_counter() - started
        started = time.perf_counter()
        ours()
        took_ours = time.perf_counter() - started
        if attempt:
            floor_times.append(took_floor)
            ours_times.append(took_ours)
    return ours_times, floor_times


def _changes(worktree: Path, paths: list[str], state: str) -> Callable[[int], None]:
    rng = random.Random(13)
    count = max(10, len(paths) // 100)
    added: list[Path] = []

    def one(attempt: int) -> None:
        with open(worktree / paths[attempt * 7919 % len(paths)], "ab") as f:
            f.write(f"turn {attempt}\n".encode())

    def percent(attempt: int) -> None:
        for n, index in enumerate(rng.sample(range(len(paths)), count)):
            target = worktree / paths[index]
            if n % 10 == 9 and target.exists():
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "ab") as f:
                    f.write(f"turn {attempt}\n".encode())
        for n in range(count // 5 + 1):
            target = worktree / "new" / f"t{attempt}" / f"n{n}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"new file\n" * (n + 1))
            added.append(target)

    return {"clean": lambda attempt: None, "one file changed": one, "1% of files changed": percent}[state]


def _one_size(files: int, repeat: int, root: Path, command: str) -> list[Row]:
    source = shaped_repo(files)
    paths = shaped_paths(source)
    worktree = root / "worktree"
    git(root, "clone", "-q", "--shared", source, worktree)
    git(worktree, "config", "gc.auto", "0")
    git(worktree, "status", "--porcelain")  # the index's stat data fresh, as after any command
    checkpoints = Checkpointer(WatchSet(), root / "indexes")
    turns = iter(range(1, 1 << 30))
    rows = []
    try:
        checkpoints.take("bench", worktree, 0, _MAX_FILE)  # the baseline: the full scan that begins the watch
        for state in ("clean", "one file changed", "1% of files changed"):
            before = dict(checkpoints.counts)
            ours_times, floor_times = _rounds(
                repeat, _changes(worktree, paths, state),
                lambda: checkpoints.take("bench", worktree, next(turns), _MAX_FILE),
                lambda: git(worktree, "status", "--porcelain"))
            how = {k: checkpoints.counts[k] - before[k] for k in before if checkpoints.counts[k] - before[k]}
            ours_time, floor_time = median(ours_times), median(floor_times)
            limit = 0.25 if files >= 200_000 and state == "one file changed" else 1.0
            rows.append(Row(
                f"checkpoint, {files} files, {state}",
                f"{ms(ours_time)} (git status --porcelain: {ms(floor_time)}; snapshots: "
                + ", ".join(f"{n} {k}" for k, n in sorted(how.items())) + ")",
                ratio(ours_time, floor_time, "git status"),
                target_text(f"<= {limit}x", ours_time <= limit * floor_time),
                command,
            ))
    finally:
        checkpoints.close()
    return rows


def run(quick: bool) -> list[Row]:
    sizes = [(1_000, 5)] if quick else [(1_000, 15), (10_000, 11), (50_000, 7), (200_000, 5)]
    command = command_of(__file__, quick)
    rows: list[Row] = []
    for files, repeat in sizes:
        with tempfile.TemporaryDirectory(prefix=f"cairnd-bench-checkpoint-{files}-") as tmp:
            rows += _one_size(files, repeat, Path(tmp), command)
    return rows


if __name__ == "__main__":
    main(__file__, run)
