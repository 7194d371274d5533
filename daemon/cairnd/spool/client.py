"""The spool client side (SPEC 6): submit a request file, then wait for its one result
(with what the wait shows on a terminal: the daemon's presence, the agent's activity).

What `cairnd new|prompt|fork|cancel|rm` and `cairnd demo` do, and what any other writer
(a shell script, an editor plugin) does by hand. Nothing here talks to the daemon: a
request written while the daemon is stopped waits in `new/` until it starts.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from cairnd.sessionlog.entries import (
    PROMPT_METHOD,
    SDK_SESSION_METHOD,
    TURN_COMPLETE_METHOD,
    method_of,
    parse_message,
    update_of,
)
from cairnd.state.layout import create_spool
from cairnd.sessionlog.file import iter_lines
from cairnd.spool.protocol import Spool
from cairnd.state.statelock import daemon_pid

POLL_FAST_SECONDS = 0.01  # the first half second: most requests are answered by then
POLL_SECONDS = 0.05
FAST_PHASE_SECONDS = 0.5


def new_request_id(prefix: str = "cli", now: float | None = None) -> str:
    """`cli-20261122T100000-<8 hex>`: sortable by time, unique without coordination."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"{prefix}-{stamp}-{secrets.token_hex(4)}"


def submit(spool_root: Path, request: dict[str, Any], request_id: str | None = None) -> str:
    """Write the request as any writer must (tmp/, fsync, rename into new/); its id.

    The spool's folders are created when missing, so a request can be queued before
    the daemon has ever run on this state directory."""
    create_spool(spool_root)
    request_id = request_id or new_request_id()
    Spool(spool_root).submit(request_id, request)
    return request_id


@dataclass(frozen=True)
class Where:
    """Where a request is now: `new` (queued), `cur` (being worked on), `done`,
    `failed`, or `missing` (taken back by someone, or never written)."""

    place: str
    result: dict[str, Any] | None = None


def locate(spool_root: Path, request_id: str) -> Where:
    name = f"{request_id}.json"
    spool = Spool(spool_root)
    result = spool.result_of(request_id)
    if result is not None:
        return Where("done" if result.get("status") == "ok" else "failed", result)
    if (spool_root / "cur" / name).exists():
        return Where("cur")
    if (spool_root / "new" / name).exists():
        return Where("new")
    # Between new/ and cur/ the file is renamed; look once more for the result that
    # may have landed while we looked elsewhere.
    result = spool.result_of(request_id)
    if result is not None:
        return Where("done" if result.get("status") == "ok" else "failed", result)
    return Where("missing")


def wait_for_result(spool_root: Path, request_id: str, timeout: float | None,
                    on_tick: Callable[[str, float], None] | None = None) -> dict[str, Any] | None:
    """The request's result, or None when `timeout` seconds pass first (None: no limit).

    `on_tick(place, elapsed)` is called between polls, for progress display."""
    started = time.monotonic()
    spool = Spool(spool_root)
    while True:
        result = spool.result_of(request_id)
        if result is not None:
            return result
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            return None
        if on_tick is not None:
            on_tick(locate(spool_root, request_id).place, elapsed)
        pause = POLL_FAST_SECONDS if elapsed < FAST_PHASE_SECONDS else POLL_SECONDS
        if timeout is not None:
            pause = min(pause, max(0.0, timeout - elapsed))
        time.sleep(pause)


class LogActivity:
    """What the agent of a session is doing now, read from the tail of its log: the
    title of its latest tool call, or that it is answering. For progress lines only."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path
        self.offset = log_path.stat().st_size if log_path.exists() else 0
        self.latest: str | None = None

    def poll(self) -> str | None:
        if not self.path.exists():
            return self.latest
        try:
            for offset, line in iter_lines(self.path, self.offset):
                self.offset = offset + len(line)
                described = describe_entry(line)
                if described is not None:
                    self.latest = described
        except OSError:
            pass
        return self.latest


def describe_entry(line: bytes) -> str | None:
    """A few words on one log line, when it says what an agent is doing."""
    message = parse_message(line)
    if message is None:
        return None
    method = method_of(message)
    update = update_of(message)
    if update is not None:
        kind = update.get("sessionUpdate")
        if kind == "tool_call" and isinstance(update.get("title"), str):
            return f"tool: {update['title']}"
        if kind == "agent_message_chunk":
            return "agent is answering"
        if kind == "agent_thought_chunk":
            return "agent is thinking"
        if kind == "plan":
            return "agent is planning"
        return None
    if method == PROMPT_METHOD:
        return "the agent is on it"
    if method == TURN_COMPLETE_METHOD:
        return "turn complete, taking a checkpoint"
    if method == SDK_SESSION_METHOD:
        return "agent started"
    return None


def result_json(result: dict[str, Any]) -> bytes:
    return orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


class DaemonWatch:
    """Whether the daemon runs, looked up at most once a second while waiting."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._checked = 0.0
        self._pid: int | None = None

    def pid(self) -> int | None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._pid = daemon_pid(self.state_dir)
            self._checked = now
        return self._pid


class Progress:
    """A one-line spinner on a terminal; nothing at all when the stream is not one."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.enabled = stream.isatty()
        self._frame = 0
        self._drawn = 0.0
        self._visible = False

    def show(self, phase: str, elapsed: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        self._frame = (self._frame + 1) % len(self.FRAMES)
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80
        except OSError:
            width = 80
        line = f"{self.FRAMES[self._frame]} {self.label}: {phase} ({elapsed:.1f} s)"
        self.stream.write("\r\x1b[K" + line[: max(10, width - 1)])
        self.stream.flush()
        self._visible = True

    def clear(self) -> None:
        if self._visible:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._visible = False
