"""The session log file (SPEC 3): whole-line appends, torn tails, streaming reads, marked
lines, prefix copies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cairnd.sessionlog.entries import cairnd_entry, method_of, parse_message
from cairnd.sessionlog.file import SessionLog, copy_prefix, iter_lines
from logsamples import agent_chunk, prompt_request

# --- appends and torn tails ---------------------------------------------------------


def test_appends_are_whole_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sessions" / "s1" / "log.ndjson"
    with SessionLog(path) as log:
        log.append(cairnd_entry("_posthog/sdk_session", {"sdkSessionId": "x"}))
        log.append_raw(b'{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{}}', sender="client")
        log.append_line(agent_chunk("hi"))
        log.sync()
        assert log.size == path.stat().st_size
    data = path.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [method_of(parse_message(line) or {}) for line in lines[:3]] == [
        "_posthog/sdk_session",
        "session/prompt",
        "session/update",
    ]


def test_append_line_refuses_anything_but_one_line(tmp_path: Path) -> None:
    with SessionLog(tmp_path / "log.ndjson") as log:
        for bad in (b"", b"{}", b"{}\n{}\n", b"{}\n\n"):
            with pytest.raises(ValueError):
                log.append_line(bad)
    assert (tmp_path / "log.ndjson").read_bytes() == b""


def test_reopening_appends_after_what_is_there(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    with SessionLog(path) as log:
        log.append_line(prompt_request(1, "a"))
    with SessionLog(path) as log:
        log.append_line(prompt_request(2, "b"))
    assert path.read_bytes() == prompt_request(1, "a") + prompt_request(2, "b")


def test_a_torn_tail_is_not_read_and_the_next_writer_cuts_it(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    whole = prompt_request(1, "a") + agent_chunk("b")
    torn = agent_chunk("cut by a crash")[:-7]
    path.write_bytes(whole + torn)
    assert [line for _offset, line in iter_lines(path)] == [prompt_request(1, "a"), agent_chunk("b")]
    with SessionLog(path) as log:
        assert path.read_bytes() == whole
        log.append_line(agent_chunk("c"))
    assert path.read_bytes() == whole + agent_chunk("c")


def test_a_log_that_is_only_a_torn_line_becomes_empty(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(b'{"type":"notif' + b"x" * (3 << 20))  # longer than one read chunk
    with SessionLog(path) as log:
        assert log.size == 0
    assert path.read_bytes() == b""


def test_a_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "log.ndjson")
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.append(cairnd_entry("_x", {}))


# --- streaming reads -------------------------------------------------------------


def test_iter_lines_yields_offsets_and_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    entries = [prompt_request(1, "a"), b"\n", b"garbage\n", agent_chunk("b")]
    path.write_bytes(b"".join(entries))
    pairs = list(iter_lines(path))
    offsets = [sum(len(e) for e in entries[:i]) for i in range(len(entries))]
    assert pairs == list(zip(offsets, entries))
    assert list(iter_lines(path, start=offsets[2])) == pairs[2:]
    assert list(iter_lines(path, start=path.stat().st_size)) == []


def test_iter_lines_handles_a_line_bigger_than_its_buffer(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    huge = agent_chunk("x" * (5 << 20))
    path.write_bytes(prompt_request(1, "a") + huge + agent_chunk("after"))
    assert [line for _o, line in iter_lines(path)] == [prompt_request(1, "a"), huge, agent_chunk("after")]


line_pieces = st.one_of(
    st.binary(max_size=50),
    st.just(b"\n"),
    st.just(b"\xff\xfe\xfd"),
    st.just(prompt_request(1, "a")),
    st.just(b'{"type":"notification","notification":{"method":"__posthog/x"}}'),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(line_pieces, max_size=30))
def test_reading_any_bytes_never_raises(tmp_path: Path, pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    path = tmp_path / "fuzz.ndjson"
    path.write_bytes(data)
    pairs = list(iter_lines(path))
    complete = data[: data.rfind(b"\n") + 1]
    assert b"".join(line for _o, line in pairs) == complete
    for offset, line in pairs:
        assert data[offset : offset + len(line)] == line and line.endswith(b"\n")
        message = parse_message(line)
        assert message is None or isinstance(message, dict)
        if message is not None:
            method_of(message)


# --- copying a prefix --------------------------------------------------------------


def test_copy_prefix_to_a_path_and_to_an_open_descriptor(tmp_path: Path) -> None:
    src = tmp_path / "src.ndjson"
    data = os.urandom(3 << 20) + b"tail"
    src.write_bytes(data)
    copy_prefix(src, tmp_path / "a", 2_000_001)
    assert (tmp_path / "a").read_bytes() == data[:2_000_001]
    copy_prefix(src, tmp_path / "empty", 0)
    assert (tmp_path / "empty").read_bytes() == b""
    for flags in (os.O_WRONLY, os.O_WRONLY | os.O_APPEND):  # O_APPEND defeats copy_file_range
        target = tmp_path / f"fd{flags}"
        target.write_bytes(b"head:")
        fd = os.open(target, flags)
        try:
            os.lseek(fd, 0, os.SEEK_END)
            copy_prefix(src, fd, 1000)
            os.write(fd, b":end")
        finally:
            os.close(fd)
        assert target.read_bytes() == b"head:" + data[:1000] + b":end"


def test_copy_prefix_refuses_to_copy_more_than_there_is(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"short\n")
    with pytest.raises(ValueError):
        copy_prefix(src, tmp_path / "dst", 7)


# --- finding marked lines fast ------------------------------------------------------

MARKS = (b'session/prompt"', b"user_message_chunk", b"agent_checkpoint")

marked_pieces = st.one_of(
    st.binary(max_size=30),
    st.just(b"\n"),
    st.sampled_from(MARKS),
    st.just(b"user_message_chunk agent_checkpoint"),  # two marks in one line
    st.just(prompt_request(1, "a")),
    st.just(agent_chunk("b" * 40)),
)


@contextmanager
def scan_tuning(chunk: int, parallel_min: int, count_piece: int, memmem: bool) -> Iterator[None]:
    """Shrink the scan's chunks so small logs cross many chunk boundaries."""
    import cairnd.sessionlog.file as log_module

    saved = {name: getattr(log_module, name) for name in ("_SCAN_CHUNK", "_SCAN_PARALLEL_MIN", "_COUNT_PIECE", "_MEMMEM")}
    log_module._SCAN_CHUNK = chunk
    log_module._SCAN_PARALLEL_MIN = parallel_min
    log_module._COUNT_PIECE = count_piece
    if not memmem:
        log_module._MEMMEM = None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(log_module, name, value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(marked_pieces, max_size=40),
    st.integers(1, 300),
    st.sampled_from([1, 10**9]),
    st.integers(1, 50),
    st.booleans(),
    st.data(),
)
def test_marked_lines_are_exactly_the_lines_holding_a_mark(
    tmp_path: Path, pieces: list[bytes], chunk: int, parallel_min: int, count_piece: int,
    memmem: bool, data: st.DataObject,
) -> None:
    path = tmp_path / "marked.ndjson"
    path.write_bytes(b"".join(pieces))
    boundaries = [0] + [offset + len(line) for offset, line in iter_lines(path)]
    start = data.draw(st.sampled_from(boundaries), label="start")
    expected = [
        (index, offset, line)
        for index, (offset, line) in enumerate(iter_lines(path, start))
        if any(mark in line for mark in MARKS)
    ]
    with scan_tuning(chunk, parallel_min, count_piece, memmem):
        assert list(iter_lines(path, start).marked(MARKS)) == expected


def test_marked_lines_of_a_big_log_in_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    lines = [prompt_request(i, "x" * (i % 97)) if i % 50 == 0 else agent_chunk("y" * (i % 300)) for i in range(20_000)]
    path.write_bytes(b"".join(lines) + b"torn user_message_chunk")
    expected = [(i, o, line) for i, (o, line) in enumerate(iter_lines(path)) if MARKS[0] in line]
    with scan_tuning(4096, 2, 1 << 16, True):
        assert list(iter_lines(path).marked(MARKS)) == expected
    assert list(iter_lines(path).marked(MARKS)) == expected


def test_marked_refuses_marks_it_cannot_find(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(b"")
    for bad in ([b""], [b"a\nb"]):
        with pytest.raises(ValueError):
            list(iter_lines(path).marked(bad))


def test_iter_lines_is_still_a_plain_iterator(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    path.write_bytes(prompt_request(1, "a") + agent_chunk("b"))
    lines = iter_lines(path)
    assert iter(lines) is lines and not lines.started
    assert next(lines) == (0, prompt_request(1, "a"))
    assert lines.started
    lines.close()
    assert list(lines) == []
