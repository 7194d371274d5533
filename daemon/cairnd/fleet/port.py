"""What the fleet needs of the daemon, and all it may touch: a small port that
serve/service.py's Daemon implements, so fleet/ never imports serve/ (it sits below).

    dispatch        run a request taken from the fleet's stream, as the daemon runs any
    publish_local   answer a request of this host's spool here (the fleet could not take it)
    write_result    write a result file into this host's spool (a door request's answer)
    start_soon      start a task in the daemon's work group (it lives as long as the work)
    sessions        the daemon's sessions: the registry, the runners, the turns in flight
    stopping        whether the daemon has stopped taking new work
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cairnd.config.settings import Config
from cairnd.errors import CairnError
from cairnd.sessions.handlers import Sessions
from cairnd.spool.protocol import Claimed
from cairnd.state.layout import StateLayout


class DaemonPort(Protocol):
    config: Config
    layout: StateLayout
    stopping: bool

    @property
    def sessions(self) -> Sessions: ...

    def dispatch(self, claimed: Claimed) -> None: ...

    async def publish_local(self, claimed: Claimed, echo: Any, kind: str | None, error: CairnError) -> None: ...

    async def write_result(self, claimed: Claimed, body: dict[str, Any], *, keep_raw: bool = False) -> None: ...

    def start_soon(self, func: Callable[[], Awaitable[Any]]) -> None: ...
