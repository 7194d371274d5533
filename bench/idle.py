"""Idle cost: CPU seconds and resident memory of a daemon left idle for 60 s (--quick:
3 s) with 100 sessions on disk (--quick: 5), read from /proc/<pid>/stat and
/proc/<pid>/status (agents it runs included; an idle daemon should run none).

The sessions are made by a first daemon, which is then stopped: the one measured
starts on a state directory that already holds them, as after a reboot. Issue 6 sets
absolute targets (under 0.1 CPU s a minute, RSS under 80 MB); the floor shown beside
them is a bare interpreter that imported what the daemon imports, idling the same time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, target_text
from synth import git, repo

_TICK = os.sysconf("SC_CLK_TCK")
_IMPORTS = "import cairnd.serve.service, cairnd.sessions.handlers, cairnd.agent.runner, watchfiles, anyio, acp"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for child in text.split():
            found.append(int(child))
            found += _children(int(child))
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17
    return sum(int(fields[i - 3]) for i in (14, 15, 16, 17)) / _TICK


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _tree_usage(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, processes) of a process and its live descendants."""
    pids = [pid, *_children(pid)]
    cpu = rss = 0
    for one in pids:
        try:
            cpu += _cpu_seconds(one)
            rss += _rss(one)
        except OSError:
            continue
    return cpu, rss, len(pids)


def _idle(pid: int, seconds: float) -> tuple[float, int, int]:
    before, _rss_before, _n = _tree_usage(pid)
    time.sleep(seconds)
    after, rss, processes = _tree_usage(pid)
    return after - before, rss, processes


def run(quick: bool) -> list[Row]:
    sessions, seconds = (5, 3.0) if quick else (100, 60.0)
    command = command_of(__file__, quick)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-idle-") as tmp:
        root = Path(tmp)
        source = root / "repo"
        git(root, "clone", "-q", "--shared", repo(10), source)
        with running_daemon(root / "state") as maker:
            client = SpoolClient(maker.spool)
            for index in range(sessions):
                client.ok({"kind": "new", "repo": str(source), "title": f"idle {index}"})
            client.close()
        with running_daemon(root / "state") as daemon:
            time.sleep(2.0)  # past start-up work (recovery, the first scan)
            assert daemon.proc is not None
            cpu, rss, processes = _idle(daemon.proc.pid, seconds)
        floor_proc = subprocess.Popen([sys.executable, "-c", _IMPORTS + "\nimport time\ntime.sleep(3600)"])
        try:
            time.sleep(2.0)
            floor_rss = _rss(floor_proc.pid)
        finally:
            floor_proc.terminate()
            floor_proc.wait()
    per_minute = cpu * 60.0 / seconds
    return [
        Row(f"idle: CPU, {sessions} sessions on disk, {seconds:.0f} s",
            f"{per_minute:.3f} CPU s per minute ({processes} process(es))",
            f"{per_minute / 0.1:.2f}x the 0.1 s target",
            target_text("< 0.1 CPU s/min", per_minute < 0.1), command),
        Row(f"idle: RSS, {sessions} sessions on disk",
            f"{rss / 1e6:.1f} MB (an interpreter with the same imports: {floor_rss / 1e6:.1f} MB)",
            f"{rss / 80e6:.2f}x the 80 MB target; {rss / floor_rss:.2f}x the bare imports",
            target_text("< 80 MB", rss < 80e6), command),
    ]


if __name__ == "__main__":
    main(__file__, run)
