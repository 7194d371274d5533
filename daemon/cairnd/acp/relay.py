"""What crosses between the editor and a session's real agent (SPEC 18): the agent's
session updates out to the editor as they come, its requests to the client (permission,
`fs/*`, `terminal/*`) to the editor and the answers back.

    agent stdout -> tap (logged, parsed once) -> Relay.observe -> Outbox -> editor's stdin
    agent request -> SDK client side -> EditorClient -> editor -> answer -> agent

`Outbox` is the one way cairnd acp writes notifications to the editor, in order. An
update of a turn is written to the editor's stream at once, in the tap's callback, when
nothing is queued ahead of it: that is the editor's "it started answering", and a task
hop or the SDK's re-encoding of it would be time the editor waits for (docs/benchmarks.md).
The rest goes through one task (`run`) and the SDK, behind the answer to the request
that made it (a session's commands come after its `session/new` answer). `flush` waits
for both, so every update of a turn is out before the turn's answer.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import acp
import anyio
import orjson
from acp.schema import ClientCapabilities, FileSystemCapabilities

from cairnd.agent.acpclient import WorktreeClient
from cairnd.sessionlog.entries import UPDATE_METHOD, as_dict

# Updates an agent sends outside a turn that the editor still wants (the rest, such as a
# session/load's replayed history, were for cairnd: the editor has the conversation).
BETWEEN_TURNS = frozenset({"available_commands_update", "current_mode_update", "config_option_update",
                           "session_info_update", "usage_update"})
# What a session/new, load, resume or fork answer carries that the editor shows.
SETUP_KEYS = ("modes", "models", "configOptions")
_SETUP_MARKS = tuple(f'"{key}"'.encode() for key in SETUP_KEYS) + (b'"agentCapabilities"',)


class Outbox:
    """Notifications to the editor, in order (see the module docstring)."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](math.inf)
        self._queued = 0
        self._sent = 0
        self._drained = anyio.Event()
        self.conn: Any = None  # the SDK's connection to the editor (acp.connection.Connection)
        # The editor's stdin (our stdout), the stream the SDK writes its frames to: bytes
        # written here go out in order with the SDK's.
        self.wire: asyncio.StreamWriter | None = None

    def forward(self, params: dict[str, Any]) -> None:
        """An agent's update in a turn, to the editor now: written to its stream when
        everything put before it is out, else queued behind that. (A request of the
        agent's, which goes through the SDK's client side to the editor, may be overtaken
        by updates the agent sent after it, as it always could: the editor answers it.)"""
        if self.wire is None or self._sent < self._queued:
            self.put(UPDATE_METHOD, params)
            return
        try:
            self.wire.write(orjson.dumps({"jsonrpc": "2.0", "method": UPDATE_METHOD, "params": params}) + b"\n")
        except (ConnectionError, OSError, RuntimeError):
            pass  # the editor went away: nothing left to tell it

    def put(self, method: str, params: dict[str, Any]) -> None:
        self._queued += 1
        self._send.send_nowait((method, params))

    def update(self, session_id: str, update: dict[str, Any]) -> None:
        self.put(UPDATE_METHOD, {"sessionId": session_id, "update": update})

    def say(self, session_id: str, text: str) -> None:
        """An agent message from cairnd itself (a command's answer, an error in words)."""
        self.update(session_id, {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}})

    async def run(self) -> None:
        async with self._receive:
            async for method, params in self._receive:
                try:
                    await self.conn.send_notification(method, params)
                except (ConnectionError, OSError, RuntimeError):
                    pass  # the editor went away: nothing left to tell it
                self._sent += 1
                if self._sent == self._queued:
                    self._drained.set()

    async def flush(self) -> None:
        """Wait until everything put so far is written to the editor."""
        while self._sent < self._queued:
            if self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()


