"""The fleet's copies of this host's sessions (SPEC 17), FleetHost's part that keeps
them current: a session's new checkpoints pushed to the checkpoint repository, then
its log mirrored to the store (on each result, and every second for running turns),
and a session just made here described and leased to this host.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import anyio
import orjson

from cairnd.errors import CairnError
from cairnd.fleet import remote
from cairnd.fleet.logstore import StoreConflict
from cairnd.fleet.materialise import Descriptor, checkpoints_in, inner_refs_of, origin_of, refs_of
from cairnd.git import inner
from cairnd.git import run as git
from cairnd.fleet.hostparts import HostParts
from cairnd.journal import event



class LogMirror(HostParts):
    """Mixed into FleetHost: pushing checkpoints and mirroring logs of this host's sessions."""

    async def sync(self, session: str) -> None:
        """Push the session's new checkpoints, then mirror its log: a reader of the stored
        log always finds the checkpoints it names. Retries while the store or the
        remote are away, up to fleet.wait_seconds."""
        sessions = self.daemon.sessions
        deadline = time.monotonic() + self.fleet.wait_seconds
        delay = 0.1
        async with self._lock(self.session_locks, session):
            while True:
                try:
                    row = await anyio.to_thread.run_sync(sessions.registry.get, session)
                    if row is None:
                        return
                    await anyio.to_thread.run_sync(self._push_new_checkpoints, session, row.repo)
                    await self.logs.mirror(session, self.layout.log_path(session))
                    return
                except StoreConflict:
                    raise
                except CairnError as exc:
                    if exc.code not in ("checkpoints_unavailable",) or time.monotonic() > deadline:
                        raise
                    failure: Exception = exc
                except Exception as exc:  # the store's own errors: unreachable, timeouts
                    failure = exc
                    if time.monotonic() > deadline:
                        raise CairnError("store_unavailable", f"the log of session {session} could not be "
                                         f"mirrored to {self.fleet.store_url} within {self.fleet.wait_seconds:g} s "
                                         f"(fleet.wait_seconds): {exc}; the turn is complete on host {self.me} "
                                         "and the mirror catches up when the store is back") from None
                event(logging.WARNING, f"fleet: sync of session {session} failed ({failure}); retrying", session=session)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _push_new_checkpoints(self, session: str, repo: Path) -> None:
        log = self.layout.log_path(session)
        start = self.pushed.get(session, 0)
        with open(log, "rb") as f:
            f.seek(start)
            data = f.read()
        end = data.rfind(b"\n") + 1
        own = [p for p in checkpoints_in(data[:end]) if p.get("sessionId") == session]
        # The inner repositories' states first: a reader of a superproject checkpoint
        # always finds its submodules' and nested repositories' too.
        if any(p.get("submodules") or p.get("nested") for p in own):
            stores = inner.stores(self.layout.inner_map(session), git.common_dir(repo))
            for store, refs in inner_refs_of(own, stores).items():
                remote.push_refs(repo, self.fleet.checkpoints, refs, git_dir=store)
        remote.push_refs(repo, self.fleet.checkpoints, refs_of(own))
        self.pushed[session] = start + end


    async def _sync_new(self, sid: str, row: Any) -> None:
        """A session this host just made: its objects and log go out first, then its
        descriptor, then its lease (from then on the fleet routes to us)."""
        owned, _ = await self._leases.acquire(sid)
        await self.sync(sid)
        origin = await anyio.to_thread.run_sync(origin_of, row.repo)
        if row.parent_id:
            parent = await self.descriptor(row.parent_id)
            if parent is not None:
                origin = parent.origin
        descriptor = Descriptor(sid, origin, row.title, row.agent, row.parent_id, row.root_id)
        await self._bus.sessions.put(sid, orjson.dumps(descriptor.as_dict()))
        if not owned:
            raise CairnError("internal", f"session {sid} was made here but its lease is held elsewhere")

    async def _mirror_loop(self) -> None:
        # Whole lines of the logs of running turns, so a takeover sees a cut turn's start.
        while True:
            await anyio.sleep(1.0)
            for sid, runner in list(self.daemon.sessions.runners.items()):
                if sid not in self._leases.held:
                    continue
                done = self.logs.mirrored(sid)
                try:
                    size = self.layout.log_path(sid).stat().st_size
                except OSError:
                    continue
                if done is not None and size <= done:
                    continue
                try:
                    async with self._lock(self.session_locks, sid):
                        await self.logs.mirror(sid, self.layout.log_path(sid))
                except Exception as exc:
                    event(logging.DEBUG, f"fleet: mirror of {sid} waits ({exc})", session=sid)

