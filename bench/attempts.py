"""Attempts and rewind (SPEC 19, SPEC 13), through the daemon (request to result),
interleaved in the same run:

- tries: one `fork` with `count: 8` at message 1 against 8 single forks at message 1
  made one after another, on a synthetic repository of 10k files whose tree is dirty
  (about 1% of the files changed, some added and deleted). The tries share the cut's
  work (finding it, its state and trees, one request) and build their worktrees side
  by side (max_parallel_forks at once). Target: at most 0.6x.
- rewind: a rewind at message 1 against a fork at message 1, on a 3,000-file tree where
  every file changed since the cut and the tree is dirty. The rewind moves the present
  aside (its worktree directory and record renamed) and makes the session's worktree
  anew at the cut, as a fork makes one. The agent is retired before each rewind (its
  stop is not what is measured). Target: at most 1.2x.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, median, ms, ratio, target_text
from synth import dirty, git, repo


def _tries(files: int, tries: int, repeat: int, root: Path, command: str) -> Row:
    source = root / "repo-tries"
    git(root, "clone", "-q", "--shared", repo(files), source)
    singles: list[float] = []
    batched: list[float] = []
    with running_daemon(root / "state-tries", max_parallel_forks=2) as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": "tries bench"}, timeout=600)
        session, worktree = made["session"], Path(made["worktree"])
        dirty(worktree, files)
        client.ok({"kind": "prompt", "session": session, "text": "first turn, on a dirty tree"}, timeout=600)
        client.ok({"kind": "prompt", "session": session, "text": "second turn"}, timeout=600)
        for attempt in range(repeat + 1):  # the first round warms caches and is not counted
            started = time.perf_counter()
            made_one = [client.ok({"kind": "fork", "session": session, "user_message_index": 1}, timeout=600)
                        for _ in range(tries)]
            took_singles = time.perf_counter() - started
            result, took_batch = client.request({"kind": "fork", "session": session, "user_message_index": 1,
                                                 "count": tries}, timeout=600)
            if result.get("status") != "ok":
                raise RuntimeError(f"attempts failed: {result.get('error')}")
            gone = [r["session"] for r in made_one] + [s["session"] for s in result["result"]["sessions"]]
            for other in gone:
                client.ok({"kind": "delete", "session": other}, timeout=600)
            if attempt:
                singles.append(took_singles)
                batched.append(took_batch)
        client.close()
    single, batch = median(singles), median(batched)
    return Row(f"{tries} tries at message 1, {files} files, dirty: one request (count {tries})",
               f"{ms(batch)} ({tries} single forks one after another: {ms(single)})",
               ratio(batch, single, f"{tries} single forks"),
               target_text("at most 0.6x", batch / single <= 0.6), command)


def _agents_retired(daemon_pid: int, timeout: float = 60) -> None:
    """Wait until the daemon has no child process left (its agents retired when idle)."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children")
    while time.monotonic() < deadline:
        # git processes of the daemon's own come and go; an agent is a Python process.
        if not any("python" in _cmdline(pid) for pid in children.read_text().split()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the daemon's agent did not retire within {timeout:g} s")


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def _rewind(files: int, repeat: int, root: Path, command: str) -> Row:
    source = root / "repo-rewind"
    git(root, "clone", "-q", "--shared", repo(files), source)
    forks: list[float] = []
    rewinds: list[float] = []
    with running_daemon(root / "state-rewind", idle_agent_seconds=0.2) as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": "rewind bench"}, timeout=600)
        session, worktree = made["session"], Path(made["worktree"])
        client.ok({"kind": "prompt", "session": session, "text": "first turn"}, timeout=600)
        for attempt in range(repeat + 1):  # the first round warms caches and is not counted
            for path in (worktree / "src").rglob("*.txt"):  # every file changed since the cut
                with open(path, "ab") as f:
                    f.write(f"round {attempt}\n".encode())
            dirty(worktree, files, seed=attempt + 2)
            client.ok({"kind": "prompt", "session": session, "text": f"second turn {attempt}"}, timeout=600)
            _agents_retired(daemon.proc.pid)  # the agent's stop is not what is measured
            fork, took_fork = client.request({"kind": "fork", "session": session, "user_message_index": 1},
                                             timeout=600)
            rewind, took_rewind = client.request({"kind": "rewind", "session": session, "user_message_index": 1},
                                                 timeout=600)
            for answer in (fork, rewind):
                if answer.get("status") != "ok":
                    raise RuntimeError(f"{answer.get('kind')} failed: {answer.get('error')}")
            for other in (fork["result"]["session"], rewind["result"]["abandoned"]):
                client.ok({"kind": "delete", "session": other}, timeout=600)
            if attempt:
                forks.append(took_fork)
                rewinds.append(took_rewind)
        client.close()
    fork_time, rewind_time = median(forks), median(rewinds)
    return Row(f"rewind at message 1, {files} files all changed since the cut, dirty",
               f"{ms(rewind_time)} (a fork at the same message: {ms(fork_time)})",
               ratio(rewind_time, fork_time, "a fork"),
               target_text("at most 1.2x", rewind_time / fork_time <= 1.2), command)


def run(quick: bool) -> list[Row]:
    command = command_of(__file__, quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-attempts-") as tmp:
        rows.append(_tries(1_000 if quick else 10_000, 4 if quick else 8, 1 if quick else 3, Path(tmp), command))
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-attempts-") as tmp:
        rows.append(_rewind(1_000 if quick else 3_000, 1 if quick else 5, Path(tmp), command))
    return rows


if __name__ == "__main__":
    main(__file__, run)
