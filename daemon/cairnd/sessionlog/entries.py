"""The session log's vocabulary (SPEC 3), pure: method names, the byte marks readers skip
lines by, the envelope, accessors for the messages it holds, and the constructors of
cairnd's own entries. No I/O: `cairnd.log` reads and writes the file.

A log line is one envelope, `{"type":"notification","timestamp":...,"from":...,
"notification":<JSON-RPC message>}` (the format PostHog Code uses, whose reader ignores
envelope keys it does not know). Readers never trust a line: `parse_message` turns
anything that is not an envelope into None, and every accessor takes whatever shape a
message has without raising.

Provenance (SPEC 3). `from` says who sent the line's message: `agent` (a frame read
from the agent's stdout), `client` (a frame cairnd sent the agent) or `cairnd` (an
entry of cairnd's own). An agent can write any bytes to its stdout, so a frame from the
agent is never read as what only cairnd says: a `session/prompt` (a top-level user
message, a turn), or a `_posthog/` or `_cairnd/` entry (checkpoints, turn boundaries,
the agent identity, forks, rewinds). `parse_message`, which every reader goes through,
drops such a frame; the agent's own words (its updates, responses, requests) read as
before. A line without `from` was written before cairnd recorded it, or by PostHog
Code: its sender is inferred from the message's shape (what only a client or cairnd
sends is taken as theirs), which is all such a log can say. A log cairnd writes has
`from` on every line, so the inference never applies to a frame an agent sent it; a
fork's copied prefix keeps each line's own `from`, or its absence.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson


# -- who sent a line (the envelope's `from`) ------------------------------------------------

SENDER_KEY = "from"
FROM_AGENT = "agent"  # read from the agent's stdout: hostile input
FROM_CLIENT = "client"  # cairnd sent it to the agent
FROM_CAIRND = "cairnd"  # cairnd's own entry
SENDERS = (FROM_AGENT, FROM_CLIENT, FROM_CAIRND)

# -- method names ---------------------------------------------------------------------

PROMPT_METHOD = "session/prompt"
UPDATE_METHOD = "session/update"
CHECKPOINT_METHOD = "_posthog/agent_checkpoint"
GIT_CHECKPOINT_METHOD = "_posthog/git_checkpoint"  # PostHog Code's own (read, never written)
TURN_COMPLETE_METHOD = "_posthog/turn_complete"
SDK_SESSION_METHOD = "_posthog/sdk_session"
FORK_META_METHOD = "_posthog/fork_session_meta"
TURN_START_METHOD = "_cairnd/turn_start"
REWIND_METHOD = "_cairnd/rewind"  # last line of the prefix a rewind kept (SPEC 13)
INVALID_FRAME_METHOD = "_cairnd/invalid_frame"
CHECK_METHOD = "_cairnd/check"  # a command run in the session's worktree, and how it ended (SPEC 19)
COMMAND_METHOD = "_cairnd/command"  # a slash command cairnd acp answered (SPEC 18)

# Readers must accept the SDK's double underscore (SPEC 3).
_POSTHOG_QUIRK = "__posthog/"
_POSTHOG = "_posthog/"

# -- byte marks -------------------------------------------------------------------------
# A reader that needs only some entries tests each line for one of these before parsing
# it: most lines of a long log are agent chatter. They assume the names are written
# plainly, as every JSON serialiser of ACP frames writes them.

PROMPT_MARK = b'session/prompt"'  # a method value is always followed by its quote
UPDATE_MARK = b'session/update"'
USER_CHUNK_MARK = b"user_message_chunk"
AGENT_TEXT_MARK = b"agent_message_chunk"
CHECKPOINT_MARK = b"agent_checkpoint"
GIT_CHECKPOINT_MARK = b"git_checkpoint"
TURN_COMPLETE_MARK = b"turn_complete"
TURN_START_MARK = b"_cairnd/turn_start"
REWIND_MARK = b"_cairnd/rewind"
FORK_META_MARK = b"fork_session_meta"
SUB_SESSION_MARK = b"subSession"
POSTHOG_MARK = b"_posthog/"  # also within the `__posthog/` spelling
ID_MARK = b'"id"'  # requests and responses

Lines = Iterable[tuple[int, bytes]]  # `(offset, line)` pairs, as `cairnd.sessionlog.file.iter_lines` yields


# -- the envelope -------------------------------------------------------------------------


def now_timestamp() -> str:
    """The current UTC time as the envelope wants it: `2026-11-22T10:00:00.123Z`.
    Every frame gets one, on the way between editor and agent: the second's text is
    made once (datetime would cost several times as much per frame)."""
    second, rest = divmod(time.time_ns(), 1_000_000_000)
    return f"{_second_text(second)}{rest // 1_000_000:03d}Z"


@functools.lru_cache(maxsize=1)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))


def iso_timestamp(seconds: float) -> str:
    """A Unix time in the envelope's ISO 8601 form, `2026-11-22T10:00:00.123Z`."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_SENDER_BYTES = {sender: b',"' + SENDER_KEY.encode() + b'":"' + sender.encode() + b'"' for sender in SENDERS}


