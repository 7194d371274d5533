"""What the web view reads out of a log (cairnd.web.conversation, cairnd.web.pages):
ordinals as the fork rule counts them, pages that carry on exactly where the last
one stopped, sub-sessions folded, tool calls patched, and never an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairnd.sessionlog.forkpoint import count_user_messages
from cairnd.web.conversation import ConversationReader, fold
from cairnd.web.pages import decode_cursor, encode_cursor, read_page
from logsamples import (
    agent_chunk,
    checkpoint,
    fork_meta,
    line,
    lines_of,
    malformed_lines,
    prompt_request,
    prompt_response,
    thought_chunk,
    tool_call,
    turn_complete,
    usage_update,
    user_chunk,
)


def tool_update(call: str, status: str, output: str) -> bytes:
    return line({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "sdk-1", "update": {
        "sessionUpdate": "tool_call_update", "toolCallId": call, "status": status,
        "content": [{"type": "content", "content": {"type": "text", "text": output}}]}}})


def sample_log() -> list[bytes]:
    return [
        checkpoint(0, worktree_sha="0" * 40),
        prompt_request(1, "first <b>prompt</b>"),
        user_chunk("first <b>prompt</b>"),  # an echo: not a message
        tool_call("call-1", "write a.txt"),
        tool_update("call-1", "completed", "wrote a.txt"),
        agent_chunk("hello ", message_id="m1"),
        agent_chunk("there", message_id="m1"),
        agent_chunk("again", message_id="m2"),
        usage_update(),
        prompt_response(1),
        turn_complete(),
        checkpoint(1, worktree_sha="1" * 40),
        prompt_request(2, "delegate twice"),
        user_chunk("look ", sub="d1", message_id="u1"),
        user_chunk("around", sub="d1", message_id="u1"),
        agent_chunk("[d1] done", sub="d1", message_id="a1"),
        user_chunk("no id one", sub="d2"),
        user_chunk(" continued", sub="d2"),
        tool_call("call-2", "write b.txt", sub="d2"),
        thought_chunk("thinking"),
        agent_chunk("delegated"),
        prompt_response(2),
        turn_complete(),
        checkpoint(2, worktree_sha="2" * 40),
        fork_meta(),
        checkpoint(2, worktree_sha="2" * 40),
        prompt_request(3, "third"),
        tool_call("call-1", "write c.txt"),  # a restarted agent counts its calls again
        tool_update("call-1", "failed", "no space"),
    ]


def one_pass(entries: list[bytes]) -> list[dict[str, Any]]:
    reader = ConversationReader()
    return [op for offset, entry in lines_of(*entries) for op in reader.feed(offset, entry)]


def test_user_messages_carry_the_ordinals_a_fork_request_means() -> None:
    entries = sample_log()
    users = [op["item"] for op in one_pass(entries) if op["op"] == "add" and op["item"]["kind"] == "user"]
    counted = count_user_messages(lines_of(*entries))
    assert [(u["ordinal"], u["parent"] is None) for u in users] == [(m.ordinal, m.top_level) for m in counted]
    assert [u["key"] for u in users] == ["u0", "u1", "u2", "u3", "u4"]


def test_a_page_folds_messages_tool_calls_and_sub_sessions() -> None:
    items, leftover = fold(one_pass(sample_log()))
    assert leftover == []
    kinds = [item["kind"] for item in items]
    assert kinds == ["checkpoint", "user", "tool", "agent", "agent", "turn_end", "checkpoint",
                     "user", "sub", "sub", "thought", "agent", "turn_end", "checkpoint",
                     "fork_meta", "checkpoint", "user", "tool"]
    first_tool = items[2]
    assert (first_tool["title"], first_tool["status"], first_tool["output"]) == ("write a.txt", "completed", "wrote a.txt")
    assert [items[3]["text"], items[4]["text"]] == ["hello there", "again"]  # one bubble per message id
    d1, d2 = items[8], items[9]
    assert [(c["kind"], c["text"]) for c in d1["children"]] == [("user", "look around"), ("agent", "[d1] done")]
    assert d2["children"][0]["text"] == "no id one continued"
    assert d2["children"][1]["kind"] == "tool" and d2["children"][1]["title"] == "write b.txt"
    assert items[6]["previous"] == "0" * 40 and items[6]["worktreeSha"] == "1" * 40
    # turns restart their tool call ids: keys are per turn
    assert items[17]["key"] == "tc2-call-1" and items[17]["status"] == "failed"
    assert items[2]["key"] == "tc0-call-1"


@pytest.mark.parametrize("cut", range(1, 29))
def test_a_page_cut_anywhere_carries_on_with_the_same_ops(cut: int) -> None:
    entries = sample_log()
    whole = one_pass(entries)
    pairs = lines_of(*entries)
    first = ConversationReader()
    ops = [op for offset, entry in pairs[:cut] for op in first.feed(offset, entry)]
    cursor = encode_cursor(first.state())  # through the URL, as the page does
    second = ConversationReader(decode_cursor(cursor))
    ops += [op for offset, entry in pairs[cut:] for op in second.feed(offset, entry)]
    assert ops == whole


def test_updates_for_an_earlier_page_are_left_over_for_the_page_to_apply() -> None:
    entries = sample_log()
    pairs = lines_of(*entries)
    reader = ConversationReader()
    for offset, entry in pairs[:4]:  # up to the first tool call
        reader.feed(offset, entry)
    ops = [op for offset, entry in pairs[4:8] for op in reader.feed(offset, entry)]
    items, leftover = fold(ops)
    assert leftover[0] == {"op": "patch", "key": "tc0-call-1", "status": "completed", "output": "wrote a.txt",
                           "title": None}
    assert [item["text"] for item in items] == ["hello there", "again"]


def test_read_page_stops_after_a_screenful_and_the_next_page_follows_on(tmp_path: Path) -> None:
    log = tmp_path / "log.ndjson"
    turns = [entry for n in range(40) for entry in (prompt_request(n, f"message {n}"), agent_chunk(f"answer {n}"),
                                                     prompt_response(n), turn_complete())]
    log.write_bytes(b"".join(turns) + b'{"torn": ')  # a torn tail is not there yet
    pages, state, seen = 0, None, []
    while True:
        page = read_page(log, state, max_items=25)
        pages += 1
        seen += [item["text"] for item in page.items if item["kind"] == "user"]
        state = page.state
        if page.at_end:
            break
    assert pages == 5
    assert seen == [f"message {n}" for n in range(40)]
    assert state["offset"] == len(b"".join(turns))
    with pytest.raises(Exception, match="not the start of a line"):
        read_page(log, {"offset": 3})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(malformed_lines(), st.sampled_from(sample_log())), max_size=30))
def test_no_log_line_breaks_the_reader(entries: list[bytes]) -> None:
    items, _leftover = fold(one_pass(entries))
    orjson.dumps(items)  # plain data, for templates and JSON


def test_a_cursor_is_only_the_readers_own_state() -> None:
    assert decode_cursor(encode_cursor(ConversationReader().state()))["offset"] == 0
    for bad in ({"offset": -1}, {"offset": True}, {"offset": 0, "groups": 5}, {"offset": 0, "evil": 1},
                {"offset": 0, "sub": {"d1": "x"}}, {"offset": 0, "running": 1}, [1]):
        with pytest.raises(Exception, match="not a page cursor"):
            decode_cursor(encode_cursor(bad))  # type: ignore[arg-type]
