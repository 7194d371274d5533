"""Storage over time (SPEC 15): 10,000 turns on a 10k-file tree (--quick: 120 turns on
1k files), each changing a few files and taking its checkpoint as the daemon does
(`Checkpointer.take`, with the background upkeep the daemon runs between turns:
`RefKeeper.maintain` when due).

Reported, against limits and against a peer measured in the same run:
- loose refs under refs/cairnd, the most seen after any turn (limit 100);
- loose objects at the end (bounded: the background repack packs them);
- `git status` and `git for-each-ref` of the user's refs in the user's repository, against the same
  repository with the same working tree and no checkpoints (within 1.1x);
- growth of .git against the bytes the turns actually changed.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

from cairnd.git import refs as gitrefs
from cairnd.checkpoints.checkpointer import Checkpointer
from cairnd.checkpoints.storage import REFS_HARD_LIMIT, REPACK_EVERY, count_loose_refs, tree_bytes
from cairnd.checkpoints.watch import WatchSet
from measure import Row, command_of, main, median, mib, ms, ratio, target_text, timings
from synth import git, shaped_paths, shaped_repo


def run(quick: bool) -> list[Row]:
    files, turns = (1_000, 120) if quick else (10_000, 10_000)
    command = command_of(__file__, quick)
    source = shaped_repo(files)
    paths = shaped_paths(source)
    rng = random.Random(15)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-storage-") as tmp:
        root = Path(tmp)
        ours, peer = root / "with-checkpoints", root / "without"
        for target in (ours, peer):
            git(root, "clone", "-q", "--no-local", source, target)  # objects of their own, like a user's clone
            git(target, "config", "gc.auto", "0")
        before = tree_bytes(ours / ".git")
        checkpoints = Checkpointer(WatchSet(), root / "indexes")
        touched: set[str] = set()
        changed_bytes = 0
        most_loose = 0
        try:
            checkpoints.take("s", ours, 0, 64 << 20)
            for turn in range(1, turns + 1):
                for _ in range(rng.randint(1, 3)):
                    name = paths[rng.randrange(len(paths))]
                    text = f"turn {turn}: {rng.random()}\n".encode()
                    with open(ours / name, "ab") as f:
                        f.write(text)
                    touched.add(name)
                    changed_bytes += len(text)
                checkpoints.take("s", ours, turn, 64 << 20)
                most_loose = max(most_loose, count_loose_refs(ours / ".git"))
                for common in checkpoints.refs.due():  # the daemon's background upkeep, between turns
                    checkpoints.refs.maintain(common)
        finally:
            checkpoints.close()
        after = tree_bytes(ours / ".git")
        objects = gitrefs.object_sizes(ours)
        refs = len(gitrefs.list_refs(ours, "refs/cairnd/"))
        for name in touched:  # the peer's working tree the same as ours
            shutil.copy2(ours / name, peer / name)
        rows = [
            Row(f"storage: {turns} turns, {files} files: loose checkpoint refs",
                f"at most {most_loose} loose after any turn; {refs} checkpoint refs in all",
                f"{most_loose / REFS_HARD_LIMIT:.2f}x the limit", target_text(f"<= {REFS_HARD_LIMIT}",
                                                                             most_loose <= REFS_HARD_LIMIT), command),
            Row(f"storage: {turns} turns, {files} files: loose objects at the end",
                f"{objects['loose']} loose objects ({mib(objects['loose_bytes'])}), {objects['packs']} packs "
                f"({mib(objects['pack_bytes'])}); {checkpoints.refs.repacks} background repacks",
                f"{objects['loose'] / max(1, turns % REPACK_EVERY):.1f} per turn since the last repack",
                target_text(f"bounded: what at most {REPACK_EVERY} turns wrote", None), command),
        ]
        repeat = 9 if not quick else 5
        # `git for-each-ref` of the user's refs (what prompts, editors and `git branch` list);
        # listing every ref, ours included, is shown too: it cannot but grow with them.
        for label, args, goal in (
                ("git status", ["status", "--porcelain"], 1.1),
                ("git for-each-ref refs/heads refs/tags refs/remotes",
                 ["for-each-ref", "--format=%(refname)", "refs/heads", "refs/tags", "refs/remotes"], 1.1),
                ("git for-each-ref (every ref, checkpoints' too)", ["for-each-ref", "--format=%(refname)"], None)):
            ours_t, peer_t = [], []
            for _ in range(repeat):
                peer_t += timings(lambda: git(peer, *args), 1)
                ours_t += timings(lambda: git(ours, *args), 1)
            mine, theirs = median(ours_t), median(peer_t)
            rows.append(Row(f"storage: {label} after {turns} checkpoints",
                            f"{ms(mine)} (the same repository without checkpoints: {ms(theirs)})",
                            ratio(mine, theirs, "without checkpoints"),
                            target_text(f"<= {goal}x", mine <= goal * theirs) if goal else
                            target_text("reported", None), command))
        rows.append(Row(f"storage: .git growth over {turns} turns",
                        f"{mib(after - before)} for {mib(changed_bytes)} of changed bytes "
                        f"({len(touched)} files touched)",
                        f"{(after - before) / max(1, changed_bytes):.1f}x the bytes changed",
                        target_text("reported", None), command))
    return rows


if __name__ == "__main__":
    main(__file__, run)
