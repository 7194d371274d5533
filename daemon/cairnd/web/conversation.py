"""A session log as people read it, as pure functions over log lines.

`ConversationReader` is fed log lines in order and says what changes on the page, as
plain dicts ("ops"):

- `{"op": "add", "item": {...}}`: a new element (user or agent message, tool call,
  sub-session group, checkpoint, turn end, fork or rewind divider); `item["parent"]`
  names the sub-session group it belongs in, or is None;
- `{"op": "extend", "key": K, "text": T}`: more text of a message already shown;
- `{"op": "patch", "key": K, "status": S, "output": O}`: a tool call's new status
  and output.

Its whole state is a small dict (`state()`), so a page can stop after a screenful and
the next page, or the live stream, carry on from that cursor with the same keys:
element keys are derived from what came before (the user message ordinal, the turn,
the line's byte offset), never from a page's own position. User message ordinals are
counted by the fork rule's own counter, so a "Fork from here" button names exactly
the message a fork request would cut at.

`fold` applies a page's ops to its own items and returns what is left over (patches
of elements shown on an earlier page).
"""

from __future__ import annotations

from typing import Any

import orjson

from cairnd.sessionlog.entries import (
    CHECKPOINT_METHOD,
    FORK_META_METHOD,
    REWIND_METHOD,
    TURN_COMPLETE_METHOD,
    TURN_START_METHOD,
    method_of,
    parse_message,
)
# The fork rule's own counter, so that ordinals here are the ones a fork request means.
from cairnd.sessionlog.forkpoint import CountState, MoreText, UserMessage, feed_line

Op = dict[str, Any]

# Tool input and output beyond this many characters are cut on the page (the log keeps
# them whole): a screenful must stay a screenful.
SHOWN_CHARS = 8000



def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters in the log)"


def _block_text(block: Any) -> str:
    """The text of one ACP content block (or tool call content), as far as it has one."""
    block = _dict(block)
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return block["text"]
    if kind == "content":
        return _block_text(block.get("content"))
    if kind == "diff":
        return f"diff of {block.get('path')}:\n{block.get('newText') or ''}"
    if kind == "resource":
        resource = _dict(block.get("resource"))
        return str(resource.get("text") or resource.get("uri") or "")
    return ""


