"""Fork-point resolution on a big log: find the cut and copy the prefix, against raw reads.

The log (bench/biglog.py: a million entries, about 1 GB, three thousand turns; --quick:
20 thousand entries) is cut in the middle and at its last user message. The floor is
`cat log > /dev/null` measured in the same run (the page cache's read speed: the log
is in cache, as a log just written is), scaled to the bytes the search had to read;
for the copy, `head -c <prefix> log > copy` in the same run. Peak memory is measured
in a child process, over the same child doing nothing but the imports.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from biglog import big_log
from cairnd.sessionlog import cutindex
from cairnd.sessionlog.forkpoint import find_fork_point
from cairnd.sessionlog.file import copy_prefix, iter_lines
from measure import (
    Row, command_of, main, median, mib, ms, peak_rss_of_child, ratio, run_quiet, target_text, timings,
)

_SESSION = "bench-session"
_CHILD_IMPORTS = "import sys\nfrom cairnd.sessionlog.forkpoint import find_fork_point\nfrom cairnd.sessionlog.file import copy_prefix, iter_lines\n"
_CHILD_WORK = (
    "point = find_fork_point(iter_lines(sys.argv[1]), int(sys.argv[2]), 's')\n"
    "copy_prefix(sys.argv[1], sys.argv[3], point.offset)\n"
)


def _cat(path: Path) -> None:
    run_quiet(["cat", path])


def _head_copy(path: Path, length: int, target: Path) -> None:
    with open(target, "wb") as out:
        subprocess.run(["head", "-c", str(length), str(path)], stdout=out, check=True)


def _index_rows(quick: bool, command: str) -> list[Row]:
    """The cut from the offsets index beside the log (cairnd.cutindex), on logs of 1 MB,
    100 MB and 1 GB (--quick: 1 MB and 10 MB), with the index current (the daemon
    brings it up to date after every turn): the time to find the cut near the end,
    against the same on the 1 MB log (target: the biggest within 2x). Building the
    index from nothing (a log older than the index) is shown beside it."""
    sizes = [("1 MB", 1_000, 3), ("10 MB", 10_000, 30)] if quick else \
        [("1 MB", 1_000, 3), ("100 MB", 100_000, 300), ("1 GB", 1_000_000, 3_000)]
    rows: list[Row] = []
    first: float | None = None
    for label, entries, turns in sizes:
        log = big_log(entries, turns)
        with tempfile.TemporaryDirectory(dir=log.parent) as tmp:
            copy = Path(tmp) / "log.ndjson"
            os.link(log, copy)  # the index lives beside the log: a directory of its own
            build = median(timings(lambda: cutindex.current(copy), 1,
                                   setup=lambda: cutindex.index_path(copy).unlink(missing_ok=True)))
            cutindex.current(copy)
            k = turns - 1
            find = median(timings(lambda: cutindex.find_cut(copy, k, _SESSION), 21))
            assert cutindex.find_cut(copy, k, _SESSION) == find_fork_point(iter_lines(copy), k, _SESSION)
        first = first if first is not None else find
        rows.append(Row(
            f"fork point from the offsets index, {label} log, near the end",
            f"{ms(find)} ({mib(log.stat().st_size)}; building the index from nothing: {ms(build)})",
            ratio(find, first, "the same on the 1 MB log"),
            target_text("<= 2x the 1 MB log", find <= 2 * first), command))
    return rows


def run(quick: bool) -> list[Row]:
    entries, turns = (20_000, 60) if quick else (1_000_000, 3_000)
    repeat = 3 if quick else 5
    log = big_log(entries, turns)
    size = log.stat().st_size
    command = command_of(__file__, quick)
    _cat(log)  # into the page cache, as a log being written is
    rows: list[Row] = _index_rows(quick, command)
    cat_time = median(timings(lambda: _cat(log), repeat))
    rows.append(Row("fork point: raw read (floor)", f"cat of {mib(size)}: {ms(cat_time)} "
                    f"({size / cat_time / 1e9:.2f} GB/s)", "1.00x", "the floor", command))
    with tempfile.TemporaryDirectory(dir=log.parent) as tmp:
        copy_target = Path(tmp) / "prefix.ndjson"
        for label, k in (("middle", turns // 2), ("near the end", turns - 1)):
            point = find_fork_point(iter_lines(log), k, _SESSION)
            share = point.offset / size
            floor = cat_time * share
            find = median(timings(lambda: find_fork_point(iter_lines(log), k, _SESSION), repeat))
            rows.append(Row(
                f"fork point: find the cut, {label}",
                f"{ms(find)} to read {mib(point.offset)} ({point.offset / find / 1e9:.2f} GB/s)",
                ratio(find, floor, "cat of the same bytes"),
                target_text("<= 3x (a third of raw read speed)", find <= 3 * floor),
                command,
            ))

            def find_and_copy() -> None:
                found = find_fork_point(iter_lines(log), k, _SESSION)
                copy_prefix(log, copy_target, found.offset)

            # Fewer rounds: each writes up to a gigabyte, which the disk must absorb.
            copies = max(2, repeat - 2)
            both = median(timings(find_and_copy, copies, setup=lambda: copy_target.unlink(missing_ok=True)))
            peer = median(timings(lambda: _head_copy(log, point.offset, copy_target), copies,
                                  setup=lambda: copy_target.unlink(missing_ok=True)))
            rows.append(Row(
                f"fork point: find and copy the prefix, {label}",
                f"{ms(both)} (head -c of the prefix: {ms(peer)})",
                ratio(both, floor + peer, "cat + head -c of the prefix"),
                target_text("<= 3x", both <= 3 * (floor + peer)),
                command,
            ))
        # The path every reader had before: each line handed to Python.
        k = turns - 1
        plain = median(timings(lambda: find_fork_point((pair for pair in iter_lines(log)), k, _SESSION),
                               1 if not quick else 2))
        rows.append(Row("fork point: plain line iteration, near the end (before)",
                        ms(plain), ratio(plain, cat_time * share, "cat of the same bytes"),
                        target_text("reference", None), command))
        baseline = peak_rss_of_child(_CHILD_IMPORTS)
        copy_target.unlink(missing_ok=True)
        peak = peak_rss_of_child(_CHILD_IMPORTS + _CHILD_WORK, str(log), str(k), str(copy_target))
        rows.append(Row("fork point: peak memory, find + copy near the end",
                        f"{mib(peak - baseline)} over the interpreter's {mib(baseline)}",
                        f"{(peak - baseline) / size:.4f} of the log's size",
                        target_text("< 64 MiB over baseline", peak - baseline < 64 << 20), command))
    return rows


if __name__ == "__main__":
    main(__file__, run)
