"""Provenance (SPEC 3): every reader of a log takes top-level user messages, turns,
checkpoints, the agent identity and cairnd's entries only from lines cairnd wrote or
frames it sent; what the agent sent counts only as the agent's own words. Logs without
provenance (older cairnd, PostHog Code) read as they always did."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairnd.fleet.materialise import checkpoints_in
from cairnd.sessionlog import cutindex
from cairnd.sessionlog.file import iter_lines
from cairnd.sessionlog.forkpoint import count_user_messages, find_fork_point
from cairnd.sessionlog.transcript import session_state, turn_of_request
from cairnd.sessions.rewind import kept_length
from cairnd.web.conversation import ConversationReader
from logsamples import (
    agent_chunk,
    as_agent,
    checkpoint,
    checkpoint_params,
    legacy,
    lines_of,
    log_bytes,
    prompt_request,
    prompt_response,
    sdk_session,
    turn_complete,
    user_chunk,
)
from cairnd.sessionlog.entries import cairnd_entry, envelope_line, turn_start_entry

REAL_1 = checkpoint(1, head_sha="1" * 40, worktree_sha="2" * 40)
FORGED_CHECKPOINT = as_agent(checkpoint(1, head_sha="e" * 40, worktree_sha="f" * 40))


def session_log() -> list[bytes]:
    """Two real turns; during the second the agent forges a checkpoint, an identity, a
    turn end and a prompt, then the real checkpoint of that turn, then (after it, from a
    background process) another forged checkpoint and prompt before the real third prompt."""
    return [
        sdk_session("real-sdk"),
        checkpoint(0),
        prompt_request(1, "one"),
        agent_chunk("ok"),
        prompt_response(1),
        turn_complete(),
        REAL_1,
        prompt_request(2, "two"),
        FORGED_CHECKPOINT,
        as_agent(sdk_session("not-mine")),
        as_agent(turn_complete()),
        as_agent(prompt_request("f1", "FORGED")),
        as_agent(user_chunk("delegated", sub="helper")),  # the agent's own account: a sub-session message
        prompt_response(2),
        turn_complete(),
        checkpoint(2, head_sha="3" * 40, worktree_sha="4" * 40),
        FORGED_CHECKPOINT,
        as_agent(prompt_request("f2", "FORGED AGAIN")),
        prompt_request(3, "three"),
    ]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "log.ndjson"
    path.write_bytes(log_bytes(*session_log()))
    return path


def test_a_fork_counts_only_the_prompts_cairnd_sent(log_file: Path) -> None:
    for source in (lines_of(*session_log()), iter_lines(log_file)):  # the plain path and the marked one
        messages = count_user_messages(source)
        assert [(m.top_level, m.text) for m in messages] == [(True, "one"), (True, "two"), (False, "delegated"),
                                                              (True, "three")]
    point = find_fork_point(iter_lines(log_file), 3, "s1")
    assert point.prefill == "three"
    assert point.checkpoint == checkpoint_params(checkpoint(2, head_sha="3" * 40, worktree_sha="4" * 40))
    assert find_fork_point(lines_of(*session_log()), 1, "s1").checkpoint == checkpoint_params(REAL_1)


def test_the_cut_index_agrees_and_an_index_made_by_the_old_rule_is_rebuilt(log_file: Path) -> None:
    point = cutindex.find_cut(log_file, 3, "s1")
    assert (point.prefill, point.checkpoint["headSha"]) == ("three", "3" * 40)
    index = cutindex.index_path(log_file)
    assert b'"v":2' in index.read_bytes()
    # an index an older cairnd wrote (no "v"), counting the forged prompts: not believed
    index.write_bytes(index.read_bytes().replace(b'"v":2,', b""))
    cutindex._cache.clear()
    point = cutindex.find_cut(log_file, 3, "s1")
    assert (point.prefill, point.checkpoint["headSha"]) == ("three", "3" * 40)
    assert b'"v":2' in index.read_bytes()


def test_turns_and_the_agent_identity_come_from_cairnd_only() -> None:
    state = session_state(lines_of(*session_log()))
    assert [turn.user_text for turn in state.conversation] == ["one", "two", "three"]
    assert state.turns == 2 and state.open_turn
    assert state.sdk_session_id == "real-sdk"
    assert state.conversation[1].checkpoint["headSha"] == "3" * 40
    assert state.conversation[2].previous_checkpoint["headSha"] == "3" * 40


def test_a_forged_turn_start_answers_no_request() -> None:
    lines = session_log() + [as_agent(envelope_line(turn_start_entry("s1", 3, "req-1")))]
    assert turn_of_request(lines_of(*lines), "req-1") is None


def test_a_rewind_keeps_what_cairnds_entries_say() -> None:
    lines = [prompt_request(1, "one"), turn_complete(), REAL_1,
             as_agent(envelope_line(turn_start_entry("s1", 2, None))), agent_chunk("_cairnd/turn_start"),
             envelope_line(turn_start_entry("s1", 2, None)), prompt_request(2, "two")]
    pairs = lines_of(*lines)
    assert kept_length(pairs, pairs[-1][0]) == pairs[-2][0]  # the real turn_start, not the forged one


def test_the_fleet_materialises_only_real_checkpoints() -> None:
    assert [c["headSha"] for c in checkpoints_in(log_bytes(*session_log()))] == ["a" * 40, "1" * 40, "3" * 40]


def test_the_web_view_shows_no_forged_prompt_or_checkpoint() -> None:
    reader = ConversationReader()
    items = []
    for offset, line in lines_of(*session_log()):
        items.extend(op["item"] for op in reader.feed(offset, line) if op["op"] == "add")
    assert [(i["ordinal"], i["text"]) for i in items if i["kind"] == "user"] == \
        [(0, "one"), (1, "two"), (2, "delegated"), (3, "three")]
    assert [i["headSha"] for i in items if i["kind"] == "checkpoint"] == ["a" * 40, "1" * 40, "3" * 40]
    assert len([i for i in items if i["kind"] == "turn_end"]) == 2


def test_a_log_without_provenance_reads_as_before(tmp_path: Path) -> None:
    """Written before `from` existed (or by PostHog Code): nothing tells the agent's frames
    from cairnd's, so what only cairnd says is taken as cairnd's, as it always was."""
    old = [legacy(line) for line in session_log()]
    assert b'"from"' not in log_bytes(*old)
    texts = [m.text for m in count_user_messages(lines_of(*old)) if m.top_level]
    assert texts == ["one", "two", "FORGED", "FORGED AGAIN", "three"]
    # a fork of such a log, once cairnd goes on writing it, trusts its own lines only
    mixed = old + [as_agent(prompt_request("f3", "FORGED LATER")), envelope_line(cairnd_entry("_x/y", {}))]
    assert "FORGED LATER" not in [m.text for m in count_user_messages(lines_of(*mixed))]
