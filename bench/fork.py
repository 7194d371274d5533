"""Fork vs raw git: a fork of a session whose working tree is dirty (about 1% of the
files changed, some added and deleted), on synthetic repositories of 1k, 10k and 50k
files (--quick: 1k), measured three ways, interleaved, in the same run:

- floor: the same fork by hand with git's own commands: `git worktree add --detach`
  at the checkpoint's HEAD, `git read-tree -u -m HEAD <worktreeSha>` for the files,
  `git read-tree -m <indexTree>` for the index, `head -c` of the log prefix (and,
  shown beside it, git's best by hand: `worktree add --no-checkout`, one parallel
  `read-tree --reset -u` of the snapshot, which are cairnd's own commands);
- library: `cairnd.forker.fork_session` called directly (what the daemon runs in a
  worker thread);
- daemon: a `fork` request dropped in the spool, until its result file lands.

The fork does one thing the floor does not: the baseline checkpoint of the new
worktree the contract asks for (SPEC 5), a `git status` of the whole tree.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cairnd.git import worktree as gitworktree
from cairnd.state.layout import StateLayout
from cairnd.sessions.forker import fork_session
from cairnd.git.run import CHECKOUT
from cairnd.sessionlog.forkpoint import find_fork_point
from cairnd.sessionlog.file import iter_lines
from cairnd.state.registry import Registry
from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, repo, vault_env

_MAX_FILE = 64 << 20


def _by_hand(repo_path: Path, target: Path, head: str, worktree_sha: str, index_tree: str,
             log: Path, prefix: int, log_copy: Path, env: dict[str, str]) -> None:
    git(repo_path, "worktree", "add", "-q", "--detach", target, head, env=env)
    git(target, "read-tree", "-u", "-m", "HEAD", f"{worktree_sha}^{{tree}}", env=env)
    git(target, "read-tree", "-m", index_tree, env=env)
    with open(log_copy, "wb") as out:
        subprocess.run(["head", "-c", str(prefix), str(log)], stdout=out, check=True)


def _by_hand_best(repo_path: Path, target: Path, head: str, worktree_sha: str, index_tree: str,
                  log: Path, prefix: int, log_copy: Path, env: dict[str, str]) -> None:
    """The fastest way by hand known here (and cairnd's own): no checkout of HEAD first,
    the snapshot's files written once by git's parallel checkout, then the index."""
    git(repo_path, "worktree", "add", "-q", "--no-checkout", "--detach", target, head, env=env)
    git(target, *CHECKOUT, "read-tree", "--reset", "-u", worktree_sha, env=env)
    git(target, "read-tree", "-m", index_tree, env=env)
    with open(log_copy, "wb") as out:
        subprocess.run(["head", "-c", str(prefix), str(log)], stdout=out, check=True)


def _remove_worktree(repo_path: Path, path: Path) -> None:
    git(repo_path, "worktree", "remove", "--force", "--force", path)


def _one_size(files: int, repeat: int, root: Path, command: str) -> list[Row]:
    source = root / f"repo-{files}"
    git(root, "clone", "-q", "--shared", repo(files), source)
    floor: list[float] = []
    best: list[float] = []
    library: list[float] = []
    through_daemon: list[float] = []
    with running_daemon(root / f"state-{files}") as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": f"fork bench {files}"}, timeout=600)
        session, worktree = made["session"], Path(made["worktree"])
        dirty(worktree, files)
        client.ok({"kind": "prompt", "session": session, "text": "first turn, on a dirty tree"}, timeout=600)
        client.ok({"kind": "prompt", "session": session, "text": "second turn"}, timeout=600)
        layout = StateLayout(root / f"state-{files}")
        log = layout.log_path(session)
        point = find_fork_point(iter_lines(log), 1, session)
        assert point.checkpoint is not None and point.checkpoint["dirty"], point.checkpoint
        head, worktree_sha, index_tree = (point.checkpoint[key] for key in ("headSha", "worktreeSha", "indexTree"))
        registry = Registry(layout.db)
        parent = registry.get(session)
        assert parent is not None
        scratch = root / f"by-hand-{files}"
        scratch.mkdir()
        objects = vault_env(root / f"state-{files}")  # by hand, git reads the checkpoints where cairnd keeps them
        for attempt in range(repeat + 1):  # the first round warms caches and is not counted
            target = scratch / f"wt{attempt}"
            started = time.perf_counter()
            _by_hand(source, target, head, worktree_sha, index_tree, log, point.offset, scratch / f"log{attempt}",
                     objects)
            took_floor = time.perf_counter() - started
            _remove_worktree(source, target)

            started = time.perf_counter()
            _by_hand_best(source, target, head, worktree_sha, index_tree, log, point.offset,
                          scratch / f"log{attempt}", objects)
            took_best = time.perf_counter() - started
            _remove_worktree(source, target)

            started = time.perf_counter()
            forked = fork_session(layout, registry, parent, 1, title=None, request_id=None, max_file_bytes=_MAX_FILE)
            took_library = time.perf_counter() - started
            gitworktree.remove_worktree(source, Path(forked["worktree"]))  # with its store

            result, took_daemon = client.request({"kind": "fork", "session": session, "user_message_index": 1},
                                                 timeout=600)
            if result.get("status") != "ok":
                raise RuntimeError(f"fork failed: {result.get('error')}")
            client.ok({"kind": "delete", "session": result["result"]["session"]}, timeout=600)
            if attempt:
                floor.append(took_floor)
                best.append(took_best)
                library.append(took_library)
                through_daemon.append(took_daemon)
        client.close()
    shutil.rmtree(root / f"by-hand-{files}", ignore_errors=True)
    floor_time, library_time, daemon_time = median(floor), median(library), median(through_daemon)
    best_time = median(best)
    gated = files >= 10_000
    goal = "<= 1.2x raw git" if gated else "<= 1.2x raw git (gated at 10k and 50k)"
    return [
        Row(f"fork, {files} files, dirty: library (forker.fork_session)",
            f"{ms(library_time)} (raw git by hand: {ms(floor_time)}; git's best by hand, cairnd's own "
            f"commands: {ms(best_time)}, {library_time / best_time:.2f}x)",
            ratio(library_time, floor_time, "raw git"),
            target_text(goal, library_time <= 1.2 * floor_time if gated else None), command),
        Row(f"fork, {files} files, dirty: through the daemon (request to result)",
            f"{ms(daemon_time)} (the library alone: {ms(library_time)}; git's best by hand: "
            f"{daemon_time / best_time:.2f}x)",
            ratio(daemon_time, floor_time, "raw git"),
            target_text(goal, daemon_time <= 1.2 * floor_time if gated else None), command),
    ]


def run(quick: bool) -> list[Row]:
    sizes = [(1_000, 1)] if quick else [(1_000, 5), (10_000, 5), (50_000, 3)]
    command = command_of(__file__, quick)
    rows: list[Row] = []
    for files, repeat in sizes:
        with tempfile.TemporaryDirectory(prefix=f"cairnd-bench-fork-{files}-") as tmp:
            rows += _one_size(files, repeat, Path(tmp), command)
    return rows


if __name__ == "__main__":
    main(__file__, run)
