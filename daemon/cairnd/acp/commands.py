"""The slash commands `cairnd acp` answers itself (SPEC 18): /checkpoints, /rewind N,
/fork N [prompt], /diff [N], /land BRANCH.

`parse` is pure (text -> Command, or None for a prompt that is not one of ours);
`Commands.run` carries one out on the session's `Sessions` and says what it did in
words, which is both the editor's answer and the `_cairnd/command` entry's `result`.
A command never reaches the agent and is not a user message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from cairnd.errors import CairnError
from cairnd.sessionlog import cutindex
from cairnd.sessionlog.file import iter_lines
from cairnd.sessionlog.transcript import session_state
from cairnd.sessions.diffs import compare_text
from cairnd.sessions.handlers import Sessions
from cairnd.sessions.views import changed_paths
from cairnd.spool.requests import ForkRequest, LandRequest, Origin, PromptRequest, RewindRequest

# What the editor lists (available_commands_update).
COMMANDS: list[dict[str, Any]] = [
    {"name": "checkpoints", "description": "cairnd: this session's user messages, the turn each began, "
                                           "the files each turn changed", "input": None},
    {"name": "rewind", "description": "cairnd: files and conversation back to before user message N "
                                      "(what was there is kept as a session)", "input": {"hint": "N"}},
    {"name": "fork", "description": "cairnd: a new session at user message N in its own worktree, "
                                    "optionally running a prompt", "input": {"hint": "N [prompt]"}},
    {"name": "diff", "description": "cairnd: files changed since before user message N (default: the "
                                    "session's start)", "input": {"hint": "[N]"}},
    {"name": "land", "description": "cairnd: the latest checkpoint as a commit on BRANCH",
     "input": {"hint": "BRANCH"}},
]
NAMES = frozenset(command["name"] for command in COMMANDS)
USAGE = {"checkpoints": "/checkpoints", "rewind": "/rewind N", "fork": "/fork N [prompt]", "diff": "/diff [N]",
         "land": "/land BRANCH"}


@dataclass(frozen=True)
class Command:
    name: str  # one of NAMES, or an unknown name
    text: str  # the whole command as typed
    args: str  # what follows the name


def parse(text: str) -> Command | None:
    """A prompt's text -> the slash command it is, or None when it is not one (it does
    not start with `/`)."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    name, _, args = stripped[1:].partition(" ")
    return Command(name.strip(), stripped, args.strip())


def parse_index(command: Command, value: str) -> int:
    """N of a command: a whole number, else bad_request naming the value."""
    try:
        return int(value)
    except ValueError:
        raise CairnError("bad_request", f"{command.text}: N must be a user message number (0, 1, ...), "
                                        f"not {value!r}; usage: {USAGE[command.name]}") from None


