"""The user-message offsets index beside a log (cairnd.cutindex): a fork's cut found
from it is the cut `find_fork_point` finds reading the log, however the log grew
(line by line, mid-turn, with sub-session runs open across appends), and an index
that is missing, torn, or stale (a replaced log, a shortened one) is rebuilt."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairnd.sessionlog import cutindex
from cairnd.sessionlog.file import iter_lines
from logsamples import agent_chunk, checkpoint, checkpoint_params, prompt_request, turn_complete, user_chunk
from test_forkpoint import fork_point_or_error, log_entries


def cut_or_error(path: Path, k: int) -> object:
    try:
        return cutindex.find_cut(path, k, "s1")
    except Exception as error:  # noqa: BLE001  compared with the reader's errors
        return f"{error.code}: {error}"  # type: ignore[attr-defined]


def agrees(path: Path) -> None:
    count = cutindex.current(path).state.ordinal
    for k in range(-1, count + 2):
        assert cut_or_error(path, k) == fork_point_or_error(list(iter_lines(path)), k), k


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(log_entries(), st.lists(st.integers(1, 6), max_size=12))
def test_the_index_answers_as_the_log_does_however_the_log_grew(entries, steps) -> None:
    lines = [line for _kind, line in entries]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.ndjson"
        path.write_bytes(b"")
        written = 0
        for step in steps + [len(lines)]:
            chunk = lines[written:written + step]
            written += len(chunk)
            with open(path, "ab") as f:
                f.write(b"".join(chunk))
                f.write(b'{"type":"notification","notif')  # a torn tail: not written yet
            agrees(path)
            with open(path, "r+b") as f:  # the writer repairs the tail before its next append
                f.truncate(sum(map(len, lines[:written])))
        agrees(path)


def test_it_reads_only_what_the_log_gained(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(checkpoint(0) + prompt_request(1, "one") + agent_chunk("a") + turn_complete() + checkpoint(1))
    assert cutindex.current(path).state.ordinal == 1
    starts: list[int] = []
    real = cutindex.iter_lines
    monkeypatch.setattr(cutindex, "iter_lines", lambda p, start=0: starts.append(start) or real(p, start))
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(prompt_request(2, "two"))
    point = cutindex.find_cut(path, 1, "s1")
    assert starts == [size] and point.offset == size and point.prefill == "two"
    assert point.checkpoint == checkpoint_params(checkpoint(1))


def test_a_torn_index_is_cut_back_to_its_last_whole_state(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(prompt_request(1, "one") + turn_complete() + checkpoint(1))
    cutindex.current(path)
    index = cutindex.index_path(path)
    with open(index, "ab") as f:
        f.write(b'{"m": [1, 9, 99, 1, null], "c": null}\n{"s": {"cov')  # a crash mid-append
    with open(path, "ab") as f:
        f.write(prompt_request(2, "two") + user_chunk("sub", sub="a"))
    agrees(path)
    assert cutindex.current(path).state.ordinal == 3
    agrees(path)


def test_a_replaced_or_shortened_log_rebuilds_the_index(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(prompt_request(1, "one") + turn_complete() + checkpoint(1) + prompt_request(2, "two"))
    assert cutindex.current(path).state.ordinal == 2
    # A rewind replaces the log by rename: another inode, other bytes.
    replacement = tmp_path / "new.ndjson"
    replacement.write_bytes(prompt_request(5, "five"))
    os.replace(replacement, path)
    agrees(path)
    assert cutindex.find_cut(path, 0, "s1").prefill == "five"
    # Shortened in place, then grown past where the index stopped with other bytes.
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(prompt_request(6, "six") + prompt_request(7, "seven"))
    agrees(path)
    assert cutindex.find_cut(path, 1, "s1").prefill == "seven"


def test_a_missing_index_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(prompt_request(1, "one") + checkpoint(1) + prompt_request(2, "two"))
    cutindex.current(path)
    cutindex.index_path(path).unlink()
    agrees(path)
    assert cutindex.index_path(path).exists()
