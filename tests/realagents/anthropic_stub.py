"""A scripted stand-in for the Anthropic Messages API, on a loopback port.

Real Claude Code (under claude-agent-acp) is pointed at it with
ANTHROPIC_BASE_URL, so tests drive the real agent and its real tools with
no network and no model: each main-model call takes the next reply from a
script the test wrote. Every request is recorded, so a test can check what
reached the model (for instance that earlier user messages are in
`messages` after a fork).

Which calls consume the script: a streaming `POST /v1/messages` that offers
tools is the agent loop asking the main model what to do next. Everything
else Claude Code sends (title generation and other small-model calls
without tools, count_tokens, HEAD/GET probes) gets a harmless canned answer
and leaves the script alone. A main call that finds the script empty is
answered with a short text that ends the turn, and counted in `unscripted`.

Usage:

    with AnthropicStub([write_file("a.txt", "hi\\n"), text("done")]) as stub:
        env = {**os.environ, **stub.agent_env(home)}
        ...
        assert prompt_texts(stub.main_requests()[-1]) == ["make a.txt"]
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

JsonObject = dict[str, Any]


# --- the script --------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A plain assistant answer: the turn ends (`end_turn`)."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """The model asks for one tool call (`stop_reason: tool_use`).

    `preamble` is streamed as a text block before the tool_use block, as a
    real model often does.
    """

    name: str
    input: JsonObject
    preamble: str = ""


@dataclass(frozen=True)
class Stall:
    """Start a streaming answer, then hang until released or the client goes.

    For cancel and kill tests: the agent is provably mid-turn, waiting on
    the model. `text` is streamed before the hang. When released with
    `AnthropicStub.release()`, the answer finishes as `Text(finish_text)`.
    """

    text: str = "Thinking"
    finish_text: str = "Released."


Reply = Text | ToolUse | Stall


def text(answer: str) -> Text:
    return Text(answer)


def write_file(path: str, content: str) -> ToolUse:
    """Claude Code's Write tool; `path` should be absolute (the tool demands it)."""
    return ToolUse("Write", {"file_path": path, "content": content})


def edit_file(path: str, old: str, new: str, replace_all: bool = False) -> ToolUse:
    """Claude Code's Edit tool; it refuses files it has not Read or Written in this session."""
    return ToolUse(
        "Edit", {"file_path": path, "old_string": old, "new_string": new, "replace_all": replace_all}
    )


def read_file(path: str) -> ToolUse:
    return ToolUse("Read", {"file_path": path})


def bash(command: str, description: str = "Run a command") -> ToolUse:
    return ToolUse("Bash", {"command": command, "description": description})


def stall(before: str = "Thinking", finish_text: str = "Released.") -> Stall:
    return Stall(before, finish_text)


# --- recording ---------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One HTTP request as the stub saw it, and what it answered."""

    seq: int
    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: JsonObject | None
    raw_body: bytes
    kind: str  # "main" | "side" | "count_tokens" | "probe" | "other"
    reply: str = ""
    # set for a Stall that the client abandoned (cancel, kill) before release
    aborted_by_client: bool = False


def is_main_call(body: JsonObject | None) -> bool:
    """The agent loop's call: streaming, with tools offered."""
    return bool(body) and bool(body.get("stream")) and bool(body.get("tools"))


def classify(method: str, path: str, body: JsonObject | None) -> str:
    if method != "POST":
        return "probe"
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


def text_block(index: int, content: str) -> list[bytes]:
    return [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        ),
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": content}},
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


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


def describe(reply: Reply) -> str:
    if isinstance(reply, Text):
        return f"text {reply.text!r}"
    if isinstance(reply, ToolUse):
        return f"tool_use {reply.name}"
    return "stall"


# --- the server ---------------------------------------------------------------

SIDE_ANSWER = "Stub"


class AnthropicStub:
    """A Messages-API server on 127.0.0.1 in a background thread.

    Thread-safe: the test thread scripts and inspects it while the server's
    handler threads answer the agent.
    """

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        side_answer: str = SIDE_ANSWER,
        is_main: Callable[[JsonObject | None], bool] = is_main_call,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._script: list[Reply] = list(script)
        self._side_answer = side_answer
        self._is_main = is_main
        self._log = log
        self._lock = threading.Condition()
        self._records: list[RecordedRequest] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        # stalls are numbered as they start; release() frees those started so far
        self._stalls_started = 0
        self._stalls_released = 0
        self._stalled = 0
        self._closing = False
        self.unscripted = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> AnthropicStub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="anthropic-stub", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AnthropicStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stub first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def agent_env(self, home: str) -> dict[str, str]:
        """What an agent process needs, on top of PATH and friends, to use this stub.

        `home` must be a writable directory (Claude Code keeps its config and
        session transcripts under $HOME/.claude). IS_SANDBOX must *not* be
        in the agent's environment when running as root (see NOTES.md).
        """
        return claude_env(self.base_url, home)

    # -- scripting

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def remaining(self) -> list[Reply]:
        with self._lock:
            return list(self._script)

    def release(self) -> None:
        """Let every Stall in progress finish (as its finish_text); later ones stall again."""
        with self._lock:
            self._stalls_released = self._stalls_started
            self._lock.notify_all()

    def wait_stalled(self, timeout: float = 60.0) -> bool:
        """Block until a Stall reply is being streamed (the agent is mid-turn)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._stalled > 0, timeout=timeout)

    def wait_requests(self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 60.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._records), timeout=timeout)

    # -- inspection

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def main_requests(self) -> list[JsonObject]:
        """Bodies of the calls that consumed the script, in order."""
        return [r.body for r in self.requests() if r.kind == "main" and r.body is not None]

    # -- called from handler threads

    def _record(self, rec: RecordedRequest) -> None:
        with self._lock:
            self._records.append(rec)
            self._lock.notify_all()
        if self._log is not None:
            self._log(f"stub <- {rec.method} {rec.path} [{rec.kind}] -> {rec.reply}")

    def _next_reply(self) -> Reply | None:
        with self._lock:
            if self._script:
                return self._script.pop(0)
            self.unscripted += 1
            return None

    def _new_ids(self) -> tuple[str, str]:
        n = next(self._ids)
        return f"msg_stub_{n:04d}", f"toolu_stub_{n:04d}"

    def _stall_began(self) -> int:
        with self._lock:
            self._stalled += 1
            self._stalls_started += 1
            self._lock.notify_all()
            return self._stalls_started

    def _wait_release(self, ticket: int, timeout: float) -> bool:
        """True once `ticket` is released or the stub is closing."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self._closing or self._stalls_released >= ticket, timeout=timeout
            )

    def _stall_ended(self) -> None:
        with self._lock:
            self._stalled -= 1
            self._lock.notify_all()


