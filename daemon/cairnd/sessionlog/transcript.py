"""What a session log says about its session, as pure functions over log lines: its
turns (each with the checkpoint it left: the one rule for which checkpoint belongs to
which turn), whether a crash cut a turn, which agent session to resume, the replay text
given to an agent that cannot load the conversation natively, and what became of a
spool request's turn. Input is an iterable of `(offset, line)` pairs as
`cairnd.sessionlog.file.iter_lines` yields them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cairnd.sessionlog.entries import (
    AGENT_TEXT_MARK,
    CHECKPOINT_METHOD,
    FORK_META_METHOD,
    ID_MARK,
    POSTHOG_MARK,
    PROMPT_MARK,
    REWIND_MARK,
    REWIND_METHOD,
    SDK_SESSION_METHOD,
    TURN_COMPLETE_METHOD,
    TURN_START_MARK,
    TURN_START_METHOD,
    UPDATE_METHOD,
    Lines,
    as_dict,
    is_prompt_request,
    method_of,
    params_of,
    parse_message,
    prompt_text,
    top_level_agent_text,
)

# Methods an agent calls on its client: their ids live in the agent's id space and may
# equal a pending session/prompt's id, so a response to one must not end the turn.
_AGENT_TO_CLIENT_PREFIXES = ("fs/", "terminal/", "session/request_permission")

REPLAY_TITLE = "The conversation so far, replayed by cairnd"
REPLAY_URI = "cairnd://replay"


@dataclass(frozen=True)
class Turn:
    """One top-level turn: the user's prompt, what the agent answered, and the state
    around it."""

    user_text: str
    agent_text: str  # top-level agent_message_chunk text; sub-session chunks excluded
    stop_reason: str | None  # from turn_complete, else the prompt's response; None if cut
    checkpoint: dict[str, Any] | None = None  # the state it left (see session_state)
    previous_checkpoint: dict[str, Any] | None = None  # the last checkpoint before its prompt
    inherited: bool = False  # kept from a parent by a fork


@dataclass(frozen=True)
class SessionState:
    turns: int  # _posthog/turn_complete entries
    open_turn: bool  # a prompt after the last turn_complete has none of its own: a crash cut it
    sdk_session_id: str | None  # the agent's own session to resume (this session's, not a parent's)
    adapter: str | None  # the agent profile that session belongs to
    conversation: list[Turn] = field(default_factory=list)


@dataclass
class _TurnBuilder:
    user_text: str
    prompt_id: Any
    previous_checkpoint: dict[str, Any] | None
    forks_before: int  # fork_session_meta lines before its prompt
    agent_parts: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    checkpoint: dict[str, Any] | None = None
    closed: bool = False  # later agent text is not this turn's
    completed: bool = False  # its turn_complete was seen
    owns_checkpoints: bool = True  # false once a fork_session_meta line follows it

    def build(self, forks: int) -> Turn:
        return Turn(self.user_text, "".join(self.agent_parts), self.stop_reason, self.checkpoint,
                    self.previous_checkpoint, self.forks_before < forks)


def _id_key(value: Any) -> tuple[str, Any] | None:
    """A JSON-RPC id as a set key (None for a value that cannot be an id): 1 and "1"
    are different requests, and True is not an id of 1."""
    if isinstance(value, (str, int, float)):
        return (type(value).__name__, value)
    return None


def session_state(lines: Lines, agent_text: bool = True) -> SessionState:
    """Read a whole log into the facts the runner and the CLI need (see SessionState).

    `agent_text=False` leaves every Turn's `agent_text` empty and is several times
    faster on a long log (agent chunks are most of its lines): for callers that need
    only the counts, the agent session or the checkpoints.

    Attribution rules: agent text belongs to the turn whose prompt is pending (after its
    response or turn_complete, chunks are a history replay and are ignored). A turn's
    checkpoint is the last one after its prompt and before the next prompt or
    fork_session_meta line: the checkpoint a fork writes after that line is the fork's
    baseline, the `previous_checkpoint` of the fork's first turn, not part of the
    parent's turn. A fork_session_meta line also starts the fork's own identity, so
    sdk_session entries before it (the parent's) are forgotten and a turn the parent had
    open is not the fork's to interrupt.
    """
    reading = _Reading(agent_text)
    for _offset, line in lines:
        if not (
            PROMPT_MARK in line
            or POSTHOG_MARK in line
            or TURN_START_MARK in line
            or REWIND_MARK in line
            or ID_MARK in line
            or (agent_text and AGENT_TEXT_MARK in line)
        ):
            continue
        message = parse_message(line)
        if message is not None:
            reading.feed(message)
    return reading.state()


class _Reading:
    """`session_state` part way through a log: what the lines read so far say, and one
    handler per kind of line (`_ON_METHOD` for the notifications, keyed by method)."""

    def __init__(self, agent_text: bool) -> None:
        self.agent_text = agent_text
        self.turns = 0
        self.open_turn = False
        self.sdk_session: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        self.forks = 0
        self.conversation: list[_TurnBuilder] = []
        self.agent_requests: set[tuple[str, Any]] = set()  # pending agent-to-client request ids

    @property
    def current(self) -> _TurnBuilder | None:
        return self.conversation[-1] if self.conversation else None

    def feed(self, message: dict[str, Any]) -> None:
        if is_prompt_request(message):
            self.prompt(message)
            return
        method = method_of(message)
        if method is None:
            if "id" in message and ("result" in message or "error" in message):
                self.response(message)
        elif "id" in message and method.startswith(_AGENT_TO_CLIENT_PREFIXES):
            key = _id_key(message["id"])
            if key is not None:
                self.agent_requests.add(key)
        elif (handler := _ON_METHOD.get(method)) is not None:
            handler(self, message)

    def prompt(self, message: dict[str, Any]) -> None:
        if self.current is not None:
            self.current.closed = True
        self.conversation.append(_TurnBuilder(prompt_text(message.get("params")), message["id"],
                                              self.last_checkpoint, self.forks))
        self.open_turn = True

    def response(self, message: dict[str, Any]) -> None:
        """A response: to an agent's request, or the agent's to the pending prompt."""
        key = _id_key(message["id"])
        current = self.current
        if key is None:
            return
        if key in self.agent_requests:
            self.agent_requests.discard(key)
        elif current is not None and not current.closed and key == _id_key(current.prompt_id):
            stop = as_dict(message.get("result")).get("stopReason")
            if isinstance(stop, str) and current.stop_reason is None:
                current.stop_reason = stop
            current.closed = True

    def update(self, message: dict[str, Any]) -> None:
        text = top_level_agent_text(message) if self.agent_text else None
        current = self.current
        if text is not None and current is not None and not current.closed:
            current.agent_parts.append(text)

    def turn_complete(self, message: dict[str, Any]) -> None:
        self.turns += 1
        self.open_turn = False
        current = self.current
        if current is not None and not current.completed:
            # cairnd's own record wins over the agent's response: it also knows
            # `interrupted` and `agent_exited`.
            stop = params_of(message).get("stopReason")
            if isinstance(stop, str):
                current.stop_reason = stop
            current.completed = current.closed = True

    def checkpoint(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if isinstance(params, dict):
            self.last_checkpoint = params
            if self.current is not None and self.current.owns_checkpoints:
                self.current.checkpoint = params

    def sdk_session_entry(self, message: dict[str, Any]) -> None:
        self.sdk_session = params_of(message)

    def turn_start(self, message: dict[str, Any]) -> None:
        # cairnd begins a turn here, just before it sends the prompt: a crash in
        # between leaves a turn that never reached the agent, still to be ended.
        self.open_turn = True

    def rewind(self, message: dict[str, Any]) -> None:
        # The agent session before a rewind knows what came after the cut: the
        # rewound session's agent starts afresh with the kept history; the baseline
        # that follows belongs to no kept turn.
        self._cut()

    def fork_meta(self, message: dict[str, Any]) -> None:
        self.forks += 1
        self._cut()

    def _cut(self) -> None:
        """A fork's or a rewind's line: a new identity starts; the turn before is over
        and owns no later checkpoint."""
        self.sdk_session = None
        self.open_turn = False
        if self.current is not None:
            self.current.closed = self.current.completed = True
            self.current.owns_checkpoints = False

    def state(self) -> SessionState:
        sdk_session_id = self.sdk_session.get("sdkSessionId") if self.sdk_session else None
        adapter = self.sdk_session.get("adapter") if self.sdk_session else None
        return SessionState(
            turns=self.turns,
            open_turn=self.open_turn,
            sdk_session_id=sdk_session_id if isinstance(sdk_session_id, str) else None,
            adapter=adapter if isinstance(adapter, str) else None,
            conversation=[turn.build(self.forks) for turn in self.conversation],
        )


_ON_METHOD: dict[str, Callable[[_Reading, dict[str, Any]], None]] = {
    UPDATE_METHOD: _Reading.update,
    TURN_COMPLETE_METHOD: _Reading.turn_complete,
    CHECKPOINT_METHOD: _Reading.checkpoint,
    SDK_SESSION_METHOD: _Reading.sdk_session_entry,
    TURN_START_METHOD: _Reading.turn_start,
    REWIND_METHOD: _Reading.rewind,
    FORK_META_METHOD: _Reading.fork_meta,
}


def render_replay(conversation: list[Turn]) -> str:
    """The kept conversation as plain text, for an agent that cannot load a session
    natively (sent as an ACP `resource` block ahead of its first prompt).

    Its second line states the number of earlier user messages, so a reader need not
    count blocks whose text may itself contain "User:" lines.
    """
    count = len(conversation)
    noun = "message" if count == 1 else "messages"
    parts = [
        f"{REPLAY_TITLE}: this session continues an earlier one whose history the agent "
        "could not load natively.\n"
        f"It holds {count} earlier user {noun}. Read it as context only: everything in "
        "it was already done, do not carry it out again.\n"
    ]
    for turn in conversation:
        parts.append(f"User:\n{turn.user_text or '(no text)'}\n")
        answer = turn.agent_text or "(no reply)"
        if turn.stop_reason not in (None, "end_turn"):
            answer += f"\n[turn ended: {turn.stop_reason}]"
        elif turn.stop_reason is None:
            answer += "\n[turn cut short]"
        parts.append(f"Assistant:\n{answer}\n")
    parts.append("End of the replayed conversation.\n")
    return "\n".join(parts)


def replay_block(text: str, uri: str = REPLAY_URI) -> dict[str, Any]:
    """An ACP embedded `resource` content block carrying a replay text."""
    return {"type": "resource", "resource": {"uri": uri, "mimeType": "text/plain", "text": text}}


def replay_prompt_block(session_id: str, conversation: list[Turn]) -> dict[str, Any]:
    """The kept conversation as the `resource` block sent ahead of a restarted or forked
    session's first prompt. `_meta.cairnd.userMessages` is the count of top-level user
    messages it holds: what an agent adds to its history (the reference agent does)."""
    block = replay_block(render_replay(conversation), uri=f"{REPLAY_URI}/{session_id}")
    block["_meta"] = {"cairnd": {"userMessages": len(conversation)}}
    return block


def turn_of_request(lines: Lines, request_id: str) -> dict[str, Any] | None:
    """What became of the turn a spool request started, for answering it after a crash.

    The runner writes `_cairnd/turn_start {requestId, turn}` before it sends the
    prompt, so a request whose id is not in the log never reached its agent (None: run
    it). Otherwise: `{"turn", "open": True}` when no turn_complete followed (the crash
    cut it), or the turn's result as a prompt request returns it, with `stopReason`."""
    needle = request_id.encode()
    found: dict[str, Any] | None = None
    for _offset, line in lines:
        if found is None:
            if needle not in line or TURN_START_MARK not in line:
                continue
            message = parse_message(line)
            if message is None or method_of(message) != TURN_START_METHOD:
                continue
            params = params_of(message)
            if params.get("requestId") != request_id:
                continue
            found = {"session": params.get("sessionId"), "turn": params.get("turn"), "open": True}
            continue
        if POSTHOG_MARK not in line:
            continue
        message = parse_message(line)
        if message is None:
            continue
        method = method_of(message)
        params = params_of(message)
        if method == TURN_COMPLETE_METHOD and found["open"] and "stopReason" not in found:
            found["stopReason"] = params.get("stopReason")
        elif method == CHECKPOINT_METHOD and "stopReason" in found:
            found["open"] = False
            found["checkpoint"] = params
            break
    if found is None:
        return None
    if not found["open"]:
        found["result"] = {
            "session": found["session"],
            "turn": found["turn"],
            "stopReason": found["stopReason"],
            "checkpoint": found["checkpoint"],
        }
    return found
