"""Every frame between cairnd and an agent into the session log, byte for byte, in the
order it crossed, each under the side that sent it (SPEC 3, provenance: `from` is
`client` for what cairnd wrote to the agent's stdin, `agent` for what it read from the
agent's stdout, whatever that frame claims to be).

The SDK never touches the agent's pipes. `Tap.pump` reads the agent's stdout, logs each
line verbatim, then feeds it to the StreamReader the SDK reads; the SDK writes into
`Tap.writer`, a transport that logs each line, then writes it to the agent's stdin. So
the log holds what crossed the wire, including frames the SDK's schema rejects: session
updates are not handed to the SDK at all (the log is all cairnd does with them), and
the prompt is cairnd's own frame and its answer is read raw, never given to the SDK, so
no frame an agent sends can break a turn.

Each frame is one `os.write` on the event loop: page-cache fast, and deliberate, since
a frame must be in the log before the SDK or the agent sees it. Durability is the
turn's end (`fsync` in a worker thread), not each frame's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from cairnd.sessionlog.entries import FROM_AGENT, FROM_CLIENT, PROMPT_METHOD, UPDATE_METHOD, envelope_encoded
from cairnd.sessionlog.file import SessionLog

READ_CHUNK = 1 << 16
SDK_READER_LIMIT = 50 * 1024 * 1024  # frames up to this size reach the SDK in one piece


class Tap:
    """Logs every frame as it crosses, sends cairnd's prompt and keeps the raw response
    to it (its stop reason is taken from there; the SDK never sees either)."""

    def __init__(self, log: SessionLog, observe: Callable[[bytes, dict[str, Any] | None], None] | None = None
                 ) -> None:
        self.log = log
        # An editor in front of the session (cairnd acp) sees each frame from the agent
        # once it is in the log, before the SDK acts on it: its bytes and their parse
        # (None when they are not one JSON object), made once, for the log.
        self.observe = observe
        # cairnd's own JSON-RPC ids for prompts, far from those the SDK numbers its
        # requests with from 0 on the same connection.
        self._prompt_ids = itertools.count(1 << 40)
        self.prompt_id: Any = None  # of the prompt in flight, once sent
        self.prompt_response: dict[str, Any] | None = None
        self.prompt_answered = anyio.Event()

    @property
    def prompt_sent(self) -> bool:
        return self.prompt_id is not None

    def expect_prompt(self) -> None:
        """A turn begins: none of its prompt sent yet."""
        self.prompt_id = None
        self.prompt_response = None

    def send_prompt(self, stdin: asyncio.StreamWriter, session_id: str, blocks: list[dict[str, Any]]) -> None:
        """cairnd's own `session/prompt`, logged, then written to the agent's stdin, now
        (OSError, and not sent, when the log refuses it); its answer is `answer()`'s, and
        never the SDK's, which expects none."""
        request_id = next(self._prompt_ids)
        frame = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": PROMPT_METHOD,
                              "params": {"sessionId": session_id, "prompt": blocks}})
        self.log.append_line(envelope_encoded(frame, sender=FROM_CLIENT))
        self.prompt_id = request_id
        stdin.write(frame + b"\n")
        self.prompt_answered = anyio.Event()  # after: the agent is at work meanwhile; the answer is read after a yield

    async def answer(self, gone: anyio.Event) -> dict[str, Any] | None:
        """The raw answer to the prompt sent, or None once `gone` (the agent's stdout
        closed) without one."""
        if self.prompt_response is None and not gone.is_set():
            async with anyio.create_task_group() as waits:
                waits.start_soon(_set_when, gone, self.prompt_answered)
                await self.prompt_answered.wait()
                waits.cancel_scope.cancel()
        return self.prompt_response

    def outgoing(self, frame: bytes) -> None:
        if frame.strip():
            self.log.append_raw(frame, sender=FROM_CLIENT)

    def incoming(self, frame: bytes) -> bool:
        """Log a frame from the agent; whether the SDK needs to see it. Session updates
        it does not: the log is all cairnd does with them, and the SDK's model of each
        streaming chunk would only cost time and log noise for every chunk that does not
        validate (claude-agent-acp's `usage_update` with `used: null`)."""
        if not frame.strip():
            return False
        message = self.log.append_raw(frame, sender=FROM_AGENT)
        if self.observe is not None:
            self.observe(frame, message)
        if message is None:
            return True  # the SDK says what it makes of garbage, as it would without the tap
        if message.get("method") == UPDATE_METHOD and "id" not in message:
            return False
        if self.prompt_id is not None and self.prompt_response is None and "method" not in message \
                and message.get("id") == self.prompt_id:
            self.prompt_response = message
            self.prompt_answered.set()
            return False  # the answer to cairnd's own prompt (send_prompt): the SDK awaits none
        return True

    def reader(self) -> asyncio.StreamReader:
        """The stream the SDK reads the agent from (fed by `pump`)."""
        return asyncio.StreamReader(limit=SDK_READER_LIMIT)

    def writer(self, stdin: asyncio.StreamWriter, refused: Callable[[], None]) -> asyncio.StreamWriter:
        """The stream the SDK writes the agent through: logged, then to `stdin`. A frame
        the log refuses (a full disk) is not sent and calls `refused`: the SDK's sender
        dies with the error, so nothing more can reach the agent, which must be stopped
        as when its stdout cannot be logged (`pump`)."""
        loop = asyncio.get_running_loop()
        return asyncio.StreamWriter(_TapTransport(stdin, self, refused), _TapProtocol(stdin), None, loop)

    async def pump(self, stdout: asyncio.StreamReader, reader: asyncio.StreamReader) -> None:
        """Log each line of the agent's stdout, handing the SDK those it needs, until
        stdout closes (or the log cannot be written: then as if it had)."""
        pending = bytearray()
        try:
            while chunk := await stdout.read(READ_CHUNK):
                scan_from = len(pending)
                pending += chunk
                while (end := pending.find(b"\n", scan_from)) >= 0:
                    line = bytes(pending[:end + 1])
                    del pending[:end + 1]
                    scan_from = 0
                    if self.incoming(line):
                        reader.feed_data(line)
            if pending and self.incoming(bytes(pending)):  # a last frame without its newline
                reader.feed_data(bytes(pending) + b"\n")
        except OSError:
            pass  # the log could not be written: treat it as the end of the agent
        finally:
            reader.feed_eof()


