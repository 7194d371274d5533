"""How the daemon schedules the requests of one session against each other: the lane
of each kind of request (`lane_of`), and the queue of a session's requests."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from cairnd.spool.protocol import Claimed
from cairnd.spool.requests import (
    CancelRequest, DeleteRequest, ForkRequest, LandRequest, NewRequest, Request, RewindRequest,
)

Lane = Literal["now", "beside", "queue", "exclusive"]


def lane_of(request: Request) -> Lane:
    """How a request is scheduled against the other requests of its session:

    now        at once (cancel acts on the turn in flight; new has no session yet)
    beside     at once, beside the session's turns: it only reads the session (its log,
               its checkpoints' objects): fork, land
    queue      one at a time per session, in arrival order: prompt
    exclusive  queued like a prompt, and first waits for the requests running beside
               the session, which still see it as it was: delete, rewind
    """
    if isinstance(request, (CancelRequest, NewRequest)):
        return "now"
    if isinstance(request, (ForkRequest, LandRequest)):
        return "beside"
    if isinstance(request, (DeleteRequest, RewindRequest)):
        return "exclusive"
    return "queue"


@dataclass
class Work:
    claimed: Claimed
    request: Request
    echo: Any  # the request's JSON for its result (see requests.Admitted)


@dataclass
class SessionQueue:
    """Requests that change one session run one at a time, in arrival order."""

    items: deque[Work] = field(default_factory=deque)
    running: bool = False
    forks_in_flight: int = 0
    forks_done: anyio.Event = field(default_factory=anyio.Event)
    rewinds_ahead: int = 0  # rewinds queued or running: forks and lands after them wait their turn
