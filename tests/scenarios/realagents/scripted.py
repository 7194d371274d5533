"""The machinery shared by the scripted model stubs (Anthropic, Gemini).

A stub is an HTTP server on 127.0.0.1 in a background thread that stands in
for a model API. A test writes a script: the replies the *main* model calls
get, in order. What counts as a main call, and how a reply is put on the
wire, is each API's business (subclasses); queueing, recording, stalling and
threading are here.
"""

from __future__ import annotations

import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

JsonObject = dict[str, Any]


# --- the script --------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A plain assistant answer: the turn ends."""

    text: str


@dataclass(frozen=True)
class ToolUse:
    """The model asks for one tool call; `preamble` is streamed as text before it."""

    name: str
    input: JsonObject
    preamble: str = ""


@dataclass(frozen=True)
class Stall:
    """Start a streaming answer, then hang until released or the client hangs up.

    For cancel and kill tests: the agent is provably mid-turn, waiting on the
    model. `text` is streamed before the hang; once released the answer
    finishes with `finish_text` and ends the turn.
    """

    text: str = "Thinking"
    finish_text: str = "Released."


Reply = Text | ToolUse | Stall


def text(answer: str) -> Text:
    return Text(answer)


def stall(before: str = "Thinking", finish_text: str = "Released.") -> Stall:
    return Stall(before, finish_text)


def describe(reply: Reply) -> str:
    if isinstance(reply, Text):
        return f"text {reply.text!r}"
    if isinstance(reply, ToolUse):
        return f"tool_use {reply.name}"
    return "stall"


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
    kind: str  # "main" consumes the script; anything else is the API's own word
    reply: str = ""
    # a Stall the client abandoned (cancel, kill) before it was released
    aborted_by_client: bool = False


SideAnswer = tuple[int, JsonObject] | list[bytes]
"""What a non-main call gets: (status, JSON body), or a list of SSE events."""


# --- the server ---------------------------------------------------------------


class ScriptedModelStub:
    """Base class: a scripted model API on a free loopback port.

    Thread-safe: the test scripts and inspects it while handler threads
    answer the agent. Subclasses implement the four wire hooks below.
    """

    def __init__(self, script: Iterable[Reply] = (), *, log: Callable[[str], None] | None = None) -> None:
        self._script: list[Reply] = list(script)
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

    # -- wire hooks (subclasses)

    def classify(self, method: str, path: str, body: JsonObject | None) -> str:
        """"main" for a call that takes the next scripted reply; another word otherwise."""
        raise NotImplementedError

    def reply_events(self, reply: Text | ToolUse, body: JsonObject, n: int) -> list[bytes]:
        """The whole SSE body of a main call's reply; `n` is unique per call (for ids)."""
        raise NotImplementedError

    def stall_events(self, reply: Stall, body: JsonObject, n: int) -> tuple[list[bytes], list[bytes]]:
        """SSE events sent before the hang, and those that finish it once released."""
        raise NotImplementedError

    def side_answer(self, kind: str, path: str, body: JsonObject | None) -> SideAnswer:
        """The canned answer to a call that is not a main call."""
        raise NotImplementedError

    # -- lifecycle

    def start(self) -> ScriptedModelStub:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        server.daemon_threads = True
        self._server = server
        # a short poll keeps close() quick: shutdown() waits for the loop to notice
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
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

    def __enter__(self) -> Any:
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

    # -- scripting

    def push(self, *replies: Reply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)

    def remaining(self) -> list[Reply]:
        """Replies not yet used: a test that expects its script used up asserts this is []."""
        with self._lock:
            return list(self._script)

    def release(self) -> None:
        """Let every Stall in progress finish; Stalls that start later hang again."""
        with self._lock:
            self._stalls_released = self._stalls_started
            self._lock.notify_all()

    def wait_stalled(self, timeout: float = 60.0) -> bool:
        """Block until a Stall is being served (the agent is mid-turn, waiting on the model)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._stalled > 0, timeout=timeout)

    def wait_requests(self, predicate: Callable[[list[RecordedRequest]], bool], timeout: float = 60.0) -> bool:
        """Block until `predicate(requests so far)` holds (checked on every new request)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._records), timeout=timeout)

    # -- inspection

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def write_log(self, path: Path) -> Path:
        """Every request as the stub saw it and what it answered, one JSON line each:
        what a failing run is compared by with a passing one."""
        with path.open("wb") as out:
            for rec in self.requests():
                out.write(orjson.dumps({"seq": rec.seq, "at": rec.at, "method": rec.method, "path": rec.path,
                                        "kind": rec.kind, "reply": rec.reply, "aborted_by_client": rec.aborted_by_client,
                                        "body": rec.body}) + b"\n")
        return path

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

    def _next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def _next_seq(self) -> int:
        with self._lock:
            return next(self._seq)

    def _stall_began(self) -> int:
        with self._lock:
            self._stalled += 1
            self._stalls_started += 1
            self._lock.notify_all()
            return self._stalls_started

    def _stall_ended(self) -> None:
        with self._lock:
            self._stalled -= 1
            self._lock.notify_all()

    def _wait_release(self, ticket: int, timeout: float) -> bool:
        """True once stall `ticket` is released or the stub is closing."""
        with self._lock:
            return self._lock.wait_for(lambda: self._closing or self._stalls_released >= ticket, timeout=timeout)


