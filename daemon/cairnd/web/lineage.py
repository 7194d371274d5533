"""The lineage of a root as the page draws it: each session with its top-level user
messages, and each fork hung at the message it was cut at (a fork at k keeps the
messages before k and puts its own in the place of message k). What a rewind to message
k left behind hangs at k too, said as such: it holds what followed."""

from __future__ import annotations

from contextlib import closing
from typing import Any

from cairnd.state.layout import StateLayout
from cairnd.errors import CairnError
from cairnd.sessionlog.forkpoint import count_user_messages
from cairnd.sessionlog.file import iter_lines
from cairnd.sessions.views import LineageNode, find_root, read_forest

MAX_MESSAGES = 200  # per session on the drawing; the session page shows them all
TEXT_CHARS = 140


def _messages(layout: StateLayout, session_id: str) -> list[dict[str, Any]]:
    path = layout.log_path(session_id)
    if not path.exists():
        return []
    with closing(iter_lines(path)) as lines:
        found = count_user_messages(lines)
    flat = []
    for message in found:
        if not message.top_level:
            continue
        text = " / ".join(part.strip() for part in message.text.splitlines() if part.strip())
        flat.append({"ordinal": message.ordinal,
                     "text": text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS - 3] + "..."})
    return flat


def draw(layout: StateLayout, node: LineageNode) -> dict[str, Any]:
    """A node with its messages, its forks placed at their message, recursively."""
    messages = _messages(layout, node.id) if node.state != "gone" else []
    children = [draw(layout, child) for child in node.children]
    by_message: dict[int, list[dict[str, Any]]] = {}
    for child in children:
        # What a rewind left behind is the whole session as it was: it branches where the
        # session went back to, not where its copy of the log ends.
        at = child["rewound_at"] if child["rewound_at"] is not None else child["user_message_index"]
        by_message.setdefault(at if isinstance(at, int) else -1, []).append(child)
    rows = []
    ordinals = set()
    for message in messages[:MAX_MESSAGES]:
        ordinals.add(message["ordinal"])
        rows.append({**message, "forks": by_message.get(message["ordinal"], [])})
    # Forks cut where no message is drawn (past the drawn ones, at the end, or in a
    # parent whose log is gone) hang below the messages.
    rest = [child for at, group in sorted(by_message.items()) if at not in ordinals for child in group]
    return {"id": node.id, "title": node.title, "state": node.state, "turns": node.turns,
            "user_message_index": node.user_message_index, "parent_exists": node.parent_exists,
            "rewound_at": node.rewound_at,
            "messages": rows, "more": max(0, len(messages) - MAX_MESSAGES), "rest": rest}


def drawn_tree(layout: StateLayout, session_id: str) -> dict[str, Any]:
    root = find_root(read_forest(layout), session_id)
    if root is None:
        raise CairnError("unknown_session", f"session {session_id!r} does not exist in {layout.root}")
    return draw(layout, root)
