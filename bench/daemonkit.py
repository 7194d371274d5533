"""The daemon as the benchmarks drive it: started as a subprocess by the test suite's
harness (tests/daemonproc.py), and talked to only through its spool, by a client
that learns of each result the instant it lands (inotify), so the latencies it
measures hold no polling period."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from inotify import IN_MOVED_TO, Inotify
from measure import ROOT

sys.path.insert(0, str(ROOT / "tests"))
from daemonproc import Daemon  # noqa: E402  (the suite's harness: one way to start cairnd)

__all__ = ["Daemon", "SpoolClient", "running_daemon"]

_ids = itertools.count(1)


@contextmanager
def running_daemon(state: Path, **settings: Any) -> Iterator[Daemon]:
    """A daemon on `state`, ready (READY=1 seen), stopped on leaving (killed if it does
    not stop in time: that is an error of its own, unless another is on its way).
    Rescans are left at a minute so they add no noise: every pickup measured is
    inotify's."""
    defaults: dict[str, Any] = {"rescan_seconds": 60, "idle_agent_seconds": 600}
    daemon = Daemon(state, {**defaults, **settings})
    try:
        daemon.start(timeout=120)
        yield daemon
    except BaseException:
        _stop(daemon, quietly=True)
        raise
    _stop(daemon, quietly=False)


def _stop(daemon: Daemon, quietly: bool, timeout: float = 120) -> None:
    if daemon.proc is None:
        return
    try:
        daemon.stop(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill9()
        if not quietly:
            raise RuntimeError(f"cairnd did not stop within {timeout:g} s of SIGTERM; "
                               f"its stderr ends: {daemon.stderr()[-1500:]}") from None


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
