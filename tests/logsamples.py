"""Builders of session-log lines for tests: each returns one envelope line (bytes,
with its newline), shaped like what cairnd or PostHog Code writes.

    lines = lines_of(prompt_request(1, "hi"), agent_chunk("hello"), turn_complete())
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from cairnd.sessionlog.entries import cairnd_entry, envelope_line

SESSION = "s1"
SDK_SESSION = "sdk-1"
TIMESTAMP = "2026-11-22T10:00:00.123Z"


def line(message: dict[str, Any]) -> bytes:
    """Any JSON-RPC message as a log line."""
    return envelope_line(message, TIMESTAMP)


def as_agent(line_bytes: bytes) -> bytes:
    """The same message as the agent would have sent it (`"from":"agent"`): what an agent
    writes to its stdout, whatever it claims to be."""
    import orjson

    from cairnd.sessionlog.entries import envelope_raw_line

    return envelope_raw_line(orjson.dumps(orjson.loads(line_bytes)["notification"]), TIMESTAMP, sender="agent")


def legacy(line_bytes: bytes) -> bytes:
    """The same line as a log written before provenance (or by PostHog Code) has it: no `from`."""
    import orjson

    envelope = orjson.loads(line_bytes)
    envelope.pop("from", None)
    return orjson.dumps(envelope) + b"\n"


def _posthog(name: str, params: dict[str, Any], quirk: bool) -> bytes:
    prefix = "__posthog/" if quirk else "_posthog/"
    return line(cairnd_entry(prefix + name, params))


def prompt_request(
    request_id: int | str, text_or_blocks: str | list[dict[str, Any]], session: str = SDK_SESSION
) -> bytes:
    """A `session/prompt` request: a top-level user message."""
    blocks = (
        [{"type": "text", "text": text_or_blocks}]
        if isinstance(text_or_blocks, str)
        else text_or_blocks
    )
    return line(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "session/prompt",
            "params": {"sessionId": session, "prompt": blocks},
        }
    )


def response(request_id: int | str, result: Any = None, error: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is not None:
        message["error"] = error
    else:
        message["result"] = result
    return line(message)


def prompt_response(request_id: int | str, stop_reason: str = "end_turn") -> bytes:
    return response(request_id, {"stopReason": stop_reason})


def request(request_id: int | str, method: str, params: dict[str, Any] | None = None) -> bytes:
    return line({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})


def _update(
    kind: str,
    text: str,
    sub: str | None,
    message_id: str | None,
    meta_message_id: str | None,
    session: str,
) -> bytes:
    update: dict[str, Any] = {"sessionUpdate": kind, "content": {"type": "text", "text": text}}
    if message_id is not None:
        update["messageId"] = message_id
    cairnd_meta: dict[str, Any] = {}
    if sub is not None:
        cairnd_meta["subSession"] = sub
    if meta_message_id is not None:
        cairnd_meta["messageId"] = meta_message_id
    if cairnd_meta:
        update["_meta"] = {"cairnd": cairnd_meta}
    return line(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session, "update": update},
        }
    )


def user_chunk(
    text: str,
    sub: str | None = None,
    message_id: str | None = None,
    meta_message_id: str | None = None,
    session: str = SDK_SESSION,
) -> bytes:
    """A `user_message_chunk`: a sub-session message when `sub` is given, else an echo."""
    return _update("user_message_chunk", text, sub, message_id, meta_message_id, session)


def agent_chunk(
    text: str, sub: str | None = None, message_id: str | None = None, session: str = SDK_SESSION
) -> bytes:
    return _update("agent_message_chunk", text, sub, message_id, None, session)


def thought_chunk(text: str, sub: str | None = None) -> bytes:
    return _update("agent_thought_chunk", text, sub, None, None, SDK_SESSION)


def tool_call(tool_call_id: str, title: str = "edit", sub: str | None = None) -> bytes:
    update: dict[str, Any] = {
        "sessionUpdate": "tool_call",
        "toolCallId": tool_call_id,
        "title": title,
        "status": "pending",
    }
    if sub is not None:
        update["_meta"] = {"cairnd": {"subSession": sub}}
    return line(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": SDK_SESSION, "update": update},
        }
    )


def checkpoint(
    turns: int = 0,
    head_sha: str = "a" * 40,
    worktree_sha: str | None = "b" * 40,
    session: str = SESSION,
    quirk: bool = False,
    only_head: bool = False,
) -> bytes:
    """An `agent_checkpoint`; `only_head` gives PostHog Code's shape (headSha alone)."""
    if only_head:
        params: dict[str, Any] = {"headSha": head_sha}
    else:
        params = {
            "sessionId": session,
            "turns": turns,
            "headSha": head_sha,
            "branch": None,
            "indexTree": "c" * 40,
            "worktreeSha": worktree_sha,
            "ref": f"refs/cairnd/{session}/{turns}",
            "dirty": False,
            "skipped": [],
        }
    return _posthog("agent_checkpoint", params, quirk)


