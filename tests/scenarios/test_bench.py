"""The benchmarks of issue 6 run: `bench/run.py --quick` prints a row for every one of
them and exits 0. Timing never fails a test; only errors do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The first words of each benchmark's rows.
EXPECTED_ROWS = (
    "cairnd acp: session/prompt to the first session/update",
    "cairnd acp: /rewind N against /fork N",
    "fork point: find the cut, middle",
    "fork point: find and copy the prefix, near the end",
    "fork point: peak memory",
    "pickup: no-op request, median",
    "pickup: no-op request, p99",
    "pickup: peer floor",
    "fork, 1000 files, dirty: library",
    "fork, 1000 files, dirty: through the daemon",
    "checkpoint, 1000 files, clean",
    "checkpoint, 1000 files, one file changed",
    "checkpoint, 1000 files, 1% of files changed",
    "fork point from the offsets index, 1 MB log",
    "storage: 120 turns, 1000 files: loose checkpoint refs",
    "storage: git status after",
    "daemon memory: 5 live sessions watched",
    "burst: 100 forks dropped at once",
    "idle: CPU",
    "idle: RSS",
    "per-turn overhead, 1000 files",
    "web: session page, first screenful",
    "web: changed files of 50 turns, one git process per page",
    "sandbox",  # "sandbox: agent start", or a skipped row on a kernel without Landlock
    "history:",
    "4 tries at message 1, 1000 files, dirty",
    "rewind at message 1, 1000 files all changed since the cut",
    "fleet: fork made on another host",
    "fleet: per-turn cost of mirroring",  # native vs replay fork on Claude Code, or a skipped row without the npm agents
)


@pytest.mark.slow
def test_the_quick_benchmark_run_prints_every_row_and_succeeds(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| benchmark | figure | ratio | target | command |"
    for expected in EXPECTED_ROWS:
        assert any(row.startswith(f"| {expected}") for row in rows), f"no row {expected!r} in:\n{proc.stdout}"
    assert not any("ERROR" in row for row in rows), proc.stdout
    assert all(row.count(" | ") == 4 for row in rows[2:]), proc.stdout
    assert out.read_text().endswith(proc.stdout)
