"""A scripted OpenAI Responses API on loopback, for Codex (codex-acp) offline.

Codex sends every model call as `POST <base_url>/responses` with
`stream: true`; the whole conversation is in `input` (a list of items:
`message` with `input_text`/`output_text` content, `function_call` and
`function_call_output`, `custom_tool_call` and `custom_tool_call_output`,
`reasoning`). The stub answers with the Responses event stream
(`response.created`, `response.output_item.done` per output item,
`response.completed`). A main call is one that offers tools; Codex's own
side calls (none seen with the configuration below) get a canned text.

Codex is pointed here by `$CODEX_HOME/config.toml` (a model provider whose
`base_url` is the stub), and `OPENAI_API_KEY` (codex-acp asks for a key).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .scripted import JsonObject, Reply, ScriptedModelStub, SideAnswer, Stall, Text, ToolUse, stall, text

__all__ = [
    "ResponsesStub",
    "apply_patch_add",
    "shell",
    "stall",
    "text",
    "codex_env",
    "prepare_codex_home",
    "conversation",
    "prompt_texts",
    "tool_outputs",
]

MODEL = "gpt-5.5"


# --- the script: Codex's own tools ---------------------------------------------


def shell(command: str, preamble: str = "") -> ToolUse:
    """Codex's shell tool: the function whose name the request offers (see _shell_call)."""
    return ToolUse("shell", {"command": command}, preamble)


def apply_patch_add(path: str, content: str, preamble: str = "") -> ToolUse:
    """Codex's apply_patch tool adding one file (`path` relative to the cwd, or absolute)."""
    lines = "".join("+" + line + "\n" for line in content.splitlines())
    patch = f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"
    return ToolUse("apply_patch", {"patch": patch}, preamble)


# --- wire shapes -----------------------------------------------------------------


def sse(data: JsonObject) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def offered_tools(body: Mapping[str, Any]) -> dict[str, JsonObject]:
    found: dict[str, JsonObject] = {}
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("name"):
            found[str(tool["name"])] = tool
    return found


def tool_items(reply: ToolUse, body: Mapping[str, Any], n: int) -> list[JsonObject]:
    """The output item for a scripted tool call, shaped as the request offers that tool."""
    tools = offered_tools(body)
    call_id = f"call_stub_{n:04d}"
    if reply.name == "apply_patch":
        patch = str(reply.input["patch"])
        spec = tools.get("apply_patch", {})
        if spec.get("type") == "custom":
            return [{"type": "custom_tool_call", "id": f"ctc_{n:04d}", "status": "completed",
                     "call_id": call_id, "name": "apply_patch", "input": patch}]
        return [{"type": "function_call", "id": f"fc_{n:04d}", "status": "completed", "call_id": call_id,
                 "name": "apply_patch", "arguments": json.dumps({"input": patch})}]
    if reply.name == "shell":
        command = str(reply.input["command"])
        for name, arguments in (
            ("exec_command", {"cmd": command}),
            ("shell_command", {"command": command}),
            ("shell", {"command": ["bash", "-lc", command]}),
        ):
            if name in tools:
                return [{"type": "function_call", "id": f"fc_{n:04d}", "status": "completed", "call_id": call_id,
                         "name": name, "arguments": json.dumps(arguments)}]
        raise ValueError(f"the request offers no shell tool: {sorted(tools)}")
    return [{"type": "function_call", "id": f"fc_{n:04d}", "status": "completed", "call_id": call_id,
             "name": reply.name, "arguments": json.dumps(reply.input)}]


def message_item(text_: str, n: int) -> JsonObject:
    return {"type": "message", "id": f"msg_stub_{n:04d}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text_, "annotations": []}]}


def response_events(items: list[JsonObject], n: int, body: Mapping[str, Any]) -> list[bytes]:
    rid = f"resp_stub_{n:04d}"
    events = [sse({"type": "response.created", "response": {"id": rid, "model": body.get("model", MODEL)}})]
    for index, item in enumerate(items):
        events.append(sse({"type": "response.output_item.added", "output_index": index, "item": item}))
        if item["type"] == "message":
            events.append(sse({"type": "response.output_text.delta", "item_id": item["id"], "output_index": index,
                               "content_index": 0, "delta": item["content"][0]["text"]}))
        events.append(sse({"type": "response.output_item.done", "output_index": index, "item": item}))
    return events


def completed(n: int) -> bytes:
    usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 10,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 30}
    return sse({"type": "response.completed", "response": {"id": f"resp_stub_{n:04d}", "usage": usage}})


# --- the server ---------------------------------------------------------------------


