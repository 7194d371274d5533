"""Daemon memory with live sessions watched: 100 sessions (--quick: 5), each a
worktree of a 10k-file repository (--quick: 1k), each watched since its baseline
checkpoint (one inotify watch per directory, the changed paths kept per session),
and one turn run in each. Reported: the daemon's resident memory (VmRSS), against the
issue's absolute limit of 150 MB, and beside it the same daemon before any session.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, mib, ratio, target_text
from synth import git, repo as plain_repo

LIMIT = 150 << 20


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def run(quick: bool) -> list[Row]:
    sessions, files = (5, 1_000) if quick else (100, 10_000)
    command = command_of(__file__, quick)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-watchrss-") as tmp:
        root = Path(tmp)
        repo = root / "repo"
        git(root, "clone", "-q", "--shared", plain_repo(files), repo)
        with running_daemon(root / "state", max_parallel_turns=4) as daemon:
            client = SpoolClient(daemon.spool)
            assert daemon.proc is not None
            idle = _rss(daemon.proc.pid)
            ids = [client.ok({"kind": "new", "repo": str(repo), "title": f"s{n}"})["session"]
                   for n in range(sessions)]
            for session in ids:
                client.ok({"kind": "prompt", "session": session, "text": "write notes.txt: a turn"})
            rss = _rss(daemon.proc.pid)
            dirs = sum(1 for p in repo.rglob("*") if p.is_dir() and ".git" not in p.parts) + 1
            client.close()
    return [Row(f"daemon memory: {sessions} live sessions watched, {files} files each",
                f"{mib(rss)} RSS (the same daemon before any session: {mib(idle)}; "
                f"{sessions * dirs} directories watched)",
                ratio(rss, LIMIT, "the 150 MB limit"), target_text("<= 150 MB", rss <= LIMIT), command)]


if __name__ == "__main__":
    main(__file__, run)