def _contents_text(content: Any) -> str | None:
    if content is None:
        return None
    blocks = content if isinstance(content, list) else [content]
    return "\n".join(text for text in (_block_text(block) for block in blocks) if text)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return clip(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def initial_state() -> dict[str, Any]:
    return {
        "offset": 0,
        "ordinal": 0,  # the fork counter's: user messages seen so far (sub-sessions too)
        "open_sub": None,  # the fork counter's open sub-session message
        "turn": -1,  # top-level prompts seen so far, minus one: the current turn's index
        "running": False,  # a turn started and has not completed
        "last_user": None,  # key of the user message the counter's more text belongs to
        "agent": None,  # [key, messageId] of the top-level agent message being written
        "sub": {},  # sub-session -> [key, kind, messageId] of its message being written
        "groups": [],  # sub-session groups of the current turn already added
        "worktree_sha": None,  # the last checkpoint's: what the next one is compared with
    }


class ConversationReader:
    """Feed it complete log lines in order (`feed`); it returns the ops of each."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.s = {**initial_state(), **(state or {})}
        open_sub = self.s["open_sub"]
        self.count = CountState(int(self.s["ordinal"]), tuple(open_sub) if open_sub else None)  # type: ignore[arg-type]

    def state(self) -> dict[str, Any]:
        self.s["ordinal"] = self.count.ordinal
        self.s["open_sub"] = list(self.count.open_sub) if self.count.open_sub else None
        return dict(self.s)

    # ---------------------------------------------------------------- feeding

    def feed(self, offset: int, line: bytes) -> list[Op]:
        self.s["offset"] = offset + len(line)
        message = parse_message(line)
        if message is None:
            return []
        ops: list[Op] = []
        events, self.count = feed_line(self.count, 0, offset, line)
        for event in events:
            if isinstance(event, UserMessage):
                ops.extend(self._user(event))
            elif isinstance(event, MoreText) and self.s["last_user"] and event.text:
                ops.append({"op": "extend", "key": self.s["last_user"], "text": event.text})
        if ops:
            return ops
        method = method_of(message)
        params = _dict(message.get("params"))
        if method == "session/update":
            return self._update(offset, _dict(params.get("update")))
        if method == TURN_START_METHOD:
            self.s["running"] = True
        elif method == TURN_COMPLETE_METHOD:
            self.s["running"] = False
            self.s["agent"] = None
            failure = params.get("failure")
            return [self._add({"key": f"te{offset}", "kind": "turn_end", "turn": self.s["turn"],
                               "stopReason": params.get("stopReason"),
                               "failure": failure if isinstance(failure, str) else None})]
        elif method == CHECKPOINT_METHOD:
            previous = self.s["worktree_sha"]
            self.s["worktree_sha"] = params.get("worktreeSha")
            baseline = previous is None or bool(self.s.pop("baseline_next", False))
            return [self._add({"key": f"cp{offset}", "kind": "checkpoint", "turns": params.get("turns"),
                               "baseline": baseline,
                               "headSha": params.get("headSha"), "branch": params.get("branch"),
                               "dirty": params.get("dirty"), "worktreeSha": params.get("worktreeSha"),
                               "previous": previous, "skipped": params.get("skipped") or []})]
        elif method == FORK_META_METHOD:
            self.s["running"] = False
            self.s["baseline_next"] = True  # the checkpoint after it is the fork's own start
            return [self._add({"key": f"fm{offset}", "kind": "fork_meta",
                               "parent": None, "parentSession": params.get("parentSessionId"),
                               "userMessageIndex": params.get("userMessageIndex")})]
        elif method == REWIND_METHOD:
            self.s["running"] = False
            self.s["baseline_next"] = True
            return [self._add({"key": f"rw{offset}", "kind": "rewind",
                               "userMessageIndex": params.get("userMessageIndex"),
                               "abandoned": params.get("abandoned")})]
        return []

    def _add(self, item: dict[str, Any]) -> Op:
        item.setdefault("parent", None)
        if item["parent"] is None and item["kind"] != "agent":
            self.s["agent"] = None  # the next agent text starts a new message
        return {"op": "add", "item": item}

    def _user(self, event: UserMessage) -> list[Op]:
        key = f"u{event.ordinal}"
        self.s["last_user"] = key
        if event.top_level:
            self.s["turn"] += 1
            self.s["sub"] = {}
            self.s["groups"] = []
            return [self._add({"key": key, "kind": "user", "ordinal": event.ordinal,
                               "turn": self.s["turn"], "text": event.text})]
        ops = self._group(event.sub_session or "")
        group = ops[-1]["item"]["key"] if ops else self._group_key(event.sub_session or "")
        self.s["sub"][event.sub_session] = [key, "user", None]
        ops.append(self._add({"key": key, "kind": "user", "ordinal": event.ordinal, "turn": self.s["turn"],
                              "text": event.text, "parent": group, "sub": event.sub_session}))
        return ops

    def _group_key(self, sub: str) -> str:
        return f"s{max(self.s['turn'], 0)}-{sub}"

    def _group(self, sub: str) -> list[Op]:
        """The op adding `sub`'s folded group, when this turn has not shown it yet."""
        if sub in self.s["groups"]:
            return []
        self.s["groups"] = [*self.s["groups"], sub]
        return [self._add({"key": self._group_key(sub), "kind": "sub", "sub": sub})]

    def _update(self, offset: int, update: dict[str, Any]) -> list[Op]:
        kind = update.get("sessionUpdate")
        sub = _dict(_dict(update.get("_meta")).get("cairnd")).get("subSession")
        sub = sub if isinstance(sub, str) and sub else None
        if kind in ("agent_message_chunk", "agent_thought_chunk"):
            text = _block_text(update.get("content"))
            if not text:
                return []
            message_id = update.get("messageId")
            item_kind = "agent" if kind == "agent_message_chunk" else "thought"
            if sub is None:
                current = self.s["agent"]
                if current and current[1] == message_id and current[2] == item_kind:
                    return [{"op": "extend", "key": current[0], "text": text}]
                key = f"a{offset}"
                ops = [self._add({"key": key, "kind": item_kind, "text": text})]
                self.s["agent"] = [key, message_id, item_kind]
                return ops
            ops = self._group(sub)
            current = self.s["sub"].get(sub)
            if current and current[1] == item_kind and current[2] == message_id and message_id is not None:
                return ops + [{"op": "extend", "key": current[0], "text": text}]
            key = f"a{offset}"
            self.s["sub"][sub] = [key, item_kind, message_id]
            ops.append(self._add({"key": key, "kind": item_kind, "text": text,
                                  "parent": self._group_key(sub), "sub": sub}))
            return ops
        if kind == "tool_call":
            call = update.get("toolCallId")
            key = f"tc{max(self.s['turn'], 0)}-{call}"
            ops = self._group(sub) if sub else []
            ops.append(self._add({
                "key": key, "kind": "tool", "title": str(update.get("title") or call or "tool call"),
                "toolKind": update.get("kind"), "status": update.get("status") or "pending",
                "input": _json_text(update.get("rawInput")),
                "output": clip(_contents_text(update.get("content")) or "") or None,
                "parent": self._group_key(sub) if sub else None, "sub": sub,
            }))
            if sub:
                self.s["sub"].pop(sub, None)
            return ops
        if kind == "tool_call_update":
            call = update.get("toolCallId")
            output = _contents_text(update.get("content"))
            if output is None and update.get("rawOutput") is not None:
                output = _json_text(update.get("rawOutput"))
            return [{"op": "patch", "key": f"tc{max(self.s['turn'], 0)}-{call}",
                     "status": update.get("status"), "output": clip(output) if output else None,
                     "title": update.get("title") if isinstance(update.get("title"), str) else None}]
        if kind == "plan":
            entries = [entry for entry in update.get("entries") or [] if isinstance(entry, dict)]
            text = "\n".join(f"[{entry.get('status', '')}] {entry.get('content', '')}" for entry in entries)
            return [self._add({"key": f"pl{offset}", "kind": "plan", "text": text})] if text else []
        return []


def fold(ops: list[Op]) -> tuple[list[dict[str, Any]], list[Op]]:
    """A page's ops applied to its own items: the items in order (each group's members
    under its `children`), and the ops that touch elements of earlier pages."""
    items: dict[str, dict[str, Any]] = {}
    top: list[dict[str, Any]] = []
    leftover: list[Op] = []
    for op in ops:
        if op["op"] == "add":
            item = dict(op["item"])
            if item["key"] in items:
                continue
            items[item["key"]] = item
            if item["kind"] == "sub":
                item["children"] = []
            parent = items.get(item["parent"]) if item["parent"] else None
            if parent is not None:
                parent["children"].append(item)
            elif item["parent"] is not None:
                leftover.append({"op": "add", "item": item})  # its group is on an earlier page
            else:
                top.append(item)
            continue
        target = items.get(op["key"])
        if target is None:
            leftover.append(op)
        elif op["op"] == "extend":
            target["text"] = target.get("text", "") + op["text"]
        elif op["op"] == "patch":
            for field in ("status", "output", "title"):
                if op.get(field) is not None:
                    target[field] = op[field]
    return top, leftover