def _handler_class(stub: ScriptedModelStub) -> type[BaseHTTPRequestHandler]:
    class Handler(_StubHandler):
        owner = stub

    return Handler


class _StubHandler(BaseHTTPRequestHandler):
    owner: ScriptedModelStub
    protocol_version = "HTTP/1.1"
    server_version = "scripted-model-stub/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        # every request is recorded instead of printed
        return

    def do_HEAD(self) -> None:
        self._probe(send_body=False)

    def do_GET(self) -> None:
        self._probe(send_body=True)

    def do_POST(self) -> None:
        raw = self._read_body()
        body = _parse_json(raw)
        rec = self._new_record(raw, body)
        if rec.kind == "main":
            self._answer_main(rec, body or {})
            return
        answer = self.owner.side_answer(rec.kind, rec.path, body)
        if isinstance(answer, list):
            rec.reply = "side stream"
            self.owner._record(rec)
            self._start_stream(answer)
        else:
            status, payload = answer
            rec.reply = f"side {status}"
            self.owner._record(rec)
            self._send_json(status, payload)

    def _probe(self, send_body: bool) -> None:
        rec = self._new_record(b"", None)
        rec.reply = "200 {}"
        self.owner._record(rec)
        self._send_json(200, {}, send_body=send_body)

    def _answer_main(self, rec: RecordedRequest, body: JsonObject) -> None:
        reply = self.owner._next_reply()
        n = self.owner._next_id()
        if reply is None:
            reply = Text("(stub: script exhausted)")
            rec.reply = "unscripted " + describe(reply)
        else:
            rec.reply = describe(reply)
        self.owner._record(rec)
        if isinstance(reply, Stall):
            self._serve_stall(rec, reply, body, n)
        else:
            self._start_stream(self.owner.reply_events(reply, body, n))

    def _serve_stall(self, rec: RecordedRequest, reply: Stall, body: JsonObject, n: int) -> None:
        head, tail = self.owner.stall_events(reply, body, n)
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
        try:
            for event in tail:
                self.wfile.write(event)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            rec.aborted_by_client = True

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
            seq=self.owner._next_seq(),
            at=time.monotonic(),
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
            kind="probe" if self.command != "POST" else self.owner.classify(self.command, parts.path, body),
        )

    def _send_json(self, status: int, payload: JsonObject, send_body: bool = True) -> None:
        data = orjson.dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if send_body:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _start_stream(self, events: list[bytes]) -> bool:
        # An event stream has no length: it ends when we close the connection.
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for event in events:
                self.wfile.write(event)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True


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
    """Whether the client hung up (readable, with nothing to read)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