def claude_env(base_url: str, home: str) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-stub-offline",
        "HOME": home,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        # otherwise it looks up raw.githubusercontent.com for the plugin marketplace
        "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
    }


def _handler_class(stub: AnthropicStub) -> type[BaseHTTPRequestHandler]:
    class Handler(_StubHandler):
        owner = stub

    return Handler


class _StubHandler(BaseHTTPRequestHandler):
    owner: AnthropicStub
    protocol_version = "HTTP/1.1"
    server_version = "anthropic-stub/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        # recorded per request instead of printed to stderr
        return

    def do_HEAD(self) -> None:
        self._answer_probe(send_body=False)

    def do_GET(self) -> None:
        self._answer_probe(send_body=True)

    def do_POST(self) -> None:
        raw = self._read_body()
        body = _parse_json(raw)
        rec = self._new_record(raw, body)
        if rec.kind == "count_tokens":
            rec.reply = "count_tokens"
            self.owner._record(rec)
            self._send_json(200, {"input_tokens": 10})
        elif rec.kind == "main":
            self._answer_main(rec, body or {})
        elif rec.kind == "side":
            self._answer_side(rec, body or {})
        else:
            rec.reply = "404"
            self.owner._record(rec)
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "stub"}})

    # -- answers

    def _answer_probe(self, send_body: bool) -> None:
        rec = self._new_record(b"", None)
        rec.reply = "200 {}"
        self.owner._record(rec)
        self._send_json(200, {}, send_body=send_body)

    def _answer_side(self, rec: RecordedRequest, body: JsonObject) -> None:
        msg_id, tool_id = self.owner._new_ids()
        model = str(body.get("model", "stub"))
        answer = Text(self.owner._side_answer)
        rec.reply = f"side {describe(answer)}"
        self.owner._record(rec)
        if body.get("stream"):
            self._send_stream(stream_events(answer, msg_id, model, tool_id))
        else:
            self._send_json(200, json_message(msg_id, model, answer.text))

    def _answer_main(self, rec: RecordedRequest, body: JsonObject) -> None:
        reply = self.owner._next_reply()
        msg_id, tool_id = self.owner._new_ids()
        model = str(body.get("model", "stub"))
        if reply is None:
            reply = Text("(stub: script exhausted)")
            rec.reply = "unscripted " + describe(reply)
        else:
            rec.reply = describe(reply)
        self.owner._record(rec)
        if isinstance(reply, Stall):
            self._send_stall(rec, reply, msg_id, model, tool_id)
        else:
            self._send_stream(stream_events(reply, msg_id, model, tool_id))

    def _send_stall(self, rec: RecordedRequest, reply: Stall, msg_id: str, model: str, tool_id: str) -> None:
        head = [message_start(msg_id, model)]
        head.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        head.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": reply.text}},
            )
        )
        if not self._start_stream(head):
            rec.aborted_by_client = True
            return
        ticket = self.owner._stall_began()
        try:
            while not self.owner._wait_release(ticket, 0.1):
                if _peer_closed(self.connection):
                    rec.aborted_by_client = True
                    return
        finally:
            self.owner._stall_ended()
        tail = [
            sse(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": " " + reply.finish_text},
                },
            ),
            sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            *message_end("end_turn"),
        ]
        self._write_or_note(rec, tail)

    # -- wire

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        return b""

    def _new_record(self, raw: bytes, body: JsonObject | None) -> RecordedRequest:
        parts = urlsplit(self.path)
        return RecordedRequest(
            seq=next(self.owner._seq),
            at=time.monotonic(),
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
            kind=classify(self.command, parts.path, body),
        )

    def _send_json(self, status: int, payload: JsonObject, send_body: bool = True) -> None:
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_stub")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _start_stream(self, events: list[bytes]) -> bool:
        # No length for an event stream: the body ends when we close.
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.send_header("request-id", "req_stub")
            self.end_headers()
            for event in events:
                self.wfile.write(event)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _send_stream(self, events: list[bytes]) -> None:
        self._start_stream(events)

    def _write_or_note(self, rec: RecordedRequest, events: list[bytes]) -> None:
        try:
            for event in events:
                self.wfile.write(event)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            rec.aborted_by_client = True


def _parse_json(raw: bytes) -> JsonObject | None:
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _read_chunked(rfile: Any) -> bytes:
    chunks = []
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            rfile.readline()
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline()


def _peer_closed(conn: socket.socket) -> bool:
    """Whether the client hung up (readable with nothing to read)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionResetError, OSError):
        return True


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
