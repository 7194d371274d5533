"""What every benchmark shares: repeated timings and their statistics, the table row,
peak memory of a child process, and the command line (`--quick`, `--json`).

A benchmark module defines `run(quick: bool) -> list[Row]` and ends with
`main(__file__, run)`. Each row compares a figure measured in the same run against a
floor (the physical limit, or a peer doing the same work by hand), as a ratio; none
compares against a fixed number of seconds, except where issue 6 sets an absolute
target, and then the row says so.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = Path(os.environ.get("CAIRND_BENCH_CACHE", "/tmp/cairnd-bench-cache"))
HEADER = ("benchmark", "figure", "ratio", "target", "command")


@dataclass(frozen=True)
class Row:
    benchmark: str
    figure: str  # what was measured, with its unit
    ratio: str  # against the floor or the target, e.g. "1.14x raw git"
    target: str  # issue 6's, with whether this run met it
    command: str  # what produced the row

    def cells(self) -> tuple[str, ...]:
        return (self.benchmark, self.figure, self.ratio, self.target, self.command)


def target_text(goal: str, met: bool | None) -> str:
    """`goal` and whether this run met it (None: informative row, no target)."""
    if met is None:
        return goal
    return f"{goal}: {'met' if met else 'MISSED'}"


def markdown(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |")
    return "\n".join(lines) + "\n"


# --- timing ---------------------------------------------------------------------


def timings(action: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> list[float]:
    """Seconds per call of `action`, `repeat` times (after `setup`, untimed, each time)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 500 samples is the 495th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def ratio(value: float, floor: float, floor_name: str) -> str:
    return f"{value / floor:.2f}x {floor_name}" if floor > 0 else f"n/a ({floor_name} took no time)"


def run_quiet(args: Sequence[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None,
              stdout: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[bytes]:
    """Run a command that must succeed (its stderr in the error when it does not)."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc


# --- memory ---------------------------------------------------------------------


def peak_rss_of_child(code: str, *args: str) -> int:
    """Peak resident memory (bytes) of a fresh interpreter running `code`, which sees
    `args` as sys.argv[1:]; the child reports its own ru_maxrss when done."""
    probe = code + "\nimport resource as _r, sys as _s\n_s.stdout.write('\\nPEAK %d\\n' % _r.getrusage(_r.RUSAGE_SELF).ru_maxrss)\n"
    proc = run_quiet([sys.executable, "-c", probe, *args], stdout=subprocess.PIPE, cwd=ROOT)
    for line in reversed(proc.stdout.decode().splitlines()):
        if line.startswith("PEAK "):
            return int(line.split()[1]) * 1024  # Linux reports KiB
    raise RuntimeError(f"no PEAK line from child: {proc.stdout[-500:]!r}")


def own_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(value: float) -> str:
    return f"{value / (1 << 20):.1f} MiB"


# --- the command line -------------------------------------------------------------


def command_of(script: str, quick: bool) -> str:
    name = Path(script).resolve().relative_to(ROOT)
    return f"python {name}" + (" --quick" if quick else "")


def main(script: str, run: Callable[[bool], list[Row]]) -> None:
    """Parse `--quick` / `--json`, run, print the rows (a markdown table, or JSON for
    bench/run.py)."""
    parser = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer repetitions, smaller inputs")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list (for bench/run.py)")
    options = parser.parse_args()
    rows = run(options.quick)
    if options.json:
        sys.stdout.write(orjson.dumps([asdict(row) for row in rows]).decode() + "\n")
    else:
        sys.stdout.write(markdown(rows))