def _envelope_head(timestamp: str | None, sender: str) -> bytes:
    stamp = orjson.dumps(timestamp if timestamp is not None else now_timestamp())
    return b'{"type":"notification","timestamp":' + stamp + _SENDER_BYTES[sender] + b',"notification":'


def envelope_line(message: dict[str, Any], timestamp: str | None = None, sender: str = FROM_CAIRND) -> bytes:
    """One complete log line (with its `\\n`) holding `message`, cairnd's own unless
    `sender` says otherwise."""
    return envelope_encoded(orjson.dumps(message), timestamp, sender)


def envelope_encoded(frame: bytes, timestamp: str | None = None, sender: str = FROM_CAIRND) -> bytes:
    """`envelope_line` of a message cairnd has already encoded (`orjson.dumps`: one JSON
    object on one line), as sent: a frame cairnd writes is logged as it wrote it."""
    return _envelope_head(timestamp, sender) + frame + b"}\n"


def envelope_raw_line(raw: bytes, timestamp: str | None = None, *, sender: str) -> bytes:
    """One log line holding a JSON-RPC frame exactly as it crossed the wire (see
    `envelope_frame`)."""
    return envelope_frame(raw, timestamp, sender=sender)[0]


def envelope_frame(raw: bytes, timestamp: str | None = None, *, sender: str
                   ) -> tuple[bytes, dict[str, Any] | None]:
    """One log line holding a JSON-RPC frame exactly as it crossed the wire, and the
    frame parsed (None when it is not one JSON object), for callers that act on it too:
    a frame is parsed once on its way through cairnd.

    The frame's bytes are spliced into the envelope, not re-serialised, so the log keeps
    what the agent really sent (key order, number spelling, unknown fields), under the
    envelope's `from` = `sender` (`agent` or `client`), which the frame cannot reach:
    it is one whole JSON object, nested in the envelope. A frame that is not one JSON
    object (garbage on the agent's stdout) is logged as a `_cairnd/invalid_frame` entry
    instead, still under its sender, so every line of the log stays parseable.
    """
    frame = raw.strip(b" \t\r\n")
    parsed = json_object(frame)
    if parsed is None:
        return envelope_line(invalid_frame_entry(raw), timestamp, sender), None
    if b"\n" in frame:
        # Pretty-printed JSON (newlines between tokens: a string cannot hold a raw
        # newline) would break the one-line-per-entry rule; only here is it re-serialised.
        frame = orjson.dumps(parsed)
    return _envelope_head(timestamp, sender) + frame + b"}\n", parsed


