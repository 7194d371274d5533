"""The daemon as the benchmarks drive it: `cairnd serve` started by cairnd's own
launcher (cairnd.cli.demo.DemoDaemon: a child process, ready when it says READY=1 on
a notify socket) with a configuration file written here, and talked to only through
its spool, by a client that learns of each result the instant it lands (inotify), so
the latencies it measures hold no polling period. Nothing here reaches into tests/."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cairnd.cli.demo import DemoDaemon
from inotify import IN_MOVED_TO, Inotify

__all__ = ["BenchDaemon", "SpoolClient", "running_daemon"]

_ids = itertools.count(1)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def config_text(settings: dict[str, Any]) -> str:
    """Settings as cairnd.toml: plain keys first, then [fleet]-like tables and one
    [agents.NAME] table per agent profile."""
    lines, tables = [], []
    for key, value in settings.items():
        if key == "agents":
            for name, profile in value.items():
                tables += [f"[agents.{name}]", *(f"{k} = {toml_value(v)}" for k, v in profile.items())]
        elif isinstance(value, dict):
            tables += [f"[{key}]", *(f"{k} = {toml_value(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


@dataclass
class BenchDaemon:
    state: Path
    launcher: DemoDaemon

    @property
    def spool(self) -> Path:
        return self.state / "spool"

    @property
    def proc(self) -> Any:
        return self.launcher.proc

    def log_tail(self, size: int = 1500) -> str:
        return self.launcher.log.read_text(errors="replace")[-size:] if self.launcher.log.exists() else ""


@contextmanager
def running_daemon(state: Path, **settings: Any) -> Iterator[BenchDaemon]:
    """A daemon on `state`, ready (READY=1 seen), stopped on leaving (killed if it does
    not stop in time: that is an error of its own, unless another is on its way).
    Rescans are left at a minute so they add no noise: every pickup measured is
    inotify's."""
    defaults: dict[str, Any] = {"state_dir": str(state), "rescan_seconds": 60, "stop_timeout_seconds": 10,
                                "idle_agent_seconds": 600}
    config = state.parent / f"{state.name}.toml"
    config.write_text(config_text({**defaults, **settings}))
    daemon = BenchDaemon(state, DemoDaemon(config, state.parent / f"{state.name}.log"))
    try:
        daemon.launcher.start()
        yield daemon
    except BaseException:
        daemon.launcher.stop()
        raise
    if daemon.launcher.stop() == -signal.SIGKILL:
        raise RuntimeError(f"cairnd did not stop in time after SIGTERM; its log ends: {daemon.log_tail()}")


class SpoolClient:
    """Drops requests into a spool and waits for their results, with timestamps."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.watcher = Inotify()
        for folder in ("done", "failed"):
            self.watcher.watch(spool / folder, IN_MOVED_TO)
        self.arrived: dict[str, float] = {}  # result name -> perf_counter when seen

    def prepare(self, request: dict[str, Any], request_id: str | None = None) -> str:
        """Write tmp/<id>.json (fsynced), ready for `release`; returns the id."""
        request_id = request_id or f"b{os.getpid()}-{next(_ids)}"
        tmp = self.spool / "tmp" / f"{request_id}.json"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, orjson.dumps(request))
            os.fsync(fd)
        finally:
            os.close(fd)
        return request_id

    def release(self, request_id: str) -> float:
        """Rename tmp/<id>.json into new/: the request is sent. Returns when."""
        started = time.perf_counter()
        os.rename(self.spool / "tmp" / f"{request_id}.json", self.spool / "new" / f"{request_id}.json")
        return started

    def wait(self, request_ids: list[str], timeout: float = 600) -> dict[str, float]:
        """perf_counter at which each result appeared, once all have."""
        wanted = {f"{request_id}.json" for request_id in request_ids}
        deadline = time.monotonic() + timeout
        while not wanted <= self.arrived.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(wanted - self.arrived.keys())[:5]
                raise TimeoutError(f"no result for {len(wanted - self.arrived.keys())} request(s), e.g. {missing}")
            events = self.watcher.names(min(left, 1.0))
            for folder, name in events:
                if folder.name in ("done", "failed"):
                    self.arrived.setdefault(name, time.perf_counter())
            if not events:
                # A quiet second: look for results whose event was lost (queue overflow).
                for name in wanted - self.arrived.keys():
                    if (self.spool / "done" / name).exists() or (self.spool / "failed" / name).exists():
                        self.arrived[name] = time.perf_counter()
        return {request_id: self.arrived[f"{request_id}.json"] for request_id in request_ids}

    def result(self, request_id: str) -> dict[str, Any]:
        for folder in ("done", "failed"):
            path = self.spool / folder / f"{request_id}.json"
            if path.exists():
                return orjson.loads(path.read_bytes())
        raise FileNotFoundError(f"no result for {request_id}")

    def request(self, request: dict[str, Any], timeout: float = 600) -> tuple[dict[str, Any], float]:
        """Send one request and wait: (its result, seconds from rename to result)."""
        request_id = self.prepare(request)
        started = self.release(request_id)
        arrived = self.wait([request_id], timeout)[request_id]
        return self.result(request_id), arrived - started

    def ok(self, request: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        result, _latency = self.request(request, timeout)
        if result.get("status") != "ok":
            raise RuntimeError(f"{request.get('kind')} failed: {result.get('error')}")
        return result["result"]

    def close(self) -> None:
        self.watcher.close()
