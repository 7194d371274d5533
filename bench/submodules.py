"""Submodules (SPEC 3, "Repositories inside the worktree"): what a superproject with five
submodules costs a checkpoint and a fork.

- **checkpoint**: `Checkpointer.take` on a watched session worktree whose five
  submodules cairnd checked out, after one file changed in one submodule (each round a
  different submodule). The floor, timed in the same run and interleaved: `git status
  --porcelain --ignore-submodules=none` of the same worktree in the same state: the
  status that looks inside each submodule, as `git status --recurse-submodules` would
  (git's status has no such flag: it recurses by default, and this spells it out).
  Target: at most 1.0x.
- **fork**: a fork's worktree made at that checkpoint, submodules and all (files,
  index, HEAD of each, and the fork's baseline pinned: forker.build_fork's work), against doing it by hand: `git
  worktree add` then `git submodule update --init` (which clones each submodule from
  the source's own repositories, offline). Target: at most 1.0x.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from cairnd.checkpoints.checkpoint import pin_checkpoint
from cairnd.git import inner
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.checkpoints.watch import WatchSet
from cairnd.git import worktree as gitworktree
from cairnd.state.layout import StateLayout
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import git

_MAX_FILE = 64 << 20
SUBMODULES = 5


def _repo(path: Path, files: int) -> None:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for n in range(files):
        target = path / f"d{n % 20}" / f"f{n}.txt"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"file {n}\n" * 20)
    git(path, "add", "-A")
    git(path, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "files")


def _source(root: Path, files: int) -> Path:
    source = root / "super"
    _repo(source, files)
    for n in range(SUBMODULES):
        _repo(root / f"lib{n}", files)
        git(source, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(root / f"lib{n}"), f"lib{n}")
    git(source, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "submodules")
    return source


def run(quick: bool) -> list[Row]:
    files, repeat = (200, 5) if quick else (1_000, 11)
    command = command_of(__file__, quick)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-submodules-") as tmp:
        root = Path(tmp)
        source = _source(root, files)
        layout = StateLayout(root / "state")
        layout.create()
        worktree = layout.worktree_parent("bench") / "super"
        head = git(source, "rev-parse", "HEAD").decode().strip()
        gitworktree.add_worktree(source, worktree, head, inner_map=layout.inner_map("bench"))
        git(worktree, "status", "--porcelain", "--ignore-submodules=none")  # stat data fresh, as after any command
        checkpoints = Checkpointer(WatchSet(), root / "state" / "checkpoint-index", layout)
        try:
            params = checkpoints.take("bench", worktree, 0, _MAX_FILE)
            ours: list[float] = []
            floor: list[float] = []
            for attempt in range(repeat + 1):
                with open(worktree / f"lib{attempt % SUBMODULES}" / "d3" / "f3.txt", "ab") as f:
                    f.write(f"turn {attempt}\n".encode())
                started = time.perf_counter()
                git(worktree, "status", "--porcelain", "--ignore-submodules=none")
                took_floor = time.perf_counter() - started
                started = time.perf_counter()
                params = checkpoints.take("bench", worktree, attempt + 1, _MAX_FILE)
                took = time.perf_counter() - started
                if attempt:
                    ours.append(took)
                    floor.append(took_floor)
            how = dict(checkpoints.counts)
        finally:
            checkpoints.close()
        assert len(params["submodules"]) == SUBMODULES and params["skipped"] == []
        rows = [Row(f"checkpoint, superproject and {SUBMODULES} submodules of {files} files each, one file changed "
                    f"in one submodule",
                    f"{ms(median(ours))} (git status (into submodules): {ms(median(floor))}; superproject "
                    f"snapshots: {how})",
                    ratio(median(ours), median(floor), "git status (into submodules)"),
                    target_text("<= 1.0x", median(ours) <= median(floor)), command)]

        fork_times: list[float] = []
        hand_times: list[float] = []
        for attempt in range(repeat + 1):
            fork = layout.worktree_parent(f"fork{attempt}") / "super"
            hand = root / "hand" / f"h{attempt}"
            started = time.perf_counter()
            git(source, "worktree", "add", "-q", "--detach", str(hand), head)
            git(hand, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "-q")
            took_hand = time.perf_counter() - started
            started = time.perf_counter()
            # What forker.build_fork does: the worktree made at the checkpoint, inner
            # repositories and all; its baseline is that checkpoint, pinned for the fork.
            trees = gitworktree.add_worktree(source, fork, params["headSha"], params["worktreeSha"],
                                             params["indexTree"], inner_map=layout.inner_map(f"fork{attempt}"),
                                             checkpoint=params)
            baseline = {**params, "sessionId": f"fork{attempt}", "turns": 0, "ref": f"refs/cairnd/fork{attempt}/0"}
            pin_checkpoint(source, baseline, (trees.worktree, trees.head))
            inner.pin_checkpoints(inner.stores(layout.inner_map(f"fork{attempt}"), source / ".git"),
                                  f"fork{attempt}", [baseline])
            took = time.perf_counter() - started
            if attempt:
                fork_times.append(took)
                hand_times.append(took_hand)
            gitworktree.remove_worktree(source, fork)
            git(source, "worktree", "remove", "--force", "--force", str(hand))
            shutil.rmtree(hand, ignore_errors=True)
        rows.append(Row(f"fork with {SUBMODULES} submodules of {files} files each (files, index, HEAD of each, "
                        f"and its baseline)",
                        f"{ms(median(fork_times))} (git worktree add + git submodule update --init: "
                        f"{ms(median(hand_times))})",
                        ratio(median(fork_times), median(hand_times), "by hand"),
                        target_text("<= 1.0x", median(fork_times) <= median(hand_times)), command))
    return rows


if __name__ == "__main__":
    main(__file__, run)
