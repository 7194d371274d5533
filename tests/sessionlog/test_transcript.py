"""What a log says about its session: turns with the checkpoint each left (a fork's
baseline is not its parent's), an open turn, whose agent session to resume, and the
conversation replayed to an agent that cannot load it natively."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cairnd.sessionlog.transcript import (
    SessionState,
    Turn,
    render_replay,
    replay_block,
    replay_prompt_block,
    session_state,
)
from logsamples import (
    agent_chunk,
    checkpoint,
    checkpoint_params,
    fork_meta,
    lines_of,
    malformed_lines,
    prompt_request,
    prompt_response,
    request,
    response,
    sdk_session,
    tool_call,
    turn_complete,
    user_chunk,
)

TWO_TURNS = (
    sdk_session("sdk-parent", "reference"),
    checkpoint(0, head_sha="0" * 40),
    prompt_request(2, "write a README"),
    user_chunk("write a README"),  # echo: not the agent's text
    agent_chunk("Writing "),
    tool_call("t1"),
    agent_chunk("it."),
    prompt_response(2),
    checkpoint(1, head_sha="1" * 40),
    turn_complete("end_turn"),
    prompt_request(3, [{"type": "text", "text": "delegate: "}, {"type": "text", "text": "tests"}]),
    user_chunk("tests", sub="a"),
    agent_chunk("sub-agent text", sub="a"),
    agent_chunk("Delegated."),
    prompt_response(3, "cancelled"),
    checkpoint(2, head_sha="2" * 40),
    turn_complete("cancelled"),
)


def test_a_finished_session() -> None:
    state = session_state(lines_of(*TWO_TURNS))
    assert state == SessionState(
        turns=2,
        open_turn=False,
        sdk_session_id="sdk-parent",
        adapter="reference",
        conversation=[
            Turn("write a README", "Writing it.", "end_turn", checkpoint_params(TWO_TURNS[8]),
                 checkpoint_params(TWO_TURNS[1])),
            Turn("delegate: tests", "Delegated.", "cancelled", checkpoint_params(TWO_TURNS[15]),
                 checkpoint_params(TWO_TURNS[8])),
        ],
    )


def test_without_agent_text_everything_else_is_the_same() -> None:
    full = session_state(lines_of(*TWO_TURNS))
    fast = session_state(lines_of(*TWO_TURNS), agent_text=False)
    assert [turn.agent_text for turn in fast.conversation] == ["", ""]
    assert fast.conversation == [
        Turn(turn.user_text, "", turn.stop_reason, turn.checkpoint, turn.previous_checkpoint, turn.inherited)
        for turn in full.conversation
    ]
    assert (fast.turns, fast.open_turn, fast.sdk_session_id, fast.adapter) == (
        full.turns,
        full.open_turn,
        full.sdk_session_id,
        full.adapter,
    )


def test_a_turn_cut_by_a_crash_is_open() -> None:
    state = session_state(lines_of(*TWO_TURNS, prompt_request(4, "crash"), agent_chunk("partial")))
    assert state.open_turn and state.turns == 2
    assert state.conversation[-1] == Turn("crash", "partial", None, None, checkpoint_params(TWO_TURNS[15]))
    # Recording it as interrupted closes it.
    state = session_state(
        lines_of(*TWO_TURNS, prompt_request(4, "crash"), checkpoint(3), turn_complete("interrupted"))
    )
    assert not state.open_turn and state.turns == 3
    assert state.conversation[-1].stop_reason == "interrupted"


def test_turn_complete_has_the_last_word_on_the_stop_reason() -> None:
    entries = (prompt_request(1, "x"), prompt_response(1, "end_turn"), turn_complete("agent_exited"))
    assert session_state(lines_of(*entries)).conversation[0].stop_reason == "agent_exited"
    # Without turn_complete (PostHog Code run locally), the prompt's response tells.
    entries = (prompt_request(1, "x"), prompt_response(1, "max_tokens"))
    assert session_state(lines_of(*entries)).conversation[0].stop_reason == "max_tokens"


def test_an_empty_log() -> None:
    assert session_state([]) == SessionState(0, False, None, None, [])


def test_the_last_sdk_session_wins_and_the_quirk_spelling_counts() -> None:
    state = session_state(
        lines_of(sdk_session("one", "reference"), sdk_session("two", "claude", quirk=True))
    )
    assert (state.sdk_session_id, state.adapter) == ("two", "claude")


def test_a_fork_does_not_resume_its_parents_agent_session() -> None:
    fork = (*TWO_TURNS[:10], fork_meta("f1", user_message_index=1), checkpoint(1, session="f1"))
    state = session_state(lines_of(*fork))
    assert state.sdk_session_id is None and state.adapter is None
    assert [(turn.user_text, turn.inherited) for turn in state.conversation] == [("write a README", True)]
    # Once the fork's own agent started, its entry names it.
    state = session_state(lines_of(*fork, sdk_session("sdk-fork", "reference", session="f1")))
    assert state.sdk_session_id == "sdk-fork"


def test_a_parents_open_turn_is_not_the_forks_to_interrupt() -> None:
    fork = (prompt_request(1, "mid-turn"), agent_chunk("..."), fork_meta(user_message_index=1))
    assert not session_state(lines_of(*fork)).open_turn


def test_agent_text_after_the_turn_ended_is_a_replay_and_not_counted() -> None:
    entries = (
        prompt_request(1, "hi"),
        agent_chunk("hello"),
        prompt_response(1),
        # The agent restarted and replayed its history on session/load.
        request(7, "session/load", {"sessionId": "sdk-1"}),
        user_chunk("hi"),
        agent_chunk("hello"),
        response(7, {}),
    )
    state = session_state(lines_of(*entries))
    assert state.conversation == [Turn("hi", "hello", "end_turn", None)]


def test_a_response_to_the_agents_own_request_does_not_end_the_turn() -> None:
    # The agent's ids live in their own space: its request 5 is not the prompt 5.
    entries = (
        prompt_request(5, "edit"),
        request(5, "fs/write_text_file", {"path": "/x/../../etc", "content": ""}),
        response(5, error={"code": -32602, "message": "outside the worktree"}),
        agent_chunk("could not write"),
        prompt_response(5),
    )
    state = session_state(lines_of(*entries))
    assert state.conversation == [Turn("edit", "could not write", "end_turn", None)]


def test_the_replay_is_plain_text_that_states_its_size() -> None:
    conversation = session_state(lines_of(*TWO_TURNS)).conversation
    text = render_replay(conversation)
    assert text.startswith("The conversation so far, replayed by cairnd")
    assert "User:\nwrite a README\n" in text
    assert "Assistant:\nWriting it.\n" in text
    assert "Assistant:\nDelegated.\n[turn ended: cancelled]\n" in text
    assert "sub-agent text" not in text
    assert "It holds 2 earlier user messages." in text
    assert "It holds 1 earlier user message." in render_replay([Turn("User:\nUser:", "", None)])
    assert replay_block(text) == {
        "type": "resource",
        "resource": {"uri": "cairnd://replay", "mimeType": "text/plain", "text": text},
    }
    block = replay_prompt_block("s1", conversation)
    assert block["resource"]["uri"] == "cairnd://replay/s1" and block["_meta"] == {"cairnd": {"userMessages": 2}}


@given(st.lists(st.sampled_from(list(TWO_TURNS) + [b"\xff\n", b"{}\n", b"[1]\n"]), max_size=30))
def test_session_state_never_raises_and_counts_turn_completes(entries: list[bytes]) -> None:
    state = session_state(lines_of(*entries))
    assert state.turns == sum(entry.count(b"turn_complete") for entry in entries)
    assert len(state.conversation) == sum(entry.count(b'"method":"session/prompt"') for entry in entries)
    render_replay(state.conversation)


@given(st.lists(st.one_of(malformed_lines(), st.sampled_from(TWO_TURNS)), max_size=25))
def test_malformed_entries_never_make_session_state_raise(entries: list[bytes]) -> None:
    state = session_state(lines_of(*entries))
    render_replay(state.conversation)
    assert state.sdk_session_id is None or isinstance(state.sdk_session_id, str)


# --- which checkpoint belongs to which turn -------------------------------------------------


def sha(ch: str) -> str:
    return ch * 40


def turns_of(*entries: bytes) -> list[Turn]:
    return session_state(lines_of(*entries), agent_text=False).conversation


def test_each_turn_gets_the_checkpoint_it_left_and_the_one_before_it() -> None:
    turns = turns_of(
        checkpoint(0, worktree_sha=sha("0")),
        prompt_request(1, "first"), agent_chunk("ok"), prompt_response(1), turn_complete(),
        checkpoint(1, worktree_sha=sha("1")),
        prompt_request(2, "second"), prompt_response(2, "cancelled"), turn_complete("cancelled"),
        checkpoint(2, worktree_sha=sha("2")),
    )
    assert [(t.user_text, t.stop_reason) for t in turns] == [("first", "end_turn"), ("second", "cancelled")]
    assert [(t.previous_checkpoint["worktreeSha"], t.checkpoint["worktreeSha"]) for t in turns] == [
        (sha("0"), sha("1")), (sha("1"), sha("2"))]
    assert not any(t.inherited for t in turns)


def test_a_turn_cut_short_has_no_checkpoint_of_its_own() -> None:
    turns = turns_of(checkpoint(0, worktree_sha=sha("0")), prompt_request(1, "crashed mid-way"))
    assert turns[0].checkpoint is None and turns[0].previous_checkpoint["worktreeSha"] == sha("0")
    assert turns[0].stop_reason is None


def test_a_forks_baseline_starts_its_first_turn_and_is_not_the_parents() -> None:
    turns = turns_of(
        checkpoint(0, worktree_sha=sha("0")),
        prompt_request(1, "kept"), prompt_response(1), turn_complete(),
        checkpoint(1, worktree_sha=sha("1")),
        fork_meta(user_message_index=1),
        checkpoint(1, worktree_sha=sha("f"), session="f1"),
        prompt_request(1, "the fork's own"), prompt_response(1), turn_complete(session="f1"),
        checkpoint(2, worktree_sha=sha("2"), session="f1"),
    )
    assert [t.inherited for t in turns] == [True, False]
    assert turns[0].checkpoint["worktreeSha"] == sha("1")
    assert turns[1].previous_checkpoint["worktreeSha"] == sha("f")
    assert turns[1].checkpoint["worktreeSha"] == sha("2")


def test_a_fork_cut_inside_a_turn_gives_that_turn_no_checkpoint_of_the_fork() -> None:
    turns = turns_of(
        checkpoint(0, worktree_sha=sha("0")),
        prompt_request(1, "cut mid-turn"), agent_chunk("..."),
        fork_meta(user_message_index=1), checkpoint(0, worktree_sha=sha("f"), session="f1"),
    )
    assert turns[0].checkpoint is None and turns[0].inherited


def test_a_fork_of_a_fork_inherits_everything_before_its_own_cut() -> None:
    turns = turns_of(
        prompt_request(1, "a"), prompt_response(1), turn_complete(), checkpoint(1),
        fork_meta(session="f1"), checkpoint(1, session="f1"),
        prompt_request(1, "b"), prompt_response(1), turn_complete(), checkpoint(2, session="f1"),
        fork_meta(session="f2", parent="f1", user_message_index=2), checkpoint(2, session="f2"),
    )
    assert [t.inherited for t in turns] == [True, True]
