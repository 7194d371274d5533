"""The reference agent (SPEC section 10): a real ACP agent with no model behind it.

Run as `python -m cairnd.agents.reference`; it speaks ACP over stdio through the SDK.
It reads each prompt's text line by line and acts on it:

    write PATH: TEXT     writes TEXT and a newline (fs/write_text_file when the client offers it)
    append PATH: TEXT    appends TEXT and a newline (reads through fs/read_text_file when offered)
    delete PATH          removes PATH
    commit: MESSAGE      git add -A && git commit -m MESSAGE in the session cwd
    run: COMMAND         runs COMMAND with `sh -c` in the session cwd, as an agent's shell tool
                         does; its exit status and output (stdout and stderr) are the outcome
    delegate: TEXT       a sub-session: a sub-session user message TEXT, TEXT run as a line
                         inside it, and an answer; `delegate: delegate: X` nests
    sleep: SECONDS       waits, ending the turn `cancelled` on session/cancel
    ask: TEXT            asks the client's permission (session/request_permission, allow once or
                         reject once) to do TEXT; the tool call completes when allowed, fails when not
    crash                exits at once with status 1
    anything else        echoed

Every action is reported as a `tool_call` / `tool_call_update` pair; a failed action is a
failed update and the turn goes on. The turn ends with an agent message holding `history=N`:
the earlier top-level user messages of the session it knows of, counted from the prompts
it received plus those a replayed transcript declared (`_meta.cairnd.userMessages` on a
`resource` block; see `cairnd.transcript.replay_prompt_block`).

Like Claude's and Codex's adapters it keeps a transcript of every session it runs (one
JSON line per user message, top-level agent message and replay, under
`$CAIRND_REFERENCE_STORE`, else `$XDG_STATE_HOME/cairnd-reference`), so a new process
can `session/resume` a session, and `session/fork` one, whole or cut after the agent
message named by `_meta.jetbrains.air.fork = {version: 1, messageId}` (SPEC 12): the
fork's transcript is the parent's up to that message, and its `history=N` counts the
user messages in it. It advertises `sessionCapabilities.fork` and `resume`, not
`loadSession`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import acp
from acp.schema import (
    AgentCapabilities,
    AgentMessageChunk,
    ClientCapabilities,
    EmbeddedResourceContentBlock,
    ForkSessionResponse,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PromptCapabilities,
    PermissionOption,
    PromptResponse,
    ResumeSessionResponse,
    SessionCapabilities,
    SessionForkCapabilities,
    SessionResumeCapabilities,
    TextContentBlock,
    ToolCallUpdate,
    ToolKind,
    UserMessageChunk,
)

AGENT_NAME = "cairnd-reference"
# Used for `commit:` only where the user has no git identity configured.
FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "cairnd reference agent",
    "GIT_AUTHOR_EMAIL": "reference-agent@cairnd.invalid",
    "GIT_COMMITTER_NAME": "cairnd reference agent",
    "GIT_COMMITTER_EMAIL": "reference-agent@cairnd.invalid",
}
# JSON-RPC code a client answers fs/read_text_file with when the file does not exist.
RESOURCE_NOT_FOUND = -32002


class Action(NamedTuple):
    verb: str  # write | append | delete | commit | run | delegate | sleep | ask | crash | echo
    arg: str = ""  # the path, message, text or seconds
    text: str = ""  # the text of write / append


def parse_line(line: str) -> Action:
    """One prompt line -> the action it asks for; anything unrecognised is an echo."""
    stripped = line.strip()
    for verb in ("write", "append"):
        if stripped.startswith(verb + " ") and ": " in stripped:
            path, _, text = stripped[len(verb) + 1:].partition(": ")
            if path.strip():
                return Action(verb, path.strip(), text)
    if stripped.startswith("delete ") and stripped[7:].strip():
        return Action("delete", stripped[7:].strip())
    for verb in ("commit", "run", "delegate", "sleep", "ask"):
        if stripped.startswith(verb + ":"):
            return Action(verb, stripped[len(verb) + 1:].strip())
    if stripped == "crash":
        return Action("crash")
    return Action("echo", line)


def prompt_text(blocks: list[Any]) -> str:
    """The text of a prompt: its text blocks concatenated (SPEC section 4)."""
    return "".join(block.text for block in blocks if isinstance(block, TextContentBlock))


def replayed_user_messages(blocks: list[Any]) -> int:
    """Top-level user messages declared by replayed-transcript resources in a prompt."""
    count = 0
    for block in blocks:
        if isinstance(block, EmbeddedResourceContentBlock):
            declared = ((block.field_meta or {}).get("cairnd") or {}).get("userMessages")
            if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
                count += declared
    return count


def store_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where the transcripts live (see the module docstring)."""
    if environ.get("CAIRND_REFERENCE_STORE"):
        return Path(environ["CAIRND_REFERENCE_STORE"])
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cairnd-reference"


