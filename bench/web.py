"""The web view's session page on logs of 1 MB, 10 MB and 100 MB: the first screenful.

A real `cairnd web` server (a subprocess) on a state directory whose registry lists
three sessions, each with a log from bench/biglog.py (realistic agent chatter: text
chunks, tool calls with their output, a checkpoint per turn) of about 1, 10 and 100 MB.
Each figure is the median time of a whole `GET /sessions/<id>` over loopback (the
HTML of the first screenful: it reads the log from its start until the screenful is
full, never the whole log). The peer is the 1 MB page measured in the same run; the
target is the 100 MB page within 2x of it. --quick: 1 MB and 10 MB only.

Then the files each turn changed, as the session page lists them, for a session of 50
turns on a repository of 1000 files (each turn edits, adds and deletes about 1% of them,
every fifth renames one): all 50 pairs read by one `git diff-tree --stdin` (what the
page does, `cairnd.gitdiff.diff_files_many`) against the peer, one `git diff-tree` per
turn (`diff_files` 50 times), in the same run; the target is the page at most half
the peer's time.
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
from cairnd.git import diff as gitdiff
from cairnd.state.registry import Registry
from measure import Row, command_of, main, median, mib, ms, target_text, timings
from synth import dirty, git, git_text
from synth import repo as synth_repo

TURNS = 50
FILES = 1000

LINES_PER_TURN = 333  # as the fork-point benchmark's log: a million lines in three thousand turns


def _session_with_log(state: Path, registry: Registry, session: str, log: Path, repo: Path) -> None:
    directory = state / "sessions" / session
    directory.mkdir(parents=True)
    (directory / "log.ndjson").symlink_to(log)  # the cached log itself, not a copy
    registry.begin_session(id=session, title=f"bench {session}", repo=repo, worktree=repo, in_place=True,
                           agent="reference", parent_id=None, root_id=session, turns=0, request_id=None)
    registry.commit_session(session, {"session": session})


def _start_web(config: Path) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    """The server, its base URL and its token (the first line of its stdout)."""
    stderr = config.with_suffix(".stderr")
    stdout = config.with_suffix(".stdout")
    env = {**os.environ, "CAIRND_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "cairnd", "web", "--listen", "127.0.0.1:0"], env=env,
                            stdout=open(stdout, "wb"), stderr=open(stderr, "wb"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.match(r"(http://\S+/)\?token=(\S+)\n", stdout.read_text(errors="replace"))
        if found:
            return proc, found.group(1), found.group(2), stderr
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"cairnd web did not start: {stderr.read_text(errors='replace')}")


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
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
        proc, url, token, _stderr = _start_web(config)
        try:
            pages = {megabytes: f"{url}sessions/{session}" for megabytes, (session, _log) in logs.items()}
            html = {megabytes: _get(page, token) for megabytes, page in pages.items()}  # warm: cache, templates
            # Round robin over the sizes, so a drift of the machine's load hits every size alike.
            samples: dict[int, list[float]] = {megabytes: [] for megabytes in pages}
            for _ in range(repeat):
                for megabytes, page in pages.items():
                    samples[megabytes].extend(timings(lambda: _get(page, token), 1))
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
    return rows + changed_files_rows(quick, command)


def session_of_turns(base: Path, turns: int) -> tuple[Path, list[tuple[str, str]]]:
    """A clone of the 1000-file repository with a commit per turn (as a checkpoint's
    worktreeSha): the (before, after) pair of every turn."""
    repo = base / "turns"
    git(base, "clone", "-q", "--no-hardlinks", synth_repo(FILES), repo)
    commits = [git_text(repo, "rev-parse", "HEAD")]
    for turn in range(1, turns + 1):
        dirty(repo, FILES, seed=turn)
        if turn % 5 == 0:
            moved = next(path for path in sorted((repo / "src").rglob("*.txt")))
            moved.rename(moved.with_name(f"moved{turn}.txt"))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"turn {turn}")
        commits.append(git_text(repo, "rev-parse", "HEAD"))
    return repo, list(zip(commits, commits[1:]))


def changed_files_rows(quick: bool, command: str) -> list[Row]:
    repeat = 5 if quick else 21
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-webdiff-") as tmp:
        repo, pairs = session_of_turns(Path(tmp), TURNS)
        page = gitdiff.diff_files_many(repo, pairs)
        per_turn = [gitdiff.diff_files(repo, old, new) for old, new in pairs]
        assert page == per_turn and all(page), "the two ways must read the same files"
        listed = sum(len(files) for files in page)  # type: ignore[arg-type]
        samples: dict[str, list[float]] = {"page": [], "per_turn": []}
        for _ in range(repeat):  # alternated, so a drift of the machine's load hits both alike
            samples["page"].extend(timings(lambda: gitdiff.diff_files_many(repo, pairs), 1))
            samples["per_turn"].extend(timings(lambda: [gitdiff.diff_files(repo, a, b) for a, b in pairs], 1))
    page_time, peer = median(samples["page"]), median(samples["per_turn"])
    return [
        Row(f"web: changed files of {TURNS} turns, one git process per page",
            f"{ms(page_time)} for {listed} changed files", f"{page_time / peer:.2f}x a git process per turn",
            target_text("<= 0.5x a process per turn", page_time <= 0.5 * peer), command),
        Row(f"web: changed files of {TURNS} turns, a git process per turn (peer)",
            f"{ms(peer)} for {listed} changed files", "1.00x", target_text("the peer", None), command),
    ]


if __name__ == "__main__":
    main(__file__, run)