def json_object(data: bytes) -> dict[str, Any] | None:
    """`data` parsed, if it is one JSON object; None otherwise. Never raises."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_envelope(line: bytes) -> tuple[dict[str, Any], str] | None:
    """The JSON-RPC message of one envelope line and who sent it (`from`, or for a line
    without it, the sender its shape implies: `sender_by_shape`); None when the line is
    not a valid envelope (bad JSON, invalid UTF-8, not an object, no message). Never
    raises. For the rare reader that shows every frame; the rest use `parse_message`."""
    try:
        envelope = orjson.loads(line)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(envelope, dict):
        return None
    message = envelope.get("notification")
    if not isinstance(message, dict):
        return None
    sender = envelope.get(SENDER_KEY)
    return message, sender if sender in SENDERS else sender_by_shape(message)


def parse_message(line: bytes) -> dict[str, Any] | None:
    """The JSON-RPC message of one envelope line as a reader may believe it: None when
    the line is not a valid envelope, or when the agent sent a message only cairnd may
    say (`speaks_for_cairnd`: a forged prompt or cairnd entry). Never raises."""
    parsed = parse_envelope(line)
    if parsed is None:
        return None
    message, sender = parsed
    if sender == FROM_AGENT and speaks_for_cairnd(message):
        return None
    return message


def speaks_for_cairnd(message: dict[str, Any]) -> bool:
    """Whether only cairnd, as the client or in its own entries, may say `message`: a
    `session/prompt` (a user message, a turn), or a `_posthog/` (`__posthog/`) or
    `_cairnd/` method (checkpoints, turn boundaries, the agent identity, forks, rewinds)."""
    method = method_of(message)
    return method is not None and (method == PROMPT_METHOD or method.startswith((_POSTHOG, "_cairnd/")))


def sender_by_shape(message: dict[str, Any]) -> str:
    """Who sent a message, for a line without `from` (written before cairnd recorded
    it, or by PostHog Code): what only cairnd says is taken as cairnd's, as those logs
    were always read; anything else as the agent's (readers believe it either way)."""
    if not speaks_for_cairnd(message):
        return FROM_AGENT
    return FROM_CLIENT if message.get("method") == PROMPT_METHOD else FROM_CAIRND


def method_of(message: dict[str, Any]) -> str | None:
    """The message's method, with the `__posthog/` spelling read as `_posthog/`;
    None for responses and for messages whose method is not a string."""
    method = message.get("method")
    if not isinstance(method, str):
        return None
    if method.startswith(_POSTHOG_QUIRK):
        return _POSTHOG + method[len(_POSTHOG_QUIRK) :]
    return method


# -- accessors ----------------------------------------------------------------------------


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: for reading untrusted shapes."""
    return value if isinstance(value, dict) else {}


def params_of(message: dict[str, Any]) -> dict[str, Any]:
    return as_dict(message.get("params"))


def is_prompt_request(message: dict[str, Any]) -> bool:
    """A `session/prompt` request (not a notification, not a response)."""
    return message.get("method") == PROMPT_METHOD and "id" in message


def prompt_text(params: Any) -> str:
    """The text of a `session/prompt` request: its `text` blocks, concatenated."""
    blocks = as_dict(params).get("prompt")
    if not isinstance(blocks, list):
        return ""
    return "".join(
        block["text"]
        for block in blocks
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )


def update_of(message: dict[str, Any]) -> dict[str, Any] | None:
    """The `update` of a `session/update` notification; None for any other message."""
    if message.get("method") != UPDATE_METHOD:
        return None
    return as_dict(params_of(message).get("update"))


def sub_session_of(update: dict[str, Any]) -> str | None:
    """The sub-session a `session/update`'s `update` is marked with, if any."""
    sub = as_dict(as_dict(update.get("_meta")).get("cairnd")).get("subSession")
    return sub if isinstance(sub, str) and sub else None


def _text_of(update: dict[str, Any]) -> str | None:
    content = as_dict(update.get("content"))
    text = content.get("text")
    return text if content.get("type") == "text" and isinstance(text, str) else None


@dataclass(frozen=True)
class SubChunk:
    """A `user_message_chunk` an agent typed to a sub-agent (SPEC 4)."""

    sub_session: str
    message_id: str | None
    text: str


def sub_chunk(message: dict[str, Any]) -> SubChunk | None:
    """The sub-session user chunk this message is, if it is one."""
    update = update_of(message)
    if update is None or update.get("sessionUpdate") != "user_message_chunk":
        return None
    sub = sub_session_of(update)
    if sub is None:
        return None
    message_id = update.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        message_id = as_dict(as_dict(update.get("_meta")).get("cairnd")).get("messageId")
    if not isinstance(message_id, str) or not message_id:
        message_id = None
    return SubChunk(sub, message_id, _text_of(update) or "")


