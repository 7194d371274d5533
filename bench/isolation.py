"""What cairnd's git isolation (SPEC 16) costs a turn and a fork: the same work on a
session worktree as cairnd makes it (a linked worktree of a store of the session's own,
borrowing from the repository's vault; its directories in git's environment, a view of
cairnd's own with HEAD copied before each command, a conf directory of cairnd's; the
store's new objects copied into the vault before cairnd reads the files) and on a
linked worktree of the user's repository that git finds by itself (its `.git` file,
the way before), interleaved in one run.

- turn: a full snapshot (`git.snapshot`) after one file changed;
- fork: a worktree made and filled (`worktree.add_worktree`), then removed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cairnd.git import places
from cairnd.git import snapshot as gitsnapshot
from cairnd.git import worktree as gitworktree
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import git, shaped_repo

_CAP = 64 << 20


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(quick: bool) -> list[Row]:
    files, repeat = (1000, 5) if quick else (10000, 9)
    repo = shaped_repo(files)
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-isolation-") as scratch:
        root = Path(scratch)
        views = places.root_of(root / "state")
        isolated, plain = root / "isolated" / "project", root / "plain" / "project"
        gitworktree.add_worktree(repo, isolated, head, views=views)
        gitworktree.add_worktree(repo, plain, head)
        turn = {"isolated": [], "plain": []}
        for attempt in range(repeat + 1):
            for name, tree in (("isolated", isolated), ("plain", plain)):
                (tree / "changed.txt").write_text(f"{attempt}\n")
                took = _timed(lambda: gitsnapshot.snapshot(tree, _CAP))
                if attempt:
                    turn[name].append(took)
        fork = {"isolated": [], "plain": []}
        for attempt in range(repeat + 1):
            for name, view_root in (("isolated", views), ("plain", None)):
                path = root / f"fork-{name}-{attempt}" / "project"
                took = _timed(lambda: gitworktree.add_worktree(repo, path, head, views=view_root))
                gitworktree.remove_worktree(repo, path)
                if attempt:
                    fork[name].append(took)
        gitworktree.remove_worktree(repo, isolated)
        gitworktree.remove_worktree(repo, plain)
    command = command_of(__file__, quick)
    for label, figures in (("a turn's snapshot, one file changed", turn), ("a fork's worktree", fork)):
        ours, floor = median(figures["isolated"]), median(figures["plain"])
        rows.append(Row(f"isolation (SPEC 16), {files} files: {label}",
                        f"{ms(ours)} (git finding its own directories: {ms(floor)})",
                        ratio(ours, floor, "without"), target_text("informative", None), command))
    return rows


if __name__ == "__main__":
    main(__file__, run)
