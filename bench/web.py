"""The web view's session page on logs of 1 MB, 10 MB and 100 MB: the first screenful.

A real `cairnd web` server (a subprocess) on a state directory whose registry lists
three sessions, each with a log from bench/biglog.py (realistic agent chatter: text
chunks, tool calls with their output, a checkpoint per turn) of about 1, 10 and 100 MB.
Each figure is the median time of a whole `GET /sessions/<id>` over loopback (the
HTML of the first screenful: it reads the log from its start until the screenful is
full, never the whole log). The peer is the 1 MB page measured in the same run; the
target is the 100 MB page within 2x of it. --quick: 1 MB and 10 MB only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from biglog import big_log
from cairnd.registry import Registry
from measure import Row, command_of, main, median, mib, ms, target_text, timings

LINES_PER_TURN = 333  # as the fork-point benchmark's log: a million lines in three thousand turns


def _session_with_log(state: Path, registry: Registry, session: str, log: Path, repo: Path) -> None:
    directory = state / "sessions" / session
    directory.mkdir(parents=True)
    (directory / "log.ndjson").symlink_to(log)  # the cached log itself, not a copy
    registry.begin_session(id=session, title=f"bench {session}", repo=repo, worktree=repo, in_place=True,
                           agent="reference", parent_id=None, root_id=session, turns=0, request_id=None)
    registry.commit_session(session, {"session": session})


def _start_web(config: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    stderr = config.with_suffix(".stderr")
    env = {**os.environ, "CAIRND_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "cairnd", "web", "--listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(stderr, "wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"on (http://\S+/)", stderr.read_text(errors="replace"))
        if found:
            return proc, found.group(1), stderr
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"cairnd web did not start: {stderr.read_text(errors='replace')}")


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        assert response.status == 200
    return len(body)


def run(quick: bool) -> list[Row]:
    sizes = [(1, 1_000), (10, 10_000)] + ([] if quick else [(100, 100_000)])
    repeat = 5 if quick else 15
    command = command_of(__file__, quick)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-web-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        state = base / "state"
        state.mkdir(mode=0o700)
        registry = Registry(state / "cairnd.db")
        logs = {}
        for megabytes, entries in sizes:
            log = big_log(entries, max(3, entries // LINES_PER_TURN))
            logs[megabytes] = (f"bench{megabytes}mb", log)
            _session_with_log(state, registry, f"bench{megabytes}mb", log, repo)
        config = base / "cairnd.toml"
        config.write_text(f'state_dir = "{state}"\n')
        proc, url, _stderr = _start_web(config)
        try:
            pages = {megabytes: f"{url}sessions/{session}" for megabytes, (session, _log) in logs.items()}
            html = {megabytes: _get(page) for megabytes, page in pages.items()}  # warm: cache, templates
            # Round robin over the sizes, so a drift of the machine's load hits every size alike.
            samples: dict[int, list[float]] = {megabytes: [] for megabytes in pages}
            for _ in range(repeat):
                for megabytes, page in pages.items():
                    samples[megabytes].extend(timings(lambda: _get(page), 1))
            figures = {megabytes: median(values) for megabytes, values in samples.items()}
            peer = figures[1]
            for megabytes, (_session, log) in logs.items():
                met = None if megabytes == 1 else figures[megabytes] <= 2 * peer
                rows.append(Row(
                    f"web: session page, first screenful, {mib(log.stat().st_size)} log",
                    f"{ms(figures[megabytes])} for {html[megabytes] / 1024:.0f} KiB of HTML",
                    f"{figures[megabytes] / peer:.2f}x the 1 MB log's page",
                    target_text("<= 2x the 1 MB page" if megabytes != 1 else "the peer", met),
                    command,
                ))
        finally:
            proc.terminate()
            proc.wait(15)
    return rows


if __name__ == "__main__":
    main(__file__, run)
