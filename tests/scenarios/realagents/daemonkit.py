"""Driving real agents through the real daemon: profiles, the wire, the log.

The daemon is `python -m cairnd serve` on a temp state dir (tests/daemonproc.py),
driven only through its spool. These helpers build the agent profiles a user
would write (command and env, nothing else), find an agent's process among the
daemon's children, and read a session log back as the frames that crossed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .harness import claude_agent_bin, gemini_agent_command, prepare_claude_home, prepare_gemini_home

WIRETAP = Path(__file__).resolve().parent / "wiretap.py"
ENVELOPE_HEAD_END = b',"notification":'
CAIRND_METHOD_PREFIXES = ("_posthog/", "_cairnd/")

# Fast enough for tests: claude-agent-acp never exits on stdin EOF, so every stop
# of it waits this long before SIGTERM (runner: min(10, stop_timeout_seconds)).
DAEMON_SETTINGS: dict[str, Any] = {"stop_timeout_seconds": 2, "idle_agent_seconds": 120}


def claude_profile(model_env: Mapping[str, str], home: Path, wiretap: Path | None = None) -> dict[str, Any]:
    """[agents.claude] as a user writes it for the stub: the command, the model's
    variables, a writable HOME, and IS_SANDBOX emptied (cairnd itself may run as root
    with IS_SANDBOX set, which makes Claude Code refuse to start; see NOTES.md)."""
    prepare_claude_home(home)
    command = [str(claude_agent_bin())]
    return {"command": tapped(command, wiretap), "env": {**model_env, "HOME": str(home), "IS_SANDBOX": ""}}


def gemini_profile(model_env: Mapping[str, str], home: Path, wiretap: Path | None = None) -> dict[str, Any]:
    """[agents.gemini]: Gemini CLI cannot create files through fs/* (NOTES.md), so
    cairnd does not offer them (`fs = false`)."""
    prepare_gemini_home(home)
    return {"command": tapped(gemini_agent_command(), wiretap), "env": {**model_env, "HOME": str(home)},
            "fs": False}


def tapped(command: list[str], wiretap: Path | None) -> list[str]:
    return command if wiretap is None else [sys.executable, str(WIRETAP), str(wiretap), "--", *command]


# -- processes ------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def agent_pids(daemon_pid: int, needle: str) -> list[int]:
    """The daemon's children whose command line mentions `needle` (the agents it runs)."""
    return [pid for pid in children(daemon_pid) if any(needle in part for part in cmdline(pid))]


# -- the log as frames ----------------------------------------------------------------


@dataclass(frozen=True)
class LoggedFrame:
    raw: bytes  # the notification's bytes as they sit in the log line
    message: dict[str, Any]

    @property
    def method(self) -> str | None:
        method = self.message.get("method")
        return method if isinstance(method, str) else None

    @property
    def is_cairnds_own(self) -> bool:
        return self.method is not None and self.method.startswith(CAIRND_METHOD_PREFIXES)


def log_frames(log_path: Path) -> list[LoggedFrame]:
    """Every line of a session log, each checked to be one whole JSON envelope."""
    frames = []
    data = log_path.read_bytes()
    assert data.endswith(b"\n"), "the log ends with a whole line"
    for number, line in enumerate(data.split(b"\n")[:-1], 1):
        envelope = orjson.loads(line)  # every line parses
        assert envelope["type"] == "notification" and isinstance(envelope["notification"], dict), number
        raw = line[line.index(ENVELOPE_HEAD_END) + len(ENVELOPE_HEAD_END):-1]
        assert orjson.loads(raw) == envelope["notification"], number
        frames.append(LoggedFrame(raw, envelope["notification"]))
    return frames


def wire_lines(path: Path) -> list[bytes]:
    """A wiretap capture as the frames it carried (newline-delimited JSON-RPC)."""
    return [line.strip(b" \t\r") for line in path.read_bytes().split(b"\n") if line.strip()]


def captures_for(wiretap: Path, worktree: Path) -> list[tuple[list[bytes], list[bytes]]]:
    """(stdin frames, stdout frames) of each agent run the wiretap saw in `worktree`,
    oldest first."""
    runs = []
    for cwd_file in sorted(wiretap.glob("*.cwd"), key=lambda p: p.stat().st_mtime_ns):
        if Path(cwd_file.read_text()).resolve() == worktree.resolve():
            runs.append((wire_lines(cwd_file.with_suffix(".in")), wire_lines(cwd_file.with_suffix(".out"))))
    return runs


def split_by_direction(frames: list[LoggedFrame], sent: list[bytes],
                       received: list[bytes]) -> tuple[list[LoggedFrame], list[LoggedFrame]]:
    """Match the log, in order, against both captured streams: each logged frame must
    be the next frame sent to the agent or the next one it wrote, byte for byte, or
    one of cairnd's own entries; and every captured frame must be matched. Returns the
    logged frames (client to agent, agent to client)."""
    out: list[LoggedFrame] = []
    into: list[LoggedFrame] = []
    i = j = 0
    for frame in frames:
        if i < len(sent) and frame.raw == sent[i]:
            out.append(frame)
            i += 1
        elif j < len(received) and frame.raw == received[j]:
            into.append(frame)
            j += 1
        else:
            assert frame.is_cairnds_own, f"logged but never on the wire: {frame.raw[:300]!r}"
    assert i == len(sent), f"sent but not logged: {sent[i][:300]!r}"
    assert j == len(received), f"received but not logged: {received[j][:300]!r}"
    return out, into


def unpaired_requests(requests: list[LoggedFrame], responses: list[LoggedFrame]) -> list[Any]:
    """Ids of requests (method and id) in one direction that got no response (id, no
    method) in the other, and responses to no request."""
    asked = [f.message["id"] for f in requests if f.method is not None and "id" in f.message]
    answered = [f.message["id"] for f in responses if f.method is None and "id" in f.message]
    return sorted(set(map(repr, asked)) ^ set(map(repr, answered)))


def entries(frames: list[LoggedFrame], method: str) -> list[dict[str, Any]]:
    return [f.message.get("params") or {} for f in frames if f.method == method]


def session_updates(frames: list[LoggedFrame], kind: str) -> list[LoggedFrame]:
    return [f for f in frames if f.method == "session/update"
            and ((f.message.get("params") or {}).get("update") or {}).get("sessionUpdate") == kind]


def agent_text_by_turn(frames: list[LoggedFrame]) -> list[str]:
    """The agent's message text between each session/prompt and its turn_complete."""
    turns: list[str] = []
    inside = False
    for frame in frames:
        if frame.method == "session/prompt":
            turns.append("")
            inside = True
        elif frame.method == "_posthog/turn_complete":
            inside = False
        elif inside and frame.method == "session/update":
            update = (frame.message.get("params") or {}).get("update") or {}
            if update.get("sessionUpdate") == "agent_message_chunk":
                turns[-1] += (update.get("content") or {}).get("text") or ""
    return turns


# -- git, read with git itself ----------------------------------------------------------


def commit_files(repo: Path, sha: str) -> dict[bytes, tuple[str, bytes]]:
    """The files of a commit, in the shape gitrepos.tree_state gives a worktree's."""
    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout

    files = {}
    for record in git("ls-tree", "-r", "-z", sha).split(b"\0"):
        if record:
            info, _, path = record.partition(b"\t")
            mode, _, oid = info.split(b" ")
            files[path] = (mode.decode(), git("cat-file", "blob", oid.decode()))
    return files
