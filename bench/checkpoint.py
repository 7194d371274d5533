"""Checkpoint cost: `cairnd.checkpoint.take_checkpoint` at a turn boundary, on clean and
dirty working trees of 1k, 10k and 50k files (--quick: 1k), against what git itself
needs for the same question, timed in the same run, interleaved:

- clean: `git status --porcelain` (the least git does to say "nothing changed");
- dirty: `git add -A` into a copy of the index, then `git write-tree` (the least git
  does to write the whole working tree as a tree without touching the real index).

Both sides start warm: the index's stat data is fresh, the objects of a dirty tree
already written by an earlier round (each round rehashes the changed files all the
same).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cairnd.checkpoint import take_checkpoint
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, repo

_MAX_FILE = 64 << 20


def _status(worktree: Path) -> None:
    git(worktree, "status", "--porcelain")


def _add_and_write_tree(worktree: Path, scratch: Path) -> None:
    index = scratch / "index.copy"
    shutil.copy2(worktree / ".git" / "index", index)
    env = {"GIT_INDEX_FILE": str(index)}
    git(worktree, "add", "-A", env=env)
    git(worktree, "write-tree", env=env)
    os.unlink(index)


def _rounds(repeat: int, ours: Callable[[], None], floor: Callable[[], None]) -> tuple[list[float], list[float]]:
    ours_times: list[float] = []
    floor_times: list[float] = []
    for attempt in range(repeat + 1):  # the first round warms caches and is not counted
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


def _one_size(files: int, repeat: int, root: Path, command: str) -> list[Row]:
    worktree = root / "worktree"
    git(root, "clone", "-q", "--shared", repo(files), worktree)
    git(worktree, "config", "gc.auto", "0")
    git(worktree, "status", "--porcelain")  # refresh the index's stat data once, as any turn would have
    scratch = root / "scratch"
    scratch.mkdir()
    turns = iter(range(1, 1 << 30))
    rows = []
    for state in ("clean", "dirty"):
        if state == "dirty":
            dirty(worktree, files)
            floor_name = "git add -A (copied index) + write-tree"

            def floor() -> None:
                _add_and_write_tree(worktree, scratch)
        else:
            floor_name = "git status --porcelain"

            def floor() -> None:
                _status(worktree)

        def ours() -> None:
            take_checkpoint("bench", worktree, next(turns), _MAX_FILE)

        ours_times, floor_times = _rounds(repeat, ours, floor)
        ours_time, floor_time = median(ours_times), median(floor_times)
        rows.append(Row(
            f"checkpoint, {files} files, {state}",
            f"{ms(ours_time)} ({floor_name}: {ms(floor_time)})",
            ratio(ours_time, floor_time, floor_name.split(" (")[0] if state == "clean" else "add + write-tree"),
            target_text("<= 1.3x", ours_time <= 1.3 * floor_time),
            command,
        ))
    return rows


def run(quick: bool) -> list[Row]:
    sizes = [(1_000, 5)] if quick else [(1_000, 15), (10_000, 9), (50_000, 5)]
    command = command_of(__file__, quick)
    rows: list[Row] = []
    for files, repeat in sizes:
        with tempfile.TemporaryDirectory(prefix=f"cairnd-bench-checkpoint-{files}-") as tmp:
            rows += _one_size(files, repeat, Path(tmp), command)
    return rows


if __name__ == "__main__":
    main(__file__, run)
