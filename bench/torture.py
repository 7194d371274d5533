"""The long torture run: tests/scenarios/test_crash.py's kill -9 loop for many iterations, or
tests/scenarios/test_concurrency.py's load at full size.

    python bench/torture.py                      # 200 iterations of kill -9 at random moments
    python bench/torture.py --iterations 50 --seed 7
    python bench/torture.py --concurrency        # 20 sessions x 20 turns with forks among them

It drives the real daemon (`python -m cairnd serve`) on a temporary state directory
through its spool only, then audits the state on disk (every request answered once,
no half-made session, every log whole, no turn run twice) and prints the figures:

    iterations: 200, requests: 412, results: 412, lost: 0, duplicated: 0, ...

Exit status 0 when the audit found nothing, 1 otherwise (the problems are printed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests"), str(Path(__file__).resolve().parent.parent / "tests" / "scenarios")]

from daemonproc import Daemon  # noqa: E402
from test_concurrency import Load, load_repo  # noqa: E402
from test_crash import BASE_SEED, Torture, audit, torture_repo  # noqa: E402


def crash_run(workdir: Path, iterations: int, seed: int) -> int:
    repo = torture_repo(workdir / "project")
    daemon = Daemon(workdir / "state", {"max_parallel_turns": 4, "stop_timeout_seconds": 20})
    torture = Torture(daemon, repo)
    started = time.monotonic()
    try:
        for i in range(iterations):
            torture.iteration(i, seed + i)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{iterations} iterations, {len(torture.requests)} requests, "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        torture.finish(timeout=600)
    except BaseException:
        print("\n".join(torture.history[-20:]), file=sys.stderr)
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill9()
        raise
    report = audit(daemon.state, repo, torture.requests)
    print(f"iterations: {iterations}, {report.figures()}, seconds: {time.monotonic() - started:.0f}")
    return finish(report.problems, torture.history)


def concurrency_run(workdir: Path, sessions: int, turns: int, seed: int) -> int:
    repo = load_repo(workdir / "project")
    daemon = Daemon(workdir / "state", {"max_parallel_turns": 4, "max_parallel_forks": 2}).start()
    load = Load(daemon, repo, sessions=sessions, turns=turns, forks_per_session=3, seed=seed)
    started = time.monotonic()
    try:
        load.run(timeout=1800)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop(timeout=120)
    problems = load.check()
    forks = [daemon.result(f"{rid}.json") for *_rest, rid in load.forks]
    made = sum(1 for r in forks if r is not None and r["status"] == "ok")
    print(f"sessions: {sessions}, turns: {sessions * turns}, forks: {made} of {len(forks)} "
          f"(the rest out of range mid-turn), requests: {len(load.ids)}, problems: {len(problems)}, "
          f"seconds: {time.monotonic() - started:.0f}")
    return finish(problems, [])


def finish(problems: list[str], history: list[str]) -> int:
    if problems:
        print("\n".join(history + problems))
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="kill -9 rounds (default 200)")
    parser.add_argument("--seed", type=int, default=BASE_SEED, help="seed of the first round (round i: seed + i)")
    parser.add_argument("--concurrency", action="store_true", help="the load run instead of the crash run")
    parser.add_argument("--sessions", type=int, default=20, help="with --concurrency (default 20)")
    parser.add_argument("--turns", type=int, default=20, help="with --concurrency: turns per session (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cairnd-torture-"))
    print(f"state under {workdir}", file=sys.stderr)
    try:
        if args.concurrency:
            return concurrency_run(workdir, args.sessions, args.turns, args.seed)
        return crash_run(workdir, args.iterations, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