class ResponsesStub(ScriptedModelStub):
    """The Responses API as Codex calls it; scripts `text`, `shell`, `apply_patch_add`, `stall`."""

    def __init__(self, script: Iterable[Reply] = (), *, side_answer: str = "Stub", log: Any = None) -> None:
        super().__init__(script, log=log)
        self._side_answer = side_answer
        self._ids_lock = threading.Lock()

    def agent_env(self, home: str) -> dict[str, str]:
        """The variables that point Codex at this stub; also prepares `home` (CODEX_HOME under it)."""
        return codex_env(self.base_url, Path(home))

    def classify(self, method: str, path: str, body: JsonObject | None) -> str:
        if path.endswith("/responses") and body is not None:
            return "main" if body.get("tools") else "side"
        return "other"

    def reply_events(self, reply: Text | ToolUse, body: JsonObject, n: int) -> list[bytes]:
        if isinstance(reply, Text):
            items = [message_item(reply.text, n)]
        else:
            items = ([message_item(reply.preamble, n)] if reply.preamble else []) + tool_items(reply, body, n)
        return [*response_events(items, n, body), completed(n)]

    def stall_events(self, reply: Stall, body: JsonObject, n: int) -> tuple[list[bytes], list[bytes]]:
        rid = f"resp_stub_{n:04d}"
        head_item = {"type": "message", "id": f"msg_stub_{n:04d}", "role": "assistant", "status": "in_progress",
                     "content": []}
        head = [
            sse({"type": "response.created", "response": {"id": rid}}),
            sse({"type": "response.output_item.added", "output_index": 0, "item": head_item}),
            sse({"type": "response.output_text.delta", "item_id": head_item["id"], "output_index": 0,
                 "content_index": 0, "delta": reply.text}),
        ]
        done = message_item(reply.text + " " + reply.finish_text, n)
        tail = [
            sse({"type": "response.output_text.delta", "item_id": head_item["id"], "output_index": 0,
                 "content_index": 0, "delta": " " + reply.finish_text}),
            sse({"type": "response.output_item.done", "output_index": 0, "item": done}),
            completed(n),
        ]
        return head, tail

    def side_answer(self, kind: str, path: str, body: JsonObject | None) -> SideAnswer:
        if kind == "side":
            n = self._next_id()
            return [*response_events([message_item(self._side_answer, n)], n, body or {}), completed(n)]
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [], "models": []}
        return 404, {"error": {"message": f"stub: no {path}", "type": "not_found"}}


# --- Codex's configuration ---------------------------------------------------------------


def prepare_codex_home(home: Path, base_url: str) -> Path:
    """`$HOME/.codex/config.toml` sending Codex's model calls to `base_url` and nothing else.

    A model provider of our own (`wire_api = "responses"`, key from
    OPENAI_API_KEY), no retries (a stub error should show, not be retried for
    minutes), analytics and update checks off.
    """
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f'model = "{MODEL}"\n'
        'model_provider = "stub"\n'
        'check_for_update_on_startup = false\n'
        '[analytics]\nenabled = false\n'
        '[model_providers.stub]\n'
        'name = "stub"\n'
        f'base_url = "{base_url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "OPENAI_API_KEY"\n'
        'request_max_retries = 0\n'
        'stream_max_retries = 0\n'
    )
    return codex_home


def codex_env(base_url: str, home: Path) -> dict[str, str]:
    codex_home = prepare_codex_home(home, base_url)
    return {
        # codex-acp's default mode has a model review actions it finds unsafe; under
        # cairnd's own sandbox (SPEC 16) Codex's workspace sandbox cannot start and every
        # write became such an action. Full access: cairnd's Landlock confines it instead.
        "INITIAL_AGENT_MODE": "agent-full-access",
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "OPENAI_API_KEY": "sk-stub-offline",
        "OPENAI_BASE_URL": f"{base_url}/v1",
    }


# --- reading recorded requests ------------------------------------------------------------


def conversation(body: Mapping[str, Any]) -> list[JsonObject]:
    """The conversation items of a request, without Codex's injected context.

    Left out: developer/system messages, and the user messages Codex writes
    itself (environment context, AGENTS.md instructions, which start with `<`).
    """
    kept = []
    for item in body.get("input") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type", "message") == "message":
            if item.get("role") in ("developer", "system"):
                continue
            texts = [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
            if item.get("role") == "user" and texts and all(t.lstrip().startswith("<") for t in texts):
                continue
        if item.get("type") == "reasoning":
            continue
        kept.append(item)
    return kept


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The text the user (the ACP client) wrote, one entry per input_text block, in order."""
    out = []
    for item in conversation(body):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            out += [c.get("text", "") for c in item.get("content") or [] if c.get("type") == "input_text"]
    return out


def tool_outputs(body: Mapping[str, Any]) -> list[JsonObject]:
    return [i for i in conversation(body) if str(i.get("type", "")).endswith("_call_output")]
