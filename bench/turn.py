"""Per-turn overhead (issue 3): prompt-to-result time of a turn that does nothing (the
reference agent echoes one line) on repositories of 1k and 10k files (--quick: 1k),
split into where the time goes:

- agent: from the `session/prompt` line of the log to the agent's response line;
- checkpoint: from the response line to the `agent_checkpoint` line (the
  `turn_complete` line and the snapshot of the tree);
- log: appending the turn's own lines to a log on the same file system, plus one
  fsync, timed alone (SessionLog.append_line);
- the rest: spool pickup, dispatch, the result file (request to result, less the above).

Log timestamps have millisecond resolution, so the agent and checkpoint parts are
good to a millisecond. The floor is `git status --porcelain` on the same worktree, the
least a checkpoint can cost, timed in the same run.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cairnd.sessionlog.entries import parse_message
from cairnd.sessionlog.file import SessionLog, iter_lines
from daemonkit import SpoolClient, running_daemon
from measure import Row, command_of, main, median, ms, target_text, timings
from synth import git, repo


def _stamp(line: bytes) -> float:
    text = line.split(b'"timestamp":"', 1)[1][:24].decode()
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def _turn_parts(log: Path) -> list[tuple[float, float]]:
    """(agent seconds, checkpoint seconds) of each completed turn in the log."""
    parts = []
    prompt_at: dict[Any, float] = {}
    answered_at: float | None = None
    for _offset, line in iter_lines(log):
        message = parse_message(line) or {}
        if message.get("method") == "session/prompt":
            prompt_at[message.get("id")] = _stamp(line)
        elif "result" in message and message.get("id") in prompt_at:
            answered_at = _stamp(line)
            parts.append([answered_at - prompt_at.pop(message["id"]), 0.0])
        elif message.get("method") == "_posthog/agent_checkpoint" and answered_at is not None and parts:
            parts[-1][1] = _stamp(line) - answered_at
            answered_at = None
    return [(agent, checkpoint) for agent, checkpoint in parts]


def _log_cost(log: Path, scratch: Path) -> float:
    """Seconds to append one turn's lines (the last turn's) and fsync them."""
    lines = [line for _offset, line in iter_lines(log)]
    starts = [i for i, line in enumerate(lines) if b"_cairnd/turn_start" in line]
    turn = lines[starts[-1]:] if starts else lines[-6:]
    target = scratch / "log.ndjson"

    def append() -> None:
        with SessionLog(target) as out:
            for line in turn:
                out.append_line(line)
            out.sync()

    return median(timings(append, 30))


def _one_size(files: int, turns: int, root: Path, command: str) -> list[Row]:
    source = root / f"repo-{files}"
    git(root, "clone", "-q", "--shared", repo(files), source)
    with running_daemon(root / f"state-{files}") as daemon:
        client = SpoolClient(daemon.spool)
        made = client.ok({"kind": "new", "repo": str(source), "title": f"turn bench {files}"}, timeout=600)
        session, worktree = made["session"], Path(made["worktree"])
        client.ok({"kind": "prompt", "session": session, "text": "warm-up"}, timeout=600)  # starts the agent
        totals = []
        floor = []
        for _ in range(turns):
            started = time.perf_counter()
            git(worktree, "status", "--porcelain")
            floor.append(time.perf_counter() - started)
            result, took = client.request({"kind": "prompt", "session": session, "text": "nothing to do"})
            if result.get("status") != "ok":
                raise RuntimeError(f"turn failed: {result.get('error')}")
            totals.append(took)
        log = Path(made["log"])
        parts = _turn_parts(log)[-turns:]
        scratch = root / f"scratch-{files}"
        scratch.mkdir()
        log_time = _log_cost(log, scratch)
        client.close()
    total = median(totals)
    agent = median([a for a, _c in parts])
    checkpoint = median([c for _a, c in parts])
    rest = total - agent - checkpoint - log_time
    status = median(floor)
    return [Row(
        f"per-turn overhead, {files} files, empty turn",
        f"{ms(total)} request to result: agent {ms(agent)}, checkpoint {ms(checkpoint)}, "
        f"log {ms(log_time)}, pickup/dispatch/result {ms(rest)}",
        f"{total / status:.1f}x git status; checkpoint {checkpoint / status:.1f}x git status",
        target_text("none set (issue 3: show the split)", None),
        command,
    )]


def run(quick: bool) -> list[Row]:
    sizes = [(1_000, 5)] if quick else [(1_000, 30), (10_000, 20)]
    command = command_of(__file__, quick)
    rows: list[Row] = []
    for files, turns in sizes:
        with tempfile.TemporaryDirectory(prefix=f"cairnd-bench-turn-{files}-") as tmp:
            rows += _one_size(files, turns, Path(tmp), command)
    return rows


if __name__ == "__main__":
    main(__file__, run)
