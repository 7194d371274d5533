"""How an agent gets a session's kept conversation when it starts (SPEC 12).

One question, asked whenever cairnd opens an agent session for a cairnd session: a new
session, a fork's first start, a rewound session's first start, or a restart (idle
stop, crash, cancel, daemon restart). The answer is one of

    native   session/fork of the agent session that held the conversation at the cut,
             cut after its last kept agent message (`_meta.jetbrains.air.fork`)
    resume   session/resume of this session's own agent session
    load     session/load of it (the agent replays it to us as updates)
    replay   session/new, and the kept conversation as one `resource` block ahead of
             the first prompt (cairnd.transcript.replay_prompt_block)
    none     session/new: there is no conversation to keep (a fork at 0, a new session)

Functional core: `scan` reads the facts out of log lines (pure), `plan` decides from the
facts, the profile's `history` mode and what the started agent advertises (pure).
Imperative shell: `open_history` carries the plan out over an ACP connection, falling
back (auto) or failing with agent_failed (native) when the agent refuses, and says why.

The facts come from the log alone, so they survive the parent's death: the agent
session in effect at the cut (the last `_posthog/sdk_session` before a fork's
`fork_session_meta` or a rewind's `_cairnd/rewind` line), the capabilities that agent
advertised (its `initialize` response, logged), and the `messageId` of the last
top-level `agent_message_chunk` before the cut that this agent session knows of. An
agent session that got its history by replay (or none) does not know earlier messages
by id, so its `sdk_session` entry forgets them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import acp

from cairnd.sessionlog.entries import (
    AGENT_TEXT_MARK,
    FORK_META_METHOD,
    PROMPT_MARK,
    REWIND_METHOD,
    SDK_SESSION_METHOD,
    Lines,
    as_dict,
    is_prompt_request,
    method_of,
    params_of,
    parse_message,
    sub_session_of,
    update_of,
)
from cairnd.errors import CairnError

log = logging.getLogger("cairnd")

WAYS = ("native", "resume", "load", "replay", "none")
_CAPABILITIES_MARK = b'"agentCapabilities"'
_BOUNDARY_MARKS = (b"fork_session_meta", b"_cairnd/rewind")
_SDK_MARK = b"sdk_session"
# An agent session opened these ways knows no earlier message by its id.
_FORGETS_MESSAGES = ("replay", "none")


@dataclass(frozen=True)
class HistoryFacts:
    """What a log says about how its conversation can be given to an agent."""

    user_messages: int  # top-level user messages in the log (kept ones, for a fork or rewind)
    own_session: str | None  # this session's own agent session (after the last cut), if any
    own_adapter: str | None
    source_session: str | None  # the agent session that held the conversation at the cut
    source_adapter: str | None
    source_capabilities: dict[str, Any]  # what that agent advertised in `initialize`
    message_id: str | None  # its last kept agent message, by the id it gave it
    cut: bool  # the log has a fork or rewind cut after which no agent session opened yet


@dataclass(frozen=True)
class Plan:
    """What to do: `way` is one of WAYS; `why` says why not native when it could matter."""

    way: str
    session: str | None = None  # the agent session to fork, resume or load
    message_id: str | None = None  # the fork point (native)
    why: str = ""


def scan(lines: Lines, cut_at_end: bool = False) -> HistoryFacts:
    """The facts of a whole log (for a fork or a rewind: of its kept lines and cut entry).
    `cut_at_end`: the lines are what a fork or rewind is about to keep, cut entry not yet
    written."""
    user_messages = 0
    sdk: dict[str, Any] = {}
    capabilities: dict[str, Any] = {}
    message_id: str | None = None
    at_cut: tuple[dict[str, Any], dict[str, Any], str | None] | None = None
    for _offset, line in lines:
        if not (PROMPT_MARK in line or AGENT_TEXT_MARK in line or _SDK_MARK in line
                or _CAPABILITIES_MARK in line or any(mark in line for mark in _BOUNDARY_MARKS)):
            continue
        message = parse_message(line)
        if message is None:
            continue
        if is_prompt_request(message):
            user_messages += 1
            continue
        method = method_of(message)
        if method in (FORK_META_METHOD, REWIND_METHOD):
            at_cut = (sdk, capabilities, message_id)
            sdk = {}
        elif method == SDK_SESSION_METHOD:
            sdk = params_of(message)
            if sdk.get("history") in _FORGETS_MESSAGES:
                message_id = None
        elif method is None and isinstance(as_dict(message.get("result")).get("agentCapabilities"), dict):
            capabilities = message["result"]["agentCapabilities"]
        else:
            update = update_of(message)
            if (update is not None and update.get("sessionUpdate") == "agent_message_chunk"
                    and sub_session_of(update) is None and isinstance(update.get("messageId"), str)
                    and update["messageId"]):
                message_id = update["messageId"]
    if cut_at_end:
        at_cut, sdk = (sdk, capabilities, message_id), {}
    source, source_caps, source_message = at_cut if at_cut is not None else ({}, {}, None)
    return HistoryFacts(
        user_messages=user_messages,
        own_session=_str(sdk.get("sdkSessionId")),
        own_adapter=_str(sdk.get("adapter")),
        source_session=_str(source.get("sdkSessionId")),
        source_adapter=_str(source.get("adapter")),
        source_capabilities=source_caps,
        message_id=source_message,
        cut=at_cut is not None and not sdk,
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def advertises(capabilities: dict[str, Any], what: str) -> bool:
    """Whether `initialize`'s agentCapabilities offer `fork`, `resume` (session
    capabilities) or `loadSession`."""
    if what == "loadSession":
        return capabilities.get("loadSession") is True
    return isinstance(as_dict(capabilities.get("sessionCapabilities")).get(what), dict)


def plan(facts: HistoryFacts, mode: str, profile: str, live: dict[str, Any] | None) -> Plan:
    """Decide. `live` is what the started agent advertised (None: not started yet, for
    a prediction: then the logged capabilities stand in for it)."""
    if facts.own_session and facts.own_adapter == profile:
        return _restart(facts, mode, live)
    if facts.user_messages == 0:
        return Plan("none")
    if mode == "replay":
        return Plan("replay", why="history = replay")
    why = _not_native(facts, profile, live)
    return Plan("replay", why=why) if why else Plan("native", facts.source_session, facts.message_id)


def _not_native(facts: HistoryFacts, profile: str, live: dict[str, Any] | None) -> str:
    if not facts.cut:
        return "the log names no agent session of this conversation to fork"
    if not facts.source_session:
        return "the log names no agent session at the cut"
    if facts.source_adapter != profile:
        return f"the conversation was held by agent {facts.source_adapter!r}, not {profile!r}"
    if not advertises(facts.source_capabilities, "fork"):
        return f"agent {profile!r} did not advertise session/fork in its initialize response"
    if live is not None and not advertises(live, "fork"):
        return f"agent {profile!r} as started now does not advertise session/fork"
    if not facts.message_id:
        return "no agent message with a messageId before the cut that the agent session knows"
    return ""


def _restart(facts: HistoryFacts, mode: str, live: dict[str, Any] | None) -> Plan:
    if mode == "replay":
        return Plan("replay" if facts.user_messages else "none", why="history = replay")
    caps = live if live is not None else facts.source_capabilities
    for way, capability in (("resume", "resume"), ("load", "loadSession")):
        if advertises(caps, capability):
            return Plan(way, facts.own_session)
    return Plan("replay" if facts.user_messages else "none",
                why="the agent advertises neither session/resume nor loadSession")


def marked_lines(log: Any, end: int | None = None, messages: bool = True) -> Iterator[tuple[int, bytes]]:
    """The lines `scan` reads, from a `cairnd.sessionlog.file.LogLines` (searched, not iterated:
    a long log's agent chatter never reaches Python unless `messages`), up to byte `end`."""
    marks = [PROMPT_MARK, _SDK_MARK, _CAPABILITIES_MARK, *_BOUNDARY_MARKS] + ([AGENT_TEXT_MARK] if messages else [])
    for _index, offset, line in log.marked(marks):
        if end is not None and offset >= end:
            return
        yield offset, line


def predict(log: Any, end: int, mode: str, profile: str) -> str:
    """The way a fork or rewind that keeps the bytes before `end` of `log` (a
    `cairnd.sessionlog.file.LogLines`) will give its agent the history when it first starts, from
    the log alone: for its result, before its agent starts (a result with a first turn
    says the way actually taken). The fork point's message id is not looked for (that
    would read every agent chunk): where the start finds none, it falls back."""
    facts = scan(marked_lines(log, end, messages=False), cut_at_end=True)
    decided = plan(replace(facts, message_id=facts.message_id or "(looked up at start)"), mode, profile, None)
    if decided.way == "replay" and mode == "native" and decided.why != "history = replay":
        # native insists: a fork or rewind it cannot give the history to is not made
        raise CairnError("agent_failed", f"agent {profile!r} cannot take this history natively: {decided.why} "
                                         "(history = native)")
    return decided.way


# -- the imperative shell --------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """An agent session holding the conversation, and how it got it."""

    sdk_session_id: str
    history: str  # one of WAYS
    replay: bool  # the kept conversation must go ahead of the first prompt


def _refusal(exc: BaseException) -> str:
    if isinstance(exc, acp.RequestError):
        data = f" {exc.data}" if exc.data else ""
        return f"error {exc.code} {exc}{data}"
    return f"{type(exc).__name__}: {exc}"


async def open_history(conn: Any, facts: HistoryFacts, *, mode: str, profile: str, cwd: str,
                       live: dict[str, Any], session_id: str, mcp_servers: list[Any] | None = None) -> Opened:
    """Open an agent session for `session_id` on `conn` that holds the kept conversation
    (or will, by replay), following `plan`. Falls back to replay when the agent refuses
    (auto), logging why; with `mode = native` a refused native fork is agent_failed."""
    decided = plan(facts, mode, profile, live)
    mcp = list(mcp_servers or [])  # an editor's MCP servers (cairnd acp), else none
    tried: list[str] = []
    if decided.way == "native":
        try:
            fork_point = {"air": {"fork": {"version": 1, "messageId": decided.message_id}}}
            response = await conn.fork_session(session_id=decided.session, cwd=cwd, mcp_servers=mcp,
                                               jetbrains=fork_point)
            return Opened(response.session_id, "native", False)
        except acp.RequestError as exc:
            tried.append(f"session/fork of {decided.session} at message {decided.message_id} failed "
                         f"({_refusal(exc)})")
            if mode == "native":
                raise CairnError("agent_failed", f"session {session_id}: agent {profile!r}: {tried[0]} "
                                                 "and history = native") from None
    elif decided.way in ("resume", "load"):
        for way in _restart_ways(decided.way, live):
            try:
                if way == "resume":
                    await conn.resume_session(session_id=decided.session, cwd=cwd, mcp_servers=mcp)
                else:
                    await conn.load_session(session_id=decided.session, cwd=cwd, mcp_servers=mcp)
                return Opened(str(decided.session), way, False)
            except acp.RequestError as exc:
                tried.append(f"session/{way} of {decided.session} failed ({_refusal(exc)})")
        if mode == "native":
            raise CairnError("agent_failed", f"session {session_id}: agent {profile!r}: {'; '.join(tried)} "
                                             "and history = native")
    elif decided.why and mode == "native" and decided.why != "history = replay":
        raise CairnError("agent_failed", f"session {session_id}: agent {profile!r} cannot take the history "
                                         f"natively: {decided.why} (history = native)")
    new_id = (await conn.new_session(cwd=cwd, mcp_servers=mcp)).session_id
    way = "replay" if facts.user_messages else "none"
    reasons = tried or ([decided.why] if decided.why and decided.way != "none" else [])
    if reasons and way == "replay":
        log.warning("session %s: agent %r gets its history by replay: %s", session_id, profile, "; ".join(reasons))
    return Opened(new_id, way, way == "replay")


def _restart_ways(first: str, live: dict[str, Any]) -> Sequence[str]:
    """resume, then load, as the agent advertises them."""
    return [w for w in ("resume", "load") if w == first or (w == "load" and advertises(live, "loadSession"))]
