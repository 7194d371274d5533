"""How the command line shows things: request results, `ls` tables, `show`, `tree` and
`status` as text. Pure: plain data in (results, views' dicts, lineage nodes), text out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from cairnd.sessions.views import LineageNode

Answer = Callable[[str, int], "str | None"]  # (session, turn) -> the agent's text of that turn


def short_sha(sha: Any) -> str:
    return sha[:7] if isinstance(sha, str) else "-"


def shorten(text: str, width: int = 72) -> str:
    """One line: line breaks shown as ' / ', cut with '...' past width."""
    flat = " / ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _turn_lines(result: dict[str, Any], answer: Answer) -> list[str]:
    if "turn" not in result:
        return []
    checkpoint = result.get("checkpoint") or {}
    dirty = "uncommitted changes" if checkpoint.get("dirty") else "clean"
    # The result's `turn` counts from 0 (SPEC 7); a person reads turn N as the one @N names.
    lines = [f"turn {result['turn'] + 1}: {result.get('stopReason')}; "
             f"checkpoint {short_sha(checkpoint.get('worktreeSha'))}, "
             f"HEAD {short_sha(checkpoint.get('headSha'))} ({dirty})"]
    text = answer(result["session"], result["turn"])
    if text:
        lines.append(text.rstrip("\n"))
    return lines


def summarize(kind: str, result: dict[str, Any], answer: Answer) -> str:
    """A request's result in a few lines; `answer(session, turn)` is the agent's text of
    a turn the result names (read from its log by the caller)."""
    lines: list[str]
    if kind == "new":
        lines = [f"session {result.get('session')} ({result.get('title')})",
                 f"  worktree  {result.get('worktree')}",
                 f"  head      {short_sha(result.get('headSha'))}"]
        lines += _turn_lines(result, answer)
    elif kind == "prompt":
        turn = _turn_lines(result, answer) or ["(no turn)"]
        lines = [f"session {result.get('session')} {turn[0]}", *turn[1:]]
    elif kind == "fork" and "sessions" not in result:
        lines = [f"session {result.get('session')} ({result.get('title')}): fork of {result.get('parent')} "
                 f"at message {result.get('user_message_index')}",
                 f"  worktree  {result.get('worktree')}",
                 f"  head      {short_sha(result.get('headSha'))}, files from "
                 + ("the checkpoint before that message" if result.get("state") == "checkpoint"
                    else "the parent's current HEAD (its log has no checkpoint there)")]
        if result.get("prefill"):
            lines.append(f"  prefill   {shorten(result['prefill'])}")
        lines += _turn_lines(result, answer)
    elif kind == "rewind":
        lines = [f"session {result.get('session')} rewound to before message {result.get('user_message_index')}",
                 f"  head      {short_sha(result.get('headSha'))}"
                 + (" (detached: its branch has moved on, and stays where it is)" if result.get("detached") else ""),
                 f"  abandoned {result.get('abandoned')} holds what it was (log, files, index, HEAD)",
                 f"  history   {result.get('history')}"]
        if result.get("prefill"):
            lines.append(f"  prefill   {shorten(result['prefill'])}")
        lines += _turn_lines(result, answer)
    elif kind == "land":
        previous = result.get("previous")
        how = ("created" if previous is None else "unchanged" if result.get("unchanged") or previous == result.get("commit")
               else f"moved from {short_sha(previous)}")
        files = result.get("files") or []
        lines = [f"branch {result.get('branch')} at {short_sha(result.get('commit'))} ({how}), "
                 f"parent {short_sha(result.get('parent'))}, {len(files)} file{'s' if len(files) != 1 else ''} changed",
                 *(f"  {path}" for path in files[:20])]
        if len(files) > 20:
            lines.append(f"  ... and {len(files) - 20} more")
    elif kind == "fork" and "sessions" in result:
        lines = [f"{len(result['sessions'])} tries of {result.get('parent')} at message "
                 f"{result.get('user_message_index')}"]
        for attempt in result["sessions"]:
            lines.append(f"  {attempt.get('session')}  {attempt.get('title')}  {attempt.get('worktree')}")
            if attempt.get("stopReason"):
                lines.append(f"    turn {attempt.get('turn')}: {attempt.get('stopReason')}")
            if attempt.get("check"):
                lines.append(f"    check: {_check_words(attempt['check'])}")
            if attempt.get("error"):
                lines.append(f"    failed: {attempt['error'].get('code')}: {attempt['error'].get('message')}")
    elif kind == "check":
        lines = [result.get("output", "").rstrip("\n"),
                 f"# check in {result.get('session')} after turn {result.get('turns')}: {_check_words(result)}"]
    elif kind == "cancel":
        lines = [f"session {result.get('session')}: "
                 + ("cancelled the running turn" if result.get("cancelled") else "no turn was running")]
    elif kind == "delete":
        kept = result.get("worktree_kept")
        lines = [f"session {result.get('session')} deleted" + (" (worktree kept)" if kept else "")]
    else:
        lines = [orjson.dumps(result).decode()]
    return "\n".join(lines) + "\n"


def _check_words(check: dict[str, Any]) -> str:
    if check.get("timed_out"):
        return "timed out"
    return "passed (exit 0)" if check.get("exit") == 0 else f"failed (exit {check.get('exit')})"


def format_compare(compared: dict[str, Any]) -> str:
    """`cairnd compare`: one row per session."""
    head = ""
    if compared.get("parent"):
        head = f"forks of {compared['parent']} at message {compared['user_message_index']}\n"
    rows = [["SESSION", "TITLE", "AGENT", "TURNS", "STATE", "FILES", "+", "-", "CHECK"]]
    for s in compared["sessions"]:
        check = s.get("check")
        words = "-" if check is None else (
            f"exit {check.get('exit')} @{check.get('turns')}" if check.get("exit") is not None
            else f"timed out @{check.get('turns')}")
        rows.append([s["session"], shorten(s["title"], 32), s["agent"], str(s["turns"]), s["state"],
                     str(len(s["files"])), str(sum(f["added"] or 0 for f in s["files"])),
                     str(sum(f["removed"] or 0 for f in s["files"])), words])
    return head + table(rows)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n" for row in rows
    )


def format_show(shown: dict[str, Any]) -> str:
    s = shown["session"]
    turns = shown["turns"]
    lines = [f"session {s['id']} ({s['title']}): {s['state']}, {s['turns']} turn{'s' if s['turns'] != 1 else ''}, "
             f"agent {s['agent']}",
             f"  repo      {s['repo']}",
             f"  worktree  {s['worktree']}" + (" (in place)" if s["in_place"] else "")
             + ("" if s.get("worktree_exists", True) else " (removed)"),
             f"  log       {s['log']}"]
    fork = s.get("fork_of")
    if fork:
        gone = "" if fork["parent_exists"] else " (deleted)"
        lines.append(f"  fork of   {fork['parent']} ({fork['parent_title']}){gone} at message "
                     f"{fork['user_message_index']}")
    rewinds = s.get("rewinds") or []
    if rewinds:
        lines.append(f"  rewinds   {len(rewinds)}: " + ", ".join(
            f"to message {r['user_message_index']} (what it left: {r['abandoned']})" for r in rewinds))
    marks: dict[int, list[str]] = {}
    for r in rewinds:
        if r["in_log"]:
            marks.setdefault(r["user_message_index"], []).append(
                f"<< rewound here: the turns that followed are in session {r['abandoned']}")
    if not turns:
        lines.append("no turns yet")
    for turn in turns:
        for mark in marks.pop(turn["turn"] - 1, []):  # a rewind to message K: before turn K+1
            lines += ["", mark]
        dirty = {True: "dirty", False: "clean", None: "no checkpoint"}[turn["dirty"]]
        inherited = "  (kept from the parent)" if turn["inherited"] else ""
        lines.append("")
        lines.append(f"turn {turn['turn']}  {turn['stopReason'] or 'unfinished'}  head {short_sha(turn['headSha'])}  "
                     f"{dirty}{inherited}")
        lines.append(f"  > {shorten(turn['prompt'] or '(no text)')}")
        changes = turn["changes"]
        if changes is None:
            if turn["worktreeSha"]:
                lines.append("  changes unknown (the commits are gone from the repository)")
        elif not changes:
            lines.append("  no file changed")
        else:
            lines.extend(f"  {change['status']} {change['path']}" for change in changes)
    for pending in marks.values():
        lines += ["", *pending]
    return "\n".join(lines) + "\n"


def _node_line(node: LineageNode, marked: str | None) -> str:
    parts = [node.id, node.title]
    if node.rewound_at is not None:
        parts.append(f"left behind by a rewind to message {node.rewound_at}")
    elif node.user_message_index is not None:
        parts.append(f"cut at message {node.user_message_index}")
    if node.turns is not None:
        parts.append(f"{node.turns} turn{'s' if node.turns != 1 else ''}")
    if node.state != "ready":
        parts.append("[deleted]" if node.state == "deleted" else "[gone]")
    elif node.parent is not None and node.parent_exists is False:
        parts.append("[parent deleted]")
    line = "  ".join(parts)
    return line + "  <" if marked == node.id else line


def format_tree(forest: list[LineageNode], marked: str | None = None) -> str:
    lines: list[str] = []

    def walk(node: LineageNode, prefix: str, last: bool, top: bool) -> None:
        if top:
            lines.append(_node_line(node, marked))
            child_prefix = ""
        else:
            lines.append(prefix + ("`-- " if last else "|-- ") + _node_line(node, marked))
            child_prefix = prefix + ("    " if last else "|   ")
        for i, child in enumerate(node.children):
            walk(child, child_prefix, i == len(node.children) - 1, False)

    for root in forest:
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"


def size(count: int | None) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


def format_status(status: dict[str, Any]) -> str:
    spool = status["spool"]
    if status["running"]:
        since = f", since {status['started_at']}" if status.get("started_at") else ""
        head = f"cairnd is running (pid {status['pid'] or '?'}{since})"
        if status.get("stopping"):
            head += ", stopping"
    else:
        head = "cairnd is not running"
    lines = [head,
             f"  state dir  {status['state_dir']}",
             f"  config     {status['config'] or '(none: defaults)'}",
             f"  spool      {spool['new']} new, {spool['cur']} in progress, {spool['done']} done, "
             f"{spool['failed']} failed"]
    if status["running"]:
        lines.append(f"  work       {status['turns_in_flight']} turn(s) in flight, {status['in_flight']} request(s) "
                     f"in flight, {status['active_agents']} agent(s) running")
    elif spool["new"]:
        lines.append(f"  {spool['new']} request(s) wait in new/ for the daemon (start it: cairnd serve)")
    sessions = status["sessions"]
    lines.append(f"  sessions   {sessions['ready']} ({sessions['deleted']} deleted)")
    if status.get("sandbox"):
        lines.append(f"  sandbox    {status['sandbox']}")
    for repo in status.get("storage", []):
        refs = repo["checkpoint_refs"]
        loose = repo["loose_checkpoint_refs"]
        lines.append(f"  repo       {repo['repo']}: {repo['sessions']} session(s), "
                     f"{'?' if refs is None else refs} checkpoint ref(s) ({'?' if loose is None else loose} loose), "
                     f"objects {size(repo['objects_bytes'])}, logs {size(repo['logs_bytes'])}")
    if status.get("fleet"):
        from cairnd.fleet.client import format_fleet
        lines.extend(format_fleet(status["fleet"]))
    return "\n".join(lines) + "\n"


def describe_request(request: dict[str, Any]) -> str:
    """A request in a few words, for the progress line."""
    kind = request["kind"]
    if kind == "new":
        return f"new session on {request['repo']}"
    if kind == "fork":
        return f"fork {request['session']} at message {request['user_message_index']}"
    if kind == "delete":
        return f"rm {request['session']}"
    if kind == "rewind":
        return f"rewind {request['session']} to message {request['user_message_index']}"
    if kind == "land":
        return f"land {request['session']} on {request['branch']}"
    if kind == "check":
        return f"check {request['session']}: {' '.join(request['command'])}"
    return f"{kind} {request['session']}"


def phase(place: str, pid: int | None, doing: str | None) -> str:
    """Where a request is, in words: queued (and whether a daemon will take it), or what
    its agent is doing."""
    if place == "new":
        if pid is None:
            return "queued; the daemon is not running (start it: cairnd serve)"
        return "queued"
    if place == "cur":
        return f"working: {doing}" if doing else "working"
    return place
