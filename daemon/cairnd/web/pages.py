"""Reading a session log for the page: a screenful at a time, then live.

A page reads from a cursor (the reader's state, starting at byte 0) until it has a
screenful of items or has read `PAGE_BYTES`, so the first screenful of a 100 MB log
costs what the first screenful of a 1 MB one does. `follow` carries on from the last
page's cursor as the log grows, says when the log was replaced (a rewind renames
a new log into place) so the page starts again, and when the session's state in the
registry changes (deleted by any client), which the log need not show.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson

from cairnd.errors import CairnError
from cairnd.sessionlog.file import iter_lines
from cairnd.web.conversation import ConversationReader, Op, fold

PAGE_ITEMS = 60  # top-level items of a screenful (a reference-agent turn is about six)
PAGE_BYTES = 256 << 10  # log bytes one page reads at most (a line longer is read whole)
FOLLOW_BATCH_BYTES = 1 << 20
FOLLOW_POLL_SECONDS = 0.1
STATE_POLL_SECONDS = 1.0  # the registry is asked at most this often (a SQLite read, in a thread)


@dataclass
class Page:
    items: list[dict[str, Any]]  # folded top-level items, groups with their children
    leftover: list[Op]  # ops for elements of earlier pages
    state: dict[str, Any]  # the cursor after this page
    at_end: bool  # the page reached the end of the log's complete lines
    inode: int | None


def encode_cursor(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def decode_cursor(text: str) -> dict[str, Any]:
    """A cursor from a URL; `bad_request` when it is not one of ours."""
    try:
        state = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise CairnError("bad_request", f"cursor {text[:40]!r} is not a page cursor") from None
    if not isinstance(state, dict) or not _well_typed(state):
        raise CairnError("bad_request", f"cursor {text[:40]!r} is not a page cursor")
    return state


_CURSOR_TYPES: dict[str, tuple[type, ...]] = {
    "offset": (int,), "ordinal": (int,), "turn": (int,), "running": (bool,), "open_sub": (list, type(None)),
    "last_user": (str, type(None)), "agent": (list, type(None)), "sub": (dict,), "groups": (list,),
    "worktree_sha": (str, type(None)), "baseline_next": (bool,),
}


def _well_typed(state: dict[str, Any]) -> bool:
    """Only the reader's own fields, each of its own type (a cursor comes from a URL)."""
    if "offset" not in state or any(key not in _CURSOR_TYPES for key in state):
        return False
    for key, value in state.items():
        types = _CURSOR_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return False
    if state["offset"] < 0 or not all(isinstance(sub, str) for sub in state.get("groups", [])):
        return False
    lists = [state.get("open_sub"), state.get("agent"), *state.get("sub", {}).values()]
    return all(value is None or (isinstance(value, list) and len(value) <= 3) for value in lists)


def _check_boundary(fd: int, offset: int) -> None:
    """A cursor must point at the start of a line of this log (or its end)."""
    size = os.fstat(fd).st_size
    if offset > size or (offset > 0 and os.pread(fd, 1, offset - 1) != b"\n"):
        raise CairnError("bad_request", f"offset {offset} is not the start of a line of this log")


def read_page(path: Path, state: dict[str, Any] | None = None, max_items: int = PAGE_ITEMS,
              max_bytes: int = PAGE_BYTES) -> Page:
    """One screenful of the log from the cursor `state` (blocking: run it in a thread)."""
    reader = ConversationReader(state)
    start = reader.s["offset"]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Page([], [], reader.state(), True, None)
    try:
        _check_boundary(fd, start)
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    ops: list[Op] = []
    added = 0
    at_end = True
    with closing(iter_lines(path, start)) as lines:
        for offset, line in lines:
            if added >= max_items or offset - start >= max_bytes:
                at_end = False
                break
            for op in reader.feed(offset, line):
                ops.append(op)
                if op["op"] == "add" and op["item"]["parent"] is None:
                    added += 1
    items, leftover = fold(ops)
    return Page(items, leftover, reader.state(), at_end, inode)


def _read_more(path: Path, reader: ConversationReader, inode: int | None) -> tuple[list[Op], bool]:
    """The ops of the lines appended since the reader's offset (up to a batch), and
    whether the log was replaced since (then nothing is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], False
    try:
        stat = os.fstat(fd)
    finally:
        os.close(fd)
    if inode is not None and stat.st_ino != inode:
        return [], True
    start = reader.s["offset"]
    if stat.st_size < start:
        return [], True  # shorter than what we showed: not the log we were reading
    if stat.st_size == start:
        return [], False
    ops: list[Op] = []
    with closing(iter_lines(path, start)) as lines:
        for offset, line in lines:
            if offset - start >= FOLLOW_BATCH_BYTES:
                break
            ops.extend(reader.feed(offset, line))
    return ops, False


async def follow(path: Path, state: dict[str, Any], inode: int | None,
                 session_state: tuple[str, Callable[[], str]] | None = None) -> AsyncIterator[tuple[str, Any]]:
    """`("ops", [...])` as lines reach the log from the cursor on, `("running", bool)`
    when a turn starts or ends, `("state", "deleted")` when the session's state read by
    `session_state` (the state the page shows, and a blocking read of the current one)
    changes, and `("replaced", None)` (then it stops) when the log is no longer the file
    the cursor belongs to."""
    reader = ConversationReader(state)
    shown_state, read_state = session_state if session_state else (None, None)
    next_state_check = anyio.current_time()
    if inode is None:
        try:
            inode = path.stat().st_ino
        except FileNotFoundError:
            inode = None
    running = reader.s["running"]
    while True:
        if read_state is not None and anyio.current_time() >= next_state_check:
            next_state_check = anyio.current_time() + STATE_POLL_SECONDS
            current = await anyio.to_thread.run_sync(read_state)
            if current != shown_state:
                shown_state = current
                yield "state", current
        try:
            # One stat per poll on the loop (a cached inode: no disk wait); a thread
            # only when there is something to read.
            stat = os.stat(path)
            idle = stat.st_size == reader.s["offset"] and stat.st_ino == inode
        except FileNotFoundError:
            idle = inode is None
        if idle:
            await anyio.sleep(FOLLOW_POLL_SECONDS)
            continue
        ops, replaced = await anyio.to_thread.run_sync(_read_more, path, reader, inode)
        if replaced:
            yield "replaced", None
            return
        if ops:
            yield "ops", ops
        if reader.s["running"] != running:
            running = reader.s["running"]
            yield "running", running
        if inode is None and path.exists():
            inode = path.stat().st_ino
        if not ops:
            await anyio.sleep(FOLLOW_POLL_SECONDS)
