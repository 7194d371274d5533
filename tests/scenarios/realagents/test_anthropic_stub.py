"""The Anthropic Messages-API stub speaks the wire shape Claude Code reads, and follows its script."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import orjson
import pytest

from .anthropic_stub import (
    AnthropicStub,
    bash,
    edit_file,
    prompt_texts,
    stall,
    text,
    tool_results,
    write_file,
)

TOOLS = [{"name": "Write", "input_schema": {"type": "object"}}]


def post(stub: AnthropicStub, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=30)
    conn.request("POST", path, body=orjson.dumps(body), headers={"Content-Type": "application/json"})
    return conn.getresponse()


def sse_events(response: http.client.HTTPResponse) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a whole event stream (the stub closes the connection at its end)."""
    events = []
    for block in response.read().decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def main_call(stub: AnthropicStub, user_text: str = "hi") -> list[tuple[str, dict[str, Any]]]:
    response = post(
        stub,
        "/v1/messages?beta=true",
        {
            "model": "claude-sonnet-4-6",
            "stream": True,
            "tools": TOOLS,
            "messages": [{"role": "user", "content": [{"type": "text", "text": user_text}]}],
        },
    )
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    return sse_events(response)


def test_a_text_reply_streams_one_text_block_and_ends_the_turn() -> None:
    with AnthropicStub([text("Hello there.")]) as stub:
        events = main_call(stub)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Hello there."}
    assert events[4][1]["delta"]["stop_reason"] == "end_turn"


def test_a_tool_use_reply_streams_its_input_as_json_and_stops_for_the_tool() -> None:
    with AnthropicStub([write_file("/repo/a.txt", "hi\n")]) as stub:
        events = main_call(stub)
    start = events[1][1]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "Write" and start["id"].startswith("toolu_")
    delta = events[2][1]["delta"]
    assert delta["type"] == "input_json_delta"
    assert json.loads(delta["partial_json"]) == {"file_path": "/repo/a.txt", "content": "hi\n"}
    assert events[4][1]["delta"]["stop_reason"] == "tool_use"


def test_tool_helpers_use_claude_codes_tool_names_and_inputs() -> None:
    assert edit_file("/r/a", "x", "y").name == "Edit"
    assert edit_file("/r/a", "x", "y").input == {
        "file_path": "/r/a",
        "old_string": "x",
        "new_string": "y",
        "replace_all": False,
    }
    assert bash("ls").name == "Bash" and bash("ls").input["command"] == "ls"


def test_only_streaming_calls_with_tools_consume_the_script() -> None:
    with AnthropicStub([text("scripted")]) as stub:
        side = post(stub, "/v1/messages", {"model": "claude-haiku", "max_tokens": 10, "messages": []})
        assert side.status == 200 and json.loads(side.read())["content"][0]["type"] == "text"
        side_stream = post(stub, "/v1/messages", {"model": "claude-haiku", "stream": True, "messages": []})
        assert [n for n, _ in sse_events(side_stream)][-1] == "message_stop"
        count = post(stub, "/v1/messages/count_tokens", {"messages": []})
        assert json.loads(count.read()) == {"input_tokens": 10}
        assert stub.remaining() == [text("scripted")]
        events = main_call(stub)
        assert events[2][1]["delta"]["text"] == "scripted"
        assert [r.kind for r in stub.requests()] == ["side", "side", "count_tokens", "main"]


def test_probes_and_unknown_paths_get_answers_and_are_recorded() -> None:
    with AnthropicStub() as stub:
        conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=30)
        conn.request("HEAD", "/")
        assert conn.getresponse().status == 200
        assert post(stub, "/v1/other", {}).status == 404
        assert [(r.method, r.kind) for r in stub.requests()] == [("HEAD", "probe"), ("POST", "other")]


def test_a_main_call_past_the_end_of_the_script_still_ends_the_turn_and_is_counted() -> None:
    with AnthropicStub() as stub:
        events = main_call(stub)
        assert events[4][1]["delta"]["stop_reason"] == "end_turn"
        assert stub.unscripted == 1


def test_every_request_body_is_recorded_in_order() -> None:
    with AnthropicStub([text("one"), text("two")]) as stub:
        main_call(stub, "first")
        main_call(stub, "second")
        assert [prompt_texts(body) for body in stub.main_requests()] == [["first"], ["second"]]
        assert stub.requests()[0].query == {"beta": ["true"]}


def test_prompt_texts_leaves_out_claude_codes_own_context_and_tool_results() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>\nskills</system-reminder>"},
                    {"type": "text", "text": "<command-name>/model</command-name>"},
                    {"type": "text", "text": "<local-command-stdout>Set model</local-command-stdout>"},
                    {"type": "text", "text": "first prompt"},
                ],
            },
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
            {"role": "user", "content": "second prompt"},
        ]
    }
    assert prompt_texts(body) == ["first prompt", "second prompt"]
    assert tool_results(body) == [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]


def test_a_stall_hangs_mid_stream_until_released_then_ends_the_turn() -> None:
    with AnthropicStub([stall("Thinking", "Done.")]) as stub:
        response = post(stub, "/v1/messages", {"model": "m", "stream": True, "tools": TOOLS, "messages": []})
        assert stub.wait_stalled(30)
        stub.release()
        events = sse_events(response)
    texts = [data["delta"].get("text") for name, data in events if name == "content_block_delta"]
    assert texts == ["Thinking", " Done."]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert not stub.requests()[0].aborted_by_client


def test_a_stall_the_client_walks_away_from_is_marked_aborted() -> None:
    with AnthropicStub([stall()]) as stub:
        sock = socket.create_connection(("127.0.0.1", stub.port), timeout=30)
        body = orjson.dumps({"model": "m", "stream": True, "tools": TOOLS, "messages": []})
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        assert stub.wait_stalled(30)
        sock.close()
        assert stub.wait_requests(lambda recs: recs[0].aborted_by_client, 30)


def test_release_frees_only_the_stalls_already_started() -> None:
    with AnthropicStub([stall(), stall()]) as stub:
        first = post(stub, "/v1/messages", {"model": "m", "stream": True, "tools": TOOLS, "messages": []})
        assert stub.wait_stalled(30)
        stub.release()
        sse_events(first)
        conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=30)
        conn.request("POST", "/v1/messages", body=orjson.dumps({"model": "m", "stream": True, "tools": TOOLS}))
        second = conn.getresponse()  # kept: a dropped response closes the socket, which ends a stall
        assert stub.wait_stalled(30)
        assert not stub.requests()[1].aborted_by_client
        second.close()


@pytest.mark.parametrize("variable", ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"])
def test_agent_env_points_claude_code_at_the_stub(variable: str) -> None:
    with AnthropicStub() as stub:
        env = stub.agent_env("/tmp/home")
        assert env[variable]
        assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{stub.port}"
        assert env["HOME"] == "/tmp/home"
        assert "IS_SANDBOX" not in env