def top_level_agent_text(message: dict[str, Any]) -> str | None:
    """The text of a top-level `agent_message_chunk` (sub-session chunks are not the
    session's answer); None for any other message."""
    update = update_of(message)
    if update is None or update.get("sessionUpdate") != "agent_message_chunk":
        return None
    if sub_session_of(update) is not None:
        return None
    return _text_of(update)


# -- cairnd's own entries -------------------------------------------------------------------
# Key order is part of the log's bytes: keep it.


def cairnd_entry(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One of cairnd's own entries: an ACP extension notification."""
    return {"jsonrpc": "2.0", "method": method, "params": params}


def checkpoint_entry(params: dict[str, Any]) -> dict[str, Any]:
    """`_posthog/agent_checkpoint` with the params `cairnd.checkpoint` made."""
    return cairnd_entry(CHECKPOINT_METHOD, params)


def turn_complete_entry(session_id: str, stop_reason: str, failure: str | None = None) -> dict[str, Any]:
    """The end of a turn; `failure` says why an agent that failed it did (its exit and
    the last line of its stderr, as the request's error says), for readers of the log."""
    params: dict[str, Any] = {"sessionId": session_id, "stopReason": stop_reason}
    if failure is not None:
        params["failure"] = failure
    return cairnd_entry(TURN_COMPLETE_METHOD, params)


def turn_start_entry(session_id: str, turn: int, request_id: str | None) -> dict[str, Any]:
    """Written just before a prompt is sent, so recovery can tell whether a request's
    turn began."""
    return cairnd_entry(TURN_START_METHOD, {"sessionId": session_id, "turn": turn, "requestId": request_id})


def sdk_session_entry(session_id: str, sdk_session_id: str, adapter: str,
                      history: str | None = None) -> dict[str, Any]:
    """Which agent session (of which profile) holds this session's conversation, and how
    it got the conversation kept before it (SPEC 12: native, resume, load, replay, none)."""
    params = {"sessionId": session_id, "sdkSessionId": sdk_session_id, "adapter": adapter}
    if history is not None:
        params["history"] = history
    return cairnd_entry(SDK_SESSION_METHOD, params)


def fork_meta_entry(session_id: str, parent_id: str, user_message_index: int, head_sha: str,
                    worktree_sha: str | None) -> dict[str, Any]:
    """The first line of a fork's own part of its log (SPEC 5)."""
    return cairnd_entry(FORK_META_METHOD, {
        "sessionId": session_id,
        "parentSessionId": parent_id,
        "userMessageIndex": user_message_index,
        "headSha": head_sha,
        "worktreeSha": worktree_sha,
        "sdkSessionId": None,
    })


def rewind_entry(session_id: str, user_message_index: int, abandoned: str, head_sha: str,
                 worktree_sha: str | None) -> dict[str, Any]:
    """`_cairnd/rewind`: the last line of the prefix a rewind kept (SPEC 13)."""
    return cairnd_entry(REWIND_METHOD, {"sessionId": session_id, "userMessageIndex": user_message_index,
                                        "abandoned": abandoned, "headSha": head_sha, "worktreeSha": worktree_sha})


def check_entry(session_id: str, command: list[str], exit: int | None, output: str, turns: int | None,
                worktree_sha: str | None, timed_out: bool) -> dict[str, Any]:
    """`_cairnd/check`: a command run in the session's worktree after a turn (SPEC 19):
    its exit (None when it ran out of time), the last 64 KiB of its output, and the
    checkpoint it ran on."""
    return cairnd_entry(CHECK_METHOD, {"sessionId": session_id, "command": command, "exit": exit,
                                       "timedOut": timed_out, "output": output, "turns": turns,
                                       "worktreeSha": worktree_sha})


def command_entry(session_id: str, command: str, result: str) -> dict[str, Any]:
    """`_cairnd/command`: a slash command `cairnd acp` answered itself (SPEC 18); not a
    user message, never seen by the agent."""
    return cairnd_entry(COMMAND_METHOD, {"sessionId": session_id, "command": command, "result": result})


def invalid_frame_entry(raw: bytes) -> dict[str, Any]:
    """What stands in the log for a frame that was not one JSON object."""
    return cairnd_entry(INVALID_FRAME_METHOD, {"raw": raw.decode("utf-8", errors="replace")})
