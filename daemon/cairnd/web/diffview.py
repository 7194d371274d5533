"""A file's unified diff as the diff page draws it: classed lines (unified), or rows of
old and new side by side (split). Pure: git's text in, plain data out."""

from __future__ import annotations

from typing import TypedDict


class Line(TypedDict):
    kind: str  # head (git's header), hunk (@@), add, del, ctx
    text: str


class Row(TypedDict):
    kind: str  # head, hunk, ctx, change
    old: str | None  # the old side's line (without its - or space), None where there is none
    new: str | None
    old_no: int | None  # line numbers, where the side has a line
    new_no: int | None


def unified_lines(text: str) -> list[Line]:
    """Each line of git's diff with its kind; lines before a file's first hunk are git's header."""
    lines: list[Line] = []
    in_hunks = False
    for line in text.splitlines():
        if line.startswith("diff --git "):
            in_hunks = False
        if line.startswith("@@"):
            in_hunks = True
            kind = "hunk"
        elif not in_hunks:
            kind = "head"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "ctx")
        lines.append({"kind": kind, "text": line})
    return lines


def _hunk_starts(header: str) -> tuple[int, int]:
    """`@@ -a,b +c,d @@` -> (a, c)."""
    try:
        old, new = header.split("@@")[1].split()[:2]
        return int(old[1:].split(",")[0]), int(new[1:].split(",")[0])
    except (IndexError, ValueError):
        return 0, 0


def split_rows(text: str) -> list[Row]:
    """Old and new side by side: context on both sides, each run of removed lines paired
    row by row with the added lines that follow it."""
    rows: list[Row] = []
    old_no = new_no = 0
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            old = removed[i] if i < len(removed) else None
            new = added[i] if i < len(added) else None
            rows.append({"kind": "change", "old": old[1] if old else None, "new": new[1] if new else None,
                         "old_no": old[0] if old else None, "new_no": new[0] if new else None})
        removed.clear()
        added.clear()

    for line in unified_lines(text):
        kind, body = line["kind"], line["text"]
        if kind == "del":
            if added:  # a removal after additions starts a new pairing
                flush()
            removed.append((old_no, body[1:]))
            old_no += 1
            continue
        if kind == "add":
            added.append((new_no, body[1:]))
            new_no += 1
            continue
        flush()
        if kind == "hunk":
            old_no, new_no = _hunk_starts(body)
            rows.append({"kind": "hunk", "old": body, "new": body, "old_no": None, "new_no": None})
        elif kind == "head":
            rows.append({"kind": "head", "old": body, "new": body, "old_no": None, "new_no": None})
        else:
            shown = body[1:] if body[:1] == " " else body  # "\ No newline at end of file" as it is
            rows.append({"kind": "ctx", "old": shown, "new": shown, "old_no": old_no, "new_no": new_no})
            if body[:1] == " ":
                old_no += 1
                new_no += 1
    flush()
    return rows
