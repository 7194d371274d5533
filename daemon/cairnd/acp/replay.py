"""A session's log read for an editor (SPEC 18): the conversation `session/load` replays,
and where an editor's `session/fork` cuts. Pure over the log's lines; blocking I/O.

The replay is what the editor showed when the turns ran: each prompt's text, the
agent's updates during its turn (messages, thoughts, tool calls and their results,
plans), and each slash command with cairnd's answer. What the agent sent outside a
turn (a history it replayed to cairnd on a restart, its commands list) is not the
conversation, and a prompt's `cairnd://replay` block was cairnd's, not the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cairnd.errors import CairnError
from cairnd.sessionlog import cutindex
from cairnd.sessionlog.entries import (
    AGENT_TEXT_MARK,
    COMMAND_METHOD,
    TURN_COMPLETE_METHOD,
    as_dict,
    is_prompt_request,
    method_of,
    params_of,
    parse_message,
    update_of,
)
from cairnd.sessionlog.file import iter_lines

# Updates that are not the conversation: the agent's own echo of the prompt (the prompt
# itself is replayed), and state the editor gets afresh when the session opens.
NOT_CONVERSATION = frozenset({"available_commands_update", "current_mode_update", "config_option_update",
                              "usage_update", "session_info_update"})


def _text(text: str, kind: str) -> dict[str, Any]:
    return {"sessionUpdate": kind, "content": {"type": "text", "text": text}}


def conversation_updates(log: Path) -> list[dict[str, Any]]:
    """The `update`s session/load sends the editor, in order (see the module docstring)."""
    updates: list[dict[str, Any]] = []
    in_turn = False
    for _offset, line in iter_lines(log):
        message = parse_message(line)  # never an agent's forged prompt or cairnd entry
        if message is None:
            continue
        if is_prompt_request(message):
            in_turn = True
            for block in as_dict(params_of(message)).get("prompt") or []:
                if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                    updates.append(_text(block["text"], "user_message_chunk"))
            continue
        method = method_of(message)
        if method == TURN_COMPLETE_METHOD:
            in_turn = False
        elif method == COMMAND_METHOD:
            params = params_of(message)
            updates.append(_text(str(params.get("command", "")), "user_message_chunk"))
            updates.append(_text(str(params.get("result", "")), "agent_message_chunk"))
        elif in_turn and (update := update_of(message)):
            kind = update.get("sessionUpdate")
            sub = as_dict(as_dict(update.get("_meta")).get("cairnd")).get("subSession")
            if kind not in NOT_CONVERSATION and (kind != "user_message_chunk" or sub):
                updates.append(update)
    return updates


def fork_index(log: Path, message_id: str | None) -> tuple[int, bool]:
    """Where an editor's session/fork cuts: after the agent message `message_id`
    (before the next user message), or at the tip. Returns (the user message index,
    whether that is the tip). User messages are counted as a fork counts them (the cut
    index: only what cairnd sent is a user message)."""
    index = cutindex.current(log)
    if message_id is None:
        return index.state.ordinal, True
    wanted = message_id.encode()
    at = None
    for offset, line in iter_lines(log):
        if AGENT_TEXT_MARK in line and wanted in line:
            update = update_of(parse_message(line) or {}) or {}
            if update.get("sessionUpdate") == "agent_message_chunk" and update.get("messageId") == message_id:
                at = offset
                break
    if at is None:
        raise CairnError("fork_out_of_range", f"messageId {message_id!r}: no agent message with that id in the session")
    k = sum(1 for found in index.messages if found.message.offset < at)
    return k, k == index.state.ordinal
