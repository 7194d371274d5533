"""`cairnd acp`: an ACP agent on stdio that is, behind it, cairnd sessions running a
profile's real agent (SPEC 18).

    editor --ACP--> CairnAgent --Sessions (new, prompt, fork, rewind, land)--> AgentRunner --ACP--> real agent
           <--------- Outbox <------------ Relay.observe <----------------- tap (logged) <--------

Each editor session is a cairnd session like any other: `in_place` on the repository at
the editor's `cwd`, in the registry and its log, seen by `cairnd ls`, the web view and a
daemon. This process is the one writer of the sessions it serves: it holds each one's
session lock (`state/sessionlock`) while it has it open, and a daemon answers requests
that would write them (prompt, rewind, cancel, delete) with `session_busy` until it lets
go (forks, diffs and reads go on).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import acp
import anyio
from acp.core import DEFAULT_STDIO_BUFFER_LIMIT_BYTES
from acp.schema import (
    ClientCapabilities,
    ForkSessionResponse,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    NewSessionResponse,
    PromptResponse,
    ResumeSessionResponse,
    SessionInfo,
    TextContentBlock,
)

from cairnd import __version__
from cairnd.acp.commands import COMMANDS, Commands, parse
from cairnd.acp.probe import initialize_answer, probe, read_cached_init, write_cached_init
from cairnd.acp.replay import conversation_updates, fork_index
from cairnd.acp.relay import EditorClient, Outbox, Relay, offered_capabilities
from cairnd.agent.acpclient import WorktreeClient
from cairnd.agent.runner import Front
from cairnd.config.settings import Config
from cairnd.errors import CairnError
from cairnd.git import run as git
from cairnd.sessionlog.entries import command_entry
from cairnd.sessions.handlers import Sessions
from cairnd.spool.requests import ForkRequest, NewRequest, Origin, PromptRequest
from cairnd.state.registry import SessionRow

# cairnd serves these itself, whatever the agent advertises (SPEC 18).
SERVED = {"list": {}, "resume": {}, "fork": {}}


@dataclass
class Opened:
    """An editor session this process serves."""

    row: SessionRow
    relay: Relay
    busy: anyio.Lock  # its turns and commands, one at a time
    rewound: bool = False  # a /rewind ran since the last turn


def _error(exc: CairnError) -> acp.RequestError:
    return acp.RequestError.invalid_params({"code": exc.code, "message": exc.message})


class CairnAgent:
    """The ACP agent the editor talks to (see the module docstring)."""

    def __init__(self, sessions: Sessions, profile: str, task_group: anyio.abc.TaskGroup, outbox: Outbox) -> None:
        self.sessions = sessions
        self.profile = sessions.profile(profile)
        self.outbox = outbox
        self.commands = Commands(sessions, task_group)
        self.editor: Any = None  # acp.AgentSideConnection
        self.editor_caps: ClientCapabilities | None = None
        self.opened: dict[str, Opened] = {}
        self.agent_init: dict[str, Any] = {}  # the real agent's initialize answer
        self.start_failure: str | None = None  # why the real agent could not be asked

    def on_connect(self, conn: Any) -> None:
        self.editor = conn
        self.outbox.conn = conn._conn  # raw notifications, in the SDK's own send order

    # -- initialize ----------------------------------------------------------------------

    async def initialize(self, protocol_version: int, client_capabilities: ClientCapabilities | None = None,
                         client_info: Implementation | None = None, **kwargs: Any) -> InitializeResponse:
        self.editor_caps = client_capabilities
        cached = await anyio.to_thread.run_sync(read_cached_init, self._cache_path(), self.profile.command)
        if cached is not None:
            self.agent_init = cached
        else:
            try:
                self.agent_init = await probe(self.sessions.config, self.profile.name,
                                              offered_capabilities(client_capabilities, self.profile.fs),
                                              self.sessions.sandbox)
                self._remember_init(self.agent_init)
            except CairnError as exc:
                self.start_failure = exc.message
        return InitializeResponse.model_validate(advertised(self.agent_init, protocol_version))

    def _cache_path(self) -> Path:
        return self.sessions.layout.root / "acp" / f"{self.profile.name}.initialize.json"

    def _remember_init(self, answer: dict[str, Any]) -> None:
        """Keep the agent's latest initialize answer, for the next editor's initialize:
        asking a real agent costs its start (seconds for Claude Code)."""
        try:
            write_cached_init(self._cache_path(), self.profile.command, answer)
        except OSError:
            pass  # asked again next time

    async def authenticate(self, method_id: str, **kwargs: Any) -> Any:
        return None  # an agent that needs it is authenticated in its own way before cairnd starts it

    # -- sessions --------------------------------------------------------------------------

    async def new_session(self, cwd: str, mcp_servers: list[Any] | None = None, **kwargs: Any) -> NewSessionResponse:
        try:
            repo = await anyio.to_thread.run_sync(git.resolve_repo, cwd)
            result = await self.sessions.new(NewRequest(repo=str(repo), in_place=True, agent=self.profile.name),
                                             Origin(None))
        except CairnError as exc:
            if exc.code in ("not_a_git_repo", "repo_not_found", "bad_request"):
                raise acp.RequestError.invalid_params(
                    {"cwd": cwd, "message": f"cairnd acp works in a git repository: {exc.message}"}) from None
            raise _error(exc) from None
        opened = await self._open(result["session"], mcp_servers)
        return NewSessionResponse(session_id=opened.row.id, **self._setup(opened))

    async def load_session(self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None,
                           **kwargs: Any) -> LoadSessionResponse:
        opened = await self._reopen(session_id, mcp_servers)
        for update in await anyio.to_thread.run_sync(conversation_updates, self.sessions.layout.log_path(session_id)):
            self.outbox.update(session_id, update)
        await self.outbox.flush()
        return LoadSessionResponse(**self._setup(opened))

    async def resume_session(self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None,
                             **kwargs: Any) -> ResumeSessionResponse:
        opened = await self._reopen(session_id, mcp_servers)
        return ResumeSessionResponse(**self._setup(opened))

    async def list_sessions(self, cwd: str | None = None, cursor: str | None = None,
                            **kwargs: Any) -> ListSessionsResponse:
        repo = None
        if cwd:
            try:
                repo = await anyio.to_thread.run_sync(git.resolve_repo, cwd)
            except CairnError as exc:
                raise _error(exc) from None
        rows = await anyio.to_thread.run_sync(self.sessions.registry.sessions)
        infos = [SessionInfo(session_id=row.id, cwd=str(row.worktree), title=row.title,
                             updated_at=_iso(row.updated_at))
                 for row in sorted(rows, key=lambda r: r.updated_at, reverse=True)
                 if repo is None or Path(row.repo) == repo]
        return ListSessionsResponse(sessions=infos)

    async def fork_session(self, session_id: str, cwd: str, additional_directories: list[str] | None = None,
                           mcp_servers: list[Any] | None = None, **kwargs: Any) -> ForkSessionResponse:
        message_id = _fork_message_id(kwargs)
        log = self.sessions.layout.log_path(session_id)
        opened = self.opened.get(session_id)
        try:
            async with opened.busy if opened is not None else contextlib.nullcontext():  # after a running turn
                row = await self.sessions.live(session_id)
                k, tip = await anyio.to_thread.run_sync(fork_index, log, message_id)
                result = await self.sessions.fork(ForkRequest(session=row.id, user_message_index=k), Origin(None),
                                                  tip=tip)
        except CairnError as exc:
            raise _error(exc) from None
        fork = await self._open(result["session"], mcp_servers)
        return ForkSessionResponse(session_id=fork.row.id, **self._setup(fork))

    async def _reopen(self, session_id: str, mcp_servers: list[Any] | None) -> Opened:
        if session_id in self.opened:
            return self.opened[session_id]
        try:
            await self.sessions.live(session_id)
        except CairnError as exc:
            raise _error(exc) from None
        return await self._open(session_id, mcp_servers)

    async def _open(self, session_id: str, mcp_servers: list[Any] | None) -> Opened:
        """Serve a session: its agent's requests come to the editor; its agent starts now
        (its modes for the editor, and a failure to start said at once: the session
        goes on, and the next prompt tries again)."""
        row = await self.sessions.live(session_id)
        try:
            self.sessions.locks.claim(row.id)  # held while this process serves it
        except CairnError as exc:
            raise _error(exc) from None
        relay = Relay(row.id, self.outbox, COMMANDS, self._remember_init)
        local = WorktreeClient(row.worktree, self.profile.permission, self.sessions.io_limiter)
        client = EditorClient(self.editor, row.id, self.editor_caps, local)
        self.sessions.fronts[row.id] = Front(client, offered_capabilities(self.editor_caps, self.profile.fs),
                                             relay.observe, list(mcp_servers or []))
        opened = Opened(row, relay, anyio.Lock(fast_acquire=True))  # no yield to the loop on a turn's path
        self.opened[row.id] = opened
        try:
            await self.sessions.runner(row).start()
        except CairnError as exc:
            self.outbox.say(row.id, f"cairnd: the agent did not start: {exc.message}")
        # After the answer: the editor knows the session by then (the SDK sends the
        # answer before anything queued after the handler returns).
        self.outbox.update(row.id, relay.commands_update())
        return opened

    def _setup(self, opened: Opened) -> dict[str, Any]:
        setup = opened.relay.setup
        return {"modes": setup.get("modes"), "models": setup.get("models"), "config_options": setup.get("configOptions")}

    def _get(self, session_id: str) -> Opened:
        opened = self.opened.get(session_id)
        if opened is None:
            raise acp.RequestError.invalid_params(
                {"sessionId": session_id, "message": "session not open here: session/load or session/resume it"})
        return opened

    # -- turns ----------------------------------------------------------------------------

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        opened = self._get(session_id)
        text = "".join(block.text for block in prompt if isinstance(block, TextContentBlock))  # SPEC 4
        command = parse(text)
        if command is not None and not opened.relay.agent_knows(command.name):
            return await self._command(opened, command)
        async with opened.busy:
            opened.relay.in_turn = True
            try:
                if opened.rewound:  # a rewind that failed past its commit point is finished first
                    opened.rewound = False
                    result = await self.sessions.prompt(PromptRequest(session=session_id, text=text), Origin(None),
                                                        content=list(prompt))
                else:
                    result = await self.sessions.turn_of(opened.row, text, list(prompt))
                stop = result.get("stopReason", "end_turn")
            except CairnError as exc:
                self.outbox.say(session_id, f"cairnd: {exc.message}")
                stop = "end_turn"
            finally:
                opened.relay.in_turn = False
            await self.outbox.flush()
        if stop not in ("end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"):
            stop = "end_turn"  # interrupted, agent_exited, error: said in words above
        return PromptResponse(stop_reason=stop)

    async def _command(self, opened: Opened, command: Any) -> PromptResponse:
        session_id = opened.row.id
        async with opened.busy:  # a rewind or fork waits for the running turn
            opened.rewound = opened.rewound or command.name == "rewind"
            try:
                answer = await self.commands.run(session_id, command)
            except CairnError as exc:
                answer = f"cairnd: {exc.message}"
            try:
                await self.sessions.runner(await self.sessions.live(session_id)).note(
                    command_entry(session_id, command.text, answer))
            except CairnError:
                pass  # the session is gone (deleted): nothing to log it in
            self.outbox.say(session_id, answer)
            await self.outbox.flush()
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        runner = self.sessions.runners.get(session_id)
        if runner is not None:
            await runner.cancel()

    async def set_session_mode(self, session_id: str, mode_id: str, **kwargs: Any) -> Any:
        return await self._pass(session_id, lambda conn, sid: conn.set_session_mode(session_id=sid, mode_id=mode_id))

    async def set_config_option(self, config_id: str, session_id: str, value: str | bool, **kwargs: Any) -> Any:
        return await self._pass(session_id, lambda conn, sid: conn.set_config_option(
            config_id=config_id, session_id=sid, value=value))

    async def _pass(self, session_id: str, call: Any) -> Any:
        self._get(session_id)
        try:
            row = await self.sessions.live(session_id)
            return await self.sessions.runner(row).call_agent(call)
        except CairnError as exc:
            raise _error(exc) from None

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise acp.RequestError.method_not_found(f"_{method}")

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None


# -- the functional core ------------------------------------------------------------------


def advertised(agent_init: dict[str, Any], protocol_version: int) -> dict[str, Any]:
    """The initialize answer: the real agent's (what `initialize_answer` keeps of it),
    with what cairnd serves itself added."""
    agent_init = initialize_answer(agent_init)
    caps = dict(agent_init.get("agentCapabilities") or {})
    caps["loadSession"] = True
    # Only what cairnd answers: the agent's own (close, ...) would reach a cairnd acp that
    # does not pass them on.
    caps["sessionCapabilities"] = dict(SERVED)
    answer = {"protocolVersion": min(protocol_version, int(agent_init.get("protocolVersion") or acp.PROTOCOL_VERSION)),
              "agentCapabilities": caps, "authMethods": agent_init.get("authMethods") or [],
              "agentInfo": {"name": "cairnd", "title": "cairnd: " + str(
                  (agent_init.get("agentInfo") or {}).get("title") or (agent_init.get("agentInfo") or {}).get("name")
                  or "agent"), "version": __version__}}
    return answer


def _fork_message_id(meta: dict[str, Any]) -> str | None:
    """`_meta.jetbrains.air.fork.messageId` as the SDK hands `_meta` keys over."""
    for source in (meta, meta.get("field_meta") or {}, meta.get("_meta") or {}):
        fork = (((source.get("jetbrains") or {}).get("air") or {}).get("fork") or {}) if isinstance(source, dict) else {}
        if isinstance(fork.get("messageId"), str) and fork["messageId"]:
            return fork["messageId"]
    return None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


# -- the imperative shell ------------------------------------------------------------------


async def serve_editor(config: Config, profile: str | None) -> None:
    """Serve one editor on stdin/stdout until it closes them."""
    from cairnd.state.layout import StateLayout
    StateLayout(config.state_dir).create()
    (config.layout.root / "acp").mkdir(exist_ok=True)
    async with Sessions(config) as sessions, anyio.create_task_group() as tg:
        sessions.hold_locks = True  # this process is the writer of every session it serves
        outbox = Outbox()
        tg.start_soon(outbox.run)
        agent = CairnAgent(sessions, profile or config.default_agent, tg, outbox)
        # The SDK's own stdio streams, made here so the outbox writes to the one it writes to.
        reader, outbox.wire = await acp.stdio_streams(limit=DEFAULT_STDIO_BUFFER_LIMIT_BYTES)
        await acp.run_agent(agent, input_stream=outbox.wire, output_stream=reader, use_unstable_protocol=True)
        tg.cancel_scope.cancel()
