"""Test harness: the real daemon as a subprocess on a temp state dir, driven only
through files in its spool, with readiness read from a real NOTIFY_SOCKET."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

_ids = itertools.count(1)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    lines = []
    tables = []
    for key, value in settings.items():
        if key == "agents":
            for name, table in value.items():
                tables.append(f"[agents.{name}]")
                tables.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        elif isinstance(value, dict):  # a table of its own: [fleet], [web]
            tables.append(f"[{key}]")
            tables.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


class Daemon:
    def __init__(self, state: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.state = state
        self.spool = state / "spool"
        self.settings = {"state_dir": str(state), "rescan_seconds": 1, "stop_timeout_seconds": 10,
                         "idle_agent_seconds": 60, **(settings or {})}
        self.config = write_config(state.parent / f"{state.name}.toml", self.settings)
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = state.parent / f"{state.name}.stderr"
        self.notifications: list[str] = []
        self._sock: socket.socket | None = None

    def start(self, wait_ready: bool = True, timeout: float = 30) -> Daemon:
        self.notifications = []  # a restart must wait for its own READY=1
        sock_path = Path(tempfile.mkdtemp(prefix="cairnd-notify-")) / "notify.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        env = {**os.environ, "CAIRND_CONFIG": str(self.config), "NOTIFY_SOCKET": str(sock_path),
               **self.extra_env}
        env.pop("CAIRND_STATE_DIR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cairnd", "serve"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.stderr_path, "ab"),
        )
        if wait_ready:
            self.wait_for("READY=1", timeout)
        return self

    def read_notifications(self, timeout: float) -> list[str]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return []
        messages = data.decode().split("\n")
        self.notifications.extend(messages)
        return messages

    def wait_for(self, notification: str, timeout: float = 30, *, count: int = 1, since: int = 0) -> None:
        """Until `count` datagrams holding `notification` have come after the first
        `since` notifications (a bound against hangs, `timeout`, not a timing claim)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.notifications[since:].count(notification) >= count:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
            self.read_notifications(0.2)
        raise AssertionError(f"no {count} x {notification} within {timeout} s: {self.notifications[since:][-20:]} "
                             f"{self.stderr()[-3000:]}")

    def drain_notifications(self) -> int:
        """Read every notification already queued; how many there are now, to wait
        for what comes after (the daemon's STATUS= lines, one per rescan at most)."""
        while self.read_notifications(0.001):
            pass
        return len(self.notifications)

    def wait_rescans(self, count: int, timeout: float = 60) -> None:
        """Until the daemon has scanned its spool `count` times more, all of them
        after every request answered so far. A rescan ends with a STATUS= line
        (throttled to one a second); the ends of requests add at most two more (one
        throttled, and the one once nothing is in flight), so `count` + 2 lines prove
        `count` rescans."""
        since = self.drain_notifications()
        deadline = time.monotonic() + timeout
        while sum(n.startswith("STATUS=") for n in self.notifications[since:]) < count + 2:
            assert time.monotonic() < deadline, f"fewer than {count} rescans in {timeout} s: {self.stderr()[-3000:]}"
            assert self.proc is not None and self.proc.poll() is None, self.stderr()[-3000:]
            self.read_notifications(0.2)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.close_socket()
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.close_socket()

    def close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the spool, as any client would use it ----------------------------------------------

    def drop(self, request: dict[str, Any] | bytes, request_id: str | None = None) -> str:
        request_id = request_id or f"r{os.getpid()}-{next(_ids)}"
        data = request if isinstance(request, bytes) else orjson.dumps(request)
        tmp = self.spool / "tmp" / f"{request_id}.json"
        tmp.write_bytes(data)
        os.rename(tmp, self.spool / "new" / f"{request_id}.json")
        return request_id

    def result(self, name: str) -> dict[str, Any] | None:
        for folder in ("done", "failed"):
            path = self.spool / folder / name
            if path.exists():
                return orjson.loads(path.read_bytes())
        return None

    def wait(self, request_id: str, timeout: float = 60, name: str | None = None) -> dict[str, Any]:
        name = name or f"{request_id}.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.result(name)
            if result is not None:
                return result
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"no result for {name} within {timeout} s: {self.stderr()[-3000:]}")

    def request(self, request: dict[str, Any] | bytes, timeout: float = 60) -> dict[str, Any]:
        return self.wait(self.drop(request), timeout)

    def ok(self, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        result = self.request(request, timeout)
        assert result["status"] == "ok", result
        return result["result"]