class Relay:
    """One editor session's view of its agent's frames (`observe` is the runner's
    `Front.observe`): updates rewritten to the editor's session id and forwarded while
    a turn runs (and the few that matter between turns); the agent's own slash commands
    and session setup (modes, models, config options) remembered."""

    def __init__(self, session_id: str, outbox: Outbox, own_commands: list[dict[str, Any]],
                 on_initialize: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.session_id = session_id
        self.on_initialize = on_initialize  # the agent's initialize answer, each time it starts
        self.outbox = outbox
        self.own_commands = own_commands
        self.in_turn = False
        self.agent_commands: list[dict[str, Any]] = []
        self.setup: dict[str, Any] = {}

    def observe(self, frame: bytes, message: dict[str, Any] | None) -> None:
        """A frame from the agent, once logged, and its parse (None: not one JSON object)."""
        if message is None:
            return
        if message.get("method") == UPDATE_METHOD:
            if "id" in message:
                return
            update = as_dict(as_dict(message.get("params")).get("update"))
            kind = update.get("sessionUpdate")
            if kind == "available_commands_update":
                commands = update.get("availableCommands")
                self.agent_commands = [c for c in commands if isinstance(c, dict)] if isinstance(commands, list) else []
                self.outbox.update(self.session_id, self.commands_update())
            elif self.in_turn or kind in BETWEEN_TURNS:
                params = dict(message["params"])
                params["sessionId"] = self.session_id
                if self.in_turn:
                    self.outbox.forward(params)
                else:
                    self.outbox.put(UPDATE_METHOD, params)
        elif "method" not in message and any(mark in frame for mark in _SETUP_MARKS):
            result = as_dict(message.get("result"))
            self.setup.update({key: result[key] for key in SETUP_KEYS if key in result})
            if "agentCapabilities" in result and self.on_initialize is not None:
                self.on_initialize(result)

    def commands_update(self) -> dict[str, Any]:
        """cairnd's commands, then the agent's (those cairnd does not answer itself)."""
        ours = {command["name"] for command in self.own_commands}
        theirs = [c for c in self.agent_commands if c.get("name") not in ours]
        return {"sessionUpdate": "available_commands_update", "availableCommands": self.own_commands + theirs}

    def agent_knows(self, name: str) -> bool:
        return any(command.get("name") == name for command in self.agent_commands)


def offered_capabilities(editor: ClientCapabilities | None, profile_fs: bool) -> ClientCapabilities:
    """What the session's agent is offered: `fs/*` where the editor offers it (else where
    the profile lets cairnd serve it from the worktree), terminals only when the editor
    has them."""
    fs = editor.fs if editor is not None and editor.fs is not None else FileSystemCapabilities()
    return ClientCapabilities(
        fs=FileSystemCapabilities(read_text_file=bool(fs.read_text_file) or profile_fs,
                                  write_text_file=bool(fs.write_text_file) or profile_fs),
        terminal=bool(editor.terminal) if editor is not None else False)


class EditorClient:
    """The `acp.Client` a fronted session's agent talks to: permission requests and
    terminals go to the editor under the editor's session id; `fs/*` go to the editor
    when it offers them, else cairnd serves them confined to the worktree."""

    def __init__(self, editor: Any, session_id: str, capabilities: ClientCapabilities | None,
                 local: WorktreeClient) -> None:
        self.editor = editor  # acp.AgentSideConnection
        self.session_id = session_id
        fs = capabilities.fs if capabilities is not None and capabilities.fs is not None else None
        self.fs_read = bool(fs and fs.read_text_file)
        self.fs_write = bool(fs and fs.write_text_file)
        self.terminal = bool(capabilities and capabilities.terminal)
        self.local = local

    def on_connect(self, conn: Any) -> None:
        return None

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        return None  # the tap keeps updates from the SDK; the relay forwards them

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any) -> Any:
        return await self.editor.request_permission(session_id=self.session_id, tool_call=tool_call,
                                                    options=options, **kwargs)

    async def read_text_file(self, session_id: str, path: str, line: int | None = None, limit: int | None = None,
                             **kwargs: Any) -> Any:
        if not self.fs_read:
            return await self.local.read_text_file(session_id, path, line, limit)
        return await self.editor.read_text_file(session_id=self.session_id, path=path, line=line, limit=limit,
                                                **kwargs)

    async def write_text_file(self, session_id: str, path: str, content: str, **kwargs: Any) -> Any:
        if not self.fs_write:
            return await self.local.write_text_file(session_id, path, content)
        return await self.editor.write_text_file(session_id=self.session_id, path=path, content=content, **kwargs)

    def _terminal(self, method: str) -> None:
        if not self.terminal:
            raise acp.RequestError.method_not_found(method)

    async def create_terminal(self, session_id: str, command: str, **kwargs: Any) -> Any:
        self._terminal("terminal/create")
        return await self.editor.create_terminal(session_id=self.session_id, command=command, **kwargs)

    async def terminal_output(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        self._terminal("terminal/output")
        return await self.editor.terminal_output(session_id=self.session_id, terminal_id=terminal_id, **kwargs)

    async def release_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        self._terminal("terminal/release")
        return await self.editor.release_terminal(session_id=self.session_id, terminal_id=terminal_id, **kwargs)

    async def wait_for_terminal_exit(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        self._terminal("terminal/wait_for_exit")
        return await self.editor.wait_for_terminal_exit(session_id=self.session_id, terminal_id=terminal_id,
                                                        **kwargs)

    async def kill_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> Any:
        self._terminal("terminal/kill")
        return await self.editor.kill_terminal(session_id=self.session_id, terminal_id=terminal_id, **kwargs)

    async def create_elicitation(self, message: str, mode: Any, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("elicitation/create")

    async def complete_elicitation(self, elicitation_id: str, **kwargs: Any) -> None:
        return None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise acp.RequestError.method_not_found(f"_{method}")

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None
