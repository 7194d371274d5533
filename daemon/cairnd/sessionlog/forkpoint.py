"""The fork rule (SPEC 4 and 5) as pure functions: log lines in, the cut out.

Input everywhere is an iterable of `(offset, line)` pairs, exactly what
`cairnd.sessionlog.file.iter_lines` yields; nothing here does I/O of its own (given a
`MarkedSource`, as `iter_lines` returns, it asks it for the marked lines instead of
iterating, below).

What counts as one user message (SPEC 4):

- a `session/prompt` request: one **top-level** message however many content blocks
  it has; its text is the concatenation of its `text` blocks;
- a `session/update` `user_message_chunk` whose `update._meta.cairnd.subSession` is a
  non-empty string: a **sub-session** message. Chunks carrying a message id (in
  `update.messageId` or `update._meta.cairnd.messageId`) continue the open message when
  they have its sub-session and id, whatever non-message lines came between them.
  Chunks without an id form one message while they come in a run: the run ends at any
  other user message, at a chunk of another sub-session or with an id, at any line of
  the same sub-session that is not a user chunk (the sub-agent answered: the next user
  chunk is a new message), and at a turn boundary (`_posthog/turn_complete`). Lines of
  other sessions and unrelated entries in between (the parent's tool calls, usage
  updates) do not end it.

Unmarked `user_message_chunk`s (an agent echoing the prompt, a history replay) never
count. A message is counted at its first line: that line is the cut when forking at it.

Speed: a fork of a long log must not parse every line. A line can matter only if it
contains one of a few byte strings (`session/prompt"`, `user_message_chunk`,
`agent_checkpoint`, `git_checkpoint`, and while an id-less run is open `subSession` / `turn_complete`);
every other line is passed over after a substring test. Given a fresh
`MarkedSource` (what `iter_lines` returns), not even that: the file is searched
for the first four in big chunks and only the lines holding them (and, while an
id-less run is open, the lines up to the next such line) reach Python; both paths
feed the same `_UserMessageCounter` (as does `feed_line`, for a reader given one line at a time), so they agree line for line. This assumes those names are
written plainly, as every JSON serialiser of ACP frames writes them (a writer that
escaped the slash of session/prompt would go unseen).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from cairnd.sessionlog.entries import (
    CHECKPOINT_MARK,
    CHECKPOINT_METHOD,
    GIT_CHECKPOINT_MARK,
    GIT_CHECKPOINT_METHOD,
    PROMPT_MARK,
    SUB_SESSION_MARK,
    TURN_COMPLETE_MARK,
    TURN_COMPLETE_METHOD,
    USER_CHUNK_MARK,
    Lines,
    is_prompt_request,
    method_of,
    parse_message,
    prompt_text,
    sub_chunk,
    sub_session_of,
    update_of,
)
from cairnd.errors import CairnError

# A line without any of these cannot start, continue or end a message, nor be a checkpoint.
_PRIMARY_MARKS = (PROMPT_MARK, USER_CHUNK_MARK, CHECKPOINT_MARK, GIT_CHECKPOINT_MARK)


@runtime_checkable
class MarkedSource(Protocol):
    """Log lines that can also be searched for marked lines without iterating them all
    (`cairnd.sessionlog.file.LogLines`, what `iter_lines` returns, is one)."""

    start: int  # the line boundary its lines begin at

    @property
    def started(self) -> bool:
        """Whether plain iteration has begun (then a scan from `start` would not follow on)."""
        ...

    def marked(self, marks: Sequence[bytes]) -> Iterator[tuple[int, int, bytes]]:
        """`(line_index, offset, line)` of the lines holding any of `marks`, in order."""
        ...

    def lines_from(self, offset: int) -> Iterator[tuple[int, bytes]]:
        """A fresh iteration of the complete lines from `offset` (a line boundary)."""
        ...


@dataclass(frozen=True)
class UserMessage:
    """One user message of a log, as counted by SPEC 4."""

    ordinal: int  # the user_message_index a fork would name it by
    line_index: int  # index of its first line
    offset: int  # byte offset of its first line
    top_level: bool
    sub_session: str | None  # None for top-level messages
    text: str


@dataclass(frozen=True)
class ForkPoint:
    """Where a fork at `user_message_index` cuts a log."""

    user_message_index: int
    line_index: int  # lines kept: index of the cut line
    offset: int  # bytes kept: byte offset of the cut line
    # params of the last agent_checkpoint before the cut (or of PostHog Code's
    # git_checkpoint, converted by from_git_checkpoint)
    checkpoint: dict[str, Any] | None
    prefill: str  # the text of the targeted message, for the client's input box


@dataclass(frozen=True)
class _Checkpoint:
    params: dict[str, Any]


@dataclass(frozen=True)
class MoreText:
    """More text for the message last started (a later chunk of it)."""

    text: str


_Event = UserMessage | _Checkpoint | MoreText


def from_git_checkpoint(params: dict[str, Any]) -> dict[str, Any] | None:
    """PostHog Code's `_posthog/git_checkpoint` (`head`, `branch`, `indexTree`,
    `worktreeTree`: trees, not commits) in the words of an `agent_checkpoint`, so a
    fork restores its files too (SPEC 3). `worktreeTree` stays a tree: the forker
    makes it a commit on `head`. None when it names no `head` or no `worktreeTree`
    (a checkpoint of a repository without commits: nothing a worktree can start at)."""
    head, tree = params.get("head"), params.get("worktreeTree")
    if not (isinstance(head, str) and head and isinstance(tree, str) and tree):
        return None
    index_tree = params.get("indexTree")
    return {
        "headSha": head,
        "branch": params.get("branch") if isinstance(params.get("branch"), str) else None,
        "indexTree": index_tree if isinstance(index_tree, str) and index_tree else None,
        "worktreeTree": tree,
    }


def _ends_run(message: dict[str, Any], sub_session: str) -> bool:
    """Whether this non-message line closes an open run of id-less chunks of
    `sub_session`: the sub-agent spoke, or the turn ended."""
    if method_of(message) == TURN_COMPLETE_METHOD:
        return True
    update = update_of(message)
    return update is not None and sub_session_of(update) == sub_session


class _UserMessageCounter:
    """The SPEC 4 count as a state machine over log lines, fed in log order: the plain
    path feeds it every line, the fast path only the lines that can matter to it."""

    def __init__(self, ordinal: int = 0, open_sub: tuple[str, str | None] | None = None) -> None:
        self.ordinal = ordinal
        # The message a next sub-session chunk may continue: (sub-session, message id).
        self.open_sub = open_sub

    @property
    def run_open(self) -> bool:
        """Whether a run of id-less sub-session chunks is open: then lines without a
        primary mark may matter too (they may end the run)."""
        return self.open_sub is not None and self.open_sub[1] is None

    def wants(self, line: bytes) -> bool:
        """Whether this line can start, continue or end a message, or be a checkpoint
        (a cheap substring test that lets nearly every line go unparsed)."""
        if any(mark in line for mark in _PRIMARY_MARKS):
            return True
        return self.run_open and (SUB_SESSION_MARK in line or TURN_COMPLETE_MARK in line)

    def feed(self, line_index: int, offset: int, line: bytes) -> Iterator[_Event]:
        """The events of one line that `wants` accepted."""
        message = parse_message(line)
        if message is None:
            return
        if is_prompt_request(message):
            self.open_sub = None
            yield UserMessage(
                self.ordinal, line_index, offset, True, None, prompt_text(message.get("params"))
            )
            self.ordinal += 1
            return
        chunk = sub_chunk(message)
        if chunk is not None:
            key = (chunk.sub_session, chunk.message_id)
            if self.open_sub == key:
                yield MoreText(chunk.text)
            else:
                self.open_sub = key
                yield UserMessage(
                    self.ordinal, line_index, offset, False, chunk.sub_session, chunk.text
                )
                self.ordinal += 1
            return
        method = method_of(message)
        params = message.get("params")
        if method == CHECKPOINT_METHOD and isinstance(params, dict):
            yield _Checkpoint(params)
        elif method == GIT_CHECKPOINT_METHOD and isinstance(params, dict):
            converted = from_git_checkpoint(params)
            if converted is not None:
                yield _Checkpoint(converted)
        if self.run_open and _ends_run(message, self.open_sub[0]):  # type: ignore[index]
            self.open_sub = None


def _events(lines: Lines | MarkedSource, counter: _UserMessageCounter | None = None,
            first_line: int = 0) -> Iterator[_Event]:
    """The log's user messages (at their first line), their later text, and its
    checkpoints, in log order. Lazy: a consumer that stops reads no further.
    `counter` and `first_line` go on from where an earlier count stopped."""
    counter = counter or _UserMessageCounter()
    if isinstance(lines, MarkedSource) and not lines.started:
        yield from _marked_events(lines, counter, first_line)
        return
    for line_index, (offset, line) in enumerate(lines, first_line):
        if counter.wants(line):
            yield from counter.feed(line_index, offset, line)


def _marked_events(log: MarkedSource, counter: _UserMessageCounter, first_line: int) -> Iterator[_Event]:
    """`_events` of a log file, without handing every line to Python.

    The file is searched for the primary marks; lines between two hits are read only
    while a run of id-less sub-session chunks is open (any of them may end it), so
    the counter sees exactly the lines the plain path would give it."""
    next_index, next_offset = first_line, log.start  # the first line not yet given to the counter
    for relative_index, offset, line in log.marked(_PRIMARY_MARKS):
        line_index = first_line + relative_index
        if counter.run_open and next_offset < offset:
            yield from _lines_between(counter, log, next_index, next_offset, offset)
        yield from counter.feed(line_index, offset, line)
        next_index, next_offset = line_index + 1, offset + len(line)
    if counter.run_open:
        yield from _lines_between(counter, log, next_index, next_offset, None)


def _lines_between(
    counter: _UserMessageCounter, log: MarkedSource, line_index: int, begin: int, end: int | None
) -> Iterator[_Event]:
    """Feed the counter the lines in [begin, end) (to the end of the log when `end` is
    None) that it wants, while its run stays open."""
    with closing(log.lines_from(begin)) as lines:
        for index, (offset, line) in enumerate(lines, line_index):
            if (end is not None and offset >= end) or not counter.run_open:
                return
            if counter.wants(line):
                yield from counter.feed(index, offset, line)


def count_user_messages(lines: Lines | MarkedSource) -> list[UserMessage]:
    """Every user message of the log, in order, with its whole text."""
    messages: list[UserMessage] = []
    texts: list[list[str]] = []
    for event in _events(lines):
        if isinstance(event, UserMessage):
            messages.append(event)
            texts.append([event.text])
        elif isinstance(event, MoreText) and texts:
            texts[-1].append(event.text)
    return [replace(message, text="".join(parts)) for message, parts in zip(messages, texts)]


@dataclass(frozen=True)
class CountState:
    """Where a count of a log's user messages stopped, enough to go on from there
    (`cairnd.cutindex` keeps it beside the log)."""

    ordinal: int = 0  # user messages counted
    open_sub: tuple[str, str | None] | None = None  # the sub-session message a chunk may continue
    checkpoint: dict[str, Any] | None = None  # the last checkpoint seen


def feed_line(state: CountState, line_index: int, offset: int, line: bytes
              ) -> tuple[list[UserMessage | MoreText], CountState]:
    """One line's user messages (each at its first line) and later text of the message
    last started, counted by the SPEC 4 rule from where `state` stopped, and the state
    after it: for a reader given lines one at a time (the web view's live page) that
    must count exactly as a fork does."""
    counter = _UserMessageCounter(state.ordinal, state.open_sub)
    if not counter.wants(line):
        return [], state
    checkpoint = state.checkpoint
    found: list[UserMessage | MoreText] = []
    for event in counter.feed(line_index, offset, line):
        if isinstance(event, _Checkpoint):
            checkpoint = event.params
        else:
            found.append(event)
    return found, CountState(counter.ordinal, counter.open_sub, checkpoint)


@dataclass(frozen=True)
class IndexedMessage:
    """A user message with the checkpoint before it: what a fork at it needs."""

    message: UserMessage  # its text is that of its first line only
    checkpoint: dict[str, Any] | None


def count_from(lines: Lines | MarkedSource, state: CountState, first_line: int
               ) -> tuple[list[IndexedMessage], CountState]:
    """The user messages of `lines` (which go on from where `state` stopped, at line
    `first_line`), each with the checkpoint before it, and the state at their end."""
    counter = _UserMessageCounter(state.ordinal, state.open_sub)
    checkpoint = state.checkpoint
    found: list[IndexedMessage] = []
    for event in _events(lines, counter, first_line):
        if isinstance(event, _Checkpoint):
            checkpoint = event.params
        elif isinstance(event, UserMessage):
            found.append(IndexedMessage(event, checkpoint))
    return found, CountState(counter.ordinal, counter.open_sub, checkpoint)


def fork_point_of(found: IndexedMessage | None, count: int, k: int, session_id: str, prefill: str) -> ForkPoint:
    """The fork rule (SPEC 5), the one place it is written: where a fork of `session_id` at
    user message `k` cuts its log, given that message with the checkpoint before it
    (`found`, None when `k` is out of range) and the number of user messages seen
    (`count`). Raises CairnError `fork_out_of_range` (k < 0 or k >= the number of user
    messages) or `fork_in_sub_session` (the k-th message was typed by an agent to a
    sub-agent)."""
    if found is None or k < 0:
        raise CairnError("fork_out_of_range", f"user_message_index {k}: session {session_id} has {_plural(count)}")
    event = found.message
    if not event.top_level:
        raise CairnError(
            "fork_in_sub_session",
            f"user_message_index {k}: message {k} of session {session_id} "
            f"is in sub-session {event.sub_session!r} (an agent prompting "
            "a sub-agent); fork at a top-level user message",
        )
    return ForkPoint(k, event.line_index, event.offset, found.checkpoint, prefill)


def _plural(count: int) -> str:
    return f"{count} user message" + ("" if count == 1 else "s")


def find_fork_point(lines: Lines | MarkedSource, k: int, session_id: str) -> ForkPoint:
    """`fork_point_of` by reading the log from its start (the daemon answers from the
    log's cut index, `cutindex.find_cut`, which gives the same answer). Reads only up to
    the cut when `k` is in range."""
    checkpoint: dict[str, Any] | None = None
    count = 0
    for event in _events(lines):
        if isinstance(event, _Checkpoint):
            checkpoint = event.params
        elif isinstance(event, UserMessage):
            if event.ordinal == k:
                return fork_point_of(IndexedMessage(event, checkpoint), count, k, session_id, event.text)
            count = event.ordinal + 1
    return fork_point_of(None, count, k, session_id, "")
