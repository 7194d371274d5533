"""The results of requests (SPEC 7), as the handlers return them: what each kind
answers in its result file, typed. (A turn's fields, the runner's, join those of new,
fork and rewind when a first prompt came with them.)"""

from __future__ import annotations

from typing import NotRequired, TypedDict


def shown_turn(turn: object) -> object:
    """A logged turn index as people count turns: from 1 (turn N is `SESSION@N`)."""
    return turn + 1 if isinstance(turn, int) and not isinstance(turn, bool) else turn


class CreatedResult(TypedDict):
    """What `new` made (SPEC 7), before its first turn's fields (the runner's) join it."""

    session: str
    title: str
    worktree: str
    headSha: str
    log: str


class CancelResult(TypedDict):
    session: str
    cancelled: bool  # a turn was running and was asked to stop


class DeleteResult(TypedDict):
    session: str
    worktree_kept: bool


class ForkResult(TypedDict):
    """A fork's result (SPEC 7: fork)."""

    session: str
    parent: str
    user_message_index: int
    title: str
    worktree: str
    headSha: str
    worktreeSha: str | None
    state: str  # what the fork starts from (ForkState.state): "checkpoint" or "current_head"
    prefill: str
    log: str
    history: NotRequired[str]  # how the fork's agent will get the kept conversation (SPEC 12)
