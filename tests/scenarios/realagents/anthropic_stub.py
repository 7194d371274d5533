"""A scripted stand-in for the Anthropic Messages API, on a loopback port.

Real Claude Code (under claude-agent-acp) is pointed at it with
ANTHROPIC_BASE_URL, so tests drive the real agent and its real tools with
no network and no model: each main-model call takes the next reply from a
script the test wrote. Every request is recorded, so a test can check what
reached the model (for instance that earlier user messages are in
`messages` after a fork).

Which calls consume the script: a streaming `POST /v1/messages` that offers
tools is the agent loop asking the main model what to do next. Everything
else Claude Code may send (small-model calls without tools such as title
generation, count_tokens, HEAD/GET probes) gets a harmless canned answer
and leaves the script alone. A main call that finds the script empty is
answered with a short text that ends the turn, and counted in `unscripted`.

Usage (see NOTES.md for the whole environment):

    with AnthropicStub([write_file(str(repo / "a.txt"), "hi\n"), text("done")]) as stub:
        env = claude_agent_env(stub.agent_env(str(home)), home)   # harness.py
        ... spawn claude-agent-acp with env=env, prompt "make a.txt" ...
        assert prompt_texts(stub.main_requests()[-1]) == ["make a.txt"]
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
    describe,
    stall,
    text,
)

__all__ = [
    "AnthropicStub",
    "RecordedRequest",
    "Reply",
    "Stall",
    "Text",
    "ToolUse",
    "bash",
    "claude_env",
    "describe",
    "edit_file",
    "prompt_texts",
    "read_file",
    "stall",
    "text",
    "tool_results",
    "user_blocks",
    "write_file",
]


# --- Claude Code's tools -----------------------------------------------------


def write_file(path: str, content: str) -> ToolUse:
    """Claude Code's Write tool; `path` must be absolute (the tool demands it)."""
    return ToolUse("Write", {"file_path": path, "content": content})


def edit_file(path: str, old: str, new: str, replace_all: bool = False) -> ToolUse:
    """Claude Code's Edit tool; it refuses a file not Read or Written earlier in the session."""
    return ToolUse("Edit", {"file_path": path, "old_string": old, "new_string": new, "replace_all": replace_all})


def read_file(path: str) -> ToolUse:
    return ToolUse("Read", {"file_path": path})


def bash(command: str, description: str = "Run a command") -> ToolUse:
    return ToolUse("Bash", {"command": command, "description": description})


SUGGESTION_MODE = "[SUGGESTION MODE:"


def is_main_call(body: JsonObject | None) -> bool:
    """The agent loop's call: streaming, with tools offered.

    Claude Code 2.x also asks the model, with the same tools, what the user
    might type next ("prompt suggestion"); those calls end with a user message
    starting with SUGGESTION_MODE and are side calls.
    """
    if not (body and body.get("stream") and body.get("tools")):
        return False
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    first = content if isinstance(content, str) else next(
        (b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"), ""
    )
    return not first.startswith(SUGGESTION_MODE)


def classify(method: str, path: str, body: JsonObject | None) -> str:
    if path.endswith("/count_tokens"):
        return "count_tokens"
    if path.endswith("/v1/messages"):
        return "main" if is_main_call(body) else "side"
    return "other"


# --- wire shapes -------------------------------------------------------------


def sse(event: str, data: JsonObject) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def message_start(msg_id: str, model: str) -> bytes:
    return sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1},
            },
        },
    )


def text_block_open(index: int, content: str) -> list[bytes]:
    return [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        ),
        text_delta(index, content),
    ]


def text_delta(index: int, content: str) -> bytes:
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": content}},
    )


