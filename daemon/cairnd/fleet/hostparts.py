"""What FleetHost's parts share: the host's state and helpers, declared once for the
type checker, so that each part (session ownership, the log mirror) can be read and
checked on its own. Nothing here exists at run time but an empty base class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from cairnd.fleet.bus import Bus
    from cairnd.fleet.leases import Leases
    from cairnd.fleet.logstore import LogStore
    from cairnd.fleet.materialise import Descriptor
    from cairnd.config.fleet import FleetConfig
    from cairnd.state.layout import StateLayout
    from cairnd.fleet.port import DaemonPort


class HostParts:
    """The base of FleetHost's mixed-in parts."""

    if TYPE_CHECKING:  # FleetHost's state and helpers, which its parts work with
        daemon: DaemonPort
        fleet: FleetConfig
        me: str
        layout: StateLayout
        logs: LogStore
        pushed: dict[str, int]
        session_locks: dict[str, anyio.Lock]
        taking: dict[str, anyio.Lock]
        others: dict[str, dict[str, Any]]

        @property
        def _bus(self) -> Bus: ...
        @property
        def _leases(self) -> Leases: ...
        def _lock(self, table: dict[str, anyio.Lock], key: str) -> anyio.Lock: ...

        async def sync(self, session: str) -> None: ...
        async def descriptor(self, session: str) -> Descriptor | None: ...
        async def handle_safely(self, msg: Any, *, from_any: bool = False) -> None: ...