def checkpoint_params(line_bytes: bytes) -> dict[str, Any]:
    """The params a checkpoint line carries (to compare with a ForkPoint)."""
    from cairnd.sessionlog.entries import parse_message

    message = parse_message(line_bytes)
    assert message is not None
    return message["params"]


def turn_complete(stop_reason: str = "end_turn", session: str = SESSION, quirk: bool = False) -> bytes:
    return _posthog("turn_complete", {"sessionId": session, "stopReason": stop_reason}, quirk)


def sdk_session(
    sdk_session_id: str = SDK_SESSION, adapter: str = "reference", session: str = SESSION, quirk: bool = False
) -> bytes:
    return _posthog(
        "sdk_session",
        {"sessionId": session, "sdkSessionId": sdk_session_id, "adapter": adapter},
        quirk,
    )


def fork_meta(
    session: str = "f1",
    parent: str = SESSION,
    user_message_index: int = 1,
    head_sha: str = "a" * 40,
    worktree_sha: str = "b" * 40,
    sdk_session_id: str | None = None,
) -> bytes:
    return _posthog(
        "fork_session_meta",
        {
            "sessionId": session,
            "parentSessionId": parent,
            "userMessageIndex": user_message_index,
            "headSha": head_sha,
            "worktreeSha": worktree_sha,
            "sdkSessionId": sdk_session_id,
        },
        False,
    )


def usage_update(quirk: bool = True) -> bytes:
    """A PostHog extension cairnd does not know (readers must pass it over)."""
    return _posthog("usage_update", {"used": 1000, "size": 200000}, quirk)


def lines_of(*entries: bytes) -> list[tuple[int, bytes]]:
    """Entries as `(offset, line)` pairs, as `cairnd.sessionlog.file.iter_lines` yields them."""
    pairs: list[tuple[int, bytes]] = []
    offset = 0
    for entry in entries:
        pairs.append((offset, entry))
        offset += len(entry)
    return pairs


def log_bytes(*entries: bytes) -> bytes:
    return b"".join(entries)


# --- hypothesis strategies -------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)

_cairnd_meta = st.fixed_dictionaries(
    {}, optional={"subSession": st.one_of(json_values, st.sampled_from(["a", "a/b"])), "messageId": json_values}
)
_updates = st.fixed_dictionaries(
    {"sessionUpdate": st.sampled_from(["user_message_chunk", "agent_message_chunk", 3])},
    optional={
        "_meta": st.one_of(json_values, st.fixed_dictionaries({"cairnd": st.one_of(json_values, _cairnd_meta)})),
        "content": st.one_of(json_values, st.fixed_dictionaries({"type": st.just("text"), "text": json_values})),
        "messageId": json_values,
    },
)
_params = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.one_of(json_values, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": json_values}))),
        "update": st.one_of(json_values, _updates),
        "stopReason": json_values,
        "sdkSessionId": json_values,
        "adapter": json_values,
    },
)
malformed_messages = st.fixed_dictionaries(
    {
        "method": st.sampled_from(
            [
                "session/prompt",
                "session/update",
                "_posthog/agent_checkpoint",
                "__posthog/agent_checkpoint",
                "_posthog/turn_complete",
                "_posthog/sdk_session",
                "_posthog/fork_session_meta",
                "fs/read_text_file",
                5,
            ]
        )
    },
    optional={"id": json_values, "params": st.one_of(json_values, _params)},
)
"""Messages of the shapes readers look for, with values of every wrong type inside."""


def malformed_lines() -> st.SearchStrategy[bytes]:
    """Log lines that are envelopes of malformed messages, responses, or raw garbage."""
    responses = st.fixed_dictionaries({"id": json_values}, optional={"result": json_values, "error": json_values})
    garbage = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n")
    return st.one_of(malformed_messages.map(line), responses.map(line), garbage)
