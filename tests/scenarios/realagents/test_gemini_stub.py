"""The Gemini API stub speaks the wire shape Gemini CLI reads, and follows its script."""

from __future__ import annotations

import http.client
import json
from typing import Any

import orjson

from .gemini_stub import (
    GeminiStub,
    edit_file,
    function_responses,
    prompt_texts,
    run_shell_command,
    schema_example,
    stall,
    text,
    write_file,
)

TOOLS = [{"functionDeclarations": [{"name": "write_file"}]}]
STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


def post(stub: GeminiStub, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=30)
    conn.request("POST", path, body=orjson.dumps(body), headers={"Content-Type": "application/json"})
    return conn.getresponse()


def chunks(response: http.client.HTTPResponse) -> list[dict[str, Any]]:
    return [
        json.loads(block.removeprefix("data: "))
        for block in response.read().decode().split("\n\n")
        if block.strip()
    ]


def main_call(stub: GeminiStub, user_text: str = "hi") -> list[dict[str, Any]]:
    response = post(stub, STREAM, {"contents": [{"role": "user", "parts": [{"text": user_text}]}], "tools": TOOLS})
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    return chunks(response)


def test_a_text_reply_is_one_chunk_that_finishes() -> None:
    with GeminiStub([text("Hello.")]) as stub:
        [chunk] = main_call(stub)
    candidate = chunk["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "Hello."}]}
    assert candidate["finishReason"] == "STOP"
    assert chunk["usageMetadata"]["totalTokenCount"] > 0


def test_a_tool_reply_is_a_function_call_part() -> None:
    with GeminiStub([write_file("/repo/a.txt", "hi\n")]) as stub:
        [chunk] = main_call(stub)
    assert chunk["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "write_file", "args": {"file_path": "/repo/a.txt", "content": "hi\n"}}}
    ]


def test_tool_helpers_use_gemini_clis_tool_names_and_arguments() -> None:
    assert edit_file("/r/a", "x", "y").name == "replace"
    assert set(edit_file("/r/a", "x", "y").input) == {"file_path", "instruction", "old_string", "new_string"}
    assert run_shell_command("ls").name == "run_shell_command"


def test_the_router_side_call_gets_json_that_fits_its_schema_and_leaves_the_script() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {"complexity_reasoning": {"type": "STRING"}, "complexity_score": {"type": "INTEGER"}},
        "required": ["complexity_reasoning", "complexity_score"],
    }
    with GeminiStub([text("scripted")]) as stub:
        side = post(
            stub,
            "/v1beta/models/gemini-flash-lite:generateContent",
            {"contents": [], "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema}},
        )
        answer = json.loads(json.loads(side.read())["candidates"][0]["content"]["parts"][0]["text"])
        assert answer == {"complexity_reasoning": "stub", "complexity_score": 1}
        count = post(stub, "/v1beta/models/m:countTokens", {"contents": []})
        assert json.loads(count.read()) == {"totalTokens": 10}
        assert stub.remaining() == [text("scripted")]
        assert [r.kind for r in stub.requests()] == ["side", "count_tokens"]


def test_schema_example_fills_every_kind() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "number", "minimum": 5},
            "b": {"type": "boolean"},
            "a": {"type": "array", "items": {"type": "string"}},
            "e": {"type": "string", "enum": ["x", "y"]},
            "o": {"type": "object", "properties": {"i": {"type": "integer"}}},
        },
    }
    assert schema_example(schema) == {"s": "stub", "n": 5.0, "b": False, "a": [], "e": "x", "o": {"i": 1}}


def test_prompt_texts_and_function_responses_read_recorded_contents() -> None:
    with GeminiStub([text("one")]) as stub:
        post(
            stub,
            STREAM,
            {
                "tools": TOOLS,
                "contents": [
                    {"role": "user", "parts": [{"text": "<session_context>\nctx</session_context>"}, {"text": "first"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "write_file", "args": {}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}]},
                    {"role": "user", "parts": [{"text": "second"}]},
                ],
            },
        ).read()
        [body] = stub.main_requests()
    assert prompt_texts(body) == ["first", "second"]
    assert function_responses(body) == [{"name": "write_file", "response": {"output": "ok"}}]


def test_a_stall_hangs_until_released() -> None:
    with GeminiStub([stall("Working", "Done.")]) as stub:
        response = post(stub, STREAM, {"contents": [], "tools": TOOLS})
        assert stub.wait_stalled(30)
        stub.release()
        first, last = chunks(response)
    assert "finishReason" not in first["candidates"][0]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["candidates"][0]["content"]["parts"] == [{"text": " Done."}]


def test_agent_env_points_gemini_cli_at_the_stub_as_one_process() -> None:
    with GeminiStub() as stub:
        env = stub.agent_env("/tmp/home")
    assert env["GOOGLE_GEMINI_BASE_URL"] == f"http://127.0.0.1:{stub.port}"
    assert env["GEMINI_API_KEY"]
    assert env["GEMINI_CLI_NO_RELAUNCH"] == "true"
