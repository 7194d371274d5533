"""The fork rule (SPEC 4, 5): which lines are user messages, where a fork cuts."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairnd.errors import CairnError
from cairnd.sessionlog.forkpoint import CountState, ForkPoint, MoreText, UserMessage, count_user_messages, feed_line, find_fork_point
import cairnd.sessionlog.file as log_module
from cairnd.sessionlog.entries import parse_message
from cairnd.sessionlog.file import iter_lines
from logsamples import (
    agent_chunk,
    checkpoint,
    checkpoint_params,
    line,
    lines_of,
    malformed_lines,
    prompt_request,
    prompt_response,
    request,
    response,
    sdk_session,
    thought_chunk,
    tool_call,
    turn_complete,
    usage_update,
    user_chunk,
)

# --- the ordinal rule, as a table ---------------------------------------------------

TEXT_AND_IMAGE = [
    {"type": "text", "text": "look at "},
    {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
    {"type": "text", "text": "this picture"},
]


@dataclass(frozen=True)
class Case:
    name: str
    entries: tuple[bytes, ...]
    # For each user message in order: (index of its first line, sub-session or None).
    messages: tuple[tuple[int, str | None], ...]


CASES = [
    Case("empty log", (), ()),
    Case(
        "system and assistant lines only",
        (sdk_session(), checkpoint(), agent_chunk("hello"), tool_call("t1")),
        (),
    ),
    Case(
        "user, assistant, user",
        (
            sdk_session(),
            checkpoint(),
            prompt_request(2, "one"),
            agent_chunk("ok"),
            prompt_response(2),
            checkpoint(1),
            turn_complete(),
            prompt_request(3, "two"),
        ),
        ((2, None), (7, None)),
    ),
    Case(
        "a multi-block prompt is one message",
        (prompt_request(1, TEXT_AND_IMAGE), agent_chunk("nice"), prompt_request(2, "next")),
        ((0, None), (2, None)),
    ),
    Case(
        "unmarked user chunks (echo, replay) are not counted",
        (
            prompt_request(1, "hi"),
            user_chunk("hi"),
            user_chunk("replayed older message"),
            agent_chunk("hello"),
            prompt_request(2, "again"),
            user_chunk("again"),
        ),
        ((0, None), (4, None)),
    ),
    Case(
        "a sub-session message between two top-level ones",
        (
            prompt_request(1, "delegate"),
            user_chunk("sub task", sub="a"),
            agent_chunk("sub answer", sub="a"),
            agent_chunk("done"),
            prompt_request(2, "thanks"),
        ),
        ((0, None), (1, "a"), (4, None)),
    ),
    Case(
        "chunks with one messageId are one message, a new id is a new message",
        (
            prompt_request(1, "go"),
            user_chunk("part 1 ", sub="a", message_id="m1"),
            user_chunk("part 2", sub="a", message_id="m1"),
            user_chunk("other", sub="a", message_id="m2"),
        ),
        ((0, None), (1, "a"), (3, "a")),
    ),
    Case(
        "the messageId may sit in _meta.cairnd",
        (
            user_chunk("x", sub="a", meta_message_id="m1"),
            user_chunk("y", sub="a", meta_message_id="m1"),
            user_chunk("z", sub="a", meta_message_id="m2"),
        ),
        ((0, "a"), (2, "a")),
    ),
    Case(
        "the same messageId after the sub-agent spoke is still the same message",
        (
            user_chunk("x", sub="a", message_id="m1"),
            agent_chunk("thinking", sub="a"),
            user_chunk("y", sub="a", message_id="m1"),
        ),
        ((0, "a"),),
    ),
    Case(
        "without messageId a contiguous run of one sub-session is one message",
        (
            user_chunk("x", sub="a"),
            user_chunk("y", sub="a"),
            thought_chunk("hmm"),  # the parent's lines do not end the run
            tool_call("t1"),
            user_chunk("z", sub="a"),
        ),
        ((0, "a"),),
    ),
    Case(
        "without messageId the sub-agent's answer ends the run",
        (
            user_chunk("x", sub="a"),
            agent_chunk("answer", sub="a"),
            user_chunk("y", sub="a"),
            tool_call("t2", sub="a"),
            user_chunk("z", sub="a"),
        ),
        ((0, "a"), (2, "a"), (4, "a")),
    ),
    Case(
        "without messageId another sub-session, a prompt or a turn end ends the run",
        (
            user_chunk("x", sub="a"),
            user_chunk("y", sub="b"),
            user_chunk("z", sub="a"),
            prompt_request(1, "top"),
            user_chunk("w", sub="a"),
            turn_complete(),
            user_chunk("v", sub="a"),
        ),
        ((0, "a"), (1, "b"), (2, "a"), (3, None), (4, "a"), (6, "a")),
    ),
    Case(
        "an empty sub-session (no user message) is passed over",
        (
            prompt_request(1, "go"),
            agent_chunk("sub agent output only", sub="a"),
            tool_call("t1", sub="a"),
            agent_chunk("done"),
            prompt_request(2, "next"),
        ),
        ((0, None), (4, None)),
    ),
    Case(
        "nested sub-sessions count the same, and the next top-level message is counted",
        (
            prompt_request(1, "go"),
            user_chunk("outer task", sub="a"),
            user_chunk("inner task", sub="a/b"),
            agent_chunk("inner answer", sub="a/b"),
            user_chunk("another inner", sub="x-7f3"),
            agent_chunk("outer answer", sub="a"),
            prompt_request(2, "after the nest"),
        ),
        ((0, None), (1, "a"), (2, "a/b"), (4, "x-7f3"), (6, None)),
    ),
    Case(
        "an empty or non-string subSession is no marker",
        (
            line(
                {
                    "jsonrpc": "2.0",
                    "method": "session/update",
                    "params": {
                        "update": {
                            "sessionUpdate": "user_message_chunk",
                            "content": {"type": "text", "text": "x"},
                            "_meta": {"cairnd": {"subSession": ""}},
                        }
                    },
                }
            ),
            line(
                {
                    "jsonrpc": "2.0",
                    "method": "session/update",
                    "params": {
                        "update": {
                            "sessionUpdate": "user_message_chunk",
                            "content": {"type": "text", "text": "x"},
                            "_meta": {"cairnd": {"subSession": 7}},
                        }
                    },
                }
            ),
        ),
        (),
    ),
    Case(
        "a session/prompt notification or response is not a request",
        (
            line({"jsonrpc": "2.0", "method": "session/prompt", "params": {"prompt": []}}),
            prompt_response(1),
            agent_chunk("talking about session/prompt and user_message_chunk"),
            b"not json but session/prompt user_message_chunk\n",
            b'{"type":"notification","timestamp":"x","notification":[1]}\n',
        ),
        (),
    ),
    Case(
        "a PostHog Code-shaped log",
        (
            sdk_session(quirk=True),
            request(0, "initialize", {"protocolVersion": 1}),
            response(0, {"protocolVersion": 1}),
            checkpoint(only_head=True, quirk=True),
            prompt_request(1, [{"type": "text", "text": "fix "}, {"type": "text", "text": "the bug"}]),
            user_chunk("fix the bug"),  # the agent's echo
            agent_chunk("Looking at it. I fixed the bug in main.py, see the diff."),
            usage_update(),
            prompt_response(1),
            checkpoint(only_head=True, head_sha="d" * 40),
            turn_complete(quirk=True),
            prompt_request(2, "now add a test"),
            user_chunk("now add a test"),
            agent_chunk("Done."),
            prompt_response(2),
            checkpoint(only_head=True, head_sha="e" * 40, quirk=True),
        ),
        ((4, None), (11, None)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_user_messages_are_counted_as_spec_4_says(case: Case) -> None:
    messages = count_user_messages(lines_of(*case.entries))
    assert [(m.line_index, m.sub_session) for m in messages] == list(case.messages)
    assert [m.ordinal for m in messages] == list(range(len(case.messages)))
    assert all(m.top_level == (m.sub_session is None) for m in messages)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_fork_cuts_at_top_level_messages_and_refuses_the_others(case: Case) -> None:
    pairs = lines_of(*case.entries)
    for k, (line_index, sub) in enumerate(case.messages):
        if sub is None:
            point = find_fork_point(pairs, k, "s1")
            assert (point.user_message_index, point.line_index) == (k, line_index)
            assert point.offset == pairs[line_index][0]
        else:
            with pytest.raises(CairnError) as raised:
                find_fork_point(pairs, k, "s1")
            assert raised.value.code == "fork_in_sub_session"
            assert f"user_message_index {k}" in raised.value.message
            assert repr(sub) in raised.value.message
    for k in (-1, len(case.messages), len(case.messages) + 1000):
        with pytest.raises(CairnError) as raised:
            find_fork_point(pairs, k, "s1")
        assert raised.value.code == "fork_out_of_range"


# --- the fork point in detail -----------------------------------------------------------

THREE_TURNS = (
    sdk_session(),
    checkpoint(0, head_sha="0" * 40),
    prompt_request(1, "first"),
    agent_chunk("one"),
    prompt_response(1),
    checkpoint(1, head_sha="1" * 40),
    turn_complete(),
    prompt_request(2, [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]),
    agent_chunk("two"),
    prompt_response(2),
    checkpoint(2, head_sha="2" * 40),
    turn_complete(),
    prompt_request(3, "third"),
)


def test_fork_at_0_keeps_no_turn_but_the_baseline() -> None:
    point = find_fork_point(lines_of(*THREE_TURNS), 0, "s1")
    assert point == ForkPoint(
        user_message_index=0,
        line_index=2,
        offset=len(THREE_TURNS[0]) + len(THREE_TURNS[1]),
        checkpoint=checkpoint_params(THREE_TURNS[1]),
        prefill="first",
    )


def test_fork_at_1_keeps_the_first_turn_whole_and_its_checkpoint() -> None:
    point = find_fork_point(lines_of(*THREE_TURNS), 1, "s1")
    assert point.line_index == 7
    assert point.offset == sum(len(entry) for entry in THREE_TURNS[:7])
    assert point.checkpoint == checkpoint_params(THREE_TURNS[5])
    assert point.prefill == "second"  # text blocks concatenated


def test_fork_before_any_checkpoint_has_none() -> None:
    point = find_fork_point(lines_of(prompt_request(1, "hi")), 0, "s1")
    assert point.checkpoint is None and point.line_index == 0 and point.offset == 0


def test_checkpoints_with_only_head_sha_and_the_quirk_spelling_are_returned_as_is() -> None:
    entries = (checkpoint(only_head=True, head_sha="f" * 40, quirk=True), prompt_request(1, "x"))
    assert find_fork_point(lines_of(*entries), 0, "s1").checkpoint == {"headSha": "f" * 40}


def test_out_of_range_says_how_many_messages_there_are() -> None:
    pairs = lines_of(*THREE_TURNS)
    with pytest.raises(CairnError) as raised:
        find_fork_point(pairs, 5, "s1")
    assert raised.value.as_dict() == {
        "code": "fork_out_of_range",
        "message": "user_message_index 5: session s1 has 3 user messages",
    }
    with pytest.raises(CairnError) as raised:
        find_fork_point(lines_of(), 0, "s9")
    assert raised.value.message == "user_message_index 0: session s9 has 0 user messages"
    with pytest.raises(CairnError) as raised:
        find_fork_point(lines_of(prompt_request(1, "x")), -1, "s9")
    assert raised.value.message == "user_message_index -1: session s9 has 1 user message"


def test_a_sub_session_hit_names_the_index_and_the_sub_session() -> None:
    entries = (prompt_request(1, "go"), user_chunk("task", sub="a/b"))
    with pytest.raises(CairnError) as raised:
        find_fork_point(lines_of(*entries), 1, "s1")
    assert raised.value.code == "fork_in_sub_session"
    assert "user_message_index 1" in raised.value.message
    assert "'a/b'" in raised.value.message


def test_a_mid_turn_log_counts_only_what_is_written() -> None:
    # Forking a session that is mid-turn: the message in flight is the last one.
    entries = (prompt_request(1, "first"), agent_chunk("working..."))
    assert find_fork_point(lines_of(*entries), 0, "s1").line_index == 0
    with pytest.raises(CairnError) as raised:
        find_fork_point(lines_of(*entries), 1, "s1")
    assert raised.value.code == "fork_out_of_range"


def test_the_search_stops_at_the_cut() -> None:
    def lines_then_explode():
        yield from lines_of(prompt_request(1, "a"), prompt_request(2, "b"))
        raise AssertionError("read past the cut")

    assert find_fork_point(lines_then_explode(), 1, "s1").prefill == "b"


def test_sub_session_message_text_joins_its_chunks() -> None:
    entries = (
        user_chunk("part 1, ", sub="a", message_id="m"),
        agent_chunk("...", sub="b"),
        user_chunk("part 2", sub="a", message_id="m"),
    )
    assert [m.text for m in count_user_messages(lines_of(*entries))] == ["part 1, part 2"]


# --- properties over random logs ----------------------------------------------------------

SUBS = ["a", "b", "a/b"]


@st.composite
def log_entries(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """A random log as (kind, line): kinds the model below knows how to count."""
    kinds = st.sampled_from(
        ["prompt", "echo", "sub", "sub_id", "agent", "agent_sub", "checkpoint", "turn", "other", "garbage"]
    )
    entries: list[tuple[str, bytes]] = []
    for i, kind in enumerate(draw(st.lists(kinds, max_size=40))):
        sub = draw(st.sampled_from(SUBS))
        if kind == "prompt":
            entries.append((kind, prompt_request(i, f"p{i}")))
        elif kind == "echo":
            entries.append((kind, user_chunk(f"e{i}")))
        elif kind == "sub":
            entries.append((f"sub:{sub}", user_chunk(f"s{i}", sub=sub)))
        elif kind == "sub_id":
            mid = draw(st.sampled_from(["m1", "m2"]))
            entries.append((f"sub_id:{sub}:{mid}", user_chunk(f"s{i}", sub=sub, message_id=mid)))
        elif kind == "agent":
            entries.append((kind, agent_chunk(f"a{i}")))
        elif kind == "agent_sub":
            entries.append((f"agent_sub:{sub}", agent_chunk(f"a{i}", sub=sub)))
        elif kind == "checkpoint":
            entries.append((kind, checkpoint(i, quirk=draw(st.booleans()))))
        elif kind == "turn":
            entries.append((kind, turn_complete()))
        elif kind == "other":
            entries.append((kind, usage_update()))
        else:
            entries.append((kind, draw(st.sampled_from([b"\n", b"{not json session/prompt\n", b"\xff\xfe\n"]))))
    return entries


def model_messages(entries: list[tuple[str, bytes]]) -> list[tuple[int, bool]]:
    """The SPEC 4 rule written the slow, obvious way: (line index, top level) per message."""
    messages: list[tuple[int, bool]] = []
    open_key: tuple[str, str | None] | None = None
    for index, (kind, _line) in enumerate(entries):
        if kind == "prompt":
            messages.append((index, True))
            open_key = None
        elif kind.startswith("sub:") or kind.startswith("sub_id:"):
            parts = kind.split(":")
            key = (parts[1], parts[2] if len(parts) == 3 else None)
            if key != open_key:
                messages.append((index, False))
            open_key = key
        elif open_key is not None and open_key[1] is None:
            if kind == "turn" or kind == f"agent_sub:{open_key[0]}":
                open_key = None
    return messages


@settings(max_examples=300, deadline=None)
@given(log_entries(), st.data())
def test_fork_point_properties(entries: list[tuple[str, bytes]], data: st.DataObject) -> None:
    pairs = lines_of(*(entry for _kind, entry in entries))
    expected = model_messages(entries)
    top_level = [k for k, (_index, top) in enumerate(expected) if top]
    k = data.draw(
        st.one_of(
            st.sampled_from(top_level) if top_level else st.just(0),
            st.integers(min_value=-3, max_value=len(expected) + 3),
        ),
        label="k",
    )
    counted = count_user_messages(pairs)
    assert [(m.line_index, m.top_level) for m in counted] == expected
    try:
        point = find_fork_point(pairs, k, "s1")
    except CairnError as error:
        if 0 <= k < len(expected):
            assert error.code == "fork_in_sub_session"
            assert not expected[k][1]
        else:
            assert error.code == "fork_out_of_range"
        return
    assert 0 <= k < len(expected) and expected[k][1]
    kept = [entry for _kind, entry in entries[: point.line_index]]
    # The cut is a line boundary and the prefix is exactly the kept lines.
    assert point.offset == sum(len(entry) for entry in kept)
    assert point.line_index == expected[k][0]
    assert all(entry.endswith(b"\n") for entry in kept)
    # The prefix parses, and has exactly k top-level-or-sub messages before the cut.
    assert len(count_user_messages(lines_of(*kept))) == k
    assert sum(top for _index, top in expected[:k]) == sum(kind == "prompt" for kind, _ in entries[: point.line_index])
    # The checkpoint is the last one before the cut.
    checkpoints = [entry for kind, entry in entries[: point.line_index] if kind == "checkpoint"]
    assert point.checkpoint == (parse_message(checkpoints[-1])["params"] if checkpoints else None)
    assert point.prefill == f"p{point.line_index}"



@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(malformed_lines(), max_size=20), st.integers(-2, 22))
def test_malformed_entries_never_raise_anything_but_the_two_errors(entries: list[bytes], k: int) -> None:
    pairs = lines_of(*entries)
    count_user_messages(pairs)
    try:
        find_fork_point(pairs, k, "s1")
    except CairnError as error:
        assert error.code in ("fork_out_of_range", "fork_in_sub_session")


# --- the fast path over a log file agrees with the plain one --------------------------

# Lines only the plain path's substring test would look at while an id-less run is
# open: an escaped slash hides the prompt mark, not the subSession one.
ESCAPED_PROMPT_IN_SUB = (
    b'{"type":"notification","timestamp":"t","notification":{"jsonrpc":"2.0","id":9,'
    b'"method":"session\\/prompt","params":{"prompt":[{"type":"text","text":"hidden"}],'
    b'"_meta":{"cairnd":{"subSession":"a"}}}}}\n'
)
ESCAPED_SUB_CHUNK = (
    b'{"type":"notification","timestamp":"t","notification":{"jsonrpc":"2.0","method":"session/update",'
    b'"params":{"update":{"sessionUpdate":"user\\u005fmessage_chunk","content":{"type":"text","text":"z"},'
    b'"_meta":{"cairnd":{"subSession":"b"}}}}}}\n'
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    log_entries(),
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from([ESCAPED_PROMPT_IN_SUB, ESCAPED_SUB_CHUNK, b"torn"])), max_size=3),
    st.integers(32, 400),
)
def test_reading_a_log_file_fast_finds_what_reading_every_line_finds(
    entries: list[tuple[str, bytes]], extra: list[tuple[int, bytes]], chunk: int
) -> None:
    lines = [entry for _kind, entry in entries]
    for position, extra_line in extra:
        lines.insert(min(position, len(lines)), extra_line if extra_line != b"torn" else b"")
    data = b"".join(lines) + (b"torn" if any(e == b"torn" for _p, e in extra) else b"")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.ndjson"
        path.write_bytes(data)
        plain = list(iter_lines(path))
        saved = log_module._SCAN_CHUNK
        log_module._SCAN_CHUNK = chunk
        try:
            assert count_user_messages(iter_lines(path)) == count_user_messages(plain)
            for k in range(-1, len(count_user_messages(plain)) + 2):
                assert fork_point_or_error(iter_lines(path), k) == fork_point_or_error(plain, k)
        finally:
            log_module._SCAN_CHUNK = saved


@settings(max_examples=200, deadline=None)
@given(log_entries())
def test_lines_fed_one_at_a_time_count_as_the_whole_log_does(entries: list[tuple[str, bytes]]) -> None:
    """`feed_line` (the web view's live page feeds it) is the same count: each message at
    the same line, with the same whole text, whatever line the state was carried over."""
    state = CountState()
    messages: list[UserMessage] = []
    texts: list[str] = []
    for index, (offset, line) in enumerate(lines_of(*(entry for _kind, entry in entries))):
        found, state = feed_line(CountState(state.ordinal, state.open_sub, state.checkpoint), index, offset, line)
        for event in found:
            if isinstance(event, UserMessage):
                messages.append(event)
                texts.append(event.text)
            else:
                assert isinstance(event, MoreText) and texts
                texts[-1] += event.text
    whole = count_user_messages(lines_of(*(entry for _kind, entry in entries)))
    assert [(m.ordinal, m.line_index, m.offset, m.sub_session) for m in messages] == \
        [(m.ordinal, m.line_index, m.offset, m.sub_session) for m in whole]
    assert texts == [m.text for m in whole]
    assert state.ordinal == len(whole)


def fork_point_or_error(lines: object, k: int) -> ForkPoint | str:
    try:
        return find_fork_point(lines, k, "s1")  # type: ignore[arg-type]
    except CairnError as error:
        return f"{error.code}: {error}"


def test_the_fast_path_reads_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "log.ndjson"
    entries = [checkpoint(0), prompt_request(1, "one"), agent_chunk("a"), turn_complete(), checkpoint(1),
               prompt_request(2, "two"), user_chunk("sub", sub="a"), agent_chunk("b", sub="a"), user_chunk("again", sub="a")]
    path.write_bytes(b"".join(entries))
    point = find_fork_point(iter_lines(path), 1, "s1")
    assert point.line_index == 5 and point.offset == sum(map(len, entries[:5]))
    assert point.checkpoint == checkpoint_params(entries[4]) and point.prefill == "two"
    assert [(m.line_index, m.top_level) for m in count_user_messages(iter_lines(path))] == [
        (1, True), (5, True), (6, False), (8, False)]