class Commands:
    """Carries out the commands of the sessions one `cairnd acp` serves."""

    def __init__(self, sessions: Sessions, task_group: anyio.abc.TaskGroup) -> None:
        self.sessions = sessions
        self._tg = task_group

    def _origin(self) -> Origin:
        return Origin(request_id=None)

    async def run(self, session_id: str, command: Command) -> str:
        """What the command did, in words; raises CairnError for a bad one."""
        if command.name not in NAMES:
            known = ", ".join(USAGE[name] for name in sorted(NAMES))
            raise CairnError("bad_request", f"unknown command /{command.name}; cairnd answers {known}")
        handler = getattr(self, "_" + command.name)
        return await handler(session_id, command)

    async def _checkpoints(self, session_id: str, command: Command) -> str:
        if command.args:
            raise CairnError("bad_request", f"{command.text}: takes no argument; usage: /checkpoints")
        row = await self.sessions.live(session_id)
        return await anyio.to_thread.run_sync(checkpoints_text, self.sessions.layout.log_path(row.id), row.worktree)

    async def _rewind(self, session_id: str, command: Command) -> str:
        k = parse_index(command, command.args)
        result = await self.sessions.rewind(RewindRequest(session=session_id, user_message_index=k), self._origin())
        text = (f"Rewound to before user message {k}: the files and the conversation are as they were then "
                f"(HEAD {str(result.get('headSha', ''))[:12]}"
                + (", detached" if result.get("detached") else "") + "). "
                f"What was there is kept as session {result.get('abandoned')}.")
        if result.get("prefill"):
            text += f"\nMessage {k} was: {result['prefill']}"
        return text

    async def _fork(self, session_id: str, command: Command) -> str:
        index, _, prompt = command.args.partition(" ")
        k = parse_index(command, index)
        result = await self.sessions.fork(ForkRequest(session=session_id, user_message_index=k), self._origin())
        fork_id = result["session"]
        text = f"Forked at user message {k}: session {fork_id}, worktree {result['worktree']}."
        if prompt.strip():
            self._tg.start_soon(self._first_turn, fork_id, prompt.strip())
            text += f" Its first turn is running: {prompt.strip()}"
        elif result.get("prefill"):
            text += f"\nMessage {k} was: {result['prefill']}"
        return text

    async def _first_turn(self, fork_id: str, prompt: str) -> None:
        try:
            await self.sessions.prompt(PromptRequest(session=fork_id, text=prompt), self._origin())
        except CairnError:
            pass  # it is in the fork's log: `cairnd show` tells

    async def _diff(self, session_id: str, command: Command) -> str:
        k = parse_index(command, command.args) if command.args else 0
        row = await self.sessions.live(session_id)
        log = self.sessions.layout.log_path(row.id)
        point = await anyio.to_thread.run_sync(cutindex.find_cut, log, k, row.id)
        turns = (point.checkpoint or {}).get("turns", 0)
        _old, _new, text = await anyio.to_thread.run_sync(
            lambda: compare_text(self.sessions.layout, f"{row.id}@{turns}", row.id, stat=True))
        body = text.decode("utf-8", "replace").rstrip()
        return f"Files changed since before user message {k} (turn {turns}):\n" + (body or "(none)")

    async def _land(self, session_id: str, command: Command) -> str:
        if not command.args or " " in command.args:
            raise CairnError("bad_request", f"{command.text}: name one branch; usage: /land BRANCH")
        result = await self.sessions.land(LandRequest(session=session_id, branch=command.args), self._origin())
        commit = str(result.get("commit") or result.get("sha") or "")
        return f"Landed on branch {command.args}: {commit[:12]}" + (" (unchanged)" if result.get("unchanged") else "")


def checkpoints_text(log: Path, worktree: Path) -> str:
    """/checkpoints: each top-level user message with the turn it began, the files that
    turn changed, and whether the tree it left was dirty. Blocking."""
    index = cutindex.current(log)
    turns = session_state(iter_lines(log), agent_text=False).conversation
    messages = [m.message for m in index.messages if m.message.top_level]
    pairs = [((turn.previous_checkpoint or {}).get("worktreeSha") or (turn.previous_checkpoint or {}).get("headSha"),
              (turn.checkpoint or {}).get("worktreeSha") or (turn.checkpoint or {}).get("headSha"))
             for turn in turns]
    changes = changed_paths(worktree, pairs)
    lines = []
    for number, (message, turn) in enumerate(zip(messages, turns)):
        checkpoint = turn.checkpoint or {}
        files = changes[number]
        shown = "?" if files is None else (", ".join(f"{path} ({status})" for status, path in files) or "no files")
        state = "open" if not checkpoint else ("dirty" if checkpoint.get("dirty") else "clean")
        text = turn.user_text.strip().splitlines()[0] if turn.user_text.strip() else ""
        lines.append(f"{message.ordinal}  turn {checkpoint.get('turns', '?')}  {text[:60]!r}  {shown}  {state}")
    return "\n".join(lines) if lines else "No user messages yet."
