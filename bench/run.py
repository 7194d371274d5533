"""Run every benchmark of issue 6 and print one markdown table of their rows.

    python bench/run.py            the full run (tens of minutes); writes bench/RESULTS.md
    python bench/run.py --quick    a smoke run (about a minute); writes nothing
    python bench/run.py --only pickup,fork

Each benchmark runs in a process of its own (`python bench/<name>.py --json`), so one
does not inherit another's memory or threads; one that fails gets an error row and
makes the exit status 1, the others still run. Every figure is a median of repeated
runs against a floor measured in the same run (see each module's docstring).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from measure import BENCH, CACHE, ROOT, Row, command_of, markdown

LOGS = CACHE / "logs"
BENCHMARKS = ("forkpoint", "pickup", "fork", "checkpoint", "storage", "burst", "idle", "watchrss", "turn", "web",
              "sandbox", "history", "rewind", "attempts", "fleet", "acpfront")


def run_one(name: str, quick: bool) -> tuple[list[Row], bool]:
    args = [sys.executable, str(BENCH / f"{name}.py"), "--json"] + (["--quick"] if quick else [])
    proc = subprocess.run(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    command = command_of(str(BENCH / f"{name}.py"), quick)
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        LOGS.mkdir(parents=True, exist_ok=True)
        (LOGS / f"{name}.stderr").write_text(stderr)
        sys.stderr.write(stderr[-4000:])
        tail = stderr.strip().splitlines()[-1:] or ["no output"]
        return [Row(name, f"ERROR (exit {proc.returncode}): {tail[0][:200]} (whole: {LOGS / name}.stderr)",
                    "-", "-", command)], False
    rows = orjson.loads(proc.stdout.decode().strip().splitlines()[-1])
    return [Row(**row) for row in rows], True


def machine() -> str:
    cores = len(os.sched_getaffinity(0))
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, {git}, "
            f"load average {load} at the start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run; writes no RESULTS.md")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, help="where to write the table (default: bench/RESULTS.md on a full run)")
    options = parser.parse_args()
    names = options.only.split(",") if options.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    about = machine()
    started = time.monotonic()
    rows: list[Row] = []
    ok = True
    for name in names:
        print(f"running {name}...", file=sys.stderr, flush=True)
        got, fine = run_one(name, options.quick)
        rows += got
        ok = ok and fine
    table = markdown(rows)
    sys.stdout.write(table)
    out = options.out or (None if options.quick else BENCH / "RESULTS.md")
    if out is not None:
        command = "python bench/run.py" + (" --quick" if options.quick else "") + (
            f" --only {options.only}" if options.only else "")
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        out.write_text(
            "# Benchmark results\n\n"
            f"Produced by `{command}` on {stamp} ({about}), in {time.monotonic() - started:.0f} s.\n"
            "Ratios are against floors measured in the same run; see each bench/<name>.py for its floor.\n\n"
            + table
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
