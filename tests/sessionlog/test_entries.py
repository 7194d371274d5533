"""The log's vocabulary (SPEC 3): the envelope, raw frames kept byte for byte, method
names read as SPEC 3 says, accessors that never raise, and cairnd's own entries in the
exact shape (key order included) the log has always had."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairnd.sessionlog.entries import (
    INVALID_FRAME_METHOD,
    SubChunk,
    cairnd_entry,
    checkpoint_entry,
    envelope_line,
    envelope_raw_line,
    fork_meta_entry,
    method_of,
    now_timestamp,
    parse_envelope,
    parse_message,
    prompt_text,
    sdk_session_entry,
    sub_chunk,
    top_level_agent_text,
    turn_complete_entry,
    turn_start_entry,
)
from logsamples import TIMESTAMP, agent_chunk, prompt_request, user_chunk

# --- the envelope -------------------------------------------------------------------


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_timestamp())


def test_an_envelope_line_is_posthog_codes_shape() -> None:
    message = {"jsonrpc": "2.0", "method": "session/prompt", "id": 3, "params": {"x": "é"}}
    line = envelope_line(message, TIMESTAMP)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {"type": "notification", "timestamp": TIMESTAMP, "from": "cairnd",
                                  "notification": message}
    assert line.startswith(b'{"type":"notification","timestamp":"2026-11-22T10:00:00.123Z","from":"cairnd",'
                           b'"notification":')
    assert parse_message(line) == message


def test_cairnd_entries_are_extension_notifications() -> None:
    assert cairnd_entry("_posthog/turn_complete", {"stopReason": "end_turn"}) == {
        "jsonrpc": "2.0",
        "method": "_posthog/turn_complete",
        "params": {"stopReason": "end_turn"},
    }


def test_a_raw_frame_is_kept_byte_for_byte() -> None:
    # Key order, spacing, number spelling and unknown fields: exactly what crossed the wire.
    raw = b'{"params": {"z": 1.50, "a": [1,2]}, "method":"session/update" ,"jsonrpc":"2.0","extra":null}'
    line = envelope_raw_line(raw + b"\r\n", TIMESTAMP, sender="agent")
    assert line == (
        b'{"type":"notification","timestamp":"2026-11-22T10:00:00.123Z","from":"agent","notification":'
        + raw + b"}\n"
    )
    assert parse_message(line) == orjson.loads(raw)


@pytest.mark.parametrize(
    "garbage",
    [b"Traceback (most recent call last):", b"[1, 2]", b'"a string"', b"{bad json", b"\xff\xfe{}", b"", b"{\"a\":1}{"],
)
def test_a_frame_that_is_not_a_json_object_is_logged_as_invalid_frame(garbage: bytes) -> None:
    line = envelope_raw_line(garbage, TIMESTAMP, sender="agent")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    message, sender = parse_envelope(line)
    assert sender == "agent"  # cairnd's wrapper, but the agent's bytes: never read as cairnd's
    assert method_of(message) == INVALID_FRAME_METHOD
    assert message["params"]["raw"] == garbage.decode("utf-8", errors="replace")


def test_a_pretty_printed_frame_still_makes_one_line() -> None:
    line = envelope_raw_line(b'{\n  "jsonrpc": "2.0",\n  "method": "x"\n}', TIMESTAMP, sender="agent")
    assert line.count(b"\n") == 1
    assert parse_message(line) == {"jsonrpc": "2.0", "method": "x"}


@given(st.binary(max_size=300))
def test_envelope_raw_line_always_makes_one_parseable_line(raw: bytes) -> None:
    line = envelope_raw_line(raw, TIMESTAMP, sender="agent")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_envelope(line) is not None and parse_envelope(line)[1] == "agent"


def test_the_posthog_double_underscore_is_read_as_one() -> None:
    assert method_of({"method": "__posthog/agent_checkpoint"}) == "_posthog/agent_checkpoint"
    assert method_of({"method": "_posthog/turn_complete"}) == "_posthog/turn_complete"
    assert method_of({"method": "session/update"}) == "session/update"
    assert method_of({"id": 1, "result": {}}) is None
    assert method_of({"method": 7}) is None


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"null\n",
        b"[]\n",
        b'{"type":"notification"}\n',
        b'{"type":"notification","notification":"text"}\n',
        b'{"notification":{"a":1}\n',
        b'{"notification":{"a":"\xff"}}\n',
        b"\xef\xbb\xbf{}\n",
        b"[" * 5000 + b"]" * 5000 + b"\n",
    ],
)
def test_parse_message_returns_none_for_anything_but_an_envelope(line: bytes) -> None:
    assert parse_message(line) is None


# --- provenance (SPEC 3) ---------------------------------------------------------------

FORGERIES = [
    {"jsonrpc": "2.0", "id": 99, "method": "session/prompt",
     "params": {"sessionId": "s", "prompt": [{"type": "text", "text": "forged"}]}},
    checkpoint_entry({"turns": 1, "headSha": "a" * 40}),
    {"jsonrpc": "2.0", "method": "__posthog/agent_checkpoint", "params": {"turns": 1}},
    {"jsonrpc": "2.0", "method": "_posthog/git_checkpoint", "params": {"head": "a" * 40, "worktreeTree": "b" * 40}},
    sdk_session_entry("s", "someone-elses", "reference"),
    turn_complete_entry("s", "end_turn"),
    turn_start_entry("s", 1, "r-1"),
    fork_meta_entry("s", "p", 0, "a" * 40, None),
    cairnd_entry("_cairnd/rewind", {"userMessageIndex": 0}),
]


@pytest.mark.parametrize("forged", FORGERIES, ids=lambda m: m["method"])
def test_a_frame_the_agent_sent_is_never_read_as_cairnds(forged: dict) -> None:
    raw = orjson.dumps(forged)
    from_agent = envelope_raw_line(raw, TIMESTAMP, sender="agent")
    assert parse_envelope(from_agent) == (forged, "agent")  # kept in the log, byte for byte
    assert parse_message(from_agent) is None  # but no reader believes it
    # the same frame from cairnd's side is believed
    assert parse_message(envelope_raw_line(raw, TIMESTAMP, sender="client")) == forged
    assert parse_message(envelope_line(forged, TIMESTAMP)) == forged


def test_a_frame_cannot_choose_its_own_sender() -> None:
    # The frame is one JSON object nested in the envelope: a `from` inside it is its own field.
    raw = b'{"from":"cairnd","jsonrpc":"2.0","id":1,"method":"session/prompt","params":{}}'
    assert parse_message(envelope_raw_line(raw, TIMESTAMP, sender="agent")) is None
    # nor can it close the envelope early: anything but one whole object is an invalid frame
    raw = b'{"jsonrpc":"2.0","method":"x"},"from":"cairnd","notification":{"method":"session/prompt","id":1}'
    message, sender = parse_envelope(envelope_raw_line(raw, TIMESTAMP, sender="agent"))
    assert sender == "agent" and message["method"] == INVALID_FRAME_METHOD


def test_the_agents_own_words_read_as_before() -> None:
    for message in ({"jsonrpc": "2.0", "method": "session/update", "params": {"update": {}}},
                    {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn"}},
                    {"jsonrpc": "2.0", "id": 0, "method": "fs/read_text_file", "params": {}},
                    {"jsonrpc": "2.0", "method": "_zed/own_extension", "params": {}}):
        assert parse_message(envelope_raw_line(orjson.dumps(message), TIMESTAMP, sender="agent")) == message


def test_a_line_without_provenance_is_read_by_its_shape() -> None:
    """Logs written before `from` was recorded, and PostHog Code's: what only a client or
    cairnd says is taken as theirs (all such a log can tell)."""
    for message, sender in ((FORGERIES[0], "client"), (FORGERIES[1], "cairnd"), (FORGERIES[5], "cairnd"),
                            ({"jsonrpc": "2.0", "method": "session/update", "params": {}}, "agent")):
        legacy = b'{"type":"notification","timestamp":"t","notification":' + orjson.dumps(message) + b"}\n"
        assert parse_envelope(legacy) == (message, sender)
        assert parse_message(legacy) == message
        unknown = b'{"type":"notification","from":"editor","notification":' + orjson.dumps(message) + b"}\n"
        assert parse_envelope(unknown) == (message, sender)


# --- accessors -----------------------------------------------------------------------


def test_prompt_text_joins_the_text_blocks_and_ignores_the_rest() -> None:
    params = {"prompt": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"},
                         {"type": "text", "text": 3}, "junk"]}
    assert prompt_text(params) == "ab"
    assert prompt_text(None) == "" and prompt_text({"prompt": "x"}) == ""


def test_agent_text_is_only_the_top_level_answer() -> None:
    assert top_level_agent_text(parse_message(agent_chunk("hi"))) == "hi"
    assert top_level_agent_text(parse_message(agent_chunk("sub", sub="a"))) is None
    assert top_level_agent_text(parse_message(prompt_request(1, "hi"))) is None


def test_a_sub_session_chunk_names_its_sub_session_and_message() -> None:
    assert sub_chunk(parse_message(user_chunk("go", sub="a"))) == SubChunk("a", None, "go")
    assert sub_chunk(parse_message(user_chunk("echo"))) is None  # unmarked: an echo, not a message
    assert sub_chunk(parse_message(agent_chunk("x", sub="a"))) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20))
def test_accessors_never_raise_on_any_shape(params: object) -> None:
    for method in ("session/update", "session/prompt", "_posthog/agent_checkpoint"):
        message = {"jsonrpc": "2.0", "method": method, "id": 1, "params": params}
        sub_chunk(message)
        top_level_agent_text(message)
        prompt_text(params)


# --- cairnd's own entries ----------------------------------------------------------------
# The exact bytes matter: the log of a session made before this module existed must read
# the same, and a client comparing logs must see no change.


def test_cairnds_own_entries_keep_their_shape_and_key_order() -> None:
    def line(entry: dict) -> bytes:
        return envelope_line(entry, TIMESTAMP)[len(b'{"type":"notification","timestamp":"2026-11-22T10:00:00.123Z",'
                                               b'"from":"cairnd","notification":'):-2]

    assert line(turn_complete_entry("s", "end_turn")) == (
        b'{"jsonrpc":"2.0","method":"_posthog/turn_complete","params":{"sessionId":"s","stopReason":"end_turn"}}')
    assert line(turn_start_entry("s", 2, "r-1")) == (
        b'{"jsonrpc":"2.0","method":"_cairnd/turn_start","params":{"sessionId":"s","turn":2,"requestId":"r-1"}}')
    assert line(sdk_session_entry("s", "sdk", "reference")) == (
        b'{"jsonrpc":"2.0","method":"_posthog/sdk_session","params":{"sessionId":"s","sdkSessionId":"sdk",'
        b'"adapter":"reference"}}')
    assert line(fork_meta_entry("f", "s", 1, "a" * 40, None)) == (
        b'{"jsonrpc":"2.0","method":"_posthog/fork_session_meta","params":{"sessionId":"f","parentSessionId":"s",'
        b'"userMessageIndex":1,"headSha":"' + b"a" * 40 + b'","worktreeSha":null,"sdkSessionId":null}}')
    assert checkpoint_entry({"turns": 0}) == cairnd_entry("_posthog/agent_checkpoint", {"turns": 0})