def transcript_path(session_id: str, store: Path | None = None) -> Path:
    return (store or store_dir()) / f"{session_id}.jsonl"


def read_transcript(session_id: str, store: Path | None = None) -> list[dict[str, Any]]:
    """A session's records; FileNotFoundError when this agent never ran it (or it was removed)."""
    text = transcript_path(session_id, store).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def known_user_messages(records: list[dict[str, Any]]) -> int:
    """The top-level user messages a transcript holds: prompts, and those replays declared."""
    return sum(1 if r.get("kind") == "user" else int(r.get("userMessages", 0)) if r.get("kind") == "replay" else 0
               for r in records)


def cut_at_message(records: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]] | None:
    """The records up to and including the agent message `message_id`; None if it has none."""
    for index, record in enumerate(records):
        if record.get("kind") == "agent" and record.get("messageId") == message_id:
            return records[: index + 1]
    return None


def fork_point(meta: dict[str, Any]) -> str | None:
    """The message id of `_meta.jetbrains.air.fork` (version 1), as both real adapters read it."""
    fork = ((meta.get("jetbrains") or {}).get("air") or {}).get("fork") if isinstance(meta, dict) else None
    if not isinstance(fork, dict) or fork.get("version") != 1:
        return None
    message_id = fork.get("messageId")
    if not isinstance(message_id, str) or not message_id.strip():
        raise acp.RequestError(-32602, "AIR fork messageId must be a non-empty string", {"messageId": message_id})
    return message_id.strip()


class Cancelled(Exception):
    """The client cancelled the turn in flight."""


