"""A scripted stand-in for the Gemini API (generativelanguage v1beta), on a loopback port.

Gemini CLI (`gemini --acp`) is pointed at it with GOOGLE_GEMINI_BASE_URL, so
tests drive the real agent and its real tools offline. Each main-model call
takes the next reply from the test's script; every request is recorded.

Which calls consume the script: `POST .../models/<m>:streamGenerateContent`
with tools offered (the agent loop). Side calls get canned answers: the
model router's `generateContent` asks for JSON against a schema
(`generationConfig.responseJsonSchema`), so the stub answers with the
smallest object that fits it; `countTokens` gets a count; other side calls a
short text.

    with GeminiStub([write_file(str(repo / "a.txt"), "hi\\n"), text("done")]) as stub:
        env = gemini_agent_env(stub.agent_env(str(home)), home)   # harness.py
        ... spawn `gemini --acp` with env=env ...
        assert prompt_texts(stub.main_requests()[-1])[-1] == "make a.txt"
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from .scripted import (
    JsonObject,
    RecordedRequest,
    Reply,
    ScriptedModelStub,
    SideAnswer,
    Stall,
    Text,
    ToolUse,
    stall,
    text,
)

__all__ = [
    "GeminiStub",
    "RecordedRequest",
    "Reply",
    "Stall",
    "Text",
    "ToolUse",
    "edit_file",
    "gemini_env",
    "function_responses",
    "prompt_texts",
    "read_file",
    "run_shell_command",
    "schema_example",
    "stall",
    "text",
    "write_file",
]


# --- Gemini CLI's tools ------------------------------------------------------


def write_file(path: str, content: str) -> ToolUse:
    return ToolUse("write_file", {"file_path": path, "content": content})


def edit_file(path: str, old: str, new: str, instruction: str = "Apply the requested change.") -> ToolUse:
    """Gemini CLI's `replace` tool (old_string must occur exactly once)."""
    return ToolUse("replace", {"file_path": path, "instruction": instruction, "old_string": old, "new_string": new})


def read_file(path: str) -> ToolUse:
    return ToolUse("read_file", {"file_path": path})


def run_shell_command(command: str, description: str = "Run a command") -> ToolUse:
    return ToolUse("run_shell_command", {"command": command, "description": description})


def classify(path: str, body: JsonObject | None) -> str:
    if path.endswith(":streamGenerateContent"):
        return "main" if (body or {}).get("tools") else "side"
    if path.endswith(":generateContent"):
        return "side"
    if path.endswith(":countTokens"):
        return "count_tokens"
    return "other"


# --- wire shapes -------------------------------------------------------------


def sse(data: JsonObject) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def response(parts: list[JsonObject], finish: str | None, model: str, response_id: str) -> JsonObject:
    candidate: JsonObject = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": model,
        "responseId": response_id,
    }


def reply_parts(reply: Text | ToolUse) -> list[JsonObject]:
    if isinstance(reply, Text):
        return [{"text": reply.text}]
    parts: list[JsonObject] = [{"text": reply.preamble}] if reply.preamble else []
    parts.append({"functionCall": {"name": reply.name, "args": reply.input}})
    return parts


def schema_example(schema: Mapping[str, Any]) -> Any:
    """The smallest value that fits a (Gemini- or JSON-) schema: what a side call asked for."""
    kind = str(schema.get("type", "object")).lower()
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "object":
        return {name: schema_example(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    return "stub"


# --- the server ---------------------------------------------------------------

SIDE_ANSWER = "Stub"


class GeminiStub(ScriptedModelStub):
    """The Gemini API, scripted. See ScriptedModelStub for the test-facing methods."""

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        side_answer: str = SIDE_ANSWER,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(script, log=log)
        self._side_text = side_answer

    def agent_env(self, home: str) -> dict[str, str]:
        return gemini_env(self.base_url, home)

    def classify(self, method: str, path: str, body: JsonObject | None) -> str:
        return classify(path, body)

    def reply_events(self, reply: Text | ToolUse, body: JsonObject, n: int) -> list[bytes]:
        return [sse(response(reply_parts(reply), "STOP", "stub", f"resp_stub_{n:04d}"))]

    def stall_events(self, reply: Stall, body: JsonObject, n: int) -> tuple[list[bytes], list[bytes]]:
        rid = f"resp_stub_{n:04d}"
        return (
            [sse(response([{"text": reply.text}], None, "stub", rid))],
            [sse(response([{"text": " " + reply.finish_text}], "STOP", "stub", rid))],
        )

    def side_answer(self, kind: str, path: str, body: JsonObject | None) -> SideAnswer:
        if kind == "count_tokens":
            return 200, {"totalTokens": 10}
        if kind != "side":
            return 404, {"error": {"code": 404, "message": f"stub: no {path}", "status": "NOT_FOUND"}}
        config = (body or {}).get("generationConfig") or {}
        schema = config.get("responseJsonSchema") or config.get("responseSchema")
        answer = orjson.dumps(schema_example(schema)).decode() if schema else self._side_text
        rid = f"resp_stub_side_{self._next_id():04d}"
        if path.endswith(":streamGenerateContent"):
            return [sse(response([{"text": answer}], "STOP", "stub", rid))]
        return 200, response([{"text": answer}], "STOP", "stub", rid)


def gemini_env(base_url: str, home: str) -> dict[str, str]:
    """Environment that sends Gemini CLI's model calls to `base_url`.

    Also prepare `home` with harness.prepare_gemini_home: usage statistics
    (the one thing that otherwise reaches out) are switched off in settings.
    """
    return {
        "GOOGLE_GEMINI_BASE_URL": base_url,
        "GEMINI_API_KEY": "stub-offline-key",
        "HOME": home,
        # otherwise `gemini` re-spawns itself as a child holding our stdio: killing
        # the process we started would leave the agent running (see NOTES.md)
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }


# --- reading recorded requests --------------------------------------------------

# Gemini CLI puts its own context first, in the first user turn.
HARNESS_TEXT_PREFIXES = ("<session_context>",)


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The text parts of user turns, in order, without Gemini CLI's own context."""
    return [
        part["text"]
        for content in body.get("contents", [])
        if content.get("role") == "user"
        for part in content.get("parts", [])
        if isinstance(part.get("text"), str) and not part["text"].startswith(HARNESS_TEXT_PREFIXES)
    ]


def function_responses(body: Mapping[str, Any]) -> list[JsonObject]:
    return [
        part["functionResponse"]
        for content in body.get("contents", [])
        for part in content.get("parts", [])
        if "functionResponse" in part
    ]
