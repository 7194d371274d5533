"""Pickup latency: a no-op request (`cancel` on an idle session) from its rename into
new/ to its result file, one request at a time, 500 drops (--quick: 100).

Issue 6 sets an absolute target (median under 10 ms, p99 under 50 ms); the ratio to it
is shown, and so is the ratio to a peer floor measured in the same run, interleaved
in blocks with the daemon's drops: bench/pickup_peer.py, the plainest Python program
that answers a spool request durably (inotify, rename, fsync'ed write, rename, fsync
of the directory). The client learns of each result by inotify too.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemonkit import SpoolClient, running_daemon
from measure import BENCH, Row, command_of, main, median, ms, percentile, target_text
from synth import git, repo

_BLOCK = 50


def _drops(client: SpoolClient, request: dict[str, Any], count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        request_id = client.prepare(request)
        started = client.release(request_id)
        arrived = client.wait([request_id], timeout=60)[request_id]
        latencies.append(arrived - started)
        result = client.result(request_id)
        if result.get("status") != "ok":
            raise RuntimeError(f"cancel failed: {result}")
    return latencies


def _start_peer(spool: Path) -> subprocess.Popen[bytes]:
    for folder in ("tmp", "new", "cur", "done", "failed"):
        (spool / folder).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(BENCH / "pickup_peer.py"), str(spool)])
    deadline = time.monotonic() + 30
    while not (spool / "peer-ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the peer did not start")
        time.sleep(0.01)
    return proc


def _measure(root: Path, peer_spool: Path, drops: int) -> tuple[list[float], list[float]]:
    """(daemon latencies, peer latencies), interleaved in blocks."""
    with running_daemon(root / "state") as daemon:
        client = SpoolClient(daemon.spool)
        peer_client = SpoolClient(peer_spool)
        session = client.ok({"kind": "new", "repo": str(root / "repo"), "title": "pickup"}, timeout=120)["session"]
        cancel = {"kind": "cancel", "session": session}
        _drops(client, cancel, 20)  # warm: first requests pay imports and caches
        _drops(peer_client, cancel, 20)
        ours: list[float] = []
        floor: list[float] = []
        while len(ours) < drops:
            block = min(_BLOCK, drops - len(ours))
            floor += _drops(peer_client, cancel, block)
            ours += _drops(client, cancel, block)
        client.close()
        peer_client.close()
    return ours, floor


def run(quick: bool) -> list[Row]:
    drops = 100 if quick else 500
    command = command_of(__file__, quick)
    with tempfile.TemporaryDirectory(prefix="cairnd-bench-pickup-") as tmp:
        root = Path(tmp)
        git(root, "clone", "-q", "--shared", repo(10), root / "repo")
        peer = _start_peer(root / "peer-spool")
        try:
            ours, floor = _measure(root, root / "peer-spool", drops)
        finally:
            peer.terminate()
            peer.wait(10)
    ours_median, ours_p99 = median(ours), percentile(ours, 0.99)
    floor_median, floor_p99 = median(floor), percentile(floor, 0.99)
    return [
        Row("pickup: no-op request, median", f"{ms(ours_median)} over {drops} drops",
            f"{ours_median / 0.010:.2f}x the 10 ms target; {ours_median / floor_median:.1f}x the peer floor",
            target_text("< 10 ms", ours_median < 0.010), command),
        Row("pickup: no-op request, p99", f"{ms(ours_p99)} over {drops} drops",
            f"{ours_p99 / 0.050:.2f}x the 50 ms target; {ours_p99 / floor_p99:.1f}x the peer floor",
            target_text("< 50 ms", ours_p99 < 0.050), command),
        Row("pickup: peer floor (inotify + rename + fsync'ed write, plain Python)",
            f"median {ms(floor_median)}, p99 {ms(floor_p99)}", "1.00x", target_text("the floor", None), command),
    ]


if __name__ == "__main__":
    main(__file__, run)