def wire_block(block: Any) -> dict[str, Any]:
    """A prompt content block (an SDK model) as the SDK puts it on the wire."""
    return block.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


async def _set_when(happened: anyio.Event, then: anyio.Event) -> None:
    await happened.wait()
    then.set()


class _TapTransport(asyncio.WriteTransport):
    """What the SDK writes to: each line is logged, then written to the agent's stdin."""

    def __init__(self, stdin: asyncio.StreamWriter, tap: Tap, refused: Callable[[], None]) -> None:
        super().__init__()
        self._stdin = stdin
        self._tap = tap
        self._refused = refused
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end + 1])
            del self._pending[:end + 1]
            try:
                self._tap.outgoing(line)
            except OSError:
                self._refused()
                raise
            self._stdin.write(line)

    def is_closing(self) -> bool:
        return self._stdin.is_closing()

    def close(self) -> None:
        self._stdin.close()

    def abort(self) -> None:
        self._stdin.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._stdin.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._stdin.transport.get_write_buffer_size()


class _TapProtocol(asyncio.BaseProtocol):
    """Gives the SDK's `drain()` the agent's real stdin backpressure."""

    def __init__(self, stdin: asyncio.StreamWriter) -> None:
        self._stdin = stdin

    async def _drain_helper(self) -> None:  # the hook asyncio.StreamWriter.drain awaits
        await self._stdin.drain()