def text_block(index: int, content: str) -> list[bytes]:
    return [*text_block_open(index, content), sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def tool_use_block(index: int, tool_id: str, name: str, tool_input: JsonObject) -> list[bytes]:
    return [
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(tool_input).decode()},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def message_end(stop_reason: str) -> list[bytes]:
    return [
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]


def stream_events(reply: Text | ToolUse, msg_id: str, model: str, tool_id: str) -> list[bytes]:
    """The whole SSE body for a reply that does not stall."""
    events = [message_start(msg_id, model)]
    if isinstance(reply, Text):
        events += text_block(0, reply.text)
        events += message_end("end_turn")
        return events
    index = 0
    if reply.preamble:
        events += text_block(0, reply.preamble)
        index = 1
    events += tool_use_block(index, tool_id, reply.name, reply.input)
    events += message_end("tool_use")
    return events


def json_message(msg_id: str, model: str, answer: str) -> JsonObject:
    """A non-streaming Messages API answer."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }


# --- the server ---------------------------------------------------------------

SIDE_ANSWER = "Stub"


class AnthropicStub(ScriptedModelStub):
    """The Messages API, scripted. See ScriptedModelStub for the test-facing methods."""

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        side_answer: str = SIDE_ANSWER,
        is_main: Callable[[JsonObject | None], bool] = is_main_call,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(script, log=log)
        self._side_text = side_answer
        self._is_main = is_main

    def agent_env(self, home: str) -> dict[str, str]:
        """The variables that point Claude Code at this stub (see claude_env)."""
        return claude_env(self.base_url, home)

    def classify(self, method: str, path: str, body: JsonObject | None) -> str:
        kind = classify(method, path, body)
        if kind in ("main", "side"):
            return "main" if self._is_main(body) else "side"
        return kind

    def reply_events(self, reply: Text | ToolUse, body: JsonObject, n: int) -> list[bytes]:
        return stream_events(reply, f"msg_stub_{n:04d}", str(body.get("model", "stub")), f"toolu_stub_{n:04d}")

    def stall_events(self, reply: Stall, body: JsonObject, n: int) -> tuple[list[bytes], list[bytes]]:
        head = [message_start(f"msg_stub_{n:04d}", str(body.get("model", "stub"))), *text_block_open(0, reply.text)]
        tail = [
            text_delta(0, " " + reply.finish_text),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            *message_end("end_turn"),
        ]
        return head, tail

    def side_answer(self, kind: str, path: str, body: JsonObject | None) -> SideAnswer:
        if kind == "count_tokens":
            return 200, {"input_tokens": 10}
        if kind == "side":
            model = str((body or {}).get("model", "stub"))
            msg_id = f"msg_stub_side_{self._next_id():04d}"
            if (body or {}).get("stream"):
                return stream_events(Text(self._side_text), msg_id, model, "")
            return 200, json_message(msg_id, model, self._side_text)
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"stub: no {path}"}}


def claude_env(base_url: str, home: str) -> dict[str, str]:
    """Environment that sends Claude Code's model calls to `base_url` and nothing anywhere else.

    Also prepare `home` with harness.prepare_claude_home (a plugin blocklist
    fetch is not covered by any of these variables).
    """
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-stub-offline",
        "HOME": home,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        # otherwise it clones/looks up the official plugin marketplace
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
        # otherwise Claude Code 2.x asks the model what the user may type next after every turn
        "CLAUDE_CODE_ENABLE_PROMPT_SUGGESTION": "false",
    }


# Claude Code folds its own context into user messages as extra text blocks.
HARNESS_TEXT_PREFIXES = ("<system-reminder>", "<local-command-", "<command-")


def user_blocks(body: Mapping[str, Any]) -> list[JsonObject]:
    """Every content block of every user message in a recorded request, in order."""
    blocks: list[JsonObject] = []
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            blocks.append({"type": "text", "text": content})
        else:
            blocks.extend(b for b in content or [] if isinstance(b, dict))
    return blocks


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The text blocks the user (the ACP client) wrote, in order, one per block.

    Left out: tool results, and the context Claude Code injects itself
    (system reminders, the `/model` command it runs at session start).
    """
    return [
        b.get("text", "")
        for b in user_blocks(body)
        if b.get("type") == "text" and not b.get("text", "").startswith(HARNESS_TEXT_PREFIXES)
    ]


def tool_results(body: Mapping[str, Any]) -> list[JsonObject]:
    return [b for b in user_blocks(body) if b.get("type") == "tool_result"]