@dataclass
class Session:
    cwd: Path
    transcript: Path
    known_user_messages: int = 0  # earlier top-level messages: received here or replayed
    tool_calls: int = 0
    sub_sessions: dict[str, int] = field(default_factory=dict)  # parent ("" = top) -> children
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, **entry: Any) -> None:
        """Append one record to the transcript (a line at a time, as it happens)."""
        with open(self.transcript, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def next_sub_session(self, parent: str | None) -> str:
        n = self.sub_sessions.get(parent or "", 0) + 1
        self.sub_sessions[parent or ""] = n
        return f"{parent}/{n}" if parent else f"d{n}"


class ReferenceAgent:
    """An `acp.Agent`: the methods the SDK routes to, nothing else."""

    def __init__(self) -> None:
        self._client: Any = None
        self._fs_read = False
        self._fs_write = False
        self._sessions: dict[str, Session] = {}

    def on_connect(self, conn: Any) -> None:
        self._client = conn

    async def initialize(self, protocol_version: int, client_capabilities: ClientCapabilities | None = None,
                         client_info: Implementation | None = None, **kwargs: Any) -> InitializeResponse:
        fs = client_capabilities.fs if client_capabilities else None
        self._fs_read = bool(fs and fs.read_text_file)
        self._fs_write = bool(fs and fs.write_text_file)
        return InitializeResponse(
            protocol_version=min(protocol_version, acp.PROTOCOL_VERSION),
            # Embedded context: a replayed transcript arrives as a `resource` block.
            agent_capabilities=AgentCapabilities(
                load_session=False, prompt_capabilities=PromptCapabilities(embedded_context=True),
                session_capabilities=SessionCapabilities(
                    fork=SessionForkCapabilities(), resume=SessionResumeCapabilities())),
            agent_info=Implementation(name=AGENT_NAME, version="1"),
        )

    async def new_session(self, cwd: str, mcp_servers: list[Any] | None = None, **kwargs: Any) -> NewSessionResponse:
        session_id = self._open(cwd, [])
        return NewSessionResponse(session_id=session_id)

    async def fork_session(self, session_id: str, cwd: str, additional_directories: list[str] | None = None,
                           mcp_servers: list[Any] | None = None, **kwargs: Any) -> ForkSessionResponse:
        records = self._stored(session_id)
        message_id = fork_point(kwargs)
        if message_id is not None:
            cut = cut_at_message(records, message_id)
            if cut is None:
                raise acp.RequestError(-32602, f"Fork point message {message_id} was not found in session {session_id}",
                                       {"messageId": message_id})
            records = cut
        return ForkSessionResponse(session_id=self._open(cwd, records))

    async def resume_session(self, session_id: str, cwd: str, additional_directories: list[str] | None = None,
                             mcp_servers: list[Any] | None = None, **kwargs: Any) -> ResumeSessionResponse:
        records = self._stored(session_id)
        self._sessions[session_id] = Session(Path(cwd), transcript_path(session_id),
                                             known_user_messages=known_user_messages(records))
        return ResumeSessionResponse()

    def _stored(self, session_id: str) -> list[dict[str, Any]]:
        try:
            return read_transcript(session_id)
        except FileNotFoundError:
            raise acp.RequestError(-32002, f"Resource not found: session {session_id} (no transcript at "
                                           f"{transcript_path(session_id)})", {"sessionId": session_id}) from None

    def _open(self, cwd: str, records: list[dict[str, Any]]) -> str:
        """A new session starting with `records`; its transcript is written before it is used."""
        session_id = uuid.uuid4().hex
        path = transcript_path(session_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # transcripts are private
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        self._sessions[session_id] = Session(Path(cwd), path, known_user_messages=known_user_messages(records))
        return session_id

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        if session_id in self._sessions:
            self._sessions[session_id].cancel.set()

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        session = self._sessions.get(session_id)
        if session is None:
            raise acp.RequestError.invalid_params({"sessionId": session_id, "reason": "unknown session"})
        session.cancel = asyncio.Event()
        replayed = replayed_user_messages(prompt)
        if replayed:
            session.record(kind="replay", userMessages=replayed)
        session.record(kind="user", text=prompt_text(prompt))
        session.known_user_messages += replayed
        history = session.known_user_messages
        session.known_user_messages += 1  # this prompt is history for the next one
        stop_reason = "end_turn"
        try:
            for line in prompt_text(prompt).splitlines():
                if session.cancel.is_set():
                    raise Cancelled
                if not line.strip():
                    continue
                action = parse_line(line)
                outcome = await self._run(session_id, session, action, None)
                if action.verb == "echo":
                    await self._say(session_id, AgentMessageChunk, outcome)
        except Cancelled:
            stop_reason = "cancelled"
        await self._say(session_id, AgentMessageChunk, f"history={history}")
        return PromptResponse(stop_reason=stop_reason)

    async def _run(self, session_id: str, session: Session, action: Action, sub: str | None) -> str:
        """Do one action (inside sub-session `sub`, if any); returns what it did, in words."""
        if action.verb == "echo":
            return action.arg
        if action.verb == "crash":
            sys.stderr.write("reference agent: crash requested, exiting with status 1\n")
            sys.stderr.flush()
            os._exit(1)
        if action.verb == "delegate":
            return await self._delegate(session_id, session, action.arg, sub)
        if action.verb == "sleep":
            return await self._sleep(session, action.arg)
        return await self._tool_call(session_id, session, action, sub)

    async def _delegate(self, session_id: str, session: Session, text: str, parent: str | None) -> str:
        sub = session.next_sub_session(parent)
        await self._say(session_id, UserMessageChunk, text, sub)
        outcome = await self._run(session_id, session, parse_line(text), sub)
        await self._say(session_id, AgentMessageChunk, f"[{sub}] {outcome}", sub)
        return f"delegated to {sub}"

    async def _sleep(self, session: Session, seconds: str) -> str:
        try:
            delay = max(0.0, float(seconds))
        except ValueError:
            return f"not a number of seconds: {seconds!r}"
        try:
            await asyncio.wait_for(session.cancel.wait(), timeout=delay)
        except TimeoutError:
            return f"slept {delay}s"
        raise Cancelled

    async def _tool_call(self, session_id: str, session: Session, action: Action, sub: str | None) -> str:
        session.tool_calls += 1
        call_id = f"call-{session.tool_calls}"
        kind: ToolKind = {"write": "edit", "append": "edit", "delete": "delete", "commit": "execute",
                          "run": "execute", "ask": "other"}[action.verb]
        title = f"{action.verb} {action.arg}"
        meta = _sub_session_meta(sub)
        await self._update(session_id, acp.start_tool_call(
            call_id, title, kind=kind, status="in_progress", raw_input=action._asdict()), meta)
        try:
            outcome = await self._act(session_id, session, action)
            status = "completed"
        except (OSError, acp.RequestError, GitFailed, CommandFailed, PermissionRefused) as exc:
            outcome = f"{title} failed: {describe_error(exc)}"
            status = "failed"
        await self._update(session_id, acp.update_tool_call(
            call_id, status=status, content=[acp.tool_content(acp.text_block(outcome))]), meta)
        return outcome

    async def _act(self, session_id: str, session: Session, action: Action) -> str:
        # Joined, not resolved: the client judges where `../x` or a symlink really points.
        path = os.path.join(session.cwd, action.arg)
        if action.verb == "write":
            await self._write(session_id, path, action.text + "\n")
            return f"wrote {action.arg}"
        if action.verb == "append":
            await self._write(session_id, path, await self._read(session_id, path) + action.text + "\n")
            return f"appended to {action.arg}"
        if action.verb == "delete":
            os.remove(path)
            return f"deleted {action.arg}"
        if action.verb == "run":
            return await run_command(session.cwd, action.arg)
        if action.verb == "ask":
            return await self._ask(session_id, session, action.arg)
        return await git_commit(session.cwd, action.arg)

    async def _ask(self, session_id: str, session: Session, text: str) -> str:
        answer = await self._client.request_permission(
            session_id=session_id,
            tool_call=ToolCallUpdate(tool_call_id=f"call-{session.tool_calls}", title=f"ask {text}", kind="other"),
            options=[PermissionOption(option_id="allow", name="Allow", kind="allow_once"),
                     PermissionOption(option_id="reject", name="Reject", kind="reject_once")])
        outcome = answer.outcome
        if getattr(outcome, "outcome", None) == "selected" and getattr(outcome, "option_id", None) == "allow":
            return f"permission granted: {text}"
        raise PermissionRefused(f"permission refused: {text} ({getattr(outcome, 'option_id', None) or 'cancelled'})")

    async def _read(self, session_id: str, path: str) -> str:
        if self._fs_read:
            try:
                return (await self._client.read_text_file(session_id=session_id, path=path)).content
            except acp.RequestError as exc:
                if exc.code == RESOURCE_NOT_FOUND:
                    return ""
                raise
        try:
            return Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    async def _write(self, session_id: str, path: str, content: str) -> None:
        if self._fs_write:
            await self._client.write_text_file(session_id=session_id, path=path, content=content)
        else:
            Path(path).write_text(content, encoding="utf-8")

    async def _say(self, session_id: str, chunk: type[UserMessageChunk] | type[AgentMessageChunk], text: str,
                   sub: str | None = None) -> None:
        kind = "user_message_chunk" if chunk is UserMessageChunk else "agent_message_chunk"
        message_id = uuid.uuid4().hex
        if chunk is AgentMessageChunk and sub is None:
            self._sessions[session_id].record(kind="agent", messageId=message_id, text=text)
        update = chunk(session_update=kind, content=acp.text_block(text), message_id=message_id,
                       field_meta=_sub_session_meta(sub))
        await self._client.session_update(session_id=session_id, update=update)

    async def _update(self, session_id: str, update: Any, meta: dict[str, Any] | None) -> None:
        if meta:
            update.field_meta = meta
        await self._client.session_update(session_id=session_id, update=update)


def describe_error(exc: Exception) -> str:
    # A JSON-RPC error's reason is usually in its data, not its generic message.
    if isinstance(exc, acp.RequestError) and exc.data:
        return f"{exc} ({exc.data})"
    return str(exc)


def _sub_session_meta(sub: str | None) -> dict[str, Any] | None:
    return {"cairnd": {"subSession": sub}} if sub else None


class PermissionRefused(Exception):
    """The client did not allow an `ask:` line."""


class CommandFailed(Exception):
    """A `run:` command exited with a status other than 0; the message holds its output."""


RUN_OUTPUT_LIMIT = 64 * 1024  # of a `run:` command's output, the last this many bytes are reported


async def run_command(cwd: Path, command: str) -> str:
    """`sh -c COMMAND` in `cwd`, stdin empty: "exit 0" and its output, or CommandFailed."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", command, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out[-RUN_OUTPUT_LIMIT:].decode("utf-8", "replace")
    outcome = f"exit {proc.returncode}" + (f"\n{text.rstrip()}" if text.strip() else "")
    if proc.returncode != 0:
        raise CommandFailed(outcome)
    return outcome


class GitFailed(Exception):
    """A git command of `commit:` failed; its message is git's own output."""


async def git_commit(cwd: Path, message: str) -> str:
    env = dict(os.environ)
    if not await _has_git_identity(cwd):
        env.update(FALLBACK_IDENTITY)
    await _git(cwd, env, "add", "-A")
    output = await _git(cwd, env, "commit", "-q", "-m", message)
    head = (await _git(cwd, env, "rev-parse", "--short", "HEAD")).strip()
    return f"committed {head}" + (f": {output.strip()}" if output.strip() else "")


async def _has_git_identity(cwd: Path) -> bool:
    for key in ("user.name", "user.email"):
        proc = await asyncio.create_subprocess_exec(
            "git", "config", "--get", key, cwd=cwd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() != 0:
            return False
    return True


async def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise GitFailed(f"git {args[0]} exited {proc.returncode}: {text.strip()}")
    return text


def main() -> None:
    asyncio.run(acp.run_agent(ReferenceAgent(), use_unstable_protocol=True))


if __name__ == "__main__":
    main()
