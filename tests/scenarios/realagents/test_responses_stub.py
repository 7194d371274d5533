"""The Responses API stub speaks the event stream Codex reads, shapes tool calls as the
request offers the tools, and reads recorded requests back without Codex's own context."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import orjson

from .responses_stub import ResponsesStub, apply_patch_add, codex_env, conversation, prompt_texts, shell, text

TOOLS = [
    {"type": "function", "name": "exec_command"},
    {"type": "custom", "name": "apply_patch"},
]


def post(stub: ResponsesStub, body: dict[str, Any]) -> list[dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=30)
    conn.request("POST", "/v1/responses", body=orjson.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    events = []
    for block in response.read().decode().split("\n\n"):
        if block.strip():
            event, data = block.split("\n", 1)
            payload = json.loads(data.removeprefix("data: "))
            assert event == "event: " + payload["type"]
            events.append(payload)
    return events


def done_items(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e["type"] == "response.output_item.done"]


def test_a_text_reply_is_one_message_item_then_completed() -> None:
    with ResponsesStub([text("Hello.")]) as stub:
        events = post(stub, {"stream": True, "tools": TOOLS, "input": []})
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    [item] = done_items(events)
    assert item["type"] == "message" and item["content"][0]["text"] == "Hello."
    assert events[-1]["response"]["usage"]["total_tokens"] > 0


def test_tool_calls_take_the_shape_of_the_offered_tools() -> None:
    with ResponsesStub([apply_patch_add("a.txt", "one\ntwo"), shell("ls -la")]) as stub:
        [patch] = done_items(post(stub, {"stream": True, "tools": TOOLS, "input": []}))
        [run] = done_items(post(stub, {"stream": True, "tools": TOOLS, "input": []}))
    assert patch["type"] == "custom_tool_call" and patch["name"] == "apply_patch"
    assert patch["input"] == "*** Begin Patch\n*** Add File: a.txt\n+one\n+two\n*** End Patch\n"
    assert run["type"] == "function_call" and run["name"] == "exec_command"
    assert json.loads(run["arguments"]) == {"cmd": "ls -la"}
    assert patch["call_id"] != run["call_id"]


def test_calls_without_tools_are_side_calls_and_leave_the_script_alone() -> None:
    with ResponsesStub([text("Main.")]) as stub:
        [title] = done_items(post(stub, {"stream": True, "input": []}))
        [main] = done_items(post(stub, {"stream": True, "tools": TOOLS, "input": []}))
        assert [r.kind for r in stub.requests()] == ["side", "main"]
    assert title["content"][0]["text"] == "Stub" and main["content"][0]["text"] == "Main."


def test_recorded_conversation_leaves_out_codex_context() -> None:
    body = {
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "make a.txt"}]},
            {"type": "reasoning", "summary": []},
            {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "..."},
            {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
        ]
    }
    assert [i.get("type") for i in conversation(body)] == ["message", "custom_tool_call", "custom_tool_call_output"]
    assert prompt_texts(body) == ["make a.txt"]


def test_codex_env_points_a_provider_of_its_own_at_the_stub(tmp_path: Path) -> None:
    env = codex_env("http://127.0.0.1:9", tmp_path)
    config = (tmp_path / ".codex" / "config.toml").read_text()
    assert env["CODEX_HOME"] == str(tmp_path / ".codex") and env["OPENAI_API_KEY"]
    assert 'model_provider = "stub"' in config and 'base_url = "http://127.0.0.1:9/v1"' in config
